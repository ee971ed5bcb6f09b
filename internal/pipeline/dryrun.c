/*
 * dryrun — `loglet -config F -pipeline-test FILE [-namespace ns -pod p
 * -container c]`: reads FILE through the pipeline the configuration gives
 * that metadata and prints what would be sent, for users writing stages.
 *
 * FILE may be a container log (CRI or docker json-file; CRI P pieces are
 * joined) or plain lines. Each entry prints as
 *   TIME STREAM {pipeline labels} LINE
 * with its structured metadata on the next line (`  metadata: k=v ...`),
 * then a summary of what each stage passed, dropped and held. What is held
 * at the end of the file goes out as a timeout would send it.
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
    size_t cap = 3 * (size_t)cfg->collection.max_line_bytes + 16;
    char *line = NULL, *joined = malloc(cap), *docker = malloc(cap), *fixed = malloc(cap);
    size_t line_cap = 0, jlen = 0;
    int64_t jts = 0;
    uint8_t jstream = 0;
    ssize_t n;
    struct dry d = {.out = out};
    uint64_t offset = 0;
    int rc = 0;
    if (!joined || !docker || !fixed) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
        goto done;
    }
    while ((n = getline(&line, &line_cap, in)) >= 0) {
        uint64_t start = offset;
        offset += (uint64_t)n;
        if (n && line[n - 1] == '\n') n--;
        struct parser_line pl;
        bool truncated = false;
        const char *content = line;
        size_t len = (size_t)n;
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        int64_t ts = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
        uint8_t stream = PARSER_STREAM_UNKNOWN;
        if (parser_cri_line(line, (size_t)n, &pl) == 0 ||
            (n && line[0] == '{' && parser_docker_line(line, (size_t)n, docker, cap, &pl, &truncated) == 0)) {
            if (jlen + pl.content_len > cap) pl.content_len = cap - jlen;
            if (!jlen) {
                jts = pl.ts_ns;
                jstream = (uint8_t)pl.stream;
            }
            memcpy(joined + jlen, pl.content, pl.content_len);
            jlen += pl.content_len;
            if (pl.partial) continue;
            content = joined;
            len = jlen;
            ts = jts;
            stream = jstream;
            jlen = 0;
        }
        uint8_t flags = 0;
        if (parser_utf8_valid_prefix(content, len) != len && len <= cap / 3) {
            /* Repaired as the agent does (U+FFFD), so the stages see what they would. */
            size_t replaced = 0;
            len = parser_utf8_sanitize(content, len, fixed, &replaced);
            content = fixed;
            flags = SOURCE_RECORD_UTF8_FIXED;
        }
        bool dropped;
        if (!pf) {
            struct pipeline_entry e = {.line = (char *)content, .len = len, .ts_ns = ts, .stream = stream};
            dry_emit(&d, &e);
        } else if (!pipeline_process(pf, content, len, ts, stream, flags, start, dry_emit, &d, &dropped)) {
            snprintf(err, errlen, "the pipeline refused an entry");
            rc = -1;
            goto done;
        }
    }
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
    free(joined);
    free(docker);
    free(fixed);
    fclose(in);
    pipeline_file_free(pf);
    pipeline_destroy(p);
    return rc;
}
