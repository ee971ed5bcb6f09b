/*
 * Discovery and identity: which files to tail, and when the file behind a
 * path changed. inotify watches directories, not files: the glob's directory
 * (new and removed symlinks) and each target's directory (writes, renames,
 * creations, deletions). When a watch cannot be had (inotify limits), the
 * file is polled on collection.poll_interval instead — same code, no event.
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <fnmatch.h>
#include <glob.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "collector_internal.h"
#include "log/log.h"
#include "metrics/metrics.h"

#define DIR_EVENTS (IN_MODIFY | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF)

/* Paths already reported as unusable, so that a dangling link or an
 * unreadable file is said once, not at every rescan. */
struct reported_path {
    char *path;
    int reason;
};

static void report_once(struct collector *c, const char *path, int reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void report_once(struct collector *c, const char *path, int reason, const char *fmt, ...)
{
    struct reported_path *r = table_get_str(&c->reported, path);
    if (r && r->reason == reason) return;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (r && !(r->path = strdup(path))) {
            free(r);
            r = NULL;
        }
        if (r && table_put_str(&c->reported, r->path, r) != 0) {
            free(r->path);
            free(r);
            r = NULL;
        }
    }
    if (r) r->reason = reason;
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(LOG_LEVEL_WARN, fmt, ap);
    va_end(ap);
}

static void forget_report(struct collector *c, const char *path)
{
    struct reported_path *r = table_get_str(&c->reported, path);
    if (!r) return;
    table_del_str(&c->reported, path);
    free(r->path);
    free(r);
}

static struct watch_dir *dir_watch(struct collector *c, const char *path, bool holds_links)
{
    if (c->inotify_fd < 0) return NULL;
    int wd = inotify_add_watch(c->inotify_fd, path, DIR_EVENTS | IN_ONLYDIR);
    if (wd < 0) {
        if (errno == ENOSPC && !c->inotify_exhausted_reported) {
            log_warn("inotify watch limit reached (fs.inotify.max_user_watches) at %s: polling files without "
                     "a watch every %lld ms instead",
                     path, (long long)c->cfg->collection.poll_interval_ms);
            c->inotify_exhausted_reported = true;
            metrics_add(inotify_fallbacks, 1);
        } else if (errno != ENOSPC) {
            report_once(c, path, errno, "cannot watch directory %s: %s", path, strerror(errno));
        }
        return NULL;
    }
    struct watch_dir *dir = table_get_int(&c->dirs_by_wd, wd);
    if (dir) {
        dir->holds_links |= holds_links;
        return dir;
    }
    dir = calloc(1, sizeof *dir);
    if (!dir || !(dir->path = strdup(path)) || table_put_int(&c->dirs_by_wd, wd, dir) != 0) {
        log_error("out of memory watching %s", path);
        if (dir) free(dir->path);
        free(dir);
        inotify_rm_watch(c->inotify_fd, wd);
        return NULL;
    }
    dir->wd = wd;
    dir->holds_links = holds_links;
    return dir;
}

static void dir_release_if_unused(struct collector *c, struct watch_dir *dir)
{
    if (dir->files || dir->holds_links) return;
    if (dir->wd >= 0) {
        table_del_int(&c->dirs_by_wd, dir->wd);
        inotify_rm_watch(c->inotify_fd, dir->wd);
    }
    free(dir->path);
    free(dir);
}

/* A planted symlink (to /etc/shadow, say) must not make the agent read and
 * ship a file outside the log directories. */
static bool inside_roots(const struct collector *c, const char *real)
{
    for (size_t i = 0; i < c->nroots; i++) {
        size_t len = strlen(c->roots[i]);
        if (len == 1 && c->roots[i][0] == '/') return true;
        if (strncmp(real, c->roots[i], len) == 0 && (real[len] == '/' || real[len] == '\0')) return true;
    }
    return false;
}

static int add_root(struct collector *c, const char *dir)
{
    char resolved[PATH_MAX];
    const char *use = realpath(dir, resolved) ? resolved : dir; /* may not exist yet */
    for (size_t i = 0; i < c->nroots; i++)
        if (strcmp(c->roots[i], use) == 0) return 0;
    char **grown = realloc(c->roots, (c->nroots + 1) * sizeof *grown);
    if (!grown) return -1;
    c->roots = grown;
    if (!(c->roots[c->nroots] = strdup(use))) return -1;
    c->nroots++;
    return 0;
}

