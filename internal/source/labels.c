/*
 * The label policy: which labels a source's lines carry. It lives here, with
 * the source, so that every sink sees the same label set for a file and none
 * builds its own (stdout prints the same metadata; Loki groups by the text).
 *
 * Labels: namespace, pod, container; `filename` when the path tells none of
 * them; node_name from NODE_NAME; `stream` when the policy asks for it; the
 * static labels, which override none of those; what the metadata provider
 * adds (pod labels, workload, a pod's loglet.io/labels), which overrides
 * none of the above: a pod cannot claim the operator's labels.
 * Pod uid and container id never become labels (unbounded cardinality);
 * the Loki sink may send them as structured metadata.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log/log.h"
#include "loki/loki.h"
#include "source.h"

#define MAX_LABELS 48

static const char *const stream_names[SOURCE_STREAM_KINDS] = {"stdout", "stderr", "unknown"};

void source_label_policy_init(struct source_label_policy *policy, const struct config *cfg)
{
    const char *node = getenv("NODE_NAME");
    policy->node_name = node && *node ? node : NULL;
    policy->stream = cfg->labels.stream;
    policy->static_labels = &cfg->labels.static_labels;
    policy->metadata = NULL;
}

static bool same_name(const char *a, const char *b);

/* Adds a label unless one of its name (as Loki sees it) is already there. */
static bool add_unique(struct loki_label *labels, size_t *n, const char *name, const char *value)
{
    for (size_t k = 0; k < *n; k++)
        if (same_name(labels[k].name, name)) return true;
    if (*n == MAX_LABELS) return false;
    labels[(*n)++] = (struct loki_label){name, value};
    return true;
}

/* Names are compared as Loki will see them: `node-name` and `node_name`
 * are one label once sanitised, and a duplicate makes Loki refuse the push. */
static bool same_name(const char *a, const char *b) { return loki_label_name_cmp(a, b) == 0; }

static size_t render_one(const struct source *src, const struct source_label_policy *policy, const char *stream,
                         char *dst, size_t cap)
{
    struct loki_label labels[MAX_LABELS];
    size_t n = 0;
    const struct parser_path_meta *m = &src->meta;
    if (m->namespace_[0]) labels[n++] = (struct loki_label){"namespace", m->namespace_};
    if (m->pod[0]) labels[n++] = (struct loki_label){"pod", m->pod};
    if (m->container[0]) labels[n++] = (struct loki_label){"container", m->container};
    if (!m->namespace_[0] || !m->pod[0] || !m->container[0]) labels[n++] = (struct loki_label){"filename", src->path};
    if (policy->node_name) labels[n++] = (struct loki_label){"node_name", policy->node_name};
    if (stream) labels[n++] = (struct loki_label){"stream", stream};
    /* The operator's static labels before what a pod says about itself: a
     * pod's loglet.io/labels must not claim another cluster or env. */
    const struct config_strmap *st = policy->static_labels;
    for (size_t i = 0; st && i < st->count; i++)
        if (!add_unique(labels, &n, st->keys[i], st->values[i])) return 0;
    const struct metadata_labels *extra = src->extra;
    for (size_t i = 0; extra && i < extra->nlabels; i++)
        if (!add_unique(labels, &n, extra->labels[i].name, extra->labels[i].value)) return 0;
    return loki_render_labels(labels, n, dst, cap);
}

int source_render_labels(struct source *src, const struct source_label_policy *policy, char *err, size_t errlen)
{
    char scratch[SOURCE_LABELS_MAX_BYTES];
    if (policy->metadata && !src->described) {
        /* Asked once per source: a later answer makes a new source. */
        src->described = true;
        src->described_generation = policy->metadata->ops->generation(policy->metadata);
        src->extra_status = policy->metadata->ops->describe(policy->metadata, &src->meta, &src->extra);
    }
    size_t kinds = policy->stream ? SOURCE_STREAM_KINDS : 1;
    size_t lens[SOURCE_STREAM_KINDS] = {0};
    size_t total = 0;
    for (size_t k = 0; k < kinds; k++) {
        lens[k] = render_one(src, policy, policy->stream ? stream_names[k] : NULL, scratch, sizeof scratch);
        if (lens[k] == 0 && src->extra && src->extra->nlabels) {
            /* The provider's labels made it too much (a pod's loglet.io/labels,
             * say): the file is still tailed, with what its path says. */
            log_warn("the labels of %s with its pod's metadata exceed %d bytes (or %d labels): sending it with "
                     "path labels only", src->path, SOURCE_LABELS_MAX_BYTES, MAX_LABELS);
            free(src->extra);
            src->extra = NULL;
            src->extra_status = METADATA_UNAVAILABLE;
            return source_render_labels(src, policy, err, errlen);
        }
        if (lens[k] == 0) {
            snprintf(err, errlen, "the labels of %s exceed %d bytes (or %d labels): check labels.static",
                     src->path, SOURCE_LABELS_MAX_BYTES, MAX_LABELS);
            return -1;
        }
        total += lens[k] + 1;
    }
    char *buf = malloc(total);
    if (!buf) {
        snprintf(err, errlen, "out of memory rendering the labels of %s", src->path);
        return -1;
    }
    size_t off = 0;
    for (size_t k = 0; k < kinds; k++) {
        render_one(src, policy, policy->stream ? stream_names[k] : NULL, buf + off, lens[k] + 1);
        src->labels[k] = buf + off;
        off += lens[k] + 1;
    }
    for (size_t k = kinds; k < SOURCE_STREAM_KINDS; k++) src->labels[k] = src->labels[0];
    free(src->labels_buf);
    src->labels_buf = buf;
    return 0;
}
