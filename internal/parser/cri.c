/*
 * cri — one line of the CRI log format (containerd, CRI-O):
 *
 *     <RFC3339Nano> SP <stdout|stderr> SP <P|F>[:<tag>...] [SP <content>]
 *
 * Hot path: runs once per line. One memchr for the timestamp, fixed-offset
 * compares for the rest; the content is returned in place. Must never
 * allocate, copy the content or read past `len`.
 *
 * Leniency: the tag field may carry extra ':'-separated tags ("F:x"); a line
 * that stops right after the tag (with or without one space) has empty
 * content. Separators are exactly one space (a tab is not a separator), and
 * a trailing '\r' belongs to the content.
 */
#include "parser.h"

#include <string.h>

int parser_cri_line(const char *line, size_t len, struct parser_line *out)
{
    if (len == 0)
        return -1;
    const char *end = line + len;
    const char *sp = memchr(line, ' ', len);
    if (!sp || parser_rfc3339(line, (size_t)(sp - line), &out->ts_ns) != 0)
        return -1;

    /* Stream: exactly "stdout" or "stderr", then one space. */
    const char *p = sp + 1;
    if (end - p < 8 || p[6] != ' ' || memcmp(p, "std", 3) != 0)
        return -1;
    if (memcmp(p + 3, "out", 3) == 0)
        out->stream = PARSER_STREAM_STDOUT;
    else if (memcmp(p + 3, "err", 3) == 0)
        out->stream = PARSER_STREAM_STDERR;
    else
        return -1;
    p += 7;

    /* Tag: 'P' or 'F', optionally followed by ":<more tags>", up to a space. */
    if (*p != 'P' && *p != 'F')
        return -1;
    out->partial = *p == 'P';
    p++;
    if (p < end && *p == ':') {
        const char *tsp = memchr(p, ' ', (size_t)(end - p));
        p = tsp ? tsp : end;
    }
    if (p == end) {
        out->content = p;
        out->content_len = 0;
        return 0;
    }
    if (*p != ' ')
        return -1;
    p++;
    out->content = p;
    out->content_len = (size_t)(end - p);
    return 0;
}
