/*
 * The inotify backend: one inotify instance, one watch per directory (not
 * per file), so a pod costs one watch whatever its number of rotations.
 * A directory whose watch is refused (ENOSPC: fs.inotify.max_user_watches)
 * is polled instead, said once; with no instance at all every directory is.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "collector_internal.h"
#include "log/log.h"
#include "metrics/metrics.h"

#define DIR_EVENTS (IN_MODIFY | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF)

struct inotify_watcher {
    struct watcher base;
    int fd;
    bool limit_reported;
    int64_t poll_interval_ms;
};

static int in_add_dir(struct watcher *w, struct collector *c, const char *path)
{
    struct inotify_watcher *iw = (struct inotify_watcher *)w;
    (void)c;
    if (iw->fd < 0) return -1;
    int wd = inotify_add_watch(iw->fd, path, DIR_EVENTS | IN_ONLYDIR);
    if (wd >= 0) return wd;
    if (errno == ENOSPC) {
        if (!iw->limit_reported) {
            log_warn("inotify watch limit reached (fs.inotify.max_user_watches) at %s: directories without a "
                     "watch are polled every %lld ms instead",
                     path, (long long)iw->poll_interval_ms);
            iw->limit_reported = true;
            metrics_add(inotify_fallbacks, 1);
        }
    } else if (errno != ENOENT) {
        log_warn("cannot watch directory %s (%s): polling it", path, strerror(errno));
    }
    return -1;
}

static void in_remove_dir(struct watcher *w, int wd)
{
    struct inotify_watcher *iw = (struct inotify_watcher *)w;
    if (iw->fd >= 0 && wd >= 0) inotify_rm_watch(iw->fd, wd); /* EINVAL when the kernel dropped it: fine */
}

static int in_fd(const struct watcher *w) { return ((const struct inotify_watcher *)w)->fd; }

static void handle(struct collector *c, const struct inotify_event *ev)
{
    if (ev->mask & IN_Q_OVERFLOW) {
        collector_on_event(c, NULL, WATCH_OVERFLOW, NULL);
        return;
    }
    struct watch_dir *dir = collector_dir_by_wd(c, ev->wd);
    if (!dir) return;
    if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) collector_on_event(c, dir, WATCH_DIR_GONE, NULL);
    if (ev->mask & IN_IGNORED) {
        collector_on_event(c, dir, WATCH_DROPPED, NULL);
        return;
    }
    if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) return;
    const char *name = ev->len ? ev->name : NULL;
    if (name && (ev->mask & (IN_CREATE | IN_MOVED_TO))) collector_on_event(c, dir, WATCH_CREATED, name);
    if (name && (ev->mask & (IN_DELETE | IN_MOVED_FROM))) collector_on_event(c, dir, WATCH_REMOVED, name);
    if (ev->mask & IN_MODIFY) collector_on_event(c, dir, WATCH_APPENDED, name);
}

static void in_dispatch(struct watcher *w, struct collector *c)
{
    struct inotify_watcher *iw = (struct inotify_watcher *)w;
    char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
    if (iw->fd < 0) return;
    for (;;) {
        ssize_t n = read(iw->fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) log_error("reading inotify events: %s", strerror(errno));
            return;
        }
        if (n == 0) return;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            handle(c, ev);
            p += sizeof *ev + ev->len;
        }
    }
}

static void in_destroy(struct watcher *w)
{
    struct inotify_watcher *iw = (struct inotify_watcher *)w;
    if (iw->fd >= 0) close(iw->fd);
    free(iw);
}

static const struct watcher_ops inotify_ops = {
    .name = "inotify",
    .add_dir = in_add_dir,
    .remove_dir = in_remove_dir,
    .fd = in_fd,
    .dispatch = in_dispatch,
    .tick = watcher_poll_unwatched, /* directories whose watch was refused */
    .destroy = in_destroy,
};

struct watcher *watcher_inotify_create(struct collector *c, char *err, size_t errlen)
{
    struct inotify_watcher *iw = calloc(1, sizeof *iw);
    if (!iw) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    iw->base.ops = &inotify_ops;
    iw->poll_interval_ms = c->cfg->collection.poll_interval_ms;
    iw->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (iw->fd < 0) {
        log_warn("inotify unavailable (%s; see fs.inotify.max_user_instances): polling every %lld ms instead",
                 strerror(errno), (long long)iw->poll_interval_ms);
        metrics_add(inotify_fallbacks, 1);
    }
    return &iw->base;
}
