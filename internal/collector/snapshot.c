/*
 * Snapshot: the tailed files as other threads may see them (the logs API's
 * /api/v1/targets, the status page). The collector thread copies what it
 * knows every SNAPSHOT_EVERY_MS into a fresh array and swaps it in under a
 * mutex; readers copy it out. One fstat(2) per file per snapshot gives the
 * file's size — per tick, never per line. behind_since_ms is carried from
 * one snapshot to the next by source id: since when the file's acknowledged
 * offset is behind its end.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "collector_internal.h"

#define SNAPSHOT_EVERY_MS 500

static const char *format_name(enum config_format f)
{
    return f == CONFIG_FORMAT_CRI ? "cri" : f == CONFIG_FORMAT_DOCKER ? "docker" : "auto";
}

static void fill(struct collector *c, struct tailed_file *f, struct collector_target *t,
                 const struct collector_target *old, size_t nold, int64_t now_ms)
{
    const struct source *src = f->src;
    snprintf(t->path, sizeof t->path, "%s", src->path);
    snprintf(t->real_path, sizeof t->real_path, "%s", src->real_path ? src->real_path : "");
    snprintf(t->namespace_, sizeof t->namespace_, "%s", src->meta.namespace_);
    snprintf(t->pod, sizeof t->pod, "%s", src->meta.pod);
    snprintf(t->container, sizeof t->container, "%s", src->meta.container);
    struct stat st;
    t->size = !f->gz && fstat(f->fd, &st) == 0 ? (uint64_t)st.st_size : f->offset;
    t->read_offset = f->offset;
    t->acked_offset = atomic_load_explicit(&src->acked_offset, memory_order_acquire);
    t->format = format_name(f->format);
    t->watcher = f->dir && f->dir->wd >= 0 && c->watcher ? c->watcher->ops->name : "poll";
    t->state = f->state == FILE_ACTIVE ? "active" : "draining";
    if (f->waiting) snprintf(t->last_error, sizeof t->last_error, "waiting for its predecessor to be read");
    t->source_id = src->id;
    if (t->acked_offset < t->size) {
        t->behind_since_ms = now_ms;
        for (size_t k = 0; k < nold; k++)
            if (old[k].source_id == src->id && old[k].behind_since_ms) t->behind_since_ms = old[k].behind_since_ms;
        t->lag_seconds = (now_ms - t->behind_since_ms) / 1000;
    }
}

void snapshot_tick(struct collector *c, int64_t now_ms)
{
    if (now_ms - c->snap.last_ms < SNAPSHOT_EVERY_MS) return;
    c->snap.last_ms = now_ms;
    size_t n = 0;
    for (struct tailed_file *f = c->all_files; f; f = f->all_next) n++;
    struct collector_target *items = calloc(n ? n : 1, sizeof *items);
    if (!items) return; /* keep the previous snapshot; try again next tick */
    /* Only this thread replaces items, so reading the old array unlocked is safe. */
    const struct collector_target *old = c->snap.items;
    size_t nold = c->snap.n, i = 0;
    for (struct tailed_file *f = c->all_files; f && i < n; f = f->all_next, i++) fill(c, f, &items[i], old, nold, now_ms);
    pthread_mutex_lock(&c->snap.lock);
    struct collector_target *gone = c->snap.items;
    c->snap.items = items;
    c->snap.n = i;
    pthread_mutex_unlock(&c->snap.lock);
    free(gone);
}

size_t collector_targets(struct collector *c, struct collector_target *out, size_t cap)
{
    if (!c) return 0;
    pthread_mutex_lock(&c->snap.lock);
    size_t n = c->snap.n;
    if (out && c->snap.items) memcpy(out, c->snap.items, (n < cap ? n : cap) * sizeof *out);
    pthread_mutex_unlock(&c->snap.lock);
    return n;
}

void snapshot_teardown(struct collector *c)
{
    pthread_mutex_lock(&c->snap.lock);
    free(c->snap.items);
    c->snap.items = NULL;
    c->snap.n = 0;
    pthread_mutex_unlock(&c->snap.lock);
}