/* Default roots: each glob's directory (up to its first wildcard) and the
 * `pods` directory beside it, where the kubelet's symlinks point. */
static int setup_roots(struct collector *c, char *err, size_t errlen)
{
    const struct config_strlist *roots = &c->cfg->collection.symlink_roots;
    for (size_t i = 0; i < roots->count; i++) {
        if (roots->items[i][0] != '/') {
            snprintf(err, errlen, "collection.symlink_roots: '%s' is not an absolute path", roots->items[i]);
            return -1;
        }
        if (add_root(c, roots->items[i]) != 0) goto oom;
    }
    if (roots->count) return 0;
    for (size_t i = 0; i < c->nglobs; i++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", c->globs[i].dir);
        char *wild = strpbrk(dir, "*?[");
        if (wild) {
            *wild = '\0';
            char *slash = strrchr(dir, '/');
            if (slash) *(slash == dir ? slash + 1 : slash) = '\0';
        }
        if (add_root(c, dir) != 0) goto oom;
        char pods[PATH_MAX + 8];
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            snprintf(pods, sizeof pods, "%s/pods", dir);
            if (add_root(c, pods) != 0) goto oom;
        }
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

static bool name_excluded(const struct config_strlist *patterns, const char *name)
{
    for (size_t i = 0; i < patterns->count; i++)
        if (fnmatch(patterns->items[i], name, 0) == 0) return true;
    return false;
}

static bool file_excluded(const struct collector *c, const struct parser_path_meta *meta)
{
    const struct config *cfg = c->cfg;
    return name_excluded(&cfg->collection.exclude_namespaces, meta->namespace_) ||
           name_excluded(&cfg->collection.exclude_pods, meta->pod) ||
           name_excluded(&cfg->collection.exclude_containers, meta->container);
}

static void file_link(struct collector *c, struct tailed_file *f)
{
    f->all_next = c->all_files;
    if (c->all_files) c->all_files->all_prev = f;
    c->all_files = f;
    if (f->dir) {
        f->dir_next = f->dir->files;
        f->dir->files = f;
    }
}

static void file_unlink(struct collector *c, struct tailed_file *f)
{
    if (f->all_prev) f->all_prev->all_next = f->all_next;
    else c->all_files = f->all_next;
    if (f->all_next) f->all_next->all_prev = f->all_prev;
    if (f->dir) {
        struct tailed_file **pp = &f->dir->files;
        while (*pp && *pp != f) pp = &(*pp)->dir_next;
        if (*pp) *pp = f->dir_next;
    }
    if (f->in_path_index) table_del_str(&c->files_by_path, f->src->path);
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

static bool fingerprint_matches(int fd, gzFile gz, uint64_t fp, uint32_t fp_len)
{
    char head[POSITIONS_FP_MAX];
    ssize_t n = read_head(fd, gz, head, fp_len);
    return n == (ssize_t)fp_len && positions_fingerprint(head, fp_len) == fp;
}

static void take_fingerprint(struct tailed_file *f)
{
    char head[POSITIONS_FP_MAX];
    ssize_t n = read_head(f->fd, f->gz, head, sizeof head);
    if (n < 0) n = 0;
    f->src->fp = positions_fingerprint(head, (size_t)n);
    f->src->fp_len = (uint32_t)n;
}

/* Creates the state for one open file (current or caught-up). */
static struct tailed_file *file_track(struct collector *c, const char *link_path, const char *real, int fd, gzFile gz,
                                      const struct stat *st, uint64_t offset)
{
    struct parser_path_meta meta;
    parser_path_meta(link_path, real, &meta);
    struct tailed_file *f = calloc(1, sizeof *f);
    struct source *src = f ? source_new(link_path, real, &meta, st->st_dev, st->st_ino) : NULL;
    if (!src) {
        log_error("out of memory opening %s", link_path);
        free(f);
        return NULL;
    }
    f->src = src;
    f->fd = fd;
    f->gz = gz;
    f->format = c->cfg->collection.format;
    f->offset = offset;
    atomic_store(&src->acked_offset, offset);
    take_fingerprint(f);
    char real_dir[PATH_MAX];
    snprintf(real_dir, sizeof real_dir, "%s", real);
    f->dir = dir_watch(c, dirname(real_dir), false);
    file_link(c, f);
    metrics_add(files_opened, 1);
    metrics_add(files_tailed, 1);
    return f;
}

struct saved_range {
    size_t first, count; /* indexes into collector.saved, sorted by path */
};

static bool same_file(const struct position *p, const struct stat *st)
{
    return p->dev == (uint64_t)st->st_dev && p->ino == (uint64_t)st->st_ino;
}

/* Rotation order: by name with any ".gz" ignored, since compressing a
 * rotated file does not make it newer. */
static int compare_names(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    size_t lx = strlen(x), ly = strlen(y);
    if (lx > 3 && strcmp(x + lx - 3, ".gz") == 0) lx -= 3;
    if (ly > 3 && strcmp(y + ly - 3, ".gz") == 0) ly -= 3;
    int c = strncmp(x, y, lx < ly ? lx : ly);
    return c ? c : (lx > ly) - (lx < ly);
}

/* The kubelet's rotated siblings of `real` (`0.log.<stamp>`, `0.log.<stamp>.gz`), oldest first. */
static size_t list_rotated(const char *real, char ***out)
{
    char dir_buf[PATH_MAX];
    snprintf(dir_buf, sizeof dir_buf, "%s", real);
    const char *dir = dirname(dir_buf);
    const char *base = strrchr(real, '/') + 1;
    size_t base_len = strlen(base);
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d) return 0;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, base, base_len) != 0 || e->d_name[base_len] != '.') continue;
        size_t len = strlen(e->d_name);
        if (len > 4 && strcmp(e->d_name + len - 4, ".tmp") == 0) continue; /* the kubelet compressing */
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            char **grown = realloc(*out, cap * sizeof **out);
            if (!grown) break;
            *out = grown;
        }
        if (asprintf(&(*out)[n], "%s/%s", dir, e->d_name) < 0) break;
        n++;
    }
    closedir(d);
    if (n) qsort(*out, n, sizeof **out, compare_names);
    /* While the kubelet compresses, X and X.gz both exist for a moment: they
     * hold the same lines, so keep only the uncompressed one. */
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (kept && compare_names(&(*out)[kept - 1], &(*out)[i]) == 0) {
            char *cur = (*out)[i];
            size_t len = strlen(cur);
            if (len > 3 && strcmp(cur + len - 3, ".gz") == 0) {
                free(cur);
            } else {
                free((*out)[kept - 1]);
                (*out)[kept - 1] = cur;
            }
            continue;
        }
        (*out)[kept++] = (*out)[i];
    }
    return kept;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

