/* Unit tests for internal/config: defaults, every type's parser, ${VAR}
 * expansion, error messages with line numbers, relations, print/load
 * round trip and the example file in deployments/. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */

/* Writes `text` to a new file under /tmp; path must hold 64 bytes. */
static void write_temp(const char *text, char *path)
{
    strcpy(path, "/tmp/loglet-test-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
}

/* Loads `yaml` over `cfg`; returns config_load's result. `path` (64 bytes)
 * receives the temporary file's name, already removed. */
static int load_yaml(struct config *cfg, const char *yaml, char *err, size_t errlen, char *path)
{
    write_temp(yaml, path);
    int rc = config_load(cfg, path, err, errlen);
    unlink(path);
    return rc;
}

static char *print_to_string(const struct config *cfg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    config_print(cfg, f);
    assert_int_equal(fclose(f), 0);
    return buf;
}

static char *defaults_text(void)
{
    struct config cfg;
    config_defaults(&cfg);
    char *text = print_to_string(&cfg);
    config_free(&cfg);
    return text;
}

/* Loads `yaml` over defaults and expects it to fail with `expected`, where a
 * leading "FILE" stands for the temporary file's name. Also checks that the
 * failed load left the configuration untouched. */
static void assert_load_error(const char *yaml, const char *expected)
{
    struct config cfg;
    config_defaults(&cfg);
    char err[1024] = "", path[64], want[1200];
    int rc = load_yaml(&cfg, yaml, err, sizeof err, path);
    if (strncmp(expected, "FILE", 4) == 0)
        snprintf(want, sizeof want, "%s%s", path, expected + 4);
    else
        snprintf(want, sizeof want, "%s", expected);
    if (rc != -1 || strcmp(err, want) != 0)
        print_error("yaml:\n%s\nwant rc=-1 err=%s\ngot  rc=%d err=%s\n", yaml, want, rc, err);
    assert_int_equal(rc, -1);
    assert_string_equal(err, want);

    char *after = print_to_string(&cfg), *before = defaults_text();
    assert_string_equal(after, before);
    assert_string_equal(cfg.source_path, "");
    free(after);
    free(before);
    config_free(&cfg);
}

/* Loads `yaml` over defaults, which must succeed. */
static void load_ok(struct config *cfg, const char *yaml)
{
    char err[1024] = "", path[64];
    config_defaults(cfg);
    int rc = load_yaml(cfg, yaml, err, sizeof err, path);
    if (rc != 0) print_error("yaml:\n%s\nunexpected error: %s\n", yaml, err);
    assert_int_equal(rc, 0);
    assert_string_equal(cfg->source_path, path);
}

/* ------------------------------------------------------------------------ */
/* Defaults                                                                 */

static void test_defaults(void **state)
{
    (void)state;
    struct config c;
    char err[128];
    assert_int_equal(config_init(&c, err, sizeof err), 0);

    assert_string_equal(c.source_path, "");
    assert_string_equal(c.server.http_listen_address, "0.0.0.0");
    assert_int_equal(c.server.http_listen_port, 3101);
    assert_int_equal(c.server.max_connections, 32);
    assert_int_equal(c.server.request_timeout_ms, 5000);

    assert_int_equal(c.collection.paths.count, 1);
    assert_string_equal(c.collection.paths.items[0], "/var/log/containers/*.log");
    assert_int_equal(c.collection.format, CONFIG_FORMAT_AUTO);
    assert_int_equal(c.collection.read_from, CONFIG_READ_FROM_END);
    assert_string_equal(c.collection.positions_file, "/var/lib/loglet/positions.yaml");
    assert_int_equal(c.collection.positions_sync_period_ms, 1000);
    assert_int_equal(c.collection.watcher, CONFIG_WATCHER_INOTIFY);
    assert_int_equal(c.collection.max_held_bytes, 1024LL * 1024 * 1024);
    assert_int_equal(c.collection.max_held_files, 1024);
    assert_int_equal(c.collection.max_line_bytes, 256 * 1024);
    assert_int_equal(c.collection.read_buffer_bytes, 256 * 1024);
    assert_int_equal(c.collection.partial_flush_timeout_ms, 5000);
    assert_int_equal(c.collection.partial_timestamp, CONFIG_PARTIAL_TS_FIRST);
    assert_int_equal(c.collection.poll_interval_ms, 1000);
    assert_int_equal(c.collection.exclude_namespaces.count, 0);
    assert_int_equal(c.collection.exclude_pods.count, 0);
    assert_int_equal(c.collection.exclude_containers.count, 0);
    assert_string_equal(c.collection.include_lines, "");
    assert_string_equal(c.collection.exclude_lines, "");

    assert_int_equal(c.buffer.max_bytes, 3 * 1024 * 1024);

    assert_string_equal(c.output.loki.url, "");
    assert_string_equal(c.output.loki.tenant_id, "");
    assert_int_equal(c.output.loki.batch_bytes, 1024 * 1024);
    assert_int_equal(c.output.loki.batch_wait_ms, 1000);
    assert_int_equal(c.output.loki.timeout_ms, 10000);
    assert_int_equal(c.output.loki.min_backoff_ms, 500);
    assert_int_equal(c.output.loki.max_backoff_ms, 5 * 60 * 1000);
    assert_int_equal(c.output.loki.max_retries, 0);
    assert_string_equal(c.output.loki.basic_auth_username, "");
    assert_string_equal(c.output.loki.basic_auth_password_file, "");
    assert_string_equal(c.output.loki.bearer_token_file, "");
    assert_string_equal(c.output.loki.tls_ca_file, "");
    assert_string_equal(c.output.loki.tls_cert_file, "");
    assert_string_equal(c.output.loki.tls_key_file, "");
    assert_false(c.output.loki.tls_insecure_skip_verify);
    assert_int_equal(c.output.loki.headers.count, 0);
    assert_false(c.output.loki.structured_metadata);
    assert_int_equal(c.output.stdout_.format, CONFIG_STDOUT_TEXT);
    assert_int_equal(c.output.shutdown_grace_ms, 10000);

    assert_int_equal(c.labels.static_labels.count, 0);
    assert_true(c.labels.stream);
    assert_string_equal(c.log.level, "info");
    assert_string_equal(c.log.format, "logfmt");
    config_free(&c);

    /* config_defaults alone, then free: nothing may leak (LeakSanitizer). */
    config_defaults(&c);
    config_free(&c);
}

static void test_empty_documents_give_defaults(void **state)
{
    (void)state;
    static const char *const docs[] = {"", "~\n", "# just a comment\n", "---\n", "---\n...\n", "null\n"};
    char *want = defaults_text();
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        struct config c;
        load_ok(&c, docs[i]);
        char *got = print_to_string(&c);
        assert_string_equal(got, want);
        free(got);
        config_free(&c);
    }
    free(want);
}

