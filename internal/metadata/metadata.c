/*
 * The choice of provider, made once at start, and the builder every
 * provider uses to hand out its immutable snapshots.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log/log.h"
#include "metadata.h"

struct metadata_provider *metadata_create(const struct config *cfg, char *err, size_t errlen)
{
    if (cfg->kubernetes.enabled != CONFIG_KUBERNETES_OFF) {
        bool quiet = false;
        char why[1024];
        struct metadata_provider *k = metadata_kubernetes_create(cfg, &quiet, why, sizeof why);
        if (k) return k;
        if (quiet) log_info("kubernetes metadata off: %s", why);
        else log_error("kubernetes metadata off: %s; lines are labelled from their paths only", why);
    }
    struct metadata_provider *p = metadata_path_create();
    if (!p) snprintf(err, errlen, "out of memory");
    return p;
}

void metadata_destroy(struct metadata_provider *p)
{
    if (p) p->ops->destroy(p);
}

/* Names compared as Loki will see them (sanitised). */
static bool same_name(const char *a, const char *b)
{
    char ra[512], rb[512];
    size_t la = loki_render_labels(&(struct loki_label){a, ""}, 1, ra, sizeof ra);
    size_t lb = loki_render_labels(&(struct loki_label){b, ""}, 1, rb, sizeof rb);
    if (!la || !lb) return strcmp(a, b) == 0;
    return la == lb && memcmp(ra, rb, la) == 0;
}

void metadata_builder_add(struct metadata_builder *b, bool structured, const char *name, const char *value)
{
    if (!name || !*name || !value) return;
    struct loki_label *set = structured ? b->structured : b->labels;
    size_t *n = structured ? &b->nstructured : &b->nlabels;
    for (size_t i = 0; i < *n; i++)
        if (same_name(set[i].name, name)) return;
    if (*n == sizeof b->labels / sizeof b->labels[0]) {
        b->overflow = true;
        return;
    }
    set[(*n)++] = (struct loki_label){name, value};
}

/* Stream label names are sanitised by the Loki encoder as they are
 * rendered; structured metadata names are not rendered, so they are
 * sanitised here the same way: [a-zA-Z_][a-zA-Z0-9_]*. Writes at most
 * strlen(name) + 2 bytes; returns how many. */
static size_t sanitise_name(char *dst, const char *name)
{
    size_t n = 0;
    if (name[0] >= '0' && name[0] <= '9') dst[n++] = '_';
    for (const char *p = name; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        dst[n++] = ok ? c : '_';
    }
    dst[n++] = '\0';
    return n;
}

struct metadata_labels *metadata_builder_finish(const struct metadata_builder *b)
{
    enum { STREAM, STRUCTURED, POD };
    const struct loki_label *all[3] = {b->labels, b->structured, b->pod_labels};
    const size_t counts[3] = {b->nlabels, b->nstructured, b->npod_labels};
    size_t n = counts[STREAM] + counts[STRUCTURED] + counts[POD];
    size_t bytes = sizeof(struct metadata_labels) + n * sizeof(struct loki_label);
    for (int s = 0; s < 3; s++)
        for (size_t i = 0; i < counts[s]; i++) bytes += strlen(all[s][i].name) + strlen(all[s][i].value) + 3;
    if (b->why_excluded) bytes += strlen(b->why_excluded) + 1;
    struct metadata_labels *m = malloc(bytes);
    if (!m) return NULL;
    struct loki_label *pairs = (struct loki_label *)(m + 1);
    char *text = (char *)(pairs + n);
    m->excluded = b->excluded;
    m->why_excluded = NULL;
    m->nlabels = counts[STREAM];
    m->labels = pairs;
    m->nstructured = counts[STRUCTURED];
    m->structured = pairs + counts[STREAM];
    m->npod_labels = counts[POD];
    m->pod_labels = pairs + counts[STREAM] + counts[STRUCTURED];
    for (int s = 0; s < 3; s++) {
        for (size_t i = 0; i < counts[s]; i++) {
            size_t ln = strlen(all[s][i].name) + 1, lv = strlen(all[s][i].value) + 1;
            pairs->name = text;
            if (s == STRUCTURED) {
                text += sanitise_name(text, all[s][i].name);
            } else { /* stream labels were sanitised when added; pod labels keep their Kubernetes keys */
                memcpy(text, all[s][i].name, ln);
                text += ln;
            }
            memcpy(text, all[s][i].value, lv);
            pairs->value = text;
            text += lv;
            pairs++;
        }
    }
    if (b->why_excluded) {
        strcpy(text, b->why_excluded);
        m->why_excluded = text;
    }
    return m;
}

const char *metadata_job_name(void *provider, const struct parser_path_meta *path)
{
    /* Per thread: each API request runs on its own, and the snapshot the
     * name comes from is freed before returning. */
    static _Thread_local char name[256];
    struct metadata_provider *p = provider;
    struct metadata_labels *got = NULL;
    p->ops->describe(p, path, &got);
    const char *found = NULL;
    for (size_t i = 0; got && i < got->nlabels; i++) {
        if (strcmp(got->labels[i].name, "job") != 0) continue;
        snprintf(name, sizeof name, "%s", got->labels[i].value);
        found = name;
        break;
    }
    free(got);
    return found;
}
