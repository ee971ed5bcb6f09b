/*
 * test_pipeline — the pipeline stages (internal/pipeline) through their
 * public face: a configuration as a user writes it (loaded by config_load
 * from a real file), records in, entries out through an emit callback.
 *
 * The multiline modes are checked against the real traces in
 * tests/fixtures/multiline/ (see its README): every expected entry, byte
 * for byte. The delivery rules are checked where they live: what a held
 * join reports as its acknowledgement limit, and that a refused emit leaves
 * the state as it was, so reading the line again gives the same entries.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "loki/loki.h"
#include "metrics/metrics.h"
#include "pipeline/pipeline.h"
#include "source/source.h"

#ifndef FIXTURES
#define FIXTURES "tests/fixtures/multiline"
#endif

/* ------------------------------------------------------------------------ */

struct out {
    char *lines[256];
    char *labels[256];
    char *meta[256];
    int64_t ts[256];
    uint8_t stream[256];
    void *origin[256];
    uint64_t origin_end[256];
    size_t n;
    int refuse; /* refuse this many emits, then accept */
};

static void out_clear(struct out *o)
{
    for (size_t i = 0; i < o->n; i++) {
        free(o->lines[i]);
        free(o->labels[i]);
        free(o->meta[i]);
    }
    memset(o, 0, sizeof *o);
}

static bool collect(void *ctx, const struct pipeline_entry *e)
{
    struct out *o = ctx;
    if (o->refuse > 0) {
        o->refuse--;
        return false;
    }
    assert_true(o->n < 256);
    /* Not strndup: the entry's line need not end in a NUL (strict_string_checks). */
    char *line = malloc(e->len + 1);
    assert_non_null(line);
    memcpy(line, e->line, e->len);
    line[e->len] = '\0';
    o->lines[o->n] = line;
    o->ts[o->n] = e->ts_ns;
    o->stream[o->n] = e->stream;
    o->origin[o->n] = e->origin;
    o->origin_end[o->n] = e->origin_end;
    char labels[9000] = "", meta[9000] = "";
    if (e->extras_len) {
        /* Read the extras as the aggregator does: through a record. */
        char rec_buf[sizeof(struct source_record) + 9000];
        struct source_record rec = {.len = 0, .extra_len = (uint16_t)e->extras_len};
        memcpy(rec_buf, &rec, sizeof rec);
        memcpy(rec_buf + sizeof rec, e->extras, e->extras_len);
        const char *l, *m;
        size_t ll, ml;
        source_record_extras((const struct source_record *)rec_buf, &l, &ll, &m, &ml);
        if (ll) snprintf(labels, sizeof labels, "%.*s", (int)ll, l ? l : "");
        size_t o2 = 0;
        for (const char *p = m; p < m + ml;) {
            const char *v = p + strlen(p) + 1;
            o2 += (size_t)snprintf(meta + o2, sizeof meta - o2, "%s%s=%s", o2 ? " " : "", p, v);
            p = v + strlen(v) + 1;
        }
    }
    o->labels[o->n] = strdup(labels);
    o->meta[o->n] = strdup(meta);
    o->n++;
    return true;
}

static char cfg_path[] = "/tmp/test_pipeline_XXXXXX";

/* Loads `yaml` as a configuration file; returns 0 or -1 with err. */
static int load(struct config *cfg, const char *yaml, char *err, size_t errlen)
{
    config_defaults(cfg);
    int fd = mkstemp(cfg_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);
    int rc = config_load(cfg, cfg_path, err, errlen);
    unlink(cfg_path);
    strcpy(cfg_path + strlen(cfg_path) - 6, "XXXXXX");
    return rc;
}

struct fx {
    struct config cfg;
    struct pipeline *p;
    struct pipeline_file *pf;
    struct out out;
    uint64_t offset;
};

static void fx_setup(struct fx *fx, const char *yaml)
{
    char err[1024];
    memset(fx, 0, sizeof *fx);
    if (load(&fx->cfg, yaml, err, sizeof err) != 0) fail_msg("config: %s", err);
    fx->p = pipeline_create(&fx->cfg, err, sizeof err);
    if (!fx->p) fail_msg("pipeline: %s", err);
    bool oom;
    struct pipeline_meta m = {.namespace_ = "shop", .pod = "api-0", .container = "api"};
    fx->pf = pipeline_file_new(fx->p, &m, &oom);
    assert_false(oom);
    assert_non_null(fx->pf);
}

static void fx_teardown(struct fx *fx)
{
    pipeline_file_free(fx->pf);
    pipeline_destroy(fx->p);
    config_free(&fx->cfg);
    out_clear(&fx->out);
}

static bool feed_ts(struct fx *fx, const char *line, uint8_t stream, int64_t ts)
{
    bool dropped;
    uint64_t start = fx->offset;
    bool ok = pipeline_process(fx->pf, line, strlen(line), ts, stream, 0, start, collect, &fx->out, &dropped);
    if (ok) fx->offset += strlen(line) + 1;
    return ok;
}

static bool feed(struct fx *fx, const char *line) { return feed_ts(fx, line, PARSER_STREAM_STDOUT, 1000); }

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* multiline on real traces                                                 */

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