/* ------------------------------------------------------------------------ */
/* Parsers                                                                  */

static void test_parse_size(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int64_t want;
    } ok[] = {
        {"0", 0},
        {"1", 1},
        {"512B", 512},
        {"4KiB", 4096},
        {"4K", 4096},
        {"4Ki", 4096},
        {"4KB", 4000},
        {"4kb", 4000},
        {"1MiB", 1048576},
        {"1M", 1048576},
        {"1MB", 1000000},
        {"2GiB", 2147483648LL},
        {"1G", 1073741824LL},
        {"1GB", 1000000000LL},
        {"256 KiB", 262144},
        {"9223372036854775807", INT64_MAX},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int64_t v = -42;
        if (config_parse_size(ok[i].text, &v) != 0) print_error("size '%s' rejected\n", ok[i].text);
        assert_int_equal(config_parse_size(ok[i].text, &v), 0);
        assert_int_equal(v, ok[i].want);
    }
    static const char *const bad[] = {
        "", "-1", "-1KiB", "1.5MiB", "abc", "KiB", "1XB", "1 KiB x", "+1", " 1", "1KiBB", "9223372036854775808",
        "8589934592GiB", "0x10",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t v = -42;
        if (config_parse_size(bad[i], &v) == 0) print_error("size '%s' accepted\n", bad[i]);
        assert_int_equal(config_parse_size(bad[i], &v), -1);
        assert_int_equal(v, -42);
    }
}

static void test_parse_duration(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int64_t want;
    } ok[] = {
        {"0", 0},         {"0s", 0},          {"500ms", 500},      {"1s", 1000},      {"1.5s", 1500},
        {".5s", 500},     {"2m", 120000},     {"1h", 3600000},     {"1m30s", 90000},  {"1h0m1s", 3601000},
        {"0.25m", 15000}, {"10ms", 10},       {"1.001s", 1001},    {"90s", 90000},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int64_t v = -42;
        if (config_parse_duration_ms(ok[i].text, &v) != 0) print_error("duration '%s' rejected\n", ok[i].text);
        assert_int_equal(config_parse_duration_ms(ok[i].text, &v), 0);
        assert_int_equal(v, ok[i].want);
    }
    static const char *const bad[] = {
        "", "5", "1.0", "-1s", "-0", "1.5ms", "1d", "s", "1 s", "1s ", "1.s", "1m30", "ms", "1sm",
        "99999999999999999h", "9223372036854775807ms1ms",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t v = -42;
        if (config_parse_duration_ms(bad[i], &v) == 0) print_error("duration '%s' accepted\n", bad[i]);
        assert_int_equal(config_parse_duration_ms(bad[i], &v), -1);
        assert_int_equal(v, -42);
    }
}

