/*
 * Identity and rotation: what became of the file a path named, and how long
 * an open file is kept.
 *
 * The kubelet rotates by renaming `0.log` to `0.log.<time>` and creating a
 * new `0.log`; later it gzips the renamed file (via `.tmp`) and deletes the
 * oldest beyond containerLogMaxFiles. An open descriptor keeps a file's data
 * however it is renamed or deleted, so the collector opens every file of a
 * path as soon as it learns of it — the new current file, and any rotated
 * sibling it has not seen — even while the output lags and nothing is read:
 * the files are the buffer, and holding them is what keeps the kubelet from
 * deleting unread lines. They are read oldest first (each waits for its
 * predecessor to close) and closed at their end.
 *
 * Holding is bounded by collection.max_held_bytes and max_held_files;
 * beyond them the oldest held file is released unread, logged and counted
 * as lost (reason "released").
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "collector_internal.h"
#include "output/livetail.h"
#include "log/log.h"
#include "metrics/metrics.h"

struct watch_dir *collector_dir_by_wd(struct collector *c, int wd) { return table_get_int(&c->dirs_by_wd, wd); }

struct watch_dir *rotation_dir(struct collector *c, const char *path, bool holds_links)
{
    struct watch_dir *dir = table_get_str(&c->dirs_by_path, path);
    if (dir) {
        dir->holds_links |= holds_links;
        return dir;
    }
    dir = calloc(1, sizeof *dir);
    if (!dir || !(dir->path = strdup(path))) {
        log_error("out of memory following %s", path);
        free(dir);
        return NULL;
    }
    dir->holds_links = holds_links;
    dir->wd = c->watcher->ops->add_dir(c->watcher, c, path);
    if (table_put_str(&c->dirs_by_path, dir->path, dir) != 0 ||
        (dir->wd >= 0 && table_put_int(&c->dirs_by_wd, dir->wd, dir) != 0)) {
        log_error("out of memory following %s", path);
        table_del_str(&c->dirs_by_path, dir->path);
        c->watcher->ops->remove_dir(c->watcher, dir->wd);
        free(dir->path);
        free(dir);
        return NULL;
    }
    dir->all_next = c->all_dirs;
    if (c->all_dirs) c->all_dirs->all_prev = dir;
    c->all_dirs = dir;
    return dir;
}

static void dir_free(struct collector *c, struct watch_dir *dir)
{
    if (dir->wd >= 0) {
        table_del_int(&c->dirs_by_wd, dir->wd);
        c->watcher->ops->remove_dir(c->watcher, dir->wd);
    }
    table_del_str(&c->dirs_by_path, dir->path);
    if (dir->all_prev) dir->all_prev->all_next = dir->all_next;
    else c->all_dirs = dir->all_next;
    if (dir->all_next) dir->all_next->all_prev = dir->all_prev;
    /* A pending identity check must not reach freed memory. */
    for (struct watch_dir **pp = &c->check_head; *pp; pp = &(*pp)->check_next) {
        if (*pp == dir) {
            *pp = dir->check_next;
            break;
        }
    }
    free(dir->path);
    free(dir);
}

static void dir_release_if_unused(struct collector *c, struct watch_dir *dir)
{
    if (!dir->files && !dir->holds_links) dir_free(c, dir);
}

static void file_link(struct collector *c, struct tailed_file *f)
{
    metadata_file_opened_or_closed(c, f, true);
    f->all_next = c->all_files;
    if (c->all_files) c->all_files->all_prev = f;
    c->all_files = f;
    c->nfiles++;
    if (f->dir) {
        f->dir_next = f->dir->files;
        f->dir->files = f;
    }
}

