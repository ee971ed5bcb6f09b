/*
 * json — extracts fields from a JSON object line: `fields: {name: path}`,
 * where a path is a key, or keys joined by dots for nested objects
 * (`fields: {user: req.user.id}`).
 *
 * One pass over the line, no allocation: a string value without escapes
 * points into the line; one with escapes is decoded (\uXXXX and surrogate
 * pairs to UTF-8) into the run's arena; numbers, booleans, objects and
 * arrays are taken as their JSON text; null counts as absent. The first
 * occurrence of a duplicated key wins.
 *
 * A line that is not a JSON object, or is malformed anywhere (a lone
 * surrogate, a control character in a string, trailing garbage, nesting
 * deeper than 64), passes unchanged with no field set, and is counted in
 * the stage's errors.
 */
#include <stdlib.h>
#include <string.h>

#include "stage.h"

#define JSON_MAX_DEPTH 64
#define JSON_MAX_COMPONENTS 8

struct json_conf {
    struct stage_fieldmap fm;
    /* Each path cut at its dots: comp[i][k] of length clen[i][k]. */
    const char *comp[STAGE_MAX_FIELDS][JSON_MAX_COMPONENTS];
    size_t clen[STAGE_MAX_FIELDS][JSON_MAX_COMPONENTS];
    size_t ncomp[STAGE_MAX_FIELDS];
};

struct jp {
    const char *p, *end;
    struct stage_run *r;
    const struct json_conf *jc;
    uint64_t set; /* fields set by this line, to undo on error */
};

static void ws(struct jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

/* At '"': the raw contents up to the closing quote; *esc when it holds
 * escapes. One pass: the quote, escapes, and control characters (which
 * JSON forbids unescaped) are found in the same loop. */
static bool raw_string(struct jp *j, const char **s, size_t *len, bool *esc)
{
    const unsigned char *p = (const unsigned char *)j->p + 1, *end = (const unsigned char *)j->end;
    bool escaped = false;
    *s = (const char *)p;
    for (; p < end; p++) {
        unsigned char c = *p;
        if (c > '\\' || (c > '"' && c < '\\')) continue; /* the common case: nothing to look at */
        if (c == '"') {
            *len = (size_t)((const char *)p - *s);
            *esc = escaped;
            j->p = (const char *)p + 1;
            return true;
        }
        if (c == '\\') {
            escaped = true;
            if (++p >= end) return false;
            continue;
        }
        if (c < 0x20) return false;
    }
    return false;
}

static int hex4(const char *s)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    return v;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes escapes of s[0..len) into out (at most len bytes: every escape
 * is at least as long as what it stands for). Returns the length, or -1. */
static long unescape(const char *s, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '\\') {
            out[o++] = s[i];
            continue;
        }
        if (++i >= len) return -1;
        switch (s[i]) {
        case '"': out[o++] = '"'; break;
        case '\\': out[o++] = '\\'; break;
        case '/': out[o++] = '/'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            if (len - i < 5) return -1;
            int hi = hex4(s + i + 1);
            if (hi < 0) return -1;
            i += 4;
            unsigned cp = (unsigned)hi;
            if (hi >= 0xD800 && hi <= 0xDBFF) {
                if (len - i < 7 || s[i + 1] != '\\' || s[i + 2] != 'u') return -1;
                int lo = hex4(s + i + 3);
                if (lo < 0xDC00 || lo > 0xDFFF) return -1;
                cp = 0x10000 + (((unsigned)hi - 0xD800) << 10) + ((unsigned)lo - 0xDC00);
                i += 6;
            } else if (hi >= 0xDC00 && hi <= 0xDFFF) {
                return -1;
            }
            o += put_utf8(out + o, cp);
            break;
        }
        default:
            return -1;
        }
    }
    return (long)o;
}

static bool skip_value(struct jp *j, int depth);

static bool skip_container(struct jp *j, int depth, char close)
{
    j->p++;
    ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        return true;
    }
    for (;;) {
        if (close == '}') {
            const char *s;
            size_t len;
            bool esc;
            ws(j);
            if (j->p >= j->end || *j->p != '"' || !raw_string(j, &s, &len, &esc)) return false;
            ws(j);
            if (j->p >= j->end || *j->p++ != ':') return false;
        }
        ws(j);
        if (!skip_value(j, depth + 1)) return false;
        ws(j);
        if (j->p >= j->end) return false;
        if (*j->p == ',') {
            j->p++;
            continue;
        }
        if (*j->p++ == close) return true;
        return false;
    }
}

static bool literal(struct jp *j, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0) return false;
    j->p += n;
    return true;
}

static bool skip_value(struct jp *j, int depth)
{
    if (depth > JSON_MAX_DEPTH || j->p >= j->end) return false;
    char c = *j->p;
    if (c == '{') return skip_container(j, depth, '}');
    if (c == '[') return skip_container(j, depth, ']');
    if (c == '"') {
        const char *s;
        size_t len;
        bool esc;
        return raw_string(j, &s, &len, &esc);
    }
    if (c == 't') return literal(j, "true");
    if (c == 'f') return literal(j, "false");
    if (c == 'n') return literal(j, "null");
    if (c == '-' || (c >= '0' && c <= '9')) {
        const char *start = j->p;
        if (*j->p == '-') j->p++;
        while (j->p < j->end && ((*j->p >= '0' && *j->p <= '9') || *j->p == '.' || *j->p == 'e' || *j->p == 'E' ||
                                 *j->p == '+' || *j->p == '-'))
            j->p++;
        return j->p > start + (*start == '-');
    }
    return false;
}