static void expect_expand(const char *text, const char *want)
{
    char err[128] = "";
    char *got = config_expand_env(text, err, sizeof err);
    if (!got) print_error("expand '%s' failed: %s\n", text, err);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

static void expect_expand_error(const char *text, const char *want)
{
    char err[128] = "";
    char *got = config_expand_env(text, err, sizeof err);
    assert_null(got);
    assert_string_equal(err, want);
}

static void test_expand_env(void **state)
{
    (void)state;
    setenv("LOGLET_T_A", "alpha", 1);
    setenv("LOGLET_T_EMPTY", "", 1);
    setenv("LOGLET_T_REF", "${LOGLET_T_A}", 1);
    unsetenv("LOGLET_T_UNSET");

    expect_expand("", "");
    expect_expand("plain", "plain");
    expect_expand("${LOGLET_T_A}", "alpha");
    expect_expand("x${LOGLET_T_A}y${LOGLET_T_A}", "xalphayalpha");
    expect_expand("${LOGLET_T_UNSET}", "");
    expect_expand("[${LOGLET_T_EMPTY}]", "[]");
    expect_expand("${LOGLET_T_UNSET:-fallback}", "fallback");
    expect_expand("${LOGLET_T_EMPTY:-fallback}", "fallback");
    expect_expand("${LOGLET_T_A:-fallback}", "alpha");
    expect_expand("${LOGLET_T_UNSET:-}", "");
    expect_expand("${LOGLET_T_UNSET:-a:-b}", "a:-b");
    expect_expand("${LOGLET_T_UNSET:-http://x:1/}", "http://x:1/");
    expect_expand("$$", "$");
    expect_expand("$${LOGLET_T_A}", "${LOGLET_T_A}");
    expect_expand("a$$$$b", "a$$b");
    expect_expand("$", "$");
    expect_expand("cost: 5$", "cost: 5$");
    expect_expand("a$b", "a$b");
    expect_expand("$LOGLET_T_A", "$LOGLET_T_A");
    expect_expand("${LOGLET_T_REF}", "${LOGLET_T_A}"); /* values are not expanded again */

    expect_expand_error("${LOGLET_T_A", "unterminated ${ in value");
    expect_expand_error("abc${", "unterminated ${ in value");
    expect_expand_error("${LOGLET_T_UNSET:-x", "unterminated ${ in value");
    expect_expand_error("${}", "invalid variable name in '${}'");
    expect_expand_error("${A B}", "invalid variable name in '${A B}'");
    expect_expand_error("${A:b}", "invalid variable name in '${A:b}'");
}

/* ------------------------------------------------------------------------ */
/* Loading every type                                                       */

static void test_load_every_type(void **state)
{
    (void)state;
    struct config c;
    load_ok(&c,
            "server:\n"
            "  http_listen_address: 127.0.0.1\n"
            "  http_listen_port: 0\n"
            "  max_connections: 7\n"
            "  request_timeout: 1.5s\n"
            "collection:\n"
            "  paths:\n"
            "    - /a/*.log\n"
            "    - \"/b/*.log\"\n"
            "  format: CRI\n"
            "  read_from: beginning\n"
            "  positions_file: /tmp/pos.yaml\n"
            "  positions_sync_period: 1m30s\n"
            "  max_line_bytes: 1MB\n"
            "  read_buffer_bytes: 64KiB\n"
            "  partial_flush_timeout: 0\n"
            "  partial_timestamp: last\n"
            "  poll_interval: 250ms\n"
            "  exclude_namespaces: [kube-system, monitoring]\n"
            "  exclude_pods: only-one\n"
            "  exclude_containers: []\n"
            "  include_lines: '^(INFO|WARN)'\n"
            "  exclude_lines: healthz\n"
            "buffer:\n"
            "  max_bytes: 64MiB\n"
            "output:\n"
            "  loki:\n"
            "    url: https://loki:3100/loki/api/v1/push\n"
            "    tenant_id: team-a\n"
            "    batch_bytes: 512KiB\n"
            "    batch_wait: 2s\n"
            "    timeout: 30s\n"
            "    min_backoff: 100ms\n"
            "    max_backoff: 1h\n"
            "    max_retries: 10\n"
            "    basic_auth:\n"
            "      username: user\n"
            "      password_file: /secret/pw\n"
            "    tls:\n"
            "      ca_file: /ca.pem\n"
            "      cert_file: /c.pem\n"
            "      key_file: /k.pem\n"
            "      insecure_skip_verify: yes\n"
            "    headers:\n"
            "      X-One: '1'\n"
            "      X-Two: two\n"
            "    structured_metadata: On\n"
            "  stdout:\n"
            "    format: json\n"
            "  shutdown_grace: 0s\n"
            "labels:\n"
            "  static: {cluster: prod, node: n1}\n"
            "  stream: FALSE\n"
            "log:\n"
            "  level: Debug\n"
            "  format: json\n");

    assert_string_equal(c.server.http_listen_address, "127.0.0.1");
    assert_int_equal(c.server.http_listen_port, 0);
    assert_int_equal(c.server.max_connections, 7);
    assert_int_equal(c.server.request_timeout_ms, 1500);
    assert_int_equal(c.collection.paths.count, 2);
    assert_string_equal(c.collection.paths.items[0], "/a/*.log");
    assert_string_equal(c.collection.paths.items[1], "/b/*.log");
    assert_int_equal(c.collection.format, CONFIG_FORMAT_CRI);
    assert_int_equal(c.collection.read_from, CONFIG_READ_FROM_BEGINNING);
    assert_string_equal(c.collection.positions_file, "/tmp/pos.yaml");
    assert_int_equal(c.collection.positions_sync_period_ms, 90000);
    assert_int_equal(c.collection.max_line_bytes, 1000000);
    assert_int_equal(c.collection.read_buffer_bytes, 65536);
    assert_int_equal(c.collection.partial_flush_timeout_ms, 0);
    assert_int_equal(c.collection.partial_timestamp, CONFIG_PARTIAL_TS_LAST);
    assert_int_equal(c.collection.poll_interval_ms, 250);
    assert_int_equal(c.collection.exclude_namespaces.count, 2);
    assert_string_equal(c.collection.exclude_namespaces.items[0], "kube-system");
    assert_string_equal(c.collection.exclude_namespaces.items[1], "monitoring");
    assert_int_equal(c.collection.exclude_pods.count, 1);
    assert_string_equal(c.collection.exclude_pods.items[0], "only-one");
    assert_int_equal(c.collection.exclude_containers.count, 0);
    assert_string_equal(c.collection.include_lines, "^(INFO|WARN)");
    assert_string_equal(c.collection.exclude_lines, "healthz");
    assert_int_equal(c.buffer.max_bytes, 64 * 1024 * 1024);
    assert_string_equal(c.output.loki.url, "https://loki:3100/loki/api/v1/push");
    assert_string_equal(c.output.loki.tenant_id, "team-a");
    assert_int_equal(c.output.loki.batch_bytes, 512 * 1024);
    assert_int_equal(c.output.loki.batch_wait_ms, 2000);
    assert_int_equal(c.output.loki.timeout_ms, 30000);
    assert_int_equal(c.output.loki.min_backoff_ms, 100);
    assert_int_equal(c.output.loki.max_backoff_ms, 3600000);
    assert_int_equal(c.output.loki.max_retries, 10);
    assert_string_equal(c.output.loki.basic_auth_username, "user");
    assert_string_equal(c.output.loki.basic_auth_password_file, "/secret/pw");
    assert_string_equal(c.output.loki.tls_ca_file, "/ca.pem");
    assert_string_equal(c.output.loki.tls_cert_file, "/c.pem");
    assert_string_equal(c.output.loki.tls_key_file, "/k.pem");
    assert_true(c.output.loki.tls_insecure_skip_verify);
    assert_int_equal(c.output.loki.headers.count, 2);
    assert_string_equal(c.output.loki.headers.keys[0], "X-One");
    assert_string_equal(c.output.loki.headers.values[0], "1");
    assert_string_equal(c.output.loki.headers.keys[1], "X-Two");
    assert_string_equal(c.output.loki.headers.values[1], "two");
    assert_true(c.output.loki.structured_metadata);
    assert_int_equal(c.output.stdout_.format, CONFIG_STDOUT_JSON);
    assert_int_equal(c.output.shutdown_grace_ms, 0);
    assert_int_equal(c.labels.static_labels.count, 2);
    assert_string_equal(c.labels.static_labels.keys[0], "cluster");
    assert_string_equal(c.labels.static_labels.values[0], "prod");
    assert_string_equal(c.labels.static_labels.keys[1], "node");
    assert_string_equal(c.labels.static_labels.values[1], "n1");
    assert_false(c.labels.stream);
    assert_string_equal(c.log.level, "debug"); /* canonical spelling */
    assert_string_equal(c.log.format, "json");
    config_free(&c);
}

static void test_bools(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        bool want;
    } cases[] = {{"true", true}, {"True", true}, {"yes", true}, {"ON", true},   {"on", true},
                 {"false", false}, {"no", false}, {"Off", false}, {"NO", false}, {"'false'", false}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char yaml[128];
        snprintf(yaml, sizeof yaml, "labels:\n  stream: %s\n", cases[i].text);
        struct config c;
        load_ok(&c, yaml);
        assert_int_equal(c.labels.stream, cases[i].want);
        config_free(&c);
    }
    assert_load_error("labels:\n  stream: maybe\n",
                      "FILE:2: key labels.stream: 'maybe' is not a boolean (use true or false)");
    assert_load_error("labels:\n  stream: 1\n", "FILE:2: key labels.stream: '1' is not a boolean (use true or false)");
}

