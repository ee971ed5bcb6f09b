/*
 * Unit tests for internal/parser: CRI lines, docker json-file lines,
 * RFC 3339 in and out, UTF-8 validation/repair, and kubelet path metadata.
 * Every expectation is an exact value, so a wrong parser fails loudly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "parser/parser.h"

#define S(lit) (lit), (sizeof(lit) - 1)

#define TS_BASE 1795341600000000000LL /* 2026-11-22T10:00:00Z */
#define HEX64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* ---- CRI ---------------------------------------------------------------- */

static void test_cri_valid_full(void **state)
{
    (void)state;
    static const char line[] = "2026-11-22T10:00:00.000000001Z stdout F hello world";
    struct parser_line out;
    assert_int_equal(parser_cri_line(S(line), &out), 0);
    assert_int_equal(out.ts_ns, 1795341600000000001LL);
    assert_int_equal(out.stream, PARSER_STREAM_STDOUT);
    assert_false(out.partial);
    assert_ptr_equal(out.content, line + 40);
    assert_int_equal(out.content_len, 11);
    assert_memory_equal(out.content, "hello world", 11);
}

static void test_cri_stderr_partial(void **state)
{
    (void)state;
    static const char line[] = "2026-11-22T10:00:02.123456789Z stderr P first half";
    struct parser_line out;
    assert_int_equal(parser_cri_line(S(line), &out), 0);
    assert_int_equal(out.ts_ns, 1795341602123456789LL);
    assert_int_equal(out.stream, PARSER_STREAM_STDERR);
    assert_true(out.partial);
    assert_int_equal(out.content_len, 10);
    assert_memory_equal(out.content, "first half", 10);
}

static void test_cri_extra_tags(void **state)
{
    (void)state;
    struct parser_line out;
    assert_int_equal(parser_cri_line(S("2026-11-22T10:00:00Z stdout F:x content"), &out), 0);
    assert_false(out.partial);
    assert_int_equal(out.content_len, 7);
    assert_memory_equal(out.content, "content", 7);

    assert_int_equal(parser_cri_line(S("2026-11-22T10:00:00Z stdout P:a:b x"), &out), 0);
    assert_true(out.partial);
    assert_int_equal(out.content_len, 1);
    assert_memory_equal(out.content, "x", 1);

    /* Tags and nothing else. */
    assert_int_equal(parser_cri_line(S("2026-11-22T10:00:00Z stdout F:x"), &out), 0);
    assert_int_equal(out.content_len, 0);
}

static void test_cri_empty_content(void **state)
{
    (void)state;
    static const char a[] = "2026-11-22T10:00:00Z stdout F";
    static const char b[] = "2026-11-22T10:00:00Z stderr P ";
    struct parser_line out;
    assert_int_equal(parser_cri_line(S(a), &out), 0);
    assert_int_equal(out.content_len, 0);
    assert_ptr_equal(out.content, a + sizeof(a) - 1);
    assert_int_equal(out.ts_ns, TS_BASE);
    assert_int_equal(parser_cri_line(S(b), &out), 0);
    assert_int_equal(out.content_len, 0);
    assert_true(out.partial);
    assert_int_equal(out.stream, PARSER_STREAM_STDERR);
}

static void test_cri_content_kept_verbatim(void **state)
{
    (void)state;
    struct parser_line out;
    /* Tabs, a second leading space and a trailing CR are all content. */
    assert_int_equal(parser_cri_line(S("2026-11-22T10:00:00Z stdout F  \ta\tb \r"), &out), 0);
    assert_int_equal(out.content_len, 7);
    assert_memory_equal(out.content, " \ta\tb \r", 7);
    /* A NUL inside the content does not stop the parse. */
    assert_int_equal(parser_cri_line(S("2026-11-22T10:00:00Z stdout F a\0b"), &out), 0);
    assert_int_equal(out.content_len, 3);
    assert_memory_equal(out.content, "a\0b", 3);
}

static void test_cri_offsets(void **state)
{
    (void)state;
    struct parser_line out;
    assert_int_equal(parser_cri_line(S("2026-11-22T12:00:00+02:00 stdout F x"), &out), 0);
    assert_int_equal(out.ts_ns, TS_BASE);
    assert_int_equal(parser_cri_line(S("2026-11-22T04:30:00.5-05:30 stdout F x"), &out), 0);
    assert_int_equal(out.ts_ns, TS_BASE + 500000000LL);
}

