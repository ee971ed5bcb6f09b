/*
 * match — which files a block applies to: globs (fnmatch) over the file's
 * metadata, one list per field; every listed field must match, an absent
 * field matches everything, and the first block that matches wins.
 *
 * `pod_labels: {app: "shop-*", tier: [web, api]}` tests the pod's
 * Kubernetes labels (internal/metadata): one rule per key, each matching
 * when the pod has that label with a value one of the globs matches; a pod
 * without the label (or whose labels are not known) does not match. The
 * collector chooses a file's block again when its pod's metadata changes.
 */
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "loki/loki.h"
#include "stage.h"

struct match_field {
    const char *key;
    const char *(*get)(const struct pipeline_meta *m);
};

static const char *get_namespace(const struct pipeline_meta *m) { return m->namespace_; }
static const char *get_pod(const struct pipeline_meta *m) { return m->pod; }
static const char *get_container(const struct pipeline_meta *m) { return m->container; }

static const struct match_field fields[] = {
    {"namespaces", get_namespace},
    {"pods", get_pod},
    {"containers", get_container},
    {"pod_labels", NULL}, /* a rule per label key: pod_label() */
};
#define FIELD_POD_LABEL 3

static const char *pod_label(const struct pipeline_meta *m, const char *key)
{
    for (size_t i = 0; i < m->npod_labels; i++)
        if (strcmp(m->pod_labels[i].name, key) == 0) return m->pod_labels[i].value;
    return NULL;
}

/* Why fnmatch(3) would not read `glob` as its writer meant, or NULL. It
 * takes an unclosed [ as a literal [ and a trailing \ matches nothing, so
 * `[a` would match only the name "[a", never what was meant. */
static const char *glob_problem(const char *glob)
{
    for (const char *p = glob; *p; p++) {
        if (*p == '\\') {
            if (!p[1]) return "ends with a lone \\ (write \\\\ for a literal backslash)";
            p++;
            continue;
        }
        if (*p != '[') continue;
        const char *q = p + 1;
        if (*q == '!' || *q == '^') q++;
        if (*q == ']') q++; /* a ] first in the class is one of its characters */
        while (*q && *q != ']') q++;
        if (!*q) return "has a [ with no closing ] (a [ opens a character class; write \\[ for a literal [)";
        p = q;
    }
    return NULL;
}

/* A rule's globs from a scalar or a list. */
static int compile_globs(struct stage_compile *cx, const char *key, const struct config_tree *v, struct match_rule *r)
{
    if (v->kind == CONFIG_TREE_MAP) return stage_fail(cx, v, key, "expected a list of globs, got a mapping");
    size_t n = v->kind == CONFIG_TREE_LIST ? v->count : 1;
    if (!(r->globs = calloc(n ? n : 1, sizeof *r->globs))) return stage_fail(cx, v, key, "out of memory");
    if (!n) return stage_fail(cx, v, key, "expected at least one glob");
    for (size_t g = 0; g < n; g++) {
        const struct config_tree *item = v->kind == CONFIG_TREE_LIST ? v->items[g] : v;
        if (item->kind != CONFIG_TREE_SCALAR || !*item->text) return stage_fail(cx, item, key, "globs must be non-empty text");
        const char *why = glob_problem(item->text);
        if (why) return stage_fail(cx, item, key, "glob '%s' %s", item->text, why);
        if (!(r->globs[r->nglobs++] = strdup(item->text))) return stage_fail(cx, item, key, "out of memory");
    }
    return 0;
}
#define NFIELDS (sizeof fields / sizeof fields[0])

