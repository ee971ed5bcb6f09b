/*
 * watcher — change detection behind one interface, two backends (as
 * Fluent Bit's in_tail keeps fs_inotify and fs_stat apart):
 *   inotify (watcher_inotify.c): the kernel reports changes; a directory
 *     whose watch cannot be had (fs.inotify.max_user_watches) is polled;
 *   poll (watcher_poll.c): nothing is watched, every directory is polled.
 *
 * Contract:
 *  - Both report the same events to the collector (collector_on_event):
 *    data appended in a directory's files, an entry created in or removed
 *    from a directory, the directory gone, and "lost track" (an inotify queue
 *    overflow), after which everything is checked again. Polling reports, for
 *    each polled directory every poll_interval, "something may have changed
 *    here": the collector then reads its files (appends, truncations) and
 *    checks each file's identity (rotations, deletions), and rescans a
 *    directory of links for new ones. Identity checks, rotation, catch-up and
 *    closing are therefore one code path whatever the backend.
 *  - add_dir() returns a watch id >= 0, or -1 when the directory is polled.
 *  - The collector never tests which backend it holds.
 */
#ifndef LOGLET_WATCHER_H
#define LOGLET_WATCHER_H

#include <stdbool.h>
#include <stdint.h>

struct collector;
struct watch_dir;

enum watch_event {
    WATCH_APPENDED, /* a file in the directory was written */
    WATCH_CREATED,  /* `name` appeared (created or moved in) */
    WATCH_REMOVED,  /* `name` went (deleted or moved out) */
    WATCH_DIR_GONE, /* the directory itself was removed or moved */
    WATCH_DROPPED,  /* the kernel dropped the watch (after DIR_GONE): the id is free */
    WATCH_POLLED,   /* polling: anything may have changed in the directory */
    WATCH_OVERFLOW, /* events were lost: check everything */
};

struct watcher;

struct watcher_ops {
    const char *name;
    int (*add_dir)(struct watcher *w, struct collector *c, const char *path);
    void (*remove_dir)(struct watcher *w, int wd);
    /* The descriptor poll(2) waits on for events, or -1. */
    int (*fd)(const struct watcher *w);
    /* Reads pending events and reports them. */
    void (*dispatch)(struct watcher *w, struct collector *c);
    /* Every poll_interval: reports WATCH_POLLED for the directories it does not watch. */
    void (*tick)(struct watcher *w, struct collector *c);
    void (*destroy)(struct watcher *w);
};

struct watcher {
    const struct watcher_ops *ops;
};

/* Returns a backend, or NULL with `err` set. inotify falls back to polling
 * everything (logged) when no inotify instance can be had. */
struct watcher *watcher_inotify_create(struct collector *c, char *err, size_t errlen);
struct watcher *watcher_poll_create(char *err, size_t errlen);

/* Both backends' tick: reports WATCH_POLLED for every directory without a watch. */
void watcher_poll_unwatched(struct watcher *w, struct collector *c);

/* The collector's side (collector.c). */
void collector_on_event(struct collector *c, struct watch_dir *dir, enum watch_event event, const char *name);
struct watch_dir *collector_dir_by_wd(struct collector *c, int wd);

#endif