static void test_value_errors(void **state)
{
    (void)state;
    assert_load_error("server:\n  max_connections: abc\n",
                      "FILE:2: key server.max_connections: 'abc' is not an integer");
    assert_load_error("server:\n  max_connections: 1.5\n",
                      "FILE:2: key server.max_connections: '1.5' is not an integer");
    assert_load_error("server:\n  http_listen_port: 70000\n",
                      "FILE:2: key server.http_listen_port: '70000' is more than the maximum 65535");
    assert_load_error("server:\n  http_listen_port: -1\n",
                      "FILE:2: key server.http_listen_port: '-1' is less than the minimum 0");
    assert_load_error("server:\n  http_listen_port: 99999999999999999999\n",
                      "FILE:2: key server.http_listen_port: '99999999999999999999' is too large");
    assert_load_error("server:\n  http_listen_port: ~\n",
                      "FILE:2: key server.http_listen_port: '' is not an integer");
    assert_load_error("output:\n  loki:\n    max_retries: -1\n",
                      "FILE:3: key output.loki.max_retries: '-1' is less than the minimum 0");
    assert_load_error("collection:\n  max_line_bytes: 10 parsecs\n",
                      "FILE:2: key collection.max_line_bytes: '10 parsecs' is not a size (use a number with an "
                      "optional unit: B, KiB, MiB, GiB, KB, MB, GB)");
    assert_load_error("collection:\n  max_line_bytes: -4KiB\n",
                      "FILE:2: key collection.max_line_bytes: '-4KiB' is negative");
    assert_load_error("collection:\n  max_line_bytes: 99999999999GiB\n",
                      "FILE:2: key collection.max_line_bytes: '99999999999GiB' is too large");
    assert_load_error("collection:\n  read_buffer_bytes: 1KiB\n",
                      "FILE:2: key collection.read_buffer_bytes: '1KiB' is less than the minimum 64KiB");
    assert_load_error("output:\n  loki:\n    batch_wait: 5\n",
                      "FILE:3: key output.loki.batch_wait: '5' is not a duration (use a number with a unit: ms, s, "
                      "m, h, e.g. 500ms, 1m30s)");
    assert_load_error("output:\n  loki:\n    batch_wait: -1s\n", "FILE:3: key output.loki.batch_wait: '-1s' is negative");
    assert_load_error("output:\n  loki:\n    timeout: 0\n",
                      "FILE:3: key output.loki.timeout: '0' is less than the minimum 1ms");
    assert_load_error("output:\n  loki:\n    timeout: 0.5ms\n",
                      "FILE:3: key output.loki.timeout: '0.5ms' is not a whole number of milliseconds");
}

static void test_bad_enum(void **state)
{
    (void)state;
    assert_load_error("collection:\n  format: xml\n",
                      "FILE:2: key collection.format: 'xml' is not one of cri, docker, auto");
    assert_load_error("collection:\n  read_from: middle\n",
                      "FILE:2: key collection.read_from: 'middle' is not one of end, beginning");
    assert_load_error("collection:\n  partial_timestamp: ''\n",
                      "FILE:2: key collection.partial_timestamp: '' is not one of first, last");
    assert_load_error("output:\n  stdout:\n    format: xml\n",
                      "FILE:3: key output.stdout.format: 'xml' is not one of text, json");
    assert_load_error("log:\n  level: verbose\n",
                      "FILE:2: key log.level: 'verbose' is not one of debug, info, warn, error");
    assert_load_error("log:\n  format: yaml\n", "FILE:2: key log.format: 'yaml' is not one of logfmt, json");
}

static void test_null_values(void **state)
{
    (void)state;
    struct config c;
    load_ok(&c,
            "server:\n"
            "collection:\n"
            "  paths:\n"
            "  exclude_pods: ~\n"
            "output:\n"
            "  loki:\n"
            "    url: null\n"
            "    tenant_id:\n"
            "    headers: ~\n"
            "labels:\n"
            "  static:\n");
    assert_int_equal(c.collection.paths.count, 0);
    assert_int_equal(c.collection.exclude_pods.count, 0);
    assert_string_equal(c.output.loki.url, "");
    assert_string_equal(c.output.loki.tenant_id, "");
    assert_int_equal(c.output.loki.headers.count, 0);
    assert_int_equal(c.labels.static_labels.count, 0);
    assert_int_equal(c.server.http_listen_port, 3101);
    config_free(&c);

    /* Quoted "null" is text. */
    load_ok(&c, "output:\n  loki:\n    tenant_id: \"null\"\n");
    assert_string_equal(c.output.loki.tenant_id, "null");
    config_free(&c);
}

/* ------------------------------------------------------------------------ */
/* Structure errors                                                         */

