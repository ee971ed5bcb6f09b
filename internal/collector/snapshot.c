/*
 * Snapshot: the tailed files as other threads may see them (the logs API's
 * /api/v1/targets, the status page). While somebody reads it, the collector
 * thread copies what it knows every SNAPSHOT_EVERY_MS into a fresh array and
 * swaps it in under a mutex; readers copy it out. One fstat(2) per file per
 * snapshot gives the file's size — per tick, never per line. behind_since_ms
 * is carried from one snapshot to the next by source id: since when the
 * file's acknowledged offset is behind its end.
 *
 * Nobody reading is the usual case, and then it is not built at all: at
 * 2,000 files a snapshot is 3 MiB (two while one replaces the other) and two
 * fstat(2) per file per second, which were most of an idle agent's memory
 * growth and all of its per-file syscalls (tests/bench/README.md). It is
 * dropped SNAPSHOT_KEEP_MS after the last read; the first reader after that
 * wakes the collector and waits for one (a loop turn, at most
 * SNAPSHOT_FIRST_WAIT_MS). A file's lag then counts from that first read.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "collector_internal.h"
#include "log/log.h"
#include "metrics/metrics.h"

#define SNAPSHOT_EVERY_MS 500
#define SNAPSHOT_KEEP_MS 60000
#define SNAPSHOT_FIRST_WAIT_MS 1000

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

static void replace_items(struct collector *c, struct collector_target *items, size_t n)
{
    pthread_mutex_lock(&c->snap.lock);
    struct collector_target *gone = c->snap.items;
    c->snap.items = items;
    c->snap.n = n;
    pthread_cond_broadcast(&c->snap.built);
    pthread_mutex_unlock(&c->snap.lock);
    free(gone);
}

void snapshot_tick(struct collector *c, int64_t now_ms)
{
    const int64_t read_ms = atomic_load(&c->snap.read_ms);
    if (!read_ms || now_ms - read_ms > SNAPSHOT_KEEP_MS) {
        if (c->snap.items) replace_items(c, NULL, 0); /* nobody looks: give the memory back */
        return;
    }
    /* Only this thread replaces items, so reading them unlocked is safe. */
    if (c->snap.items && now_ms - c->snap.last_ms < SNAPSHOT_EVERY_MS) return;
    c->snap.last_ms = now_ms;
    size_t n = 0;
    for (struct tailed_file *f = c->all_files; f; f = f->all_next) n++;
    struct collector_target *items = calloc(n ? n : 1, sizeof *items);
    if (!items) return; /* keep the previous snapshot; try again next tick */
    const struct collector_target *old = c->snap.items;
    size_t nold = c->snap.n, i = 0;
    for (struct tailed_file *f = c->all_files; f && i < n; f = f->all_next, i++) fill(c, f, &items[i], old, nold, now_ms);
    replace_items(c, items, i);
}

size_t collector_targets(struct collector *c, struct collector_target *out, size_t cap)
{
    if (!c) return 0;
    atomic_store(&c->snap.read_ms, metrics_now_ms());
    pthread_mutex_lock(&c->snap.lock);
    if (!c->snap.items && !atomic_load(&c->stop)) {
        /* None since nobody read: ask the collector thread for one. Its
         * wake descriptor is an eventfd, so the write cannot block. */
        uint64_t one = 1;
        if (write(c->wake_fd, &one, sizeof one) < 0 && errno != EAGAIN)
            log_warn("waking the collector for the targets: %s", strerror(errno));
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += SNAPSHOT_FIRST_WAIT_MS / 1000;
        deadline.tv_nsec += (SNAPSHOT_FIRST_WAIT_MS % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
        while (!c->snap.items && !atomic_load(&c->stop))
            if (pthread_cond_timedwait(&c->snap.built, &c->snap.lock, &deadline) != 0) break; /* ETIMEDOUT */
    }
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
