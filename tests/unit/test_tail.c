/*
 * test_tail — the collector's hot path (internal/collector/tail.c) against
 * the writer's ground truth.
 *
 * A real collector (collector_create, the poll watcher, rotation_track on a
 * real temporary file) is driven by hand: the test appends to the file like
 * a container runtime, calls tail_read() as the collector's loop would, and
 * drains the ring as the output would (acknowledging each chunk). What comes
 * out is compared with what was written: every logical line, its stream, its
 * timestamp, its bytes, split where it is longer than max_line_bytes and
 * nowhere else, exactly once and in order — also when the ring is full at
 * any point of a read, which is swept over ring sizes and line lengths.
 *
 * Set LOGLET_KNOWN_BUGS=1 to run the tests that reproduce open bugs (they
 * are skipped otherwise, so the suite stays green while they are open);
 * TAIL_DUMP=1 prints the records around a mismatch.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "collector/collector_internal.h"
#include "config/config.h"
#include "log/log.h"
#include "parser/parser.h"
#include "ring/ring.h"
#include "source/source.h"

static bool known_bugs_enabled(void)
{
    const char *v = getenv("LOGLET_KNOWN_BUGS");
    return v && *v && strcmp(v, "0") != 0;
}

/* ---------------------------------------------------------------------------
 * Growable byte buffer and record list.
 */

struct buf {
    char *p;
    size_t len, cap;
};

static void buf_add(struct buf *b, const void *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 1) cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

struct rec {
    char *data;
    size_t len;
    uint8_t stream, flags;
    int64_t ts, ts_max; /* expected: ts within [ts, ts_max] (equal unless a split piece) */
    struct source *src; /* identity only: may be freed by then */
    uint64_t chunk_end;
    uint64_t prev_end;  /* got: end_offset of the source's previous chunk (acknowledged before this one) */
    uint64_t line_end;  /* want: file offset after the logical line (0: unknown) */
};

struct recs {
    struct rec *v;
    size_t n, cap;
};

static struct rec *recs_push(struct recs *r)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 256;
        r->v = realloc(r->v, r->cap * sizeof *r->v);
        assert_non_null(r->v);
    }
    struct rec *x = &r->v[r->n++];
    memset(x, 0, sizeof *x);
    return x;
}

