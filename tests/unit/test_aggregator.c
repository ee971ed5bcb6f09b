/*
 * test_aggregator — chunks in, Loki bodies out, checked against ground truth.
 *
 * The oracle is what the test put in: every record's source (and so its
 * label text), stream kind, timestamp and bytes. Each sealed body is decoded
 * independently (snappy, then the protobuf-c unpacker) and every entry must
 * be found under exactly the label set its source rendered, in order.
 *
 * The bug this guards against: the aggregator once cached a stream by the
 * chunk's address in the ring; on a quiet node consecutive chunks of
 * different files land at the same address and went out under the first
 * file's labels. So every chunk here is built in ONE reused buffer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <snappy-c.h>

#include "aggregator/aggregator.h"
#include "config/config.h"
#include "log/log.h"
#include "loki/push.pb-c.h"
#include "metrics/metrics.h"
#include "source/source.h"

/* ---------------------------------------------------------------------------
 * Fixtures: sources, one chunk buffer, the oracle.
 */

static struct source *make_source(const char *path, const char *ns, const char *pod, const char *container,
                                  const struct source_label_policy *pol)
{
    struct parser_path_meta m;
    memset(&m, 0, sizeof m);
    snprintf(m.namespace_, sizeof m.namespace_, "%s", ns);
    snprintf(m.pod, sizeof m.pod, "%s", pod);
    snprintf(m.container, sizeof m.container, "%s", container);
    snprintf(m.pod_uid, sizeof m.pod_uid, "uid-of-%s", path);
    snprintf(m.container_id, sizeof m.container_id, "cid-of-%s", path);
    struct source *s = source_new(path, path, &m, 1, 1);
    assert_non_null(s);
    char err[256];
    if (source_render_labels(s, pol, err, sizeof err) != 0) fail_msg("%s", err);
    return s;
}

/* The one buffer every chunk is built in: same address each time, as a
 * ring block is on a quiet node. */
static uint64_t chunk_space[1 << 16];
#define CHUNK ((struct source_chunk *)chunk_space)

static size_t chunk_len;

/* Starts a chunk of `src`, taking the reference the chunk owns. */
static void chunk_begin(struct source *src, uint64_t end_offset)
{
    memset(chunk_space, 0xA5, 4096); /* stale bytes where the last chunk was */
    source_ref(src);
    *CHUNK = (struct source_chunk){.source = src, .end_offset = end_offset, .records = 0};
    chunk_len = sizeof(struct source_chunk);
}

static void chunk_put(int64_t ts, uint8_t stream, const char *line, size_t len)
{
    assert_true(chunk_len + SOURCE_RECORD_SIZE(len) <= sizeof chunk_space);
    struct source_record *rec = (struct source_record *)((char *)chunk_space + chunk_len);
    *rec = (struct source_record){.ts_ns = ts, .len = (uint32_t)len, .stream = stream};
    memcpy(rec + 1, line, len);
    chunk_len += SOURCE_RECORD_SIZE(len);
    CHUNK->records++;
}

/* What the test knows went in. */
struct expect {
    char *labels; /* copy of the source's rendered text for the record's kind */
    char *line;
    size_t len;
    int64_t ts;
    char *pod_uid, *container_id; /* copies: the source may be gone by the check */
    int batch; /* filled when found */
};

static struct expect want[20000];
static size_t nwant;

static void put(struct source *src, int64_t ts, uint8_t stream, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void put(struct source *src, int64_t ts, uint8_t stream, const char *fmt, ...)
{
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof line);
    chunk_put(ts, stream, line, (size_t)n);
    assert_true(nwant < sizeof want / sizeof want[0]);
    struct expect *e = &want[nwant++];
    e->labels = strdup(source_stream_labels(src, stream));
    e->line = strdup(line);
    e->len = (size_t)n;
    e->ts = ts;
    e->pod_uid = strdup(src->meta.pod_uid);
    e->container_id = strdup(src->meta.container_id);
    e->batch = -1;
}

static void expect_reset(void)
{
    for (size_t i = 0; i < nwant; i++) {
        free(want[i].labels);
        free(want[i].line);
        free(want[i].pod_uid);
        free(want[i].container_id);
    }
    nwant = 0;
}

