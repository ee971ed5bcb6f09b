/*
 * utf8 — validation and repair of UTF-8 (Unicode 15, table 3-7).
 *
 * Hot path: parser_utf8_valid_prefix runs over every shipped byte. ASCII is
 * skipped a machine word at a time; only non-ASCII bytes take the per-byte
 * decoder. No tables, no allocation, O(n).
 *
 * Repair follows the "maximal subpart" practice (Unicode §3.9, U+FFFD
 * substitution; what WHATWG encoders and ICU do): an ill-formed sequence is
 * replaced by one U+FFFD per maximal prefix of a well-formed sequence, or per
 * byte that cannot start one. Examples: F0 9F 98 <end> -> 1, C0 AF -> 2,
 * ED A0 80 (a surrogate) -> 3. NUL is valid UTF-8 and is kept.
 */
#include "parser.h"

#include <string.h>

/*
 * Decodes the sequence starting at s[0] (a byte >= 0x80; n >= 1 bytes
 * available). Returns true and its length in *adv when it is well formed;
 * otherwise false and, in *adv, the length of its maximal subpart (>= 1),
 * i.e. how many bytes one U+FFFD replaces.
 */
static inline bool utf8_seq(const unsigned char *s, size_t n, size_t *adv)
{
    const unsigned c = s[0];
    unsigned need;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */

    if (c < 0x80) {
        *adv = 1;
        return true;
    }
    if (c < 0xC2) { /* continuation byte, or C0/C1 (always overlong) */
        *adv = 1;
        return false;
    }
    if (c < 0xE0) {
        need = 1;
    } else if (c < 0xF0) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c < 0xF5) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* > U+10FFFF */
    } else {
        *adv = 1;
        return false;
    }
    if (n < 2 || s[1] < lo || s[1] > hi) {
        *adv = 1;
        return false;
    }
    for (size_t k = 2; k <= need; k++) {
        if (k >= n || (s[k] & 0xC0) != 0x80) {
            *adv = k;
            return false;
        }
    }
    *adv = need + 1;
    return true;
}

#define HIGH_BITS 0x8080808080808080ULL

/* Index of the first byte with its high bit set in a word read with memcpy
 * (mask != 0). */
static inline size_t first_high(uint64_t mask)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (size_t)__builtin_ctzll(mask) / 8;
#else
    return (size_t)__builtin_clzll(mask) / 8;
#endif
}

size_t parser_utf8_valid_prefix(const char *src, size_t len)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0;

    while (i < len) {
        /* ASCII fast path: 16, then 8 bytes per step. */
        while (len - i >= 16) {
            uint64_t a, b;
            memcpy(&a, s + i, 8);
            memcpy(&b, s + i + 8, 8);
            if ((a | b) & HIGH_BITS)
                break;
            i += 16;
        }
        if (len - i >= 8) {
            uint64_t a;
            memcpy(&a, s + i, 8);
            a &= HIGH_BITS;
            if (!a) {
                i += 8;
                continue;
            }
            i += first_high(a);
        } else {
            while (i < len && s[i] < 0x80)
                i++;
            if (i == len)
                break;
        }
        /* s[i] >= 0x80 here. */
        size_t adv;
        if (!utf8_seq(s + i, len - i, &adv))
            return i;
        i += adv;
    }
    return len;
}

size_t parser_utf8_sanitize(const char *src, size_t len, char *dst, size_t *replaced)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, o = 0, rep = 0;

    while (i < len) {
        const size_t v = parser_utf8_valid_prefix(src + i, len - i);
        if (v) {
            memcpy(dst + o, src + i, v);
            o += v;
            i += v;
        }
        if (i >= len)
            break;
        size_t adv;
        (void)utf8_seq(s + i, len - i, &adv);
        dst[o++] = (char)0xEF;
        dst[o++] = (char)0xBF;
        dst[o++] = (char)0xBD;
        i += adv;
        rep++;
    }
    *replaced += rep;
    return o;
}

static bool utf8_continuation(char ch) { return ((unsigned char)ch & 0xC0) == 0x80; }

size_t parser_utf8_piece_cut(const char *s, size_t len, size_t room)
{
    size_t cut = room;
    for (int back = 0; back < 3 && cut > 0 && utf8_continuation(s[cut]); back++) cut--;
    if (!utf8_continuation(s[cut])) return cut;
    if (cut > 0) return room; /* not UTF-8 here: cut where asked */
    size_t forward = 0;
    while (forward < len && forward < 3 && utf8_continuation(s[forward])) forward++;
    return forward;
}
