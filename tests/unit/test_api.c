/*
 * test_api — the logs API's query-string parser and selection, and the
 * live tail's queues (bounded, missed lines counted, never blocking).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "api/query.h"
#include "output/livetail.h"
#include "source/source.h"

#define NOW 1700000000000000000LL

static int parse(const char *qs, struct api_query *q, char *err)
{
    char *copy = malloc(strlen(qs) + 1); /* exact size: ASan sees a read past len */
    memcpy(copy, qs, strlen(qs));
    int rc = api_query_parse(copy, strlen(qs), NOW, q, err, 256);
    free(copy);
    return rc;
}

static void test_query_values(void **state)
{
    (void)state;
    struct api_query q;
    char err[256];
    assert_int_equal(parse("namespace=shop%2Cdev&pod=web-*&container=a+b&grep=%5Berror%5D&stream=stderr"
                           "&since=1h30m&until=2023-11-14T22:13:20Z&tail_lines=10&max_lines=5&follow=true",
                           &q, err), 0);
    assert_string_equal(q.namespace_, "shop,dev");
    assert_string_equal(q.pod, "web-*");
    assert_string_equal(q.container, "a b");
    assert_string_equal(q.grep, "[error]");
    assert_int_equal(q.stream, PARSER_STREAM_STDERR);
    assert_true(q.since_ns == NOW - 5400LL * 1000000000LL);
    assert_true(q.until_ns == NOW);
    assert_int_equal(q.tail_lines, 10);
    assert_int_equal(q.max_lines, 5);
    assert_true(q.follow);
    assert_null(q.exclude_pod);

    assert_int_equal(parse("", &q, err), 0);
    assert_int_equal(q.tail_lines, -1);
    assert_int_equal(q.stream, -1);
    assert_false(q.follow);
    assert_true(q.until_ns == INT64_MAX);
    assert_int_equal(parse("&&follow&", &q, err), 0); /* a bare flag means true, as in curl's habits */
    assert_true(q.follow);
}