static void recs_free(struct recs *r)
{
    for (size_t i = 0; i < r->n; i++) free(r->v[i].data);
    free(r->v);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------------------
 * The environment: a collector, a ring, one tailed file.
 */

struct env {
    char dir[64];
    char path[128];
    struct config cfg;
    struct ring *ring;
    struct collector *c;
    struct tailed_file *f;
    int wfd;
    uint64_t written;
    struct recs got;
    size_t chunks;
    size_t blocked;     /* READ_BLOCKED answers */
    int drain_style;    /* 0: drain everything when blocked; 1: one block at a time */
    uint64_t last_end;  /* end_offset of the last chunk of the current source */
    struct source *last_src;
    struct source *filler; /* chunks of "another file" that only take room */
};

static struct env E;
static bool env_is_open;

struct env_opts {
    size_t max_line;
    size_t read_buffer;
    size_t ring_bytes;
    enum config_format format;
    enum config_partial_ts partial_ts;
    const char *exclude;
    const char *pipeline; /* YAML with a pipeline: section, or NULL */
};

static void env_close(void);

static void env_open(const struct env_opts *o)
{
    if (env_is_open) env_close();
    memset(&E, 0, sizeof E);
    env_is_open = true;
    snprintf(E.dir, sizeof E.dir, "/tmp/test_tail.XXXXXX");
    assert_non_null(mkdtemp(E.dir));
    snprintf(E.path, sizeof E.path, "%s/web-0_shop_app-0123456789abcdef.log", E.dir);
    config_defaults(&E.cfg);
    E.cfg.collection.max_line_bytes = (int64_t)(o->max_line ? o->max_line : 1024);
    E.cfg.collection.read_buffer_bytes = (int64_t)(o->read_buffer ? o->read_buffer : 4096);
    E.cfg.collection.format = o->format;
    E.cfg.collection.partial_timestamp = o->partial_ts;
    if (o->exclude) {
        free(E.cfg.collection.exclude_lines);
        E.cfg.collection.exclude_lines = strdup(o->exclude);
    }
    if (o->pipeline) {
        char yaml[] = "/tmp/test_tail_pipeline.XXXXXX", err[1024];
        int fd = mkstemp(yaml);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, o->pipeline, strlen(o->pipeline)), (ssize_t)strlen(o->pipeline));
        close(fd);
        struct config tmp;
        config_defaults(&tmp);
        if (config_load(&tmp, yaml, err, sizeof err) != 0) fail_msg("%s", err);
        unlink(yaml);
        E.cfg.pipeline = config_tree_dup(tmp.pipeline);
        config_free(&tmp);
    }
    E.ring = ring_create(o->ring_bytes ? o->ring_bytes : 1 << 20);
    assert_non_null(E.ring);
    char err[512];
    E.c = collector_create(&E.cfg, E.ring, err, sizeof err);
    if (!E.c) fail_msg("collector_create: %s", err);
    E.c->watcher = watcher_poll_create(err, sizeof err);
    assert_non_null(E.c->watcher);
    E.wfd = open(E.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    assert_true(E.wfd >= 0);
    int fd = open(E.path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    E.f = rotation_track(E.c, E.path, E.path, fd, NULL, &st, 0);
    assert_non_null(E.f);
}

static void env_close(void)
{
    env_is_open = false;
    /* Whatever is still in the ring holds references: drop them. */
    size_t size;
    bool closed;
    const void *block;
    while ((block = ring_peek(E.ring, &size, 0, &closed))) {
        source_unref(((const struct source_chunk *)block)->source);
        ring_release(E.ring);
    }
    collector_destroy(E.c);
    ring_destroy(E.ring);
    source_unref(E.filler);
    config_free(&E.cfg);
    close(E.wfd);
    unlink(E.path);
    rmdir(E.dir);
    recs_free(&E.got);
}

static void file_append(const void *data, size_t len)
{
    assert_int_equal(write(E.wfd, data, len), (ssize_t)len);
    E.written += len;
}

/* Takes one block out of the ring like the output: records copied out,
 * then the acknowledgement (acked_offset = end_offset, reference dropped). */
static bool drain_one(void)
{
    size_t size;
    bool closed;
    const struct source_chunk *chunk = ring_peek(E.ring, &size, 0, &closed);
    if (!chunk) return false;
    if (chunk->source == E.filler) {
        source_unref(chunk->source);
        ring_release(E.ring);
        return true;
    }
    E.chunks++;
    assert_true(size >= sizeof *chunk);
    struct source *src = chunk->source;
    /* Per source, chunks end further and further into the file, never past
     * what was written; a new source (after a truncation) starts again. */
    if (src != E.last_src) {
        E.last_src = src;
        E.last_end = 0;
    }
    uint64_t prev_end = E.last_end;
    if (chunk->end_offset < E.last_end) fail_msg("chunk ends at %llu, before the last one (%llu)",
                                                 (unsigned long long)chunk->end_offset, (unsigned long long)E.last_end);
    assert_true(chunk->end_offset <= E.written);
    E.last_end = chunk->end_offset;
    const struct source_record *rec = source_chunk_first(chunk);
    size_t used = sizeof *chunk;
    for (uint32_t i = 0; i < chunk->records; i++, rec = source_record_next(rec)) {
        used += SOURCE_RECORD_SIZE(rec->len);
        assert_true(used <= size);
        struct rec *r = recs_push(&E.got);
        r->data = malloc(rec->len + 1);
        memcpy(r->data, source_record_content(rec), rec->len);
        r->data[rec->len] = '\0';
        r->len = rec->len;
        r->stream = rec->stream;
        /* A piece that continues a line follows a piece of it (the live
         * tail numbers lines by this flag); the models below leave it out. */
        if (rec->flags & SOURCE_RECORD_CONTINUED) {
            assert_true(rec->flags & SOURCE_RECORD_SPLIT);
            assert_true(E.got.n >= 2 && (E.got.v[E.got.n - 2].flags & SOURCE_RECORD_SPLIT));
        }
        /* MORE: cut at max_line_bytes with bytes left over (what drop
         * longer_than trusts): a piece of at least max_line_bytes less the 3
         * bytes a UTF-8 cut may give back. */
        if (rec->flags & SOURCE_RECORD_MORE) {
            assert_true(rec->flags & SOURCE_RECORD_SPLIT);
            assert_true(rec->len + 3 >= (size_t)E.cfg.collection.max_line_bytes);
        }
        r->flags = rec->flags & (uint8_t)~(SOURCE_RECORD_CONTINUED | SOURCE_RECORD_MORE);
        r->ts = r->ts_max = rec->ts_ns;
        r->src = src;
        r->chunk_end = chunk->end_offset;
        r->prev_end = prev_end;
    }
    /* A chunk ends where a line ends: after a newline, or after a line
     * flushed without one (or inside a physical line longer than the read
     * buffer, shipped raw in pieces: see the tests of that case). */
    const struct rec *lastr = E.got.n && E.got.v[E.got.n - 1].chunk_end == chunk->end_offset ? &E.got.v[E.got.n - 1] : NULL;
    const uint8_t raw_piece = SOURCE_RECORD_MALFORMED | SOURCE_RECORD_SPLIT;
    if (chunk->end_offset > prev_end &&
        !(lastr && ((lastr->flags & SOURCE_RECORD_FLUSHED) || (lastr->flags & raw_piece) == raw_piece))) {
        char before = 0;
        if (pread(E.f->fd, &before, 1, (off_t)chunk->end_offset - 1) == 1 && src == E.f->src && before != '\n')
            fail_msg("chunk ends at %llu, inside a line", (unsigned long long)chunk->end_offset);
    }
    assert_int_equal(used, size);
    /* Acknowledged in order: only grows. */
    assert_true(atomic_load(&src->acked_offset) <= chunk->end_offset);
    atomic_store(&src->acked_offset, chunk->end_offset);
    source_unref(src);
    ring_release(E.ring);
    return true;
}

static void drain_all(void)
{
    while (drain_one()) {}
}

/* Fills the ring with another file's (empty) chunks: the next reservation
 * of the tailed file fails wherever its read is. */
static void fill_ring(void)
{
    if (!E.filler) {
        struct parser_path_meta m = {0};
        E.filler = source_new("/filler", "/filler", &m, 0, 0);
    }
    void *p;
    while ((p = ring_reserve(E.ring, sizeof(struct source_chunk), 0))) {
        source_ref(E.filler);
        *(struct source_chunk *)p = (struct source_chunk){.source = E.filler};
        ring_commit(E.ring, sizeof(struct source_chunk));
    }
    assert_false(ring_has_room(E.ring, tail_chunk_bytes(E.c)));
}

static void check_invariants(void)
{
    struct tailed_file *f = E.f;
    struct stat st;
    assert_int_equal(fstat(f->fd, &st), 0);
    assert_true(f->offset <= (uint64_t)st.st_size);
    assert_true(atomic_load(&f->src->acked_offset) <= f->offset);
    assert_false(f->continuing && f->after_flush);
    assert_null(E.c->writer.chunk); /* nothing reserved between reads */
}

/* Reads like the collector's loop until READ_EOF; when the ring is full it
 * drains (everything, or one block at a time), then waits for room exactly
 * as collector_main does. Returns the last result. */
static enum read_result read_until_eof(bool flush)
{
    enum read_result r;
    for (int guard = 0;; guard++) {
        assert_true(guard < 1000000);
        r = tail_read(E.c, E.f, flush);
        check_invariants();
        if (r == READ_MORE) continue;
        if (r != READ_BLOCKED) break;
        E.blocked++;
        assert_true(E.c->blocked);
        /* Still full: asking again changes nothing and loses nothing. */
        assert_int_equal(tail_read(E.c, E.f, flush), READ_BLOCKED);
        do {
            if (E.drain_style == 1) assert_true(drain_one());
            else drain_all();
        } while (!ring_has_room(E.ring, E.c->blocked_want));
        E.c->blocked = false;
    }
    return r;
}

/* ---------------------------------------------------------------------------
 * Ground truth: what a container runtime writes, and what must come out.
 */

struct truth {
    struct buf file;  /* bytes to append */
    struct recs want; /* records expected */
    int64_t ts;
};

static int64_t next_ts(struct truth *t)
{
    if (!t->ts) t->ts = 1700000000000000000;
    t->ts += 1000003;
    return t->ts;
}

static void cri_physical(struct truth *t, int64_t ts, uint8_t stream, char tag, const char *content, size_t len)
{
    char stamp[31];
    parser_format_rfc3339(ts, stamp);
    char head[64];
    int n = snprintf(head, sizeof head, "%s %s %c ", stamp, stream == PARSER_STREAM_STDERR ? "stderr" : "stdout", tag);
    buf_add(&t->file, head, (size_t)n);
    buf_add(&t->file, content, len);
    buf_add(&t->file, "\n", 1);
}

static void want_rec(struct truth *t, const char *data, size_t len, uint8_t stream, uint8_t flags, int64_t ts,
                     int64_t ts_max)
{
    struct rec *r = recs_push(&t->want);
    r->data = malloc(len + 1);
    memcpy(r->data, data, len);
    r->data[len] = '\0';
    r->len = len;
    r->stream = stream;
    r->flags = flags;
    r->ts = ts;
    r->ts_max = ts_max;
}

/* A logical line of `len` bytes written as CRI pieces of at most `piece`
 * bytes (0: one F line); what must come out is the joined line, cut into
 * max_line pieces when longer (ASCII content: cuts are exact). */
static void cri_logical(struct truth *t, size_t max_line, uint8_t stream, const char *content, size_t len, size_t piece)
{
    int64_t first = 0, last = 0;
    size_t off = 0;
    do {
        size_t n = piece && len - off > piece ? piece : len - off;
        int64_t ts = next_ts(t);
        if (!first) first = ts;
        last = ts;
        cri_physical(t, ts, stream, off + n < len ? 'P' : 'F', content + off, n);
        off += n;
    } while (off < len);
    if (len <= max_line) {
        want_rec(t, content, len, stream, 0, first, first);
        t->want.v[t->want.n - 1].line_end = t->file.len;
        return;
    }
    for (size_t o = 0; o < len; o += max_line) {
        size_t n = len - o < max_line ? len - o : max_line;
        want_rec(t, content + o, n, stream, SOURCE_RECORD_SPLIT, first, last);
        t->want.v[t->want.n - 1].line_end = t->file.len;
    }
}

static void truth_free(struct truth *t)
{
    buf_free(&t->file);
    recs_free(&t->want);
}

/* Content that tells where it is: "<tag>:<offset>…", ASCII. */
static char *text_of(size_t len, unsigned seed)
{
    char *s = malloc(len + 1);
    for (size_t i = 0; i < len; i++) s[i] = (char)('a' + (i * 7 + seed) % 26);
    char head[32];
    int n = snprintf(head, sizeof head, "#%u:", seed);
    memcpy(s, head, (size_t)n < len ? (size_t)n : len);
    s[len] = '\0';
    return s;
}

static const char *flag_names(uint8_t f, char *out)
{
    snprintf(out, 64, "%s%s%s%s", f & SOURCE_RECORD_MALFORMED ? "M" : "", f & SOURCE_RECORD_SPLIT ? "S" : "",
             f & SOURCE_RECORD_UTF8_FIXED ? "U" : "", f & SOURCE_RECORD_FLUSHED ? "F" : "");
    return out;
}

/* Which run a failure is in (sweeps set it). */
static char ctx[160];
/* The truth starts at offset 0 of the file: its line ends are file offsets,
 * and no chunk may be acknowledged past a line not yet delivered. */
static bool check_ack_order;

static bool same_rec(const struct rec *g, const struct rec *w)
{
    return g->len == w->len && memcmp(g->data, w->data, g->len) == 0 && g->stream == w->stream &&
           g->flags == w->flags && g->ts >= w->ts && g->ts <= w->ts_max;
}

/* Exactly the records wanted, in order. With `resend_ok`, pieces of a split
 * line may be sent again from an earlier piece of the same line (what the
 * hot path documents after a blocked read); anything else is a failure.
 * Returns the number of re-sent pieces. */
static size_t expect_records(const struct recs *want, const struct recs *got, size_t from, bool resend_ok)
{
    size_t w = 0, resent = 0;
    char fa[64], fb[64];
    for (size_t g = from; g < got->n; g++) {
        const struct rec *gr = &got->v[g];
        if (w < want->n && same_rec(gr, &want->v[w])) {
            /* Acknowledging the chunk before this one would have saved a
             * position past this line: a crash then loses it. */
            if (check_ack_order && want->v[w].line_end && gr->prev_end >= want->v[w].line_end)
                fail_msg("%s record %zu (line ending at %llu) came after a chunk acknowledged to %llu", ctx, g - from,
                         (unsigned long long)want->v[w].line_end, (unsigned long long)gr->prev_end);
            w++;
            continue;
        }
        /* A re-send: the same split line's earlier piece. */
        bool ok = false;
        if (resend_ok && (gr->flags & SOURCE_RECORD_SPLIT)) {
            for (size_t k = w; k-- > 0;) {
                if (!(want->v[k].flags & SOURCE_RECORD_SPLIT)) break;
                if (same_rec(gr, &want->v[k])) {
                    w = k + 1;
                    ok = true;
                    resent++;
                    break;
                }
                /* only within the same logical line: stop at its first piece */
                if (k > 0 && !(want->v[k - 1].flags & SOURCE_RECORD_SPLIT)) break;
            }
        }
        if (ok) continue;
        if (w >= want->n)
            fail_msg("%s record %zu is extra: [%s %u] %.80s (len %zu)", ctx, g - from, flag_names(gr->flags, fa), gr->stream,
                     gr->data, gr->len);
        const struct rec *wr = &want->v[w];
        if (getenv("TAIL_DUMP")) {
            for (size_t k = g >= 3 ? g - 3 : 0; k < got->n && k < g + 6; k++) {
                const struct rec *x = &got->v[k];
                print_message("  got %zu: [%s %u] len %zu end %llu %.20s\n", k, flag_names(x->flags, fa), x->stream,
                              x->len, (unsigned long long)x->chunk_end, x->data);
            }
            for (size_t k = w >= 3 ? w - 3 : 0; k < want->n && k < w + 4; k++) {
                const struct rec *x = &want->v[k];
                print_message("  want %zu: [%s %u] len %zu %.20s\n", k, flag_names(x->flags, fa), x->stream, x->len,
                              x->data);
            }
        }
        fail_msg("%s record %zu: got [%s %u ts %lld] (len %zu) %.100s\n"
                 "      want #%zu [%s %u ts %lld..%lld] (len %zu) %.100s",
                 ctx, g - from, flag_names(gr->flags, fa), gr->stream, (long long)gr->ts, gr->len, gr->data, w,
                 flag_names(wr->flags, fb), wr->stream, (long long)wr->ts, (long long)wr->ts_max, wr->len, wr->data);
    }
    if (w != want->n) {
        const struct rec *wr = &want->v[w];
        fail_msg("%s lost: %zu of %zu records never came, the first: (len %zu) %.100s", ctx, want->n - w, want->n, wr->len,
                 wr->data);
    }
    return resent;
}

/* Everything written was read and acknowledged up to its end. */
static void expect_all_acked(void)
{
    drain_all();
    assert_int_equal(E.f->offset, E.written);
    assert_int_equal(atomic_load(&E.f->src->acked_offset), E.written);
}

/* ---------------------------------------------------------------------------
 * Tests: line assembly.
 */

static void test_cri_full_lines(void **state)
{
    (void)state;
    env_open(&(struct env_opts){0});
    struct truth t = {0};
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "hello world", 11, 0);
    cri_logical(&t, 1024, PARSER_STREAM_STDERR, "an error: \"quoted\" \\ and\ttab\r", 30, 0);
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "", 0, 0); /* an empty line is a line */
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "  leading spaces kept", 21, 0);
    char *exact = text_of(1024, 1); /* exactly max_line: not split */
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, exact, 1024, 0);
    free(exact);
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    expect_records(&t.want, &E.got, 0, false);
    expect_all_acked();
    /* Each record carries its source: the file's, with its path. */
    for (size_t i = 0; i < E.got.n; i++) assert_ptr_equal(E.got.v[i].src, E.f->src);
    assert_string_equal(E.f->src->path, E.path);
    assert_int_equal(E.f->format, CONFIG_FORMAT_CRI); /* auto-detected */
    truth_free(&t);
    env_close();
}

