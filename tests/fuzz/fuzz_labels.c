/*
 * libFuzzer harness for loki_render_labels.
 * The input is a list of labels separated by NUL bytes, each "name=value"
 * split at its first '=' (no '=': the whole record is the name, value "").
 * Invariants: with room to spare, up to 64 labels always render; the result
 * is `{n="v", …}` with valid Prometheus names in non-decreasing bytewise
 * order and values that unescape (\\ \" \n only, no raw '"' or newline) to
 * the inputs' values, as a multiset; a buffer one byte short gives 0 and an
 * empty string and never writes past its cap; an exact buffer gives the same
 * string; more than 64 labels give 0.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loki/loki.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_IN 80

static int is_name_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_name_char(char c)
{
    return is_name_start(c) || (c >= '0' && c <= '9');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096) return 0;
    /* NUL-terminated copy: records end at NULs, the last at the end. */
    char *buf = malloc(size + 1);
    if (!buf) abort();
    if (size) memcpy(buf, data, size);
    buf[size] = '\0';

    struct loki_label labels[MAX_IN];
    size_t n = 0;
    for (char *p = buf; p <= buf + size && n < MAX_IN;) {
        char *end = p + strlen(p);
        char *eq = strchr(p, '=');
        if (eq) {
            *eq = '\0';
            labels[n].value = eq + 1;
        } else {
            labels[n].value = "";
        }
        labels[n].name = p;
        n++;
        p = end + 1;
    }

    /* Each input byte renders to at most 2 bytes, plus per-label overhead. */
    const size_t cap = 2 * size + 8 * n + 16;
    char *out = malloc(cap);
    if (!out) abort();
    const size_t len = loki_render_labels(labels, n, out, cap);
    if (n > 64) {
        if (len != 0 || out[0] != '\0') abort();
        goto done;
    }
    if (len == 0 || len >= cap || strlen(out) != len) abort();

    /* Parse it back. */
    char *used = calloc(n ? n : 1, 1);
    char *val = malloc(size + 1);
    if (!used || !val) abort();
    const char *s = out, *prev = NULL;
    size_t prev_len = 0, pairs = 0;
    if (*s++ != '{') abort();
    while (*s != '}') {
        if (pairs > 0 && (*s++ != ',' || *s++ != ' ')) abort();
        const char *name = s;
        if (!is_name_start(*s)) abort();
        while (is_name_char(*s)) s++;
        const size_t name_len = (size_t)(s - name);
        if (prev) {
            const size_t m = prev_len < name_len ? prev_len : name_len;
            const int c = memcmp(prev, name, m);
            if (c > 0 || (c == 0 && prev_len > name_len)) abort();
        }
        prev = name;
        prev_len = name_len;
        if (*s++ != '=' || *s++ != '"') abort();
        size_t vl = 0;
        for (; *s != '"'; s++) {
            if (*s == '\0' || *s == '\n' || vl >= size) abort();
            if (*s == '\\') {
                s++;
                if (*s == 'n') val[vl++] = '\n';
                else if (*s == '\\' || *s == '"') val[vl++] = *s;
                else abort();
            } else {
                val[vl++] = *s;
            }
        }
        s++;
        val[vl] = '\0';
        size_t k = 0;
        while (k < n && (used[k] || strcmp(labels[k].value, val) != 0)) k++;
        if (k == n) abort();
        used[k] = 1;
        pairs++;
    }
    if (s[1] != '\0' || pairs != n) abort();
    free(used);
    free(val);

    /* Exact fit, and one byte short (into an exact-size heap block so ASan
     * sees any write past cap). */
    char *exact = malloc(len + 1);
    if (!exact) abort();
    if (loki_render_labels(labels, n, exact, len + 1) != len || memcmp(exact, out, len + 1) != 0) abort();
    free(exact);
    char *shorter = malloc(len);
    if (!shorter) abort();
    if (loki_render_labels(labels, n, shorter, len) != 0 || shorter[0] != '\0') abort();
    free(shorter);

done:
    free(out);
    free(buf);
    return 0;
}