static void file_unlink(struct collector *c, struct tailed_file *f)
{
    metadata_file_opened_or_closed(c, f, false);
    if (f->all_prev) f->all_prev->all_next = f->all_next;
    else c->all_files = f->all_next;
    if (f->all_next) f->all_next->all_prev = f->all_prev;
    c->nfiles--;
    if (f->dir) {
        struct tailed_file **pp = &f->dir->files;
        while (*pp && *pp != f) pp = &(*pp)->dir_next;
        if (*pp) *pp = f->dir_next;
    }
    if (f->in_path_index) table_del_str(&c->files_by_path, f->src->path);
    f->in_path_index = false;
    /* Out of the pending FIFO too: it is about to be freed. */
    if (f->pending) {
        struct tailed_file *prev = NULL;
        for (struct tailed_file *p = c->pending_head; p; prev = p, p = p->pending_next) {
            if (p != f) continue;
            if (prev) prev->pending_next = p->pending_next;
            else c->pending_head = p->pending_next;
            if (c->pending_tail == p) c->pending_tail = prev;
            break;
        }
        f->pending = false;
    }
}

/* Reads the first bytes of a file (plain or gzip) for its fingerprint. */
static ssize_t read_head(int fd, gzFile gz, char *buf, size_t len)
{
    if (gz) {
        if (gzseek(gz, 0, SEEK_SET) < 0) return -1;
        return gzread(gz, buf, (unsigned)len);
    }
    ssize_t n;
    do n = pread(fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    return n;
}

bool rotation_fingerprint_matches(int fd, gzFile gz, uint64_t fp, uint32_t fp_len)
{
    char head[POSITIONS_FP_MAX];
    if (!fp_len) return false;
    ssize_t n = read_head(fd, gz, head, fp_len);
    return n == (ssize_t)fp_len && positions_fingerprint(head, fp_len) == fp;
}

/* For a file already known to have the saved device and inode. A file saved
 * while still empty has no fingerprint, and is then known by its inode
 * alone: taking it for unknown would have a restart catch up its rotated
 * siblings from their start, though they were delivered. Should the inode
 * have been reused meanwhile, reading the new file from the saved offset 0
 * is right anyway. */
bool rotation_identifies(uint64_t fp, uint32_t fp_len, int fd)
{
    return fp_len == 0 || rotation_fingerprint_matches(fd, NULL, fp, fp_len);
}

void rotation_take_fingerprint(struct tailed_file *f)
{
    char head[POSITIONS_FP_MAX];
    ssize_t n = read_head(f->fd, f->gz, head, sizeof head);
    if (n < 0) n = 0;
    f->src->fp = positions_fingerprint(head, (size_t)n);
    f->src->fp_len = (uint32_t)n;
    /* gz: the head was read through the stream; reading resumes by offset. */
}

static struct source *new_source(struct collector *c, const char *link_path, const char *real, const struct stat *st)
{
    struct parser_path_meta meta;
    parser_path_meta(link_path, real, &meta);
    struct source *src = source_new(link_path, real, &meta, st->st_dev, st->st_ino);
    if (!src) {
        log_error("out of memory opening %s", link_path);
        return NULL;
    }
    char err[512];
    if (source_render_labels(src, &c->label_policy, err, sizeof err) != 0) {
        metrics_add(file_errors, 1);
        discovery_report_once(c, link_path, E2BIG, "not tailing %s: %s", link_path, err);
        source_unref(src);
        return NULL;
    }
    return src;
}

static struct tailed_file *track(struct collector *c, const char *link_path, const char *real, int fd, gzFile gz,
                                 const struct stat *st, uint64_t offset, bool in_tree)
{
    struct tailed_file *f = calloc(1, sizeof *f);
    if (!f) {
        log_error("out of memory opening %s", link_path);
        return NULL;
    }
    if (!(f->src = new_source(c, link_path, real, st))) {
        free(f);
        return NULL;
    }
    f->fd = fd;
    f->gz = gz;
    f->format = c->cfg->collection.format;
    metadata_choose_pipeline(c, f); /* nothing is held yet: always settles */
    f->offset = offset;
    atomic_store(&f->src->acked_offset, offset);
    rotation_take_fingerprint(f);
    if (in_tree) {
        char real_dir[PATH_MAX];
        snprintf(real_dir, sizeof real_dir, "%s", real);
        f->dir = rotation_dir(c, dirname(real_dir), false);
    }
    livetail_source_open(c->livetail, f->src); /* before any of its lines is read */
    file_link(c, f);
    spool_keep(c, f);
    metadata_track(c, f);
    metrics_add(files_opened, 1);
    metrics_add(files_tailed, 1);
    return f;
}

struct tailed_file *rotation_track(struct collector *c, const char *link_path, const char *real, int fd, gzFile gz,
                                   const struct stat *st, uint64_t offset)
{
    return track(c, link_path, real, fd, gz, st, offset, true);
}

/* A file no longer in the log tree (read from the spool): no directory of
 * its own to follow, it only drains. */
struct tailed_file *rotation_track_detached(struct collector *c, const char *link_path, const char *real, int fd,
                                            gzFile gz, const struct stat *st, uint64_t offset)
{
    return track(c, link_path, real, fd, gz, st, offset, false);
}

struct awaited {
    char *path;
    struct position after;
};

/* Remembers that the next file at `link_path` follows `after`. */
void rotation_await_successor(struct collector *c, const char *link_path, const struct position *after)
{
    struct awaited *a = table_get_str(&c->awaited, link_path);
    if (!a) {
        if (!(a = calloc(1, sizeof *a)) || !(a->path = strdup(link_path)) ||
            table_put_str(&c->awaited, a->path, a) != 0) {
            log_error("out of memory remembering %s: files rotated before its next file appears may be skipped",
                      link_path);
            if (a) free(a->path);
            free(a);
            return;
        }
    }
    char *real = strdup(after->real_path ? after->real_path : link_path);
    if (!real) {
        log_error("out of memory remembering %s: files rotated before its next file appears may be skipped",
                  link_path);
        return;
    }
    free(a->after.real_path);
    a->after = *after;
    a->after.path = a->path;
    a->after.real_path = real;
    a->after.done = a->after.renamed = true; /* read to its end; its successor still to come */
}

int rotation_save_awaited(struct collector *c, struct positions *ps)
{
    size_t cursor = 0;
    for (struct awaited *a; (a = table_next(&c->awaited, &cursor));)
        if (!table_get_str(&c->files_by_path, a->path) && positions_add(ps, &a->after) != 0) return -1;
    return 0;
}

void rotation_forget_awaited(struct collector *c, const char *link_path)
{
    struct awaited *a = table_get_str(&c->awaited, link_path);
    if (!a) return;
    table_del_str(&c->awaited, link_path);
    free(a->after.real_path);
    free(a->path);
    free(a);
}

struct tailed_file *rotation_awaited(struct collector *c, const char *link_path, const char *real)
{
    struct awaited *a = table_get_str(&c->awaited, link_path);
    if (!a) return NULL;
    struct position after = a->after;
    after.path = after.real_path = NULL; /* freed with the entry */
    rotation_forget_awaited(c, link_path);
    return catchup_open(c, link_path, real, &after, 1, true, NULL, NULL);
}

bool rotation_release_pipeline(struct collector *c, struct tailed_file *f)
{
    if (!f->pipe || !pipeline_file_held_bytes(f->pipe)) return true;
    struct tailed_file *next = f->successor;
    if (next && next->pipe) {
        source_ref(f->src);
        if (pipeline_file_handoff(f->pipe, next->pipe, f->src, f->offset, next->offset)) return true;
        source_unref(f->src);
    }
    return tail_pipeline_flush(c, f);
}

void rotation_close(struct collector *c, struct tailed_file *f)
{
    struct stat link_st;
    if (f->state == FILE_DRAINING && !f->successor && !f->successor_opened &&
        !table_get_str(&c->files_by_path, f->src->path) && lstat(f->src->path, &link_st) == 0) {
        /* Renamed away, and nothing at its path yet (the runtime is slow to
         * reopen, or the container ended): whatever appears there later
         * follows this file, with the files rotated in between. */
        if (f->src->fp_len < POSITIONS_FP_MAX) rotation_take_fingerprint(f);
        struct position me = {.real_path = f->src->real_path, .dev = (uint64_t)f->src->dev,
                              .ino = (uint64_t)f->src->ino, .fp = f->src->fp, .fp_len = f->src->fp_len,
                              .offset = f->offset};
        rotation_await_successor(c, f->src->path, &me);
    }
    file_unlink(c, f);
    /* Anything still held (a read error, a release) is dropped here: the
     * file's acknowledged offset is before it, but nothing reads it again
     * in this run. */
    pipeline_file_free(f->pipe);
    if (f->gz) gzclose(f->gz);
    if (close(f->fd) != 0) log_warn("closing %s: %s", f->src->real_path, strerror(errno));
    livetail_source_close(c->livetail, f->src); /* after the close: a follower may then let go of it too */
    free(f->gz_carry);
    follows_clear(f);
    log_info("closed %s (%s) at offset %llu", f->src->path, f->src->real_path, (unsigned long long)f->offset);
    if (f->successor) {
        f->successor->waiting = false;
        collector_mark_pending(c, f->successor);
    }
    positions_policy_retire(c, f->src);
    metrics_add(files_closed, 1);
    metrics_add(files_tailed, -1);
    struct watch_dir *dir = f->dir;
    free(f);
    if (dir) dir_release_if_unused(c, dir);
    positions_policy_dirty(c);
}

void rotation_begin_draining(struct collector *c, struct tailed_file *f, const char *why)
{
    if (f->state == FILE_DRAINING) return;
    log_debug("%s (%s): %s, draining", f->src->path, f->src->real_path, why);
    f->state = FILE_DRAINING;
    f->draining_since_ms = metrics_now_ms();
    f->held_seq = ++c->next_held_seq;
    if (f->in_path_index) {
        table_del_str(&c->files_by_path, f->src->path);
        f->in_path_index = false;
    }
    collector_mark_pending(c, f);
    positions_policy_dirty(c);
}

/* The path names a new file (or will): hold every file rotated after `last`
 * that is not open yet, then the new current file, chained in that order. */
static void open_successors(struct collector *c, struct tailed_file *last)
{
    last->successor_opened = true;
    if (last->src->fp_len < POSITIONS_FP_MAX) rotation_take_fingerprint(last); /* it was young when opened */
    struct position me = {.dev = (uint64_t)last->src->dev, .ino = (uint64_t)last->src->ino,
                          .fp = last->src->fp, .fp_len = last->src->fp_len, .offset = last->offset};
    struct tailed_file *tail = catchup_open(c, last->src->path, last->src->real_path, &me, 1, true, NULL, last);
    discovery_open(c, last->src->path, false, tail);
    /* Not there yet (renamed, not recreated): the next change in the
     * directory tries again from the end of the chain. */
    if (!table_get_str(&c->files_by_path, last->src->path)) tail->successor_opened = false;
}

/* Returns true when it changed the directory's file list. */
static bool check_identity(struct collector *c, struct tailed_file *f)
{
    if (f->state == FILE_DRAINING) {
        /* Renamed away before a new file appeared at the path: open it now that it exists. */
        if (!f->successor_opened && !f->successor && !table_get_str(&c->files_by_path, f->src->path) &&
            access(f->src->path, F_OK) == 0) {
            metrics_add(rotations, 1); /* renamed first, recreated now: the kubelet's way */
            open_successors(c, f);
            return true;
        }
        return false;
    }
    struct stat st;
    if (stat(f->src->real_path, &st) != 0) {
        rotation_begin_draining(c, f, errno == ENOENT ? "renamed or deleted" : strerror(errno));
        return true;
    }
    if (st.st_ino != f->src->ino || st.st_dev != f->src->dev) {
        rotation_begin_draining(c, f, "rotated");
        metrics_add(rotations, 1);
        open_successors(c, f);
        return true;
    }
    return false;
}

void rotation_check_identities(struct collector *c)
{
    while (c->check_head) {
        struct watch_dir *dir = c->check_head;
        c->check_head = dir->check_next;
        dir->check_next = NULL;
        dir->check_identity = false;
        /* A change re-walks the list from the top: rotated files are then
         * draining and new ones match their path, so this ends. */
        bool changed;
        do {
            changed = false;
            for (struct tailed_file *f = dir->files; f && !changed; f = f->dir_next) changed = check_identity(c, f);
        } while (changed);
    }
}

void rotation_schedule_check(struct collector *c, struct watch_dir *dir)
{
    if (dir->check_identity) return;
    dir->check_identity = true;
    dir->check_next = c->check_head;
    c->check_head = dir;
}

void rotation_check_all(struct collector *c)
{
    for (struct watch_dir *dir = c->all_dirs; dir; dir = dir->all_next) rotation_schedule_check(c, dir);
    for (struct tailed_file *f = c->all_files; f; f = f->all_next) collector_mark_pending(c, f);
    rotation_check_identities(c);
}

void rotation_dir_gone(struct collector *c, struct watch_dir *dir, bool watch_dropped)
{
    for (struct tailed_file *f = dir->files; f; f = f->dir_next)
        rotation_begin_draining(c, f, "its directory was removed");
    if (!watch_dropped) return;
    /* The kernel dropped the watch: its id may be reused, so forget it. */
    if (dir->wd >= 0) table_del_int(&c->dirs_by_wd, dir->wd);
    dir->wd = -1;
    if (dir->holds_links) {
        /* A glob's directory went (and may come back): found again by rescans. */
        c->rescan_needed = true;
    }
    dir->holds_links = false;
    dir_release_if_unused(c, dir);
}

void rotation_truncated(struct collector *c, struct tailed_file *f)
{
    struct stat st;
    if (fstat(f->fd, &st) != 0) return;
    log_warn("%s was truncated (size %lld, read up to %llu): reading it again from the start",
             f->src->path, (long long)st.st_size, (unsigned long long)f->offset);
    (void)tail_pipeline_flush(c, f); /* a held join is of the old content (kept if the ring is full) */
    metrics_add(truncations, 1);
    /* copytruncate copies first: what was not read of the old content is in
     * the copy, found by the old content's full fingerprint (a shorter one,
     * of a file under 256 bytes when last taken, cannot tell it; the head
     * is not read again now: it is the new content's). */
    struct position old = {.dev = (uint64_t)f->src->dev, .ino = (uint64_t)f->src->ino, .fp = f->src->fp,
                           .fp_len = f->src->fp_len, .offset = f->offset};
    struct tailed_file *copy = old.fp_len >= POSITIONS_FP_MAX ? catchup_copy(c, f, &old) : NULL;
    /* Chunks in flight acknowledge the old source, whose position stays in
     * the positions file until they are delivered: a crash now resumes in
     * the copy from there. The file itself gets a fresh source at 0. */
    struct source *fresh = new_source(c, f->src->path, f->src->real_path, &st);
    if (fresh) {
        /* The path index is keyed by the source's own string: move it first. */
        if (f->in_path_index) table_del_str(&c->files_by_path, f->src->path);
        spool_handover(f->src, fresh); /* the same file: its link stays */
        positions_policy_retire(c, f->src);
        livetail_source_open(c->livetail, fresh);
        livetail_source_close(c->livetail, f->src);
        f->src = fresh;
        if (f->in_path_index && table_put_str(&c->files_by_path, f->src->path, f) != 0) {
            log_error("out of memory indexing %s", f->src->path);
            f->in_path_index = false;
            rotation_begin_draining(c, f, "out of memory");
        }
    } else {
        source_reset_acked(f->src, 0);
    }
    f->offset = 0;
    f->phys_at = 0;
    f->continuing = false;
    f->after_flush = false;
    f->incomplete_since_ms = 0;
    f->src->fp_len = 0;
    if (copy) {
        copy->successor = f; /* the old content first, then the new */
        f->waiting = true;
    }
    /* At once, not debounced: a crash now must not resume the new content
     * at the old offset, nor take the copy for a lost file. */
    positions_policy_save(c);
}

static uint64_t unread_bytes(const struct tailed_file *f)
{
    struct stat st;
    if (fstat(f->fd, &st) != 0) return 0;
    if (f->gz) {
        z_off_t consumed = gzoffset(f->gz);
        return consumed >= 0 && (uint64_t)consumed < (uint64_t)st.st_size ? (uint64_t)st.st_size - (uint64_t)consumed
                                                                           : 0;
    }
    return (uint64_t)st.st_size > f->offset ? (uint64_t)st.st_size - f->offset : 0;
}

static void release(struct collector *c, struct tailed_file *f, const char *bound)
{
    uint64_t lines = 0, bytes = 0;
    tail_count_rest(c, f, &lines, &bytes);
    log_error("released held file %s (%s) unread from offset %llu: %s exceeded while the output lags; "
              "%llu lines (%llu bytes) are lost, counted in loglet_lines_lost_total{reason=\"released\"}",
              f->src->path, f->src->real_path, (unsigned long long)f->offset, bound, (unsigned long long)lines,
              (unsigned long long)bytes);
    metrics_add(lines_lost_released, lines);
    metrics_add(bytes_lost_released, bytes);
    f->offset += f->gz ? 0 : bytes;
    rotation_close(c, f);
}

/* Held: deleted from the log tree, its data kept only by loglet (its
 * descriptor, its spool link). A rotated file still in the tree is the
 * kubelet's retention, not loglet's cost, however long it waits to be read
 * (a catch-up after downtime opens hundreds at once). */
static bool held_by_loglet_alone(const struct tailed_file *f)
{
    if (f->state != FILE_DRAINING) return false;
    struct stat st;
    if (fstat(f->fd, &st) != 0) return false;
    return st.st_nlink <= (nlink_t)(f->src->spooled ? 1 : 0);
}

void rotation_enforce_held(struct collector *c)
{
    const uint64_t max_bytes = (uint64_t)c->cfg->collection.max_held_bytes;
    const size_t max_files = (size_t)c->cfg->collection.max_held_files;
    for (;;) {
        size_t files = 0;
        uint64_t bytes = 0;
        struct tailed_file *oldest = NULL;
        for (struct tailed_file *f = c->all_files; f; f = f->all_next) {
            if (!held_by_loglet_alone(f)) continue;
            files++;
            bytes += unread_bytes(f);
            if (!oldest || f->held_seq < oldest->held_seq) oldest = f;
        }
        metrics_set(held_files, (int64_t)files);
        metrics_set(held_bytes, (int64_t)bytes);
        if (!oldest || (files <= max_files && bytes <= max_bytes)) return;
        release(c, oldest, files > max_files ? "collection.max_held_files" : "collection.max_held_bytes");
    }
}

void rotation_teardown(struct collector *c)
{
    while (c->all_files) {
        struct tailed_file *f = c->all_files;
        struct watch_dir *dir = f->dir;
        file_unlink(c, f);
        if (f->gz) gzclose(f->gz);
        close(f->fd);
        free(f->gz_carry);
        follows_clear(f);
        pipeline_file_free(f->pipe);
        source_unref(f->src);
        metrics_add(files_tailed, -1);
        free(f);
        if (dir) dir_release_if_unused(c, dir);
    }
    while (c->all_dirs) dir_free(c, c->all_dirs);
    size_t cursor = 0;
    for (struct awaited *a; (a = table_next(&c->awaited, &cursor));) {
        free(a->after.real_path);
        free(a->path);
        free(a);
    }
    table_free(&c->awaited);
    table_free(&c->dirs_by_wd);
    table_free(&c->dirs_by_path);
    table_free(&c->files_by_path);
}