static bool open_any(const char *path, int *fd, gzFile *gz, struct stat *st)
{
    *gz = NULL;
    *fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (*fd < 0) return false;
    if (fstat(*fd, st) != 0) {
        close(*fd);
        return false;
    }
    size_t len = strlen(path);
    if (len > 3 && strcmp(path + len - 3, ".gz") == 0) {
        int dup_fd = dup(*fd); /* gzclose closes the descriptor it was given */
        *gz = dup_fd >= 0 ? gzdopen(dup_fd, "rb") : NULL;
        if (!*gz) {
            if (dup_fd >= 0) close(dup_fd);
            close(*fd);
            return false;
        }
        gzbuffer(*gz, 128 * 1024);
    }
    return true;
}

/* The file a position names may have been rotated (and compressed) while
 * loglet was stopped or paused by back-pressure. Finds the oldest rotated
 * sibling that one of `known` identifies and opens it (at its offset) and
 * every newer sibling (from 0), chained so that they are read in order before
 * the current file. When none is identified, the known file was deleted —
 * and since the kubelet deletes the oldest first, every sibling left is
 * newer, so all of them are read. `skip_known`: the identified file was
 * already read to its end (a live rotation), start after it.
 * Returns the last file of the chain (the current file's predecessor). */
static struct tailed_file *catch_up(struct collector *c, const char *link_path, const char *real,
                                    const struct position *known, size_t nknown, bool skip_known)
{
    char **names;
    size_t n = list_rotated(real, &names);
    size_t start = 0, i;
    uint64_t offset = 0;
    bool found = false;
    for (i = 0; i < n && !found; i++) {
        int fd;
        gzFile gz;
        struct stat st;
        if (!open_any(names[i], &fd, &gz, &st)) continue;
        for (size_t k = 0; k < nknown && !found; k++) {
            const struct position *p = &known[k];
            bool identity = gz ? true : same_file(p, &st);
            if (identity && p->fp_len && fingerprint_matches(fd, gz, p->fp, p->fp_len)) {
                found = true;
                start = skip_known ? i + 1 : i;
                offset = skip_known ? 0 : p->offset;
            }
        }
        if (gz) gzclose(gz);
        close(fd);
    }
    if (!found) {
        if (!skip_known && n)
            log_warn("%s: the file its saved position names was deleted by rotation before loglet could finish "
                     "it; its unread lines are lost, reading the %zu newer rotated files",
                     link_path, n);
    }
    struct tailed_file *first = NULL, *last = NULL;
    for (i = start; i < n; i++, offset = 0) {
        int fd;
        gzFile gz;
        struct stat st;
        if (!open_any(names[i], &fd, &gz, &st)) continue;
        /* A newer sibling may have its own saved position (it was the current
         * file when the positions were written): resume it there too. */
        for (size_t k = 0; k < nknown && i > start; k++) {
            const struct position *p = &known[k];
            if ((gz || same_file(p, &st)) && p->fp_len && fingerprint_matches(fd, gz, p->fp, p->fp_len)) {
                offset = p->offset;
                break;
            }
        }
        struct tailed_file *f = file_track(c, link_path, names[i], fd, gz, &st, offset);
        if (!f) {
            if (gz) gzclose(gz);
            close(fd);
            break;
        }
        f->state = FILE_DRAINING;
        f->draining_since_ms = 0; /* long rotated: close at its end */
        f->successor_opened = true;  /* its successors are the rest of this chain */
        log_info("catching up %s from rotated %s at offset %llu", link_path, names[i], (unsigned long long)offset);
        if (last) {
            last->successor = f;
            f->waiting = true;
        } else {
            first = f;
        }
        last = f;
    }
    free_names(names, n);
    if (first) collector_mark_pending(c, first);
    return last;
}