static bool capture(struct jp *j, int depth, size_t f)
{
    size_t slot = (size_t)j->jc->fm.slot[f];
    if (*j->p == '"') {
        const char *s;
        size_t len;
        bool esc;
        if (!raw_string(j, &s, &len, &esc)) return false;
        if (esc) {
            char *out = stage_arena(j->r, len);
            long n = out ? unescape(s, len, out) : -1;
            if (n < 0) return false;
            s = out;
            len = (size_t)n;
        }
        stage_set(j->r, slot, s, len);
    } else {
        const char *start = j->p;
        if (!skip_value(j, depth)) return false;
        if (!(j->p - start == 4 && memcmp(start, "null", 4) == 0)) stage_set(j->r, slot, start, (size_t)(j->p - start));
    }
    j->set |= 1ULL << f;
    return true;
}

static bool key_is(const char *key, size_t klen, bool esc, const char *want, size_t wlen)
{
    if (!esc) return klen == wlen && memcmp(key, want, wlen) == 0;
    char buf[256];
    if (klen > sizeof buf) return false;
    long n = unescape(key, klen, buf);
    return n == (long)wlen && memcmp(buf, want, wlen) == 0;
}

static bool object(struct jp *j, int depth, size_t level, uint64_t mask)
{
    if (depth > JSON_MAX_DEPTH) return false;
    j->p++; /* '{' */
    ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        return true;
    }
    for (;;) {
        const char *key;
        size_t klen;
        bool esc;
        ws(j);
        if (j->p >= j->end || *j->p != '"' || !raw_string(j, &key, &klen, &esc)) return false;
        ws(j);
        if (j->p >= j->end || *j->p++ != ':') return false;
        ws(j);
        if (j->p >= j->end) return false;
        uint64_t deeper = 0;
        long take = -1;
        for (size_t f = 0; f < j->jc->fm.n; f++) {
            if (!(mask & (1ULL << f)) || (j->set & (1ULL << f))) continue;
            if (!key_is(key, klen, esc, j->jc->comp[f][level], j->jc->clen[f][level])) continue;
            if (j->jc->ncomp[f] == level + 1) {
                if (take < 0) take = (long)f; /* two names for one path: the others copy it below */
            } else {
                deeper |= 1ULL << f;
            }
        }
        bool ok;
        if (take >= 0) {
            ok = capture(j, depth + 1, (size_t)take);
            /* Other fields naming the same path get the same value. */
            for (size_t f = (size_t)take + 1; ok && f < j->jc->fm.n; f++) {
                if (!(mask & (1ULL << f)) || j->jc->ncomp[f] != level + 1 ||
                    !key_is(key, klen, esc, j->jc->comp[f][level], j->jc->clen[f][level]))
                    continue;
                const char *v;
                size_t vl;
                if (stage_get(j->r, (size_t)j->jc->fm.slot[take], &v, &vl)) stage_set(j->r, (size_t)j->jc->fm.slot[f], v, vl);
                j->set |= 1ULL << f;
            }
        } else if (deeper && *j->p == '{') {
            ok = object(j, depth + 1, level + 1, deeper);
        } else {
            ok = skip_value(j, depth + 1);
        }
        if (!ok) return false;
        ws(j);
        if (j->p >= j->end) return false;
        if (*j->p == ',') {
            j->p++;
            continue;
        }
        if (*j->p++ == '}') return true;
        return false;
    }
}

static enum stage_verdict json_process(const struct stage *st, void *state, struct stage_run *r)
{
    (void)state;
    const struct json_conf *jc = st->conf;
    const char *text;
    size_t len;
    if (!stage_input(r, jc->fm.source, &text, &len)) return STAGE_PASS;
    struct jp j = {.p = text, .end = text + len, .r = r, .jc = jc};
    ws(&j);
    bool ok = j.p < j.end && *j.p == '{' && object(&j, 0, 0, (jc->fm.n >= 64 ? ~0ULL : (1ULL << jc->fm.n) - 1));
    if (ok) {
        ws(&j);
        ok = j.p == j.end;
    }
    if (!ok) {
        for (size_t f = 0; f < jc->fm.n; f++)
            if (j.set & (1ULL << f)) r->gen[jc->fm.slot[f]] = 0;
        stage_note(r, &((struct stage *)st)->counters.errors, 1);
    }
    return STAGE_PASS;
}

static int json_compile(struct stage *st, const struct config_tree *node, struct stage_compile *cx)
{
    struct json_conf *jc = calloc(1, sizeof *jc);
    if (!jc) return stage_fail(cx, node, NULL, "out of memory");
    st->conf = jc;
    if (stage_fieldmap(cx, node, &jc->fm) != 0) return -1;
    for (size_t f = 0; f < jc->fm.n; f++) {
        const char *p = jc->fm.src[f];
        size_t k = 0;
        for (;;) {
            const char *dot = strchr(p, '.');
            size_t n = dot ? (size_t)(dot - p) : strlen(p);
            if (n == 0 || k == JSON_MAX_COMPONENTS)
                return stage_fail(cx, config_tree_get(node, "fields"), "fields",
                                  "'%s' is not a path (keys joined by dots, at most %d deep)", jc->fm.src[f],
                                  JSON_MAX_COMPONENTS);
            jc->comp[f][k] = p;
            jc->clen[f][k++] = n;
            if (!dot) break;
            p = dot + 1;
        }
        jc->ncomp[f] = k;
    }
    return 0;
}

static void json_print(const struct stage *st, FILE *out)
{
    const struct json_conf *jc = st->conf;
    stage_fieldmap_print(st, &jc->fm, out);
}

static void json_free(struct stage *st)
{
    struct json_conf *jc = st->conf;
    if (!jc) return;
    stage_fieldmap_free(&jc->fm);
    free(jc);
}

const struct stage_ops stage_json = {
    .name = "json", .compile = json_compile, .process = json_process, .print = json_print, .free = json_free,
};
