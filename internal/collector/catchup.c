/*
 * Catch-up: the rotated siblings of a file, read in order when the agent
 * did not see them appear — after downtime (its saved position names a file
 * now rotated, maybe compressed), or a rotation the watcher reported late.
 *
 * Siblings are the kubelet's `0.log.<YYYYMMDD-HHMMSS>[.gz]` (older first by
 * name; compressing does not make a file newer) and docker json-file's
 * `<id>-json.log.<N>[.gz]` (a larger N is older). The kubelet's `.tmp`
 * files (a compression in progress) are ignored, and when X and X.gz both
 * exist only X is read: they hold the same lines.
 *
 * A saved position identifies its file by device and inode plus a
 * fingerprint of the first bytes; a compressed sibling has a new inode, so
 * it is identified by the fingerprint of its decompressed head alone.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "collector_internal.h"
#include "log/log.h"
#include "metrics/metrics.h"

static size_t strip_gz(const char *s, size_t len)
{
    return len > 3 && strcmp(s + len - 3, ".gz") == 0 ? len - 3 : len;
}

/* Docker's rotation number after "<base>.", or -1 when the suffix is not one. */
static long docker_generation(const char *suffix, size_t len)
{
    if (len == 0 || len > 9) return -1;
    long n = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)suffix[i])) return -1;
        n = n * 10 + (suffix[i] - '0');
    }
    return n;
}

/* Oldest first; `base_len` is the current file's name length (qsort_r's
 * context), so the suffix after "<base>." can be read as docker's number. */
static int compare_names(const void *a, const void *b, void *base_len)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    size_t lx = strip_gz(x, strlen(x)), ly = strip_gz(y, strlen(y));
    size_t skip = *(const size_t *)base_len + 1;
    if (lx > skip && ly > skip) {
        long gx = docker_generation(x + skip, lx - skip), gy = docker_generation(y + skip, ly - skip);
        if (gx >= 0 && gy >= 0) return (gx < gy) - (gx > gy);
    }
    int c = strncmp(x, y, lx < ly ? lx : ly);
    return c ? c : (lx > ly) - (lx < ly);
}

/* The rotated siblings of `real`, oldest first, full paths. */
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
            if (!grown) {
                log_error("out of memory listing the rotated files of %s", real);
                break;
            }
            *out = grown;
        }
        if (!((*out)[n] = malloc(len + 1))) {
            log_error("out of memory listing the rotated files of %s", real);
            break;
        }
        memcpy((*out)[n], e->d_name, len + 1);
        n++;
    }
    closedir(d);
    if (n) qsort_r(*out, n, sizeof **out, compare_names, &base_len);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (kept && compare_names(&(*out)[kept - 1], &(*out)[i], &base_len) == 0) {
            char *cur = (*out)[i];
            if (strip_gz(cur, strlen(cur)) != strlen(cur)) {
                free(cur);
            } else {
                free((*out)[kept - 1]);
                (*out)[kept - 1] = cur;
            }
            continue;
        }
        (*out)[kept++] = (*out)[i];
    }
    for (size_t i = 0; i < kept; i++) {
        char *full;
        if (asprintf(&full, "%s/%s", dir, (*out)[i]) < 0) full = NULL;
        free((*out)[i]);
        (*out)[i] = full;
    }
    return kept;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

