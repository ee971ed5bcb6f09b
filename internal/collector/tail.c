/*
 * The hot path: one pread() per buffer, then a loop that cuts lines with
 * memchr, parses them in place and copies their content into the ring.
 *
 * What it must never do per line: allocate, make a syscall, take a lock, or
 * touch the line more than a constant number of times. Counters are added
 * once per chunk.
 *
 * Offsets: a file's `offset` only moves past lines that are in a committed
 * chunk. A logical line still being assembled when the buffer ends is not
 * kept in memory: the next read starts again at its first byte. Only a line
 * longer than max_line_bytes is emitted in pieces (flagged SPLIT; a piece cut
 * at max_line_bytes with bytes left over also MORE, every piece after the
 * first CONTINUED, so a stage can judge the whole line). The
 * state kept between reads, and its invariants, are described at struct
 * tailed_file (collector_internal.h).
 *
 * Pipeline stages (internal/pipeline) run on each finished record here, on
 * the collector's side of the ring, so a multiline join sees a file's lines
 * in order and dropped lines cost no ring space. The record is copied out
 * of the chunk, and what comes out of the stages is written back.
 *
 * Back-pressure never blocks here: when the ring has no room the read stops
 * at the last committed line and returns READ_BLOCKED, so the collector's
 * loop goes on following rotations and deletions while the output lags.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "collector_internal.h"
#include "output/livetail.h"
#include "log/log.h"
#include "metrics/metrics.h"

struct assembly {
    bool open;         /* a record is being built at the writer's end */
    bool continuing;   /* the line began before this read or was already split */
    bool split_emitted;
    bool piece_out_before; /* an earlier read sent pieces of the line at the offset */
    const char *start; /* its first byte in the read buffer (NULL: an earlier read) */
    uint64_t last_piece_end;
    /* The piece being appended: where its line starts and ends in the file,
     * and how many of its content bytes an earlier read already sent. */
    uint64_t piece_start, piece_end;
    size_t piece_skip;
    size_t skip; /* to apply to the first piece of this read */
    /* Where the part not yet sent begins, once a piece was split off: a read
     * that ends mid-line goes back there instead of sending a short piece. */
    bool resume_valid;
    uint64_t resume_at;
    size_t resume_skip;
    size_t len;
    int64_t ts;
    uint8_t stream;
};

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct source_record *record_at_end(struct chunk_writer *w)
{
    return (struct source_record *)((char *)w->chunk + w->len);
}

/* The live tail's copy of what this read finished, up to the writer's end
 * offset (a line boundary, or inside a long line whose pieces went out). */
static void live_publish(struct collector *c, struct tailed_file *f)
{
    if (!c->live_records) return;
    livetail_publish(c->livetail, f->src, c->live_start, c->writer.end_offset, c->live_buf, c->live_len,
                     c->live_records);
    c->live_len = 0;
    c->live_records = 0;
}

/* Records not committed are read again: their live copies go too. */
static void live_discard(struct collector *c)
{
    c->live_len = 0;
    c->live_records = 0;
}

/* Once per read: whether records are copied for followers. */
static void live_begin(struct collector *c)
{
    c->live_on = livetail_wanted(c->livetail);
    if (!c->live_on || c->live_buf || c->live_alloc_failed) return;
    c->live_cap = tail_chunk_bytes(c);
    c->live_piece = livetail_max_body(c->livetail);
    if (!(c->live_buf = malloc(c->live_cap))) {
        c->live_alloc_failed = true;
        log_error("out of memory for the live tail's buffer (%zu bytes): followers get no lines", c->live_cap);
    }
}

/* A finished record (before filters and stages) for the followers. */
static void live_append(struct collector *c, struct tailed_file *f, const struct source_record *rec)
{
    if (!c->live_on || !c->live_buf) return;
    size_t size = SOURCE_RECORD_SIZE(rec->len);
    if (size > c->live_cap) return; /* cannot be: a record is at most 3 * max_line_bytes */
    /* Up to the last finished line: entries a follower's queue can take. */
    if (c->live_len && (c->live_len + size > c->live_cap || c->live_len + size > c->live_piece)) live_publish(c, f);
    if (c->live_len == 0) c->live_start = c->writer.end_offset; /* where this record's line starts */
    struct source_record *copy = (struct source_record *)(c->live_buf + c->live_len);
    *copy = *rec;
    copy->extra_len = 0;
    memcpy(copy + 1, rec + 1, rec->len);
    c->live_len += size;
    c->live_records++;
}