/* Decides where a file found at start-up begins, from its saved positions. */
static uint64_t resume_offset(struct collector *c, const char *link_path, const char *real, int fd,
                              const struct stat *st, struct tailed_file **predecessor)
{
    *predecessor = NULL;
    const struct saved_range *range = table_get_str(&c->saved_by_path, link_path);
    if (!range) {
        bool from_end = c->cfg->collection.read_from == CONFIG_READ_FROM_END && !c->positions_lost;
        return from_end ? (uint64_t)st->st_size : 0;
    }
    const struct position *current = NULL;
    bool others = false;
    for (size_t k = range->first; k < range->first + range->count; k++) {
        const struct position *p = &c->saved.items[k];
        if (!current && same_file(p, st) && fingerprint_matches(fd, NULL, p->fp, p->fp_len)) current = p;
        else others = true;
    }
    if (others) *predecessor = catch_up(c, link_path, real, &c->saved.items[range->first], range->count, false);
    if (!current) return 0; /* created while loglet was stopped: all of it is new */
    if (current->offset > (uint64_t)st->st_size) {
        log_warn("%s shrank below its saved offset (%llu > %lld) while loglet was stopped: reading it from the start",
                 link_path, (unsigned long long)current->offset, (long long)st->st_size);
        metrics_add(truncations, 1);
        return 0;
    }
    return current->offset;
}

/* Opens the file a glob match names. Files seen at start-up resume at their
 * saved position, or begin at the configured end; later ones at their start,
 * since all of them is new. */
