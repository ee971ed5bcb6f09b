/*
 * regex — extracts the named groups of a PCRE2 pattern as fields
 * (`regex: {expression: '^(?P<level>\w+) (?P<msg>.*)$'}`), compiled once
 * with JIT. A line that does not match passes with nothing extracted; one
 * that hits the match limit (a pattern too slow for it) passes too and is
 * counted in the stage's errors. An unset optional group is absent.
 */
#include <stdlib.h>
#include <string.h>

#include "stage.h"

struct regex_conf {
    pcre2_code *re;
    char *text;
    int source;
    size_t ngroups;
    uint32_t group[STAGE_MAX_FIELDS]; /* capture number */
    int slot[STAGE_MAX_FIELDS];
};

static enum stage_verdict regex_process(const struct stage *st, void *state, struct stage_run *r)
{
    (void)state;
    const struct regex_conf *rc = st->conf;
    const char *text;
    size_t len;
    if (!stage_input(r, rc->source, &text, &len)) return STAGE_PASS;
    int n = pcre2_match(rc->re, (PCRE2_SPTR)text, len, 0, 0, r->p->md, r->p->mctx);
    if (n == PCRE2_ERROR_MATCHLIMIT || n == PCRE2_ERROR_DEPTHLIMIT || n == PCRE2_ERROR_HEAPLIMIT) {
        stage_note(r, &((struct stage *)st)->counters.errors, 1);
        return STAGE_PASS;
    }
    if (n < 0) return STAGE_PASS;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->p->md);
    uint32_t pairs = pcre2_get_ovector_count(r->p->md);
    for (size_t g = 0; g < rc->ngroups; g++) {
        uint32_t k = rc->group[g];
        if (k >= pairs || ov[2 * k] == PCRE2_UNSET) continue;
        stage_set(r, (size_t)rc->slot[g], text + ov[2 * k], ov[2 * k + 1] - ov[2 * k]);
    }
    return STAGE_PASS;
}

static int regex_compile(struct stage *st, const struct config_tree *node, struct stage_compile *cx)
{
    static const char *const keys[] = {"expression", "source", NULL};
    struct regex_conf *rc = calloc(1, sizeof *rc);
    if (!rc) return stage_fail(cx, node, NULL, "out of memory");
    st->conf = rc;
    rc->source = -1;
    if (node->kind != CONFIG_TREE_MAP) return stage_fail(cx, node, NULL, "expected a mapping with expression");
    if (stage_check_keys(cx, node, keys) != 0) return -1;
    bool bad = false;
    const char *expr = stage_scalar(cx, node, "expression", &bad);
    const char *source = stage_scalar(cx, node, "source", &bad);
    if (bad) return -1;
    if (!expr || !*expr) return stage_fail(cx, node, "expression", "missing: a pattern with named groups");
    if (source && (rc->source = stage_field(cx, config_tree_get(node, "source"), source)) < 0) return -1;
    const struct config_tree *en = config_tree_get(node, "expression");
    if (!(rc->text = strdup(expr))) return stage_fail(cx, en, "expression", "out of memory");
    if (!(rc->re = stage_regex(cx, en, "expression", expr))) return -1;
    uint32_t count = 0, entry_size = 0;
    PCRE2_SPTR table;
    pcre2_pattern_info(rc->re, PCRE2_INFO_NAMECOUNT, &count);
    pcre2_pattern_info(rc->re, PCRE2_INFO_NAMEENTRYSIZE, &entry_size);
    pcre2_pattern_info(rc->re, PCRE2_INFO_NAMETABLE, &table);
    uint32_t captures = 0;
    pcre2_pattern_info(rc->re, PCRE2_INFO_CAPTURECOUNT, &captures);
    if (captures >= 64) return stage_fail(cx, en, "expression", "more than 63 capture groups");
    if (count == 0) return stage_fail(cx, en, "expression", "has no named group (?P<name>...): it would extract nothing");
    if (count > STAGE_MAX_FIELDS) return stage_fail(cx, en, "expression", "too many named groups");
    for (uint32_t i = 0; i < count; i++) {
        const unsigned char *e = table + i * entry_size;
        rc->group[i] = ((uint32_t)e[0] << 8) | e[1];
        int slot = stage_field_set(cx, en, (const char *)e + 2);
        if (slot < 0) return -1;
        rc->slot[i] = slot;
    }
    rc->ngroups = count;
    return 0;
}

static void regex_print(const struct stage *st, FILE *out)
{
    const struct regex_conf *rc = st->conf;
    fputs("{expression: ", out);
    stage_print_string(out, rc->text, strlen(rc->text));
    if (rc->source >= 0) {
        fputs(", source: ", out);
        stage_print_string(out, st->block->fields[rc->source], strlen(st->block->fields[rc->source]));
    }
    fputc('}', out);
}

static void regex_free(struct stage *st)
{
    struct regex_conf *rc = st->conf;
    if (!rc) return;
    pcre2_code_free(rc->re);
    free(rc->text);
    free(rc);
}

const struct stage_ops stage_regex_ops = {
    .name = "regex", .compile = regex_compile, .process = regex_process, .print = regex_print, .free = regex_free,
};
