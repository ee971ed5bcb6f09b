/*
 * bench_parser — throughput of the per-line hot path on one core.
 *
 * Builds ~200 MB of 200-byte CRI lines in memory (varying timestamps,
 * streams, P/F tags, mostly ASCII with some UTF-8), then times the loop the
 * collector runs: memchr for '\n', parser_cri_line, parser_utf8_valid_prefix
 * over the content. Also times docker json-file lines for comparison.
 * Prints MB/s and lines/s. Build with -O2; the target is > 500 MB/s.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parser/parser.h"

#define LINE_LEN 200 /* including the '\n' */
#define TOTAL_BYTES (200u * 1024u * 1024u)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fill_content(char *p, size_t n, uint64_t seed)
{
    static const char words[] = "level=info msg=\"request served\" path=/api/v1/items status=200 caf\xC3\xA9 ";
    for (size_t i = 0; i < n; i++)
        p[i] = words[(i + seed) % (sizeof words - 1)];
    /* Never end inside the 2-byte sequence: keep the text valid UTF-8. */
    if ((unsigned char)p[n - 1] == 0xC3)
        p[n - 1] = '.';
    if ((unsigned char)p[0] == 0xA9)
        p[0] = '.';
}

static char *make_cri(size_t *len_out, size_t *lines_out)
{
    const size_t lines = TOTAL_BYTES / LINE_LEN;
    char *buf = malloc(lines * LINE_LEN);
    if (!buf)
        return NULL;
    char ts[31];
    for (size_t i = 0; i < lines; i++) {
        char *p = buf + i * LINE_LEN;
        parser_format_rfc3339(1795341600000000001LL + (int64_t)i * 1234567, ts);
        memcpy(p, ts, 30);
        memcpy(p + 30, i % 7 ? " stdout " : " stderr ", 8);
        p[38] = i % 13 ? 'F' : 'P';
        p[39] = ' ';
        fill_content(p + 40, LINE_LEN - 41, i);
        p[LINE_LEN - 1] = '\n';
    }
    *len_out = lines * LINE_LEN;
    *lines_out = lines;
    return buf;
}

static char *make_docker(size_t *len_out, size_t *lines_out)
{
    const size_t lines = TOTAL_BYTES / 2 / LINE_LEN;
    char *buf = malloc(lines * LINE_LEN);
    if (!buf)
        return NULL;
    char ts[31];
    for (size_t i = 0; i < lines; i++) {
        char *p = buf + i * LINE_LEN;
        parser_format_rfc3339(1795341600000000001LL + (int64_t)i * 1234567, ts);
        /* {"log":"<content>\n","stream":"stdout","time":"<ts>"}\n */
        static const char head[] = "{\"log\":\"";
        static const char mid[] = "\\n\",\"stream\":\"stdout\",\"time\":\"";
        static const char tail[] = "\"}\n";
        const size_t content = LINE_LEN - (sizeof head - 1) - (sizeof mid - 1) - 30 - (sizeof tail - 1);
        char *q = p;
        memcpy(q, head, sizeof head - 1);
        q += sizeof head - 1;
        fill_content(q, content, i);
        for (size_t k = 0; k < content; k++)
            if (q[k] == '"' || q[k] == '\\')
                q[k] = '\'';
        q += content;
        memcpy(q, mid, sizeof mid - 1);
        q += sizeof mid - 1;
        memcpy(q, ts, 30);
        q += 30;
        memcpy(q, tail, sizeof tail - 1);
    }
    *len_out = lines * LINE_LEN;
    *lines_out = lines;
    return buf;
}

int main(void)
{
    size_t len, lines;
    char *buf = make_cri(&len, &lines);
    if (!buf) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }

    /* The hot loop: it must never allocate or make a syscall. */
    uint64_t sum = 0;
    size_t ok = 0, bad = 0;
    double best = 1e30;
    for (int round = 0; round < 3; round++) {
        const double t0 = now();
        const char *p = buf, *end = buf + len;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const size_t n = (size_t)(nl - p);
            struct parser_line out;
            if (parser_cri_line(p, n, &out) == 0 &&
                parser_utf8_valid_prefix(out.content, out.content_len) == out.content_len) {
                sum += (uint64_t)out.ts_ns + out.content_len + out.partial;
                ok++;
            } else {
                bad++;
            }
            p = nl + 1;
        }
        const double dt = now() - t0;
        if (dt < best)
            best = dt;
    }
    printf("cri:    %zu lines of %d bytes (%.0f MB): best of 3 %.3f s, %.0f MB/s, %.2f M lines/s (ok=%zu bad=%zu sum=%llx)\n",
           lines, LINE_LEN, (double)len / 1e6, best, (double)len / 1e6 / best, (double)lines / 1e6 / best, ok / 3,
           bad / 3, (unsigned long long)sum);
    free(buf);

    buf = make_docker(&len, &lines);
    if (!buf) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    char dst[LINE_LEN];
    ok = bad = 0;
    sum = 0;
    best = 1e30;
    for (int round = 0; round < 3; round++) {
        const double t0 = now();
        const char *p = buf, *end = buf + len;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            struct parser_line out;
            bool trunc;
            if (parser_docker_line(p, (size_t)(nl - p), dst, sizeof dst, &out, &trunc) == 0 &&
                parser_utf8_valid_prefix(out.content, out.content_len) == out.content_len) {
                sum += (uint64_t)out.ts_ns + out.content_len;
                ok++;
            } else {
                bad++;
            }
            p = nl + 1;
        }
        const double dt = now() - t0;
        if (dt < best)
            best = dt;
    }
    printf("docker: %zu lines of %d bytes (%.0f MB): best of 3 %.3f s, %.0f MB/s, %.2f M lines/s (ok=%zu bad=%zu sum=%llx)\n",
           lines, LINE_LEN, (double)len / 1e6, best, (double)len / 1e6 / best, (double)lines / 1e6 / best, ok / 3,
           bad / 3, (unsigned long long)sum);
    free(buf);
    return 0;
}