static void test_cri_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "2026-11-22T10:00:00Z",
        "2026-11-22T10:00:00Z ",
        "2026-11-22T10:00:00Z stdout",
        "2026-11-22T10:00:00Z stdout ",
        "2026-11-22T10:00:00Z stdin F x",
        "2026-11-22T10:00:00Z stdouT F x",
        "2026-11-22T10:00:00Z stdoutF x",
        "2026-11-22T10:00:00Z stdout X x",
        "2026-11-22T10:00:00Z stdout f x",
        "2026-11-22T10:00:00Z stdout FF x",
        "2026-11-22T10:00:00Z stdout Fx",
        "2026-11-22T10:00:00Z stdout F\tx",
        "2026-11-22T10:00:00Z stdout\tF x",
        "2026-11-22T10:00:00Z\tstdout F x",
        "2026-11-22T10:00:00Z  stdout F x",
        "2026-11-22T10:00:00Z stdout  F x",
        "2026-13-22T10:00:00Z stdout F x",
        "2026-11-22 10:00:00Z stdout F x",
        "2026-11-22T10:00:00 stdout F x",
        "2026-11-22T10:00:00.0000000001Z stdout F x",
        "hello world",
        " 2026-11-22T10:00:00Z stdout F x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct parser_line out;
        if (parser_cri_line(bad[i], strlen(bad[i]), &out) != -1)
            fail_msg("accepted invalid CRI line #%zu: \"%s\"", i, bad[i]);
    }
}

static void test_cri_len_respected(void **state)
{
    (void)state;
    /* A valid line followed by bytes outside len: those are not looked at. */
    static const char buf[] = "2026-11-22T10:00:00Z stdout F abc|garbage";
    struct parser_line out;
    assert_int_equal(parser_cri_line(buf, 33, &out), 0);
    assert_int_equal(out.content_len, 3);
    assert_memory_equal(out.content, "abc", 3);
    /* Cut inside the stream field. */
    assert_int_equal(parser_cri_line(buf, 25, &out), -1);
}

/* ---- docker json-file ------------------------------------------------- */

static int docker(const char *line, char *dst, size_t cap, struct parser_line *out, bool *trunc)
{
    return parser_docker_line(line, strlen(line), dst, cap, out, trunc);
}

static void test_docker_basic(void **state)
{
    (void)state;
    char dst[256];
    struct parser_line out;
    bool trunc = true;
    assert_int_equal(docker("{\"log\":\"hello\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:02.123456789Z\"}",
                            dst, sizeof dst, &out, &trunc),
                     0);
    assert_false(trunc);
    assert_false(out.partial);
    assert_int_equal(out.stream, PARSER_STREAM_STDOUT);
    assert_int_equal(out.ts_ns, 1795341602123456789LL);
    assert_ptr_equal(out.content, dst);
    assert_int_equal(out.content_len, 5);
    assert_memory_equal(out.content, "hello", 5);
}

static void test_docker_order_and_partial(void **state)
{
    (void)state;
    char dst[256];
    struct parser_line out;
    bool trunc;
    assert_int_equal(docker("{\"time\":\"2026-11-22T10:00:00.000000001Z\",\"stream\":\"stderr\",\"log\":\"piece\"}",
                            dst, sizeof dst, &out, &trunc),
                     0);
    assert_true(out.partial);
    assert_int_equal(out.stream, PARSER_STREAM_STDERR);
    assert_int_equal(out.ts_ns, 1795341600000000001LL);
    assert_int_equal(out.content_len, 5);
    assert_memory_equal(out.content, "piece", 5);

    /* Empty log: nothing, and no newline → partial. */
    assert_int_equal(docker("{\"log\":\"\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}", dst, sizeof dst,
                            &out, &trunc),
                     0);
    assert_int_equal(out.content_len, 0);
    assert_true(out.partial);
    /* Only a newline: an empty complete line. */
    assert_int_equal(docker("{\"log\":\"\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}", dst,
                            sizeof dst, &out, &trunc),
                     0);
    assert_int_equal(out.content_len, 0);
    assert_false(out.partial);
    /* Only the last newline goes. */
    assert_int_equal(docker("{\"log\":\"a\\n\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}", dst,
                            sizeof dst, &out, &trunc),
                     0);
    assert_int_equal(out.content_len, 2);
    assert_memory_equal(out.content, "a\n", 2);
}