static void check_fixture(const char *mode)
{
    char path[512], yaml[256];
    snprintf(yaml, sizeof yaml, "pipeline:\n  - stages:\n      - multiline: {mode: %s}\n", mode);
    struct fx fx;
    fx_setup(&fx, yaml);
    snprintf(path, sizeof path, "%s/%s.log", FIXTURES, mode);
    char *text = read_file(path);
    snprintf(path, sizeof path, "%s/%s.groups", FIXTURES, mode);
    char *groups = read_file(path);

    /* Split by hand (blank lines matter); each line gets its own timestamp,
     * so an entry shows it kept its first line's. */
    char *lines[512];
    size_t n = 0;
    for (char *p = text; *p && n < 512;) {
        char *nl = strchr(p, '\n');
        if (!nl) break;
        *nl = '\0';
        lines[n++] = p;
        p = nl + 1;
    }
    for (size_t i = 0; i < n; i++) assert_true(feed_ts(&fx, lines[i], PARSER_STREAM_STDOUT, 1000 + (int64_t)i));
    assert_true(pipeline_file_flush(fx.pf, collect, &fx.out));

    size_t at = 0, entry = 0;
    for (char *save, *g = strtok_r(groups, "\n", &save); g; g = strtok_r(NULL, "\n", &save), entry++) {
        size_t count = (size_t)atoi(g);
        char want[65536] = "";
        for (size_t k = 0; k < count; k++) {
            if (k) strcat(want, "\n");
            strcat(want, lines[at + k]);
        }
        if (entry >= fx.out.n) fail_msg("%s: entry %zu missing (only %zu)", mode, entry, fx.out.n);
        if (strcmp(fx.out.lines[entry], want) != 0)
            fail_msg("%s: entry %zu is\n[%s]\nwant\n[%s]", mode, entry, fx.out.lines[entry], want);
        assert_int_equal(fx.out.ts[entry], 1000 + (int64_t)at); /* the first line's time */
        at += count;
    }
    assert_int_equal(at, n);
    assert_int_equal(fx.out.n, entry);
    free(text);
    free(groups);
    fx_teardown(&fx);
}

static void test_multiline_java(void **state) { (void)state; check_fixture("java"); }
static void test_multiline_python(void **state) { (void)state; check_fixture("python"); }
static void test_multiline_go(void **state) { (void)state; check_fixture("go"); }
static void test_multiline_ruby(void **state) { (void)state; check_fixture("ruby"); }

static void test_multiline_start_and_continue(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - stages:\n      - multiline: {start: '^\\d{4}-'}\n");
    feed(&fx, "2024-01-01 a");
    feed(&fx, "  more a");
    feed(&fx, "x");
    feed(&fx, "2024-01-02 b");
    assert_int_equal(fx.out.n, 1);
    assert_string_equal(fx.out.lines[0], "2024-01-01 a\n  more a\nx");
    fx_teardown(&fx);

    fx_setup(&fx, "pipeline:\n  - stages:\n      - multiline: {continue: '^\\s'}\n");
    feed(&fx, "a");
    feed(&fx, " a2");
    feed(&fx, "b");
    feed(&fx, "c");
    assert_int_equal(fx.out.n, 2);
    assert_string_equal(fx.out.lines[0], "a\n a2");
    assert_string_equal(fx.out.lines[1], "b");
    fx_teardown(&fx);
}

static void test_multiline_limits_and_streams(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - stages:\n      - multiline: {continue: '^\\s', max_lines: 3, max_bytes: 20}\n");
    feed(&fx, "a");
    feed(&fx, " 1");
    feed(&fx, " 2");
    feed(&fx, " 3"); /* max_lines: 3 reached: a new entry */
    assert_int_equal(fx.out.n, 1);
    assert_string_equal(fx.out.lines[0], "a\n 1\n 2");
    feed(&fx, " 0123456789012345678"); /* would pass max_bytes */
    assert_int_equal(fx.out.n, 2);
    assert_string_equal(fx.out.lines[1], " 3");
    feed(&fx, " 012345678901234567890123"); /* longer than max_bytes alone: out at once, alone */
    assert_int_equal(fx.out.n, 4);
    assert_string_equal(fx.out.lines[2], " 0123456789012345678");
    assert_string_equal(fx.out.lines[3], " 012345678901234567890123");
    /* A line of the other stream ends the entry: stdout and stderr never mix. */
    feed(&fx, "b");
    feed_ts(&fx, " err", PARSER_STREAM_STDERR, 5);
    assert_int_equal(fx.out.n, 5);
    assert_string_equal(fx.out.lines[4], "b");
    assert_true(pipeline_file_flush(fx.pf, collect, &fx.out));
    assert_string_equal(fx.out.lines[5], " err");
    assert_int_equal(fx.out.stream[5], PARSER_STREAM_STDERR);
    fx_teardown(&fx);
}

static void test_multiline_hold_bounds_ack_and_timeout(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - stages:\n      - multiline: {continue: '^\\s', timeout: 50ms}\n");
    assert_int_equal(pipeline_file_ack_limit(fx.pf), UINT64_MAX);
    feed(&fx, "first");  /* offset 0..6 */
    feed(&fx, " cont");  /* 6..12 */
    assert_int_equal(pipeline_file_ack_limit(fx.pf), 0);
    assert_int_equal(pipeline_file_held_bytes(fx.pf), strlen("first\n cont"));
    feed(&fx, "second"); /* first goes out; second held from offset 12 */
    assert_int_equal(pipeline_file_ack_limit(fx.pf), 12);
    assert_false(pipeline_file_due(fx.pf, metrics_now_ms()));
    assert_true(pipeline_file_due(fx.pf, metrics_now_ms() + 60));
    assert_true(pipeline_file_flush(fx.pf, collect, &fx.out));
    assert_int_equal(pipeline_file_ack_limit(fx.pf), UINT64_MAX);
    assert_int_equal(fx.out.n, 2);
    fx_teardown(&fx);
}

/* The ring full at the moment a join would go out: nothing changes, and
 * the same line read again gives exactly the entries it would have. */