bool catchup_open_any(const char *path, int *fd, gzFile *gz, struct stat *st)
{
    *gz = NULL;
    if (!path) return false;
    *fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (*fd < 0) return false;
    if (fstat(*fd, st) != 0) {
        close(*fd);
        return false;
    }
    size_t len = strlen(path);
    if (strip_gz(path, len) != len) {
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

static bool same_file(const struct position *p, const struct stat *st)
{
    return p->dev == (uint64_t)st->st_dev && p->ino == (uint64_t)st->st_ino;
}

/* By device, inode and fingerprint; or by a full fingerprint alone, as a
 * compressed copy or a copytruncate copy keeps the content but not the
 * inode (256 bytes with their timestamps do not repeat by chance). */
static bool identifies(const struct position *p, int fd, gzFile gz, const struct stat *st)
{
    if (!gz && !same_file(p, st) && p->fp_len < POSITIONS_FP_MAX) return false;
    return rotation_fingerprint_matches(fd, gz, p->fp, p->fp_len);
}

/* A sibling already open (held, or the compressed copy of one held). */
static bool already_tracked(struct collector *c, const char *real, int fd, gzFile gz, const struct stat *st)
{
    char dir_buf[PATH_MAX];
    snprintf(dir_buf, sizeof dir_buf, "%s", real);
    struct watch_dir *dir = table_get_str(&c->dirs_by_path, dirname(dir_buf));
    for (struct tailed_file *f = dir ? dir->files : NULL; f; f = f->dir_next) {
        if (f->src->dev == st->st_dev && f->src->ino == st->st_ino) return true;
        if (gz && f->src->fp_len >= POSITIONS_FP_MAX && rotation_fingerprint_matches(fd, gz, f->src->fp, f->src->fp_len))
            return true;
    }
    return false;
}

struct spooled {
    const struct position *p;
    int fd;
    gzFile gz;
    struct stat st;
};

static int compare_age(const void *a, const void *b)
{
    const struct stat *x = &((const struct spooled *)a)->st, *y = &((const struct spooled *)b)->st;
    if (x->st_mtim.tv_sec != y->st_mtim.tv_sec) return x->st_mtim.tv_sec < y->st_mtim.tv_sec ? -1 : 1;
    if (x->st_mtim.tv_nsec != y->st_mtim.tv_nsec) return x->st_mtim.tv_nsec < y->st_mtim.tv_nsec ? -1 : 1;
    return (x->st_ino > y->st_ino) - (x->st_ino < y->st_ino);
}

/* Saved positions no file in the tree answers to, whose files the spool
 * kept (deleted by the kubelet while loglet held them): read on from there,
 * oldest first (a rotated file is no longer written, so its modification
 * time orders it), chained after `last`. Returns the end of the chain. */
static struct tailed_file *recover_spooled(struct collector *c, const char *link_path, const struct position *known,
                                           size_t nknown, bool *identified, const struct position *current,
                                           struct tailed_file *last)
{
    struct spooled *found = calloc(nknown, sizeof *found);
    if (!found) {
        log_error("out of memory looking for the spooled files of %s", link_path);
        return last;
    }
    size_t n = 0;
    for (size_t k = 0; k < nknown; k++) {
        if (identified[k] || &known[k] == current || known[k].done) continue;
        struct spooled *s = &found[n];
        if (!spool_reopen(c, &known[k], &s->fd, &s->gz, &s->st)) continue;
        identified[k] = true;
        if (!s->gz && known[k].offset >= (uint64_t)s->st.st_size) { /* delivered to its end */
            close(s->fd);
            continue;
        }
        s->p = &known[k];
        n++;
    }
    if (n > 1) qsort(found, n, sizeof *found, compare_age);
    /* The path lives on, yet the kubelet deleted a file it had: it rotated
     * that far, and files created by those rotations while loglet was down
     * (never opened, so never linked) may be gone as well. */
    struct stat link_st;
    bool path_lives = n && lstat(link_path, &link_st) == 0;
    for (size_t i = 0; i < n; i++) {
        struct spooled *s = &found[i];
        struct tailed_file *f = rotation_track_detached(c, link_path, s->p->real_path, s->fd, s->gz, &s->st,
                                                        s->p->offset);
        if (!f) {
            if (s->gz) gzclose(s->gz);
            close(s->fd);
            identified[s->p - known] = false; /* said missed below: its lines cannot be read */
            continue;
        }
        if (last) {
            last->successor = f;
            f->waiting = true;
        }
        rotation_begin_draining(c, f, "read from the spool");
        f->draining_since_ms = 0;
        f->successor_opened = true;
        metrics_add(files_recovered, 1);
        if (path_lives)
            log_warn("%s (%s): deleted by the kubelet while loglet held it or was down; reading the rest from the "
                     "spool at offset %llu; files rotated after it and deleted while loglet was down, if any, were "
                     "never seen and their lines are lost",
                     link_path, s->p->real_path, (unsigned long long)s->p->offset);
        else
            log_info("%s (%s): its pod was deleted while loglet held it or was down; reading the rest from the spool "
                     "at offset %llu",
                     link_path, s->p->real_path, (unsigned long long)s->p->offset);
        last = f;
    }
    free(found);
    return last;
}

/* Saved positions that no file on disk answers to any more (the current
 * file's own entry aside): their files were deleted while loglet was down,
 * with whatever they held past their offset. Said and counted, one by one. */
static void report_missed(const char *link_path, const struct position *known, size_t nknown, const bool *identified,
                          const struct position *current)
{
    for (size_t k = 0; k < nknown; k++) {
        /* Saved while empty: nothing can tell it apart, so it is not said
         * gone; catch-up reads every sibling after the last one known. */
        if (identified[k] || &known[k] == current || known[k].done || known[k].fp_len == 0) continue;
        metrics_add(files_missed, 1);
        log_warn("%s (%s): the file this saved position names is gone (deleted while loglet was down): lines after "
                 "offset %llu, if any, are lost (loglet_files_missed_total)",
                 link_path, known[k].real_path, (unsigned long long)known[k].offset);
    }
}

struct tailed_file *catchup_open(struct collector *c, const char *link_path, const char *real,
                                 const struct position *known, size_t nknown, bool after_known,
                                 const struct position *current, struct tailed_file *predecessor)
{
    char **names;
    size_t n = list_rotated(real, &names);
    size_t start = 0;
    uint64_t offset = 0;
    bool found = false;
    bool *identified = nknown ? calloc(nknown, sizeof *identified) : NULL;
    if (nknown && !identified) log_error("out of memory checking the saved positions of %s", link_path);
    for (size_t i = 0; i < n && nknown && identified; i++) {
        int fd;
        gzFile gz;
        struct stat st;
        if (!catchup_open_any(names[i], &fd, &gz, &st)) continue;
        for (size_t k = 0; k < nknown; k++) {
            if (identified[k] || !identifies(&known[k], fd, gz, &st)) continue;
            identified[k] = true;
            if (found) {
                /* Two positions for one file (a copytruncate copy: the old
                 * content's entry and the copy's own): the lower offset,
                 * so lines in flight under either are read again. */
                if (start == i && !after_known && known[k].offset < offset) offset = known[k].offset;
                continue;
            }
            found = true; /* the oldest sibling a position names: reading starts there */
            start = after_known ? i + 1 : i;
            offset = after_known ? 0 : known[k].offset;
        }
        if (gz) gzclose(gz);
        close(fd);
        if (found && after_known) break; /* a live rotation: only where to go on matters */
    }
    struct tailed_file *last = predecessor;
    if (!after_known && identified) {
        last = recover_spooled(c, link_path, known, nknown, identified, current, last);
        report_missed(link_path, known, nknown, identified, current);
    }
    free(identified);
    for (size_t i = start; i < n; i++, offset = 0) {
        int fd;
        gzFile gz;
        struct stat st;
        if (!catchup_open_any(names[i], &fd, &gz, &st)) continue;
        if (already_tracked(c, names[i], fd, gz, &st)) {
            if (gz) gzclose(gz);
            close(fd);
            continue;
        }
        /* A newer sibling may have its own saved position (it was the
         * current file when the positions were written): resume it there. */
        bool resumed = false;
        for (size_t k = 0; k < nknown && i > start; k++) {
            if (identifies(&known[k], fd, gz, &st) && (!resumed || known[k].offset < offset)) {
                offset = known[k].offset;
                resumed = true;
            }
        }
        struct tailed_file *f = rotation_track(c, link_path, names[i], fd, gz, &st, offset);
        if (!f) {
            if (gz) gzclose(gz);
            close(fd);
            break;
        }
        if (last) {
            last->successor = f;
            f->waiting = true; /* before draining begins, so it is not queued to be read yet */
        }
        rotation_begin_draining(c, f, "a rotated file being caught up");
        f->draining_since_ms = 0; /* long rotated: close at its end */
        f->successor_opened = true; /* its successors are the rest of this chain */
        log_info("catching up %s from rotated %s at offset %llu", link_path, names[i], (unsigned long long)offset);
        last = f;
    }
    free_names(names, n);
    return last;
}

bool catchup_was_rotated(const struct position *p)
{
    char **names;
    size_t n = list_rotated(p->real_path, &names);
    bool rotated = false;
    for (size_t i = n; i-- > 0 && !rotated;) { /* the newest first: the likeliest */
        int fd;
        gzFile gz;
        struct stat st;
        if (!catchup_open_any(names[i], &fd, &gz, &st)) continue;
        /* Saved while empty: only its inode tells it (a rename keeps it). */
        rotated = p->fp_len ? identifies(p, fd, gz, &st) : !gz && same_file(p, &st);
        if (gz) gzclose(gz);
        close(fd);
    }
    free_names(names, n);
    return rotated;
}

struct tailed_file *catchup_copy(struct collector *c, struct tailed_file *f, const struct position *old)
{
    char **names;
    size_t n = list_rotated(f->src->real_path, &names);
    struct tailed_file *copy = NULL;
    for (size_t i = n; i-- > 0 && !copy;) { /* the newest sibling is the likeliest copy */
        int fd;
        gzFile gz;
        struct stat st;
        if (!catchup_open_any(names[i], &fd, &gz, &st)) continue;
        if ((uint64_t)st.st_ino == old->ino || !identifies(old, fd, gz, &st) || already_tracked(c, names[i], fd, gz, &st) ||
            !(copy = rotation_track(c, f->src->path, names[i], fd, gz, &st, old->offset))) {
            if (gz) gzclose(gz);
            close(fd);
            continue;
        }
        rotation_begin_draining(c, copy, "the copy of a truncated file");
        copy->draining_since_ms = 0;
        copy->successor_opened = true;
        log_info("%s: reading the rest of its old content from the copy %s at offset %llu", f->src->path, names[i],
                 (unsigned long long)old->offset);
    }
    free_names(names, n);
    return copy;
}