static void test_docker_whitespace(void **state)
{
    (void)state;
    char dst[64];
    struct parser_line out;
    bool trunc;
    assert_int_equal(docker(" \t{ \"log\" :\t\"x\\n\" ,\r\n \"stream\" : \"stdout\" , \"time\" : "
                            "\"2026-11-22T10:00:00Z\" }  ",
                            dst, sizeof dst, &out, &trunc),
                     0);
    assert_int_equal(out.content_len, 1);
    assert_memory_equal(out.content, "x", 1);
    assert_int_equal(out.ts_ns, TS_BASE);
}

static void test_docker_escapes(void **state)
{
    (void)state;
    char dst[64];
    struct parser_line out;
    bool trunc;
    assert_int_equal(docker("{\"log\":\"q\\\"b\\\\s\\/B\\bF\\fN\\nR\\rT\\tZ\\n\",\"stream\":\"stdout\","
                            "\"time\":\"2026-11-22T10:00:00Z\"}",
                            dst, sizeof dst, &out, &trunc),
                     0);
    static const char want[] = "q\"b\\s/B\bF\fN\nR\rT\tZ";
    assert_int_equal(out.content_len, sizeof want - 1);
    assert_memory_equal(out.content, want, sizeof want - 1);
    assert_false(out.partial);

    /* An escaped backslash right before the closing quote. */
    assert_int_equal(docker("{\"log\":\"x\\\\\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}", dst,
                            sizeof dst, &out, &trunc),
                     0);
    assert_int_equal(out.content_len, 2);
    assert_memory_equal(out.content, "x\\", 2);
    assert_true(out.partial);
}

static void test_docker_unicode(void **state)
{
    (void)state;
    char dst[64];
    struct parser_line out;
    bool trunc;
    /* é, €, 😀 as a surrogate pair, and U+0000. */
    assert_int_equal(docker("{\"log\":\"\\u00e9\\u20AC\\ud83d\\ude00\\u0000!\",\"stream\":\"stdout\","
                            "\"time\":\"2026-11-22T10:00:00Z\"}",
                            dst, sizeof dst, &out, &trunc),
                     0);
    static const char want[] = "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\0!";
    assert_int_equal(out.content_len, sizeof want - 1);
    assert_memory_equal(out.content, want, sizeof want - 1);

    /* Lone surrogates become U+FFFD; what follows a lone high one is kept. */
    assert_int_equal(docker("{\"log\":\"\\ud83dx\\ude00\\ud83d\\u0041\\ud83d\",\"stream\":\"stdout\","
                            "\"time\":\"2026-11-22T10:00:00Z\"}",
                            dst, sizeof dst, &out, &trunc),
                     0);
    static const char want2[] = "\xEF\xBF\xBDx\xEF\xBF\xBD\xEF\xBF\xBD"
                                "A\xEF\xBF\xBD";
    assert_int_equal(out.content_len, sizeof want2 - 1);
    assert_memory_equal(out.content, want2, sizeof want2 - 1);

    /* Raw UTF-8 and raw control characters pass through. */
    assert_int_equal(docker("{\"log\":\"caf\xC3\xA9\t\x01\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",
                            dst, sizeof dst, &out, &trunc),
                     0);
    assert_int_equal(out.content_len, 7);
    assert_memory_equal(out.content, "caf\xC3\xA9\t\x01", 7);
}

static void test_docker_extra_keys(void **state)
{
    (void)state;
    char dst[64];
    struct parser_line out;
    bool trunc;
    assert_int_equal(docker("{\"attrs\":{\"a\":\"}\\\"]\",\"n\":[1,2,{\"x\":null}],\"e\":{}},\"log\":\"ok\\n\","
                            "\"num\":-1.5e+3,\"t\":true,\"f\":false,\"z\":null,\"arr\":[],\"s\":\"\\\"log\\\"\","
                            "\"stream\":\"stderr\",\"time\":\"2026-11-22T10:00:00Z\",\"last\":0}",
                            dst, sizeof dst, &out, &trunc),
                     0);
    assert_int_equal(out.content_len, 2);
    assert_memory_equal(out.content, "ok", 2);
    assert_int_equal(out.stream, PARSER_STREAM_STDERR);
    assert_int_equal(out.ts_ns, TS_BASE);
}

