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
    for (unsigned i = 0; i < SOURCE_MAX_SINKS; i++) atomic_init(&src->sink_acked[i], 0);
    return src;
}

static unsigned acking_sinks = 1;

void source_set_sinks(unsigned n) { acking_sinks = n < 1 ? 1 : n > SOURCE_MAX_SINKS ? SOURCE_MAX_SINKS : n; }

void source_ack(struct source *src, unsigned sink, uint64_t end_offset)
{
    if (acking_sinks == 1) {
        atomic_store_explicit(&src->acked_offset, end_offset, memory_order_release);
        return;
    }
    atomic_store_explicit(&src->sink_acked[sink], end_offset, memory_order_release);
    uint64_t least = UINT64_MAX;
    for (unsigned i = 0; i < acking_sinks; i++) {
        uint64_t v = atomic_load_explicit(&src->sink_acked[i], memory_order_acquire);
        if (v < least) least = v;
    }
    /* Two outputs acknowledging at once may each compute a minimum from a
     * slightly older view; both are below the true minimum, so keeping the
     * larger never claims a line some output lacks, and never moves back
     * (a resumed file starts at its saved offset while the slots are 0). */
    uint64_t cur = atomic_load_explicit(&src->acked_offset, memory_order_acquire);
    while (least > cur &&
           !atomic_compare_exchange_weak_explicit(&src->acked_offset, &cur, least, memory_order_acq_rel,
                                                  memory_order_acquire)) {
    }
}

void source_reset_acked(struct source *src, uint64_t offset)
{
    for (unsigned i = 0; i < SOURCE_MAX_SINKS; i++) atomic_store(&src->sink_acked[i], offset);
    atomic_store(&src->acked_offset, offset);
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
