/*
 * libFuzzer harness for parser_cri_line.
 * Invariants on success: the content lies inside the input and ends at its
 * end, the stream is stdout or stderr, and the timestamp survives a
 * format/parse round trip.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parser/parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size heap copy, so that ASan catches any read past len. */
    char *line = malloc(size ? size : 1);
    if (!line)
        return 0;
    if (size)
        memcpy(line, data, size);

    struct parser_line out;
    if (parser_cri_line(line, size, &out) == 0) {
        if (out.content < line || out.content > line + size || out.content_len != (size_t)(line + size - out.content))
            abort();
        if (out.stream != PARSER_STREAM_STDOUT && out.stream != PARSER_STREAM_STDERR)
            abort();
        /* Shortest line: 20-byte timestamp, " stdout F". */
        if (size < 29)
            abort();
        /* The tag follows "<ts> stdxxx " and decides `partial`. */
        const char *sp = memchr(line, ' ', size);
        if (!sp || sp + 8 > line + size || out.partial != (sp[8] == 'P') || (sp[8] != 'P' && sp[8] != 'F'))
            abort();
        char ts[31];
        int64_t back;
        if (parser_format_rfc3339(out.ts_ns, ts) != 30 || parser_rfc3339(ts, 30, &back) != 0 || back != out.ts_ns)
            abort();
    }
    free(line);
    return 0;
}