static void test_unknown_key(void **state)
{
    (void)state;
    assert_load_error("output:\n"
                      "  loki:\n"
                      "    url: http://loki:3100/loki/api/v1/push\n"
                      "    batchwait: 1s\n",
                      "FILE:4: unknown key 'output.loki.batchwait'");
    assert_load_error("# comment\n\nfoo: 1\n", "FILE:3: unknown key 'foo'");
    assert_load_error("server:\n  http_listen_port: 1\n  port: 2\n", "FILE:3: unknown key 'server.port'");
    assert_load_error("output:\n  loki:\n    tls:\n      verify: true\n", "FILE:4: unknown key 'output.loki.tls.verify'");
    /* Keys are not expanded. */
    setenv("LOGLET_T_KEY", "server", 1);
    assert_load_error("${LOGLET_T_KEY}:\n  max_connections: 1\n", "FILE:1: unknown key '${LOGLET_T_KEY}'");
    /* Case matters in keys. */
    assert_load_error("Server:\n  max_connections: 1\n", "FILE:1: unknown key 'Server'");
}

static void test_wrong_type(void **state)
{
    (void)state;
    assert_load_error("server: 5\n", "FILE:1: key server: expected a mapping, got a scalar");
    assert_load_error("server:\n  - a\n", "FILE:2: key server: expected a mapping, got a list");
    assert_load_error("server:\n  http_listen_port:\n    x: 1\n",
                      "FILE:3: key server.http_listen_port: expected a scalar, got a mapping");
    assert_load_error("server:\n  http_listen_port: [1, 2]\n",
                      "FILE:2: key server.http_listen_port: expected a scalar, got a list");
    assert_load_error("collection:\n  paths: {a: b}\n", "FILE:2: key collection.paths: expected a list, got a mapping");
    assert_load_error("collection:\n  paths:\n    - /ok\n    - [nested]\n",
                      "FILE:4: key collection.paths: list items must be scalars, got a list");
    assert_load_error("labels:\n  static: [a]\n", "FILE:2: key labels.static: expected a mapping, got a list");
    assert_load_error("labels:\n  static: a=b\n", "FILE:2: key labels.static: expected a mapping, got a scalar");
    assert_load_error("labels:\n  static:\n    a: {b: c}\n",
                      "FILE:3: key labels.static: value of 'a' must be a scalar, got a mapping");
    assert_load_error("labels:\n  static:\n    a: 1\n    a: 2\n", "FILE:4: key labels.static: 'a' is given twice");
    assert_load_error("- server\n", "FILE:1: the top level must be a mapping of keys, got a list");
    assert_load_error("hello\n", "FILE:1: the top level must be a mapping of keys, got a scalar");
    assert_load_error("? [a, b]\n: c\n", "FILE:1: top level: keys must be scalars, got a list");
}

static void test_duplicate_key(void **state)
{
    (void)state;
    assert_load_error("server:\n  max_connections: 1\n  max_connections: 2\n",
                      "FILE:3: key server.max_connections: already set at line 2");
    assert_load_error("server:\n  max_connections: 1\nserver:\n  max_connections: 2\n",
                      "FILE:4: key server.max_connections: already set at line 2");
}

static void test_syntax_error(void **state)
{
    (void)state;
    assert_load_error("a: b: c\n", "FILE:1:5: YAML syntax error: mapping values are not allowed in this context");

    /* Other shapes: one message, "FILE:LINE:COL: YAML syntax error: …". */
    static const char *const bad[] = {
        "server:\n  http_listen_port: [1, 2\n",
        "server:\n  http_listen_address: \"unterminated\n",
        "server:\n    a: 1\n  b: 2\n",
        "x: *undefined_alias\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct config c;
        config_defaults(&c);
        char err[512], path[64], prefix[96];
        assert_int_equal(load_yaml(&c, bad[i], err, sizeof err, path), -1);
        unsigned line = 0, col = 0;
        snprintf(prefix, sizeof prefix, "%s:", path);
        assert_memory_equal(err, prefix, strlen(prefix));
        assert_int_equal(sscanf(err + strlen(prefix), "%u:%u:", &line, &col), 2);
        assert_true(line >= 1 && col >= 1);
        assert_non_null(strstr(err, ": YAML syntax error: "));
        config_free(&c);
    }

    assert_load_error("server: {max_connections: 1}\n---\nserver: {max_connections: 2}\n",
                      "FILE:3: only one YAML document is allowed");
    assert_load_error("k: \xff\n", "FILE: YAML syntax error at byte 3: invalid leading UTF-8 octet");
}

static void test_missing_file(void **state)
{
    (void)state;
    struct config c;
    config_defaults(&c);
    char err[256];
    assert_int_equal(config_load(&c, "/nonexistent/loglet.yaml", err, sizeof err), -1);
    assert_string_equal(err, "/nonexistent/loglet.yaml: cannot open: No such file or directory");
    assert_int_equal(config_load(&c, "/tmp", err, sizeof err), -1);
    assert_string_equal(err, "/tmp: cannot open: Is a directory");
    assert_string_equal(c.source_path, "");
    config_free(&c);
}

static void test_error_buffer_limits(void **state)
{
    (void)state;
    struct config c;
    config_defaults(&c);
    char path[64];
    char small[12];
    memset(small, 'x', sizeof small);
    assert_int_equal(load_yaml(&c, "nope: 1\n", small, sizeof small, path), -1);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_memory_equal(small, path, sizeof small - 1);
    /* No buffer at all is fine too. */
    assert_int_equal(load_yaml(&c, "nope: 1\n", NULL, 0, path), -1);
    config_free(&c);
}

/* ------------------------------------------------------------------------ */
/* Regular expressions, aliases, env                                        */

