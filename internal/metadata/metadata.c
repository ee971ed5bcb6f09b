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

void metadata_builder_add(struct metadata_builder *b, bool structured, const char *name, const char *value)
{
    if (!name || !*name || !value) return;
    const char *refused = NULL;
    /* Loki's own names (__name__, __stream_shard__…): never sent. */
    if (loki_label_name_reserved(name))
        refused = "Loki reserves names starting with \"__\"";
    /* The agent's pod_uid and container_id are facts of the file's path: a
     * pod must not be able to claim another's. */
    else if (structured && b->agent_ids && loki_structured_name_agents(name))
        refused = "the agent sends that structured metadata itself (output.loki.structured_metadata)";
    if (refused) {
        if (b->nreserved < sizeof b->reserved / sizeof b->reserved[0]) {
            b->reserved[b->nreserved] = name;
            b->why_reserved[b->nreserved] = refused;
        }
        b->nreserved++;
        return;
    }
    struct loki_label *set = structured ? b->structured : b->labels;
    size_t *n = structured ? &b->nstructured : &b->nlabels;
    /* Compared as Loki will see them: `a.b` and `a_b` are one name. */
    for (size_t i = 0; i < *n; i++)
        if (loki_label_name_cmp(set[i].name, name) == 0) return;
    if (*n == sizeof b->labels / sizeof b->labels[0]) {
        b->overflow = true;
        return;
    }
    set[(*n)++] = (struct loki_label){name, value};
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
    m->why_incomplete = b->why_incomplete;
    m->nlabels = counts[STREAM];
    m->labels = pairs;
    m->nstructured = counts[STRUCTURED];
    m->structured = pairs + counts[STREAM];
    m->npod_labels = counts[POD];
    m->pod_labels = pairs + counts[STREAM] + counts[STRUCTURED];
    for (int s = 0; s < 3; s++) {
        for (size_t i = 0; i < counts[s]; i++) {
            size_t ln = strlen(all[s][i].name) + 1, lv = strlen(all[s][i].value) + 1;
            /* Stream labels and structured metadata get the same names:
             * the encoder would sanitise the former anyway, nothing would
             * sanitise the latter. Sanitised, with its NUL, it takes at most ln + 1 bytes. */
            pairs->name = text;
            if (s == POD) { /* pod labels keep their Kubernetes keys: match.pod_labels names them so */
                memcpy(text, all[s][i].name, ln);
                text += ln;
            } else {
                text += loki_sanitise_label_name(all[s][i].name, text, ln + 1) + 1;
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