/* A decoded body. */
static Logproto__PushRequest *decode(const struct aggregator_batch *b)
{
    assert_non_null(b->body);
    size_t n = 0;
    assert_int_equal(snappy_uncompressed_length((const char *)b->body, b->body_len, &n), SNAPPY_OK);
    assert_int_equal(n, b->raw_len);
    char *raw = malloc(n ? n : 1);
    assert_int_equal(snappy_uncompress((const char *)b->body, b->body_len, raw, &n), SNAPPY_OK);
    Logproto__PushRequest *req = logproto__push_request__unpack(NULL, n, (const uint8_t *)raw);
    free(raw);
    assert_non_null(req);
    return req;
}

/* Acknowledgements seen, in the order batches carried them. */
struct seen_ack {
    struct source *source;
    uint64_t end_offset;
    int batch;
};
static struct seen_ack acks_seen[4096];
static size_t nacks_seen;

/* State of the run: where the next expected entry of each label set is. */
static size_t cursor_of(const char *labels, size_t from)
{
    for (size_t i = from; i < nwant; i++)
        if (want[i].batch < 0 && strcmp(want[i].labels, labels) == 0) return i;
    return SIZE_MAX;
}

/* Checks one sealed batch against the oracle: every entry is the next one
 * expected for its label set (so order within a stream holds and nothing is
 * invented), labels never repeat within a body, counts add up. Takes the
 * acks (as a sink would: offset stored, reference dropped). */
static size_t check_batch(struct aggregator *agg, struct aggregator_batch *b, int index, bool metadata)
{
    Logproto__PushRequest *req = decode(b);
    size_t entries = 0, line_bytes = 0;
    for (size_t s = 0; s < req->n_streams; s++) {
        const Logproto__StreamAdapter *st = req->streams[s];
        for (size_t t = 0; t < s; t++)
            if (strcmp(req->streams[t]->labels, st->labels) == 0) fail_msg("stream %s twice in one body", st->labels);
        assert_true(st->n_entries > 0);
        size_t at = 0;
        for (size_t e = 0; e < st->n_entries; e++) {
            const Logproto__EntryAdapter *en = st->entries[e];
            size_t i = cursor_of(st->labels, at);
            if (i == SIZE_MAX) fail_msg("entry %.*s under %s: nothing (more) expected there",
                                        (int)en->line.len, (const char *)en->line.data, st->labels);
            if (en->line.len != want[i].len || memcmp(en->line.data, want[i].line, want[i].len) != 0)
                fail_msg("under %s: got line %.*s, the next expected is %s", st->labels, (int)en->line.len,
                         (const char *)en->line.data, want[i].line);
            assert_non_null(en->timestamp);
            assert_int_equal(en->timestamp->seconds, want[i].ts / 1000000000);
            assert_int_equal(en->timestamp->nanos, want[i].ts % 1000000000);
            if (metadata) {
                assert_int_equal(en->n_structuredmetadata, 2);
                for (size_t k = 0; k < 2; k++) {
                    const Logproto__LabelPairAdapter *lp = en->structuredmetadata[k];
                    if (strcmp(lp->name, "pod_uid") == 0) assert_string_equal(lp->value, want[i].pod_uid);
                    else if (strcmp(lp->name, "container_id") == 0) assert_string_equal(lp->value, want[i].container_id);
                    else fail_msg("unexpected metadata %s", lp->name);
                }
            } else {
                assert_int_equal(en->n_structuredmetadata, 0);
            }
            /* Uid and container id are never labels. */
            assert_null(strstr(st->labels, "uid-of-"));
            assert_null(strstr(st->labels, "cid-of-"));
            want[i].batch = index;
            at = i + 1;
            entries++;
            line_bytes += en->line.len;
        }
    }
    assert_int_equal(b->entries, entries);
    assert_int_equal(b->line_bytes, line_bytes);
    logproto__push_request__free_unpacked(req, NULL);
    for (size_t k = 0; k < b->nacks; k++) {
        assert_true(nacks_seen < sizeof acks_seen / sizeof acks_seen[0]);
        acks_seen[nacks_seen++] = (struct seen_ack){b->acks[k].source, b->acks[k].end_offset, index};
        atomic_store(&b->acks[k].source->acked_offset, b->acks[k].end_offset);
        source_unref(b->acks[k].source);
    }
    aggregator_release(agg, b);
    return entries;
}

