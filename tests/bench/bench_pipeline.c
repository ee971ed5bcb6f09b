/*
 * bench_pipeline — the cost of each pipeline stage on one core, in memory:
 * records straight into pipeline_process() (as tail.c hands them over),
 * entries into an emit that only counts. Prints MB/s of line content and
 * CPU-seconds per GB for
 *   none          (the copy into the pipeline and the runner, no stage)
 *   json          extraction of 3 fields from JSON lines
 *   logfmt        extraction of 3 fields from logfmt lines
 *   multiline     java mode over Java traces (tests/fixtures/multiline/java.log) and log lines
 *   drop-regex    `drop: {line: "healthz|readyz"}` over JSON lines
 *   example       the README's example pipeline (multiline + json + labels +
 *                 structured_metadata + drop + limit + output) over JSON lines
 * and the peak RSS at the end. Nothing asserts on time.
 *   bench_pipeline [MB per case, default 200]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "pipeline/pipeline.h"

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t emitted, emitted_bytes;
static bool count(void *ctx, const struct pipeline_entry *e)
{
    (void)ctx;
    emitted++;
    emitted_bytes += e->len;
    return true;
}

/* Lines of a corpus, one after another, each ending in '\n'. */
struct corpus {
    char *text;
    size_t len, lines;
};

static void add(struct corpus *c, size_t *cap, const char *line)
{
    size_t n = strlen(line);
    if (c->len + n + 1 > *cap) {
        *cap = (*cap ? *cap * 2 : 1 << 20) + n;
        c->text = realloc(c->text, *cap);
        if (!c->text) exit(1);
    }
    memcpy(c->text + c->len, line, n);
    c->text[c->len + n] = '\n';
    c->len += n + 1;
    c->lines++;
}

