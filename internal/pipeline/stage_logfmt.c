/*
 * logfmt — extracts fields from `key=value key="quoted value"` lines:
 * `fields: {name: key}`, as json.
 *
 * A bare value runs to the next space; a quoted one to its closing quote,
 * with \" \\ \n \t \r decoded into the run's arena (an unescaped one points
 * into the line). A key without `=` has an empty value. The first
 * occurrence of a key wins. An unterminated quote, an unknown escape or a
 * pair with no key (`=x`) makes the line malformed: it passes unchanged
 * with no field set and is counted in the stage's errors.
 */
#include <stdlib.h>
#include <string.h>

#include "stage.h"

struct logfmt_conf {
    struct stage_fieldmap fm;
    size_t srclen[STAGE_MAX_FIELDS];
};

static bool is_space(char c) { return c == ' ' || c == '\t'; }

static enum stage_verdict logfmt_process(const struct stage *st, void *state, struct stage_run *r)
{
    (void)state;
    const struct logfmt_conf *lc = st->conf;
    const char *p, *end;
    size_t len;
    if (!stage_input(r, lc->fm.source, &p, &len)) return STAGE_PASS;
    end = p + len;
    uint64_t set = 0;
    bool ok = true;
    while (ok) {
        while (p < end && is_space(*p)) p++;
        if (p >= end) break;
        const char *key = p;
        while (p < end && !is_space(*p) && *p != '=' && *p != '"') p++;
        size_t klen = (size_t)(p - key);
        const char *val = p;
        size_t vlen = 0;
        bool esc = false;
        if (klen == 0) {
            ok = false;
            break;
        }
        if (p < end && *p == '"') { /* a quote inside a key */
            ok = false;
            break;
        }
        if (p < end && *p == '=') {
            p++;
            if (p < end && *p == '"') {
                val = ++p;
                for (;;) {
                    if (p >= end) {
                        ok = false;
                        break;
                    }
                    if (*p == '\\') {
                        esc = true;
                        if (p + 1 >= end) {
                            ok = false;
                            break;
                        }
                        p += 2;
                        continue;
                    }
                    if (*p == '"') break;
                    p++;
                }
                if (!ok) break;
                vlen = (size_t)(p - val);
                p++; /* the closing quote */
                if (p < end && !is_space(*p)) {
                    ok = false;
                    break;
                }
            } else {
                val = p;
                while (p < end && !is_space(*p)) p++;
                vlen = (size_t)(p - val);
            }
        }
        for (size_t f = 0; f < lc->fm.n; f++) {
            if ((set & (1ULL << f)) || lc->srclen[f] != klen || memcmp(lc->fm.src[f], key, klen) != 0) continue;
            const char *v = val;
            size_t vl = vlen;
            if (esc) {
                char *out = stage_arena(r, vlen);
                if (!out) {
                    ok = false;
                    break;
                }
                size_t o = 0;
                for (size_t i = 0; i < vlen && ok; i++) {
                    if (val[i] != '\\') {
                        out[o++] = val[i];
                        continue;
                    }
                    char c = val[++i];
                    switch (c) {
                    case '"': case '\\': out[o++] = c; break;
                    case 'n': out[o++] = '\n'; break;
                    case 't': out[o++] = '\t'; break;
                    case 'r': out[o++] = '\r'; break;
                    default: ok = false;
                    }
                }
                v = out;
                vl = o;
            }
            if (!ok) break;
            stage_set(r, (size_t)lc->fm.slot[f], v, vl);
            set |= 1ULL << f;
        }
    }
    if (!ok) {
        for (size_t f = 0; f < lc->fm.n; f++)
            if (set & (1ULL << f)) r->gen[lc->fm.slot[f]] = 0;
        stage_note(r, &((struct stage *)st)->counters.errors, 1);
    }
    return STAGE_PASS;
}

static int logfmt_compile(struct stage *st, const struct config_tree *node, struct stage_compile *cx)
{
    struct logfmt_conf *lc = calloc(1, sizeof *lc);
    if (!lc) return stage_fail(cx, node, NULL, "out of memory");
    st->conf = lc;
    if (stage_fieldmap(cx, node, &lc->fm) != 0) return -1;
    for (size_t f = 0; f < lc->fm.n; f++) lc->srclen[f] = strlen(lc->fm.src[f]);
    return 0;
}

static void logfmt_print(const struct stage *st, FILE *out)
{
    const struct logfmt_conf *lc = st->conf;
    stage_fieldmap_print(st, &lc->fm, out);
}

static void logfmt_free(struct stage *st)
{
    struct logfmt_conf *lc = st->conf;
    if (!lc) return;
    stage_fieldmap_free(&lc->fm);
    free(lc);
}

const struct stage_ops stage_logfmt = {
    .name = "logfmt", .compile = logfmt_compile, .process = logfmt_process, .print = logfmt_print,
    .free = logfmt_free,
};