static void test_query_errors(void **state)
{
    (void)state;
    static const struct {
        const char *qs, *msg;
    } cases[] = {
        {"pod=%4", "pod: bad percent-encoding"},
        {"pod=%", "pod: bad percent-encoding"},
        {"pod=%g0", "pod: bad percent-encoding"},
        {"pod=a%00b", "pod: NUL byte not allowed"},
        {"x%41y=1", "unknown parameter 'xAy'"},
        {"%0a=1", "unknown parameter '?'"},
        {"tail_lines=1&tail_lines=2", "tail_lines: given more than once"},
        {"tail_lines=1e3", "tail_lines: '1e3' is not a non-negative integer"},
        {"max_lines=100000001", "max_lines: 100000001 is over the limit of 100000000"},
        {"max_lines=0", "max_lines: 0 lines would send nothing; leave max_lines out for no limit"},
        {"since=5 minutes", "since: '5 minutes' is neither"},
        {"pod=[abc", "pod: unbalanced '['"},
        {"pod=", "pod: empty pattern"},
        {"grep=", "grep: empty pattern"},
        {"since=1m&until=1h", "since is after until"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct api_query q;
        char err[256] = "";
        assert_int_equal(parse(cases[i].qs, &q, err), -1);
        if (!strstr(err, cases[i].msg)) fail_msg("%s: got '%s', want '%s'", cases[i].qs, err, cases[i].msg);
    }
    char *big = malloc(API_QUERY_MAX + 2);
    memset(big, 'a', API_QUERY_MAX + 1);
    big[API_QUERY_MAX + 1] = '\0';
    struct api_query q;
    char err[256];
    assert_int_equal(parse(big, &q, err), -1);
    assert_non_null(strstr(err, "query string too long"));
    free(big);
}

static void test_selection(void **state)
{
    (void)state;
    struct api_query q;
    char err[256];
    struct parser_path_meta m = {0};
    strcpy(m.namespace_, "shop");
    strcpy(m.pod, "web-7f9c");
    strcpy(m.container, "app");
    assert_int_equal(parse("namespace=dev,sh*&pod=web-*", &q, err), 0);
    assert_true(api_query_selects(&q, &m));
    assert_int_equal(parse("namespace=dev", &q, err), 0);
    assert_false(api_query_selects(&q, &m));
    assert_int_equal(parse("exclude_container=side,ap?", &q, err), 0);
    assert_false(api_query_selects(&q, &m));
    assert_int_equal(parse("pod=web-[a-z]*", &q, err), 0);
    assert_false(api_query_selects(&q, &m));
    assert_int_equal(parse("stream=stdout&since=2023-11-14T22:13:19Z&until=2023-11-14T22:13:20Z", &q, err), 0);
    assert_true(api_query_in_range(&q, NOW, PARSER_STREAM_STDOUT));
    assert_false(api_query_in_range(&q, NOW, PARSER_STREAM_STDERR));
    assert_false(api_query_in_range(&q, NOW + 1, PARSER_STREAM_STDOUT));
    assert_false(api_query_in_range(&q, NOW - 1000000001LL, PARSER_STREAM_STDOUT));
}

/* A chunk of `n` one-byte records. */
/* `n` one-byte records as the collector publishes them: the body only. */
static size_t make_records(char *buf, uint32_t n)
{
    char *p = buf;
    for (uint32_t i = 0; i < n; i++) {
        struct source_record *r = (struct source_record *)p;
        *r = (struct source_record){(int64_t)i, 1, 0, 0, 0};
        p[sizeof *r] = (char)('a' + i % 26);
        p += SOURCE_RECORD_SIZE(1);
    }
    return (size_t)(p - buf);
}

static bool match_all(void *ctx, const struct source *src) { return ctx == NULL || src == ctx; }

static void count_visit(void *ctx, const struct source *src)
{
    (void)src;
    ++*(int *)ctx;
}

static void test_livetail_bounded_and_gaps(void **state)
{
    (void)state;
    struct parser_path_meta meta = {0};
    struct source *src = source_new("/l/a.log", "/p/0.log", &meta, 1, 2);
    struct source *other = source_new("/l/b.log", "/p/1.log", &meta, 1, 3);
    assert_non_null(src);
    struct livetail *hub = livetail_create(2, 128 * 1024);
    livetail_source_open(hub, src);
    livetail_source_open(hub, other);
    assert_true(src->livetail_open_gen < other->livetail_open_gen);
    char err[256];
    int seen = 0;
    assert_false(livetail_wanted(hub));
    struct livetail_sub *a = livetail_subscribe(hub, match_all, NULL, count_visit, &seen, err, sizeof err);
    assert_int_equal(seen, 2); /* told of every registered source */
    struct livetail_sub *b = livetail_subscribe(hub, match_all, src, NULL, NULL, err, sizeof err);
    assert_null(livetail_subscribe(hub, match_all, NULL, NULL, NULL, err, sizeof err));
    assert_non_null(strstr(err, "server.api.max_subscribers (2)"));
    assert_true(livetail_wanted(hub));
    static char buf[64 * 1024];
    uint64_t published = 0, off = 0;
    /* Far more than 128 KiB: publishing never waits; what does not fit is
     * one gap per source, extended while contiguous, up to the last end. */
    for (int i = 0; i < 200; i++) {
        size_t size = make_records(buf, 100);
        livetail_publish(hub, src, off, off + 100, buf, size, 100);
        off += 100;
        published += 100;
    }
    size_t size = make_records(buf, 7);
    livetail_publish(hub, other, 0, 7, buf, size, 7);
    uint64_t got = 0, next_seq = 0;
    const struct livetail_entry *e;
    while ((e = livetail_next(a, 0))) {
        if (e->source != src) continue;
        assert_int_equal(e->first_seq, next_seq); /* nothing queued behind a gap */
        next_seq = e->first_seq + e->records;
        got += e->records;
        assert_int_equal(source_record_content(livetail_entry_first(e))[0], 'a');
    }
    assert_true(got < published);
    struct livetail_gap g;
    uint64_t gap_src = 0;
    while (livetail_take_gap(hub, a, NULL, NULL, &g)) {
        if (g.source == src) {
            assert_int_equal(g.first_seq, next_seq);
            assert_int_equal(g.end_seq, published);
            assert_int_equal(g.start_offset, next_seq); /* offsets here are 1 per record */
            assert_int_equal(g.end_offset, off);
            gap_src += g.end_seq - g.first_seq;
        }
        source_unref(g.source);
    }
    assert_int_equal(got + gap_src, published);
    assert_int_equal(livetail_take_missed(a), 0);
    /* An entry over livetail_max_body() is never queued, even to an empty
     * queue: the collector splits below it, and a larger lone record is a
     * gap with its file offsets. */
    assert_true(livetail_max_body(hub) <= 32 * 1024);
    livetail_publish(hub, other, 7, 9, buf, livetail_max_body(hub) + 8, 1);
    while ((e = livetail_next(a, 0))) assert_ptr_not_equal(e->source, other);
    assert_true(livetail_take_gap(hub, a, NULL, NULL, &g));
    assert_ptr_equal(g.source, other);
    assert_int_equal(g.start_offset, 7);
    assert_int_equal(g.end_offset, 9);
    source_unref(g.source);
    /* b's filter takes only src: `other` is neither queued nor a gap. */
    uint64_t got_b = 0;
    while ((e = livetail_next(b, 0))) {
        assert_ptr_equal(e->source, src);
        got_b += e->records;
    }
    while (livetail_take_gap(hub, b, NULL, NULL, &g)) {
        assert_ptr_equal(g.source, src);
        got_b += g.end_seq - g.first_seq;
        source_unref(g.source);
    }
    assert_int_equal(got_b, published);
    livetail_unsubscribe(hub, a);
    livetail_unsubscribe(hub, b);
    assert_int_equal(livetail_subscribers(hub), 0);
    livetail_source_close(hub, src);
    assert_true(atomic_load(&src->livetail_close_gen) > other->livetail_open_gen);
    seen = 0;
    livetail_sources(hub, count_visit, &seen);
    assert_int_equal(seen, 1);
    livetail_destroy(hub);
    assert_int_equal(atomic_load(&src->refs), 1); /* every entry's and the registry's reference dropped */
    assert_int_equal(atomic_load(&other->refs), 1);
    source_unref(src);
    source_unref(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_values),
        cmocka_unit_test(test_query_errors),
        cmocka_unit_test(test_selection),
        cmocka_unit_test(test_livetail_bounded_and_gaps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
