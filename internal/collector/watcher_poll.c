/*
 * The stat-polling backend (collection.watcher: poll, like Fluent Bit's
 * `Inotify_Watcher false`): nothing is watched; every poll_interval each
 * directory is reported as possibly changed, and the collector stats its
 * files and reads them. Costs one stat per file and one pread per grown
 * file per interval, and nothing else.
 */
#include <stdio.h>
#include <stdlib.h>

#include "collector_internal.h"

static int poll_add_dir(struct watcher *w, struct collector *c, const char *path)
{
    (void)w, (void)c, (void)path;
    return -1;
}

static void poll_remove_dir(struct watcher *w, int wd) { (void)w, (void)wd; }
static int poll_fd(const struct watcher *w) { (void)w; return -1; }
static void poll_dispatch(struct watcher *w, struct collector *c) { (void)w, (void)c; }
static void poll_destroy(struct watcher *w) { free(w); }

static const struct watcher_ops poll_ops = {
    .name = "poll",
    .add_dir = poll_add_dir,
    .remove_dir = poll_remove_dir,
    .fd = poll_fd,
    .dispatch = poll_dispatch,
    .tick = watcher_poll_unwatched,
    .destroy = poll_destroy,
};

struct watcher *watcher_poll_create(char *err, size_t errlen)
{
    struct watcher *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    w->ops = &poll_ops;
    return w;
}

void watcher_poll_unwatched(struct watcher *w, struct collector *c)
{
    (void)w;
    for (struct watch_dir *dir = c->all_dirs; dir; dir = dir->all_next)
        if (dir->wd < 0) collector_on_event(c, dir, WATCH_POLLED, NULL);
}
