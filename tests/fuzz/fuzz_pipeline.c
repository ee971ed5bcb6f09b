/* libFuzzer: lines of any bytes through the pipeline stages that parse them
 * (json, logfmt, regex, the multiline state machines), with labels,
 * metadata and output after them. Nothing may crash, leak or read out of
 * bounds; and a multiline stage alone must lose and invent nothing: the
 * entries it sends, joined with "\n", are the lines it was given.
 *
 * The first input byte picks the pipeline; the rest is split at '\n'. For
 * the pipelines with a drop longer_than, lines longer than max_line_bytes go
 * in as the collector sends them (pieces cut at max_line_bytes: SPLIT, MORE
 * on all but the last, CONTINUED on all but the first), and the drop alone
 * must send exactly the pieces of the lines of at most longer_than bytes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config/config.h"
#include "pipeline/pipeline.h"
#include "source/source.h"

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
    "collection:\n  max_line_bytes: 64\npipeline:\n  - stages:\n      - drop: {longer_than: 40B}\n",
    ("collection:\n  max_line_bytes: 64\npipeline:\n  - stages:\n"
     "      - multiline: {start: '^\\S', max_bytes: 64}\n      - drop: {line: '^z', longer_than: 64B}\n"),
};
#define NPIPELINES (sizeof pipelines / sizeof pipelines[0])
#define FIRST_MULTILINE_ONLY 3
#define LAST_MULTILINE_ONLY 6
#define DROP_LONGER_ONLY 8 /* longer_than 40B, max_line_bytes 64 */
#define FIRST_IN_PIECES 8
#define MAX_LINE 64
#define LONGER_THAN 40

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

static void join_piece(struct joined *j, const char *s, size_t len)
{
    struct pipeline_entry e = {.line = (char *)s, .len = len};
    collect(j, &e);
}

/* One line in, as the collector gives it: whole, or in pieces of MAX_LINE. */
static bool feed_line(struct pipeline_file *pf, const char *line, size_t len, uint64_t start, struct joined *j,
                      struct joined *want)
{
    bool dropped, keep = len <= LONGER_THAN;
    if (len <= MAX_LINE) {
        if (keep) join_piece(want, line, len);
        return pipeline_process(pf, line, len, 1000, 0, 0, start, collect, j, &dropped);
    }
    for (size_t at = 0; at < len; at += MAX_LINE) {
        size_t n = len - at < MAX_LINE ? len - at : MAX_LINE;
        uint8_t flags = SOURCE_RECORD_SPLIT | (at ? SOURCE_RECORD_CONTINUED : 0) |
                        (at + n < len ? SOURCE_RECORD_MORE : 0);
        if (keep) join_piece(want, line + at, n);
        if (!pipeline_process(pf, line + at, n, 1000, 0, flags, start, collect, j, &dropped)) return false;
    }
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
    struct joined j = {0}, want = {0};
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    size_t lines = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        bool dropped;
        uint64_t start = (uint64_t)(p - (const char *)data);
        if (which >= FIRST_IN_PIECES) {
            if (!feed_line(pf, p, len, start, &j, &want)) abort();
        } else if (!pipeline_process(pf, p, len, 1000, (uint8_t)(len % 2), 0, start, collect, &j, &dropped)) {
            abort();
        }
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
    if (which == DROP_LONGER_ONLY &&
        (j.len != want.len || j.entries != want.entries || memcmp(j.buf ? j.buf : "", want.buf ? want.buf : "", j.len))) {
        fprintf(stderr, "drop longer_than sent %zu entries (%zu bytes), want %zu (%zu)\n", j.entries, j.len,
                want.entries, want.len);
        abort();
    }
    free(j.buf);
    free(want.buf);
    pipeline_file_free(pf);
    return 0;
}