static struct corpus make(const char *kind, size_t bytes)
{
    struct corpus c = {0};
    size_t cap = 0;
    char line[512];
    static const char *const levels[] = {"info", "info", "info", "debug", "warn", "error", "trace"};
    FILE *java = NULL;
    char *trace = NULL;
    if (strcmp(kind, "multiline") == 0) {
        java = fopen(FIXTURES "/java.log", "r");
        if (!java) {
            perror(FIXTURES "/java.log");
            exit(1);
        }
        size_t tl = 0;
        trace = calloc(1, 65536);
        tl = fread(trace, 1, 65535, java);
        trace[tl] = '\0';
        fclose(java);
    }
    for (size_t i = 0; c.len < bytes; i++) {
        if (strcmp(kind, "logfmt") == 0) {
            snprintf(line, sizeof line,
                     "ts=2026-11-22T10:00:00.%06zuZ level=%s msg=\"GET /api/v1/items/%zu served\" trace_id=%016zx "
                     "duration_ms=%zu path=/api/v1/items user=u%zu", i % 1000000, levels[i % 7], i, i * 2654435761u,
                     i % 997, i % 50);
            add(&c, &cap, line);
        } else if (trace && i % 20 == 19) {
            /* One trace per twenty log lines. */
            for (char *save, *l = strtok_r(trace, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) add(&c, &cap, l);
            /* strtok consumed it: rebuild from the corpus tail is not needed, reload. */
            FILE *f = fopen(FIXTURES "/java.log", "r");
            size_t tl = fread(trace, 1, 65535, f);
            trace[tl] = '\0';
            fclose(f);
        } else if (trace) {
            snprintf(line, sizeof line, "2026-11-22 10:00:00.%03zu INFO  [http-%zu] shop.Api - GET /api/v1/items/%zu 200",
                     i % 1000, i % 8, i);
            add(&c, &cap, line);
        } else {
            snprintf(line, sizeof line,
                     "{\"ts\":\"2026-11-22T10:00:00.%06zuZ\",\"level\":\"%s\",\"message\":\"GET /api/v1/items/%zu %s\","
                     "\"trace_id\":\"%016zx\",\"duration_ms\":%zu,\"http\":{\"path\":\"/api/v1/items\",\"status\":200}}",
                     i % 1000000, levels[i % 7], i, i % 101 == 0 ? "healthz" : "served", i * 2654435761u, i % 997);
            add(&c, &cap, line);
        }
    }
    free(trace);
    return c;
}

static void run(const char *name, const char *stages, const char *corpus_kind, size_t mb)
{
    char path[] = "/tmp/bench_pipeline_XXXXXX";
    int fd = mkstemp(path);
    char yaml[2048];
    snprintf(yaml, sizeof yaml, "pipeline:\n  - stages:%s\n", stages);
    if (fd < 0 || write(fd, yaml, strlen(yaml)) != (ssize_t)strlen(yaml)) exit(1);
    close(fd);
    struct config cfg;
    char err[1024];
    config_defaults(&cfg);
    if (config_load(&cfg, path, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    unlink(path);
    struct pipeline *p = pipeline_create(&cfg, err, sizeof err);
    if (!p) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    bool oom;
    struct pipeline_meta meta = {.namespace_ = "shop", .pod = "api-0", .container = "api"};
    struct pipeline_file *pf = pipeline_file_new(p, &meta, &oom);
    struct corpus c = make(corpus_kind, 64u << 20);
    size_t want = mb << 20, done = 0;
    emitted = emitted_bytes = 0;
    double c0 = cpu_now();
    uint64_t offset = 0;
    size_t lines = 0;
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    const int64_t ts0 = (int64_t)rt.tv_sec * 1000000000; /* recent: older_than keeps them */
    while (done < want) {
        const char *s = c.text, *end = c.text + c.len;
        while (s < end) {
            const char *nl = memchr(s, '\n', (size_t)(end - s));
            size_t len = (size_t)(nl - s);
            bool dropped;
            if (pf) pipeline_process(pf, s, len, ts0 + (int64_t)offset, 0, 0, offset, count, NULL, &dropped);
            offset += len + 1;
            lines++;
            done += len;
            s = nl + 1;
        }
    }
    if (pf) pipeline_file_flush(pf, count, NULL);
    double cpu = cpu_now() - c0;
    printf("%-11s %7.0f MB/s  %6.2f CPU-s/GB  (%zu MB of line content, %zu lines in, %zu entries out)\n", name,
           (double)done / 1e6 / cpu, cpu / ((double)done / 1e9), done >> 20, lines, emitted);
    free(c.text);
    pipeline_file_free(pf);
    pipeline_destroy(p);
    config_free(&cfg);
}

int main(int argc, char **argv)
{
    size_t mb = argc > 1 ? (size_t)atol(argv[1]) : 200;
    printf("pipeline stages, one core, in memory (%zu MB each):\n", mb);
    run("none", "\n      - output: {source: absent}", "json", mb);
    run("json", "\n      - json: {fields: {level: level, msg: message, trace_id: trace_id}}", "json", mb);
    run("logfmt", "\n      - logfmt: {fields: {level: level, msg: msg, trace_id: trace_id}}", "logfmt", mb);
    run("multiline", "\n      - multiline: {mode: java}", "multiline", mb);
    run("drop-regex", "\n      - drop: {line: \"healthz|readyz\"}", "json", mb);
    run("example",
        "\n      - multiline: {mode: java}"
        "\n      - json: {fields: {level: level, msg: message, trace_id: trace_id}}"
        "\n      - labels: {level: {values: [debug, info, warn, error], other: unknown}}"
        "\n      - structured_metadata: [trace_id]"
        "\n      - drop: {line: \"healthz|readyz\", older_than: 6h, longer_than: 200KiB}"
        "\n      - limit: {rate: 1000000000, burst: 1000000000, by: stream, action: drop}"
        "\n      - output: {source: msg}",
        "json", mb);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak RSS %.1f MiB (the corpora included: 64 MiB each, one at a time)\n", (double)ru.ru_maxrss / 1024);
    return 0;
}