static void test_docker_truncation(void **state)
{
    (void)state;
    char dst[16];
    struct parser_line out;
    bool trunc;

    memset(dst, '#', sizeof dst);
    assert_int_equal(docker("{\"log\":\"abcdefghij\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}", dst,
                            4, &out, &trunc),
                     0);
    assert_true(trunc);
    assert_false(out.partial);
    assert_int_equal(out.content_len, 4);
    assert_memory_equal(out.content, "abcd", 4);
    assert_int_equal(dst[4], '#'); /* nothing written past dst_cap */

    /* Exactly fits once the newline is removed: not truncated. */
    assert_int_equal(docker("{\"log\":\"abcd\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}", dst, 4,
                            &out, &trunc),
                     0);
    assert_false(trunc);
    assert_int_equal(out.content_len, 4);

    /* Never ends inside a UTF-8 sequence: "ab€" with room for 4 → "ab". */
    memset(dst, '#', sizeof dst);
    assert_int_equal(docker("{\"log\":\"ab\\u20ac\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}", dst, 4,
                            &out, &trunc),
                     0);
    assert_true(trunc);
    assert_true(out.partial);
    assert_int_equal(out.content_len, 2);
    assert_memory_equal(out.content, "ab", 2);
    assert_int_equal(dst[4], '#');

    /* Raw 4-byte sequence cut after 3 of its bytes. */
    assert_int_equal(docker("{\"log\":\"a\xF0\x9F\x98\x80z\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",
                            dst, 4, &out, &trunc),
                     0);
    assert_true(trunc);
    assert_int_equal(out.content_len, 1);

    /* Room for 0 bytes, and no buffer at all. */
    assert_int_equal(docker("{\"log\":\"x\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}", NULL, 0, &out,
                            &trunc),
                     0);
    assert_true(trunc);
    assert_int_equal(out.content_len, 0);
}

static void test_docker_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "   ",
        "{}",
        "[]",
        "\"log\"",
        "{\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",                        /* no log */
        "{\"log\":\"x\",\"stream\":\"stdout\"}",                                            /* no time */
        "{\"log\":\"x\",\"time\":\"2026-11-22T10:00:00Z\"}",                                /* no stream */
        "{\"log\":\"x\",\"stream\":\"stdin\",\"time\":\"2026-11-22T10:00:00Z\"}",          /* bad stream */
        "{\"log\":\"x\",\"stream\":\"stdout\",\"time\":\"2026-11-22T25:00:00Z\"}",         /* bad time */
        "{\"log\":\"x\",\"stream\":\"stdout\",\"time\":1795341600}",                       /* time not a string */
        "{\"log\":1,\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",             /* log not a string */
        "{\"log\":\"x,\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",           /* quote missing */
        "{\"log\":\"x\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"",          /* no '}' */
        "{\"log\":\"x\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\",}",        /* trailing comma */
        "{\"log\":\"x\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"} x",       /* trailing garbage */
        "{\"log\":\"x\" \"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",         /* missing comma */
        "{\"log\" \"x\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",         /* missing colon */
        "{\"log\":\"\\x\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",       /* bad escape */
        "{\"log\":\"\\u12G4\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",   /* bad \u */
        "{\"log\":\"\\u12\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",     /* short \u */
        "{\"log\":\"\\",                                                                  /* cut escape */
        "{\"a\":[1,{\"b\":2},\"log\":\"x\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}", /* unclosed */
        "{\"a\":tru,\"log\":\"x\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",  /* bad literal */
        "{\"a\":,\"log\":\"x\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",     /* no value */
        "{log:\"x\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00Z\"}",                 /* bare key */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char dst[64];
        struct parser_line out;
        bool trunc;
        if (docker(bad[i], dst, sizeof dst, &out, &trunc) != -1)
            fail_msg("accepted invalid docker line #%zu: %s", i, bad[i]);
    }
}

/* ---- RFC 3339 ------------------------------------------------------------ */

static int64_t ts_of(const char *s)
{
    int64_t ts = 0x5a5a5a5a;
    if (parser_rfc3339(s, strlen(s), &ts) != 0)
        fail_msg("rejected valid timestamp \"%s\"", s);
    return ts;
}