void tail_commit(struct collector *c, struct tailed_file *f)
{
    struct chunk_writer *w = &c->writer;
    live_publish(c, f);
    if (!w->chunk) {
        /* Lines dropped or held after a chunk of another source (a join
         * from a rotated file) was committed: nothing to acknowledge now;
         * the next chunk's end offset covers them. */
        if (f->pipe && w->end_offset > f->offset) f->offset = w->end_offset;
        return;
    }
    if (w->chunk->records == 0 && w->end_offset == f->offset) {
        source_unref(w->chunk->source); /* nothing to say: give the space back */
    } else {
        uint64_t end = w->end_offset;
        if (f->pipe) {
            uint64_t limit = pipeline_file_ack_limit(f->pipe);
            if (end > limit) end = limit;
        }
        w->chunk->end_offset = end;
        ring_commit(c->ring, w->len);
        f->offset = w->end_offset;
        metrics_add(lines_read, w->lines);
        metrics_add(bytes_read, w->bytes);
    }
    w->chunk = NULL;
    w->lines = w->bytes = 0;
}

size_t tail_chunk_bytes(const struct collector *c)
{
    size_t want = c->buf_size * 2 + 65536;
    return want > ring_max_block(c->ring) ? ring_max_block(c->ring) : want;
}

/* Makes room for `extra` more bytes after the `keep` bytes of an unfinished
 * record at the writer's end; when the chunk is too small it is committed and
 * the unfinished record moves into a fresh one. Never waits: when the ring
 * is full it sets c->blocked and returns false, and the read stops there
 * (what was not committed is read again). Also false when stopping. */
static bool writer_room(struct collector *c, struct tailed_file *f, size_t keep, size_t extra)
{
    struct chunk_writer *w = &c->writer;
    if (w->chunk && w->cap - w->len >= keep + extra) return true;
    if (keep) memcpy(c->scratch, (char *)w->chunk + w->len, keep);
    tail_commit(c, f);
    if (collector_stopping(c) || ring_is_closed(c->ring)) return false;

    size_t want = sizeof(struct source_chunk) + keep + extra;
    size_t target = tail_chunk_bytes(c);
    if (want < target) want = target;
    if (want > ring_max_block(c->ring)) want = ring_max_block(c->ring);
    void *space = ring_reserve(c->ring, want, 0);
    if (!space) {
        c->blocked = !ring_is_closed(c->ring);
        c->blocked_want = want;
        return false;
    }
    w->chunk = space;
    w->cap = want;
    w->len = sizeof(struct source_chunk);
    w->end_offset = f->offset;
    source_ref(f->src);
    *w->chunk = (struct source_chunk){.source = f->src, .end_offset = f->offset};
    if (keep) memcpy((char *)w->chunk + w->len, c->scratch, keep);
    return true;
}

static bool line_filtered_out(struct collector *c, const char *content, size_t len)
{
    if (c->include_lines &&
        pcre2_match(c->include_lines, (PCRE2_SPTR)content, len, 0, 0, c->match_data, NULL) < 0)
        return true;
    if (c->exclude_lines &&
        pcre2_match(c->exclude_lines, (PCRE2_SPTR)content, len, 0, 0, c->match_data, NULL) >= 0)
        return true;
    return false;
}

struct pipe_ctx {
    struct collector *c;
    struct tailed_file *f;
};

/* A join that began in a rotated file, closed since: its own chunk, of that
 * file's source, acknowledging that file to its end once delivered. */
