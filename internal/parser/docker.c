/*
 * docker — one line of docker's json-file log driver:
 *
 *     {"log":"<escaped text>","stream":"stdout|stderr","time":"<RFC3339Nano>"}
 *
 * Not a general JSON parser: one flat object whose "log", "stream" and
 * "time" members are read (any order, whitespace allowed, last duplicate
 * wins) and whose other members are skipped whatever their type. Skipping
 * is iterative (a depth counter, no recursion), so hostile nesting cannot
 * exhaust the stack; brackets inside a skipped value are only counted, not
 * matched by kind. Raw control characters and invalid UTF-8 inside strings
 * are passed through (the caller sanitizes); an unknown escape, a bad
 * \uXXXX, an unterminated string or trailing garbage make the line invalid.
 *
 * Hot path in docker mode: strings are scanned with memchr, unescaped runs
 * are copied with memcpy, no allocation; every string is visited once, O(n).
 */
#include "parser.h"

#include <string.h>

static inline const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p is just after an opening quote; returns the closing quote or NULL. */
static const char *scan_string(const char *p, const char *end)
{
    const char *start = p;
    while (p < end) {
        const char *q = memchr(p, '"', (size_t)(end - p));
        if (!q)
            return NULL;
        size_t bs = 0; /* backslashes right before q */
        for (const char *b = q; b > start && b[-1] == '\\'; b--)
            bs++;
        if (bs % 2 == 0)
            return q;
        p = q + 1;
    }
    return NULL;
}

/* Skips one JSON value of any type starting at p (p < end); returns the byte
 * after it or NULL. */