static void test_rfc3339_valid(void **state)
{
    (void)state;
    assert_int_equal(ts_of("2026-11-22T10:00:00.000000001Z"), 1795341600000000001LL);
    assert_int_equal(ts_of("2026-11-22T10:00:02.123456789Z"), 1795341602123456789LL);
    assert_int_equal(ts_of("2026-11-22T10:00:00Z"), TS_BASE);
    assert_int_equal(ts_of("2026-11-22T10:00:00.5Z"), TS_BASE + 500000000LL);
    assert_int_equal(ts_of("2026-11-22T10:00:00.123Z"), TS_BASE + 123000000LL);
    assert_int_equal(ts_of("2026-11-22t10:00:00.000001z"), TS_BASE + 1000LL);
    assert_int_equal(ts_of("2026-11-22T12:00:00+02:00"), TS_BASE);
    assert_int_equal(ts_of("2026-11-22T04:30:00-05:30"), TS_BASE);
    assert_int_equal(ts_of("2026-11-22T10:00:00+00:00"), TS_BASE);
    assert_int_equal(ts_of("2026-11-22T10:00:00-00:00"), TS_BASE);
    assert_int_equal(ts_of("2026-11-23T09:59:00+23:59"), TS_BASE);
    assert_int_equal(ts_of("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(ts_of("1969-12-31T23:59:59.999999999Z"), -1);
    assert_int_equal(ts_of("2024-02-29T00:00:00Z"), 1709164800000000000LL);
    assert_int_equal(ts_of("2000-02-29T12:34:56Z"), 951827696000000000LL);
    assert_int_equal(ts_of("1900-03-01T00:00:00Z"), -2203891200000000000LL);
    assert_int_equal(ts_of("2026-12-31T23:59:59Z"), 1798761599000000000LL);
    /* A leap second counts as the next minute's :00. */
    assert_int_equal(ts_of("2026-12-31T23:59:60Z"), 1798761600000000000LL);
    /* The ends of int64 nanoseconds. */
    assert_int_equal(ts_of("2262-04-11T23:47:16.854775807Z"), INT64_MAX);
    assert_int_equal(ts_of("1677-09-21T00:12:43.145224192Z"), INT64_MIN);
}

static void test_rfc3339_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "2026-11-22",
        "2026-11-22T10:00:00",
        "2026-11-22T10:00:00.Z",
        "2026-11-22T10:00:00.0000000001Z", /* 10 digits */
        "2026-11-22T10:00:00.000000001",
        "2026-11-22T10:00:00ZZ",
        "2026-11-22T10:00:00Z ",
        "2026-11-22 10:00:00Z",
        "2026/11/22T10:00:00Z",
        "2026-1-22T10:00:00Z",
        "2026-00-22T10:00:00Z",
        "2026-13-22T10:00:00Z",
        "2026-11-00T10:00:00Z",
        "2026-11-31T10:00:00Z",
        "2026-04-31T10:00:00Z",
        "2023-02-29T10:00:00Z", /* not a leap year */
        "1900-02-29T10:00:00Z", /* century, not a leap year */
        "2026-11-22T24:00:00Z",
        "2026-11-22T10:60:00Z",
        "2026-11-22T10:00:61Z",
        "2026-11-22T10:00:00+0200",
        "2026-11-22T10:00:00+02",
        "2026-11-22T10:00:00+24:00",
        "2026-11-22T10:00:00+02:60",
        "2026-11-22T10:00:00 +02:00",
        "2026-11-22T10:00:00+02:00Z",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",            /* valid date, outside int64 ns */
        "9999-12-31T23:59:59Z",            /* valid date, outside int64 ns */
        "2262-04-11T23:47:16.854775808Z",  /* INT64_MAX + 1 */
        "1677-09-21T00:12:43.145224191Z",  /* INT64_MIN - 1 */
        "+026-11-22T10:00:00Z",
        "2026-11-22T1a:00:00Z",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t ts;
        if (parser_rfc3339(bad[i], strlen(bad[i]), &ts) != -1)
            fail_msg("accepted invalid timestamp #%zu: \"%s\"", i, bad[i]);
    }
}

static void test_rfc3339_format(void **state)
{
    (void)state;
    char buf[31];
    assert_int_equal(parser_format_rfc3339(1795341600000000001LL, buf), 30);
    assert_string_equal(buf, "2026-11-22T10:00:00.000000001Z");
    parser_format_rfc3339(1795341602123456789LL, buf);
    assert_string_equal(buf, "2026-11-22T10:00:02.123456789Z");
    parser_format_rfc3339(0, buf);
    assert_string_equal(buf, "1970-01-01T00:00:00.000000000Z");
    parser_format_rfc3339(-1, buf);
    assert_string_equal(buf, "1969-12-31T23:59:59.999999999Z");
    parser_format_rfc3339(-2203891200000000000LL, buf);
    assert_string_equal(buf, "1900-03-01T00:00:00.000000000Z");
    parser_format_rfc3339(1709164800000000000LL, buf);
    assert_string_equal(buf, "2024-02-29T00:00:00.000000000Z");
    parser_format_rfc3339(INT64_MAX, buf);
    assert_string_equal(buf, "2262-04-11T23:47:16.854775807Z");
    parser_format_rfc3339(INT64_MIN, buf);
    assert_string_equal(buf, "1677-09-21T00:12:43.145224192Z");
}