static bool emit_foreign(struct collector *c, struct tailed_file *f, const struct pipeline_entry *e)
{
    struct chunk_writer *w = &c->writer;
    size_t size = sizeof(struct source_chunk) + SOURCE_RECORD_SIZE(e->len + e->extras_len);
    tail_commit(c, f);
    if (collector_stopping(c) || ring_is_closed(c->ring)) return false;
    struct source_chunk *chunk = ring_reserve(c->ring, size, 0);
    if (!chunk) {
        c->blocked = !ring_is_closed(c->ring);
        c->blocked_want = size;
        return false;
    }
    /* The pipeline's reference to the old source becomes the chunk's. */
    *chunk = (struct source_chunk){.source = e->origin, .end_offset = e->origin_end, .records = 1};
    struct source_record *rec = (struct source_record *)(chunk + 1);
    *rec = (struct source_record){.ts_ns = e->ts_ns, .len = (uint32_t)e->len, .stream = e->stream, .flags = e->flags,
                                  .extra_len = (uint16_t)e->extras_len};
    memcpy(rec + 1, e->line, e->len);
    if (e->extras_len) memcpy((char *)(rec + 1) + e->len, e->extras, e->extras_len);
    ring_commit(c->ring, size);
    (void)w;
    return true;
}

/* The pipeline's emit: one entry into the chunk being filled. Fails only
 * before writing anything (the ring is full, or the agent stops). */
static bool pipe_emit(void *ctx, const struct pipeline_entry *e)
{
    struct pipe_ctx *pc = ctx;
    struct collector *c = pc->c;
    struct chunk_writer *w = &c->writer;
    if (e->origin) return emit_foreign(c, pc->f, e);
    size_t total = e->len + e->extras_len;
    if (!writer_room(c, pc->f, 0, SOURCE_RECORD_SIZE(total) + 8)) return false;
    struct source_record *rec = record_at_end(w);
    *rec = (struct source_record){.ts_ns = e->ts_ns, .len = (uint32_t)e->len, .stream = e->stream, .flags = e->flags,
                                  .extra_len = (uint16_t)e->extras_len};
    memcpy(rec + 1, e->line, e->len);
    if (e->extras_len) memcpy((char *)(rec + 1) + e->len, e->extras, e->extras_len);
    w->len += SOURCE_RECORD_SIZE(total);
    w->chunk->records++;
    return true;
}

/* The finished record at the writer's end goes through the file's stages
 * instead of straight into the chunk. Its line starts at the writer's end
 * offset (chunks end only at line ends). */
static bool pipe_record(struct collector *c, struct tailed_file *f, const struct source_record *rec)
{
    struct chunk_writer *w = &c->writer;
    struct pipe_ctx pc = {c, f};
    bool dropped;
    uint32_t len = rec->len;
    if (!pipeline_process(f->pipe, (const char *)(rec + 1), len, rec->ts_ns, rec->stream, rec->flags, w->end_offset,
                          pipe_emit, &pc, &dropped))
        return false;
    w->lines++;
    w->bytes += len;
    return true;
}

bool tail_pipeline_flush(struct collector *c, struct tailed_file *f)
{
    if (!f->pipe || !pipeline_file_held_bytes(f->pipe)) return true;
    if (c->blocked) return false;
    struct pipe_ctx pc = {c, f};
    c->writer.end_offset = f->offset;
    pipeline_set_clock(c->pipeline, metrics_now_ms(), realtime_ns());
    bool ok = pipeline_file_flush(f->pipe, pipe_emit, &pc);
    tail_commit(c, f);
    return ok;
}

/* Closes the record being built. `line_end` is the file offset after the
 * last byte of the logical line, or 0 when only a piece of it is out (the
 * acknowledgement point must then stay before the line). */
static bool finish_record(struct collector *c, struct tailed_file *f, struct assembly *a, uint64_t line_end,
                          uint8_t flags)
{
    struct chunk_writer *w = &c->writer;
    struct source_record *rec = record_at_end(w);
    rec->len = (uint32_t)a->len;
    rec->flags |= flags;
    a->open = false;
    char *content = (char *)(rec + 1);
    if (parser_utf8_valid_prefix(content, a->len) != a->len) {
        size_t replaced = 0;
        size_t fixed = parser_utf8_sanitize(content, a->len, c->utf8_buf, &replaced);
        if (!writer_room(c, f, sizeof *rec, fixed)) return false;
        rec = record_at_end(w);
        memcpy(rec + 1, c->utf8_buf, fixed);
        rec->len = (uint32_t)fixed;
        rec->flags |= SOURCE_RECORD_UTF8_FIXED;
        metrics_add(lines_utf8_fixed, 1);
    }
    if (rec->flags & SOURCE_RECORD_SPLIT) metrics_add(lines_split, 1);
    if (rec->flags & SOURCE_RECORD_FLUSHED) metrics_add(lines_flushed_incomplete, 1);
    live_append(c, f, rec);
    if ((c->include_lines || c->exclude_lines) && line_filtered_out(c, (char *)(rec + 1), rec->len)) {
        metrics_add(lines_excluded, 1);
    } else if (f->pipe) {
        if (!pipe_record(c, f, rec)) return false;
    } else {
        w->len += SOURCE_RECORD_SIZE(rec->len);
        w->chunk->records++;
        w->lines++;
        w->bytes += rec->len;
    }
    if (line_end) w->end_offset = line_end;
    return true;
}