static void test_multiline_refused_emit_changes_nothing(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - stages:\n      - multiline: {mode: java}\n      - json: {fields: [x]}\n");
    feed(&fx, "boom");
    feed(&fx, "\tat a.b(C.java:1)");
    uint64_t limit = pipeline_file_ack_limit(fx.pf);
    fx.out.refuse = 1;
    assert_false(feed(&fx, "next"));
    assert_int_equal(fx.out.n, 0);
    assert_int_equal(pipeline_file_ack_limit(fx.pf), limit);
    assert_true(feed(&fx, "next"));
    assert_int_equal(fx.out.n, 1);
    assert_string_equal(fx.out.lines[0], "boom\n\tat a.b(C.java:1)");
    fx.out.refuse = 1;
    assert_false(pipeline_file_flush(fx.pf, collect, &fx.out));
    assert_true(pipeline_file_flush(fx.pf, collect, &fx.out));
    assert_int_equal(fx.out.n, 2);
    assert_string_equal(fx.out.lines[1], "next");
    fx_teardown(&fx);
}

static void test_multiline_handoff(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - stages:\n      - multiline: {mode: java}\n");
    bool oom;
    struct pipeline_meta m = {.namespace_ = "shop", .pod = "api-0", .container = "api"};
    struct pipeline_file *next = pipeline_file_new(fx.p, &m, &oom);
    feed(&fx, "java.lang.Exception: x");
    feed(&fx, "\tat a.b(C.java:1)");
    static int origin;
    assert_true(pipeline_file_handoff(fx.pf, next, &origin, 777, 0));
    /* Moved once, not twice: from the next file it goes out instead. */
    struct pipeline_file *third = pipeline_file_new(fx.p, &m, &oom);
    static int origin2;
    assert_false(pipeline_file_handoff(next, third, &origin2, 5, 0));
    pipeline_file_free(third);
    assert_int_equal(pipeline_file_ack_limit(fx.pf), UINT64_MAX);
    assert_int_equal(pipeline_file_ack_limit(next), 0);
    bool dropped;
    const char *l = "\t... 3 more";
    assert_true(pipeline_process(next, l, strlen(l), 5, 0, 0, 0, collect, &fx.out, &dropped));
    l = "after";
    assert_true(pipeline_process(next, l, strlen(l), 6, 0, 0, 12, collect, &fx.out, &dropped));
    assert_int_equal(fx.out.n, 1);
    assert_string_equal(fx.out.lines[0], "java.lang.Exception: x\n\tat a.b(C.java:1)\n\t... 3 more");
    assert_ptr_equal(fx.out.origin[0], &origin); /* acknowledges the first file when delivered */
    assert_int_equal(fx.out.origin_end[0], 777);
    pipeline_file_free(next);
    fx_teardown(&fx);
}

/* ------------------------------------------------------------------------ */
/* json, logfmt, regex                                                      */

static const char *json_cfg =
    "pipeline:\n  - stages:\n"
    "      - json: {fields: {level: level, msg: message, user: req.user.id, n: count, obj: o, missing: nope}}\n"
    "      - structured_metadata: [user, n, obj]\n"
    "      - labels: {level: {values: [info, error], other: unknown}}\n"
    "      - output: {source: msg}\n";

static void test_json(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, json_cfg);
    feed(&fx, "{\"level\":\"error\",\"message\":\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\"\\n\",\"req\":{\"user\":{\"id\":42},\"x\":[1,{\"a\":2}]},"
              "\"count\":-1.5e3,\"o\":{\"k\":[true,null]}}");
    assert_int_equal(fx.out.n, 1);
    assert_string_equal(fx.out.lines[0], "caf\xc3\xa9 \xf0\x9f\x98\x80 \"q\"\n");
    assert_string_equal(fx.out.labels[0], "level=\"error\"");
    assert_string_equal(fx.out.meta[0], "user=42 n=-1.5e3 obj={\"k\":[true,null]}");
    /* Not in the allow-list: other. Whitespace everywhere is fine. */
    feed(&fx, " { \"level\" : \"debug\" , \"message\" : \"m\" } ");
    assert_string_equal(fx.out.labels[1], "level=\"unknown\"");
    assert_string_equal(fx.out.lines[1], "m");
    /* Malformed or not JSON: unchanged, no field, no label. */
    const char *bad[] = {"plain text", "{\"level\":\"error\",\"message\":\"x\"", "{\"level\":\"error\"} trailing",
                         "{\"level\":\"\\ud800\"}", "{\"message\":\"a\tb\"}", "[1,2]", "{\"a\":tru}", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        feed(&fx, bad[i]);
        assert_string_equal(fx.out.lines[2 + i], bad[i]);
        assert_string_equal(fx.out.labels[2 + i], "");
        assert_string_equal(fx.out.meta[2 + i], "");
    }
    /* Deep nesting is refused, not recursed into without end. */
    char deep[700] = "";
    for (int i = 0; i < 100; i++) strcat(deep, "{\"a\":");
    feed(&fx, deep);
    assert_string_equal(fx.out.lines[fx.out.n - 1], deep);
    /* null is absent; the first of a duplicated key wins. */
    feed(&fx, "{\"message\":null,\"level\":\"info\",\"level\":\"error\"}");
    assert_string_equal(fx.out.labels[fx.out.n - 1], "level=\"info\"");
    assert_string_equal(fx.out.lines[fx.out.n - 1], "{\"message\":null,\"level\":\"info\",\"level\":\"error\"}");
    char metrics_text[65536];
    pipeline_publish_metrics(fx.p);
    pipeline_render_metrics(metrics_text, sizeof metrics_text);
    assert_non_null(strstr(metrics_text, "loglet_pipeline_errors_total{block=\"0\",stage=\"0\",type=\"json\"} 9\n"));
    assert_non_null(strstr(metrics_text, "loglet_pipeline_in_total{block=\"0\",stage=\"3\",type=\"output\"} 12\n"));
    fx_teardown(&fx);
}