static void test_rfc3339_round_trip(void **state)
{
    (void)state;
    /* xorshift over the whole int64 range plus values near 1970. */
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int64_t ts = (int64_t)x;
        if (i % 2)
            ts %= 86400LL * 1000000000LL * 3;
        char buf[31];
        assert_int_equal(parser_format_rfc3339(ts, buf), 30);
        int64_t back;
        if (parser_rfc3339(buf, 30, &back) != 0 || back != ts)
            fail_msg("round trip of %lld failed: \"%s\"", (long long)ts, buf);
    }
}

/* ---- UTF-8 --------------------------------------------------------------- */

static void check_sanitize(const char *in, size_t n, const char *want, size_t want_n, size_t want_rep)
{
    char out[256];
    size_t rep = 7; /* added to, not overwritten */
    assert_true(n * 3 <= sizeof out);
    const size_t got = parser_utf8_sanitize(in, n, out, &rep);
    assert_int_equal(rep, 7 + want_rep);
    assert_int_equal(got, want_n);
    assert_memory_equal(out, want, want_n);
    assert_int_equal(parser_utf8_valid_prefix(out, got), got);
}

#define FFFD "\xEF\xBF\xBD"
#define SAN(in, want, rep) check_sanitize(S(in), S(want), (rep))

static void test_utf8_sanitize(void **state)
{
    (void)state;
    /* Valid input is unchanged. */
    SAN("", "", 0);
    SAN("plain ascii", "plain ascii", 0);
    SAN("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF \xEF\xBF\xBF",
        "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF \xEF\xBF\xBF", 0);
    SAN("a\0b", "a\0b", 0);
    /* Truncated 4-byte sequence at the end: one replacement. */
    SAN("\xF0\x9F\x98", FFFD, 1);
    SAN("x\xF0\x9F\x98y", "x" FFFD "y", 1);
    /* Overlong: C0 and C1 never start a sequence. */
    SAN("\xC0\xAF", FFFD FFFD, 2);
    SAN("\xE0\x80\xAF", FFFD FFFD FFFD, 3);
    SAN("\xF0\x80\x80\xAF", FFFD FFFD FFFD FFFD, 4);
    /* Surrogates. */
    SAN("\xED\xA0\x80", FFFD FFFD FFFD, 3);
    SAN("\xED\x9F\xBF", "\xED\x9F\xBF", 0); /* U+D7FF is fine */
    /* Beyond U+10FFFF, and bytes that never occur. */
    SAN("\xF4\x90\x80\x80", FFFD FFFD FFFD FFFD, 4);
    SAN("\xF5\x80", FFFD FFFD, 2);
    SAN("\xFF\xFE", FFFD FFFD, 2);
    /* Lone continuation bytes. */
    SAN("\x80\xBF", FFFD FFFD, 2);
    /* Truncated 3-byte then ASCII. */
    SAN("\xE2\x82" "A", FFFD "A", 1);
    /* Unicode 15 §3.9, Table 3-8. */
    SAN("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", "a" FFFD FFFD FFFD "b" FFFD "c" FFFD FFFD "d", 6);
    /* Invalid byte after a long ASCII run (exercises the word-at-a-time path). */
    SAN("0123456789abcdef0123456789abcdef\x80tail", "0123456789abcdef0123456789abcdef" FFFD "tail", 1);
}

static void test_utf8_valid_prefix(void **state)
{
    (void)state;
    char buf[200];
    memset(buf, 'a', sizeof buf);
    assert_int_equal(parser_utf8_valid_prefix(buf, sizeof buf), sizeof buf);
    assert_int_equal(parser_utf8_valid_prefix(buf, 0), 0);
    for (size_t pos = 0; pos < 40; pos++) {
        memset(buf, 'a', sizeof buf);
        buf[pos] = (char)0xC3; /* lead byte followed by 'a': invalid at pos */
        assert_int_equal(parser_utf8_valid_prefix(buf, sizeof buf), pos);
        buf[pos + 1] = (char)0xA9; /* now valid */
        assert_int_equal(parser_utf8_valid_prefix(buf, sizeof buf), sizeof buf);
        /* Cut in the middle of the sequence: the prefix stops before it. */
        assert_int_equal(parser_utf8_valid_prefix(buf, pos + 1), pos);
    }
    assert_int_equal(parser_utf8_valid_prefix(S("abc\xED\xA0\x80")), 3);
    assert_int_equal(parser_utf8_valid_prefix(S("\xF0\x9F\x98\x80\xF0\x9F\x98")), 4);
}