/* Appends content to the logical line being built, starting it if needed
 * and emitting max_line_bytes-sized pieces when it grows past the limit. */
static bool append_piece(struct collector *c, struct tailed_file *f, struct assembly *a, const char *content,
                         size_t len, int64_t ts, uint8_t stream, uint8_t flags)
{
    size_t consumed = 0;
    for (;;) {
        size_t keep = a->open ? sizeof(struct source_record) + a->len : 0;
        size_t room_needed = (len < c->max_line ? len : c->max_line) + sizeof(struct source_record) + 8;
        if (!writer_room(c, f, keep, room_needed)) return false;
        struct source_record *rec = record_at_end(&c->writer);
        if (!a->open) {
            bool continues = a->split_emitted || a->piece_out_before;
            *rec = (struct source_record){.ts_ns = ts, .stream = stream,
                                          .flags = (uint8_t)(flags | (a->continuing ? SOURCE_RECORD_SPLIT : 0) |
                                                             (continues ? SOURCE_RECORD_CONTINUED : 0))};
            a->open = true;
            a->len = 0;
            a->ts = ts;
            a->stream = stream;
        } else if (c->cfg->collection.partial_timestamp == CONFIG_PARTIAL_TS_LAST) {
            rec->ts_ns = ts;
        }
        size_t room = c->max_line - a->len;
        if (len <= room) {
            memcpy((char *)(rec + 1) + a->len, content, len);
            a->len += len;
            return true;
        }
        size_t cut = parser_utf8_piece_cut(content, len, room);
        memcpy((char *)(rec + 1) + a->len, content, cut);
        a->len += cut;
        content += cut;
        len -= cut;
        /* Bytes left over: the line is longer than max_line_bytes (MORE). */
        if (!finish_record(c, f, a, 0, (uint8_t)(SOURCE_RECORD_SPLIT | (len ? SOURCE_RECORD_MORE : 0)))) return false;
        a->continuing = true;
        a->split_emitted = true;
        consumed += cut;
        a->resume_valid = true;
        a->resume_at = len ? a->piece_start : a->piece_end;
        a->resume_skip = len ? a->piece_skip + consumed : 0;
    }
}

static bool emit_raw(struct collector *c, struct tailed_file *f, struct assembly *a, const char *line, size_t len,
                     uint64_t line_end, int64_t read_ns, uint8_t flags)
{
    a->piece_start = line_end - len;
    a->piece_end = line_end;
    a->piece_skip = 0;
    return append_piece(c, f, a, line, len, read_ns, PARSER_STREAM_UNKNOWN, flags) &&
           finish_record(c, f, a, line_end, 0);
}

/* Ends an assembly that the next line cannot continue (another stream, a
 * malformed line): what was gathered goes out as a piece. */
static bool interrupt_assembly(struct collector *c, struct tailed_file *f, struct assembly *a)
{
    bool ok = true;
    if (a->open) ok = finish_record(c, f, a, a->last_piece_end, SOURCE_RECORD_SPLIT);
    a->continuing = false;
    a->split_emitted = false;
    a->piece_out_before = false;
    a->resume_valid = false;
    return ok;
}