static void test_cri_partial_pieces_are_joined(void **state)
{
    (void)state;
    for (int last = 0; last < 2; last++) {
        env_open(&(struct env_opts){.partial_ts = last ? CONFIG_PARTIAL_TS_LAST : CONFIG_PARTIAL_TS_FIRST});
        struct truth t = {0};
        /* P + P + F: one record, the pieces' contents concatenated. */
        int64_t t1 = next_ts(&t), t2 = next_ts(&t), t3 = next_ts(&t);
        cri_physical(&t, t1, PARSER_STREAM_STDOUT, 'P', "first ", 6);
        cri_physical(&t, t2, PARSER_STREAM_STDOUT, 'P', "second ", 7);
        cri_physical(&t, t3, PARSER_STREAM_STDOUT, 'F', "third", 5);
        int64_t want_ts = last ? t3 : t1;
        want_rec(&t, "first second third", 18, PARSER_STREAM_STDOUT, 0, want_ts, want_ts);
        /* Tags after the P/F ("F:x") are tolerated. */
        int64_t t4 = next_ts(&t), t5 = next_ts(&t);
        cri_physical(&t, t4, PARSER_STREAM_STDERR, 'P', "a", 1);
        char stamp[31];
        parser_format_rfc3339(t5, stamp);
        char line[128];
        int n = snprintf(line, sizeof line, "%s stderr F:extra b\n", stamp);
        buf_add(&t.file, line, (size_t)n);
        want_ts = last ? t5 : t4;
        want_rec(&t, "ab", 2, PARSER_STREAM_STDERR, 0, want_ts, want_ts);
        /* Many small pieces making a line just under max_line. */
        char *big = text_of(1000, 7);
        cri_logical(&t, 1024, PARSER_STREAM_STDOUT, big, 1000, 37);
        free(big);
        if (last) {
            /* With "last", the joined line keeps the F piece's time. */
            t.want.v[t.want.n - 1].ts = t.want.v[t.want.n - 1].ts_max = t.ts;
        }
        file_append(t.file.p, t.file.len);
        assert_int_equal(read_until_eof(false), READ_EOF);
        drain_all();
        expect_records(&t.want, &E.got, 0, false);
        expect_all_acked();
        truth_free(&t);
        env_close();
    }
}

static void test_pieces_of_one_stream_interrupted_by_the_other(void **state)
{
    (void)state;
    env_open(&(struct env_opts){0});
    struct truth t = {0};
    int64_t t1 = next_ts(&t), t2 = next_ts(&t), t3 = next_ts(&t);
    /* stdout P, then a stderr F: the stdout piece cannot be continued by it. */
    cri_physical(&t, t1, PARSER_STREAM_STDOUT, 'P', "orphan piece", 12);
    cri_physical(&t, t2, PARSER_STREAM_STDERR, 'F', "error line", 10);
    cri_physical(&t, t3, PARSER_STREAM_STDOUT, 'F', "next line", 9);
    want_rec(&t, "orphan piece", 12, PARSER_STREAM_STDOUT, SOURCE_RECORD_SPLIT, t1, t1);
    want_rec(&t, "error line", 10, PARSER_STREAM_STDERR, 0, t2, t2);
    want_rec(&t, "next line", 9, PARSER_STREAM_STDOUT, 0, t3, t3);
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    expect_records(&t.want, &E.got, 0, false);
    expect_all_acked();
    truth_free(&t);
    env_close();
}

