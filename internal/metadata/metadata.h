/*
 * metadata — what is known about a log file beyond its path, from one
 * provider chosen once at start: `path` (nothing beyond the kubelet's file
 * names) or `kubernetes` (the pod's labels, workload and annotations, from
 * the API server; see internal/kube).
 *
 * Contract:
 *  - describe() is called when a source is created (a file opened, or given
 *    a new source after a copytruncate or a metadata change), never per
 *    line. It may be called from the collector thread while the provider's
 *    own threads update what it knows; it takes at most a mutex held for a
 *    copy, never a network round trip.
 *  - What it returns is a snapshot the caller owns (one allocation, freed
 *    with free()): strings in it never change, so a source can hand them to
 *    the ring and the sinks while the pod's metadata moves on.
 *  - generation() grows whenever a describe() might answer differently;
 *    callers compare it to skip re-describing when nothing changed, and
 *    changed_since() tells, cheaply (a lookup, no copy), whether what it
 *    knows of one file's pod changed after a given generation, so that a
 *    change to one pod re-describes that pod's files, not the node's.
 *  - The provider never says more than it knows: when a pod is not known
 *    (yet), the answer says whether waiting could help (PENDING: the watch
 *    is up and may be a little behind) or not (UNAVAILABLE: the API server
 *    cannot be reached, or the provider knows nothing by design).
 */
#ifndef LOGLET_METADATA_H
#define LOGLET_METADATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "loki/loki.h"
#include "parser/parser.h"

enum metadata_status {
    METADATA_FOUND,       /* the answer is complete */
    METADATA_PENDING,     /* not known yet; may be soon */
    METADATA_UNAVAILABLE, /* not known, and waiting will not help */
};

/* One allocation: the arrays and their strings follow the struct. */
struct metadata_labels {
    bool excluded;         /* an annotation says not to collect this file */
    const char *why_excluded;
    /* With METADATA_PENDING, what is not known yet of an answer otherwise
     * complete (static text, not copied); NULL otherwise. */
    const char *why_incomplete;
    size_t nlabels;        /* stream labels, in addition to the path's */
    const struct loki_label *labels;
    size_t nstructured;    /* Loki structured metadata for every line */
    const struct loki_label *structured;
    size_t npod_labels;    /* the pod's own Kubernetes labels, keys as they are (pipeline match.pod_labels) */
    const struct loki_label *pod_labels;
};

struct metadata_provider;

struct metadata_provider_ops {
    const char *name;
    /* Fills *out (NULL when there is nothing to add) and says how complete
     * it is. PENDING with *out set: what is known so far (the pod, not yet
     * its namespace), for when the wait is over. */
    enum metadata_status (*describe)(struct metadata_provider *p, const struct parser_path_meta *path,
                                     struct metadata_labels **out);
    uint64_t (*generation)(struct metadata_provider *p);
    /* True when a describe() of this path might now answer differently
     * from one made at `generation` (a value generation() returned). */
    bool (*changed_since)(struct metadata_provider *p, const struct parser_path_meta *path, uint64_t generation);
    void (*destroy)(struct metadata_provider *p);
    /* Optional (NULL: nothing to do). A file with this path was opened
     * (open) or closed (!open), once each: what the provider knows of its
     * pod is kept while any such file is open, even after the pod is gone. */
    void (*file_opened_or_closed)(struct metadata_provider *p, const struct parser_path_meta *path, bool open);
};

struct metadata_provider {
    const struct metadata_provider_ops *ops;
};

/* The provider the configuration asks for: kubernetes when enabled and
 * reachable by some credential (said once at start either way), else path.
 * Only allocation failure returns NULL. */
struct metadata_provider *metadata_create(const struct config *cfg, char *err, size_t errlen);
void metadata_destroy(struct metadata_provider *p);
/* The `job` label of a file's pod (kubernetes.workload_labels), for the
 * logs API's job= selection; NULL when none. Valid until the calling
 * thread's next call. */
const char *metadata_job_name(void *provider, const struct parser_path_meta *path);

struct metadata_provider *metadata_path_create(void);
/* NULL with `err` when Kubernetes metadata cannot be had (no credentials,
 * no node name); `quiet` is set when that is the expected case (auto, not
 * in a cluster) rather than an error. */
struct metadata_provider *metadata_kubernetes_create(const struct config *cfg, bool *quiet, char *err, size_t errlen);

/* Building a struct metadata_labels (shared by the providers and tests). */
struct metadata_builder {
    struct loki_label labels[64];
    size_t nlabels;
    struct loki_label structured[64];
    size_t nstructured;
    struct loki_label pod_labels[64]; /* the pod's labels as Kubernetes has them (first 64) */
    size_t npod_labels;
    bool excluded;
    const char *why_excluded;
    const char *why_incomplete; /* static text */
    bool overflow;
    /* Names refused because Loki reserves them (starting with "__" once
     * sanitised), or, as structured metadata, because the agent sends them
     * itself: how many, the first few and why, for the caller to say. */
    size_t nreserved;
    const char *reserved[8];
    const char *why_reserved[8];
    /* Set by the provider: output.loki.structured_metadata is on, so
     * loki_structured_name_agents names are taken. */
    bool agent_ids;
};
/* The label is added unless one of that name (as Loki sanitises it) is
 * there, or the name is one Loki reserves (loki_label_name_reserved), or a
 * structured name the agent sends itself (with agent_ids): those are
 * counted in nreserved. Names are sanitised by finish(). */
void metadata_builder_add(struct metadata_builder *b, bool structured, const char *name, const char *value);
/* Copies everything into one allocation; NULL on allocation failure. */
struct metadata_labels *metadata_builder_finish(const struct metadata_builder *b);

#endif