static void test_logfmt(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - stages:\n      - logfmt: {fields: {level: level, msg: msg, flag: debug}}\n"
                  "      - structured_metadata: [level, msg, flag]\n");
    feed(&fx, "ts=2024-01-01 level=warn msg=\"disk \\\"sda\\\" at 91%\\n\" debug");
    assert_string_equal(fx.out.meta[0], "level=warn msg=disk \"sda\" at 91%\n flag=");
    feed(&fx, "level=info level=error msg=");
    assert_string_equal(fx.out.meta[1], "level=info msg=");
    const char *bad[] = {"msg=\"unterminated", "=x level=info", "msg=\"a\\qb\"", "msg=\"a\"b"};
    for (size_t i = 0; i < 4; i++) {
        feed(&fx, bad[i]);
        assert_string_equal(fx.out.lines[2 + i], bad[i]);
        assert_string_equal(fx.out.meta[2 + i], "");
    }
    fx_teardown(&fx);
}

static void test_regex(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - stages:\n      - regex: {expression: '^(?P<level>[A-Z]+) (?:(?P<code>\\d+) )?(?P<msg>.*)$'}\n"
                  "      - structured_metadata: [level, code]\n      - output: {source: msg}\n");
    feed(&fx, "WARN 503 upstream gone");
    assert_string_equal(fx.out.lines[0], "upstream gone");
    assert_string_equal(fx.out.meta[0], "level=WARN code=503");
    feed(&fx, "INFO fine");
    assert_string_equal(fx.out.meta[1], "level=INFO");
    feed(&fx, "no match here");
    assert_string_equal(fx.out.lines[2], "no match here");
    fx_teardown(&fx);

    /* Catastrophic backtracking: the match limit stops it; the line passes. */
    fx_setup(&fx, "pipeline:\n  - stages:\n      - regex: {expression: '^(?P<a>(x+x+)+)$'}\n"
                  "      - drop: {line: '^(x+x+)+$'}\n");
    char line[200];
    memset(line, 'x', 60);
    line[60] = '!';
    line[61] = '\0';
    feed(&fx, line);
    assert_int_equal(fx.out.n, 1);
    assert_string_equal(fx.out.lines[0], line);
    char m[65536];
    pipeline_publish_metrics(fx.p);
    pipeline_render_metrics(m, sizeof m);
    assert_non_null(strstr(m, "loglet_pipeline_errors_total{block=\"0\",stage=\"0\",type=\"regex\"} 1\n"));
    assert_non_null(strstr(m, "loglet_pipeline_errors_total{block=\"0\",stage=\"1\",type=\"drop\"} 1\n"));
    fx_teardown(&fx);
}

/* ------------------------------------------------------------------------ */
/* labels, drop, limit, timestamp, match                                    */

static void test_labels_max_values(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - stages:\n      - regex: {expression: '^(?P<app>\\S+) (?P<v>\\S+)'}\n"
                  "      - labels: {app: {max_values: 2}, version: {source: v, values: ['1', '2'], other: 'x\"y'}}\n");
    feed(&fx, "a 1");
    feed(&fx, "b 2");
    feed(&fx, "c 3");
    feed(&fx, "a 9");
    feed(&fx, "nothing");
    assert_string_equal(fx.out.labels[0], "app=\"a\", version=\"1\"");
    assert_string_equal(fx.out.labels[1], "app=\"b\", version=\"2\"");
    assert_string_equal(fx.out.labels[2], "app=\"other\", version=\"x\\\"y\"");
    assert_string_equal(fx.out.labels[3], "app=\"a\", version=\"x\\\"y\"");
    assert_string_equal(fx.out.labels[4], "");
    fx_teardown(&fx);
}

static void test_drop_and_reasons(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - stages:\n      - regex: {expression: '(?P<lvl>debug|info)'}\n"
                  "      - drop: {line: 'healthz|readyz', older_than: 1h, longer_than: 20B}\n"
                  "      - drop: {source: lvl, value: debug}\n");
    int64_t now = now_ns();
    const char *lines[] = {"GET /healthz", "012345678901234567890", "fresh info", "old", "debug x", "kept"};
    int64_t ts[] = {now, now, now, now - 7200LL * 1000000000, now, now};
    bool dropped_want[] = {true, true, false, true, true, false};
    for (int i = 0; i < 6; i++) {
        bool dropped;
        assert_true(pipeline_process(fx.pf, lines[i], strlen(lines[i]), ts[i], 0, 0, 0, collect, &fx.out, &dropped));
        assert_int_equal(dropped, dropped_want[i]);
    }
    assert_int_equal(fx.out.n, 2);
    assert_string_equal(fx.out.lines[0], "fresh info");
    assert_string_equal(fx.out.lines[1], "kept");
    char m[65536];
    pipeline_publish_metrics(fx.p);
    pipeline_render_metrics(m, sizeof m);
    assert_non_null(strstr(m, "{block=\"0\",stage=\"1\",type=\"drop\",reason=\"line\"} 1\n"));
    assert_non_null(strstr(m, "{block=\"0\",stage=\"1\",type=\"drop\",reason=\"older_than\"} 1\n"));
    assert_non_null(strstr(m, "{block=\"0\",stage=\"1\",type=\"drop\",reason=\"longer_than\"} 1\n"));
    assert_non_null(strstr(m, "{block=\"0\",stage=\"2\",type=\"drop\",reason=\"value\"} 1\n"));
    fx_teardown(&fx);
}