/* Long lines at every alignment with the read buffer: padding lines before
 * move the long line's start through a whole buffer. */
static void long_lines_sweep(const size_t *pieces, size_t npieces)
{
    check_ack_order = true;
    const size_t max_line = 1024;
    const size_t lens[] = {1025, 2048, 2049, 3000, 3071, 3072, 3073, 5 * 1024 + 17, 10 * 1024};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        for (size_t pad = 0; pad < 4096; pad += 97) {
            env_open(&(struct env_opts){.max_line = max_line, .read_buffer = 4096});
            struct truth t = {0};
            /* Padding: lines whose total moves the long line's start by `pad`. */
            size_t left = pad;
            unsigned seed = 100;
            while (left > 0) {
                size_t n = left > 300 ? 200 : left;
                char *s = text_of(n, seed++);
                cri_logical(&t, max_line, PARSER_STREAM_STDOUT, s, n, 0);
                free(s);
                left -= n;
            }
            char *s = text_of(lens[li], 7);
            /* As one F line where it fits a read buffer, else as the
             * runtime's own P pieces (containerd: 16 KiB; here they must fit
             * the 4 KiB read buffer), of several sizes: where a read ends
             * inside a logical line depends on them. */
            size_t piece = lens[li] > 3000 ? pieces[(li + pad / 97) % npieces] : 0;
            snprintf(ctx, sizeof ctx, "[len %zu pad %zu piece %zu]", lens[li], pad, piece);
            cri_logical(&t, max_line, PARSER_STREAM_STDERR, s, lens[li], piece);
            free(s);
            cri_logical(&t, max_line, PARSER_STREAM_STDOUT, "after", 5, 0);
            file_append(t.file.p, t.file.len);
            assert_int_equal(read_until_eof(false), READ_EOF);
            drain_all();
            expect_records(&t.want, &E.got, 0, false);
            expect_all_acked();
            truth_free(&t);
            env_close();
        }
    }
    check_ack_order = false;
}

static void test_long_lines_split_into_exact_pieces_at_any_buffer_boundary(void **state)
{
    (void)state;
    static const size_t pieces[] = {700, 1500, 2000};
    long_lines_sweep(pieces, 3);
}

/* When a read ends inside a long logical line whose last split fell in the
 * read's first physical piece (P pieces over half the read buffer), the
 * part gathered so far goes out as a short piece: 1024, 1024, 1024, 828,
 * 1024, … instead of exact max_line_bytes pieces as tail.c promises. */
static void test_long_lines_of_big_pieces_split_into_exact_pieces(void **state)
{
    (void)state;
    if (!known_bugs_enabled()) skip();
    static const size_t pieces[] = {2222, 2900, 3900};
    long_lines_sweep(pieces, 3);
}

/* The writer appends a long line bit by bit: nothing of it leaves before
 * its newline is written (only complete lines leave the collector), then it
 * goes out in exact max_line pieces. */
static void test_long_line_written_in_dribbles(void **state)
{
    (void)state;
    const size_t steps[] = {1, 7, 100, 333, 1000, 1500};
    for (size_t si = 0; si < sizeof steps / sizeof steps[0]; si++) {
        env_open(&(struct env_opts){.max_line = 1024, .read_buffer = 4096});
        struct truth t = {0};
        char *s = text_of(3500, 3);
        cri_logical(&t, 1024, PARSER_STREAM_STDOUT, s, 3500, 0);
        cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "tail line", 9, 0);
        free(s);
        size_t step = steps[si] * 3; /* small steps, but not forever under ASan */
        const char *nl = memchr(t.file.p, '\n', t.file.len);
        size_t line_end = (size_t)(nl - t.file.p) + 1;
        for (size_t off = 0; off < t.file.len; off += step) {
            size_t n = t.file.len - off < step ? t.file.len - off : step;
            file_append(t.file.p + off, n);
            assert_int_equal(read_until_eof(false), READ_EOF);
            drain_all();
            if (off + n < line_end) {
                assert_int_equal(E.got.n, 0);
                assert_int_equal(E.f->offset, 0);
            }
        }
        drain_all();
        expect_records(&t.want, &E.got, 0, false);
        expect_all_acked();
        truth_free(&t);
        env_close();
    }
}

static void test_physical_line_longer_than_the_read_buffer(void **state)
{
    (void)state;
    /* containerd writes up to 16 KiB per physical line; read_buffer_bytes
     * may be as small as 4 KiB. Such a line must still be parsed as CRI:
     * its prefix is not content and its stream is known. */
    /* Was a known bug (shipped raw, malformed); fixed by continue_physical(), so it always runs. */
    env_open(&(struct env_opts){.max_line = 1024, .read_buffer = 4096});
    struct truth t = {0};
    char *s = text_of(16 * 1024, 5);
    cri_logical(&t, 1024, PARSER_STREAM_STDERR, s, 16 * 1024, 0);
    free(s);
    file_append(t.file.p, t.file.len);
    read_until_eof(false);
    drain_all();
    expect_records(&t.want, &E.got, 0, false);
    truth_free(&t);
    env_close();
}

static void test_physical_line_longer_than_the_read_buffer_loses_nothing(void **state)
{
    (void)state;
    /* Whatever it is labelled as, every byte of such a line comes out once. */
    env_open(&(struct env_opts){.max_line = 1024, .read_buffer = 4096});
    struct truth t = {0};
    char *s = text_of(16 * 1024, 5);
    cri_logical(&t, 1024, PARSER_STREAM_STDERR, s, 16 * 1024, 0);
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "next", 4, 0);
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    struct buf all = {0};
    for (size_t i = 0; i + 1 < E.got.n; i++) {
        assert_true(E.got.v[i].len <= 1024);
        buf_add(&all, E.got.v[i].data, E.got.v[i].len);
    }
    /* The line's content is all there, in order (with or without its prefix). */
    if (!strstr(all.p, s)) fail_msg("the long line's content did not come out whole (%zu bytes out)", all.len);
    free(s);
    assert_string_equal(E.got.v[E.got.n - 1].data, "next");
    buf_free(&all);
    expect_all_acked();
    truth_free(&t);
    env_close();
}

/* CRI-O's conmon writes a P line for every read of the container's pipe
 * that did not end in a newline: a program drawing a progress bar makes a
 * short logical line out of many tiny pieces, each with its ~36-byte
 * prefix. Joined, the line is far below max_line_bytes, so it must come out
 * as one record — not as pieces cut wherever a read buffer ended. */
static void test_line_of_tiny_pieces_is_still_one_line(void **state)
{
    (void)state;
    if (!known_bugs_enabled()) skip();
    env_open(&(struct env_opts){.max_line = 1024, .read_buffer = 4096});
    struct truth t = {0};
    char *s = text_of(600, 9);
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, s, 600, 2); /* 300 pieces: ~11 KiB on disk */
    free(s);
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "next", 4, 0);
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    expect_records(&t.want, &E.got, 0, false);
    truth_free(&t);
    env_close();
}

static void test_line_of_tiny_pieces_loses_nothing(void **state)
{
    (void)state;
    /* However it is cut, every byte comes out once, in order, and the
     * acknowledged offset reaches the end. */
    env_open(&(struct env_opts){.max_line = 1024, .read_buffer = 4096});
    struct truth t = {0};
    char *s = text_of(600, 9);
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, s, 600, 2);
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "next", 4, 0);
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    struct buf all = {0};
    for (size_t i = 0; i + 1 < E.got.n; i++) {
        assert_int_equal(E.got.v[i].stream, PARSER_STREAM_STDOUT);
        buf_add(&all, E.got.v[i].data, E.got.v[i].len);
    }
    assert_int_equal(all.len, 600);
    assert_memory_equal(all.p, s, 600);
    assert_string_equal(E.got.v[E.got.n - 1].data, "next");
    free(s);
    buf_free(&all);
    expect_all_acked();
    truth_free(&t);
    env_close();
}

