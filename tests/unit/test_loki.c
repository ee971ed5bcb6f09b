/*
 * test_loki — label rendering, the PushRequest encoder (byte for byte
 * against a real Promtail 2.8.0 push), splitting a body after a 413,
 * back-off, and the client against a tiny HTTP server on 127.0.0.1 run by a
 * thread of this test: headers, every answer's class, and credential files
 * rotated, rewritten or broken while it runs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <snappy-c.h>

#include "config/config.h"
#include "log/log.h"
#include "loki/loki.h"
#include "loki/push.pb-c.h"
#include "push_reference.h"

/* ---------------------------------------------------------------------------
 * Labels.
 */

static void assert_render(const struct loki_label *l, size_t n, const char *want)
{
    char buf[1024];
    memset(buf, 'X', sizeof buf);
    const size_t len = loki_render_labels(l, n, buf, sizeof buf);
    assert_string_equal(buf, want);
    assert_int_equal(len, strlen(want));
}

static void test_labels_fixture_strings(void **state)
{
    (void)state;
    /* The order a collector would naturally produce, not the sorted one. */
    const struct loki_label out[] = {
        {"namespace", "shop"}, {"pod", "web-0"}, {"container", "app"}, {"stream", "stdout"}, {"cluster", "test"},
    };
    assert_render(out, 5, "{cluster=\"test\", container=\"app\", namespace=\"shop\", pod=\"web-0\", stream=\"stdout\"}");
    const struct loki_label err[] = {
        {"stream", "stderr"}, {"pod", "web-0"}, {"namespace", "shop"}, {"container", "app"}, {"cluster", "test"},
    };
    assert_render(err, 5, "{cluster=\"test\", container=\"app\", namespace=\"shop\", pod=\"web-0\", stream=\"stderr\"}");
}

static void test_labels_sorted_bytewise(void **state)
{
    (void)state;
    /* '0' < 'A' < 'Z' < '_' < 'a'; a prefix sorts first. */
    const struct loki_label l[] = {
        {"b", "1"}, {"ab", "2"}, {"a", "3"}, {"_z", "4"}, {"Zed", "5"}, {"A0", "6"}, {"a_", "7"},
    };
    assert_render(l, 7, "{A0=\"6\", Zed=\"5\", _z=\"4\", a=\"3\", a_=\"7\", ab=\"2\", b=\"1\"}");
    assert_render(NULL, 0, "{}");
    const struct loki_label one[] = {{"job", ""}};
    assert_render(one, 1, "{job=\"\"}");
}

static void test_labels_escaping(void **state)
{
    (void)state;
    const struct loki_label l[] = {{"msg", "say \"hi\"\\now\nnext\ttab h\xc3\xa9"}};
    assert_render(l, 1, "{msg=\"say \\\"hi\\\"\\\\now\\nnext\ttab h\xc3\xa9\"}");
    const struct loki_label nul[] = {{"v", NULL}};
    assert_render(nul, 1, "{v=\"\"}");
}

static void test_labels_names_sanitized(void **state)
{
    (void)state;
    const struct loki_label l[] = {
        {"app.kubernetes.io/name", "web"}, {"1st", "x"}, {"caf\xc3\xa9", "y"}, {"", "z"}, {"bad\xff", "w"},
    };
    /* "_1st" < "_" is false: "_" is a prefix of "_1st", so "_" first. */
    assert_render(l, 5,
                  "{_=\"z\", _1st=\"x\", app_kubernetes_io_name=\"web\", bad_=\"w\", caf_=\"y\"}");
}

static void test_labels_cap_too_small(void **state)
{
    (void)state;
    const struct loki_label l[] = {{"b", "2"}, {"a", "1"}};
    const char *want = "{a=\"1\", b=\"2\"}";
    const size_t n = strlen(want);
    char buf[64];

    memset(buf, 'X', sizeof buf);
    assert_int_equal(loki_render_labels(l, 2, buf, n + 1), n);
    assert_string_equal(buf, want);

    memset(buf, 'X', sizeof buf);
    assert_int_equal(loki_render_labels(l, 2, buf, n), 0);
    assert_int_equal(buf[0], '\0');
    for (size_t i = n; i < sizeof buf; i++) assert_int_equal(buf[i], 'X'); /* nothing past cap */

    memset(buf, 'X', sizeof buf);
    assert_int_equal(loki_render_labels(l, 2, buf, 1), 0);
    assert_int_equal(buf[0], '\0');
    assert_int_equal(buf[1], 'X');

    memset(buf, 'X', sizeof buf);
    assert_int_equal(loki_render_labels(l, 2, buf, 0), 0);
    assert_int_equal(buf[0], 'X'); /* cap 0: nothing written */

    /* Escapes count: `{v="\""}` needs 8 bytes + NUL. */
    const struct loki_label q[] = {{"v", "\""}};
    assert_int_equal(loki_render_labels(q, 1, buf, 9), 8);
    assert_int_equal(loki_render_labels(q, 1, buf, 8), 0);
}

static void test_labels_too_many(void **state)
{
    (void)state;
    struct loki_label l[65];
    char names[65][8];
    for (int i = 0; i < 65; i++) {
        snprintf(names[i], sizeof names[i], "l%02d", 64 - i);
        l[i].name = names[i];
        l[i].value = "v";
    }
    char buf[4096];
    const size_t n64 = loki_render_labels(l + 1, 64, buf, sizeof buf);
    assert_true(n64 > 0);
    assert_true(strncmp(buf, "{l00=\"v\", l01=\"v\"", 17) == 0);
    assert_int_equal(loki_render_labels(l, 65, buf, sizeof buf), 0);
    assert_int_equal(buf[0], '\0');
}

/* ---------------------------------------------------------------------------
 * Encoder.
 */

static uint8_t *read_fixture(const char *name, size_t *len)
{
    char path[4096];
    const char *self = __FILE__, *tail = strstr(self, "tests/unit/test_loki.c");
    if (!tail) fail_msg("cannot locate the fixtures from __FILE__ %s", self);
    snprintf(path, sizeof path, "%.*stests/fixtures/loki-push/%s", (int)(tail - self), self, name);
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s: %s", path, strerror(errno));
    uint8_t *buf = malloc(1 << 16);
    assert_non_null(buf);
    *len = fread(buf, 1, 1 << 16, f);
    fclose(f);
    return buf;
}

static uint8_t *unsnappy(const uint8_t *body, size_t len, size_t *out_len)
{
    size_t n = 0;
    assert_int_equal(snappy_uncompressed_length((const char *)body, len, &n), SNAPPY_OK);
    uint8_t *out = malloc(n ? n : 1);
    assert_non_null(out);
    assert_int_equal(snappy_uncompress((const char *)body, len, (char *)out, &n), SNAPPY_OK);
    *out_len = n;
    return out;
}

static const int64_t S = 1000000000;

static void test_encode_matches_promtail_fixture(void **state)
{
    (void)state;
    const char *l1 = "unicode: h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac";
    const struct loki_entry out[] = {
        {.ts_ns = 1795341600 * S + 1, .line = "GET /api/cart 200 12ms", .len = 22},
        {.ts_ns = 1795341601 * S + 1, .line = "first half of a long line, second half", .len = 38},
        {.ts_ns = 1795341602 * S + 123456789, .line = l1, .len = strlen(l1)},
    };
    const struct loki_entry err[] = {
        {.ts_ns = 1795341600 * S + 500000000, .line = "warning: slow \"query\" took 1.5s\ttab", .len = 35},
    };
    const struct loki_label lo[] = {
        {"namespace", "shop"}, {"pod", "web-0"}, {"container", "app"}, {"stream", "stdout"}, {"cluster", "test"},
    };
    const struct loki_label le[] = {
        {"namespace", "shop"}, {"pod", "web-0"}, {"container", "app"}, {"stream", "stderr"}, {"cluster", "test"},
    };
    char ls_out[256], ls_err[256];
    assert_true(loki_render_labels(lo, 5, ls_out, sizeof ls_out) > 0);
    assert_true(loki_render_labels(le, 5, ls_err, sizeof ls_err) > 0);
    const struct loki_stream streams[] = {
        {.labels = ls_out, .entries = out, .nentries = 3},
        {.labels = ls_err, .entries = err, .nentries = 1},
    };

    struct loki_encoder *enc = loki_encoder_create();
    assert_non_null(enc);
    const uint8_t *body;
    size_t body_len, raw_len, want_len, pb_len;
    assert_int_equal(loki_encode(enc, streams, 2, &body, &body_len, &raw_len), 0);
    uint8_t *want = read_fixture("promtail-2.8.0-push.pb", &want_len);
    const uint8_t *pb = loki_encoder_last_protobuf(enc, &pb_len);
    assert_int_equal(pb_len, want_len);
    assert_int_equal(raw_len, want_len);
    assert_memory_equal(pb, want, want_len);

    /* The body is one raw snappy block of exactly those bytes. */
    size_t un_len;
    uint8_t *un = unsnappy(body, body_len, &un_len);
    assert_int_equal(un_len, want_len);
    assert_memory_equal(un, want, want_len);
    free(un);

    /* Promtail's own body (Go snappy) decompresses to the same bytes too. */
    size_t promtail_len;
    uint8_t *promtail = read_fixture("promtail-2.8.0-push.snappy", &promtail_len);
    un = unsnappy(promtail, promtail_len, &un_len);
    assert_int_equal(un_len, want_len);
    assert_memory_equal(un, want, want_len);
    free(un);
    free(promtail);

    /* A second encode of the same batch gives the same bytes. */
    assert_int_equal(loki_encode(enc, streams, 2, &body, &body_len, &raw_len), 0);
    pb = loki_encoder_last_protobuf(enc, &pb_len);
    assert_int_equal(pb_len, want_len);
    assert_memory_equal(pb, want, want_len);

    free(want);
    loki_encoder_destroy(enc);
}