static bool process_line(struct collector *c, struct tailed_file *f, struct assembly *a, const char *line,
                         size_t len, uint64_t line_end, int64_t read_ns, uint8_t flags)
{
    if (f->format == CONFIG_FORMAT_AUTO) f->format = (len && line[0] == '{') ? CONFIG_FORMAT_DOCKER : CONFIG_FORMAT_CRI;

    struct parser_line parsed;
    int rc;
    if (f->format == CONFIG_FORMAT_CRI) {
        rc = parser_cri_line(line, len, &parsed);
    } else {
        bool truncated = false;
        rc = parser_docker_line(line, len, c->docker_buf, c->buf_size, &parsed, &truncated);
    }
    if (rc != 0) {
        a->skip = 0;
        if (!interrupt_assembly(c, f, a)) return false;
        metrics_add(lines_malformed, 1);
        return emit_raw(c, f, a, line, len, line_end, read_ns, (uint8_t)(flags | SOURCE_RECORD_MALFORMED));
    }
    if ((a->open || a->continuing) && parsed.stream != a->stream && !interrupt_assembly(c, f, a)) return false;
    if (!a->open && !a->continuing) a->start = line;
    a->piece_start = line_end - len - ((flags & SOURCE_RECORD_FLUSHED) ? 0 : 1);
    a->piece_end = line_end;
    a->piece_skip = 0;
    if (a->skip && a->continuing && !a->open) {
        /* The first bytes of this piece went out before the last read ended. */
        size_t skip = a->skip < parsed.content_len ? a->skip : parsed.content_len;
        parsed.content += skip;
        parsed.content_len -= skip;
        a->piece_skip = skip;
    }
    a->skip = 0;
    bool keep_first_ts = c->cfg->collection.partial_timestamp == CONFIG_PARTIAL_TS_FIRST;
    int64_t ts = (a->continuing && !a->open && keep_first_ts) ? a->ts : parsed.ts_ns;
    if (!append_piece(c, f, a, parsed.content, parsed.content_len, ts, (uint8_t)parsed.stream, flags)) return false;
    a->last_piece_end = line_end;
    if (parsed.partial) return true;
    if (!finish_record(c, f, a, line_end, 0)) return false;
    a->continuing = false;
    a->split_emitted = false;
    a->piece_out_before = false;
    a->resume_valid = false;
    return true;
}

static enum read_result check_truncation(struct collector *c, struct tailed_file *f)
{
    struct stat st;
    if (f->gz || fstat(f->fd, &st) != 0 || (uint64_t)st.st_size >= f->offset) return READ_EOF;
    rotation_truncated(c, f);
    return READ_MORE;
}

/* Reads the next buffer: plain files by offset; compressed ones forwards
 * only, the carried tail of the last read first. */
static ssize_t read_buffer(struct collector *c, struct tailed_file *f, uint64_t at)
{
    if (!f->gz) {
        ssize_t n;
        do n = pread(f->fd, c->buf, c->buf_size, (off_t)at);
        while (n < 0 && errno == EINTR);
        return n;
    }
    uint64_t stream_at = at + f->gz_carry_len;
    if ((uint64_t)gztell(f->gz) != stream_at) {
        /* First read (or after the fingerprint): position the stream once. */
        f->gz_carry_len = 0;
        stream_at = at;
        if (gzseek(f->gz, (z_off_t)at, SEEK_SET) < 0) return -1;
    }
    size_t have = f->gz_carry_len;
    if (have) memcpy(c->buf, f->gz_carry, have);
    int n = gzread(f->gz, c->buf + have, (unsigned)(c->buf_size - have));
    if (n < 0) return -1;
    f->gz_carry_len = 0;
    return (ssize_t)(have + (size_t)n);
}

/* Where the next read starts: inside a long physical line, or at offset. */
static uint64_t next_read_at(const struct tailed_file *f) { return f->phys_at ? f->phys_at : f->offset; }

/* After a read of n bytes from `base`: a compressed file keeps what is past
 * the next read position for the next read. */
static void keep_gz_tail(struct tailed_file *f, const char *buf, uint64_t base, size_t n)
{
    uint64_t next = next_read_at(f);
    if (!f->gz || next >= base + n || next < base) return;
    size_t from = (size_t)(next - base), len = n - from;
    char *grown = realloc(f->gz_carry, len);
    if (!grown) {
        log_error("out of memory keeping the rest of a read of %s: it is decompressed again", f->src->real_path);
        return; /* gztell no longer matches: the next read seeks (slow, correct) */
    }
    f->gz_carry = grown;
    memcpy(f->gz_carry, buf + from, len);
    f->gz_carry_len = len;
}