/* ---- paths --------------------------------------------------------------- */

static void test_path_link(void **state)
{
    (void)state;
    struct parser_path_meta m;
    assert_int_equal(
        parser_path_meta("/var/log/containers/nginx-7d9f8b6c5-x2x4z_default_nginx-" HEX64 ".log", NULL, &m), 0);
    assert_string_equal(m.pod, "nginx-7d9f8b6c5-x2x4z");
    assert_string_equal(m.namespace_, "default");
    assert_string_equal(m.container, "nginx");
    assert_string_equal(m.container_id, HEX64);
    assert_string_equal(m.pod_uid, "");

    /* Dashes in the container name: the id follows the last one. */
    assert_int_equal(parser_path_meta("/var/log/containers/web-0_shop_my-app-sidecar-" HEX64 ".log", NULL, &m), 0);
    assert_string_equal(m.container, "my-app-sidecar");
    assert_string_equal(m.container_id, HEX64);

    /* Not a 64-hex id: the whole rest is the container, no id. */
    assert_int_equal(parser_path_meta("/var/log/containers/web-0_shop_app-xyz.log", NULL, &m), 0);
    assert_string_equal(m.container, "app-xyz");
    assert_string_equal(m.container_id, "");
    assert_int_equal(parser_path_meta("/var/log/containers/web-0_shop_app-"
                                      "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef.log",
                                      NULL, &m),
                     -1); /* uppercase is not an id, and "app-<68 chars>" is too long for a container */
    assert_string_equal(m.container_id, "");
    assert_string_equal(m.container, "");
    assert_string_equal(m.pod, "web-0");
    assert_int_equal(parser_path_meta("web-0_shop_app.log", NULL, &m), 0);
    assert_string_equal(m.pod, "web-0");
    assert_string_equal(m.container, "app");
}

static void test_path_target(void **state)
{
    (void)state;
    struct parser_path_meta m;
    static const char *const targets[] = {
        "/var/log/pods/default_nginx-7d9f8b6c5-x2x4z_0b3a2c1d-1234-5678-9abc-def012345678/nginx/0.log",
        "/var/log/pods/default_nginx-7d9f8b6c5-x2x4z_0b3a2c1d-1234-5678-9abc-def012345678/nginx/12.log",
        "/var/log/pods/default_nginx-7d9f8b6c5-x2x4z_0b3a2c1d-1234-5678-9abc-def012345678/nginx/0.log.20261122-100000",
        ("/var/log/pods/default_nginx-7d9f8b6c5-x2x4z_0b3a2c1d-1234-5678-9abc-def012345678/nginx/"
         "0.log.20261122-100000.gz"),
    };
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        assert_int_equal(parser_path_meta(NULL, targets[i], &m), 0);
        assert_string_equal(m.namespace_, "default");
        assert_string_equal(m.pod, "nginx-7d9f8b6c5-x2x4z");
        assert_string_equal(m.pod_uid, "0b3a2c1d-1234-5678-9abc-def012345678");
        assert_string_equal(m.container, "nginx");
        assert_string_equal(m.container_id, "");
    }
}

static void test_path_both(void **state)
{
    (void)state;
    struct parser_path_meta m;
    /* The target wins for names and uid; the link gives the id. */
    assert_int_equal(parser_path_meta("/var/log/containers/oldpod_oldns_oldc-" HEX64 ".log",
                                      "/var/log/pods/kube-system_coredns-5d78c9869d-abcde_4f1c2b3a-0000-1111-2222-"
                                      "333344445555/coredns/3.log",
                                      &m),
                     0);
    assert_string_equal(m.namespace_, "kube-system");
    assert_string_equal(m.pod, "coredns-5d78c9869d-abcde");
    assert_string_equal(m.container, "coredns");
    assert_string_equal(m.pod_uid, "4f1c2b3a-0000-1111-2222-333344445555");
    assert_string_equal(m.container_id, HEX64);

    /* A garbage target leaves the link's values. */
    assert_int_equal(parser_path_meta("/var/log/containers/p_ns_c-" HEX64 ".log", "/tmp/whatever", &m), 0);
    assert_string_equal(m.pod, "p");
    assert_string_equal(m.namespace_, "ns");
    assert_string_equal(m.container, "c");
}

