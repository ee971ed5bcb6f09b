/*
 * drop — discards entries: `line: RE` (the line matches), `older_than: 6h`
 * (its timestamp is older than that when read), `longer_than: 1MiB`, and
 * `source: FIELD` with `value: X` (the field equals X) or `expression: RE`
 * (the field matches). Each condition is a reason on its own: an entry is
 * dropped when any of them holds (Promtail's drop needs all of them; one
 * drop stage per reason reads better and counts better).
 *
 * A dropped entry is acknowledged like a delivered one and counted in
 * loglet_pipeline_dropped_total{reason=line|older_than|longer_than|value}.
 * A pattern over its match limit does not drop (counted in errors).
 */
#include <stdlib.h>
#include <string.h>

#include "stage.h"

enum { R_LINE, R_OLDER, R_LONGER, R_VALUE };
static const char *const reasons[] = {"line", "older_than", "longer_than", "value", NULL};

struct drop_conf {
    pcre2_code *line, *expr;
    char *line_text, *expr_text, *value;
    int source;
    int64_t older_than_ms, longer_than;
};

static bool matches(const struct stage *st, pcre2_code *re, const char *s, size_t len, struct stage_run *r)
{
    int rc = pcre2_match(re, (PCRE2_SPTR)s, len, 0, 0, r->p->md, r->p->mctx);
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT)
        stage_note(r, &((struct stage *)st)->counters.errors, 1);
    return rc >= 0;
}

static enum stage_verdict drop_process(const struct stage *st, void *state, struct stage_run *r)
{
    (void)state;
    const struct drop_conf *dc = st->conf;
    if (dc->longer_than && r->e.len > (size_t)dc->longer_than) {
        r->drop_reason = R_LONGER;
        return STAGE_DROP;
    }
    if (dc->older_than_ms) {
        if (r->e.ts_ns < r->now_real_ns - dc->older_than_ms * 1000000) {
            r->drop_reason = R_OLDER;
            return STAGE_DROP;
        }
    }
    if (dc->line && matches(st, dc->line, r->e.line, r->e.len, r)) {
        r->drop_reason = R_LINE;
        return STAGE_DROP;
    }
    if (dc->source >= 0) {
        const char *v;
        size_t len;
        if (stage_get(r, (size_t)dc->source, &v, &len) &&
            ((dc->value && len == strlen(dc->value) && memcmp(v, dc->value, len) == 0) ||
             (dc->expr && matches(st, dc->expr, v, len, r)))) {
            r->drop_reason = R_VALUE;
            return STAGE_DROP;
        }
    }
    return STAGE_PASS;
}

static int drop_compile(struct stage *st, const struct config_tree *node, struct stage_compile *cx)
{
    static const char *const keys[] = {"line", "older_than", "longer_than", "source", "value", "expression", NULL};
    struct drop_conf *dc = calloc(1, sizeof *dc);
    if (!dc) return stage_fail(cx, node, NULL, "out of memory");
    st->conf = dc;
    dc->source = -1;
    if (node->kind != CONFIG_TREE_MAP || node->count == 0)
        return stage_fail(cx, node, NULL, "expected a mapping of conditions (line, older_than, longer_than, source with value or expression)");
    if (stage_check_keys(cx, node, keys) != 0) return -1;
    bool bad = false;
    const char *line = stage_scalar(cx, node, "line", &bad);
    const char *source = stage_scalar(cx, node, "source", &bad);
    const char *value = stage_scalar(cx, node, "value", &bad);
    const char *expr = stage_scalar(cx, node, "expression", &bad);
    if (bad) return -1;
    if (line) {
        if (!(dc->line_text = strdup(line))) return stage_fail(cx, node, "line", "out of memory");
        if (!(dc->line = stage_regex(cx, config_tree_get(node, "line"), "line", line))) return -1;
    }
    if ((value || expr) && !source) return stage_fail(cx, node, value ? "value" : "expression", "needs source: FIELD");
    if (source && !value && !expr) return stage_fail(cx, node, "source", "needs value or expression");
    if (source && (dc->source = stage_field(cx, config_tree_get(node, "source"), source)) < 0) return -1;
    if (value && !(dc->value = strdup(value))) return stage_fail(cx, node, "value", "out of memory");
    if (expr) {
        if (!(dc->expr_text = strdup(expr))) return stage_fail(cx, node, "expression", "out of memory");
        if (!(dc->expr = stage_regex(cx, config_tree_get(node, "expression"), "expression", expr))) return -1;
    }
    if (stage_get_duration(cx, node, "older_than", &dc->older_than_ms) != 0) return -1;
    if (stage_get_size(cx, node, "longer_than", &dc->longer_than) != 0) return -1;
    return 0;
}

static void drop_print(const struct stage *st, FILE *out)
{
    const struct drop_conf *dc = st->conf;
    const char *sep = "";
    fputc('{', out);
    if (dc->line_text) {
        fputs("line: ", out);
        stage_print_string(out, dc->line_text, strlen(dc->line_text));
        sep = ", ";
    }
    if (dc->older_than_ms) {
        fprintf(out, "%solder_than: %lldms", sep, (long long)dc->older_than_ms);
        sep = ", ";
    }
    if (dc->longer_than) {
        fprintf(out, "%slonger_than: %lld", sep, (long long)dc->longer_than);
        sep = ", ";
    }
    if (dc->source >= 0) {
        fprintf(out, "%ssource: ", sep);
        stage_print_string(out, st->block->fields[dc->source], strlen(st->block->fields[dc->source]));
        if (dc->value) {
            fputs(", value: ", out);
            stage_print_string(out, dc->value, strlen(dc->value));
        }
        if (dc->expr_text) {
            fputs(", expression: ", out);
            stage_print_string(out, dc->expr_text, strlen(dc->expr_text));
        }
    }
    fputc('}', out);
}

static void drop_free(struct stage *st)
{
    struct drop_conf *dc = st->conf;
    if (!dc) return;
    pcre2_code_free(dc->line);
    pcre2_code_free(dc->expr);
    free(dc->line_text);
    free(dc->expr_text);
    free(dc->value);
    free(dc);
}

const struct stage_ops stage_drop = {
    .name = "drop", .drop_reasons = reasons, .compile = drop_compile, .process = drop_process,
    .print = drop_print, .free = drop_free,
};