static Logproto__PushRequest *decode_body(const uint8_t *body, size_t len)
{
    size_t pb_len;
    uint8_t *pb = unsnappy(body, len, &pb_len);
    Logproto__PushRequest *req = logproto__push_request__unpack(NULL, pb_len, pb);
    free(pb);
    assert_non_null(req);
    return req;
}

/* Differential: random batches (lines of any bytes and lengths across the
 * 64 KiB window boundaries, empty lines, empty or absent labels and
 * metadata, timestamps of every sign and size) give exactly protobuf-c's
 * bytes, and a body that is exactly snappy_compress() of them. */
static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

static void test_encode_identical_to_protobuf_c(void **state)
{
    (void)state;
    static const char *const texts[] = {"", "a", "{app=\"x\"}", "trace_id", "0123456789abcdef0123456789abcdef", NULL};
    static const int64_t stamps[] = {0, 1, -1, 999999999, 1000000000, -1000000000, INT64_MAX, INT64_MIN,
                                     1764000000123456789LL, 127, 128, 16383, 16384};
    enum { ROUNDS = 300, MAX_STREAMS = 12, MAX_ENTRIES = 600, POOL = 300000 };
    char *pool = malloc(POOL);
    struct loki_stream *streams = calloc(MAX_STREAMS, sizeof *streams);
    struct loki_entry *entries = calloc((size_t)MAX_STREAMS * MAX_ENTRIES, sizeof *entries);
    struct loki_label *labels = calloc((size_t)MAX_STREAMS * MAX_ENTRIES * 3, sizeof *labels);
    assert_non_null(pool);
    assert_non_null(streams);
    assert_non_null(entries);
    assert_non_null(labels);
    for (size_t i = 0; i < POOL; i++) pool[i] = (char)rnd();
    struct loki_encoder *enc = loki_encoder_create();
    assert_non_null(enc);
    for (int round = 0; round < ROUNDS; round++) {
        size_t nstreams = rnd() % (MAX_STREAMS + 1), e = 0, l = 0;
        for (size_t i = 0; i < nstreams; i++) {
            size_t n = rnd() % (round % 10 == 0 ? MAX_ENTRIES : 20);
            streams[i] = (struct loki_stream){.labels = texts[rnd() % 6], .entries = &entries[e], .nentries = n};
            for (size_t j = 0; j < n; j++, e++) {
                /* Mostly log-sized lines, sometimes empty or far past a window. */
                size_t len = rnd() % 8 == 0 ? rnd() % 200000 : rnd() % 400;
                if (rnd() % 16 == 0) len = 0;
                size_t off = rnd() % (POOL - len);
                int64_t ts = rnd() % 3 ? stamps[rnd() % (sizeof stamps / sizeof stamps[0])] : (int64_t)rnd();
                size_t nmeta = rnd() % 4 == 0 ? rnd() % 4 : 0;
                entries[e] = (struct loki_entry){ts, pool + off, len, nmeta ? &labels[l] : NULL, nmeta};
                for (size_t k = 0; k < nmeta; k++, l++) labels[l] = (struct loki_label){texts[rnd() % 6], texts[rnd() % 6]};
            }
        }
        const uint8_t *body;
        size_t body_len, raw_len, want_len = 0, pb_len;
        assert_int_equal(loki_encode(enc, streams, nstreams, &body, &body_len, &raw_len), 0);
        uint8_t *want = push_reference_pack(streams, nstreams, &want_len);
        assert_non_null(want);
        const uint8_t *pb = loki_encoder_last_protobuf(enc, &pb_len);
        assert_non_null(pb);
        assert_int_equal(raw_len, want_len);
        assert_int_equal(pb_len, want_len);
        assert_memory_equal(pb, want, want_len);
        size_t cap = snappy_max_compressed_length(want_len), one_len = cap;
        char *one = malloc(cap);
        assert_non_null(one);
        assert_int_equal(snappy_compress((const char *)want, want_len, one, &one_len), SNAPPY_OK);
        assert_int_equal(body_len, one_len);
        assert_memory_equal(body, one, one_len);
        free(one);
        free(want);
    }
    loki_encoder_destroy(enc);
    free(labels);
    free(entries);
    free(streams);
    free(pool);
}

static void test_encode_empty_batch(void **state)
{
    (void)state;
    struct loki_encoder *enc = loki_encoder_create();
    assert_non_null(enc);
    const uint8_t *body = NULL;
    size_t body_len = 99, raw_len = 99;
    assert_int_equal(loki_encode(enc, NULL, 0, &body, &body_len, &raw_len), 0);
    assert_non_null(body);
    assert_int_equal(raw_len, 0);
    assert_true(body_len > 0);
    Logproto__PushRequest *req = decode_body(body, body_len);
    assert_int_equal(req->n_streams, 0);
    logproto__push_request__free_unpacked(req, NULL);

    /* A stream without entries is still sent, labels only. */
    const struct loki_stream s = {.labels = "{a=\"1\"}", .entries = NULL, .nentries = 0};
    assert_int_equal(loki_encode(enc, &s, 1, &body, &body_len, &raw_len), 0);
    req = decode_body(body, body_len);
    assert_int_equal(req->n_streams, 1);
    assert_string_equal(req->streams[0]->labels, "{a=\"1\"}");
    assert_int_equal(req->streams[0]->n_entries, 0);
    logproto__push_request__free_unpacked(req, NULL);
    loki_encoder_destroy(enc);
}

static void test_encode_nul_in_line_round_trips(void **state)
{
    (void)state;
    /* The line is not NUL-terminated either: it is cut out of a larger buffer. */
    const char buf[] = "a\0b\0c-NOT-PART-OF-THE-LINE";
    const struct loki_label md[] = {{"trace_id", "abc"}, {"user", "q\"uote"}};
    const struct loki_entry e[] = {
        {.ts_ns = 5, .line = buf, .len = 5, .metadata = md, .nmetadata = 2},
        {.ts_ns = 6, .line = "", .len = 0},
    };
    const struct loki_stream s = {.labels = "{job=\"x\"}", .entries = e, .nentries = 2};
    struct loki_encoder *enc = loki_encoder_create();
    assert_non_null(enc);
    const uint8_t *body;
    size_t body_len, raw_len;
    assert_int_equal(loki_encode(enc, &s, 1, &body, &body_len, &raw_len), 0);
    Logproto__PushRequest *req = decode_body(body, body_len);
    assert_int_equal(req->n_streams, 1);
    assert_int_equal(req->streams[0]->n_entries, 2);
    const Logproto__EntryAdapter *a = req->streams[0]->entries[0];
    assert_int_equal(a->line.len, 5);
    assert_memory_equal(a->line.data, "a\0b\0c", 5);
    assert_int_equal(a->timestamp->seconds, 0);
    assert_int_equal(a->timestamp->nanos, 5);
    assert_int_equal(a->n_structuredmetadata, 2);
    assert_string_equal(a->structuredmetadata[0]->name, "trace_id");
    assert_string_equal(a->structuredmetadata[0]->value, "abc");
    assert_string_equal(a->structuredmetadata[1]->name, "user");
    assert_string_equal(a->structuredmetadata[1]->value, "q\"uote");
    const Logproto__EntryAdapter *b = req->streams[0]->entries[1];
    assert_int_equal(b->line.len, 0);
    assert_int_equal(b->n_structuredmetadata, 0);
    logproto__push_request__free_unpacked(req, NULL);
    loki_encoder_destroy(enc);
}