static void test_bad_regex(void **state)
{
    (void)state;
    assert_load_error("collection:\n  include_lines: 'a(b'\n",
                      "FILE:2: key collection.include_lines: invalid regular expression at offset 3: missing closing "
                      "parenthesis");
    assert_load_error("collection:\n  format: cri\n  exclude_lines: '*x'\n",
                      "FILE:3: key collection.exclude_lines: invalid regular expression at offset 0: quantifier does "
                      "not follow a repeatable item");
    struct config c;
    load_ok(&c, "collection:\n  exclude_lines: '(?i)health(z|check)'\n");
    assert_string_equal(c.collection.exclude_lines, "(?i)health(z|check)");
    config_free(&c);
}

static void test_alias_log_paths(void **state)
{
    (void)state;
    struct config c;
    load_ok(&c, "collection:\n  logPaths:\n    - /a/*.log\n    - /b/*.log\n");
    assert_int_equal(c.collection.paths.count, 2);
    assert_string_equal(c.collection.paths.items[0], "/a/*.log");
    assert_string_equal(c.collection.paths.items[1], "/b/*.log");
    config_free(&c);

    /* A scalar for a list key is a one-item list. */
    load_ok(&c, "collection:\n  logPaths: /only/*.log\n");
    assert_int_equal(c.collection.paths.count, 1);
    assert_string_equal(c.collection.paths.items[0], "/only/*.log");
    config_free(&c);

    assert_load_error("collection:\n  paths: [/a]\n  logPaths: [/b]\n",
                      "FILE:3: key collection.logPaths: same setting as collection.paths, already set at line 2");
    assert_load_error("collection:\n  logPaths: [/a]\n  paths: [/b]\n",
                      "FILE:3: key collection.paths: already set at line 2");
}

static void test_env_in_values(void **state)
{
    (void)state;
    setenv("LOGLET_T_URL", "http://loki:3100/loki/api/v1/push", 1);
    setenv("LOGLET_T_FMT", "xml", 1);
    setenv("LOGLET_T_NODE", "node-7", 1);
    unsetenv("LOGLET_T_UNSET");
    struct config c;
    load_ok(&c,
            "server:\n"
            "  http_listen_port: ${LOGLET_T_UNSET:-4000}\n"
            "collection:\n"
            "  paths: ['/logs/${LOGLET_T_NODE}/*.log']\n"
            "output:\n"
            "  loki:\n"
            "    url: ${LOGLET_T_URL}\n"
            "    tenant_id: \"$${literal}\"\n"
            "labels:\n"
            "  static:\n"
            "    node: ${LOGLET_T_NODE}\n");
    assert_int_equal(c.server.http_listen_port, 4000);
    assert_string_equal(c.collection.paths.items[0], "/logs/node-7/*.log");
    assert_string_equal(c.output.loki.url, "http://loki:3100/loki/api/v1/push");
    assert_string_equal(c.output.loki.tenant_id, "${literal}");
    assert_string_equal(c.labels.static_labels.values[0], "node-7");
    config_free(&c);

    /* Errors quote the expanded text. */
    assert_load_error("collection:\n  format: ${LOGLET_T_FMT}\n",
                      "FILE:2: key collection.format: 'xml' is not one of cri, docker, auto");
    assert_load_error("server:\n  http_listen_address: \"${LOGLET_T_URL\"\n",
                      "FILE:2: key server.http_listen_address: unterminated ${ in value");
    assert_load_error("collection:\n  paths:\n    - /ok\n    - /x${\n",
                      "FILE:4: key collection.paths: unterminated ${ in value");
    /* An unset variable for a list is an empty list. */
    load_ok(&c, "collection:\n  exclude_pods: ${LOGLET_T_UNSET}\n");
    assert_int_equal(c.collection.exclude_pods.count, 0);
    config_free(&c);
}

/* ------------------------------------------------------------------------ */
/* Relations                                                                */

static void test_relations(void **state)
{
    (void)state;
    assert_load_error("output:\n  loki:\n    min_backoff: 10m\n",
                      "FILE:3: key output.loki.min_backoff: output.loki.min_backoff (10m) must not be greater than "
                      "output.loki.max_backoff (5m)");
    assert_load_error("output:\n  loki:\n    min_backoff: 1s\n    max_backoff: 100ms\n",
                      "FILE:4: key output.loki.max_backoff: output.loki.min_backoff (1s) must not be greater than "
                      "output.loki.max_backoff (100ms)");
    assert_load_error("output:\n  loki:\n    url: ftp://loki\n",
                      "FILE:3: key output.loki.url: 'ftp://loki' must start with http:// or https://");
    assert_load_error("output:\n  loki:\n    url: loki:3100\n",
                      "FILE:3: key output.loki.url: 'loki:3100' must start with http:// or https://");
    assert_load_error("output:\n  loki:\n    basic_auth:\n      username: u\n",
                      "FILE:4: key output.loki.basic_auth.username: output.loki.basic_auth.username and "
                      "output.loki.basic_auth.password_file must be set together");
    assert_load_error("output:\n  loki:\n    basic_auth:\n      password_file: /pw\n",
                      "FILE:4: key output.loki.basic_auth.password_file: output.loki.basic_auth.username and "
                      "output.loki.basic_auth.password_file must be set together");
    assert_load_error("output:\n  loki:\n    basic_auth: {username: u, password_file: /pw}\n"
                      "    bearer_token_file: /token\n",
                      "FILE:4: key output.loki.bearer_token_file: output.loki.basic_auth and "
                      "output.loki.bearer_token_file cannot both be set");
    assert_load_error("output:\n  loki:\n    tls:\n      cert_file: /c.pem\n",
                      "FILE:4: key output.loki.tls.cert_file: output.loki.tls.cert_file and output.loki.tls.key_file "
                      "must be set together");
    assert_load_error("output:\n  loki:\n    tls:\n      key_file: /k.pem\n",
                      "FILE:4: key output.loki.tls.key_file: output.loki.tls.cert_file and output.loki.tls.key_file "
                      "must be set together");
    assert_load_error("buffer:\n  max_bytes: 1MiB\n",
                      "FILE:2: key buffer.max_bytes: buffer.max_bytes (1MiB) must be at least 8 * "
                      "collection.max_line_bytes (256KiB) + 64KiB = 2112KiB");
    assert_load_error("buffer:\n  max_bytes: 16MiB\ncollection:\n  max_line_bytes: 8MiB\n",
                      "FILE:4: key collection.max_line_bytes: buffer.max_bytes (16MiB) must be at least 8 * "
                      "collection.max_line_bytes (8MiB) + 64KiB = 65600KiB");

    /* The limits themselves are fine. */
    struct config c;
    load_ok(&c, "buffer:\n  max_bytes: 2112KiB\noutput:\n  loki:\n    min_backoff: 5m\n    url: HTTPS://x\n");
    assert_int_equal(c.buffer.max_bytes, 2112 * 1024);
    config_free(&c);
}