static void test_incomplete_line_waits_then_is_flushed(void **state)
{
    (void)state;
    env_open(&(struct env_opts){0});
    struct truth t = {0};
    int64_t t1 = next_ts(&t);
    cri_physical(&t, t1, PARSER_STREAM_STDOUT, 'F', "complete", 8);
    file_append(t.file.p, t.file.len);
    /* A line whose newline is not written yet. */
    char stamp[31];
    parser_format_rfc3339(next_ts(&t), stamp);
    char partial[128];
    int n = snprintf(partial, sizeof partial, "%s stdout F half a li", stamp);
    file_append(partial, (size_t)n);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    assert_int_equal(E.got.n, 1);
    assert_string_equal(E.got.v[0].data, "complete");
    /* It waits: the offset stays before it, and the file says since when. */
    uint64_t line_start = t.file.len;
    assert_int_equal(E.f->offset, line_start);
    assert_int_equal(E.f->incomplete_offset, line_start);
    assert_true(E.f->incomplete_since_ms > 0);
    int64_t since = E.f->incomplete_since_ms;
    /* Reading again without the flush changes nothing (and keeps "since"). */
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    assert_int_equal(E.got.n, 1);
    assert_int_equal(E.f->incomplete_since_ms, since);

    /* The flush timeout passed: it goes out as it is, flagged. */
    assert_int_equal(read_until_eof(true), READ_EOF);
    drain_all();
    assert_int_equal(E.got.n, 2);
    assert_string_equal(E.got.v[1].data, "half a li");
    assert_true(E.got.v[1].flags & SOURCE_RECORD_FLUSHED);
    assert_int_equal(E.got.v[1].stream, PARSER_STREAM_STDOUT);
    assert_int_equal(E.f->offset, E.written);
    assert_int_equal(E.f->incomplete_since_ms, 0);
    assert_true(E.f->after_flush);
    /* Flushing again with nothing new sends nothing twice. */
    assert_int_equal(read_until_eof(true), READ_EOF);
    drain_all();
    assert_int_equal(E.got.n, 2);

    /* Its rest arrives: a piece of that line, not a line of its own. */
    file_append("ne, the rest\n", 13);
    struct truth t2 = {0};
    t2.ts = t.ts;
    cri_logical(&t2, 1024, PARSER_STREAM_STDERR, "the next line", 13, 0);
    file_append(t2.file.p, t2.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    assert_int_equal(E.got.n, 4);
    assert_string_equal(E.got.v[2].data, "ne, the rest");
    assert_true(E.got.v[2].flags & SOURCE_RECORD_SPLIT);
    assert_false(E.f->after_flush);
    assert_string_equal(E.got.v[3].data, "the next line");
    assert_int_equal(E.got.v[3].flags, 0);
    assert_int_equal(E.got.v[3].stream, PARSER_STREAM_STDERR);
    expect_all_acked();

    /* A flushed line whose rest is just its newline: nothing more is sent. */
    parser_format_rfc3339(next_ts(&t), stamp);
    n = snprintf(partial, sizeof partial, "%s stdout F whole but late", stamp);
    file_append(partial, (size_t)n);
    assert_int_equal(read_until_eof(true), READ_EOF);
    file_append("\n", 1);
    struct truth t3 = {0};
    t3.ts = t.ts + 1000000000;
    cri_logical(&t3, 1024, PARSER_STREAM_STDOUT, "and after", 9, 0);
    file_append(t3.file.p, t3.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    assert_int_equal(E.got.n, 6);
    assert_string_equal(E.got.v[4].data, "whole but late");
    assert_string_equal(E.got.v[5].data, "and after");
    expect_all_acked();
    truth_free(&t);
    truth_free(&t2);
    truth_free(&t3);
    env_close();
}

static void test_incomplete_line_completed_before_the_flush_is_one_line(void **state)
{
    (void)state;
    env_open(&(struct env_opts){0});
    struct truth t = {0};
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "written in two goes", 19, 0);
    file_append(t.file.p, 20);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    assert_int_equal(E.got.n, 0);
    file_append(t.file.p + 20, t.file.len - 20);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    expect_records(&t.want, &E.got, 0, false);
    assert_int_equal(E.f->incomplete_since_ms, 0);
    expect_all_acked();
    truth_free(&t);
    env_close();
}

static void test_invalid_utf8_is_repaired(void **state)
{
    (void)state;
    env_open(&(struct env_opts){0});
    struct truth t = {0};
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"bad \xff byte", "bad \xef\xbf\xbd byte"},
        {"lone lead \xc3", "lone lead \xef\xbf\xbd"},
        {"overlong \xc0\xaf slash", "overlong \xef\xbf\xbd\xef\xbf\xbd slash"},
        {"surrogate \xed\xa0\x80!", "surrogate \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd!"},
        {"fine caf\xc3\xa9 \xf0\x9f\x98\x80", "fine caf\xc3\xa9 \xf0\x9f\x98\x80"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t ts = next_ts(&t);
        cri_physical(&t, ts, PARSER_STREAM_STDOUT, 'F', cases[i].in, strlen(cases[i].in));
        bool fixed = strcmp(cases[i].in, cases[i].out) != 0;
        want_rec(&t, cases[i].out, strlen(cases[i].out), PARSER_STREAM_STDOUT, fixed ? SOURCE_RECORD_UTF8_FIXED : 0,
                 ts, ts);
    }
    /* A whole max_line of invalid bytes: the repair triples it (3 bytes per
     * U+FFFD) and must still fit. */
    char bad[1024];
    memset(bad, '\xff', sizeof bad);
    int64_t ts = next_ts(&t);
    cri_physical(&t, ts, PARSER_STREAM_STDERR, 'F', bad, sizeof bad);
    struct buf fixed = {0};
    for (size_t i = 0; i < sizeof bad; i++) buf_add(&fixed, "\xef\xbf\xbd", 3);
    want_rec(&t, fixed.p, fixed.len, PARSER_STREAM_STDERR, SOURCE_RECORD_UTF8_FIXED, ts, ts);
    buf_free(&fixed);
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    expect_records(&t.want, &E.got, 0, false);
    expect_all_acked();
    truth_free(&t);
    env_close();
}

static void test_split_never_cuts_a_utf8_sequence(void **state)
{
    (void)state;
    env_open(&(struct env_opts){.max_line = 1024});
    struct truth t = {0};
    /* 3000 bytes of 2-, 3- and 4-byte characters, offset so a plain
     * max_line cut would land inside one. */
    struct buf s = {0};
    buf_add(&s, "x", 1);
    while (s.len < 3000) buf_add(&s, "\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80", 9);
    cri_physical(&t, next_ts(&t), PARSER_STREAM_STDOUT, 'F', s.p, s.len);
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    struct buf all = {0};
    assert_true(E.got.n >= 3);
    for (size_t i = 0; i < E.got.n; i++) {
        const struct rec *r = &E.got.v[i];
        assert_true(r->flags & SOURCE_RECORD_SPLIT);
        assert_false(r->flags & SOURCE_RECORD_UTF8_FIXED); /* nothing was broken to repair */
        assert_true(r->len <= 1024);
        if (i + 1 < E.got.n) assert_true(r->len >= 1021);
        assert_int_equal(parser_utf8_valid_prefix(r->data, r->len), r->len);
        buf_add(&all, r->data, r->len);
    }
    assert_int_equal(all.len, s.len);
    assert_memory_equal(all.p, s.p, s.len);
    buf_free(&all);
    buf_free(&s);
    expect_all_acked();
    truth_free(&t);
    env_close();
}