static void test_encode_negative_timestamps(void **state)
{
    (void)state;
    const struct {
        int64_t ns, s;
        int32_t nanos;
    } cases[] = {
        {0, 0, 0},
        {-1, -1, 999999999},
        {-S, -1, 0},
        {-S - 1, -2, 999999999},
        {-1500000000, -2, 500000000},
        {1500000000, 1, 500000000},
        {INT64_MAX, INT64_MAX / S, (int32_t)(INT64_MAX % S)},
        {INT64_MIN, INT64_MIN / S - 1, (int32_t)(INT64_MIN % S + S)},
    };
    const size_t n = sizeof cases / sizeof cases[0];
    struct loki_entry e[sizeof cases / sizeof cases[0]];
    for (size_t i = 0; i < n; i++) e[i] = (struct loki_entry){.ts_ns = cases[i].ns, .line = "x", .len = 1};
    const struct loki_stream s = {.labels = "{a=\"b\"}", .entries = e, .nentries = n};
    struct loki_encoder *enc = loki_encoder_create();
    assert_non_null(enc);
    const uint8_t *body;
    size_t body_len, raw_len;
    assert_int_equal(loki_encode(enc, &s, 1, &body, &body_len, &raw_len), 0);
    Logproto__PushRequest *req = decode_body(body, body_len);
    assert_int_equal(req->streams[0]->n_entries, n);
    for (size_t i = 0; i < n; i++) {
        const Logproto__Timestamp *ts = req->streams[0]->entries[i]->timestamp;
        assert_non_null(ts);
        if (ts->seconds != cases[i].s || ts->nanos != cases[i].nanos)
            fail_msg("ts_ns %lld: got %lld s + %d ns, want %lld s + %d ns", (long long)cases[i].ns,
                     (long long)ts->seconds, ts->nanos, (long long)cases[i].s, cases[i].nanos);
    }
    logproto__push_request__free_unpacked(req, NULL);
    loki_encoder_destroy(enc);
}

#define BIG_ENTRIES 100000
#define BIG_STREAMS 7

static void test_encode_large_batch_reuses_buffers(void **state)
{
    (void)state;
    static char lines[BIG_ENTRIES][24];
    static struct loki_entry entries[BIG_ENTRIES];
    static const struct loki_label md[] = {{"k", "v"}};
    for (int i = 0; i < BIG_ENTRIES; i++) {
        const int n = snprintf(lines[i], sizeof lines[i], "line %d", i);
        entries[i] = (struct loki_entry){.ts_ns = 1700000000 * S + i, .line = lines[i], .len = (size_t)n,
                                         .metadata = (i % 1000 == 0) ? md : NULL, .nmetadata = (i % 1000 == 0)};
    }
    /* Uneven streams over one entries array. */
    struct loki_stream streams[BIG_STREAMS];
    char labels[BIG_STREAMS][32];
    size_t at = 0;
    for (int s = 0; s < BIG_STREAMS; s++) {
        const size_t count = s == BIG_STREAMS - 1 ? BIG_ENTRIES - at : (size_t)(BIG_ENTRIES / BIG_STREAMS) + s;
        snprintf(labels[s], sizeof labels[s], "{stream=\"%d\"}", s);
        streams[s] = (struct loki_stream){.labels = labels[s], .entries = &entries[at], .nentries = count};
        at += count;
    }

    struct loki_encoder *enc = loki_encoder_create();
    assert_non_null(enc);
    const uint8_t *body;
    size_t body_len, raw_len;
    assert_int_equal(loki_encode(enc, streams, BIG_STREAMS, &body, &body_len, &raw_len), 0);
    Logproto__PushRequest *req = decode_body(body, body_len);
    assert_int_equal(req->n_streams, BIG_STREAMS);
    size_t k = 0;
    for (size_t s = 0; s < req->n_streams; s++) {
        assert_string_equal(req->streams[s]->labels, labels[s]);
        for (size_t j = 0; j < req->streams[s]->n_entries; j++, k++) {
            const Logproto__EntryAdapter *e = req->streams[s]->entries[j];
            assert_int_equal(e->line.len, entries[k].len);
            assert_memory_equal(e->line.data, entries[k].line, entries[k].len);
            assert_int_equal(e->timestamp->nanos, (int32_t)k);
            assert_int_equal(e->n_structuredmetadata, k % 1000 == 0);
        }
    }
    assert_int_equal(k, BIG_ENTRIES);
    logproto__push_request__free_unpacked(req, NULL);

    /* Steady state: the same batch again reuses every buffer. */
    const uint8_t *first = body;
    size_t pb_len;
    const uint8_t *pb_first = loki_encoder_last_protobuf(enc, &pb_len);
    const size_t first_len = body_len, first_raw = raw_len;
    assert_int_equal(loki_encode(enc, streams, BIG_STREAMS, &body, &body_len, &raw_len), 0);
    assert_ptr_equal(body, first);
    assert_ptr_equal(loki_encoder_last_protobuf(enc, &pb_len), pb_first);
    assert_int_equal(body_len, first_len);
    assert_int_equal(raw_len, first_raw);

    /* A smaller batch afterwards still decodes (no stale counts). */
    assert_int_equal(loki_encode(enc, streams, 1, &body, &body_len, &raw_len), 0);
    req = decode_body(body, body_len);
    assert_int_equal(req->n_streams, 1);
    assert_int_equal(req->streams[0]->n_entries, streams[0].nentries);
    logproto__push_request__free_unpacked(req, NULL);
    loki_encoder_destroy(enc);
}


/* ---------------------------------------------------------------------------
 * Splitting after a 413.
 */

/* One entry as the tests see it, flattened out of a decoded request. */
struct flat_entry {
    char labels[64];
    int64_t ts_ns;
    char line[64];
    size_t line_len;
    char md[64]; /* "name=value;" for each structured metadata pair */
};

/* Appends the entries of a body to out[*n..], in order; returns the number
 * of streams it holds, and checks no stream of it repeats labels (a split
 * must not duplicate a stream within one piece). */
static size_t flatten_body(const uint8_t *body, size_t len, struct flat_entry *out, size_t *n, size_t cap)
{
    Logproto__PushRequest *req = decode_body(body, len);
    for (size_t i = 0; i < req->n_streams; i++) {
        const Logproto__StreamAdapter *st = req->streams[i];
        for (size_t k = 0; k < i; k++) assert_string_not_equal(req->streams[k]->labels, st->labels);
        for (size_t j = 0; j < st->n_entries; j++) {
            assert_true(*n < cap);
            const Logproto__EntryAdapter *e = st->entries[j];
            struct flat_entry *f = &out[(*n)++];
            memset(f, 0, sizeof *f);
            snprintf(f->labels, sizeof f->labels, "%s", st->labels);
            f->ts_ns = e->timestamp->seconds * S + e->timestamp->nanos;
            assert_true(e->line.len < sizeof f->line);
            if (e->line.len) memcpy(f->line, e->line.data, e->line.len);
            f->line_len = e->line.len;
            for (size_t k = 0; k < e->n_structuredmetadata; k++) {
                const size_t at = strlen(f->md);
                snprintf(f->md + at, sizeof f->md - at, "%s=%s;", e->structuredmetadata[k]->name,
                         e->structuredmetadata[k]->value);
            }
        }
    }
    const size_t streams = req->n_streams;
    logproto__push_request__free_unpacked(req, NULL);
    return streams;
}

static void assert_flat_equal(const struct flat_entry *a, const struct flat_entry *b)
{
    assert_string_equal(a->labels, b->labels);
    assert_int_equal(a->ts_ns, b->ts_ns);
    assert_int_equal(a->line_len, b->line_len);
    assert_memory_equal(a->line, b->line, a->line_len);
    assert_string_equal(a->md, b->md);
}

/* Four streams, one of them empty, metadata on some entries, a NUL in a
 * line: 3 + 0 + 4 + 2 = 9 entries. */
static const struct loki_label split_md[] = {{"trace_id", "t1"}, {"user", "u"}};
static const struct loki_entry split_s0[] = {
    {.ts_ns = 10 * S + 1, .line = "a0", .len = 2},
    {.ts_ns = 10 * S + 2, .line = "a1", .len = 2, .metadata = split_md, .nmetadata = 2},
    {.ts_ns = 10 * S + 3, .line = "a2", .len = 2},
};
static const struct loki_entry split_s2[] = {
    {.ts_ns = 20 * S + 1, .line = "c0\0z", .len = 4},
    {.ts_ns = 20 * S + 2, .line = "c1", .len = 2},
    {.ts_ns = 20 * S + 3, .line = "c2", .len = 2, .metadata = split_md, .nmetadata = 1},
    {.ts_ns = 20 * S + 4, .line = "c3-longer", .len = 9},
};
static const struct loki_entry split_s3[] = {
    {.ts_ns = -5, .line = "d0", .len = 2},
    {.ts_ns = 30 * S, .line = "", .len = 0},
};
static const struct loki_stream split_streams[] = {
    {.labels = "{s=\"0\"}", .entries = split_s0, .nentries = 3},
    {.labels = "{s=\"1\"}", .entries = NULL, .nentries = 0},
    {.labels = "{s=\"2\"}", .entries = split_s2, .nentries = 4},
    {.labels = "{s=\"3\"}", .entries = split_s3, .nentries = 2},
};

