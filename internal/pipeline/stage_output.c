/*
 * output — replaces the line with a field (`output: {source: msg}`), e.g.
 * the message of a JSON line once its level went to a label. An entry
 * without the field keeps its line. The line then points at the value (in
 * the old line or the arena): nothing is copied, and every other field
 * stays valid for the stages after it.
 */
#include <stdlib.h>
#include <string.h>

#include "stage.h"

struct output_conf {
    int field;
};

static enum stage_verdict output_process(const struct stage *st, void *state, struct stage_run *r)
{
    (void)state;
    const struct output_conf *oc = st->conf;
    const char *v;
    size_t len;
    if (stage_get(r, (size_t)oc->field, &v, &len)) {
        r->e.line = (char *)v;
        r->e.len = len;
    }
    return STAGE_PASS;
}

static int output_compile(struct stage *st, const struct config_tree *node, struct stage_compile *cx)
{
    static const char *const keys[] = {"source", NULL};
    struct output_conf *oc = calloc(1, sizeof *oc);
    if (!oc) return stage_fail(cx, node, NULL, "out of memory");
    st->conf = oc;
    if (node->kind != CONFIG_TREE_MAP) return stage_fail(cx, node, NULL, "expected {source: FIELD}");
    if (stage_check_keys(cx, node, keys) != 0) return -1;
    bool bad = false;
    const char *source = stage_scalar(cx, node, "source", &bad);
    if (bad) return -1;
    if (!source || !*source) return stage_fail(cx, node, "source", "missing: the field that becomes the line");
    if ((oc->field = stage_field(cx, config_tree_get(node, "source"), source)) < 0) return -1;
    return 0;
}

static void output_print(const struct stage *st, FILE *out)
{
    const struct output_conf *oc = st->conf;
    fputs("{source: ", out);
    stage_print_string(out, st->block->fields[oc->field], strlen(st->block->fields[oc->field]));
    fputc('}', out);
}

static void output_free(struct stage *st) { free(st->conf); }

const struct stage_ops stage_output = {
    .name = "output", .compile = output_compile, .process = output_process, .print = output_print,
    .free = output_free,
};
