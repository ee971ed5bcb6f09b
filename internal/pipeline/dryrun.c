/*
 * dryrun — `loglet -config F -pipeline-test FILE [-namespace ns -pod p
 * -container c]`: reads FILE through the pipeline the configuration gives
 * that metadata and prints what would be sent, for users writing stages.
 *
 * FILE may be a container log (CRI or docker json-file, chosen like the
 * agent: collection.format, or the first line) or plain lines (malformed to
 * the agent: sent as they are). The stages see what the agent's collector
 * (collector/tail.c) would give them: CRI P pieces joined, a line longer
 * than collection.max_line_bytes cut into pieces at the same bytes with the
 * same flags (SPLIT, CONTINUED, MORE), a physical line longer than the read
 * buffer cut as the agent reads it, and UTF-8 repaired per piece. So a
 * stage judges each piece as it would in the agent (drop longer_than takes
 * a whole long line), and each piece prints as the entry it would be.
 * Each entry prints as
 *   TIME STREAM {pipeline labels} LINE
 * with its structured metadata on the next line (`  metadata: k=v ...`),
 * then a summary of what each stage passed, dropped and held. What is held
 * at the end of the file goes out as a timeout would send it, and a last
 * line without its newline as the flush timeout would send it.
 * Not modelled: collection.include_lines / exclude_lines, and the read time
 * the agent gives malformed lines (here: now).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parser/parser.h"
#include "source/source.h"
#include "stage.h"

struct dry {
    FILE *out;
    size_t entries;
};

static bool dry_emit(void *ctx, const struct pipeline_entry *e)
{
    struct dry *d = ctx;
    static const char *const streams[] = {"stdout", "stderr", "unknown"};
    char ts[32];
    size_t n = parser_format_rfc3339(e->ts_ns, ts);
    ts[n] = '\0';
    fprintf(d->out, "%s %s ", ts, streams[e->stream < 3 ? e->stream : 2]);
    struct source_record rec = {.len = 0, .extra_len = (uint16_t)e->extras_len};
    const char *labels = NULL, *meta = NULL;
    size_t ll = 0, ml = 0;
    if (e->extras_len) {
        /* The same block as a record's: read it with the record's reader. */
        char buf[sizeof rec + STAGE_EXTRAS_MAX + 64];
        memcpy(buf, &rec, sizeof rec);
        memcpy(buf + sizeof rec, e->extras, e->extras_len);
        source_record_extras((const struct source_record *)buf, &labels, &ll, &meta, &ml);
        if (ll) fprintf(d->out, "{%.*s} ", (int)ll, labels);
        fwrite(e->line, 1, e->len, d->out);
        fputc('\n', d->out);
        if (ml) {
            fputs("  metadata:", d->out);
            for (const char *p = meta, *end = meta + ml; p < end;) {
                const char *v = p + strlen(p) + 1;
                if (v >= end + 1) break;
                fprintf(d->out, " %s=%s", p, v);
                p = v + strlen(v) + 1;
            }
            fputc('\n', d->out);
        }
    } else {
        fwrite(e->line, 1, e->len, d->out);
        fputc('\n', d->out);
    }
    d->entries++;
    return true;
}

/* The collector's line assembly (tail.c's append_piece, process_line and
 * the long physical line paths), for one complete file read in order. */
struct dry_asm {
    const struct config *cfg;
    struct pipeline_file *pf;
    struct dry *d;
    size_t max_line, buf_size;
    enum config_format format;
    /* The record being built: open, its content, flags, time and stream. */
    bool open;
    char *rec;
    size_t len;
    uint8_t flags;
    int64_t ts;
    uint8_t stream;
    /* The next record is a piece of a longer line (SPLIT), and pieces of
     * its line went out before it (CONTINUED): tail.c's `continuing` and
     * `split_emitted || piece_out_before`. */
    bool continuing, out_before;
    uint64_t line_start; /* file offset of the logical line's first byte */
    char *fixed;         /* UTF-8 repair of one record (3x) */
    char *docker;
    bool failed;
};

static void dry_record(struct dry_asm *a, uint8_t more_flags)
{
    const char *content = a->rec;
    size_t len = a->len;
    uint8_t flags = (uint8_t)(a->flags | more_flags);
    a->open = false;
    if (parser_utf8_valid_prefix(content, len) != len) {
        size_t replaced = 0;
        len = parser_utf8_sanitize(content, len, a->fixed, &replaced);
        content = a->fixed;
        flags |= SOURCE_RECORD_UTF8_FIXED;
    }
    bool dropped;
    if (!a->pf) {
        struct pipeline_entry e = {.line = (char *)content, .len = len, .ts_ns = a->ts, .stream = a->stream,
                                   .flags = flags};
        dry_emit(a->d, &e);
    } else if (!pipeline_process(a->pf, content, len, a->ts, a->stream, flags, a->line_start, dry_emit, a->d,
                                 &dropped)) {
        a->failed = true;
    }
}

