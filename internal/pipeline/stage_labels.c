/*
 * labels and structured_metadata — what an entry carries besides its line.
 *
 * labels: `{NAME: {values: [..], other: X}}` or `{NAME: {max_values: N,
 * other: X}}`, each from the field NAME (or `source:`). A label's values
 * are bounded, always: a value in the allow-list (or among the first
 * max_values distinct ones this process saw, per block) is used as it is,
 * any other becomes `other` (default "other"); an entry without the field
 * gets no such label, and neither does one whose value is empty (Loki reads
 * an empty label as none), so `other: ""` leaves out-of-list values unlabelled. So one file gives at most prod(values + 1) streams
 * per stream kind, and a node at most that many per file.
 *
 * structured_metadata: `[field, ..]` or `{name: field}`: per-entry name and
 * value pairs sent in Loki's structured metadata (they never make streams);
 * not pod_uid or container_id when the agent sends those itself.
 *
 * Names are Prometheus label names and may not take over a label the agent
 * sets itself (namespace, pod, container, filename, node_name, stream, or
 * a labels.static key).
 */
#include <stdlib.h>
#include <string.h>

#include "loki/loki.h"
#include "stage.h"

struct label_rule {
    size_t slot;   /* block label index */
    int field;     /* field index */
    char **values; /* the allow-list, or the values seen so far (max_values) */
    size_t *vlens;
    size_t nvalues, max_values;
    bool learn; /* max_values: the list fills as values are seen */
    char *other;
};

struct labels_conf {
    struct label_rule rules[STAGE_MAX_LABELS];
    size_t n;
};

static const char *const reserved[] = {"namespace", "pod", "container", "filename", "node_name", "stream", NULL};

static int check_name(struct stage_compile *cx, const struct config_tree *node, const char *name)
{
    bool ok = (name[0] == '_' || (name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z'));
    for (const char *p = name; *p && ok; p++)
        ok = *p == '_' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9');
    if (!ok) return stage_fail(cx, node, name, "not a label name ([a-zA-Z_][a-zA-Z0-9_]*)");
    if (strncmp(name, "__", 2) == 0) return stage_fail(cx, node, name, "names starting with __ are reserved");
    for (const char *const *r = reserved; *r; r++)
        if (strcmp(*r, name) == 0) return stage_fail(cx, node, name, "the agent sets this label itself");
    const struct config_strmap *st = &cx->cfg->labels.static_labels;
    for (size_t i = 0; i < st->count; i++)
        if (strcmp(st->keys[i], name) == 0) return stage_fail(cx, node, name, "already a labels.static label");
    return 0;
}

static int intern(struct stage_compile *cx, const struct config_tree *node, char **names, size_t *n, size_t max,
                  const char *name)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(names[i], name) == 0) return (int)i;
    if (*n == max) return stage_fail(cx, node, name, "more than %zu in one match block", max);
    if (!(names[*n] = strdup(name))) return stage_fail(cx, node, name, "out of memory");
    return (int)(*n)++;
}

static enum stage_verdict labels_process(const struct stage *st, void *state, struct stage_run *r)
{
    (void)state;
    struct labels_conf *lc = st->conf;
    for (size_t i = 0; i < lc->n; i++) {
        struct label_rule *lr = &lc->rules[i];
        const char *v;
        size_t len;
        if (!stage_get(r, (size_t)lr->field, &v, &len)) continue;
        const char *out = lr->other;
        size_t olen = strlen(lr->other);
        for (size_t k = 0; k < lr->nvalues; k++)
            if (lr->vlens[k] == len && memcmp(lr->values[k], v, len) == 0) {
                out = lr->values[k];
                olen = len;
                break;
            }
        /* max_values: a new value takes a place while there is one (one
         * allocation per distinct value, at most max_values per rule). */
        if (out == lr->other && lr->learn && lr->nvalues < lr->max_values && len <= 1024 &&
            (lr->values[lr->nvalues] = malloc(len + 1))) {
            memcpy(lr->values[lr->nvalues], v, len);
            lr->values[lr->nvalues][len] = '\0';
            lr->vlens[lr->nvalues] = len;
            out = lr->values[lr->nvalues++];
            olen = len;
        }
        r->label_val[lr->slot] = out;
        r->label_len[lr->slot] = olen;
        r->label_set[lr->slot] = true;
    }
    return STAGE_PASS;
}

