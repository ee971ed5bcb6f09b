/*
 * match — which files a block applies to: globs (fnmatch) over the file's
 * metadata, one list per field; every listed field must match, an absent
 * field matches everything, and the first block that matches wins.
 *
 * The fields are a table, so a metadata field that issue 10 brings (pod
 * labels, as `pod_labels: {app: "shop-*"}`) is a row with a map-valued
 * getter, not a change to the matcher.
 */
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

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
};
#define NFIELDS (sizeof fields / sizeof fields[0])

int match_compile(struct stage_compile *cx, const struct config_tree *node, struct pipeline_block *b)
{
    size_t base = strlen(cx->path);
    snprintf(cx->path + base, sizeof cx->path - base, ".match");
    int rc = 0;
    if (!node || (node->kind == CONFIG_TREE_SCALAR && !*node->text)) goto done; /* no match: every file */
    if (node->kind != CONFIG_TREE_MAP) {
        rc = stage_fail(cx, node, NULL, "expected a mapping of namespaces, pods, containers");
        goto done;
    }
    static const char *const keys[] = {"namespaces", "pods", "containers", NULL};
    if ((rc = stage_check_keys(cx, node, keys)) != 0) goto done;
    if (!(b->rules = calloc(node->count ? node->count : 1, sizeof *b->rules))) {
        rc = stage_fail(cx, node, NULL, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < node->count; i++) {
        const struct config_tree *v = node->items[i];
        struct match_rule *r = &b->rules[b->nrules++];
        for (size_t f = 0; f < NFIELDS; f++)
            if (strcmp(fields[f].key, node->keys[i]) == 0) r->field = f;
        size_t n = v->kind == CONFIG_TREE_LIST ? v->count : 1;
        if (v->kind == CONFIG_TREE_MAP) {
            rc = stage_fail(cx, v, node->keys[i], "expected a list of globs, got a mapping");
            goto done;
        }
        if (!(r->globs = calloc(n, sizeof *r->globs))) {
            rc = stage_fail(cx, v, node->keys[i], "out of memory");
            goto done;
        }
        for (size_t g = 0; g < n; g++) {
            const struct config_tree *item = v->kind == CONFIG_TREE_LIST ? v->items[g] : v;
            if (item->kind != CONFIG_TREE_SCALAR || !*item->text) {
                rc = stage_fail(cx, item, node->keys[i], "globs must be non-empty text");
                goto done;
            }
            if (!(r->globs[r->nglobs++] = strdup(item->text))) {
                rc = stage_fail(cx, item, node->keys[i], "out of memory");
                goto done;
            }
        }
    }
done:
    cx->path[base] = '\0';
    return rc;
}

bool match_block(const struct pipeline_block *b, const struct pipeline_meta *meta)
{
    for (size_t i = 0; i < b->nrules; i++) {
        const struct match_rule *r = &b->rules[i];
        const char *value = fields[r->field].get(meta);
        if (!value) value = "";
        bool any = false;
        for (size_t g = 0; g < r->nglobs && !any; g++) any = fnmatch(r->globs[g], value, 0) == 0;
        if (!any) return false;
    }
    return true;
}

void match_print(const struct pipeline_block *b, FILE *out)
{
    fputc('{', out);
    for (size_t i = 0; i < b->nrules; i++) {
        const struct match_rule *r = &b->rules[i];
        fprintf(out, "%s%s: [", i ? ", " : "", fields[r->field].key);
        for (size_t g = 0; g < r->nglobs; g++) {
            if (g) fputs(", ", out);
            stage_print_string(out, r->globs[g], strlen(r->globs[g]));
        }
        fputc(']', out);
    }
    fputc('}', out);
}

void match_free(struct pipeline_block *b)
{
    for (size_t i = 0; i < b->nrules; i++) {
        for (size_t g = 0; g < b->rules[i].nglobs; g++) free(b->rules[i].globs[g]);
        free(b->rules[i].globs);
    }
    free(b->rules);
    b->rules = NULL;
    b->nrules = 0;
}
