/*
 * path — the provider that knows what the kubelet's file names say and
 * nothing more (namespace, pod, container, pod uid, container id: the
 * collector reads those itself, see parser/path.c). It is what runs when
 * Kubernetes metadata is off or cannot be had, and its answer never changes.
 */
#include <stdlib.h>

#include "metadata.h"

static enum metadata_status path_describe(struct metadata_provider *p, const struct parser_path_meta *path,
                                          struct metadata_labels **out)
{
    (void)p, (void)path;
    *out = NULL;
    return METADATA_FOUND; /* complete: the path is all it knows */
}

static uint64_t path_generation(struct metadata_provider *p)
{
    (void)p;
    return 1;
}

static bool path_changed_since(struct metadata_provider *p, const struct parser_path_meta *path, uint64_t generation)
{
    (void)p, (void)path, (void)generation;
    return false;
}

static void path_destroy(struct metadata_provider *p) { free(p); }

static const struct metadata_provider_ops path_ops = {"path", path_describe, path_generation, path_changed_since,
                                                      path_destroy, NULL};

struct metadata_provider *metadata_path_create(void)
{
    struct metadata_provider *p = calloc(1, sizeof *p);
    if (p) p->ops = &path_ops;
    return p;
}
