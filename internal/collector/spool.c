/*
 * The spool: a hard link to every open file, so that what the kubelet
 * deletes while loglet holds it survives loglet being killed.
 *
 * An open descriptor keeps a deleted file's data only as long as the
 * process lives. Held files (rotated past containerLogMaxFiles, or of a
 * deleted pod) whose lines are not delivered yet would die with a kill -9
 * or an OOM kill. So each file gets a link in collection.spool_dir when it
 * is opened, named by device and inode (`<dev>-<ino>`, `.gz` for a
 * compressed sibling), and loses it once the file is closed and all its
 * lines are delivered. A saved position whose file is gone from the log
 * tree is then looked up in the spool by its device and inode, and read on
 * from there under its original path and labels.
 *
 * Contract:
 *  - Links are made through /proc/self/fd, so they name the very file that
 *    is open, however it was renamed meanwhile. A file already deleted
 *    (no links left) cannot be linked: only files opened before the kubelet
 *    deleted them are protected, which is every file the agent saw appear.
 *  - A hard link cannot cross filesystems (or bind mounts): files on
 *    another one are said once per device and not spooled.
 *  - The spool holds no data of its own; it only delays the freeing of
 *    files loglet still needs. While loglet runs that is bounded by
 *    collection.max_held_bytes (a released file loses its link). Links of
 *    files still open at a clean stop are kept, so that a file deleted while
 *    loglet is down is read at its next start; links no saved position
 *    names are removed right after the start-up scan.
 *  - Everything runs on the collector thread; at most two system calls per
 *    file opened or closed, none per line.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "collector_internal.h"
#include "log/log.h"
#include "metrics/metrics.h"

#define SPOOL_NAME_MAX 48

static void spool_name(char *out, uint64_t dev, uint64_t ino, bool gz)
{
    snprintf(out, SPOOL_NAME_MAX, "%" PRIx64 "-%" PRIx64 "%s", dev, ino, gz ? ".gz" : "");
}

static int make_dirs(char *path)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        int rc = mkdir(path, 0755);
        *p = '/';
        if (rc != 0 && errno != EEXIST) return -1;
    }
    return mkdir(path, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

int spool_open(struct collector *c, char *err, size_t errlen)
{
    c->spool_fd = -1;
    const char *dir = c->cfg->collection.spool_dir;
    char derived[PATH_MAX];
    if (!dir || !*dir) {
        char buf[PATH_MAX];
        snprintf(buf, sizeof buf, "%s", c->cfg->collection.positions_file);
        if (snprintf(derived, sizeof derived, "%s/spool", dirname(buf)) >= (int)sizeof derived) {
            snprintf(err, errlen, "collection.spool_dir: path beside %s too long", c->cfg->collection.positions_file);
            return -1;
        }
        dir = derived;
    }
    char made[PATH_MAX];
    snprintf(made, sizeof made, "%s", dir);
    if (make_dirs(made) != 0 || (c->spool_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
        /* A read-only mount, say: lines flow as before, only a crash while
         * holding deleted files loses them. Said, not fatal. */
        log_warn("collection.spool_dir: cannot use %s: %s; running without a spool: files the kubelet deletes while "
                 "loglet holds them are lost if loglet is killed before reading them",
                 dir, strerror(errno));
        c->spool_fd = -1;
        return 0;
    }
    struct stat st;
    if (fstat(c->spool_fd, &st) != 0 || (st.st_mode & S_IWOTH)) {
        snprintf(err, errlen, "collection.spool_dir: %s is world-writable; use a directory only loglet can write to",
                 dir);
        close(c->spool_fd);
        c->spool_fd = -1;
        return -1;
    }
    if (!(c->spool_path = strdup(dir))) {
        snprintf(err, errlen, "out of memory");
        close(c->spool_fd);
        c->spool_fd = -1;
        return -1;
    }
    return 0;
}

static bool device_refused(struct collector *c, dev_t dev)
{
    for (size_t i = 0; i < c->spool_nrefused; i++)
        if (c->spool_refused[i] == dev) return true;
    return false;
}

static void refuse_device(struct collector *c, dev_t dev, const char *path, int error)
{
    if (c->spool_nrefused < sizeof c->spool_refused / sizeof *c->spool_refused)
        c->spool_refused[c->spool_nrefused++] = dev;
    log_warn("cannot keep a link to %s in the spool %s: %s; files on this filesystem that the kubelet deletes while "
             "loglet holds them are lost if loglet is killed before reading them (put collection.spool_dir on the "
             "logs' filesystem and mount)",
             path, c->spool_path, strerror(error));
}

void spool_keep(struct collector *c, struct tailed_file *f)
{
    struct source *src = f->src;
    if (c->spool_fd < 0 || src->spooled || device_refused(c, src->dev)) return;
    char name[SPOOL_NAME_MAX], self[64];
    spool_name(name, (uint64_t)src->dev, (uint64_t)src->ino, f->gz != NULL);
    snprintf(self, sizeof self, "/proc/self/fd/%d", f->fd);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (linkat(AT_FDCWD, self, c->spool_fd, name, AT_SYMLINK_FOLLOW) == 0) {
            src->spooled = true;
            src->spooled_gz = f->gz != NULL;
            metrics_add(spooled_files, 1);
            return;
        }
        if (errno != EEXIST) break;
        struct stat st;
        if (fstatat(c->spool_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == src->dev &&
            st.st_ino == src->ino) {
            src->spooled = true; /* kept from the last run */
            src->spooled_gz = f->gz != NULL;
            metrics_add(spooled_files, 1);
            return;
        }
        /* A stale link: its inode number was reused by this file. */
        if (unlinkat(c->spool_fd, name, 0) != 0 && errno != ENOENT) break;
    }
    int error = errno;
    if (error == ENOENT) return; /* deleted before it could be linked: nothing to keep */
    if (error == EXDEV || error == EPERM || error == EACCES || error == EROFS || error == EMLINK) {
        refuse_device(c, src->dev, src->real_path, error);
        return;
    }
    if (!c->spool_error_said) {
        c->spool_error_said = true;
        log_warn("linking %s into the spool %s: %s (said once)", src->real_path, c->spool_path, strerror(error));
    }
}