/* The run: feeds the chunk in CHUNK, sealing whenever the batch is full. */
struct run {
    struct config cfg;
    struct aggregator *agg;
    int batches;
    bool metadata;
};

static void run_init(struct run *r, int64_t batch_bytes, bool metadata)
{
    memset(r, 0, sizeof *r);
    config_defaults(&r->cfg);
    r->cfg.output.loki.batch_bytes = batch_bytes;
    r->cfg.output.loki.structured_metadata = metadata;
    r->metadata = metadata;
    char err[256];
    r->agg = aggregator_create(&r->cfg, err, sizeof err);
    assert_non_null(r->agg);
    nacks_seen = 0;
    expect_reset();
}

static void run_seal(struct run *r)
{
    struct aggregator_batch *b = aggregator_seal(r->agg);
    assert_non_null(b);
    check_batch(r->agg, b, r->batches++, r->metadata);
}

static void run_add(struct run *r)
{
    const struct source_record *next = NULL;
    uint32_t done = 0;
    int guard = 0;
    while (!aggregator_add(r->agg, CHUNK, &next, &done)) {
        assert_true(++guard < 100000);
        run_seal(r);
    }
    assert_int_equal(done, CHUNK->records);
}

/* Ends the run: everything expected was found, each exactly once. */
static void run_finish(struct run *r)
{
    if (aggregator_has_data(r->agg)) run_seal(r);
    assert_false(aggregator_has_data(r->agg));
    for (size_t i = 0; i < nwant; i++)
        if (want[i].batch < 0) fail_msg("line %s (under %s) never went out", want[i].line, want[i].labels);
    aggregator_destroy(r->agg);
    config_free(&r->cfg);
}

static const struct source_label_policy stream_policy = {.node_name = "node-a", .stream = true, .static_labels = NULL};
static const struct source_label_policy plain_policy = {.node_name = "node-a", .stream = false, .static_labels = NULL};

/* ---------------------------------------------------------------------------
 * Tests.
 */

static void test_chunks_at_one_address_keep_their_own_labels(void **state)
{
    (void)state;
    struct run r;
    run_init(&r, 1 << 20, false);
    struct source *src[5];
    for (int i = 0; i < 5; i++) {
        char path[64], pod[16];
        snprintf(path, sizeof path, "/var/log/containers/p%d.log", i);
        snprintf(pod, sizeof pod, "pod-%d", i);
        src[i] = make_source(path, "ns", pod, "app", &stream_policy);
    }
    /* One chunk per source, one after another, each in the same buffer:
     * then again in another order, and a source twice in a row. */
    const int order[] = {0, 1, 2, 3, 4, 4, 2, 0, 3, 1, 1, 0};
    int64_t ts = 1700000000000000000;
    for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
        struct source *s = src[order[k]];
        chunk_begin(s, 100 * (k + 1));
        for (int l = 0; l < 3; l++) put(s, ts++, PARSER_STREAM_STDOUT, "chunk %zu line %d of %s", k, l, s->path);
        run_add(&r);
    }
    run_seal(&r);
    assert_int_equal(r.batches, 1);
    /* One ack per chunk, in the order they were added, each its chunk's. */
    assert_int_equal(nacks_seen, sizeof order / sizeof order[0]);
    for (size_t k = 0; k < nacks_seen; k++) {
        assert_ptr_equal(acks_seen[k].source, src[order[k]]);
        assert_int_equal(acks_seen[k].end_offset, 100 * (k + 1));
    }
    run_finish(&r);
    /* The aggregator took no reference of its own and dropped none: each
     * chunk's reference went to its ack, which the check dropped. */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(atomic_load(&src[i]->refs), 1);
        source_unref(src[i]);
    }
}