static void file_open(struct collector *c, const char *link_path, bool at_startup, struct tailed_file *predecessor)
{
    if (table_get_str(&c->files_by_path, link_path)) return;

    char real[PATH_MAX];
    if (!realpath(link_path, real)) {
        if (errno == ENOENT)
            report_once(c, link_path, ENOENT, "skipping %s: it is a dangling symlink or vanished", link_path);
        else
            report_once(c, link_path, errno, "skipping %s: %s", link_path, strerror(errno));
        return;
    }
    if (!inside_roots(c, real)) {
        metrics_add(file_errors, 1);
        report_once(c, link_path, EPERM, "refusing %s: it resolves to %s, outside collection.symlink_roots (%s%s)",
                    link_path, real, c->nroots ? c->roots[0] : "", c->nroots > 1 ? ", …" : "");
        return;
    }
    struct parser_path_meta meta;
    parser_path_meta(link_path, real, &meta);
    if (file_excluded(c, &meta)) {
        if (!table_get_str(&c->reported, link_path)) metrics_add(files_excluded, 1);
        report_once(c, link_path, -1, "not tailing %s: excluded by namespace/pod/container pattern", link_path);
        return;
    }
    int fd = open(real, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        metrics_add(file_errors, 1);
        report_once(c, link_path, errno, "cannot open %s (%s): %s", link_path, real, strerror(errno));
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        report_once(c, link_path, EINVAL, "skipping %s (%s): not a regular file", link_path, real);
        close(fd);
        return;
    }
    uint64_t offset = at_startup ? resume_offset(c, link_path, real, fd, &st, &predecessor) : 0;
    struct tailed_file *f = file_track(c, link_path, real, fd, NULL, &st, offset);
    if (!f) {
        close(fd);
        return;
    }
    if (table_put_str(&c->files_by_path, f->src->path, f) != 0) {
        log_error("out of memory indexing %s", link_path);
        f->state = FILE_DRAINING;
    } else {
        f->in_path_index = true;
    }
    forget_report(c, link_path);
    log_info("tailing %s (%s) from offset %llu%s", link_path, real, (unsigned long long)f->offset,
             f->dir ? "" : ", polled");
    if (predecessor) {
        predecessor->successor = f;
        f->waiting = true;
    } else {
        collector_mark_pending(c, f);
    }
}

/* A closed file whose lines are still in flight keeps its position in the
 * positions file until they are delivered (see watch_save_positions). */
static void retire_source(struct collector *c, struct source *src)
{
    if (atomic_load(&src->refs) == 1) {
        source_unref(src);
        return;
    }
    if (c->nretired == c->retired_cap) {
        size_t cap = c->retired_cap ? c->retired_cap * 2 : 16;
        struct source **grown = realloc(c->retired, cap * sizeof *grown);
        if (!grown) {
            log_error("out of memory: the position of %s is not kept until its last lines are delivered", src->path);
            source_unref(src);
            return;
        }
        c->retired = grown;
        c->retired_cap = cap;
    }
    c->retired[c->nretired++] = src;
}

void watch_file_close(struct collector *c, struct tailed_file *f)
{
    file_unlink(c, f);
    if (f->gz) gzclose(f->gz);
    if (close(f->fd) != 0) log_warn("closing %s: %s", f->src->real_path, strerror(errno));
    log_info("closed %s (%s) at offset %llu", f->src->path, f->src->real_path, (unsigned long long)f->offset);
    if (f->successor) {
        f->successor->waiting = false;
        collector_mark_pending(c, f->successor);
    }
    retire_source(c, f->src);
    metrics_add(files_closed, 1);
    metrics_add(files_tailed, -1);
    struct watch_dir *dir = f->dir;
    free(f);
    if (dir) dir_release_if_unused(c, dir);
}

/* The path no longer leads to this file: read what is left, then close. */
static void begin_draining(struct collector *c, struct tailed_file *f, const char *why)
{
    if (f->state == FILE_DRAINING) return;
    log_debug("%s (%s): %s, draining", f->src->path, f->src->real_path, why);
    f->state = FILE_DRAINING;
    f->draining_since_ms = metrics_now_ms();
    if (f->in_path_index) {
        table_del_str(&c->files_by_path, f->src->path);
        f->in_path_index = false;
    }
    collector_mark_pending(c, f);
}