/* ------------------------------------------------------------------------ */
/* Loading over existing values, printing                                   */

static void test_failed_load_keeps_config(void **state)
{
    (void)state;
    struct config c;
    load_ok(&c, "server:\n  http_listen_port: 1234\ncollection:\n  paths: [/first]\n");
    char *before = print_to_string(&c);
    char *source = strdup(c.source_path);
    char err[256], path[64];
    assert_int_equal(load_yaml(&c, "collection:\n  paths: [/second]\n  format: bogus\n", err, sizeof err, path), -1);
    char *after = print_to_string(&c);
    assert_string_equal(before, after);
    assert_string_equal(c.source_path, source);
    free(before);
    free(after);
    free(source);

    /* A second good load replaces (and frees) the earlier values. */
    assert_int_equal(load_yaml(&c, "collection:\n  paths: [/second, /third]\n", err, sizeof err, path), 0);
    assert_int_equal(c.collection.paths.count, 2);
    assert_string_equal(c.collection.paths.items[0], "/second");
    assert_int_equal(c.server.http_listen_port, 1234); /* kept from the first file */
    assert_string_equal(c.source_path, path);
    config_free(&c);
}

static void test_load_repairs_missing_strings(void **state)
{
    (void)state;
    /* What a config_defaults() that ran out of memory leaves: NULL strings. */
    struct config c;
    config_defaults(&c);
    free(c.server.http_listen_address);
    c.server.http_listen_address = NULL;
    free(c.log.level);
    c.log.level = NULL;
    char *text = print_to_string(&c); /* printing copes */
    assert_non_null(strstr(text, "http_listen_address: \"\"\n"));
    free(text);
    char err[256], path[64];
    assert_int_equal(load_yaml(&c, "server:\n  max_connections: 3\n", err, sizeof err, path), 0);
    assert_string_equal(c.server.http_listen_address, "0.0.0.0");
    assert_string_equal(c.log.level, "info");
    assert_int_equal(c.server.max_connections, 3);
    config_free(&c);
}

static void test_flat_dotted_keys(void **state)
{
    (void)state;
    struct config c;
    load_ok(&c, "output.loki.url: http://x\noutput:\n  loki.tenant_id: t\n");
    assert_string_equal(c.output.loki.url, "http://x");
    assert_string_equal(c.output.loki.tenant_id, "t");
    config_free(&c);
}

static void assert_round_trip(struct config *c)
{
    char *first = print_to_string(c);
    char path[64], err[512] = "";
    write_temp(first, path);
    struct config again;
    config_defaults(&again);
    int rc = config_load(&again, path, err, sizeof err);
    unlink(path);
    if (rc != 0) print_error("reloading:\n%s\nfailed: %s\n", first, err);
    assert_int_equal(rc, 0);
    char *second = print_to_string(&again);
    assert_string_equal(first, second);
    free(first);
    free(second);
    config_free(&again);
}

static void test_round_trip(void **state)
{
    (void)state;
    struct config c;
    config_defaults(&c);
    assert_round_trip(&c);
    config_free(&c);

    setenv("LOGLET_T_TRICKY", "from-env ${NOT_EXPANDED} $$", 1);
    load_ok(&c,
            "server:\n"
            "  http_listen_address: \"quote\\\" backslash\\\\ dollar$$ newline\\n tab\\t bell\\a é ✓ nel\\N c1\\x80 nonchar\\uFFFF\"\n"
            "  request_timeout: 1m30s\n"
            "collection:\n"
            "  paths: ['/a/*.log', \"${LOGLET_T_TRICKY}\", '# not a comment', 'key: value', '- dash', '']\n"
            "  format: docker\n"
            "  read_from: beginning\n"
            "  max_line_bytes: 1000\n"
            "  read_buffer_bytes: 70000\n"
            "  partial_timestamp: last\n"
            "  exclude_namespaces: [kube-system]\n"
            "  include_lines: '^\\d+ \"x\" $'\n"
            "buffer:\n"
            "  max_bytes: 1GB\n"
            "output:\n"
            "  loki:\n"
            "    url: 'http://l:3100/p?a=1&b=$$2'\n"
            "    min_backoff: 1234ms\n"
            "    max_backoff: 2h\n"
            "    max_retries: 3\n"
            "    tls: {insecure_skip_verify: true}\n"
            "    headers:\n"
            "      'X-Dollar-$KEY': '$$v'\n"
            "      'a: b': \"c\\\"d\"\n"
            "  stdout: {format: json}\n"
            "labels:\n"
            "  static: {app: 'x y', empty: ''}\n"
            "  stream: false\n"
            "log: {level: error, format: json}\n");
    assert_string_equal(c.server.http_listen_address,
                        "quote\" backslash\\ dollar$ newline\n tab\t bell\a é ✓ nel\xc2\x85 c1\xc2\x80 nonchar"
                        "\xef\xbf\xbf");
    assert_string_equal(c.collection.paths.items[1], "from-env ${NOT_EXPANDED} $$");
    assert_string_equal(c.output.loki.headers.keys[0], "X-Dollar-$KEY");
    assert_string_equal(c.output.loki.headers.values[0], "$v");
    assert_string_equal(c.output.loki.url, "http://l:3100/p?a=1&b=$2");
    assert_round_trip(&c);

    /* And the printed form holds the values themselves. */
    char *text = print_to_string(&c);
    char path[64], err[256];
    write_temp(text, path);
    struct config again;
    config_defaults(&again);
    assert_int_equal(config_load(&again, path, err, sizeof err), 0);
    unlink(path);
    assert_string_equal(again.server.http_listen_address, c.server.http_listen_address);
    assert_int_equal(again.collection.paths.count, 6);
    for (size_t i = 0; i < 6; i++) assert_string_equal(again.collection.paths.items[i], c.collection.paths.items[i]);
    assert_string_equal(again.collection.include_lines, c.collection.include_lines);
    assert_string_equal(again.output.loki.headers.keys[1], "a: b");
    assert_string_equal(again.output.loki.headers.values[1], "c\"d");
    assert_int_equal(again.output.loki.min_backoff_ms, 1234);
    assert_int_equal(again.buffer.max_bytes, 1000000000);
    assert_int_equal(again.collection.format, CONFIG_FORMAT_DOCKER);
    assert_string_equal(again.log.level, "error");
    assert_false(again.labels.stream);
    assert_string_equal(again.labels.static_labels.values[1], "");
    free(text);
    config_free(&again);
    config_free(&c);
}