void tail_count_rest(struct collector *c, struct tailed_file *f, uint64_t *lines, uint64_t *bytes)
{
    *lines = *bytes = 0;
    f->phys_at = 0;
    for (int guard = 0; guard < 1 << 20; guard++) {
        ssize_t n = read_buffer(c, f, f->offset);
        if (n <= 0) break;
        const char *p = c->buf, *end = c->buf + n, *nl;
        while ((nl = memchr(p, '\n', (size_t)(end - p)))) {
            (*lines)++;
            p = nl + 1;
        }
        *bytes += (uint64_t)n;
        f->offset += (uint64_t)n;
        f->gz_carry_len = 0;
        if ((size_t)n < c->buf_size) break;
    }
    if (*bytes && c->buf[0] != '\n' && !*lines) *lines = 1;
}

/* One piece of a physical line longer than the read buffer: its prefix was
 * parsed when it began (f->phys_*), its content is read on from phys_at. */
static bool emit_phys_piece(struct collector *c, struct tailed_file *f, struct assembly *a, const char *content,
                            size_t len, uint64_t line_end, uint8_t flags)
{
    if (!writer_room(c, f, 0, len + sizeof(struct source_record) + 8)) return false;
    struct source_record *rec = record_at_end(&c->writer);
    *rec = (struct source_record){.ts_ns = f->phys_ts, .stream = f->phys_stream,
                                  .flags = (uint8_t)(flags | SOURCE_RECORD_SPLIT |
                                                     (f->phys_piece_out ? SOURCE_RECORD_CONTINUED : 0))};
    memcpy(rec + 1, content, len);
    a->open = true;
    a->len = len;
    if (!finish_record(c, f, a, line_end, 0)) return false;
    f->phys_piece_out = true;
    return true;
}

/* Reading inside a physical line longer than the buffer (containerd with
 * max_container_log_line_size = -1 writes lines of any length). The bytes
 * from phys_at up to the newline are its content: full pieces go out as
 * they come, the acknowledgement point stays at the line's start until its
 * newline (a restart reads the line again: duplicate pieces, never a loss),
 * and what is short of a piece is read again with the next bytes. */
static enum read_result continue_physical(struct collector *c, struct tailed_file *f, size_t n, uint64_t base,
                                          bool flush_incomplete)
{
    const bool buffer_full = n == c->buf_size;
    const char *nl = memchr(c->buf, '\n', n);
    size_t seg = nl ? (size_t)(nl - c->buf) : n, done = 0;
    struct assembly a = {.continuing = true, .stream = f->phys_stream, .ts = f->phys_ts};
    c->writer.end_offset = f->offset;
    /* More than a piece left, so the byte after a cut is here to tell
     * whether the cut falls inside a UTF-8 sequence. */
    while (seg - done > c->max_line) {
        size_t cut = parser_utf8_piece_cut(c->buf + done, seg - done, c->max_line);
        uint8_t more = seg - done > cut ? SOURCE_RECORD_MORE : 0;
        if (!emit_phys_piece(c, f, &a, c->buf + done, cut, 0, more)) goto stopped;
        done += cut;
    }
    if (nl) {
        uint64_t line_end = base + seg + 1;
        if (seg > done) {
            if (!emit_phys_piece(c, f, &a, c->buf + done, seg - done, line_end, 0)) goto stopped;
        } else {
            /* Its last piece went out whole: only the acknowledgement moves. */
            if (!writer_room(c, f, 0, 8)) goto stopped;
            c->writer.end_offset = line_end;
        }
        /* A P line: the logical line goes on in the next physical piece. */
        f->continuing = f->phys_partial;
        f->continuing_ts = f->phys_ts;
        f->continuing_stream = f->phys_stream;
        f->continuing_skip = 0;
        f->after_flush = false;
        f->phys_at = 0;
        f->phys_piece_out = false;
        f->incomplete_since_ms = 0;
        tail_commit(c, f);
        return READ_MORE;
    }
    if (flush_incomplete && !buffer_full && seg > done) {
        if (!emit_phys_piece(c, f, &a, c->buf + done, seg - done, 0, SOURCE_RECORD_FLUSHED)) goto stopped;
        done = seg;
    }
    tail_commit(c, f);
    f->phys_at = base + done;
    keep_gz_tail(f, c->buf, base, n);
    if (buffer_full) return READ_MORE;
    if (!f->incomplete_since_ms || f->incomplete_offset != f->phys_at) {
        f->incomplete_since_ms = metrics_now_ms();
        f->incomplete_offset = f->phys_at;
    }
    return READ_EOF;
stopped:
    /* Pieces already committed are sent again from phys_at: duplicates only. */
    live_discard(c);
    if (c->writer.chunk) {
        source_unref(c->writer.chunk->source);
        c->writer.chunk = NULL;
    }
    keep_gz_tail(f, c->buf, base, n);
    return c->blocked ? READ_BLOCKED : READ_STOPPED;
}