/* The path now names a new file: read the old one to its end, then every
 * file rotated after it that we have not seen (several rotations can pass
 * while the collector waits on a full ring), then the new one — in order. */
static void open_successor(struct collector *c, struct tailed_file *old)
{
    enum read_result r;
    do r = tail_read(c, old, false);
    while (r == READ_MORE);
    if (old->src->fp_len < POSITIONS_FP_MAX) take_fingerprint(old); /* it was young when opened */
    struct position me = {.dev = (uint64_t)old->src->dev, .ino = (uint64_t)old->src->ino,
                          .fp = old->src->fp, .fp_len = old->src->fp_len, .offset = old->offset};
    struct tailed_file *chain = catch_up(c, old->src->path, old->src->real_path, &me, 1, true);
    file_open(c, old->src->path, false, chain);
}

static void rotate(struct collector *c, struct tailed_file *old)
{
    begin_draining(c, old, "rotated");
    old->successor_opened = true;
    metrics_add(rotations, 1);
    open_successor(c, old);
}

/* Returns true when it changed the directory's file list. */
static bool check_identity(struct collector *c, struct tailed_file *f)
{
    if (f->state == FILE_DRAINING) {
        /* Renamed away before a new file appeared at the path: open it now that it exists. */
        if (!f->successor_opened && !table_get_str(&c->files_by_path, f->src->path) &&
            access(f->src->path, F_OK) == 0) {
            f->successor_opened = true;
            open_successor(c, f);
            return table_get_str(&c->files_by_path, f->src->path) != NULL;
        }
        return false;
    }
    struct stat st;
    if (stat(f->src->real_path, &st) != 0) {
        begin_draining(c, f, errno == ENOENT ? "renamed or deleted" : strerror(errno));
        return true;
    }
    if (st.st_ino != f->src->ino || st.st_dev != f->src->dev) {
        rotate(c, f);
        return true;
    }
    return false;
}

void watch_check_identities(struct collector *c)
{
    for (struct watch_dir *dir = c->check_head; dir; dir = c->check_head) {
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

static void schedule_identity_check(struct collector *c, struct watch_dir *dir)
{
    if (dir->check_identity) return;
    dir->check_identity = true;
    dir->check_next = c->check_head;
    c->check_head = dir;
}

static void handle_link_event(struct collector *c, struct watch_dir *dir, const struct inotify_event *ev)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir->path, ev->name) >= sizeof path) return;
    if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
        for (size_t i = 0; i < c->nglobs; i++) {
            const struct glob_spec *g = &c->globs[i];
            if (!g->dir_has_wildcards && strcmp(g->dir, dir->path) == 0 && fnmatch(g->base, ev->name, 0) == 0) {
                file_open(c, path, false, NULL);
                break;
            }
        }
    }
    if (ev->mask & (IN_DELETE | IN_MOVED_FROM)) {
        forget_report(c, path);
        struct tailed_file *f = table_get_str(&c->files_by_path, path);
        if (f) begin_draining(c, f, "its path was removed");
    }
}

static void handle_dir_gone(struct collector *c, struct watch_dir *dir, uint32_t mask)
{
    for (struct tailed_file *f = dir->files; f; f = f->dir_next) begin_draining(c, f, "its directory was removed");
    if (mask & IN_IGNORED) {
        /* The kernel dropped the watch: the wd may be reused, so forget it. */
        table_del_int(&c->dirs_by_wd, dir->wd);
        dir->wd = -1;
        dir->holds_links = false;
        if (!dir->files) dir_release_if_unused(c, dir);
    }
}

static void handle_event(struct collector *c, const struct inotify_event *ev)
{
    if (ev->mask & IN_Q_OVERFLOW) {
        log_warn("inotify queue overflowed: rescanning every watched path");
        c->rescan_needed = true;
        for (struct tailed_file *f = c->all_files; f; f = f->all_next) collector_mark_pending(c, f);
        return;
    }
    struct watch_dir *dir = table_get_int(&c->dirs_by_wd, ev->wd);
    if (!dir) return;
    if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
        handle_dir_gone(c, dir, ev->mask);
        return;
    }
    if (dir->holds_links && ev->len) handle_link_event(c, dir, ev);
    if (!dir->files) return;
    for (struct tailed_file *f = dir->files; f; f = f->dir_next) collector_mark_pending(c, f);
    if (ev->mask & (IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE)) schedule_identity_check(c, dir);
}