/* One record as the collector gives it: `flags` say whether it is a piece. */
static bool feed_piece(struct fx *fx, const char *line, uint8_t flags, bool *dropped)
{
    return pipeline_process(fx->pf, line, strlen(line), 1000, PARSER_STREAM_STDOUT, flags, fx->offset, collect,
                            &fx->out, dropped);
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static uint64_t metric_value(const char *series)
{
    char m[65536];
    pipeline_render_metrics(m, sizeof m);
    const char *at = strstr(m, series);
    if (!at) fail_msg("no %s in:\n%s", series, m);
    return strtoull(at + strlen(series), NULL, 10);
}

/* longer_than judges the whole line however it comes (pieces cut at
 * max_line_bytes with MORE, pieces ended otherwise), drops every piece of
 * it and counts it once; a refused emit leaves the line's state as it was. */
static void test_drop_longer_than_takes_the_whole_line(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "collection:\n  max_line_bytes: 100\n"
                  "pipeline:\n  - stages:\n      - drop: {longer_than: 50B}\n      - drop: {line: '^never$'}\n");
    pipeline_publish_metrics(fx.p);
    const uint8_t split = SOURCE_RECORD_SPLIT, more = SOURCE_RECORD_MORE, cont = SOURCE_RECORD_CONTINUED;
    char *x50 = repeat('x', 50), *x51 = repeat('y', 51), *p100 = repeat('p', 100), *p30 = repeat('q', 30),
         *p15 = repeat('r', 15), *p10 = repeat('s', 10);
    struct {
        const char *line;
        uint8_t flags;
        bool dropped;
    } steps[] = {
        {"short", 0, false},
        {x50, 0, false}, /* exactly longer_than */
        {x51, 0, true},
        /* 230 bytes: cut at max_line_bytes, so the first piece already says it is too long. */
        {p100, split | more, true},
        {p100, split | cont | more, true},
        {p30, split | cont, true},
        {"after", 0, false},
        /* A line whose end never came (a stream change): the next line is judged afresh. */
        {p100, split | more, true},
        {"interrupted", 0, false},
        /* Pieces ended otherwise (a flush): judged by the line so far. */
        {p30, split, false},
        {p10, split | cont, false},
        {p15, split | cont, true}, /* 55 bytes so far */
        {p10, split | cont, true},
        {"end", 0, false},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        bool dropped;
        assert_true(feed_piece(&fx, steps[i].line, steps[i].flags, &dropped));
        if (dropped != steps[i].dropped) fail_msg("step %zu: dropped %d", i, dropped);
    }
    const char *want[] = {"short", x50, "after", "interrupted", p30, p10, "end"};
    assert_int_equal(fx.out.n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < fx.out.n; i++) assert_string_equal(fx.out.lines[i], want[i]);
    /* Lines, not pieces: the 51-byte line, the 230-byte one, the interrupted one, the flushed one. */
    assert_int_equal(metric_value("loglet_pipeline_dropped_total{block=\"0\",stage=\"0\",type=\"drop\",reason=\"longer_than\"} "), 4);
    assert_int_equal(metric_value("loglet_pipeline_in_total{block=\"0\",stage=\"1\",type=\"drop\"} "), fx.out.n);

    /* A piece refused by emit is judged again from the same state: read
     * twice, 30 + 15 bytes are 45, not 60. */
    out_clear(&fx.out);
    bool dropped;
    assert_true(feed_piece(&fx, p30, split, &dropped));
    fx.out.refuse = 1;
    assert_false(feed_piece(&fx, p15, split | cont, &dropped));
    assert_true(feed_piece(&fx, p15, split | cont, &dropped));
    assert_false(dropped);
    assert_true(feed_piece(&fx, p10, split | cont, &dropped)); /* 55 */
    assert_true(dropped);
    assert_int_equal(fx.out.n, 2);
    fx_teardown(&fx);
    free(x50);
    free(x51);
    free(p100);
    free(p30);
    free(p15);
    free(p10);
}

/* longer_than equal to max_line_bytes: a line of exactly that passes whole,
 * one byte more is cut, and its first piece (MORE) is dropped with the rest. */
static void test_drop_longer_than_max_line_bytes(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "collection:\n  max_line_bytes: 100\npipeline:\n  - stages:\n      - drop: {longer_than: 100B}\n");
    char *p100 = repeat('p', 100);
    bool dropped;
    assert_true(feed_piece(&fx, p100, 0, &dropped));
    assert_false(dropped);
    assert_true(feed_piece(&fx, p100, SOURCE_RECORD_SPLIT | SOURCE_RECORD_MORE, &dropped));
    assert_true(dropped);
    assert_true(feed_piece(&fx, "p", SOURCE_RECORD_SPLIT | SOURCE_RECORD_CONTINUED, &dropped));
    assert_true(dropped);
    assert_int_equal(fx.out.n, 1);
    fx_teardown(&fx);
    free(p100);
}

static void test_limit(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - stages:\n      - limit: {rate: 10, burst: 3}\n");
    for (int i = 0; i < 10; i++) feed(&fx, "x");
    assert_int_equal(fx.out.n, 3); /* the burst, then drops (action: drop) */
    int64_t until;
    assert_false(pipeline_file_paused(fx.pf, metrics_now_ms(), &until)); /* drop never pauses */
    fx_teardown(&fx);

    fx_setup(&fx, "pipeline:\n  - stages:\n      - limit: {rate: 10, burst: 3, action: wait}\n");
    for (int i = 0; i < 3; i++) {
        assert_false(pipeline_file_paused(fx.pf, metrics_now_ms(), &until));
        feed(&fx, "x");
    }
    assert_int_equal(fx.out.n, 3);
    assert_true(pipeline_file_paused(fx.pf, metrics_now_ms(), &until));
    int64_t wait = until - metrics_now_ms();
    assert_true(wait > 0 && wait <= 100); /* one token at 10/s */
    assert_false(pipeline_file_paused(fx.pf, metrics_now_ms() + 101, &until));
    fx_teardown(&fx);
}