/* A logical line the next one cannot continue (another stream, a malformed
 * line): what was gathered goes out as a piece. */
static void dry_interrupt(struct dry_asm *a)
{
    if (a->open) dry_record(a, SOURCE_RECORD_SPLIT);
    a->continuing = a->out_before = false;
}

/* append_piece: content onto the record, cut at max_line_bytes. */
static void dry_append(struct dry_asm *a, const char *content, size_t len, int64_t ts, uint8_t stream, uint8_t flags)
{
    for (;;) {
        if (!a->open) {
            a->flags = (uint8_t)(flags | (a->continuing ? SOURCE_RECORD_SPLIT : 0) |
                                 (a->out_before ? SOURCE_RECORD_CONTINUED : 0));
            a->open = true;
            a->len = 0;
            a->ts = ts;
            a->stream = stream;
        } else if (a->cfg->collection.partial_timestamp == CONFIG_PARTIAL_TS_LAST) {
            a->ts = ts;
        }
        size_t room = a->max_line - a->len;
        if (len <= room) {
            memcpy(a->rec + a->len, content, len);
            a->len += len;
            return;
        }
        size_t cut = parser_utf8_piece_cut(content, len, room);
        memcpy(a->rec + a->len, content, cut);
        a->len += cut;
        content += cut;
        len -= cut;
        dry_record(a, (uint8_t)(SOURCE_RECORD_SPLIT | (len ? SOURCE_RECORD_MORE : 0)));
        a->continuing = a->out_before = true;
    }
}

static void dry_raw(struct dry_asm *a, const char *line, size_t len, int64_t now, uint8_t flags)
{
    dry_append(a, line, len, now, PARSER_STREAM_UNKNOWN, flags);
    dry_record(a, 0);
}

static int64_t realtime_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* One physical line (without its newline) at file offset `start`; `flags`:
 * FLUSHED for a last line without a newline. */
static void dry_line(struct dry_asm *a, const char *line, size_t len, uint64_t start, uint8_t flags)
{
    if (a->format == CONFIG_FORMAT_AUTO) a->format = len && line[0] == '{' ? CONFIG_FORMAT_DOCKER : CONFIG_FORMAT_CRI;
    const bool keep_first_ts = a->cfg->collection.partial_timestamp == CONFIG_PARTIAL_TS_FIRST;
    struct parser_line pl;
    if (len >= a->buf_size) {
        /* Longer than the agent's read buffer: no newline in one read. */
        if (a->format == CONFIG_FORMAT_CRI && parser_cri_line(line, len, &pl) == 0) {
            /* continue_physical: pieces of this physical line alone. */
            dry_interrupt(a);
            a->line_start = start;
            const int64_t ts = pl.ts_ns; /* a read's start: no assembly in progress */
            size_t done = 0, seg = pl.content_len;
            while (seg > done && !a->failed) {
                size_t cut = seg - done;
                uint8_t more = 0;
                if (seg - done > a->max_line) {
                    cut = parser_utf8_piece_cut(pl.content + done, seg - done, a->max_line);
                    more = seg - done > cut ? SOURCE_RECORD_MORE : 0;
                }
                memcpy(a->rec, pl.content + done, cut);
                a->len = cut;
                a->flags = (uint8_t)((more ? 0 : flags) | SOURCE_RECORD_SPLIT |
                                     (done ? SOURCE_RECORD_CONTINUED : 0));
                a->ts = ts;
                a->stream = (uint8_t)pl.stream;
                dry_record(a, more);
                done += cut;
            }
            /* A P line: the logical line goes on, its next record CONTINUED. */
            a->continuing = a->out_before = pl.partial;
            return;
        }
        /* Not CRI: a read buffer at a time, each as a malformed line in pieces. */
        dry_interrupt(a);
        while (len >= a->buf_size && !a->failed) {
            a->line_start = start;
            a->continuing = true; /* SPLIT, yet not CONTINUED: the agent reads on as a new line */
            dry_raw(a, line, a->buf_size, realtime_now(), SOURCE_RECORD_MALFORMED | SOURCE_RECORD_SPLIT);
            a->continuing = a->out_before = false;
            line += a->buf_size;
            len -= a->buf_size;
            start += a->buf_size;
        }
        if (a->failed) return;
    }
    int rc;
    if (a->format == CONFIG_FORMAT_CRI) {
        rc = parser_cri_line(line, len, &pl);
    } else {
        bool truncated = false;
        rc = parser_docker_line(line, len, a->docker, a->buf_size, &pl, &truncated);
    }
    if (rc != 0) {
        dry_interrupt(a);
        a->line_start = start;
        dry_raw(a, line, len, realtime_now(), (uint8_t)(flags | SOURCE_RECORD_MALFORMED));
        a->continuing = a->out_before = false;
        return;
    }
    if ((a->open || a->continuing) && (uint8_t)pl.stream != a->stream) dry_interrupt(a);
    if (!a->open && !a->continuing) a->line_start = start;
    int64_t ts = (a->continuing && !a->open && keep_first_ts) ? a->ts : pl.ts_ns;
    dry_append(a, pl.content, pl.content_len, ts, (uint8_t)pl.stream, flags);
    if (pl.partial || a->failed) return;
    dry_record(a, 0);
    a->continuing = a->out_before = false;
}