/* A limit with action: wait emptied its bucket: the file rests until then. */
static bool pipeline_pauses(struct collector *c, struct tailed_file *f)
{
    int64_t until;
    if (!pipeline_file_paused(f->pipe, 0, &until)) return false;
    f->paused_until_ms = until;
    if (!c->next_resume_ms || until < c->next_resume_ms) c->next_resume_ms = until;
    return true;
}

enum read_result tail_read(struct collector *c, struct tailed_file *f, bool flush_incomplete)
{
    if (c->blocked) return READ_BLOCKED;
    if (f->paused_until_ms) {
        if (metrics_now_ms() < f->paused_until_ms) return READ_PAUSED;
        f->paused_until_ms = 0;
    }
    const uint64_t read_at = next_read_at(f);
    ssize_t n = read_buffer(c, f, read_at);
    if (n < 0) {
        if (errno == EAGAIN) return READ_EOF;
        log_error("cannot read %s (%s): %s", f->src->path, f->src->real_path, strerror(errno));
        metrics_add(file_errors, 1);
        return READ_ERROR;
    }
    if (n == 0) return f->phys_at ? READ_EOF : check_truncation(c, f);
    live_begin(c);
    if (f->pipe) pipeline_set_clock(c->pipeline, metrics_now_ms(), realtime_ns()); /* once per read, not per line */
    if (f->phys_at) return continue_physical(c, f, (size_t)n, read_at, flush_incomplete);

    const bool buffer_full = (size_t)n == c->buf_size;
    const int64_t read_ns = realtime_ns();
    const uint64_t base = read_at;
    struct assembly a = {.continuing = f->continuing, .ts = f->continuing_ts, .stream = f->continuing_stream,
                         .piece_out_before = f->continuing, .skip = f->continuing ? f->continuing_skip : 0,
                         .resume_valid = f->continuing, .resume_at = base, .resume_skip = f->continuing_skip};
    const char *p = c->buf, *end = c->buf + n, *nl;
    c->writer.end_offset = f->offset;
    const bool was_after_flush = f->after_flush;

    if (f->after_flush && (nl = memchr(p, '\n', (size_t)(end - p)))) {
        /* The rest of a line sent without its newline after the flush timeout:
         * nothing if it is just the newline, else a piece of that line. */
        f->after_flush = false;
        if (nl > p && !emit_raw(c, f, &a, p, (size_t)(nl - p), base + (uint64_t)(nl + 1 - c->buf), read_ns,
                                SOURCE_RECORD_SPLIT))
            goto stopped;
        c->writer.end_offset = base + (uint64_t)(nl + 1 - c->buf);
        if (nl == p) f->offset = c->writer.end_offset; /* nothing to send: just step over it */
        p = nl + 1;
    }

    /* The hot loop. */
    while ((nl = memchr(p, '\n', (size_t)(end - p)))) {
        uint64_t line_end = base + (uint64_t)(nl + 1 - c->buf);
        if (!process_line(c, f, &a, p, (size_t)(nl - p), line_end, read_ns, 0)) goto stopped;
        p = nl + 1;
        if (f->pipe && !a.open && !a.continuing && pipeline_pauses(c, f)) {
            /* The rest of the buffer is read again when the file resumes. */
            f->continuing = false;
            tail_commit(c, f);
            keep_gz_tail(f, c->buf, base, (size_t)n);
            return READ_PAUSED;
        }
    }

