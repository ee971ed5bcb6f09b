/*
 * labels — renders a label set the way Loki and Promtail write it:
 * `{a="1", b="2"}`, names sorted bytewise, values quoted.
 *
 * Names are sanitised on the fly, never copied: every character outside
 * [a-zA-Z0-9_] becomes one '_' (a character is one valid UTF-8 sequence, or
 * one byte of an invalid one — as Prometheus' SanitizeLabelName regexp sees
 * it), a leading digit gets a '_' prefix, and an empty (or NULL) name renders
 * as "_". Sorting compares the sanitised names, so the output is sorted.
 *
 * Values escape only \\ \" and \n (the escapes Loki's label parser needs);
 * every other byte, including UTF-8 and tabs, passes through. A NULL value
 * renders as "". Duplicate names are rendered as given (in input order);
 * rejecting them is Loki's business.
 *
 * No allocation: the sort is an insertion sort of an index array on the
 * stack, so at most LABELS_MAX labels are accepted (Loki's own default limit
 * is 15 per stream); more renders nothing and returns 0.
 */
#include <stdint.h>
#include <string.h>

#include "loki/loki.h"

#define LABELS_MAX 64

/* Length of the valid UTF-8 sequence (RFC 3629: no overlongs, no
 * surrogates, at most U+10FFFF) starting at p, or 1 when it is invalid. */
static size_t utf8_seq_len(const unsigned char *p)
{
    const unsigned char c = p[0];
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return (p[1] & 0xC0) == 0x80 ? 2 : 1;
    if (c >= 0xE0 && c <= 0xEF) {
        const unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        if (p[1] < lo || p[1] > hi) return 1;
        return (p[2] & 0xC0) == 0x80 ? 3 : 1;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        const unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        if (p[1] < lo || p[1] > hi) return 1;
        if ((p[2] & 0xC0) != 0x80) return 1;
        return (p[3] & 0xC0) == 0x80 ? 4 : 1;
    }
    return 1;
}

static int is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Walks the sanitised form of a name one character at a time. The short
 * circuits in utf8_seq_len stop at the NUL, so it never reads past it. */
struct name_iter {
    const unsigned char *p;
    int started;
};

static void name_iter_init(struct name_iter *it, const char *name)
{
    it->p = (const unsigned char *)(name ? name : "");
    it->started = 0;
}

/* Next character of the sanitised name, or -1 at its end. */
static int name_next(struct name_iter *it)
{
    if (!it->started) {
        it->started = 1;
        if (*it->p == '\0' || (*it->p >= '0' && *it->p <= '9')) return '_';
    }
    const unsigned char c = *it->p;
    if (c == '\0') return -1;
    if (is_name_char(c)) {
        it->p++;
        return c;
    }
    it->p += utf8_seq_len(it->p);
    return '_';
}

int loki_label_name_cmp(const char *a, const char *b)
{
    struct name_iter ia, ib;
    name_iter_init(&ia, a);
    name_iter_init(&ib, b);
    for (;;) {
        const int ca = name_next(&ia), cb = name_next(&ib);
        if (ca != cb) return ca < cb ? -1 : 1;
        if (ca < 0) return 0;
    }
}

size_t loki_sanitise_label_name(const char *name, char *dst, size_t cap)
{
    struct name_iter it;
    name_iter_init(&it, name);
    size_t n = 0;
    for (int c; (c = name_next(&it)) >= 0;) {
        if (n + 1 >= cap) {
            if (cap > 0) dst[0] = '\0';
            return 0;
        }
        dst[n++] = (char)c;
    }
    if (cap == 0) return 0;
    dst[n] = '\0';
    return n;
}

bool loki_label_name_reserved(const char *name)
{
    struct name_iter it;
    name_iter_init(&it, name);
    return name_next(&it) == '_' && name_next(&it) == '_';
}

bool loki_structured_name_agents(const char *name)
{
    return loki_label_name_cmp(name, LOKI_META_POD_UID) == 0 || loki_label_name_cmp(name, LOKI_META_CONTAINER_ID) == 0;
}

size_t loki_render_labels(const struct loki_label *labels, size_t n, char *dst, size_t cap)
{
    if (cap > 0) dst[0] = '\0';
    if (n > LABELS_MAX || (n > 0 && !labels)) return 0;

    /* Stable insertion sort of indices by sanitised name. */
    uint8_t order[LABELS_MAX];
    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        while (j > 0 && loki_label_name_cmp(labels[order[j - 1]].name, labels[i].name) > 0) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = (uint8_t)i;
    }

    /* Every write goes through PUT, which bails out when the byte and the
     * final NUL would not both fit. */
    size_t len = 0;
#define PUT(ch)                                 \
    do {                                        \
        if (len + 1 >= cap) goto too_small;     \
        dst[len++] = (char)(ch);                \
    } while (0)

    PUT('{');
    for (size_t k = 0; k < n; k++) {
        const struct loki_label *l = &labels[order[k]];
        if (k > 0) {
            PUT(',');
            PUT(' ');
        }
        struct name_iter it;
        name_iter_init(&it, l->name);
        for (int c; (c = name_next(&it)) >= 0;)
            PUT(c);
        PUT('=');
        PUT('"');
        for (const char *v = l->value ? l->value : ""; *v; v++) {
            switch (*v) {
            case '\\': PUT('\\'); PUT('\\'); break;
            case '"':  PUT('\\'); PUT('"'); break;
            case '\n': PUT('\\'); PUT('n'); break;
            default:   PUT(*v); break;
            }
        }
        PUT('"');
    }
    PUT('}');
#undef PUT
    dst[len] = '\0';
    return len;

too_small:
    if (cap > 0) dst[0] = '\0';
    return 0;
}