static void test_timestamp(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - stages:\n      - logfmt: {fields: [t, u, ms]}\n"
                  "      - timestamp: {source: t}\n      - timestamp: {source: u, format: unix}\n"
                  "      - timestamp: {source: ms, format: unix_ms}\n");
    feed(&fx, "t=2024-05-02T10:15:30.5Z");
    assert_int_equal(fx.out.ts[0], 1714644930500000000LL);
    feed(&fx, "u=1714644930.25");
    assert_int_equal(fx.out.ts[1], 1714644930250000000LL);
    feed(&fx, "ms=1714644930123");
    assert_int_equal(fx.out.ts[2], 1714644930123000000LL);
    feed(&fx, "t=yesterday");
    assert_int_equal(fx.out.ts[3], 1000); /* kept */
    fx_teardown(&fx);
}

static void test_match_first_block_wins(void **state)
{
    (void)state;
    char err[1024];
    struct config cfg;
    assert_int_equal(load(&cfg, "pipeline:\n  - match: {namespaces: ['shop-*'], containers: [api, web]}\n"
                                "    stages: [{drop: {line: a}}]\n"
                                "  - match: {pods: ['batch-*']}\n    stages: [{drop: {line: b}}]\n"
                                "  - match: {namespaces: [quiet]}\n    stages: []\n",
                          err, sizeof err),
                     0);
    struct pipeline *p = pipeline_create(&cfg, err, sizeof err);
    assert_non_null(p);
    bool oom;
    struct pipeline_meta m1 = {.namespace_ = "shop-eu", .pod = "batch-1", .container = "api"}, m2 = {.namespace_ = "shop-eu", .pod = "batch-1", .container = "db"},
                         m3 = {.namespace_ = "other", .pod = "x", .container = "api"}, m4 = {.namespace_ = "quiet", .pod = "batch-2", .container = "c"};
    struct pipeline_file *f1 = pipeline_file_new(p, &m1, &oom), *f2 = pipeline_file_new(p, &m2, &oom),
                         *f3 = pipeline_file_new(p, &m3, &oom), *f4 = pipeline_file_new(p, &m4, &oom);
    assert_int_equal(pipeline_file_block(f1), 0);
    assert_int_equal(pipeline_file_block(f2), 1);
    assert_null(f3);
    assert_non_null(f4); /* batch-2 matches block 1 first */
    pipeline_file_free(f1);
    pipeline_file_free(f2);
    pipeline_file_free(f4);
    pipeline_destroy(p);
    config_free(&cfg);
}

static void expect_error(const char *yaml, const char *want);

static void test_match_pod_labels(void **state)
{
    (void)state;
    struct config cfg;
    char err[1024];
    assert_int_equal(load(&cfg,
                          "pipeline:\n"
                          "  - match: {namespaces: [shop], pod_labels: {app.kubernetes.io/name: [web, 'api-*'], tier: front}}\n"
                          "    stages: [{drop: {line: a}}]\n"
                          "  - match: {pod_labels: {tier: '*'}}\n    stages: [{drop: {line: b}}]\n",
                          err, sizeof err),
                     0);
    struct pipeline *p = pipeline_create(&cfg, err, sizeof err);
    assert_non_null(p);
    struct loki_label web[] = {{"app.kubernetes.io/name", "api-v2"}, {"tier", "front"}},
                      back[] = {{"app.kubernetes.io/name", "api-v2"}, {"tier", "back"}},
                      none[] = {{"app", "api"}};
    struct pipeline_meta m1 = {.namespace_ = "shop", .pod = "p", .container = "c", .pod_labels = web, .npod_labels = 2},
                         m2 = {.namespace_ = "shop", .pod = "p", .container = "c", .pod_labels = back, .npod_labels = 2},
                         m3 = {.namespace_ = "shop", .pod = "p", .container = "c", .pod_labels = none, .npod_labels = 1},
                         m4 = {.namespace_ = "shop", .pod = "p", .container = "c"};
    size_t block = 99;
    assert_true(pipeline_choose(p, &m1, &block));
    assert_int_equal(block, 0);
    assert_true(pipeline_choose(p, &m2, &block)); /* tier: back is not front, but has a tier */
    assert_int_equal(block, 1);
    assert_false(pipeline_choose(p, &m3, &block)); /* no tier label: '*' does not stand for a missing label */
    assert_false(pipeline_choose(p, &m4, &block)); /* labels not known */
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    pipeline_print(p, out, "");
    fclose(out);
    assert_non_null(strstr(text, "match: {namespaces: [\"shop\"], pod_labels: {\"app.kubernetes.io/name\": [\"web\", \"api-*\"], \"tier\": [\"front\"]}}"));
    free(text);
    pipeline_destroy(p);
    config_free(&cfg);
    expect_error("pipeline:\n  - match: {pod_labels: [app]}\n    stages: [{drop: {line: a}}]\n",
                 ":2: key pipeline[0].match.pod_labels: expected a mapping of label key to glob(s)");
}