void watch_handle_events(struct collector *c)
{
    char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(c->inotify_fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) log_error("reading inotify events: %s", strerror(errno));
            return;
        }
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            handle_event(c, ev);
            p += sizeof *ev + ev->len;
        }
    }
}

static void scan_glob(struct collector *c, struct glob_spec *g, bool at_startup)
{
    if (!g->dir_has_wildcards) dir_watch(c, g->dir, true);
    glob_t matches;
    int rc = glob(g->pattern, GLOB_NOSORT, NULL, &matches);
    if (rc == GLOB_NOMATCH) return;
    if (rc != 0) {
        report_once(c, g->pattern, rc, "cannot expand %s: %s", g->pattern,
                    rc == GLOB_NOSPACE ? "out of memory" : "read error");
        return;
    }
    for (size_t i = 0; i < matches.gl_pathc; i++) file_open(c, matches.gl_pathv[i], at_startup, NULL);
    globfree(&matches);
}

void watch_scan(struct collector *c, bool at_startup)
{
    for (size_t i = 0; i < c->nglobs; i++) scan_glob(c, &c->globs[i], at_startup);
    c->rescan_needed = false;
    c->last_rescan_ms = metrics_now_ms();
}

int watch_setup(struct collector *c, char *err, size_t errlen)
{
    const struct config_strlist *paths = &c->cfg->collection.paths;
    c->globs = calloc(paths->count ? paths->count : 1, sizeof *c->globs);
    if (!c->globs) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < paths->count; i++) {
        const char *pattern = paths->items[i];
        const char *slash = strrchr(pattern, '/');
        if (pattern[0] != '/' || !slash) {
            snprintf(err, errlen, "collection.paths: '%s' is not an absolute path", pattern);
            return -1;
        }
        struct glob_spec *g = &c->globs[c->nglobs++];
        g->pattern = strdup(pattern);
        g->dir = slash == pattern ? strdup("/") : strndup(pattern, (size_t)(slash - pattern));
        g->base = strdup(slash + 1);
        if (!g->pattern || !g->dir || !g->base) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        g->dir_has_wildcards = strpbrk(g->dir, "*?[") != NULL;
    }
    if (setup_roots(c, err, errlen) != 0) return -1;
    c->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (c->inotify_fd < 0) {
        log_warn("inotify unavailable (%s; see fs.inotify.max_user_instances): polling every %lld ms instead",
                 strerror(errno), (long long)c->cfg->collection.poll_interval_ms);
        metrics_add(inotify_fallbacks, 1);
    }
    return 0;
}

void watch_teardown(struct collector *c)
{
    while (c->all_files) {
        struct tailed_file *f = c->all_files;
        struct watch_dir *dir = f->dir;
        file_unlink(c, f);
        if (f->gz) gzclose(f->gz);
        close(f->fd);
        source_unref(f->src);
        metrics_add(files_tailed, -1);
        free(f);
        if (dir) dir_release_if_unused(c, dir);
    }
    for (size_t i = 0; i < c->dirs_by_wd.capacity; i++) {
        struct watch_dir *dir = c->dirs_by_wd.slots[i].hash >= 2 ? c->dirs_by_wd.slots[i].value : NULL;
        if (!dir) continue;
        free(dir->path);
        free(dir);
    }
    table_free(&c->dirs_by_wd);
    table_free(&c->files_by_path);
    for (size_t i = 0; i < c->reported.capacity; i++) {
        struct reported_path *r = c->reported.slots[i].hash >= 2 ? c->reported.slots[i].value : NULL;
        if (!r) continue;
        free(r->path);
        free(r);
    }
    table_free(&c->reported);
    for (size_t i = 0; i < c->nretired; i++) source_unref(c->retired[i]);
    free(c->retired);
    watch_free_positions(c);
    for (size_t i = 0; i < c->nglobs; i++) {
        free(c->globs[i].pattern);
        free(c->globs[i].dir);
        free(c->globs[i].base);
    }
    free(c->globs);
    for (size_t i = 0; i < c->nroots; i++) free(c->roots[i]);
    free(c->roots);
    if (c->inotify_fd >= 0) close(c->inotify_fd);
}

