/* A source's lifetime; its labels are in labels.c. */
#include "source.h"

#include <stdlib.h>
#include <string.h>

static _Atomic uint64_t next_source_id = 1;

struct source *source_new(const char *path, const char *real_path, const struct parser_path_meta *meta,
                          dev_t dev, ino_t ino)
{
    struct source *src = calloc(1, sizeof *src);
    if (!src) return NULL;
    src->path = strdup(path);
    src->real_path = strdup(real_path);
    if (!src->path || !src->real_path) {
        free(src->path);
        free(src->real_path);
        free(src);
        return NULL;
    }
    atomic_init(&src->refs, 1);
    src->id = atomic_fetch_add(&next_source_id, 1);
    src->meta = *meta;
    src->dev = dev;
    src->ino = ino;
    atomic_init(&src->acked_offset, 0);
    return src;
}

void source_ref(struct source *src) { atomic_fetch_add_explicit(&src->refs, 1, memory_order_relaxed); }

void source_unref(struct source *src)
{
    if (!src) return;
    if (atomic_fetch_sub_explicit(&src->refs, 1, memory_order_acq_rel) != 1) return;
    free(src->path);
    free(src->real_path);
    free(src->labels_buf);
    free(src->extra);
    free(src);
}