static void test_stream_bound_falls_back_to_file_labels(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "labels:\n  max_pipeline_streams: 3\npipeline:\n  - stages:\n"
                  "      - logfmt: {fields: [level, trace]}\n"
                  "      - labels: {level: {max_values: 10}}\n      - structured_metadata: [trace]\n");
    pipeline_file_set_identity(fx.pf, 42);
    pipeline_set_clock(fx.p, 1000, 1);
    const char *levels[] = {"a", "b", "c", "d", "a", "e", "c"};
    for (size_t i = 0; i < 7; i++) {
        char line[64];
        snprintf(line, sizeof line, "level=%s trace=t%zu", levels[i], i);
        feed(&fx, line);
    }
    assert_int_equal(fx.out.n, 7);
    const char *want[] = {"level=\"a\"", "level=\"b\"", "level=\"c\"", "", "level=\"a\"", "", "level=\"c\""};
    for (size_t i = 0; i < 7; i++) {
        assert_string_equal(fx.out.labels[i] ? fx.out.labels[i] : "", want[i]);
        char meta[32];
        snprintf(meta, sizeof meta, "trace=t%zu", i);
        assert_string_equal(fx.out.meta[i], meta); /* metadata stays */
    }
    /* 30 minutes without "b": its place goes to the next new set. */
    pipeline_set_clock(fx.p, 1000 + 30 * 60 * 1000 + 1, 1);
    feed(&fx, "level=a trace=x"); /* a, c used again */
    feed(&fx, "level=c trace=x");
    pipeline_set_clock(fx.p, 1000 + 31 * 60 * 1000, 1);
    feed(&fx, "level=d trace=x");
    assert_string_equal(fx.out.labels[9], "level=\"d\"");
    fx_teardown(&fx);
}

/* ------------------------------------------------------------------------ */
/* configuration errors                                                     */

static void expect_error(const char *yaml, const char *want)
{
    char err[1024] = "";
    struct config cfg;
    struct pipeline *p = NULL;
    if (load(&cfg, yaml, err, sizeof err) == 0) p = pipeline_create(&cfg, err, sizeof err);
    config_free(&cfg);
    if (p) {
        pipeline_destroy(p);
        fail_msg("accepted:\n%s", yaml);
    }
    if (!strstr(err, want)) fail_msg("error\n  %s\nlacks\n  %s", err, want);
    if (!strstr(err, "/tmp/test_pipeline_")) fail_msg("error names no file: %s", err);
}

static void test_config_errors(void **state)
{
    (void)state;
    const char *head = "pipeline:\n  - stages:\n";
    char y[1024];
#define E(STAGES, WANT)                                 \
    do {                                                \
        snprintf(y, sizeof y, "%s%s", head, STAGES);    \
        expect_error(y, WANT);                          \
    } while (0)
    E("      - jsn: {fields: [a]}\n", ":3: key pipeline[0].stages[0]: unknown stage 'jsn'");
    E("      - json: {fields: [a]}\n      - json: {feilds: [a]}\n",
      ":4: key pipeline[0].stages[1].json.feilds: unknown key");
    E("      - drop: {line: '(unclosed'}\n", ":3: key pipeline[0].stages[0].drop.line: invalid regular expression");
    E("      - multiline: {mode: cobol}\n", "multiline.mode: 'cobol' is not one of java, python, go, ruby");
    E("      - multiline: {mode: java, start: x}\n", "set exactly one of mode");
    E("      - multiline: {mode: java}\n      - multiline: {mode: go}\n", "only one multiline stage");
    E("      - multiline: {mode: java, max_bytes: 10MiB}\n", "max_bytes: must be between 1 and collection.max_line_bytes");
    E("      - multiline:\n          mode: java\n          timeout: soon\n", ":5: key pipeline[0].stages[0].multiline.timeout: 'soon' is not a duration");
    E("      - labels: {level: {}}\n", "set exactly one of values (an allow-list) or max_values");
    E("      - labels: {pod: {values: [a]}}\n", "labels.pod: the agent sets this label itself");
    E("      - labels: {'bad-name': {values: [a]}}\n", "not a label name");
    E("      - limit: {rate: 0}\n", "limit.rate: missing or invalid");
    E("      - limit: {rate: 5, action: block}\n", "limit.action: 'block' is not one of drop, wait");
    E("      - regex: {expression: 'no groups'}\n", "has no named group");
    E("      - timestamp: {source: t, format: iso}\n", "'iso' is not one of rfc3339");
    E("      - output: {}\n", "output.source: missing");
    E("      - json: {fields: {a: 'x..y'}}\n", "is not a path");
    E("      - drop: {value: x}\n", "drop.value: needs source");
    /* The first piece of a longer line would be out before its length is known. */
    E("      - drop: {line: x}\n      - drop:\n          longer_than: 300KiB\n",
      ":5: key pipeline[0].stages[1].drop.longer_than: 300KiB is more than collection.max_line_bytes (256KiB)");
    E("      - drop: {longer_than: 1MiB}\n", "set collection.max_line_bytes to at least 1MiB");
    expect_error("pipeline:\n  - match: {labels: [x]}\n    stages: []\n", "pipeline[0].match.labels: unknown key");
    expect_error("pipeline:\n  - match: {namespaces: [a]}\n", "pipeline[0].stages: missing");
    expect_error("pipeline: {a: b}\n", "key pipeline: expected a list");
    /* Written out, 0 would silently turn the condition off. */
    E("      - drop: {longer_than: 0}\n", ":3: key pipeline[0].stages[0].drop.longer_than: must be more than 0");
    E("      - drop: {older_than: 0s}\n", ":3: key pipeline[0].stages[0].drop.older_than: must be more than 0");
    /* fnmatch would take these literally (or match nothing). */
    expect_error("pipeline:\n  - match: {namespaces: [shop, \"[a\"]}\n    stages: []\n",
                 ":2: key pipeline[0].match.namespaces: glob '[a' has a [ with no closing ]");
    expect_error("pipeline:\n  - match: {pod_labels: {app: 'x\\'}}\n    stages: []\n",
                 ":2: key pipeline[0].match.pod_labels.app: glob 'x\\' ends with a lone \\");
    /* What stages before a multiline stage set would not reach the joined entry. */
    E("      - json: {fields: [level]}\n      - labels: {level: {values: [info]}}\n"
      "      - multiline: {start: '^[{]'}\n",
      ":5: key pipeline[0].stages[2].multiline: multiline must come before stages that set labels or structured "
      "metadata (stages[1] is labels)");
    E("      - json: {fields: [msg]}\n      - structured_metadata: [msg]\n      - multiline: {mode: java}\n",
      ":5: key pipeline[0].stages[2].multiline: multiline must come before stages that set labels or structured "
      "metadata (stages[1] is structured_metadata)");
    E("      - drop: {line: x}\n      - json: {fields: [level, msg]}\n      - multiline: {mode: java}\n"
      "      - labels: {level: {values: [info]}}\n",
      ":6: key pipeline[0].stages[3].labels: reads field 'level', which only stages[1] (json) extracts, before the "
      "multiline stage (stages[2])");
    {
        /* The agent's own structured metadata cannot be claimed by a line
         * (pod.uid is pod_uid as Loki sees it); without it, the names are free. */
        const char *claims = "pipeline:\n  - stages:\n      - json: {fields: [trace_id, uid]}\n"
                             "      - structured_metadata: {trace_id: trace_id, pod_uid: uid}\n";
        snprintf(y, sizeof y, "output:\n  loki:\n    structured_metadata: true\n%s", claims);
        expect_error(y, "structured_metadata.pod_uid: the agent sends this structured metadata itself");
        struct fx fx;
        fx_setup(&fx, claims);
        fx_teardown(&fx);
    }
#undef E
}