static int compare_positions(const void *a, const void *b)
{
    return strcmp(((const struct position *)a)->path, ((const struct position *)b)->path);
}

void watch_load_positions(struct collector *c)
{
    const char *file = c->cfg->collection.positions_file;
    char err[1024];
    if (access(file, F_OK) != 0 && errno == ENOENT) {
        log_info("no positions file at %s yet: files present now start at their %s", file,
                 c->cfg->collection.read_from == CONFIG_READ_FROM_END ? "end" : "beginning");
        return;
    }
    if (positions_read(file, &c->saved, err, sizeof err) != 0) {
        char aside[PATH_MAX];
        snprintf(aside, sizeof aside, "%s.corrupt", file);
        bool moved = rename(file, aside) == 0;
        log_error("positions file unusable: %s; every file present now is read from the beginning (duplicates "
                  "rather than loss)%s%s",
                  err, moved ? "; the bad file was kept as " : "", moved ? aside : "");
        c->positions_lost = true;
        return;
    }
    qsort(c->saved.items, c->saved.count, sizeof *c->saved.items, compare_positions);
    for (size_t i = 0; i < c->saved.count;) {
        size_t j = i + 1;
        while (j < c->saved.count && strcmp(c->saved.items[j].path, c->saved.items[i].path) == 0) j++;
        struct saved_range *range = malloc(sizeof *range);
        if (!range || table_put_str(&c->saved_by_path, c->saved.items[i].path, range) != 0) {
            free(range);
            log_error("out of memory loading positions: files without theirs are read from the beginning");
            c->positions_lost = true;
            break;
        }
        *range = (struct saved_range){i, j - i};
        i = j;
    }
    log_info("loaded %zu positions from %s", c->saved.count, file);
}

/* Saved positions are only needed to place the files found at start-up. */
void watch_free_positions(struct collector *c)
{
    for (size_t i = 0; i < c->saved_by_path.capacity; i++)
        if (c->saved_by_path.slots[i].hash >= 2) free(c->saved_by_path.slots[i].value);
    table_free(&c->saved_by_path);
    positions_free(&c->saved);
}

static int add_position(struct positions *ps, struct source *src)
{
    struct position p = {
        .path = src->path, .real_path = src->real_path, .dev = (uint64_t)src->dev, .ino = (uint64_t)src->ino,
        .fp = src->fp, .fp_len = src->fp_len,
        .offset = atomic_load_explicit(&src->acked_offset, memory_order_acquire),
    };
    return positions_add(ps, &p);
}

int watch_save_positions(struct collector *c)
{
    struct positions ps = {0};
    int rc = 0;
    for (struct tailed_file *f = c->all_files; f && rc == 0; f = f->all_next) {
        if (f->src->fp_len < POSITIONS_FP_MAX) take_fingerprint(f); /* it may have grown */
        rc = add_position(&ps, f->src);
    }
    size_t kept = 0;
    for (size_t i = 0; i < c->nretired; i++) {
        struct source *src = c->retired[i];
        if (atomic_load(&src->refs) == 1) { /* every chunk delivered: nothing left to resume */
            source_unref(src);
            continue;
        }
        c->retired[kept++] = src;
        if (rc == 0) rc = add_position(&ps, src);
    }
    c->nretired = kept;
    char err[1024];
    if (rc != 0) {
        log_error("out of memory saving positions");
    } else if ((rc = positions_write(c->cfg->collection.positions_file, &ps, err, sizeof err)) != 0) {
        log_error("saving positions: %s", err);
    }
    metrics_add(positions_writes, 1);
    if (rc != 0) metrics_add(positions_errors, 1);
    positions_free(&ps);
    c->last_positions_save_ms = metrics_now_ms();
    return rc;
}