static int labels_compile(struct stage *st, const struct config_tree *node, struct stage_compile *cx)
{
    static const char *const keys[] = {"values", "max_values", "other", "source", NULL};
    struct labels_conf *lc = calloc(1, sizeof *lc);
    if (!lc) return stage_fail(cx, node, NULL, "out of memory");
    st->conf = lc;
    if (node->kind != CONFIG_TREE_MAP || node->count == 0)
        return stage_fail(cx, node, NULL, "expected a mapping of label names to {values: [...]} or {max_values: N}");
    for (size_t i = 0; i < node->count; i++) {
        const char *name = node->keys[i];
        const struct config_tree *spec = node->items[i];
        if (check_name(cx, spec, name) != 0) return -1;
        if (lc->n == STAGE_MAX_LABELS) return stage_fail(cx, spec, name, "too many labels");
        struct label_rule *lr = &lc->rules[lc->n++];
        int slot = intern(cx, spec, cx->block->labels, &cx->block->nlabels, STAGE_MAX_LABELS, name);
        if (slot < 0) return -1;
        lr->slot = (size_t)slot;
        if (spec->kind != CONFIG_TREE_MAP)
            return stage_fail(cx, spec, name, "expected {values: [...], other: X} or {max_values: N, other: X}: "
                              "a label's values must be bounded");
        if (stage_check_keys(cx, spec, keys) != 0) return -1;
        bool bad = false;
        const char *other = stage_scalar(cx, spec, "other", &bad);
        const char *source = stage_scalar(cx, spec, "source", &bad);
        if (bad) return -1;
        /* other: "" is honoured: an empty value is no label (pipeline.c), so
         * a value outside the list leaves the label out. */
        if (!(lr->other = strdup(other ? other : "other"))) return stage_fail(cx, spec, name, "out of memory");
        if ((lr->field = stage_field(cx, spec, source && *source ? source : name)) < 0) return -1;
        const struct config_tree *values = config_tree_get(spec, "values");
        const struct config_tree *maxv = config_tree_get(spec, "max_values");
        if (!!values == !!maxv)
            return stage_fail(cx, spec, name, "set exactly one of values (an allow-list) or max_values");
        if (values) {
            size_t n = values->kind == CONFIG_TREE_LIST ? values->count : 1;
            if (values->kind == CONFIG_TREE_MAP || n == 0 || n > 1000)
                return stage_fail(cx, values, "values", "expected a list of 1 to 1000 values");
            lr->values = calloc(n, sizeof *lr->values);
            lr->vlens = calloc(n, sizeof *lr->vlens);
            if (!lr->values || !lr->vlens) return stage_fail(cx, values, "values", "out of memory");
            for (size_t k = 0; k < n; k++) {
                const struct config_tree *v = values->kind == CONFIG_TREE_LIST ? values->items[k] : values;
                if (v->kind != CONFIG_TREE_SCALAR) return stage_fail(cx, v, "values", "values must be scalars");
                if (!(lr->values[k] = strdup(v->text))) return stage_fail(cx, v, "values", "out of memory");
                lr->vlens[k] = strlen(v->text);
                lr->nvalues++;
            }
        } else {
            int64_t mv = 0;
            if (stage_get_int(cx, spec, "max_values", 1, 1000, &mv) != 0) return -1;
            lr->max_values = (size_t)mv;
            lr->learn = true;
            lr->values = calloc(lr->max_values, sizeof *lr->values);
            lr->vlens = calloc(lr->max_values, sizeof *lr->vlens);
            if (!lr->values || !lr->vlens) return stage_fail(cx, maxv, "max_values", "out of memory");
        }
    }
    return 0;
}