static void test_malformed_lines_are_shipped_as_they_are(void **state)
{
    (void)state;
    env_open(&(struct env_opts){.format = CONFIG_FORMAT_CRI});
    struct truth t = {0};
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "good", 4, 0);
    int64_t tp = next_ts(&t);
    cri_physical(&t, tp, PARSER_STREAM_STDOUT, 'P', "piece before garbage", 20);
    static const char *const bad[] = {
        "not a cri line at all",
        "2024-13-45T99:99:99Z stdout F bad time",
        "2024-01-01T00:00:00Z stdin F bad stream",
        "2024-01-01T00:00:00Z stdout X bad tag",
        "2024-01-01T00:00:00Z\tstdout F tab separator",
        "",
    };
    int64_t before = 0;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    before = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    want_rec(&t, "piece before garbage", 20, PARSER_STREAM_STDOUT, SOURCE_RECORD_SPLIT, tp, tp);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        buf_add(&t.file, bad[i], strlen(bad[i]));
        buf_add(&t.file, "\n", 1);
        want_rec(&t, bad[i], strlen(bad[i]), PARSER_STREAM_UNKNOWN, SOURCE_RECORD_MALFORMED, before, INT64_MAX);
    }
    cri_logical(&t, 1024, PARSER_STREAM_STDERR, "good again", 10, 0);
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    expect_records(&t.want, &E.got, 0, false);
    expect_all_acked();
    truth_free(&t);
    env_close();
}

static void docker_line(struct truth *t, const char *log_json, const char *stream, int64_t ts)
{
    char stamp[31];
    parser_format_rfc3339(ts, stamp);
    char line[4096];
    int n = snprintf(line, sizeof line, "{\"log\":\"%s\",\"stream\":\"%s\",\"time\":\"%s\"}\n", log_json, stream, stamp);
    buf_add(&t->file, line, (size_t)n);
}

static void test_docker_json_lines(void **state)
{
    (void)state;
    env_open(&(struct env_opts){0}); /* auto: detected from the first line */
    struct truth t = {0};
    int64_t t1 = next_ts(&t), t2 = next_ts(&t), t3 = next_ts(&t), t4 = next_ts(&t), t5 = next_ts(&t);
    docker_line(&t, "hello\\n", "stdout", t1);
    want_rec(&t, "hello", 5, PARSER_STREAM_STDOUT, 0, t1, t1);
    docker_line(&t, "caf\\u00e9 \\\"q\\\" \\\\ \\t\\n", "stderr", t2);
    want_rec(&t, "caf\xc3\xa9 \"q\" \\ \t", strlen("caf\xc3\xa9 \"q\" \\ \t"), PARSER_STREAM_STDERR, 0, t2, t2);
    /* A "log" without its "\n" is a piece: joined with what follows. */
    docker_line(&t, "part one, ", "stdout", t3);
    docker_line(&t, "part two\\n", "stdout", t4);
    want_rec(&t, "part one, part two", 18, PARSER_STREAM_STDOUT, 0, t3, t3);
    buf_add(&t.file, "{broken json\n", 13);
    want_rec(&t, "{broken json", 12, PARSER_STREAM_UNKNOWN, SOURCE_RECORD_MALFORMED, 0, INT64_MAX);
    docker_line(&t, "\\n", "stdout", t5);
    want_rec(&t, "", 0, PARSER_STREAM_STDOUT, 0, t5, t5);
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    assert_int_equal(E.f->format, CONFIG_FORMAT_DOCKER);
    expect_records(&t.want, &E.got, 0, false);
    expect_all_acked();
    truth_free(&t);
    env_close();
}

static void test_excluded_lines_still_move_the_offset(void **state)
{
    (void)state;
    env_open(&(struct env_opts){.exclude = "DEBUG"});
    struct truth t = {0};
    struct truth skip = {0};
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "kept 1", 6, 0);
    for (int i = 0; i < 50; i++) {
        skip.ts = t.ts;
        cri_logical(&skip, 1024, PARSER_STREAM_STDOUT, "DEBUG noise", 11, 0);
        t.ts = skip.ts;
    }
    buf_add(&t.file, skip.file.p, skip.file.len);
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "kept 2", 6, 0);
    /* Order in the file: kept 1, 50 noise, kept 2. */
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    assert_int_equal(E.got.n, 2);
    assert_string_equal(E.got.v[0].data, "kept 1");
    assert_string_equal(E.got.v[1].data, "kept 2");
    expect_all_acked();
    /* Only noise: an empty chunk still carries the offset to acknowledge. */
    file_append(skip.file.p, skip.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    assert_int_equal(E.got.n, 2);
    expect_all_acked();
    truth_free(&t);
    truth_free(&skip);
    env_close();
}

/* ---------------------------------------------------------------------------
 * Back-pressure: a ring too small for what is written.
 */

/* Writes the truth in `writes` appends, reading after each; the ring fills
 * wherever it fills. Returns the number of re-sent split pieces. */
static size_t pressure_run(const struct env_opts *o, struct truth *t, int drain_style, size_t writes, bool resend_ok)
{
    env_open(o);
    E.drain_style = drain_style;
    size_t step = t->file.len / writes + 1;
    for (size_t off = 0; off < t->file.len; off += step) {
        size_t n = t->file.len - off < step ? t->file.len - off : step;
        file_append(t->file.p + off, n);
        assert_int_equal(read_until_eof(false), READ_EOF);
    }
    drain_all();
    check_ack_order = true;
    size_t resent = expect_records(&t->want, &E.got, 0, resend_ok);
    check_ack_order = false;
    expect_all_acked();
    return resent;
}

static void test_full_ring_loses_and_duplicates_nothing(void **state)
{
    (void)state;
    /* Short and medium lines, joined pieces, both streams: no split lines,
     * so every record must arrive exactly once. */
    size_t runs = 0, blocked = 0;
    for (unsigned shape = 0; shape < 4; shape++) {
        struct truth t = {0};
        srand(1000 + shape);
        for (int i = 0; i < 400; i++) {
            size_t len = shape == 0 ? 10 + (size_t)(rand() % 40)
                         : shape == 1 ? (size_t)(rand() % 1024)
                         : shape == 2 ? 900 + (size_t)(rand() % 125)
                                      : (size_t)(rand() % 300);
            char *s = text_of(len, (unsigned)i);
            /* Pieces no smaller than 64 bytes: a logical line of max_line
             * bytes with its CRI prefixes then fits one read (see
             * test_line_of_tiny_pieces_is_still_one_line for smaller). */
            size_t piece = rand() % 4 == 0 ? 64 + (size_t)(rand() % 300) : 0;
            cri_logical(&t, 1024, (uint8_t)(rand() % 2), s, len, piece);
            free(s);
        }
        /* Ring sizes from the smallest the collector accepts up: the point
         * where it fills moves through lines, pieces and chunk headers. */
        for (size_t ring = 6400; ring < 40000; ring += 2048 + 8 * shape) {
            for (int style = 0; style < 2; style++) {
                size_t writes = style ? 7 : 1;
                snprintf(ctx, sizeof ctx, "[shape %u ring %zu drain %d writes %zu]", shape, ring, style, writes);
                struct env_opts o = {.max_line = 1024, .read_buffer = 4096, .ring_bytes = ring};
                pressure_run(&o, &t, style, writes, false);
                blocked += E.blocked;
                runs++;
                env_close();
            }
        }
        truth_free(&t);
    }
    print_message("      (%zu runs, the ring was full %zu times)\n", runs, blocked);
    assert_true(blocked > runs);
}

/* A multiline join through a ring that fills anywhere (issue 11): every
 * trace arrives joined, exactly once and in order, with its first line's
 * time; no chunk acknowledges past a join still held (check_ack_order: a
 * crash then would lose it); at the end everything is acknowledged. */