const char *collector_spool_dir(const struct collector *c) { return c->spool_fd >= 0 ? c->spool_path : NULL; }

void spool_forget(struct collector *c, struct source *src)
{
    if (!src->spooled || c->spool_fd < 0) return;
    char name[SPOOL_NAME_MAX];
    spool_name(name, (uint64_t)src->dev, (uint64_t)src->ino, src->spooled_gz);
    src->spooled = false;
    metrics_add(spooled_files, -1);
    if (unlinkat(c->spool_fd, name, 0) != 0 && errno != ENOENT && !c->spool_error_said) {
        c->spool_error_said = true;
        log_warn("removing %s from the spool %s: %s (said once)", name, c->spool_path, strerror(errno));
    }
}

void spool_handover(struct source *from, struct source *to)
{
    to->spooled = from->spooled;
    to->spooled_gz = from->spooled_gz;
    from->spooled = false;
}

bool spool_reopen(struct collector *c, const struct position *p, int *fd, gzFile *gz, struct stat *st)
{
    if (c->spool_fd < 0) return false;
    for (int compressed = 0; compressed < 2; compressed++) {
        char name[SPOOL_NAME_MAX];
        spool_name(name, p->dev, p->ino, compressed);
        *gz = NULL;
        *fd = openat(c->spool_fd, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
        if (*fd < 0) continue;
        /* Only a file gone from the tree (the spool's link its last): one
         * still there is read through its path, and reading it here too would
         * send it twice (an entry saved while it was empty names no file). */
        bool ok = fstat(*fd, st) == 0 && S_ISREG(st->st_mode) && (uint64_t)st->st_dev == p->dev &&
                  (uint64_t)st->st_ino == p->ino && st->st_nlink == 1;
        if (ok && compressed) {
            int dup_fd = dup(*fd);
            *gz = dup_fd >= 0 ? gzdopen(dup_fd, "rb") : NULL;
            if (!*gz && dup_fd >= 0) close(dup_fd);
            ok = *gz != NULL && p->fp_len > 0 && rotation_fingerprint_matches(*fd, *gz, p->fp, p->fp_len);
        } else if (ok) {
            ok = rotation_identifies(p->fp, p->fp_len, *fd);
        }
        if (ok) return true;
        if (*gz) gzclose(*gz);
        *gz = NULL;
        close(*fd);
    }
    return false;
}

void spool_sweep(struct collector *c)
{
    if (c->spool_fd < 0) return;
    struct table owned = {0};
    bool indexed = true;
    char (*names)[SPOOL_NAME_MAX] = c->nfiles ? calloc(c->nfiles, sizeof *names) : NULL;
    if (c->nfiles && !names) indexed = false;
    size_t i = 0;
    for (struct tailed_file *f = c->all_files; f && indexed; f = f->all_next, i++) {
        spool_name(names[i], (uint64_t)f->src->dev, (uint64_t)f->src->ino, f->gz != NULL);
        if (table_put_str(&owned, names[i], f) != 0) indexed = false;
    }
    if (!indexed) {
        log_error("out of memory checking the spool %s: stale links are left for the next start", c->spool_path);
    } else {
        int dup_fd = dup(c->spool_fd);
        DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
        if (!d) {
            if (dup_fd >= 0) close(dup_fd);
            log_warn("reading the spool %s: %s", c->spool_path, strerror(errno));
        } else {
            size_t removed = 0, kept = 0;
            struct dirent *e;
            while ((e = readdir(d))) {
                if (e->d_name[0] == '.' || table_get_str(&owned, e->d_name)) continue;
                if (c->positions_lost) {
                    /* No position names them, so no path or labels: they
                     * cannot be read, but are not thrown away unsaid. */
                    kept++;
                    continue;
                }
                if (unlinkat(c->spool_fd, e->d_name, 0) == 0) removed++;
                else log_warn("removing %s/%s: %s", c->spool_path, e->d_name, strerror(errno));
            }
            closedir(d);
            if (removed) log_info("spool %s: removed %zu links no saved position needs", c->spool_path, removed);
            if (kept) {
                metrics_add(files_missed, kept);
                log_error("spool %s: %zu files loglet held cannot be matched to their paths, the positions file being "
                          "unusable; their unread lines are lost (loglet_files_missed_total). They are kept there "
                          "until the next start for inspection",
                          c->spool_path, kept);
            }
        }
    }
    table_free(&owned);
    free(names);
}

void spool_close(struct collector *c)
{
    if (c->spool_fd >= 0) close(c->spool_fd);
    c->spool_fd = -1;
    free(c->spool_path);
    c->spool_path = NULL;
}