static void test_many_sources_interleaved_across_many_batches(void **state)
{
    (void)state;
    /* Random chunk sizes and sources, small batches: every boundary case of
     * a chunk landing, splitting, or starting a batch is hit somewhere. */
    for (int metadata = 0; metadata < 2; metadata++) {
        struct run r;
        run_init(&r, 700, metadata);
        struct source *src[8];
        for (int i = 0; i < 8; i++) {
            char path[64], pod[16];
            snprintf(path, sizeof path, "/var/log/containers/f%d.log", i);
            /* f6 and f7 have the labels of f0 and f1 (another file of the
             * same container): their lines share those streams. */
            snprintf(pod, sizeof pod, "pod-%d", i % 6);
            src[i] = make_source(path, "ns", pod, "c", i % 2 ? &stream_policy : &plain_policy);
        }
        srand(12345 + metadata);
        uint64_t end[8] = {0};
        int64_t ts = 1700000000000000000;
        for (int k = 0; k < 600; k++) {
            size_t si = (size_t)(rand() % 8);
            struct source *s = src[si];
            end[si] += 1000;
            chunk_begin(s, end[si]);
            int lines = rand() % 6; /* zero-record chunks too (all lines filtered out) */
            for (int l = 0; l < lines; l++)
                put(s, ts++, (uint8_t)(rand() % 3), "k%d l%d %s %.*s", k, l, s->path, rand() % 60,
                    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
            run_add(&r);
        }
        run_finish(&r);
        assert_true(r.batches > 10);
        /* Per source, acks arrive in order and the last one is its last chunk. */
        for (int i = 0; i < 8; i++) {
            uint64_t last = 0;
            for (size_t k = 0; k < nacks_seen; k++) {
                if (acks_seen[k].source != src[i]) continue;
                assert_true(acks_seen[k].end_offset > last);
                last = acks_seen[k].end_offset;
            }
            assert_int_equal(last, end[i]);
            assert_int_equal(atomic_load(&src[i]->acked_offset), end[i]);
            assert_int_equal(atomic_load(&src[i]->refs), 1);
            source_unref(src[i]);
        }
    }
}

static void test_equal_labels_share_one_stream(void **state)
{
    (void)state;
    struct run r;
    run_init(&r, 1 << 20, false);
    /* Two files of one container (e.g. before and after a restart): the
     * path differs, the labels do not. */
    struct source *a = make_source("/var/log/pods/ns_p_u/c/0.log", "ns", "p", "c", &stream_policy);
    struct source *b = make_source("/var/log/pods/ns_p_u/c/1.log", "ns", "p", "c", &stream_policy);
    assert_string_equal(a->labels[0], b->labels[0]);
    assert_ptr_not_equal(a->labels[0], b->labels[0]);
    chunk_begin(a, 10);
    put(a, 1, PARSER_STREAM_STDOUT, "a1");
    put(a, 2, PARSER_STREAM_STDOUT, "a2");
    run_add(&r);
    chunk_begin(b, 10);
    put(b, 3, PARSER_STREAM_STDOUT, "b1");
    run_add(&r);
    chunk_begin(a, 20);
    put(a, 4, PARSER_STREAM_STDOUT, "a3");
    run_add(&r);
    struct aggregator_batch *batch = aggregator_seal(r.agg);
    Logproto__PushRequest *req = decode(batch);
    assert_int_equal(req->n_streams, 1);
    assert_string_equal(req->streams[0]->labels, a->labels[0]);
    assert_int_equal(req->streams[0]->n_entries, 4);
    const char *order[] = {"a1", "a2", "b1", "a3"};
    for (int i = 0; i < 4; i++) {
        const Logproto__EntryAdapter *e = req->streams[0]->entries[i];
        assert_int_equal(e->line.len, 2);
        assert_memory_equal(e->line.data, order[i], 2);
    }
    logproto__push_request__free_unpacked(req, NULL);
    check_batch(r.agg, batch, r.batches++, false);
    run_finish(&r);
    source_unref(a);
    source_unref(b);
}

static void test_stream_label_splits_stdout_and_stderr(void **state)
{
    (void)state;
    for (int with_stream = 0; with_stream < 2; with_stream++) {
        struct run r;
        run_init(&r, 1 << 20, false);
        struct source *s = make_source("/var/log/containers/x.log", "ns", "p", "c",
                                       with_stream ? &stream_policy : &plain_policy);
        chunk_begin(s, 50);
        put(s, 1, PARSER_STREAM_STDOUT, "out 1");
        put(s, 2, PARSER_STREAM_STDERR, "err 1");
        put(s, 3, PARSER_STREAM_STDOUT, "out 2");
        put(s, 4, PARSER_STREAM_UNKNOWN, "raw 1");
        put(s, 5, PARSER_STREAM_STDERR, "err 2");
        run_add(&r);
        struct aggregator_batch *batch = aggregator_seal(r.agg);
        Logproto__PushRequest *req = decode(batch);
        if (with_stream) {
            assert_int_equal(req->n_streams, 3);
            for (size_t i = 0; i < req->n_streams; i++) {
                const char *l = req->streams[i]->labels;
                if (strstr(l, "stream=\"stdout\"")) assert_int_equal(req->streams[i]->n_entries, 2);
                else if (strstr(l, "stream=\"stderr\"")) assert_int_equal(req->streams[i]->n_entries, 2);
                else if (strstr(l, "stream=\"unknown\"")) assert_int_equal(req->streams[i]->n_entries, 1);
                else fail_msg("stream without a stream label: %s", l);
            }
        } else {
            assert_int_equal(req->n_streams, 1);
            assert_null(strstr(req->streams[0]->labels, "stream="));
            assert_int_equal(req->streams[0]->n_entries, 5);
            /* One stream: the file's order, whatever the kinds. */
            for (int i = 0; i < 5; i++) assert_int_equal(req->streams[0]->entries[i]->timestamp->nanos, i + 1);
        }
        logproto__push_request__free_unpacked(req, NULL);
        check_batch(r.agg, batch, r.batches++, false);
        run_finish(&r);
        source_unref(s);
    }
}

static void test_chunk_split_across_batches_acks_in_the_last(void **state)
{
    (void)state;
    /* 10 lines of 20 bytes cost 36 each: 3 fit in 110 bytes. */
    struct run r;
    run_init(&r, 110, false);
    struct source *a = make_source("/var/log/containers/a.log", "ns", "a", "c", &stream_policy);
    struct source *b = make_source("/var/log/containers/b.log", "ns", "b", "c", &stream_policy);
    chunk_begin(a, 777);
    for (int i = 0; i < 10; i++) put(a, 1000 + i, PARSER_STREAM_STDOUT, "line %02d of a chunk.", i);
    const struct source_record *next = NULL;
    uint32_t done = 0;
    int fills = 0;
    while (!aggregator_add(r.agg, CHUNK, &next, &done)) {
        /* Each batch it filled carries no ack: the chunk is not all out. */
        struct aggregator_batch *bt = aggregator_seal(r.agg);
        assert_int_equal(bt->nacks, 0);
        assert_int_equal(bt->entries, 3);
        check_batch(r.agg, bt, r.batches++, false);
        assert_int_equal(done, 3 * (fills + 1));
        fills++;
    }
    assert_int_equal(fills, 3);
    assert_int_equal(atomic_load(&a->acked_offset), 0); /* not before its last line is out */
    /* Another source's chunk after it: its ack must come after a's. */
    chunk_begin(b, 55);
    put(b, 2000, PARSER_STREAM_STDOUT, "b's only line");
    run_add(&r);
    struct aggregator_batch *last = aggregator_seal(r.agg);
    assert_int_equal(last->entries, 2);
    assert_int_equal(last->nacks, 2);
    assert_ptr_equal(last->acks[0].source, a);
    assert_int_equal(last->acks[0].end_offset, 777);
    assert_ptr_equal(last->acks[1].source, b);
    assert_int_equal(last->acks[1].end_offset, 55);
    check_batch(r.agg, last, r.batches++, false);
    assert_int_equal(atomic_load(&a->acked_offset), 777);
    /* Order across the four batches: lines 0..9, the batches in turn. */
    for (size_t i = 0; i < 10; i++) assert_int_equal(want[i].batch, (int)(i / 3));
    run_finish(&r);
    source_unref(a);
    source_unref(b);
}

static void test_chunk_ending_exactly_at_a_full_batch_acks_there(void **state)
{
    (void)state;
    struct run r;
    run_init(&r, 108, false); /* exactly three 20-byte lines */
    struct source *a = make_source("/var/log/containers/a.log", "ns", "a", "c", &stream_policy);
    chunk_begin(a, 60);
    for (int i = 0; i < 3; i++) put(a, 1 + i, PARSER_STREAM_STDOUT, "line %02d of a chunk.", i);
    const struct source_record *next = NULL;
    uint32_t done = 0;
    assert_true(aggregator_add(r.agg, CHUNK, &next, &done));
    struct aggregator_batch *bt = aggregator_seal(r.agg);
    assert_int_equal(bt->entries, 3);
    assert_int_equal(bt->nacks, 1);
    assert_int_equal(bt->acks[0].end_offset, 60);
    check_batch(r.agg, bt, r.batches++, false);
    run_finish(&r);
    source_unref(a);
}

static void test_line_larger_than_a_batch_goes_alone(void **state)
{
    (void)state;
    struct run r;
    run_init(&r, 64, false);
    struct source *a = make_source("/var/log/containers/a.log", "ns", "a", "c", &stream_policy);
    char big[3000];
    memset(big, 'B', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    chunk_begin(a, 9);
    put(a, 1, PARSER_STREAM_STDOUT, "small");
    put(a, 2, PARSER_STREAM_STDOUT, "%s", big);
    put(a, 3, PARSER_STREAM_STDOUT, "small again");
    run_add(&r);
    run_finish(&r);
    assert_int_equal(r.batches, 3);
    assert_int_equal(want[1].batch, 1);
    source_unref(a);
}

static void test_empty_chunk_still_acknowledges(void **state)
{
    (void)state;
    /* Every line filtered out: the chunk only moves the offset. */
    struct run r;
    run_init(&r, 1 << 20, false);
    struct source *a = make_source("/var/log/containers/a.log", "ns", "a", "c", &stream_policy);
    assert_false(aggregator_has_data(r.agg));
    assert_int_equal(aggregator_due_ms(r.agg), INT64_MAX);
    chunk_begin(a, 4242);
    int64_t before = metrics_now_ms();
    run_add(&r);
    /* An ack alone is data, and is due: it must not wait forever. */
    assert_true(aggregator_has_data(r.agg));
    int64_t due = aggregator_due_ms(r.agg);
    assert_true(due >= before + r.cfg.output.loki.batch_wait_ms);
    assert_true(due <= metrics_now_ms() + r.cfg.output.loki.batch_wait_ms);
    size_t n = 0;
    struct aggregator_ack *pending = aggregator_pending_acks(r.agg, &n);
    assert_int_equal(n, 1);
    assert_ptr_equal(pending[0].source, a);
    assert_int_equal(pending[0].end_offset, 4242);
    struct aggregator_batch *bt = aggregator_seal(r.agg);
    assert_int_equal(bt->entries, 0);
    assert_int_equal(bt->nacks, 1);
    check_batch(r.agg, bt, r.batches++, false);
    assert_int_equal(atomic_load(&a->acked_offset), 4242);
    assert_int_equal(aggregator_due_ms(r.agg), INT64_MAX);
    run_finish(&r);
    source_unref(a);
}

static void test_a_new_source_at_a_freed_address_is_not_confused(void **state)
{
    (void)state;
    struct run r;
    run_init(&r, 1 << 20, true);
    /* Allocate, deliver, free; allocate another with other labels — the
     * allocator may well hand out the same address. Its lines must go out
     * under its own labels and metadata in every case. */
    int reused = 0;
    struct source *alive[8];
    size_t nalive = 0;
    uintptr_t freed[512];
    size_t nfreed = 0;
    srand(99);
    for (int round = 0; round < 200; round++) {
        char path[64], pod[16];
        snprintf(path, sizeof path, "/var/log/containers/r%d.log", round);
        snprintf(pod, sizeof pod, "pod-%d", round);
        struct source *s = make_source(path, round % 2 ? "ns" : "other", pod, "c", &stream_policy);
        for (size_t k = 0; k < nfreed; k++)
            if (freed[k] == (uintptr_t)s) {
                reused++;
                break;
            }
        chunk_begin(s, 10 + (uint64_t)round);
        put(s, 1 + round, PARSER_STREAM_STDOUT, "line of round %d", round);
        put(s, 1000 + round, PARSER_STREAM_STDERR, "error of round %d", round);
        run_add(&r);
        alive[nalive++] = s;
        /* Sometimes several sources share a batch, sometimes one is alone. */
        if (nalive == 8 || rand() % 3 == 0) {
            run_seal(&r); /* drops the chunks' references */
            for (size_t k = 0; k < nalive; k++) {
                assert_int_equal(atomic_load(&alive[k]->refs), 1);
                if (nfreed < 512) freed[nfreed++] = (uintptr_t)alive[k];
                source_unref(alive[k]); /* the last one: freed */
            }
            nalive = 0;
        }
    }
    run_finish(&r);
    for (size_t k = 0; k < nalive; k++) source_unref(alive[k]);
    print_message("      (a freed source's address was reused %d times in 200 rounds)\n", reused);
}

static void test_many_streams_in_one_batch(void **state)
{
    (void)state;
    /* More label sets than the aggregator's first table size, with lines of
     * all of them interleaved: the index must not lose or mix any. */
    struct run r;
    run_init(&r, 1 << 22, false);
    enum { N = 300 };
    struct source *src[N];
    for (int i = 0; i < N; i++) {
        char path[64], pod[16];
        snprintf(path, sizeof path, "/var/log/containers/m%d.log", i);
        snprintf(pod, sizeof pod, "pod-%d", i);
        src[i] = make_source(path, "ns", pod, "c", &stream_policy);
    }
    for (int round = 0; round < 5; round++)
        for (int i = 0; i < N; i++) {
            int k = (i * 7 + round) % N;
            chunk_begin(src[k], (uint64_t)(round + 1));
            put(src[k], round * N + i + 1, (uint8_t)(round % 2), "r%d s%d", round, k);
            run_add(&r);
        }
    struct aggregator_batch *b = aggregator_seal(r.agg);
    Logproto__PushRequest *req = decode(b);
    assert_int_equal(req->n_streams, 2 * N);
    logproto__push_request__free_unpacked(req, NULL);
    check_batch(r.agg, b, r.batches++, false);
    run_finish(&r);
    for (int i = 0; i < N; i++) {
        assert_int_equal(atomic_load(&src[i]->acked_offset), 5);
        source_unref(src[i]);
    }
}

static void test_oldest_entry_and_sizes(void **state)
{
    (void)state;
    struct run r;
    run_init(&r, 1 << 20, false);
    struct source *a = make_source("/var/log/containers/a.log", "ns", "a", "c", &stream_policy);
    chunk_begin(a, 1);
    put(a, 5000000000, PARSER_STREAM_STDOUT, "late");
    put(a, 3000000000, PARSER_STREAM_STDOUT, "early (out of order in the file)");
    put(a, 4000000000, PARSER_STREAM_STDOUT, "middle");
    run_add(&r);
    struct aggregator_batch *b = aggregator_seal(r.agg);
    assert_int_equal(b->oldest_entry_ns, 3000000000);
    assert_int_equal(b->line_bytes, strlen("late") + strlen("early (out of order in the file)") + strlen("middle"));
    assert_true(b->body_len > 0);
    check_batch(r.agg, b, r.batches++, false);
    run_finish(&r);
    source_unref(a);
}

int main(void)
{
    log_setup(LOG_LEVEL_ERROR, LOG_FORMAT_LOGFMT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunks_at_one_address_keep_their_own_labels),
        cmocka_unit_test(test_many_sources_interleaved_across_many_batches),
        cmocka_unit_test(test_equal_labels_share_one_stream),
        cmocka_unit_test(test_stream_label_splits_stdout_and_stderr),
        cmocka_unit_test(test_chunk_split_across_batches_acks_in_the_last),
        cmocka_unit_test(test_chunk_ending_exactly_at_a_full_batch_acks_there),
        cmocka_unit_test(test_line_larger_than_a_batch_goes_alone),
        cmocka_unit_test(test_empty_chunk_still_acknowledges),
        cmocka_unit_test(test_a_new_source_at_a_freed_address_is_not_confused),
        cmocka_unit_test(test_many_streams_in_one_batch),
        cmocka_unit_test(test_oldest_entry_and_sizes),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    expect_reset();
    return rc;
}