/* Orders that lose nothing load: extraction before multiline for stages
 * before it, a field extracted again after it, a field nothing sets (a
 * warning). */
static void test_stage_order_accepted(void **state)
{
    (void)state;
    const char *ok[] = {
        "pipeline:\n  - stages:\n      - json: {fields: [msg, level]}\n      - drop: {source: level, value: debug}\n"
        "      - output: {source: msg}\n      - multiline: {mode: java}\n",
        "pipeline:\n  - stages:\n      - json: {fields: [level]}\n      - multiline: {mode: java}\n"
        "      - regex: {expression: '^(?P<level>[A-Z]+) '}\n      - labels: {level: {values: [INFO]}}\n",
        "pipeline:\n  - stages:\n      - structured_metadata: [trace_id]\n",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        struct fx fx;
        fx_setup(&fx, ok[i]);
        fx_teardown(&fx);
    }
}

/* An empty label value is no label in Loki: it is left out, the other labels stay. */
static void test_labels_empty_value_left_out(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "labels:\n  max_pipeline_streams: 2\npipeline:\n  - stages:\n"
                  "      - logfmt: {fields: [a, b, t]}\n"
                  "      - labels: {a: {max_values: 10}, b: {values: [x, y], other: ''}}\n"
                  "      - structured_metadata: [t]\n");
    pipeline_file_set_identity(fx.pf, 7);
    feed(&fx, "a=\"\" b=x t=1");  /* a empty: only b */
    feed(&fx, "a=\"\" b=\"\" t=2"); /* both empty: no label at all */
    feed(&fx, "a=1 b=zzz t=3");    /* b out of the list, other '': no b */
    feed(&fx, "a=\"\" b=x t=4");  /* the set of the first line again */
    feed(&fx, "a=2 b=y t=5");      /* the bound (2 sets: b=x, a=1) is reached */
    assert_int_equal(fx.out.n, 5);
    const char *want[] = {"b=\"x\"", "", "a=\"1\"", "b=\"x\"", ""};
    for (size_t i = 0; i < 5; i++) {
        char meta[16];
        snprintf(meta, sizeof meta, "t=%zu", i + 1);
        assert_string_equal(fx.out.labels[i], want[i]);
        assert_string_equal(fx.out.meta[i], meta);
        assert_non_null(strstr(fx.out.lines[i], meta));
    }
    /* Only two label sets were counted: the empty ones made none. */
    pipeline_publish_metrics(fx.p);
    assert_int_equal(metric_value("\nloglet_pipeline_streams "), 2);
    assert_int_equal(metric_value("\nloglet_pipeline_streams_limited_total "), 1);
    fx_teardown(&fx);
}

static void test_effective_print(void **state)
{
    (void)state;
    struct fx fx;
    fx_setup(&fx, "pipeline:\n  - match: {namespaces: [shop]}\n    stages:\n      - multiline: {mode: java}\n"
                  "      - limit: {rate: 5}\n");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    pipeline_print(fx.p, f, "");
    fclose(f);
    assert_non_null(strstr(buf, "- multiline: {mode: java, max_lines: 500, max_bytes: 262144, timeout: 3000ms}"));
    assert_non_null(strstr(buf, "- limit: {rate: 5, burst: 5, by: stream, action: drop}"));
    free(buf);
    fx_teardown(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multiline_java),
        cmocka_unit_test(test_multiline_python),
        cmocka_unit_test(test_multiline_go),
        cmocka_unit_test(test_multiline_ruby),
        cmocka_unit_test(test_multiline_start_and_continue),
        cmocka_unit_test(test_multiline_limits_and_streams),
        cmocka_unit_test(test_multiline_hold_bounds_ack_and_timeout),
        cmocka_unit_test(test_multiline_refused_emit_changes_nothing),
        cmocka_unit_test(test_multiline_handoff),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_logfmt),
        cmocka_unit_test(test_regex),
        cmocka_unit_test(test_labels_max_values),
        cmocka_unit_test(test_drop_and_reasons),
        cmocka_unit_test(test_drop_longer_than_takes_the_whole_line),
        cmocka_unit_test(test_drop_longer_than_max_line_bytes),
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_timestamp),
        cmocka_unit_test(test_match_first_block_wins),
        cmocka_unit_test(test_match_pod_labels),
        cmocka_unit_test(test_stream_bound_falls_back_to_file_labels),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_stage_order_accepted),
        cmocka_unit_test(test_labels_empty_value_left_out),
        cmocka_unit_test(test_effective_print),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