    if (p == c->buf && buffer_full) {
        /* A physical line longer than the buffer. In CRI its prefix is
         * here: read its content on from there (continue_physical). */
        if (f->format == CONFIG_FORMAT_AUTO) f->format = c->buf[0] == '{' ? CONFIG_FORMAT_DOCKER : CONFIG_FORMAT_CRI;
        struct parser_line parsed;
        if (f->format == CONFIG_FORMAT_CRI && !f->after_flush && parser_cri_line(c->buf, (size_t)n, &parsed) == 0) {
            if (!interrupt_assembly(c, f, &a)) goto stopped;
            tail_commit(c, f);
            bool keep_first_ts = c->cfg->collection.partial_timestamp == CONFIG_PARTIAL_TS_FIRST;
            f->phys_ts = f->continuing && keep_first_ts ? f->continuing_ts : parsed.ts_ns;
            f->phys_stream = (uint8_t)parsed.stream;
            f->phys_partial = parsed.partial;
            f->phys_piece_out = false;
            f->continuing = false;
            f->phys_at = base + (uint64_t)(parsed.content - c->buf);
            return READ_MORE;
        }
        /* Not CRI: out it goes as it is, in pieces. */
        if (!interrupt_assembly(c, f, &a)) goto stopped;
        a.continuing = true;
        if (!emit_raw(c, f, &a, p, (size_t)n, base + (uint64_t)n, read_ns,
                      SOURCE_RECORD_MALFORMED | SOURCE_RECORD_SPLIT))
            goto stopped;
        metrics_add(lines_malformed, 1);
        f->continuing = false;
        tail_commit(c, f);
        keep_gz_tail(f, c->buf, base, (size_t)n);
        return READ_MORE;
    }
    if (p < end && !buffer_full && flush_incomplete) {
        if (!process_line(c, f, &a, p, (size_t)(end - p), base + (uint64_t)n, read_ns, SOURCE_RECORD_FLUSHED))
            goto stopped;
        f->after_flush = true;
    }
    bool flushing = flush_incomplete && !buffer_full;
    if (a.open && a.resume_valid && (a.resume_at > base || !buffer_full) && !flushing) {
        /* Part of a long line is out; the rest waits, re-read from where it
         * begins, so every piece but the last is exactly max_line_bytes. */
        c->writer.end_offset = a.resume_at;
        f->continuing = true;
        f->continuing_ts = a.ts;
        f->continuing_stream = a.stream;
        f->continuing_skip = a.resume_skip;
    } else if (a.open) {
        bool cannot_reread = a.split_emitted || !a.start || (a.start == c->buf && buffer_full);
        if (cannot_reread || flushing) {
            uint8_t flag = cannot_reread ? SOURCE_RECORD_SPLIT : SOURCE_RECORD_FLUSHED;
            if (!finish_record(c, f, &a, a.last_piece_end, flag)) goto stopped;
            f->continuing = cannot_reread;
            f->continuing_ts = a.ts;
            f->continuing_stream = a.stream;
            f->continuing_skip = 0;
        } else {
            f->continuing = false; /* dropped here, read again from its first piece */
        }
    } else {
        f->continuing = a.continuing;
        f->continuing_ts = a.ts;
        f->continuing_stream = a.stream;
        f->continuing_skip = 0;
    }
    tail_commit(c, f);
    keep_gz_tail(f, c->buf, base, (size_t)n);

    if (buffer_full) return READ_MORE;
    if (f->offset < base + (uint64_t)n) {
        if (!f->incomplete_since_ms || f->incomplete_offset != f->offset) {
            f->incomplete_since_ms = metrics_now_ms();
            f->incomplete_offset = f->offset;
        }
    } else {
        f->incomplete_since_ms = 0;
    }
    return READ_EOF;

stopped:
    /* The ring is full, or the agent stops. Whatever was not committed is
     * read again. The assembly state must describe f->offset: unchanged if
     * nothing was committed; otherwise the offset is the end of a complete
     * line (chunks end only there), so no line is in progress. Pieces of a
     * line over max_line_bytes already committed are sent again (a
     * duplicate, never a loss). */
    live_discard(c);
    if (c->writer.chunk) {
        source_unref(c->writer.chunk->source);
        c->writer.chunk = NULL;
    }
    if (f->offset == base) {
        f->after_flush = was_after_flush;
    } else {
        f->continuing = false;
        f->after_flush = false;
    }
    keep_gz_tail(f, c->buf, base, (size_t)n);
    return c->blocked ? READ_BLOCKED : READ_STOPPED;
}