static void labels_print(const struct stage *st, FILE *out)
{
    const struct labels_conf *lc = st->conf;
    fputc('{', out);
    for (size_t i = 0; i < lc->n; i++) {
        const struct label_rule *lr = &lc->rules[i];
        fprintf(out, "%s%s: {source: ", i ? ", " : "", st->block->labels[lr->slot]);
        stage_print_string(out, st->block->fields[lr->field], strlen(st->block->fields[lr->field]));
        if (lr->learn) {
            fprintf(out, ", max_values: %zu", lr->max_values);
        } else {
            fputs(", values: [", out);
            for (size_t k = 0; k < lr->nvalues; k++) {
                if (k) fputs(", ", out);
                stage_print_string(out, lr->values[k], lr->vlens[k]);
            }
            fputc(']', out);
        }
        fputs(", other: ", out);
        stage_print_string(out, lr->other, strlen(lr->other));
        fputc('}', out);
    }
    fputc('}', out);
}

static void labels_free(struct stage *st)
{
    struct labels_conf *lc = st->conf;
    if (!lc) return;
    for (size_t i = 0; i < lc->n; i++) {
        for (size_t k = 0; k < lc->rules[i].nvalues; k++) free(lc->rules[i].values[k]);
        free(lc->rules[i].values);
        free(lc->rules[i].vlens);
        free(lc->rules[i].other);
    }
    free(lc);
}

const struct stage_ops stage_labels = {
    .name = "labels", .compile = labels_compile, .process = labels_process, .print = labels_print,
    .free = labels_free,
};

/* ------------------------------------------------------------------------ */

struct meta_conf {
    size_t n;
    size_t slot[STAGE_MAX_META];
    int field[STAGE_MAX_META];
};

static enum stage_verdict meta_process(const struct stage *st, void *state, struct stage_run *r)
{
    (void)state;
    const struct meta_conf *mc = st->conf;
    for (size_t i = 0; i < mc->n; i++) {
        const char *v;
        size_t len;
        if (!stage_get(r, (size_t)mc->field[i], &v, &len)) continue;
        r->meta_val[mc->slot[i]] = v;
        r->meta_len[mc->slot[i]] = len;
        r->meta_set[mc->slot[i]] = true;
    }
    return STAGE_PASS;
}

static int meta_compile(struct stage *st, const struct config_tree *node, struct stage_compile *cx)
{
    struct meta_conf *mc = calloc(1, sizeof *mc);
    if (!mc) return stage_fail(cx, node, NULL, "out of memory");
    st->conf = mc;
    if (node->kind == CONFIG_TREE_SCALAR || node->count == 0)
        return stage_fail(cx, node, NULL, "expected a list of fields or a mapping of name: field");
    for (size_t i = 0; i < node->count; i++) {
        const struct config_tree *v = node->items[i];
        if (v->kind != CONFIG_TREE_SCALAR) return stage_fail(cx, v, NULL, "fields must be scalars");
        const char *name = node->kind == CONFIG_TREE_MAP ? node->keys[i] : v->text;
        const char *field = *v->text ? v->text : name;
        if (check_name(cx, v, name) != 0) return -1;
        if (cx->cfg->output.loki.structured_metadata && loki_structured_name_agents(name))
            return stage_fail(cx, v, name, "the agent sends this structured metadata itself "
                              "(output.loki.structured_metadata): a line must not be able to claim another pod's");
        if (mc->n == STAGE_MAX_META) return stage_fail(cx, v, name, "too many");
        int slot = intern(cx, v, cx->block->meta, &cx->block->nmeta, STAGE_MAX_META, name);
        if (slot < 0) return -1;
        int f = stage_field(cx, v, field);
        if (f < 0) return -1;
        mc->slot[mc->n] = (size_t)slot;
        mc->field[mc->n++] = f;
    }
    return 0;
}

static void meta_print(const struct stage *st, FILE *out)
{
    const struct meta_conf *mc = st->conf;
    fputc('{', out);
    for (size_t i = 0; i < mc->n; i++) {
        const char *name = st->block->meta[mc->slot[i]], *field = st->block->fields[mc->field[i]];
        fprintf(out, "%s%s: ", i ? ", " : "", name);
        stage_print_string(out, field, strlen(field));
    }
    fputc('}', out);
}

static void meta_free(struct stage *st) { free(st->conf); }

const struct stage_ops stage_structured_metadata = {
    .name = "structured_metadata", .compile = meta_compile, .process = meta_process, .print = meta_print,
    .free = meta_free,
};