int pipeline_dry_run(const struct config *cfg, const char *path, const struct pipeline_meta *meta, FILE *out,
                     char *err, size_t errlen)
{
    struct pipeline *p = pipeline_create(cfg, err, errlen);
    if (!p) return -1;
    FILE *in = fopen(path, "rb");
    if (!in) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        pipeline_destroy(p);
        return -1;
    }
    bool oom = false;
    struct pipeline_file *pf = pipeline_file_new(p, meta, &oom);
    if (oom) {
        snprintf(err, errlen, "out of memory");
        fclose(in);
        pipeline_destroy(p);
        return -1;
    }
    if (!pf) fprintf(out, "# no match block applies to %s/%s/%s: lines go out unchanged\n", meta->namespace_,
                     meta->pod, meta->container);
    else fprintf(out, "# match block %zu applies\n", pipeline_file_block(pf));
    struct dry d = {.out = out};
    /* The collector's sizes (collector.c): a read buffer holds a whole line
     * of max_line_bytes with its prefixes. */
    size_t max_line = (size_t)cfg->collection.max_line_bytes;
    size_t buf_size = (size_t)cfg->collection.read_buffer_bytes;
    if (buf_size < max_line + max_line / 4) buf_size = max_line + max_line / 4;
    struct dry_asm a = {.cfg = cfg, .pf = pf, .d = &d, .max_line = max_line, .buf_size = buf_size,
                        .format = cfg->collection.format,
                        .rec = malloc(max_line + 4), /* a cut may take up to 3 bytes more */
                        .fixed = malloc(3 * (max_line + 4)), .docker = malloc(buf_size)};
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t n;
    uint64_t offset = 0;
    int rc = 0;
    if (!a.rec || !a.fixed || !a.docker) {
        snprintf(err, errlen, "out of memory (%zu bytes for lines of collection.max_line_bytes)", 4 * max_line);
        rc = -1;
        goto done;
    }
    while ((n = getline(&line, &line_cap, in)) >= 0) {
        uint64_t start = offset;
        offset += (uint64_t)n;
        uint8_t flags = 0;
        if (n && line[n - 1] == '\n') n--;
        else flags = SOURCE_RECORD_FLUSHED; /* the last line, sent when the flush timeout passes */
        dry_line(&a, line, (size_t)n, start, flags);
        if (a.failed) {
            snprintf(err, errlen, "the pipeline refused an entry");
            rc = -1;
            goto done;
        }
    }
    if (ferror(in)) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        rc = -1;
        goto done;
    }
    if (a.open) dry_record(&a, SOURCE_RECORD_FLUSHED); /* a P piece with nothing after it */
    if (pf) pipeline_file_flush(pf, dry_emit, &d);
    fprintf(out, "# %zu entries\n", d.entries);
    if (pf) {
        const struct pipeline_block *b = &p->blocks[pipeline_file_block(pf)];
        for (size_t s = 0; s < b->nstages; s++) {
            const struct stage *st = &b->stages[s];
            fprintf(out, "# stage %zu %s: in %llu, out %llu, joined %llu, errors %llu", s, st->ops->name,
                    (unsigned long long)st->counters.in, (unsigned long long)st->counters.out,
                    (unsigned long long)st->counters.joined, (unsigned long long)st->counters.errors);
            for (size_t r = 0; st->ops->drop_reasons && st->ops->drop_reasons[r]; r++)
                fprintf(out, ", dropped (%s) %llu", st->ops->drop_reasons[r],
                        (unsigned long long)st->counters.dropped[r]);
            fputc('\n', out);
        }
    }
done:
    free(line);
    free(a.rec);
    free(a.fixed);
    free(a.docker);
    fclose(in);
    pipeline_file_free(pf);
    pipeline_destroy(p);
    return rc;
}