static void test_split_cuts_a_stream_in_the_middle(void **state)
{
    (void)state;
    struct loki_encoder *enc = loki_encoder_create();
    assert_non_null(enc);
    const uint8_t *body;
    size_t body_len, raw_len;
    assert_int_equal(loki_encode(enc, split_streams, 4, &body, &body_len, &raw_len), 0);
    struct flat_entry all[16];
    size_t nall = 0;
    assert_int_equal(flatten_body(body, body_len, all, &nall, 16), 4);
    assert_int_equal(nall, 9);

    struct loki_body a, b;
    assert_int_equal(loki_split_body(body, body_len, &a, &b), LOKI_SPLIT_OK);
    /* ceil(9/2) = 5: stream 0 whole, the empty stream 1, and the first two of
     * stream 2; then the last two of stream 2 and stream 3. */
    struct flat_entry got[16];
    size_t n = 0;
    assert_int_equal(flatten_body(a.data, a.len, got, &n, 16), 3);
    assert_int_equal(n, 5);
    assert_int_equal(a.entries, 5);
    assert_int_equal(a.line_bytes, 2 + 2 + 2 + 4 + 2);
    assert_int_equal(flatten_body(b.data, b.len, got, &n, 16), 2);
    assert_int_equal(n, 9);
    assert_int_equal(b.entries, 4);
    assert_int_equal(b.line_bytes, 2 + 9 + 2 + 0);
    for (size_t i = 0; i < 9; i++) assert_flat_equal(&got[i], &all[i]);

    /* Each piece is exactly what encoding its half from scratch gives, and
     * raw_len is its protobuf size. */
    const struct loki_stream first[] = {
        split_streams[0], split_streams[1], {.labels = "{s=\"2\"}", .entries = split_s2, .nentries = 2}};
    const struct loki_stream second[] = {{.labels = "{s=\"2\"}", .entries = split_s2 + 2, .nentries = 2},
                                         split_streams[3]};
    const struct loki_body *pieces[] = {&a, &b};
    const struct loki_stream *halves[] = {first, second};
    const size_t nhalves[] = {3, 2};
    for (int k = 0; k < 2; k++) {
        size_t want_body_len, want_raw_len, pb_len, un_len;
        assert_int_equal(loki_encode(enc, halves[k], nhalves[k], &body, &want_body_len, &want_raw_len), 0);
        const uint8_t *want = loki_encoder_last_protobuf(enc, &pb_len);
        uint8_t *un = unsnappy(pieces[k]->data, pieces[k]->len, &un_len);
        assert_int_equal(un_len, pb_len);
        assert_memory_equal(un, want, pb_len);
        assert_int_equal(pieces[k]->raw_len, want_raw_len);
        free(un);
    }
    loki_body_free(&a);
    loki_body_free(&b);
    assert_null(a.data);
    assert_int_equal(a.len, 0);
    loki_encoder_destroy(enc);
}

static void test_split_at_a_stream_boundary(void **state)
{
    (void)state;
    const struct loki_stream two[] = {
        {.labels = "{s=\"0\"}", .entries = split_s0, .nentries = 2},
        {.labels = "{s=\"3\"}", .entries = split_s3, .nentries = 2},
    };
    struct loki_encoder *enc = loki_encoder_create();
    assert_non_null(enc);
    const uint8_t *body;
    size_t body_len, raw_len;
    assert_int_equal(loki_encode(enc, two, 2, &body, &body_len, &raw_len), 0);
    struct loki_body a, b;
    assert_int_equal(loki_split_body(body, body_len, &a, &b), LOKI_SPLIT_OK);
    Logproto__PushRequest *ra = decode_body(a.data, a.len), *rb = decode_body(b.data, b.len);
    /* No empty copy of a stream on either side of the cut. */
    assert_int_equal(ra->n_streams, 1);
    assert_string_equal(ra->streams[0]->labels, "{s=\"0\"}");
    assert_int_equal(ra->streams[0]->n_entries, 2);
    assert_int_equal(rb->n_streams, 1);
    assert_string_equal(rb->streams[0]->labels, "{s=\"3\"}");
    assert_int_equal(rb->streams[0]->n_entries, 2);
    logproto__push_request__free_unpacked(ra, NULL);
    logproto__push_request__free_unpacked(rb, NULL);
    loki_body_free(&a);
    loki_body_free(&b);
    loki_encoder_destroy(enc);
}

/* Splits recursively, first piece first (as the sender pushes them), down
 * to single entries; appends the leaves' entries to out. */
static void split_to_leaves(const uint8_t *body, size_t len, size_t entries, struct flat_entry *out, size_t *n,
                            size_t cap, int depth)
{
    assert_true(depth < 64);
    struct loki_body a, b;
    const enum loki_split_result r = loki_split_body(body, len, &a, &b);
    if (entries < 2) {
        assert_int_equal(r, LOKI_SPLIT_SINGLE);
        assert_null(a.data);
        assert_null(b.data);
        const size_t before = *n;
        flatten_body(body, len, out, n, cap);
        assert_int_equal(*n - before, entries);
        return;
    }
    assert_int_equal(r, LOKI_SPLIT_OK);
    assert_int_equal(a.entries, (entries + 1) / 2);
    assert_int_equal(b.entries, entries / 2);
    split_to_leaves(a.data, a.len, a.entries, out, n, cap, depth + 1);
    split_to_leaves(b.data, b.len, b.entries, out, n, cap, depth + 1);
    loki_body_free(&a);
    loki_body_free(&b);
}

static void test_split_down_to_single_entries_keeps_order(void **state)
{
    (void)state;
    struct loki_encoder *enc = loki_encoder_create();
    assert_non_null(enc);
    const uint8_t *body;
    size_t body_len, raw_len;
    assert_int_equal(loki_encode(enc, split_streams, 4, &body, &body_len, &raw_len), 0);
    struct flat_entry all[16], leaves[16];
    size_t nall = 0, nleaves = 0;
    flatten_body(body, body_len, all, &nall, 16);
    split_to_leaves(body, body_len, 9, leaves, &nleaves, 16, 0);
    assert_int_equal(nleaves, 9);
    for (size_t i = 0; i < 9; i++) assert_flat_equal(&leaves[i], &all[i]);
    loki_encoder_destroy(enc);
}

static void test_split_large_batch(void **state)
{
    (void)state;
    enum { N = 20001 };
    static char lines[N][16];
    static struct loki_entry e[N];
    for (int i = 0; i < N; i++) {
        const int n = snprintf(lines[i], sizeof lines[i], "L%d", i);
        e[i] = (struct loki_entry){.ts_ns = i, .line = lines[i], .len = (size_t)n};
    }
    const struct loki_stream st[] = {
        {.labels = "{a=\"x\"}", .entries = e, .nentries = 7000},
        {.labels = "{a=\"y\"}", .entries = e + 7000, .nentries = N - 7000},
    };
    struct loki_encoder *enc = loki_encoder_create();
    assert_non_null(enc);
    const uint8_t *body;
    size_t body_len, raw_len;
    assert_int_equal(loki_encode(enc, st, 2, &body, &body_len, &raw_len), 0);
    struct loki_body a, b;
    assert_int_equal(loki_split_body(body, body_len, &a, &b), LOKI_SPLIT_OK);
    assert_int_equal(a.entries, 10001);
    assert_int_equal(b.entries, 10000);
    assert_true(a.len < body_len && b.len < body_len);
    Logproto__PushRequest *ra = decode_body(a.data, a.len), *rb = decode_body(b.data, b.len);
    assert_int_equal(ra->n_streams, 2);
    assert_int_equal(ra->streams[0]->n_entries, 7000);
    assert_int_equal(ra->streams[1]->n_entries, 3001);
    assert_int_equal(rb->n_streams, 1);
    assert_string_equal(rb->streams[0]->labels, "{a=\"y\"}");
    assert_int_equal(rb->streams[0]->n_entries, 10000);
    size_t k = 0;
    for (size_t i = 0; i < ra->n_streams; i++)
        for (size_t j = 0; j < ra->streams[i]->n_entries; j++, k++)
            assert_int_equal(ra->streams[i]->entries[j]->timestamp->nanos, (int32_t)k);
    for (size_t j = 0; j < rb->streams[0]->n_entries; j++, k++) {
        const Logproto__EntryAdapter *x = rb->streams[0]->entries[j];
        assert_int_equal(x->timestamp->nanos, (int32_t)k);
        assert_int_equal(x->line.len, e[k].len);
        assert_memory_equal(x->line.data, e[k].line, e[k].len);
    }
    assert_int_equal(k, N);
    logproto__push_request__free_unpacked(ra, NULL);
    logproto__push_request__free_unpacked(rb, NULL);
    loki_body_free(&a);
    loki_body_free(&b);
    loki_encoder_destroy(enc);
}