int match_compile(struct stage_compile *cx, const struct config_tree *node, struct pipeline_block *b)
{
    size_t base = strlen(cx->path);
    snprintf(cx->path + base, sizeof cx->path - base, ".match");
    int rc = 0;
    if (!node || (node->kind == CONFIG_TREE_SCALAR && !*node->text)) goto done; /* no match: every file */
    if (node->kind != CONFIG_TREE_MAP) {
        rc = stage_fail(cx, node, NULL, "expected a mapping of namespaces, pods, containers, pod_labels");
        goto done;
    }
    static const char *const keys[] = {"namespaces", "pods", "containers", "pod_labels", NULL};
    if ((rc = stage_check_keys(cx, node, keys)) != 0) goto done;
    size_t nrules = 0;
    for (size_t i = 0; i < node->count; i++) {
        const struct config_tree *v = node->items[i];
        bool labels = strcmp(node->keys[i], "pod_labels") == 0;
        if (labels && v->kind != CONFIG_TREE_MAP) {
            rc = stage_fail(cx, v, "pod_labels", "expected a mapping of label key to glob(s), e.g. {app: \"shop-*\"}");
            goto done;
        }
        nrules += labels ? v->count : 1;
    }
    if (!(b->rules = calloc(nrules ? nrules : 1, sizeof *b->rules))) {
        rc = stage_fail(cx, node, NULL, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < node->count; i++) {
        const struct config_tree *v = node->items[i];
        if (strcmp(node->keys[i], "pod_labels") == 0) {
            for (size_t k = 0; k < v->count; k++) {
                struct match_rule *r = &b->rules[b->nrules++];
                r->field = FIELD_POD_LABEL;
                char key[160];
                snprintf(key, sizeof key, "pod_labels.%s", v->keys[k]);
                if (!*v->keys[k]) {
                    rc = stage_fail(cx, v->items[k], "pod_labels", "a label key must not be empty");
                    goto done;
                }
                if (!(r->label = strdup(v->keys[k]))) {
                    rc = stage_fail(cx, v->items[k], key, "out of memory");
                    goto done;
                }
                if ((rc = compile_globs(cx, key, v->items[k], r)) != 0) goto done;
            }
            continue;
        }
        struct match_rule *r = &b->rules[b->nrules++];
        for (size_t f = 0; f < NFIELDS; f++)
            if (strcmp(fields[f].key, node->keys[i]) == 0) r->field = f;
        if ((rc = compile_globs(cx, node->keys[i], v, r)) != 0) goto done;
    }
done:
    cx->path[base] = '\0';
    return rc;
}

bool match_block(const struct pipeline_block *b, const struct pipeline_meta *meta)
{
    for (size_t i = 0; i < b->nrules; i++) {
        const struct match_rule *r = &b->rules[i];
        const char *value;
        if (r->field == FIELD_POD_LABEL) {
            if (!(value = pod_label(meta, r->label))) return false;
        } else {
            value = fields[r->field].get(meta);
            if (!value) value = "";
        }
        bool any = false;
        for (size_t g = 0; g < r->nglobs && !any; g++) any = fnmatch(r->globs[g], value, 0) == 0;
        if (!any) return false;
    }
    return true;
}

static void print_globs(const struct match_rule *r, FILE *out)
{
    fputc('[', out);
    for (size_t g = 0; g < r->nglobs; g++) {
        if (g) fputs(", ", out);
        stage_print_string(out, r->globs[g], strlen(r->globs[g]));
    }
    fputc(']', out);
}

void match_print(const struct pipeline_block *b, FILE *out)
{
    fputc('{', out);
    bool labels_open = false;
    for (size_t i = 0; i < b->nrules; i++) {
        const struct match_rule *r = &b->rules[i];
        if (r->field == FIELD_POD_LABEL) {
            /* The rules of one pod_labels mapping are consecutive. */
            fprintf(out, "%s", labels_open ? ", " : i ? ", pod_labels: {" : "pod_labels: {");
            labels_open = true;
            stage_print_key(out, r->label, strlen(r->label));
            fputs(": ", out);
            print_globs(r, out);
            if (i + 1 == b->nrules || b->rules[i + 1].field != FIELD_POD_LABEL) {
                fputc('}', out);
                labels_open = false;
            }
            continue;
        }
        fprintf(out, "%s%s: ", i ? ", " : "", fields[r->field].key);
        print_globs(r, out);
    }
    fputc('}', out);
}

void match_free(struct pipeline_block *b)
{
    for (size_t i = 0; i < b->nrules; i++) {
        for (size_t g = 0; g < b->rules[i].nglobs; g++) free(b->rules[i].globs[g]);
        free(b->rules[i].globs);
        free(b->rules[i].label);
    }
    free(b->rules);
    b->rules = NULL;
    b->nrules = 0;
}