static void test_print_shape(void **state)
{
    (void)state;
    struct config c;
    config_defaults(&c);
    char *text = print_to_string(&c);
    assert_non_null(strstr(text, "server:\n  http_listen_address: \"0.0.0.0\"\n  http_listen_port: 3101\n"));
    assert_non_null(strstr(text, "collection:\n  paths:\n    - \"/var/log/containers/*.log\"\n"));
    assert_non_null(strstr(text, "  exclude_pods: []\n"));
    assert_non_null(strstr(text, "output:\n  loki:\n    url: \"\"\n"));
    assert_non_null(strstr(text, "    basic_auth:\n      username: \"\"\n      password_file: \"\"\n"));
    assert_non_null(strstr(text, "    max_backoff: 5m\n"));
    assert_non_null(strstr(text, "    min_backoff: 500ms\n"));
    assert_non_null(strstr(text, "  stdout:\n    format: text\n"));
    assert_non_null(strstr(text, "  max_line_bytes: 256KiB\n"));
    assert_non_null(strstr(text, "labels:\n  static: {}\n  stream: true\n"));
    assert_non_null(strstr(text, "log:\n  level: info\n  format: logfmt\n"));
    assert_null(strstr(text, "logPaths")); /* aliases are not printed */
    assert_null(strstr(text, " \n"));      /* no trailing spaces */
    free(text);
    config_free(&c);
}

static void test_print_reference(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    config_print_reference(f);
    assert_int_equal(fclose(f), 0);
    assert_memory_equal(buf, "| Key | Type | Default | Description |\n", 38);
    assert_non_null(strstr(buf, "\n| `output.loki.batch_wait` | duration | `1s` | "));
    assert_non_null(strstr(buf, "\n| `collection.format` | enum (cri, docker, auto) | `auto` | "));
    assert_non_null(strstr(buf, "\n| `collection.paths` | list of strings | `[\"/var/log/containers/*.log\"]` | "));
    assert_non_null(strstr(buf, "\n| `collection.logPaths` | "));
    assert_non_null(strstr(buf, "\n| `server.http_listen_address` | string | `\"0.0.0.0\"` | "));
    assert_non_null(strstr(buf, "\n| `labels.static` | map of strings | `{}` | "));
    assert_non_null(strstr(buf, "\n| `log.level` | enum (debug, info, warn, error) | `info` | "));
    /* One row per key config_print writes, plus the alias row. */
    size_t rows = 0;
    for (const char *p = buf; (p = strstr(p, "\n| `")); p++) rows++;
    struct config c;
    config_defaults(&c);
    char *printed = print_to_string(&c);
    size_t leaves = 0;
    for (char *line = strtok(printed, "\n"), *next; line; line = next) {
        next = strtok(NULL, "\n");
        const char *body = line + strspn(line, " ");
        if (strncmp(body, "- ", 2) == 0) continue; /* a list item */
        size_t n = strlen(line);
        bool section = line[n - 1] == ':' && next && strncmp(next + strspn(next, " "), "- ", 2) != 0;
        if (!section) leaves++;
    }
    assert_int_equal(rows, leaves + 1);
    free(printed);
    free(buf);
    config_free(&c);
}

static void test_example_file(void **state)
{
    (void)state;
    /* deployments/loglet.example.yaml, found from this file's path. */
    char path[4096];
    const char *self = __FILE__, *tail = strstr(self, "tests/unit/test_config.c");
    if (!tail) skip();
    snprintf(path, sizeof path, "%.*sdeployments/loglet.example.yaml", (int)(tail - self), self);
    if (access(path, R_OK) != 0) skip();

    struct config c;
    config_defaults(&c);
    char err[512] = "";
    int rc = config_load(&c, path, err, sizeof err);
    if (rc != 0) print_error("%s\n", err);
    assert_int_equal(rc, 0);
    /* It documents the defaults, so loading it changes nothing. */
    char *got = print_to_string(&c), *want = defaults_text();
    assert_string_equal(got, want);
    free(got);
    free(want);
    config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_empty_documents_give_defaults),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_expand_env),
        cmocka_unit_test(test_load_every_type),
        cmocka_unit_test(test_bools),
        cmocka_unit_test(test_value_errors),
        cmocka_unit_test(test_bad_enum),
        cmocka_unit_test(test_null_values),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_syntax_error),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_error_buffer_limits),
        cmocka_unit_test(test_bad_regex),
        cmocka_unit_test(test_alias_log_paths),
        cmocka_unit_test(test_env_in_values),
        cmocka_unit_test(test_relations),
        cmocka_unit_test(test_failed_load_keeps_config),
        cmocka_unit_test(test_load_repairs_missing_strings),
        cmocka_unit_test(test_flat_dotted_keys),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_print_shape),
        cmocka_unit_test(test_print_reference),
        cmocka_unit_test(test_example_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