static void test_split_refuses_what_it_cannot_cut(void **state)
{
    (void)state;
    struct loki_encoder *enc = loki_encoder_create();
    assert_non_null(enc);
    const uint8_t *body;
    size_t body_len, raw_len;
    struct loki_body a = {.len = 7}, b = {.len = 7};

    /* One entry (beside an empty stream): nothing to split. */
    const struct loki_stream one[] = {split_streams[1], {.labels = "{s=\"3\"}", .entries = split_s3, .nentries = 1}};
    assert_int_equal(loki_encode(enc, one, 2, &body, &body_len, &raw_len), 0);
    assert_int_equal(loki_split_body(body, body_len, &a, &b), LOKI_SPLIT_SINGLE);
    assert_null(a.data);
    assert_int_equal(a.len, 0);
    assert_int_equal(b.len, 0);
    assert_int_equal(loki_encode(enc, NULL, 0, &body, &body_len, &raw_len), 0);
    assert_int_equal(loki_split_body(body, body_len, &a, &b), LOKI_SPLIT_SINGLE);

    /* Not snappy; snappy of something that is not a PushRequest. */
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02};
    assert_int_equal(loki_split_body(junk, sizeof junk, &a, &b), LOKI_SPLIT_INVALID);
    char packed[64];
    size_t packed_len = sizeof packed;
    static const char not_pb[] = "\x0a\x7f" "short"; /* a stream claiming 127 bytes */
    assert_int_equal(snappy_compress(not_pb, sizeof not_pb - 1, packed, &packed_len), SNAPPY_OK);
    assert_int_equal(loki_split_body((const uint8_t *)packed, packed_len, &a, &b), LOKI_SPLIT_INVALID);
    assert_null(a.data);
    assert_null(b.data);
    loki_encoder_destroy(enc);
}

/* ---------------------------------------------------------------------------
 * Back-off.
 */

static void test_backoff_bounds(void **state)
{
    (void)state;
    for (int i = 0; i < 100; i++) assert_int_equal(loki_backoff_ms(0, 500, 300000, -1), 500);
    int64_t lo = INT64_MAX, hi = 0;
    for (int i = 0; i < 2000; i++) {
        const int64_t d = loki_backoff_ms(3, 500, 300000, -1);
        assert_in_range(d, 500, 4000);
        if (d < lo) lo = d;
        if (d > hi) hi = d;
    }
    assert_true(hi > 3500); /* jitter spreads over the range */
    assert_true(lo < 1000);
    for (int attempt = 0; attempt < 200; attempt += 7) {
        const int64_t d = loki_backoff_ms(attempt, 500, 300000, -1);
        assert_in_range(d, 500, 300000);
    }
    assert_in_range(loki_backoff_ms(1000000, 1, INT64_MAX / 2, -1), 1, INT64_MAX / 2);
    assert_int_equal(loki_backoff_ms(5, 0, 1000, -1), 0); /* 0 * 2^n */
    assert_int_equal(loki_backoff_ms(5, 200, 100, -1), 200); /* max below min: min */
}

static void test_backoff_retry_after(void **state)
{
    (void)state;
    assert_int_equal(loki_backoff_ms(0, 500, 300000, 3000), 3000);
    for (int i = 0; i < 200; i++) assert_in_range(loki_backoff_ms(2, 500, 300000, 1000), 1000, 2000);
    assert_int_equal(loki_backoff_ms(0, 500, 60000, 3600000), 60000); /* capped at max */
    assert_int_equal(loki_backoff_ms(0, 500, 60000, 0), 500);
}

/* ---------------------------------------------------------------------------
 * A tiny HTTP server: one thread, serves requests on the connections it
 * accepts, answering the i-th request with responses[i] (or never, when
 * responses[i] is NULL). Stops when told through a pipe.
 */

#define SRV_MAX 32

struct srv {
    int lfd, port, stop[2];
    pthread_t thread;
    const char *responses[SRV_MAX];
    int accepts, nreq;
    char *head[SRV_MAX]; /* request head, NUL-terminated */
    size_t body_len[SRV_MAX];
    unsigned char body_sum[SRV_MAX]; /* xor of the body bytes */
};

/* Waits until fd is readable or the server is told to stop (returns 0). */
static int srv_wait(struct srv *s, int fd)
{
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = s->stop[0], .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return 0;
        }
        if (p[1].revents) return 0;
        if (p[0].revents) return 1;
    }
}

/* Serves one connection; returns when it closes or the server stops. */
static void srv_conn(struct srv *s, int fd)
{
    static char buf[1 << 16];
    size_t have = 0;
    while (s->nreq < SRV_MAX) {
        char *end;
        while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
            if (have == sizeof buf || !srv_wait(s, fd)) return;
            const ssize_t r = read(fd, buf + have, sizeof buf - have);
            if (r <= 0) return;
            have += (size_t)r;
        }
        const size_t head_len = (size_t)(end - buf) + 4;
        const int i = s->nreq++;
        s->head[i] = strndup(buf, head_len);
        size_t clen = 0;
        const char *cl = strcasestr(s->head[i], "\r\nContent-Length:");
        if (cl) clen = strtoul(cl + 17, NULL, 10);
        /* The body: count and checksum, keeping whatever follows it. */
        size_t got = 0;
        unsigned char sum = 0;
        size_t in_buf = have - head_len;
        memmove(buf, buf + head_len, in_buf);
        have = in_buf;
        for (;;) {
            const size_t take = have < clen - got ? have : clen - got;
            for (size_t k = 0; k < take; k++) sum ^= (unsigned char)buf[k];
            memmove(buf, buf + take, have - take);
            have -= take;
            got += take;
            if (got == clen) break;
            if (!srv_wait(s, fd)) return;
            const ssize_t r = read(fd, buf + have, sizeof buf - have);
            if (r <= 0) return;
            have += (size_t)r;
        }
        s->body_len[i] = got;
        s->body_sum[i] = sum;
        const char *resp = s->responses[i];
        if (!resp) { /* never answer: wait for the stop */
            srv_wait(s, s->stop[0]);
            return;
        }
        const size_t n = strlen(resp);
        if (write(fd, resp, n) != (ssize_t)n) return;
    }
}

static void *srv_main(void *arg)
{
    struct srv *s = arg;
    while (srv_wait(s, s->lfd)) {
        const int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0) continue;
        s->accepts++;
        srv_conn(s, fd);
        close(fd);
    }
    return NULL;
}

/* Answers the i-th request with responses[i], for i < n (n <= SRV_MAX). */
static struct srv *srv_start_list(const char *const *responses, int n)
{
    struct srv *s = calloc(1, sizeof *s);
    assert_non_null(s);
    assert_true(n <= SRV_MAX);
    for (int i = 0; i < n; i++) s->responses[i] = responses[i];
    assert_int_equal(pipe(s->stop), 0);
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s->lfd, 8), 0);
    socklen_t alen = sizeof a;
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->thread, NULL, srv_main, s), 0);
    return s;
}

static struct srv *srv_start(const char *r0, const char *r1, const char *r2)
{
    const char *const r[] = {r0, r1, r2};
    return srv_start_list(r, 3);
}

static void srv_stop(struct srv *s)
{
    assert_int_equal(write(s->stop[1], "x", 1), 1);
    pthread_join(s->thread, NULL);
    close(s->lfd);
    close(s->stop[0]);
    close(s->stop[1]);
}

static void srv_free(struct srv *s)
{
    for (int i = 0; i < SRV_MAX; i++) free(s->head[i]);
    free(s);
}

static int has_header(const char *head, const char *line)
{
    char want[512];
    snprintf(want, sizeof want, "\r\n%s\r\n", line);
    return strstr(head, want) != NULL;
}

/* ---------------------------------------------------------------------------
 * Client.
 */

