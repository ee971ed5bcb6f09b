/*
 * libFuzzer harness for parser_utf8_sanitize / parser_utf8_valid_prefix.
 * Invariants: the word-at-a-time validator agrees with a plain byte-by-byte
 * reference (RFC 3629 ranges); sanitized output is valid UTF-8, is the input
 * itself when the input was valid, fits 3 * len, and sanitizing it again
 * changes nothing.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parser/parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reference: length of the longest valid prefix, one byte at a time. */
static size_t ref_valid_prefix(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        const uint8_t c = s[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (n - i < len)
            return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += len;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size ? size : 1);
    char *out = malloc(size ? 3 * size : 1);
    char *again = malloc(size ? 3 * size : 1);
    if (!in || !out || !again)
        abort();
    if (size)
        memcpy(in, data, size);

    /* Every starting offset, so the fast path sees every alignment. */
    for (size_t off = 0; off < size && off < 16; off++)
        if (parser_utf8_valid_prefix(in + off, size - off) != ref_valid_prefix(data + off, size - off))
            abort();

    size_t rep = 0;
    const size_t n = parser_utf8_sanitize(in, size, out, &rep);
    if (n > 3 * size || rep > size || parser_utf8_valid_prefix(out, n) != n ||
        ref_valid_prefix((const uint8_t *)out, n) != n)
        abort();
    const bool valid = ref_valid_prefix(data, size) == size;
    if (valid != (rep == 0))
        abort();
    if (valid && (n != size || (size && memcmp(out, in, size) != 0)))
        abort();

    size_t rep2 = 0;
    const size_t n2 = parser_utf8_sanitize(out, n, again, &rep2);
    if (rep2 != 0 || n2 != n || (n && memcmp(again, out, n) != 0))
        abort();

    free(again);
    free(out);
    free(in);
    return 0;
}