static const char *skip_value(const char *p, const char *end)
{
    const char c = *p;
    if (c == '"') {
        const char *q = scan_string(p + 1, end);
        return q ? q + 1 : NULL;
    }
    if (c == '{' || c == '[') {
        size_t depth = 0;
        while (p < end) {
            const char x = *p;
            if (x == '"') {
                const char *q = scan_string(p + 1, end);
                if (!q)
                    return NULL;
                p = q + 1;
                continue;
            }
            if (x == '{' || x == '[') {
                depth++;
            } else if (x == '}' || x == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        return NULL;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        while (p < end && ((*p >= '0' && *p <= '9') || *p == '-' || *p == '+' || *p == '.' || *p == 'e' ||
                           *p == 'E'))
            p++;
        return p;
    }
    static const char *const lits[] = {"true", "false", "null"};
    for (size_t i = 0; i < 3; i++) {
        const size_t n = strlen(lits[i]);
        if ((size_t)(end - p) >= n && memcmp(p, lits[i], n) == 0)
            return p + n;
    }
    return NULL;
}

static inline int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Four hex digits at p (caller checked the bounds); -1 when not hex. */
static inline long hex4(const char *p)
{
    const int a = hexval(p[0]), b = hexval(p[1]), c = hexval(p[2]), d = hexval(p[3]);
    if ((a | b | c | d) < 0)
        return -1;
    return (long)a << 12 | b << 8 | c << 4 | d;
}

/* Output of an unescape: bytes past cap are counted, not written. */
struct sink {
    char *dst;
    size_t cap;
    size_t len; /* logical length, may exceed cap */
    char last;  /* last logical byte */
};

static inline void emit(struct sink *s, const char *src, size_t n)
{
    if (n == 0)
        return;
    if (s->len < s->cap) {
        const size_t room = s->cap - s->len;
        memcpy(s->dst + s->len, src, n < room ? n : room);
    }
    s->len += n;
    s->last = src[n - 1];
}

static inline void emit_cp(struct sink *s, long cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | cp >> 6);
        b[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | cp >> 12);
        b[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | cp >> 18);
        b[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        b[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    emit(s, b, n);
}

/* Unescapes the string whose content starts at p (after the opening quote)
 * into s; returns the byte after the closing quote, or NULL. */
static const char *unescape(const char *p, const char *end, struct sink *s)
{
    const char *q = NULL; /* first '"' at or after p, cached across escapes */
    for (;;) {
        if (!q || q < p) {
            q = memchr(p, '"', (size_t)(end - p));
            if (!q)
                return NULL;
        }
        const char *b = memchr(p, '\\', (size_t)(q - p));
        if (!b) {
            emit(s, p, (size_t)(q - p));
            return q + 1;
        }
        emit(s, p, (size_t)(b - p));
        p = b + 1; /* p < end: q lies after b */
        char c = *p++;
        switch (c) {
        case '"':
        case '\\':
        case '/':
            break;
        case 'b':
            c = '\b';
            break;
        case 'f':
            c = '\f';
            break;
        case 'n':
            c = '\n';
            break;
        case 'r':
            c = '\r';
            break;
        case 't':
            c = '\t';
            break;
        case 'u': {
            if (end - p < 4)
                return NULL;
            long cp = hex4(p);
            if (cp < 0)
                return NULL;
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                long lo = -1;
                if (end - p >= 6 && p[0] == '\\' && p[1] == 'u')
                    lo = hex4(p + 2);
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                } else {
                    cp = 0xFFFD; /* lone high surrogate; what follows is read on its own */
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                cp = 0xFFFD; /* lone low surrogate */
            }
            emit_cp(s, cp);
            continue;
        }
        default:
            return NULL;
        }
        emit(s, &c, 1);
    }
}

/* Length <= n of dst[0..n) that does not end inside a UTF-8 sequence. */
static size_t utf8_cut(const char *dst, size_t n)
{
    size_t j = n;
    /* Walk back over at most 3 continuation bytes to the lead byte. */
    while (j > 0 && n - j < 3 && ((unsigned char)dst[j - 1] & 0xC0) == 0x80)
        j--;
    if (j == 0)
        return n;
    const unsigned char lead = (unsigned char)dst[j - 1];
    size_t need;
    if (lead >= 0xF0)
        need = 4;
    else if (lead >= 0xE0)
        need = 3;
    else if (lead >= 0xC0)
        need = 2;
    else
        return n; /* ASCII or a stray continuation byte: nothing to protect */
    return (n - (j - 1)) < need ? j - 1 : n;
}

static inline bool key_is(const char *k, size_t klen, const char *name, size_t nlen)
{
    return klen == nlen && memcmp(k, name, nlen) == 0;
}

int parser_docker_line(const char *line, size_t len, char *dst, size_t dst_cap, struct parser_line *out,
                       bool *truncated)
{
    const char *end = line + len;
    const char *p = skip_ws(line, end);
    struct sink s = {.dst = dst, .cap = dst_cap, .len = 0, .last = 0};
    bool have_log = false, have_time = false;
    enum parser_stream stream = PARSER_STREAM_UNKNOWN;
    int64_t ts = 0;

    *truncated = false;
    if (p >= end || *p != '{')
        return -1;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return -1; /* {}: no "log" */

    for (;;) {
        p = skip_ws(p, end);
        if (p >= end || *p != '"')
            return -1;
        const char *key = p + 1;
        const char *kend = scan_string(key, end);
        if (!kend)
            return -1;
        const size_t klen = (size_t)(kend - key);
        p = skip_ws(kend + 1, end);
        if (p >= end || *p != ':')
            return -1;
        p = skip_ws(p + 1, end);
        if (p >= end)
            return -1;

        if (key_is(key, klen, "log", 3)) {
            if (*p != '"')
                return -1;
            s.len = 0;
            s.last = 0;
            p = unescape(p + 1, end, &s);
            if (!p)
                return -1;
            have_log = true;
        } else if (key_is(key, klen, "stream", 6) || key_is(key, klen, "time", 4)) {
            if (*p != '"')
                return -1;
            const char *v = p + 1;
            const char *vend = scan_string(v, end);
            if (!vend)
                return -1;
            const size_t vlen = (size_t)(vend - v);
            if (klen == 4) {
                if (parser_rfc3339(v, vlen, &ts) != 0)
                    return -1;
                have_time = true;
            } else if (vlen == 6 && memcmp(v, "stdout", 6) == 0) {
                stream = PARSER_STREAM_STDOUT;
            } else if (vlen == 6 && memcmp(v, "stderr", 6) == 0) {
                stream = PARSER_STREAM_STDERR;
            } else {
                return -1;
            }
            p = vend + 1;
        } else {
            p = skip_value(p, end);
            if (!p)
                return -1;
        }

        p = skip_ws(p, end);
        if (p >= end)
            return -1;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p == '}') {
            p++;
            break;
        }
        return -1;
    }
    if (skip_ws(p, end) != end || !have_log || !have_time || stream == PARSER_STREAM_UNKNOWN)
        return -1;

    size_t n = s.len;
    out->partial = true;
    if (n > 0 && s.last == '\n') {
        n--;
        out->partial = false;
    }
    if (n > dst_cap) {
        *truncated = true;
        n = utf8_cut(dst, dst_cap);
    }
    out->ts_ns = ts;
    out->content = dst;
    out->content_len = n;
    out->stream = stream;
    return 0;
}