static void set_str(char **field, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_str(char **field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(*field);
    assert_true(vasprintf(field, fmt, ap) >= 0);
    va_end(ap);
}

static void cfg_for(struct config *cfg, int port)
{
    config_defaults(cfg);
    set_str(&cfg->output.loki.url, "http://127.0.0.1:%d/loki/api/v1/push", port);
    cfg->output.loki.timeout_ms = 5000;
}

static void add_cfg_header(struct config *cfg, const char *name, const char *value)
{
    struct config_strmap *m = &cfg->output.loki.headers;
    m->keys = realloc(m->keys, (m->count + 1) * sizeof *m->keys);
    m->values = realloc(m->values, (m->count + 1) * sizeof *m->values);
    assert_non_null(m->keys);
    assert_non_null(m->values);
    m->keys[m->count] = strdup(name);
    m->values[m->count] = strdup(value);
    m->count++;
}

static char *temp_file(const char *content)
{
    char *path = strdup("/tmp/test_loki_secret.XXXXXX");
    assert_non_null(path);
    const int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    return path;
}

static struct loki_client *client_ok(const struct config *cfg)
{
    char err[512] = "";
    struct loki_client *c = loki_client_create(cfg, err, sizeof err);
    if (!c) fail_msg("loki_client_create: %s", err);
    return c;
}

#define R204 "HTTP/1.1 204 No Content\r\n\r\n"

static void test_client_headers_bearer_and_body(void **state)
{
    (void)state;
    struct srv *s = srv_start(R204, R204, NULL);
    struct config cfg;
    cfg_for(&cfg, s->port);
    set_str(&cfg.output.loki.tenant_id, "team-a");
    char *tok = temp_file("tok3n-value\n\n");
    set_str(&cfg.output.loki.bearer_token_file, "%s", tok);
    add_cfg_header(&cfg, "X-Extra", "yes please");
    struct loki_client *c = client_ok(&cfg);

    /* Large enough that curl would ask for 100-continue if we let it. */
    const size_t big = 2u << 20;
    uint8_t *body = malloc(big);
    assert_non_null(body);
    unsigned char sum = 0;
    for (size_t i = 0; i < big; i++) sum ^= body[i] = (uint8_t)(i * 31 + 7);
    struct loki_push_outcome o;
    loki_push(c, body, big, &o);
    if (o.result != LOKI_PUSH_OK) fail_msg("push: %d %s", o.result, o.detail);
    assert_int_equal(o.http_status, 204);
    assert_int_equal(o.retry_after_ms, -1);
    assert_string_equal(o.detail, "HTTP 204");
    assert_true(o.seconds >= 0 && o.seconds < 5);

    /* A second push reuses the connection. */
    loki_push(c, (const uint8_t *)"abc", 3, &o);
    assert_int_equal(o.result, LOKI_PUSH_OK);
    loki_client_destroy(c);
    srv_stop(s); /* joins: the fields below are stable */

    assert_int_equal(s->nreq, 2);
    assert_int_equal(s->accepts, 1);
    const char *h = s->head[0];
    assert_true(strncmp(h, "POST /loki/api/v1/push HTTP/1.1\r\n", 33) == 0);
    assert_true(has_header(h, "Content-Type: application/x-protobuf"));
    assert_true(has_header(h, "User-Agent: loglet/" LOGLET_VERSION));
    assert_true(has_header(h, "X-Scope-OrgID: team-a"));
    assert_true(has_header(h, "Authorization: Bearer tok3n-value"));
    assert_true(has_header(h, "X-Extra: yes please"));
    assert_null(strcasestr(h, "\r\nExpect:"));
    assert_int_equal(s->body_len[0], big);
    assert_int_equal(s->body_sum[0], sum);
    assert_int_equal(s->body_len[1], 3);
    assert_true(has_header(s->head[1], "Content-Length: 3"));

    free(body);
    unlink(tok);
    free(tok);
    srv_free(s);
    config_free(&cfg);
}

static void test_client_basic_auth(void **state)
{
    (void)state;
    struct srv *s = srv_start("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", NULL, NULL);
    struct config cfg;
    cfg_for(&cfg, s->port);
    char *pw = temp_file("s3cret \r\n");
    set_str(&cfg.output.loki.basic_auth_username, "loglet");
    set_str(&cfg.output.loki.basic_auth_password_file, "%s", pw);
    struct loki_client *c = client_ok(&cfg);
    struct loki_push_outcome o;
    loki_push(c, (const uint8_t *)"x", 1, &o);
    assert_int_equal(o.result, LOKI_PUSH_OK);
    assert_int_equal(o.http_status, 200);
    loki_client_destroy(c);
    srv_stop(s);
    assert_int_equal(s->nreq, 1);
    assert_true(has_header(s->head[0], "Authorization: Basic bG9nbGV0OnMzY3JldA==")); /* loglet:s3cret */
    assert_null(strstr(s->head[0], "X-Scope-OrgID")); /* no tenant configured */
    unlink(pw);
    free(pw);
    srv_free(s);
    config_free(&cfg);
}

static void test_client_classifies_answers(void **state)
{
    (void)state;
    static char r0[512];
    const char *msg = "entry for stream '{a=\"b\"}' has timestamp too old\x01 x\r\ny\n\n\n";
    snprintf(r0, sizeof r0, "HTTP/1.1 400 Bad Request\r\nContent-Length: %zu\r\n\r\n%s", strlen(msg), msg);
    struct srv *s = srv_start(r0,
                              "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 9\r\n\r\nslow down",
                              "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops");
    struct config cfg;
    cfg_for(&cfg, s->port);
    struct loki_client *c = client_ok(&cfg);
    struct loki_push_outcome o;

    loki_push(c, (const uint8_t *)"x", 1, &o);
    assert_int_equal(o.result, LOKI_PUSH_REJECTED);
    assert_int_equal(o.http_status, 400);
    assert_int_equal(o.retry_after_ms, -1);
    assert_string_equal(o.detail, "HTTP 400: entry for stream '{a=\"b\"}' has timestamp too old\\x01 x\\r\\ny");

    loki_push(c, (const uint8_t *)"x", 1, &o);
    assert_int_equal(o.result, LOKI_PUSH_RETRY);
    assert_int_equal(o.http_status, 429);
    assert_int_equal(o.retry_after_ms, 3000);
    assert_string_equal(o.detail, "HTTP 429: slow down");

    loki_push(c, (const uint8_t *)"x", 1, &o);
    assert_int_equal(o.result, LOKI_PUSH_RETRY);
    assert_int_equal(o.http_status, 500);
    assert_int_equal(o.retry_after_ms, -1); /* not carried over from the 429 */
    assert_string_equal(o.detail, "HTTP 500: oops");

    loki_client_destroy(c);
    srv_stop(s);
    assert_int_equal(s->accepts, 1);
    srv_free(s);
    config_free(&cfg);
}

static void test_client_long_body_and_http_date(void **state)
{
    (void)state;
    static char r0[4096], r1[512];
    char page[2000];
    memset(page, 'z', sizeof page - 1);
    page[sizeof page - 1] = '\0';
    snprintf(r0, sizeof r0, "HTTP/1.1 404 Not Found\r\nContent-Length: %zu\r\n\r\n%s", strlen(page), page);
    char date[64];
    const time_t later = time(NULL) + 120;
    struct tm tm;
    gmtime_r(&later, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    snprintf(r1, sizeof r1, "HTTP/1.1 503 Service Unavailable\r\nretry-after: %s\r\nContent-Length: 0\r\n\r\n", date);
    struct srv *s = srv_start(r0, r1, NULL);
    struct config cfg;
    cfg_for(&cfg, s->port);
    struct loki_client *c = client_ok(&cfg);
    struct loki_push_outcome o;

    loki_push(c, (const uint8_t *)"x", 1, &o);
    assert_int_equal(o.result, LOKI_PUSH_MISCONFIGURED);
    assert_int_equal(o.http_status, 404);
    /* "HTTP 404: " + the first 256 bytes + "…" */
    char want[512];
    snprintf(want, sizeof want, "HTTP 404: %.256s\xe2\x80\xa6", page);
    assert_string_equal(o.detail, want);

    loki_push(c, (const uint8_t *)"x", 1, &o);
    assert_int_equal(o.result, LOKI_PUSH_RETRY);
    assert_int_equal(o.http_status, 503);
    assert_in_range(o.retry_after_ms, 115000, 120000);
    assert_string_equal(o.detail, "HTTP 503");

    loki_client_destroy(c);
    srv_stop(s);
    srv_free(s);
    config_free(&cfg);
}

/* A redirect is not followed (credentials would go along to wherever it
 * points) and not dropped either: the URL is wrong, not the lines. */
static void test_client_redirect_is_misconfigured(void **state)
{
    (void)state;
    struct srv *s = srv_start("HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
                              NULL, NULL);
    struct config cfg;
    cfg_for(&cfg, s->port);
    struct loki_client *c = client_ok(&cfg);
    struct loki_push_outcome o;
    loki_push(c, (const uint8_t *)"x", 1, &o);
    assert_int_equal(o.result, LOKI_PUSH_MISCONFIGURED);
    assert_int_equal(o.http_status, 301);
    loki_client_destroy(c);
    srv_stop(s);
    assert_int_equal(s->nreq, 1);
    assert_int_equal(s->accepts, 1);
    srv_free(s);
    config_free(&cfg);
}


/* Every row of loki.h's table: which answers are retried, which dropped. */
static void test_client_classifies_every_status(void **state)
{
    (void)state;
    static const struct {
        long status;
        enum loki_push_result want;
    } cases[] = {
        {200, LOKI_PUSH_OK},
        {204, LOKI_PUSH_OK},
        {301, LOKI_PUSH_MISCONFIGURED},
        {302, LOKI_PUSH_MISCONFIGURED},
        {307, LOKI_PUSH_MISCONFIGURED},
        {308, LOKI_PUSH_MISCONFIGURED},
        {400, LOKI_PUSH_REJECTED},
        {401, LOKI_PUSH_AUTH},
        {403, LOKI_PUSH_AUTH},
        {404, LOKI_PUSH_MISCONFIGURED},
        {405, LOKI_PUSH_MISCONFIGURED},
        {407, LOKI_PUSH_MISCONFIGURED},
        {408, LOKI_PUSH_RETRY},
        {409, LOKI_PUSH_MISCONFIGURED},
        {413, LOKI_PUSH_TOO_LARGE},
        {415, LOKI_PUSH_MISCONFIGURED},
        {421, LOKI_PUSH_MISCONFIGURED},
        {422, LOKI_PUSH_REJECTED},
        {429, LOKI_PUSH_RETRY},
        {431, LOKI_PUSH_MISCONFIGURED},
        {451, LOKI_PUSH_MISCONFIGURED},
        {500, LOKI_PUSH_RETRY},
        {502, LOKI_PUSH_RETRY},
        {503, LOKI_PUSH_RETRY},
        {504, LOKI_PUSH_RETRY},
        {599, LOKI_PUSH_RETRY},
    };
    enum { N = sizeof cases / sizeof cases[0] };
    static char resp[N][128];
    const char *list[N];
    for (int i = 0; i < N; i++) {
        /* 1xx-5xx with an empty body; 204 and 304 have none by definition. */
        snprintf(resp[i], sizeof resp[i], "HTTP/1.1 %ld Whatever\r\nContent-Length: 0\r\n\r\n", cases[i].status);
        list[i] = resp[i];
    }
    struct srv *s = srv_start_list(list, N);
    struct config cfg;
    cfg_for(&cfg, s->port);
    struct loki_client *c = client_ok(&cfg);
    for (int i = 0; i < N; i++) {
        struct loki_push_outcome o;
        loki_push(c, (const uint8_t *)"x", 1, &o);
        if (o.http_status != cases[i].status || o.result != cases[i].want)
            fail_msg("HTTP %ld: got status %ld class %d, want class %d (%s)", cases[i].status, o.http_status,
                     o.result, cases[i].want, o.detail);
        char want[32];
        snprintf(want, sizeof want, "HTTP %ld", cases[i].status);
        assert_string_equal(o.detail, want);
    }
    loki_client_destroy(c);
    srv_stop(s);
    assert_int_equal(s->nreq, N);
    srv_free(s);
    config_free(&cfg);
}

/* A Kubernetes secret volume: <dir>/token -> ..data/token, ..data -> a
 * timestamped directory that the kubelet replaces atomically. */
struct secret_dir {
    char root[64];
    char path[128]; /* <root>/token, what the config names */
    int generation;
};

static void secret_dir_write(struct secret_dir *d, const char *content)
{
    char dir[160], file[200], tmp[160], data[160], old[160];
    snprintf(dir, sizeof dir, "%s/..gen%d", d->root, ++d->generation);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(file, sizeof file, "%s/token", dir);
    const int fd = open(file, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    snprintf(tmp, sizeof tmp, "%s/..data_tmp", d->root);
    snprintf(data, sizeof data, "%s/..data", d->root);
    snprintf(dir, sizeof dir, "..gen%d", d->generation);
    assert_int_equal(symlink(dir, tmp), 0);
    assert_int_equal(rename(tmp, data), 0);
    if (d->generation > 1) { /* the kubelet removes the old generation */
        snprintf(old, sizeof old, "%s/..gen%d/token", d->root, d->generation - 1);
        assert_int_equal(unlink(old), 0);
        snprintf(old, sizeof old, "%s/..gen%d", d->root, d->generation - 1);
        assert_int_equal(rmdir(old), 0);
    }
}

static void secret_dir_create(struct secret_dir *d, const char *content)
{
    memset(d, 0, sizeof *d);
    snprintf(d->root, sizeof d->root, "/tmp/test_loki_secrets.XXXXXX");
    assert_non_null(mkdtemp(d->root));
    snprintf(d->path, sizeof d->path, "%s/token", d->root);
    secret_dir_write(d, content);
    assert_int_equal(symlink("..data/token", d->path), 0);
}

static void secret_dir_remove(struct secret_dir *d)
{
    char p[200];
    snprintf(p, sizeof p, "%s/..gen%d/token", d->root, d->generation);
    unlink(p);
    snprintf(p, sizeof p, "%s/..gen%d", d->root, d->generation);
    rmdir(p);
    snprintf(p, sizeof p, "%s/..data", d->root);
    unlink(p);
    unlink(d->path);
    assert_int_equal(rmdir(d->root), 0);
}

static void rewrite_file(const char *path, const char *content)
{
    const int fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
}

#define R401 "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"

/* The token is picked up before the next push, without a 401 first: after a
 * ..data swap, after an in-place rewrite. A file that goes empty, missing or
 * two-line keeps the last good token; a good one again is used at once. */
static void test_client_token_rotation(void **state)
{
    (void)state;
    const char *r[] = {R204, R204, R204, R204, R204, R204, R204, R204};
    struct srv *s = srv_start_list(r, 8);
    struct secret_dir d;
    secret_dir_create(&d, "token-one\n");
    struct config cfg;
    cfg_for(&cfg, s->port);
    set_str(&cfg.output.loki.bearer_token_file, "%s", d.path);
    struct loki_client *c = client_ok(&cfg);
    struct loki_push_outcome o;
    char real[200];

    loki_push(c, (const uint8_t *)"x", 1, &o);                     /* 0: one */
    secret_dir_write(&d, "token-two\n");
    loki_push(c, (const uint8_t *)"x", 1, &o);                     /* 1: two, by the swap */
    snprintf(real, sizeof real, "%s/..gen%d/token", d.root, d.generation);
    rewrite_file(real, "token-three-longer");
    loki_push(c, (const uint8_t *)"x", 1, &o);                     /* 2: three, in place */
    rewrite_file(real, " \n");
    loki_push(c, (const uint8_t *)"x", 1, &o);                     /* 3: empty: still three */
    assert_int_equal(unlink(real), 0);
    loki_push(c, (const uint8_t *)"x", 1, &o);                     /* 4: missing: still three */
    const int fd = open(real, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "four\nfive\n", 10), 10);
    close(fd);
    loki_push(c, (const uint8_t *)"x", 1, &o);                     /* 5: two lines: still three */
    rewrite_file(real, "token-six");
    loki_push(c, (const uint8_t *)"x", 1, &o);                     /* 6: six */
    loki_push(c, (const uint8_t *)"x", 1, &o);                     /* 7: six, unchanged */
    assert_int_equal(o.result, LOKI_PUSH_OK);
    loki_client_destroy(c);
    srv_stop(s);

    static const char *const want[] = {"one", "two", "three-longer", "three-longer",
                                       "three-longer", "three-longer", "six", "six"};
    assert_int_equal(s->nreq, 8);
    for (int i = 0; i < 8; i++) {
        char line[64];
        snprintf(line, sizeof line, "Authorization: Bearer token-%s", want[i]);
        if (!has_header(s->head[i], line)) fail_msg("request %d: want %s in\n%s", i, line, s->head[i]);
        const char *first = strcasestr(s->head[i], "\r\nAuthorization:");
        assert_null(strcasestr(first + 1, "\r\nAuthorization:")); /* the old line is gone, not kept beside */
        assert_true(has_header(s->head[i], "Content-Type: application/x-protobuf")); /* the rest rebuilt too */
    }
    assert_int_equal(s->accepts, 1); /* a new credential needs no new connection */
    secret_dir_remove(&d);
    srv_free(s);
    config_free(&cfg);
}

/* Events of `kind` (IN_OPEN) queued on the inotify descriptor, drained. */
static int inotify_count(int fd, uint32_t kind)
{
    int n = 0;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        const ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return n;
        for (ssize_t at = 0; at < r;) {
            const struct inotify_event *ev = (const struct inotify_event *)(buf + at);
            if (ev->mask & kind) n++;
            at += (ssize_t)(sizeof *ev + ev->len);
        }
    }
}

/* After a 401 or 403 the file is opened and read again before every retry
 * even though stat() shows no change (an in-place rewrite within one clock
 * tick looks just like that); otherwise it is only stat()ed, never opened. */
static void test_client_rereads_after_401_whatever_stat_says(void **state)
{
    (void)state;
    const char *r[] = {R204, R401, R401, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", R204, R204};
    struct srv *s = srv_start_list(r, 6);
    char *tok = temp_file("same-token\n");
    struct config cfg;
    cfg_for(&cfg, s->port);
    set_str(&cfg.output.loki.bearer_token_file, "%s", tok);
    struct loki_client *c = client_ok(&cfg);
    const int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    assert_true(in >= 0);
    assert_true(inotify_add_watch(in, tok, IN_OPEN) >= 0);
    struct loki_push_outcome o;
    /* Opens of the file before each push, given the answer before it. */
    static const int want_opens[] = {0, 0, 1, 1, 1, 0};
    static const enum loki_push_result want_class[] = {LOKI_PUSH_OK, LOKI_PUSH_AUTH, LOKI_PUSH_AUTH,
                                                       LOKI_PUSH_AUTH, LOKI_PUSH_OK, LOKI_PUSH_OK};
    for (int i = 0; i < 6; i++) {
        loki_push(c, (const uint8_t *)"x", 1, &o);
        assert_int_equal(o.result, want_class[i]);
        const int opens = inotify_count(in, IN_OPEN);
        if (opens != want_opens[i]) fail_msg("push %d: the token file was opened %d times, want %d", i, opens,
                                             want_opens[i]);
    }
    close(in);
    loki_client_destroy(c);
    srv_stop(s);
    for (int i = 0; i < 6; i++) assert_true(has_header(s->head[i], "Authorization: Bearer same-token"));
    unlink(tok);
    free(tok);
    srv_free(s);
    config_free(&cfg);
}

/* The basic-auth password file is followed the same way. */
static void test_client_password_rotation(void **state)
{
    (void)state;
    const char *r[] = {R204, R401, R204};
    struct srv *s = srv_start_list(r, 3);
    char *pw = temp_file("s3cret\n");
    struct config cfg;
    cfg_for(&cfg, s->port);
    set_str(&cfg.output.loki.basic_auth_username, "loglet");
    set_str(&cfg.output.loki.basic_auth_password_file, "%s", pw);
    struct loki_client *c = client_ok(&cfg);
    struct loki_push_outcome o;
    loki_push(c, (const uint8_t *)"x", 1, &o);
    rewrite_file(pw, "n3w-password\n");
    loki_push(c, (const uint8_t *)"x", 1, &o);
    assert_int_equal(o.result, LOKI_PUSH_AUTH);
    loki_push(c, (const uint8_t *)"x", 1, &o);
    assert_int_equal(o.result, LOKI_PUSH_OK);
    loki_client_destroy(c);
    srv_stop(s);
    assert_true(has_header(s->head[0], "Authorization: Basic bG9nbGV0OnMzY3JldA==")); /* loglet:s3cret */
    assert_true(has_header(s->head[1], "Authorization: Basic bG9nbGV0Om4zdy1wYXNzd29yZA==")); /* loglet:n3w-password */
    assert_true(has_header(s->head[2], "Authorization: Basic bG9nbGV0Om4zdy1wYXNzd29yZA=="));
    unlink(pw);
    free(pw);
    srv_free(s);
    config_free(&cfg);
}

static void test_client_connection_refused(void **state)
{
    (void)state;
    /* A port that was just free: bind, note it, close. */
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t alen = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    close(fd);

    struct config cfg;
    cfg_for(&cfg, ntohs(a.sin_port));
    struct loki_client *c = client_ok(&cfg);
    struct loki_push_outcome o;
    loki_push(c, (const uint8_t *)"x", 1, &o);
    assert_int_equal(o.result, LOKI_PUSH_RETRY);
    assert_int_equal(o.http_status, 0);
    assert_int_equal(o.retry_after_ms, -1);
    assert_non_null(strstr(o.detail, "onnect")); /* "Failed to connect … Connection refused" */
    loki_client_destroy(c);
    config_free(&cfg);
}

static void test_client_timeout(void **state)
{
    (void)state;
    struct srv *s = srv_start(NULL, NULL, NULL); /* reads the request, never answers */
    struct config cfg;
    cfg_for(&cfg, s->port);
    cfg.output.loki.timeout_ms = 300;
    struct loki_client *c = client_ok(&cfg);
    struct loki_push_outcome o;
    loki_push(c, (const uint8_t *)"x", 1, &o);
    assert_int_equal(o.result, LOKI_PUSH_RETRY);
    assert_int_equal(o.http_status, 0);
    assert_true(o.seconds >= 0.25 && o.seconds < 3.0);
    assert_true(o.detail[0] != '\0');
    loki_client_destroy(c);
    srv_stop(s);
    srv_free(s);
    config_free(&cfg);
}

static void test_client_create_errors(void **state)
{
    (void)state;
    struct config cfg;
    char err[512];

    cfg_for(&cfg, 9);
    set_str(&cfg.output.loki.basic_auth_username, "u");
    set_str(&cfg.output.loki.basic_auth_password_file, "/nonexistent/loglet-test/pw");
    err[0] = '\0';
    assert_null(loki_client_create(&cfg, err, sizeof err));
    assert_string_equal(err, "output.loki.basic_auth.password_file: cannot read /nonexistent/loglet-test/pw: "
                             "No such file or directory");
    config_free(&cfg);

    cfg_for(&cfg, 9);
    set_str(&cfg.output.loki.bearer_token_file, "/nonexistent/loglet-test/token");
    assert_null(loki_client_create(&cfg, err, sizeof err));
    assert_string_equal(err, "output.loki.bearer_token_file: cannot read /nonexistent/loglet-test/token: "
                             "No such file or directory");
    config_free(&cfg);

    /* An empty secret file is an error too, naming the key; never the content. */
    char *empty = temp_file(" \n");
    cfg_for(&cfg, 9);
    set_str(&cfg.output.loki.bearer_token_file, "%s", empty);
    assert_null(loki_client_create(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "output.loki.bearer_token_file: "));
    assert_non_null(strstr(err, "is empty"));
    config_free(&cfg);
    unlink(empty);
    free(empty);

    char *two = temp_file("line1\nline2\n");
    cfg_for(&cfg, 9);
    set_str(&cfg.output.loki.bearer_token_file, "%s", two);
    assert_null(loki_client_create(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "more than one line"));
    assert_null(strstr(err, "line1"));
    config_free(&cfg);
    unlink(two);
    free(two);

    cfg_for(&cfg, 9);
    set_str(&cfg.output.loki.tls_ca_file, "/nonexistent/ca.pem");
    assert_null(loki_client_create(&cfg, err, sizeof err));
    assert_string_equal(err, "output.loki.tls.ca_file: cannot read /nonexistent/ca.pem: No such file or directory");
    config_free(&cfg);

    cfg_for(&cfg, 9);
    add_cfg_header(&cfg, "X-Bad", "a\r\nInjected: 1");
    assert_null(loki_client_create(&cfg, err, sizeof err));
    assert_string_equal(err, "output.loki.headers: the value of 'X-Bad' holds a line break");
    config_free(&cfg);

    cfg_for(&cfg, 9);
    add_cfg_header(&cfg, "X Bad", "a");
    assert_null(loki_client_create(&cfg, err, sizeof err));
    assert_string_equal(err, "output.loki.headers: 'X Bad' is not a valid header name");
    config_free(&cfg);

    cfg_for(&cfg, 9);
    set_str(&cfg.output.loki.url, "ftp://example.com/x");
    assert_null(loki_client_create(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "output.loki.url: "));
    config_free(&cfg);

    cfg_for(&cfg, 9);
    set_str(&cfg.output.loki.url, "%s", "");
    assert_null(loki_client_create(&cfg, err, sizeof err));
    assert_string_equal(err, "output.loki.url: not set");
    config_free(&cfg);
}

static void test_url_redacted(void **state)
{
    (void)state;
    char out[256];
    loki_url_redacted("https://tenant:s3cr@t@loki.example/loki/api/v1/push", out, sizeof out);
    assert_string_equal(out, "https://***@loki.example/loki/api/v1/push");
    loki_url_redacted("http://loki:3100/push?a=b@c", out, sizeof out); /* an '@' past the authority is not userinfo */
    assert_string_equal(out, "http://loki:3100/push?a=b@c");
    loki_url_redacted("http://user@loki", out, sizeof out);
    assert_string_equal(out, "http://***@loki");
    loki_url_redacted("", out, sizeof out);
    assert_string_equal(out, "");
}

int main(void)
{
    log_setup(LOG_LEVEL_ERROR, LOG_FORMAT_LOGFMT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_labels_fixture_strings),
        cmocka_unit_test(test_labels_sorted_bytewise),
        cmocka_unit_test(test_labels_escaping),
        cmocka_unit_test(test_labels_names_sanitized),
        cmocka_unit_test(test_labels_cap_too_small),
        cmocka_unit_test(test_labels_too_many),
        cmocka_unit_test(test_encode_matches_promtail_fixture),
        cmocka_unit_test(test_encode_empty_batch),
        cmocka_unit_test(test_encode_identical_to_protobuf_c),
        cmocka_unit_test(test_encode_nul_in_line_round_trips),
        cmocka_unit_test(test_encode_negative_timestamps),
        cmocka_unit_test(test_encode_large_batch_reuses_buffers),
        cmocka_unit_test(test_split_cuts_a_stream_in_the_middle),
        cmocka_unit_test(test_split_at_a_stream_boundary),
        cmocka_unit_test(test_split_down_to_single_entries_keeps_order),
        cmocka_unit_test(test_split_large_batch),
        cmocka_unit_test(test_split_refuses_what_it_cannot_cut),
        cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(test_backoff_retry_after),
        cmocka_unit_test(test_client_headers_bearer_and_body),
        cmocka_unit_test(test_client_basic_auth),
        cmocka_unit_test(test_client_classifies_answers),
        cmocka_unit_test(test_client_long_body_and_http_date),
        cmocka_unit_test(test_client_redirect_is_misconfigured),
        cmocka_unit_test(test_client_classifies_every_status),
        cmocka_unit_test(test_client_token_rotation),
        cmocka_unit_test(test_client_rereads_after_401_whatever_stat_says),
        cmocka_unit_test(test_client_password_rotation),
        cmocka_unit_test(test_client_connection_refused),
        cmocka_unit_test(test_client_timeout),
        cmocka_unit_test(test_client_create_errors),
        cmocka_unit_test(test_url_redacted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