static void test_path_garbage(void **state)
{
    (void)state;
    struct parser_path_meta m;
    static const char *const bad[] = {
        "",
        "/",
        "//",
        "foo",
        "/var/log/containers/",
        "/var/log/containers/.log",
        "/var/log/containers/a_b.log",
        "/var/log/containers/a_b_c_d-" HEX64 ".log",
        "/var/log/containers/__c.log",
        "/var/log/containers/p_ns_c.txt",
        "/var/log/pods/ns_pod/c/0.log",
        "/var/log/pods/ns_pod_uid/c/x.log",
        "/var/log/pods/ns_pod_uid/c/.log",
        "/var/log/pods/ns_pod_uid/c/0.log.tmp",
        "/var/log/pods/ns_pod_uid/c/0.log.",
        "/var/log/pods/ns_pod_uid/c/0.log.20261122-100000.zip",
        "/var/log/pods/ns_pod_uid//0.log",
        "/var/log/pods/ns_pod_uid/c/",
        "/c/0.log",
        "0.log",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parser_path_meta(bad[i], bad[i], &m) != -1)
            fail_msg("accepted garbage path #%zu: \"%s\"", i, bad[i]);
    }
    assert_int_equal(parser_path_meta(NULL, NULL, &m), -1);
    assert_string_equal(m.namespace_, "");
    assert_string_equal(m.pod, "");
}

static void test_path_too_long(void **state)
{
    (void)state;
    struct parser_path_meta m;
    char path[1024];
    char pod[300];
    memset(pod, 'p', sizeof pod - 1);
    pod[sizeof pod - 1] = '\0';

    snprintf(path, sizeof path, "/var/log/containers/%s_ns_c-%s.log", pod, HEX64);
    assert_int_equal(parser_path_meta(path, NULL, &m), -1);
    assert_string_equal(m.pod, "");
    assert_string_equal(m.namespace_, "ns"); /* what could be read is filled */
    assert_string_equal(m.container, "c");
    assert_string_equal(m.container_id, HEX64);

    snprintf(path, sizeof path, "/var/log/pods/ns_%s_uid/c/0.log", pod);
    assert_int_equal(parser_path_meta(NULL, path, &m), -1);
    assert_string_equal(m.pod, "");
    assert_string_equal(m.pod_uid, "uid");

    /* 253 is the longest pod name Kubernetes allows: it fits. */
    pod[253] = '\0';
    snprintf(path, sizeof path, "/var/log/pods/ns_%s_uid/c/0.log", pod);
    assert_int_equal(parser_path_meta(NULL, path, &m), 0);
    assert_int_equal(strlen(m.pod), 253);

    /* Namespace of 64 does not fit 64 bytes with its NUL; 63 does. */
    char ns[65];
    memset(ns, 'n', 64);
    ns[64] = '\0';
    snprintf(path, sizeof path, "/var/log/pods/%s_pod_uid/c/0.log", ns);
    assert_int_equal(parser_path_meta(NULL, path, &m), -1);
    assert_string_equal(m.namespace_, "");
    ns[63] = '\0';
    snprintf(path, sizeof path, "/var/log/pods/%s_pod_uid/c/0.log", ns);
    assert_int_equal(parser_path_meta(NULL, path, &m), 0);
    assert_string_equal(m.namespace_, ns);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cri_valid_full),
        cmocka_unit_test(test_cri_stderr_partial),
        cmocka_unit_test(test_cri_extra_tags),
        cmocka_unit_test(test_cri_empty_content),
        cmocka_unit_test(test_cri_content_kept_verbatim),
        cmocka_unit_test(test_cri_offsets),
        cmocka_unit_test(test_cri_invalid),
        cmocka_unit_test(test_cri_len_respected),
        cmocka_unit_test(test_docker_basic),
        cmocka_unit_test(test_docker_order_and_partial),
        cmocka_unit_test(test_docker_whitespace),
        cmocka_unit_test(test_docker_escapes),
        cmocka_unit_test(test_docker_unicode),
        cmocka_unit_test(test_docker_extra_keys),
        cmocka_unit_test(test_docker_truncation),
        cmocka_unit_test(test_docker_invalid),
        cmocka_unit_test(test_rfc3339_valid),
        cmocka_unit_test(test_rfc3339_invalid),
        cmocka_unit_test(test_rfc3339_format),
        cmocka_unit_test(test_rfc3339_round_trip),
        cmocka_unit_test(test_utf8_sanitize),
        cmocka_unit_test(test_utf8_valid_prefix),
        cmocka_unit_test(test_path_link),
        cmocka_unit_test(test_path_target),
        cmocka_unit_test(test_path_both),
        cmocka_unit_test(test_path_garbage),
        cmocka_unit_test(test_path_too_long),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
