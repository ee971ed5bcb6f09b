/*
 * libFuzzer harness for parser_docker_line.
 * The first input byte picks a small dst capacity (exercising truncation);
 * the rest is the line. Invariants on success: content is in dst and within
 * dst_cap; the stream is known; the timestamp round-trips; parsing again
 * with a dst as large as the line (unescaping never grows the text) gives
 * the same result untruncated, of which the small parse is a prefix.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parser/parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const size_t cap = data[0] % 64;
    data++;
    size--;

    char *line = malloc(size ? size : 1);
    char *small = malloc(cap ? cap : 1);
    char *big = malloc(size ? size : 1);
    if (!line || !small || !big)
        abort();
    if (size)
        memcpy(line, data, size);

    struct parser_line a, b;
    bool ta = false, tb = true;
    const int ra = parser_docker_line(line, size, small, cap, &a, &ta);
    const int rb = parser_docker_line(line, size, big, size, &b, &tb);
    if (ra != rb)
        abort();
    if (ra == 0) {
        if (a.content != small || a.content_len > cap || b.content != big || b.content_len > size)
            abort();
        if (tb)
            abort(); /* the unescaped log never exceeds the line */
        if (a.stream != b.stream || a.ts_ns != b.ts_ns || a.partial != b.partial)
            abort();
        if (a.stream != PARSER_STREAM_STDOUT && a.stream != PARSER_STREAM_STDERR)
            abort();
        if (ta != (b.content_len > cap))
            abort();
        if (!ta && (a.content_len != b.content_len))
            abort();
        /* A cut drops at most the 3 bytes of an incomplete sequence. */
        if (ta && a.content_len + 3 < cap)
            abort();
        if (a.content_len && memcmp(a.content, b.content, a.content_len) != 0)
            abort();
        char ts[31];
        int64_t back;
        if (parser_format_rfc3339(a.ts_ns, ts) != 30 || parser_rfc3339(ts, 30, &back) != 0 || back != a.ts_ns)
            abort();
    }
    free(big);
    free(small);
    free(line);
    return 0;
}