static void test_full_ring_with_multiline_joins_loses_nothing(void **state)
{
    (void)state;
    size_t runs = 0, blocked = 0;
    struct truth t = {0};
    srand(77);
    for (int i = 0; i < 300; i++) {
        char entry[1024];
        size_t elen = 0;
        int frames = rand() % 6;
        int64_t first = 0;
        for (int k = 0; k <= frames; k++) {
            char line[128];
            int n = k ? snprintf(line, sizeof line, "\tat frame.%d.%d(%s)", i, k, "Shop.java")
                      : snprintf(line, sizeof line, "E%d %.*s", i, rand() % 60, "java.lang.IllegalStateException: "
                                                                                 "inventory could not be loaded....");
            int64_t ts = next_ts(&t);
            if (!k) first = ts;
            cri_physical(&t, ts, PARSER_STREAM_STDOUT, 'F', line, (size_t)n);
            if (k) entry[elen++] = '\n';
            memcpy(entry + elen, line, (size_t)n);
            elen += (size_t)n;
        }
        want_rec(&t, entry, elen, PARSER_STREAM_STDOUT, 0, first, first);
        t.want.v[t.want.n - 1].line_end = t.file.len;
    }
    for (size_t ring = 6400; ring < 30000; ring += 1536) {
        for (int style = 0; style < 2; style++) {
            size_t writes = style ? 11 : 1;
            snprintf(ctx, sizeof ctx, "[multiline ring %zu drain %d writes %zu]", ring, style, writes);
            env_open(&(struct env_opts){.max_line = 1024, .read_buffer = 4096, .ring_bytes = ring,
                                        .pipeline = "pipeline:\n  - stages:\n      - multiline: {continue: '^\\t'}\n"});
            assert_non_null(E.f->pipe);
            E.drain_style = style;
            size_t step = t.file.len / writes + 1;
            for (size_t off = 0; off < t.file.len; off += step) {
                size_t n = t.file.len - off < step ? t.file.len - off : step;
                file_append(t.file.p + off, n);
                assert_int_equal(read_until_eof(false), READ_EOF);
                assert_true(atomic_load(&E.f->src->acked_offset) <= pipeline_file_ack_limit(E.f->pipe));
            }
            /* The last trace waits for its timeout: send it as the timeout would. */
            while (!tail_pipeline_flush(E.c, E.f)) {
                drain_all();
                E.c->blocked = false;
            }
            drain_all();
            check_ack_order = true;
            expect_records(&t.want, &E.got, 0, false);
            check_ack_order = false;
            expect_all_acked();
            blocked += E.blocked;
            runs++;
            env_close();
        }
    }
    truth_free(&t);
    print_message("      (%zu runs, the ring was full %zu times)\n", runs, blocked);
    assert_true(blocked > runs);
}

static void test_full_ring_with_long_lines_loses_nothing(void **state)
{
    (void)state;
    /* With lines over max_line, pieces already committed may be sent again
     * after a blocked read (documented); nothing may be lost or reordered,
     * and lines that are not split are still sent exactly once. */
    size_t runs = 0, blocked = 0, resent = 0;
    for (unsigned shape = 0; shape < 3; shape++) {
        struct truth t = {0};
        srand(2000 + shape);
        for (int i = 0; i < 120; i++) {
            size_t len = rand() % 3 == 0 ? 1025 + (size_t)(rand() % 4000) : (size_t)(rand() % 200);
            char *s = text_of(len, (unsigned)i);
            size_t piece = len > 3000 || shape == 2 ? 200 + (size_t)(rand() % 1800) : 0;
            cri_logical(&t, 1024, (uint8_t)(rand() % 2), s, len, piece);
            free(s);
        }
        for (size_t ring = 6400; ring < 30000; ring += 1536 + 8 * shape) {
            for (int style = 0; style < 2; style++) {
                struct env_opts o = {.max_line = 1024, .read_buffer = 4096, .ring_bytes = ring};
                snprintf(ctx, sizeof ctx, "[shape %u ring %zu drain %d]", shape, ring, style);
                resent += pressure_run(&o, &t, style, style ? 5 : 1, true);
                blocked += E.blocked;
                runs++;
                env_close();
            }
        }
        truth_free(&t);
    }
    print_message("      (%zu runs, the ring was full %zu times, %zu pieces re-sent)\n", runs, blocked, resent);
    assert_true(blocked > runs);
}

static void test_full_ring_while_a_flushed_line_waits_for_its_rest(void **state)
{
    (void)state;
    /* The ring fills just as the rest of a flushed line arrives. */
    for (size_t ring = 6400; ring < 12000; ring += 520) {
        env_open(&(struct env_opts){.ring_bytes = ring});
        char stamp[31];
        parser_format_rfc3339(1700000000000000000, stamp);
        char line[2048];
        int n = snprintf(line, sizeof line, "%s stdout F head", stamp);
        file_append(line, (size_t)n);
        assert_int_equal(read_until_eof(true), READ_EOF);
        assert_true(E.f->after_flush);
        /* Fill the ring with committed chunks the output has not taken. */
        struct truth t = {0};
        for (int i = 0; i < 40; i++) {
            char *s = text_of(900, (unsigned)i);
            cri_logical(&t, 1024, PARSER_STREAM_STDOUT, s, 900, 0);
            free(s);
        }
        file_append(" and its rest\n", 14);
        file_append(t.file.p, t.file.len);
        assert_int_equal(read_until_eof(false), READ_EOF);
        drain_all();
        assert_string_equal(E.got.v[0].data, "head");
        assert_string_equal(E.got.v[1].data, " and its rest");
        assert_int_equal(E.got.v[1].flags, SOURCE_RECORD_SPLIT);
        struct recs rest = {.v = E.got.v + 2, .n = E.got.n - 2};
        expect_records(&t.want, &rest, 0, false);
        expect_all_acked();
        truth_free(&t);
        env_close();
    }
}

/* The ring is full at the very first reservation of a read, whatever the
 * file's assembly state: the read must report BLOCKED and leave the state
 * describing f->offset, so that the next read goes on exactly there. (The
 * collector's loop only reads once the ring has room, but the hot path's
 * promise does not depend on that.) */
static void blocked_read_keeps_state(bool flush)
{
    struct tailed_file *f = E.f;
    uint64_t offset = f->offset;
    bool continuing = f->continuing, after_flush = f->after_flush;
    size_t skip = f->continuing_skip;
    int64_t cts = f->continuing_ts;
    size_t before = E.got.n;
    fill_ring();
    E.c->blocked = false;
    assert_int_equal(tail_read(E.c, f, flush), READ_BLOCKED);
    assert_true(E.c->blocked);
    check_invariants();
    assert_int_equal(f->offset, offset);
    assert_int_equal(f->continuing, continuing);
    assert_int_equal(f->after_flush, after_flush);
    if (continuing) {
        assert_int_equal(f->continuing_skip, skip);
        assert_int_equal(f->continuing_ts, cts);
    }
    drain_all();
    assert_int_equal(E.got.n, before);
    E.c->blocked = false;
}

