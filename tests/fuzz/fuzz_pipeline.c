/* libFuzzer: lines of any bytes through the pipeline stages that parse them
 * (json, logfmt, regex, the multiline state machines), with labels,
 * metadata and output after them. Nothing may crash, leak or read out of
 * bounds; and a multiline stage alone must lose and invent nothing: the
 * entries it sends, joined with "\n", are the lines it was given.
 *
 * The first input byte picks the pipeline; the rest is split at '\n'. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config/config.h"
#include "pipeline/pipeline.h"

static const char *const pipelines[] = {
    "pipeline:\n  - stages:\n"
    "      - json: {fields: {level: level, msg: message, id: req.user.id, o: o}}\n"
    "      - labels: {level: {values: [info, error], other: x}}\n"
    "      - structured_metadata: [id, o]\n      - output: {source: msg}\n",
    "pipeline:\n  - stages:\n"
    "      - logfmt: {fields: [level, msg, ts]}\n      - timestamp: {source: ts, format: unix}\n"
    "      - labels: {level: {max_values: 3}}\n      - structured_metadata: [msg]\n",
    "pipeline:\n  - stages:\n"
    "      - regex: {expression: '^(?P<a>\\w+)=(?P<b>(x+x+)+)?(?P<c>.*)$'}\n"
    "      - drop: {source: a, value: drop}\n      - structured_metadata: [b, c]\n      - output: {source: c}\n",
    "pipeline:\n  - stages:\n      - multiline: {mode: java, max_lines: 7, max_bytes: 300}\n",
    "pipeline:\n  - stages:\n      - multiline: {mode: python, max_lines: 7, max_bytes: 300}\n",
    "pipeline:\n  - stages:\n      - multiline: {mode: go, max_lines: 7, max_bytes: 300}\n",
    "pipeline:\n  - stages:\n      - multiline: {mode: ruby, max_lines: 7, max_bytes: 300}\n",
    "pipeline:\n  - stages:\n      - multiline: {start: '^\\S', max_bytes: 300}\n      - json: {fields: [a]}\n",
};
#define NPIPELINES (sizeof pipelines / sizeof pipelines[0])
#define FIRST_MULTILINE_ONLY 3
#define LAST_MULTILINE_ONLY 6

static struct config cfgs[NPIPELINES];
static struct pipeline *ps[NPIPELINES];

static void setup(void)
{
    for (size_t i = 0; i < NPIPELINES; i++) {
        char path[64], err[1024];
        int fd = memfd_create("fuzz", MFD_CLOEXEC);
        if (fd < 0 || write(fd, pipelines[i], strlen(pipelines[i])) != (ssize_t)strlen(pipelines[i])) abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        config_defaults(&cfgs[i]);
        if (config_load(&cfgs[i], path, err, sizeof err) != 0 || !(ps[i] = pipeline_create(&cfgs[i], err, sizeof err))) {
            fprintf(stderr, "pipeline %zu: %s\n", i, err);
            abort();
        }
        close(fd);
    }
}

struct joined {
    char *buf;
    size_t len, cap;
    size_t entries;
};

static bool collect(void *ctx, const struct pipeline_entry *e)
{
    struct joined *j = ctx;
    size_t need = j->len + e->len + 1;
    if (need > j->cap) {
        j->cap = need * 2;
        j->buf = realloc(j->buf, j->cap);
        if (!j->buf) abort();
    }
    if (j->entries++) j->buf[j->len++] = '\n';
    memcpy(j->buf + j->len, e->line, e->len);
    j->len += e->len;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    if (size < 1) return 0;
    size_t which = data[0] % NPIPELINES;
    bool oom;
    struct pipeline_meta meta = {.namespace_ = "ns", .pod = "pod", .container = "c"};
    struct pipeline_file *pf = pipeline_file_new(ps[which], &meta, &oom);
    if (!pf) abort();
    struct joined j = {0};
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    size_t lines = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        bool dropped;
        if (!pipeline_process(pf, p, len, 1000, (uint8_t)(len % 2), 0, (uint64_t)(p - (const char *)data), collect,
                              &j, &dropped))
            abort();
        lines++;
        p += len + 1;
    }
    if (!pipeline_file_flush(pf, collect, &j)) abort();
    if (which >= FIRST_MULTILINE_ONLY && which <= LAST_MULTILINE_ONLY) {
        /* Lossless: the entries are the lines, regrouped. */
        size_t in_len = size - 1;
        if (in_len && data[size - 1] == '\n') in_len--; /* a last empty "line" is not one */
        bool same = j.len == in_len && memcmp(j.buf ? j.buf : "", data + 1, in_len) == 0;
        if (lines && !same) {
            fprintf(stderr, "multiline lost or changed bytes: %zu in, %zu out\n", in_len, j.len);
            abort();
        }
    }
    free(j.buf);
    pipeline_file_free(pf);
    return 0;
}