static void test_blocked_at_the_first_reservation_in_every_state(void **state)
{
    (void)state;
    env_open(&(struct env_opts){.max_line = 1024, .read_buffer = 4096, .ring_bytes = 16384});
    char stamp[31], line[256];

    /* 1. After a flushed line: its rest must still be taken as its rest. */
    parser_format_rfc3339(1700000000000000000, stamp);
    int n = snprintf(line, sizeof line, "%s stderr F head of a line", stamp);
    file_append(line, (size_t)n);
    assert_int_equal(read_until_eof(true), READ_EOF);
    drain_all();
    assert_true(E.f->after_flush);
    file_append(", its rest\n", 11);
    struct truth t = {0};
    t.ts = 1700000001000000000;
    cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "then a line", 11, 0);
    file_append(t.file.p, t.file.len);
    blocked_read_keeps_state(false);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    assert_int_equal(E.got.n, 3);
    assert_string_equal(E.got.v[0].data, "head of a line");
    assert_int_equal(E.got.v[0].flags, SOURCE_RECORD_FLUSHED);
    assert_string_equal(E.got.v[1].data, ", its rest");
    assert_int_equal(E.got.v[1].flags, SOURCE_RECORD_SPLIT); /* a piece, not a malformed line */
    assert_string_equal(E.got.v[2].data, "then a line");
    expect_all_acked();

    /* 2. In the middle of a long line, pieces already out (continuing). */
    struct truth t2 = {0};
    t2.ts = 1700000002000000000;
    /* Only whole physical lines are processed, so "continuing" is a
     * logical line of P pieces that a read ended inside. */
    char *pad = text_of(1000, 1);
    cri_logical(&t2, 1024, PARSER_STREAM_STDOUT, pad, 1000, 0);
    free(pad);
    char *longl = text_of(6000, 2);
    cri_logical(&t2, 1024, PARSER_STREAM_STDERR, longl, 6000, 1400);
    free(longl);
    cri_logical(&t2, 1024, PARSER_STREAM_STDOUT, "last", 4, 0);
    file_append(t2.file.p, t2.file.len);
    size_t from = E.got.n;
    int reads = 0;
    bool saw_continuing = false;
    for (enum read_result r = READ_MORE; r == READ_MORE; reads++) {
        r = tail_read(E.c, E.f, false);
        assert_true(r == READ_MORE || r == READ_EOF);
        drain_all();
        if (r == READ_MORE && E.f->continuing) {
            saw_continuing = true;
            blocked_read_keeps_state(false);
        } else if (r == READ_MORE) {
            blocked_read_keeps_state(false);
        }
    }
    assert_true(saw_continuing);
    expect_records(&t2.want, &E.got, from, false);
    expect_all_acked();

    /* 3. A line waiting for its newline, the flush due: blocked, then flushed. */
    parser_format_rfc3339(1700000003000000000, stamp);
    n = snprintf(line, sizeof line, "%s stdout F waiting", stamp);
    file_append(line, (size_t)n);
    assert_int_equal(read_until_eof(false), READ_EOF);
    blocked_read_keeps_state(true);
    assert_int_equal(read_until_eof(true), READ_EOF);
    drain_all();
    assert_string_equal(E.got.v[E.got.n - 1].data, "waiting");
    assert_int_equal(E.got.v[E.got.n - 1].flags, SOURCE_RECORD_FLUSHED);
    expect_all_acked();
    truth_free(&t);
    truth_free(&t2);
    env_close();
}

/* ---------------------------------------------------------------------------
 * Truncation (copytruncate).
 */

static void test_truncation_starts_a_fresh_source(void **state)
{
    (void)state;
    env_open(&(struct env_opts){0});
    struct truth t = {0};
    for (int i = 0; i < 20; i++) cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "before the truncation", 21, 0);
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    drain_all();
    assert_int_equal(E.got.n, 20);
    struct source *old = E.f->src;
    source_ref(old); /* to look at it afterwards */
    assert_int_equal(atomic_load(&old->acked_offset), t.file.len);

    /* copytruncate: the file is cut to 0 and the writer goes on. */
    assert_int_equal(ftruncate(E.wfd, 0), 0);
    E.written = 0;
    struct truth t2 = {0};
    t2.ts = t.ts;
    for (int i = 0; i < 3; i++) cri_logical(&t2, 1024, PARSER_STREAM_STDERR, "after", 5, 0);
    file_append(t2.file.p, t2.file.len);
    assert_true(t2.file.len < t.file.len);

    assert_int_equal(read_until_eof(false), READ_EOF);
    assert_ptr_not_equal(E.f->src, old);
    assert_int_equal(atomic_load(&old->acked_offset), t.file.len); /* the old one is left as it was */
    /* The fresh source starts at 0 with the same identity. */
    assert_string_equal(E.f->src->path, old->path);
    assert_int_equal(E.f->src->ino, old->ino);
    assert_string_equal(E.f->src->labels[0], old->labels[0]);
    drain_all();
    assert_int_equal(E.got.n, 23);
    struct recs after = {.v = E.got.v + 20, .n = 3};
    expect_records(&t2.want, &after, 0, false);
    for (size_t i = 20; i < 23; i++) assert_ptr_equal(E.got.v[i].src, E.f->src);
    expect_all_acked();
    assert_int_equal(atomic_load(&E.f->src->acked_offset), t2.file.len);
    source_unref(old);
    truth_free(&t);
    truth_free(&t2);
    env_close();
}

static void test_truncation_with_chunks_in_flight(void **state)
{
    (void)state;
    /* The old source's chunks are still in the ring when the file is cut:
     * they acknowledge the old source, never the fresh one. */
    env_open(&(struct env_opts){0});
    struct truth t = {0};
    for (int i = 0; i < 10; i++) cri_logical(&t, 1024, PARSER_STREAM_STDOUT, "old line", 8, 0);
    file_append(t.file.p, t.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    struct source *old = E.f->src;
    source_ref(old);
    assert_int_equal(ftruncate(E.wfd, 0), 0);
    E.written = 0;
    struct truth t2 = {0};
    t2.ts = t.ts;
    cri_logical(&t2, 1024, PARSER_STREAM_STDOUT, "new", 3, 0);
    file_append(t2.file.p, t2.file.len);
    assert_int_equal(read_until_eof(false), READ_EOF);
    assert_int_equal(atomic_load(&E.f->src->acked_offset), 0);
    /* Now the output catches up. */
    E.written = t.file.len; /* for the bound check of the old chunks */
    drain_all();
    assert_int_equal(atomic_load(&old->acked_offset), t.file.len);
    assert_int_equal(atomic_load(&E.f->src->acked_offset), t2.file.len);
    assert_int_equal(E.got.n, 11);
    assert_string_equal(E.got.v[10].data, "new");
    assert_ptr_equal(E.got.v[0].src, old);
    assert_ptr_equal(E.got.v[10].src, E.f->src);
    source_unref(old);
    truth_free(&t);
    truth_free(&t2);
    env_close();
}

/* A failed test leaves its environment open: close it (files, ring, references). */
static int env_teardown(void **state)
{
    (void)state;
    if (env_is_open) env_close();
    return 0;
}

int main(void)
{
    log_setup(LOG_LEVEL_ERROR, LOG_FORMAT_LOGFMT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_cri_full_lines, env_teardown),
        cmocka_unit_test_teardown(test_cri_partial_pieces_are_joined, env_teardown),
        cmocka_unit_test_teardown(test_pieces_of_one_stream_interrupted_by_the_other, env_teardown),
        cmocka_unit_test_teardown(test_long_lines_split_into_exact_pieces_at_any_buffer_boundary, env_teardown),
        cmocka_unit_test_teardown(test_long_lines_of_big_pieces_split_into_exact_pieces, env_teardown),
        cmocka_unit_test_teardown(test_long_line_written_in_dribbles, env_teardown),
        cmocka_unit_test_teardown(test_physical_line_longer_than_the_read_buffer, env_teardown),
        cmocka_unit_test_teardown(test_physical_line_longer_than_the_read_buffer_loses_nothing, env_teardown),
        cmocka_unit_test_teardown(test_line_of_tiny_pieces_is_still_one_line, env_teardown),
        cmocka_unit_test_teardown(test_line_of_tiny_pieces_loses_nothing, env_teardown),
        cmocka_unit_test_teardown(test_incomplete_line_waits_then_is_flushed, env_teardown),
        cmocka_unit_test_teardown(test_incomplete_line_completed_before_the_flush_is_one_line, env_teardown),
        cmocka_unit_test_teardown(test_invalid_utf8_is_repaired, env_teardown),
        cmocka_unit_test_teardown(test_split_never_cuts_a_utf8_sequence, env_teardown),
        cmocka_unit_test_teardown(test_malformed_lines_are_shipped_as_they_are, env_teardown),
        cmocka_unit_test_teardown(test_docker_json_lines, env_teardown),
        cmocka_unit_test_teardown(test_excluded_lines_still_move_the_offset, env_teardown),
        cmocka_unit_test_teardown(test_full_ring_loses_and_duplicates_nothing, env_teardown),
        cmocka_unit_test_teardown(test_full_ring_with_long_lines_loses_nothing, env_teardown),
        cmocka_unit_test_teardown(test_full_ring_while_a_flushed_line_waits_for_its_rest, env_teardown),
        cmocka_unit_test_teardown(test_blocked_at_the_first_reservation_in_every_state, env_teardown),
        cmocka_unit_test_teardown(test_truncation_starts_a_fresh_source, env_teardown),
        cmocka_unit_test_teardown(test_full_ring_with_multiline_joins_loses_nothing, env_teardown),
        cmocka_unit_test_teardown(test_truncation_with_chunks_in_flight, env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
