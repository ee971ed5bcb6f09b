/*
 * history — reading a container's files for the logs API (see history.h).
 */
#include "api/history.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* Per container: memory for a request grows with the containers it selects,
 * so buffers start small and grow only when needed: the read buffer, while
 * a physical line does not fit, up to what holds any physical line the
 * collector reads whole (history_buf_max); the line buffer up to
 * max_line_bytes; the docker buffer only for docker files. */
#define HISTORY_READ_BYTES (32 * 1024)
/* Room past max_line_bytes for a physical line's CRI prefix (time, stream,
 * tag: under 64 bytes) and a docker line's JSON around its content. */
#define HISTORY_PREFIX_ROOM (4 * 1024)

/* The read buffer's largest size: a physical line the collector reads in
 * one buffer, or whose content is up to max_line_bytes, is read whole. */
static size_t history_buf_max(const struct config *cfg)
{
    size_t line = (size_t)cfg->collection.max_line_bytes + HISTORY_PREFIX_ROOM;
    size_t rb = (size_t)cfg->collection.read_buffer_bytes;
    size_t max = line > rb ? line : rb;
    return max > HISTORY_READ_BYTES ? max : HISTORY_READ_BYTES;
}

/* One file of a container's set, opened when the set was listed. */
struct history_file {
    char *path;
    int fd;
    dev_t dev;
    ino_t ino;
    bool gz;
};

struct history_container {
    struct parser_path_meta meta;
    char *dir;
    struct history_file *files; /* oldest first; every fd open from the scan until history_finish() */
    size_t nfiles;
    /* Iteration. Invariant: cur >= 0 iff a file is being read (files[cur]);
     * gz is set only for a .gz file; buf[pos, len) is read but not consumed;
     * `base` is the file offset of buf[0] (uncompressed for .gz); `done` is
     * the offset after the last complete logical line. */
    long cur;
    gzFile gz;
    bool is_last; /* files[cur] is the current file (the last listed) */
    char *buf;
    size_t pos, len;
    uint64_t base, done;
    /* A logical line being joined from partial pieces, and what of the
     * physical line being taken is not in it yet (a line longer than
     * max_line_bytes goes out in pieces of that size, as the collector
     * sends it; `rest` points into buf or scratch, consumed before any
     * further read). */
    char *line;
    size_t line_len, line_cap, line_max;
    int64_t line_ts;
    int line_stream;
    const char *rest;
    size_t rest_len;
    bool rest_partial, rest_pending, pieces_out, yielded;
    /* Inside a physical line longer than the read buffer at its largest
     * (as the collector's continue_physical): its prefix was parsed from
     * its first buffer, phys_partial is its P/F tag, and what follows up to
     * its newline is content. */
    bool phys_cont, phys_partial;
    size_t buf_cap, buf_max; /* buf's size; how far it may grow */
    char *scratch; /* docker unescaping, scratch_cap bytes */
    size_t scratch_cap;
    uint64_t number, stop_at;
    bool has_pending, done_all;
    struct history_line pending;
    int64_t last_ts;
    size_t index; /* in the scan */
    /* Where the first pass ended (the follower goes on from there; a
     * second pass for tail_lines ends at the same line): end_file < 0 when
     * no file was open. */
    long end_file;
    uint64_t end_done;
    /* Plain files before the last one that the first pass read to their end,
     * so a follower can skip what the collector still sends of them. */
    struct history_file_end *read_files;
    size_t nread, capread;
};

struct history {
    const struct config *cfg;
    struct history_container **c;
    size_t n;
    int64_t max_bytes, read_bytes;
    size_t max_line;
    size_t max_files, open_files; /* descriptors the scan may hold, and holds */
    bool second_pass; /* re-reads what the first pass counted against max_bytes */
};

/* --- scanning ----------------------------------------------------------- */

static size_t strip_gz(const char *s, size_t len)
{
    return len > 3 && strcmp(s + len - 3, ".gz") == 0 ? len - 3 : len;
}

/* "<n>.log…" sorts by n (restarts), then the rotated ones before the plain
 * "<n>.log", then by name (kubelet stamps) or, for docker's "<id>-json.log.N",
 * a larger N first. */
struct fname {
    char *name;
    long restart;
    size_t base_len; /* up to and including ".log" */
};

static int cmp_fname(const void *pa, const void *pb)
{
    const struct fname *a = pa, *b = pb;
    if (a->restart != b->restart) return a->restart < b->restart ? -1 : 1;
    int base = strncmp(a->name, b->name, a->base_len < b->base_len ? a->base_len : b->base_len);
    if (base || a->base_len != b->base_len) return base ? base : (a->base_len > b->base_len) - (a->base_len < b->base_len);
    size_t la = strip_gz(a->name, strlen(a->name)), lb = strip_gz(b->name, strlen(b->name));
    bool ca = la == a->base_len, cb = lb == b->base_len; /* the current file */
    if (ca != cb) return ca ? 1 : -1;
    if (ca) return 0;
    const char *sa = a->name + a->base_len + 1, *sb = b->name + b->base_len + 1;
    size_t na = la - a->base_len - 1, nb = lb - b->base_len - 1;
    bool da = na > 0 && na < 10, db = nb > 0 && nb < 10;
    for (size_t i = 0; da && i < na; i++) da = isdigit((unsigned char)sa[i]);
    for (size_t i = 0; db && i < nb; i++) db = isdigit((unsigned char)sb[i]);
    if (da && db) {
        long ga = strtol(sa, NULL, 10), gb = strtol(sb, NULL, 10);
        return (ga < gb) - (ga > gb);
    }
    int c = strncmp(sa, sb, na < nb ? na : nb);
    return c ? c : (na > nb) - (na < nb);
}

/* The container's file names, sorted oldest first, X and X.gz as one. */
static int list_dir(const char *dirpath, char ***out, size_t *nout)
{
    DIR *d = opendir(dirpath);
    *out = NULL;
    *nout = 0;
    if (!d) return -1;
    struct fname *names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        const char *log = strstr(e->d_name, ".log");
        size_t len = strlen(e->d_name);
        if (!log || (log[4] != '\0' && log[4] != '.')) continue;
        if (len > 4 && strcmp(e->d_name + len - 4, ".tmp") == 0) continue; /* the kubelet compressing */
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            struct fname *g = realloc(names, cap * sizeof *names);
            if (!g) {
                rc = -1;
                break;
            }
            names = g;
        }
        if (!(names[n].name = strdup(e->d_name))) {
            rc = -1;
            break;
        }
        names[n].base_len = (size_t)(log - e->d_name) + 4;
        names[n].restart = isdigit((unsigned char)e->d_name[0]) ? strtol(e->d_name, NULL, 10) : 0;
        n++;
    }
    closedir(d);
    if (rc == 0 && n) qsort(names, n, sizeof *names, cmp_fname);
    /* X and X.gz both exist while the kubelet compresses: the same lines. */
    char **paths = rc == 0 ? calloc(n ? n : 1, sizeof *paths) : NULL;
    size_t np = 0;
    if (!paths) rc = -1;
    for (size_t i = 0; i < n; i++) {
        bool dup = i + 1 < n && cmp_fname(&names[i], &names[i + 1]) == 0;
        if (rc == 0 && !dup) {
            if (asprintf(&paths[np], "%s/%s", dirpath, names[i].name) < 0) rc = -1;
            else np++;
        } else if (rc == 0 && dup) {
            /* keep the uncompressed one: it sorts equal; prefer the name without .gz */
            size_t li = strlen(names[i].name);
            if (strip_gz(names[i].name, li) == li) {
                char *t = names[i].name;
                names[i].name = names[i + 1].name;
                names[i + 1].name = t;
            }
        }
        free(names[i].name);
    }
    free(names);
    if (rc != 0) {
        for (size_t i = 0; i < np; i++) free(paths[i]);
        free(paths);
        return -1;
    }
    *out = paths;
    *nout = np;
    return 0;
}

static void free_paths(char **paths, size_t n)
{
    for (size_t i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

static void close_set(struct history_container *c)
{
    for (size_t i = 0; i < c->nfiles; i++) {
        if (c->files[i].fd >= 0) close(c->files[i].fd);
        free(c->files[i].path);
    }
    free(c->files);
    c->files = NULL;
    c->nfiles = 0;
}

/* Whether the directory lists exactly `c`'s files, each still the file
 * opened under its name. */
static bool set_unchanged(struct history_container *c)
{
    char **paths;
    size_t n;
    if (list_dir(c->dir, &paths, &n) != 0) return false;
    bool same = n == c->nfiles;
    for (size_t i = 0; same && i < n; i++) {
        struct stat st;
        same = strcmp(paths[i], c->files[i].path) == 0 && stat(paths[i], &st) == 0 &&
               st.st_dev == c->files[i].dev && st.st_ino == c->files[i].ino;
    }
    free_paths(paths, n);
    return same;
}

/* Opens every file of the container before any is read, so that a rotation,
 * a compression or a deletion while the history is read (slowly, by a
 * client on a pipe) cannot make it skip a file or read one twice: the
 * descriptors stay on the files listed, whatever their names become. A set
 * that changed between listing and opening is listed again; a directory in
 * constant churn is read as last opened. */
static int open_set(struct history *h, struct history_container *c, char *err, size_t errlen)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        h->open_files -= c->nfiles;
        close_set(c);
        char **paths;
        size_t n;
        if (list_dir(c->dir, &paths, &n) != 0) {
            if (errno == ENOENT) return 0; /* the pod went: no files */
            snprintf(err, errlen, "cannot list %s: %s", c->dir, strerror(errno));
            return -1;
        }
        if (h->open_files + n > h->max_files) {
            snprintf(err, errlen,
                     "history needs more than server.api.max_history_files (%zu) open files (%s has %zu): narrow "
                     "the selection (namespace, pod, container)",
                     h->max_files, c->dir, n);
            free_paths(paths, n);
            return -1;
        }
        c->files = calloc(n ? n : 1, sizeof *c->files);
        if (!c->files) {
            snprintf(err, errlen, "out of memory listing %s", c->dir);
            free_paths(paths, n);
            return -1;
        }
        bool vanished = false;
        for (size_t i = 0; i < n; i++) {
            int fd = open(paths[i], O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            struct stat st;
            if (fd < 0 && errno != ENOENT) {
                /* EMFILE, ENFILE, EACCES…: the history would lack this
                 * file's lines, so the request fails saying so. */
                snprintf(err, errlen, "cannot open %s: %s", paths[i], strerror(errno));
                for (size_t k = i; k < n; k++) free(paths[k]);
                free(paths);
                return -1;
            }
            if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
                if (fd >= 0) close(fd);
                free(paths[i]);
                vanished = true; /* rotated or deleted since the listing */
                continue;
            }
            size_t len = strlen(paths[i]);
            c->files[c->nfiles++] = (struct history_file){paths[i], fd, st.st_dev, st.st_ino, strip_gz(paths[i], len) != len};
            h->open_files++;
        }
        free(paths);
        if (!vanished && set_unchanged(c)) return 0;
    }
    return 0;
}

static void container_free(struct history_container *c)
{
    if (!c) return;
    if (c->gz) gzclose(c->gz);
    close_set(c);
    free(c->dir);
    free(c->buf);
    free(c->line);
    free(c->scratch);
    free(c->read_files);
    free(c);
}

void history_free(struct history *h)
{
    if (!h) return;
    for (size_t i = 0; i < h->n; i++) container_free(h->c[i]);
    free(h->c);
    free(h);
}

void history_container_free(struct history_container *c) { container_free(c); }

/* An fd on (dev, ino) at `path`, or -1 with errno (ENOENT: not that file). */
static int open_identified(const char *path, dev_t dev, ino_t ino)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_dev != dev || st.st_ino != ino) {
        close(fd);
        errno = ENOENT;
        return -1;
    }
    return fd;
}

struct history_container *history_open_file(const struct config *cfg, const struct parser_path_meta *meta,
                                            const char *path, const char *spool_dir, dev_t dev, ino_t ino,
                                            char *err, size_t errlen)
{
    struct history_container *c = calloc(1, sizeof *c);
    if (!c || !(c->dir = strdup(path)) || !(c->files = calloc(1, sizeof *c->files))) {
        container_free(c);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char *slash = strrchr(c->dir, '/');
    if (slash) *slash = '\0';
    c->cur = -1;
    c->end_file = -1;
    c->stop_at = UINT64_MAX;
    c->meta = *meta;
    c->line_max = (size_t)cfg->collection.max_line_bytes;
    c->buf_max = history_buf_max(cfg);
    char *found = NULL;
    int fd = open_identified(path, dev, ino), open_errno = errno;
    if (fd >= 0) {
        found = strdup(path);
    } else if (open_errno == ENOENT) {
        /* Renamed by a rotation: the plain siblings (a compressed copy has
         * other offsets, so it cannot make the gap up). */
        char **paths;
        size_t n;
        if (list_dir(c->dir, &paths, &n) == 0) {
            for (size_t i = 0; i < n && fd < 0; i++) {
                size_t len = strlen(paths[i]);
                if (strip_gz(paths[i], len) != len) continue;
                fd = open_identified(paths[i], dev, ino);
                if (fd >= 0) found = paths[i], paths[i] = NULL;
                else if (errno != ENOENT) open_errno = errno;
            }
            free_paths(paths, n);
        }
        if (fd < 0 && spool_dir && asprintf(&found, "%s/%llx-%llx", spool_dir, (unsigned long long)dev,
                                            (unsigned long long)ino) >= 0) {
            fd = open_identified(found, dev, ino);
            if (fd < 0 && errno != ENOENT) open_errno = errno;
        }
    }
    if (fd < 0 || !found) {
        free(found);
        found = NULL;
        if (fd >= 0) close(fd);
        snprintf(err, errlen, "%s: %s", path,
                 open_errno == ENOENT ? "gone (deleted or compressed) before its lines could be read"
                                      : strerror(open_errno));
        container_free(c);
        return NULL;
    }
    c->files[0] = (struct history_file){found, fd, dev, ino, false};
    c->nfiles = 1;
    return c;
}

static int add_container(struct history *h, const char *dir, const struct parser_path_meta *meta, char *err,
                         size_t errlen)
{
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->c[i]->dir, dir) == 0) return 0;
    struct history_container *c = calloc(1, sizeof *c);
    struct history_container **g = realloc(h->c, (h->n + 1) * sizeof *h->c);
    if (g) h->c = g;
    if (!c || !g) {
        free(c);
        snprintf(err, errlen, "out of memory reading the files of %s", dir);
        return -1;
    }
    c->cur = -1;
    c->end_file = -1;
    c->stop_at = UINT64_MAX;
    c->meta = *meta;
    c->line_max = h->max_line;
    c->buf_max = history_buf_max(h->cfg);
    c->dir = strdup(dir);
    if (!c->dir) snprintf(err, errlen, "out of memory reading the files of %s", dir);
    if (!c->dir || open_set(h, c, err, errlen) != 0) {
        h->open_files -= c->nfiles;
        container_free(c);
        return -1;
    }
    c->index = h->n;
    h->c[h->n++] = c;
    return 0;
}

struct history *history_scan(const struct config *cfg, bool (*selects)(void *ctx, const struct parser_path_meta *m),
                             bool (*allowed)(void *ctx, const char *dir), void *ctx, int64_t max_bytes,
                             size_t max_files, char *err, size_t errlen)
{
    struct history *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->cfg = cfg;
    h->max_bytes = max_bytes;
    h->max_files = max_files;
    h->max_line = (size_t)cfg->collection.max_line_bytes;
    for (size_t p = 0; p < cfg->collection.paths.count; p++) {
        glob_t g;
        int rc = glob(cfg->collection.paths.items[p], 0, NULL, &g);
        if (rc == GLOB_NOMATCH) continue;
        if (rc != 0) {
            snprintf(err, errlen, "cannot list %s", cfg->collection.paths.items[p]);
            history_free(h);
            return NULL;
        }
        for (size_t i = 0; i < g.gl_pathc; i++) {
            char real[PATH_MAX];
            if (!realpath(g.gl_pathv[i], real)) continue; /* a dangling link: its pod is gone */
            struct parser_path_meta meta;
            if (parser_path_meta(g.gl_pathv[i], real, &meta) != 0 || !selects(ctx, &meta)) continue;
            char *slash = strrchr(real, '/');
            if (!slash) continue;
            *slash = '\0';
            if (allowed && !allowed(ctx, real)) continue;
            if (add_container(h, real, &meta, err, errlen) != 0) {
                globfree(&g);
                history_free(h);
                return NULL;
            }
        }
        globfree(&g);
    }
    return h;
}

size_t history_count(const struct history *h) { return h->n; }
struct history_container *history_at(struct history *h, size_t i) { return i < h->n ? h->c[i] : NULL; }
const struct parser_path_meta *history_meta(const struct history_container *c) { return &c->meta; }
const char *history_dir(const struct history_container *c) { return c->dir; }
uint64_t history_lines(const struct history_container *c) { return c->number; }
void history_set_lines(struct history_container *c, uint64_t n) { c->number = n; }
size_t history_index(const struct history_container *c) { return c->index; }

size_t history_read_files(const struct history_container *c, const struct history_file_end **files)
{
    *files = c->read_files;
    return c->nread;
}

bool history_end(const struct history_container *c, dev_t *dev, ino_t *ino, uint64_t *offset)
{
    if (c->end_file < 0 || (size_t)c->end_file + 1 != c->nfiles || c->files[c->end_file].gz ||
        c->files[c->end_file].fd < 0)
        return false;
    *dev = c->files[c->end_file].dev;
    *ino = c->files[c->end_file].ino;
    *offset = c->end_done;
    return true;
}

/* A container done with its buffers (grown for long lines, maybe) gives
 * them back: a follower reads again only to make a gap up. */
static void drop_buffers(struct history_container *c)
{
    free(c->buf);
    free(c->line);
    free(c->scratch);
    c->buf = c->line = c->scratch = NULL;
    c->buf_cap = c->line_cap = c->scratch_cap = 0;
    c->pos = c->len = c->line_len = 0;
}

void history_finish(struct history *h)
{
    for (size_t i = 0; i < h->n; i++) {
        struct history_container *c = h->c[i];
        if (c->gz) gzclose(c->gz);
        c->gz = NULL;
        c->cur = -1;
        drop_buffers(c);
        for (size_t k = 0; k + 1 < c->nfiles; k++) {
            if (c->files[k].fd >= 0) close(c->files[k].fd);
            c->files[k].fd = -1;
        }
        if (c->nfiles && c->files[c->nfiles - 1].gz && c->files[c->nfiles - 1].fd >= 0) {
            close(c->files[c->nfiles - 1].fd);
            c->files[c->nfiles - 1].fd = -1;
        }
    }
}

bool history_holds(const struct history_container *c)
{
    return c->nfiles && c->files[c->nfiles - 1].fd >= 0;
}

int history_nlink(const struct history_container *c)
{
    struct stat st;
    if (!history_holds(c) || fstat(c->files[c->nfiles - 1].fd, &st) != 0) return -1;
    return (int)st.st_nlink;
}

void history_let_go(struct history_container *c)
{
    if (c->gz) gzclose(c->gz);
    c->gz = NULL;
    c->cur = -1;
    for (size_t k = 0; k < c->nfiles; k++) {
        if (c->files[k].fd >= 0) close(c->files[k].fd);
        c->files[k].fd = -1;
    }
}

/* --- reading ------------------------------------------------------------ */

static void remember_read(struct history *h, struct history_container *c)
{
    if (h->second_pass || c->cur < 0 || c->gz) return;
    if (c->nread == c->capread) {
        size_t cap = c->capread ? c->capread * 2 : 8;
        struct history_file_end *g = realloc(c->read_files, cap * sizeof *g);
        if (!g) return; /* only costs a follower duplicates of this file */
        c->read_files = g;
        c->capread = cap;
    }
    c->read_files[c->nread++] = (struct history_file_end){c->files[c->cur].dev, c->files[c->cur].ino, c->done};
}

static void close_file(struct history_container *c)
{
    if (c->gz) gzclose(c->gz); /* closes its own descriptor (a dup) */
    c->gz = NULL;
    c->cur = -1;
}

/* Moves on to the next file of the set: 1, 0 when none is left, -1 with
 * err set (out of memory, or a .gz file that cannot be opened: its lines
 * would be missing from a history said to be complete). */
static int open_next(struct history *h, struct history_container *c, size_t next, char *err, size_t errlen)
{
    if (c->cur >= 0) remember_read(h, c);
    close_file(c);
    if (!c->buf && !(c->buf = malloc(c->buf_cap = HISTORY_READ_BYTES))) {
        snprintf(err, errlen, "out of memory reading %s", c->dir);
        return -1;
    }
    for (; next < c->nfiles; next++) {
        struct history_file *hf = &c->files[next];
        if (hf->fd < 0) continue;
        if (hf->gz) {
            /* zlib reads through a duplicate, which shares the file offset:
             * rewound, since a second pass reads the file again. */
            int dup_fd = dup(hf->fd);
            if (dup_fd < 0 || lseek(dup_fd, 0, SEEK_SET) != 0 || !(c->gz = gzdopen(dup_fd, "rb"))) {
                snprintf(err, errlen, "cannot read %s: %s", hf->path, strerror(errno ? errno : ENOMEM));
                if (dup_fd >= 0) close(dup_fd);
                return -1;
            }
        }
        c->cur = (long)next;
        c->is_last = next + 1 == c->nfiles && !hf->gz;
        c->pos = c->len = 0;
        c->base = c->done = 0;
        c->line_len = 0;
        c->rest_len = 0;
        c->rest_pending = c->pieces_out = c->phys_cont = false;
        return 1;
    }
    return 0;
}

/* Fills buf after moving the unconsumed part to the front; returns bytes
 * added (0 at EOF), -1 on error or over the byte budget. */
static ssize_t fill(struct history *h, struct history_container *c, uint64_t limit, char *err, size_t errlen)
{
    if (c->pos > 0) {
        memmove(c->buf, c->buf + c->pos, c->len - c->pos);
        c->len -= c->pos;
        c->base += c->pos;
        c->pos = 0;
    }
    size_t room = c->buf_cap - c->len;
    uint64_t file_at = c->base + c->len;
    if (limit != UINT64_MAX) room = file_at >= limit ? 0 : (limit - file_at < room ? (size_t)(limit - file_at) : room);
    if (room == 0) return 0;
    ssize_t r;
    if (c->gz) {
        int n = gzread(c->gz, c->buf + c->len, (unsigned)room);
        if (n < 0) {
            int zerr;
            snprintf(err, errlen, "%s: %s", c->dir, gzerror(c->gz, &zerr));
            return -1;
        }
        r = n;
    } else {
        do
            r = pread(c->files[c->cur].fd, c->buf + c->len, room, (off_t)file_at);
        while (r < 0 && errno == EINTR);
        if (r < 0) {
            snprintf(err, errlen, "reading in %s: %s", c->dir, strerror(errno));
            return -1;
        }
    }
    if (!h->second_pass) h->read_bytes += r;
    if (h->read_bytes > h->max_bytes) {
        snprintf(err, errlen,
                 "history is over server.api.max_history_bytes (%lld bytes read): narrow it with since, "
                 "tail_lines or a selection",
                 (long long)h->max_bytes);
        return -1;
    }
    c->len += (size_t)r;
    return r;
}

static void append_piece(struct history_container *c, const char *p, size_t n)
{
    if (c->line_len + n > c->line_cap && c->line_cap < c->line_max) {
        size_t cap = c->line_cap ? c->line_cap * 2 : 1024;
        while (cap < c->line_len + n) cap *= 2;
        if (cap > c->line_max + 4) cap = c->line_max + 4; /* a piece may run 3 bytes past, to end a character */
        char *g = realloc(c->line, cap);
        if (g) {
            c->line = g;
            c->line_cap = cap;
        }
    }
    size_t room = c->line_cap - c->line_len;
    if (n > room) n = room; /* out of memory: the rest is cut */
    memcpy(c->line + c->line_len, p, n);
    c->line_len += n;
}

static bool utf8_continuation(char ch) { return ((unsigned char)ch & 0xC0) == 0x80; }

/* Where the collector cuts a piece (tail.c's piece_cut): on a UTF-8
 * boundary, so pieces are the same bytes in history and follow. */
static size_t piece_cut(const char *s, size_t len, size_t room)
{
    size_t cut = room;
    for (int back = 0; back < 3 && cut > 0 && utf8_continuation(s[cut]); back++) cut--;
    if (!utf8_continuation(s[cut])) return cut;
    if (cut > 0) return room;
    size_t forward = 0;
    while (forward < len && forward < 3 && utf8_continuation(s[forward])) forward++;
    return forward;
}

/* Parses one physical line into c->rest (its content, not yet in the line)
 * and the line's time and stream when it starts one. */
static void take_physical(struct history_container *c, const char *p, size_t n)
{
    struct parser_line pl;
    bool truncated;
    if (n > 0 && p[n - 1] == '\r') n--;
    bool docker = n > 0 && p[0] == '{';
    if (docker && c->scratch_cap < c->buf_cap) {
        char *g = realloc(c->scratch, c->buf_cap);
        if (g) c->scratch = g, c->scratch_cap = c->buf_cap;
        docker = c->scratch != NULL; /* out of memory: a shorter scratch truncates, as the parser says */
    }
    bool starts = c->line_len == 0 && !c->pieces_out;
    if (parser_cri_line(p, n, &pl) == 0 ||
        (docker && parser_docker_line(p, n, c->scratch, c->scratch_cap, &pl, &truncated) == 0)) {
        if (starts) {
            c->line_ts = pl.ts_ns;
            c->line_stream = pl.stream;
        }
        c->rest = pl.content;
        c->rest_len = pl.content_len;
        c->rest_partial = pl.partial;
    } else {
        /* Not in either format: as the collector, shipped as it is, at the
         * time of the line before it. */
        if (starts) {
            c->line_ts = c->last_ts;
            c->line_stream = PARSER_STREAM_UNKNOWN;
        }
        c->rest = p;
        c->rest_len = n;
        c->rest_partial = false;
    }
    c->rest_pending = true;
}

/* Yields c->line as the next line (or piece of one). */
static int yield(struct history_container *c, bool complete)
{
    bool continued = c->pieces_out;
    if (!continued) c->number++;
    if (complete) {
        c->done = c->base + c->pos;
        c->last_ts = c->line_ts;
        c->pieces_out = false;
    } else {
        c->pieces_out = true;
    }
    c->pending = (struct history_line){c->line_ts, c->line_stream, c->line, c->line_len, c->number, continued};
    c->yielded = true;
    return 1;
}

/* The next logical line of c, or piece of one longer than max_line_bytes
 * (up to file offset `limit` in the last file), into c->pending; 1, 0 when
 * c has no more, -1 on error. */
static int read_line(struct history *h, struct history_container *c, uint64_t limit, char *err, size_t errlen)
{
    if (c->yielded) {
        c->line_len = 0;
        c->yielded = false;
    }
    for (;;) {
        if (c->rest_pending) {
            size_t room = c->line_max > c->line_len ? c->line_max - c->line_len : 0;
            if (c->rest_len > room) {
                size_t cut = piece_cut(c->rest, c->rest_len, room);
                append_piece(c, c->rest, cut);
                c->rest += cut;
                c->rest_len -= cut;
                return yield(c, false);
            }
            append_piece(c, c->rest, c->rest_len);
            c->rest_len = 0;
            c->rest_pending = false;
            if (!c->rest_partial) return yield(c, true);
        }
        if (c->cur < 0) {
            int o = open_next(h, c, 0, err, errlen);
            if (o <= 0) return o;
        }
        char *nl = memchr(c->buf + c->pos, '\n', c->len - c->pos);
        if (!nl) {
            if (c->len - c->pos == c->buf_cap && c->buf_cap < c->buf_max) {
                /* A physical line longer than the buffer: the buffer grows
                 * (nothing points into it now: rest is consumed), so that
                 * the line is parsed whole, as the collector parses it. */
                size_t cap = c->buf_cap * 2 < c->buf_max ? c->buf_cap * 2 : c->buf_max;
                char *g = realloc(c->buf, cap);
                if (!g) {
                    snprintf(err, errlen, "out of memory for a %zu-byte line in %s", cap, c->dir);
                    return -1;
                }
                c->buf = g;
                c->buf_cap = cap;
                continue;
            }
            if (c->len - c->pos == c->buf_cap) {
                /* Longer than any line the collector reads whole: its
                 * content goes on into the logical line buffer by buffer,
                 * cut into pieces of max_line_bytes as it fills. */
                const char *p = c->buf + c->pos;
                size_t n = c->len - c->pos;
                if (!c->phys_cont) {
                    take_physical(c, p, n);
                    c->phys_partial = c->rest_partial;
                    c->phys_cont = true;
                } else {
                    c->rest = p;
                    c->rest_len = n;
                    c->rest_pending = true;
                }
                c->rest_partial = true; /* the physical line goes on */
                c->pos += n;
                continue;
            } else {
                ssize_t r = fill(h, c, c->is_last ? limit : UINT64_MAX, err, errlen);
                if (r < 0) return -1;
                if (r > 0) continue;
                /* EOF. The last file stays open: a follower goes on from it. */
                if (c->is_last || (size_t)c->cur + 1 >= c->nfiles) return 0;
                int o = open_next(h, c, (size_t)c->cur + 1, err, errlen);
                if (o <= 0) return o;
                continue;
            }
        }
        size_t n = (size_t)(nl - (c->buf + c->pos));
        const char *p = c->buf + c->pos;
        if (c->phys_cont) {
            /* The end of a physical line begun buffers ago: plain content. */
            c->rest = p;
            c->rest_len = n > 0 && p[n - 1] == '\r' ? n - 1 : n;
            c->rest_partial = c->phys_partial;
            c->rest_pending = true;
            c->phys_cont = false;
        } else {
            take_physical(c, p, n);
        }
        c->pos += n + 1; /* rest points into buf still: nothing is read until it is taken */
    }
}

void history_rewind(struct history *h, const uint64_t *stop_at)
{
    h->second_pass = true;
    for (size_t i = 0; i < h->n; i++) {
        struct history_container *c = h->c[i];
        close_file(c);
        c->number = 0;
        c->last_ts = 0;
        c->line_len = 0;
        c->rest_len = 0;
        c->rest_pending = c->pieces_out = c->yielded = c->phys_cont = false;
        c->has_pending = c->done_all = false;
        c->stop_at = stop_at ? stop_at[i] : UINT64_MAX;
    }
}

int history_next(struct history *h, struct history_container **out, struct history_line *line, char *err,
                 size_t errlen)
{
    struct history_container *best = NULL;
    for (size_t i = 0; i < h->n; i++) {
        struct history_container *c = h->c[i];
        if (!c->has_pending && !c->done_all) {
            /* The second pass stops after the first pass's last line (and
             * the pieces of it), not at a piece of the next one. */
            int r = c->number >= c->stop_at && !c->pieces_out ? 0 : read_line(h, c, UINT64_MAX, err, errlen);
            if (r > 0 && c->pending.number > c->stop_at) r = 0;
            if (r < 0) return -1;
            if (r == 0) {
                c->done_all = true;
                if (!h->second_pass) {
                    c->end_file = c->cur;
                    c->end_done = c->done;
                }
            } else {
                c->has_pending = true;
            }
        }
        if (c->has_pending && (!best || c->pending.ts_ns < best->pending.ts_ns)) best = c;
    }
    if (!best) return 0;
    best->has_pending = false;
    *out = best;
    *line = best->pending;
    return 1;
}

long history_read_on(struct history_container *c, uint64_t from, uint64_t to,
                     void (*emit)(void *ctx, struct history_container *c, const struct history_line *l), void *ctx,
                     char *err, size_t errlen)
{
    if (!history_holds(c) || c->files[c->nfiles - 1].gz || to <= from) return 0;
    struct history h = {.max_bytes = INT64_MAX};
    close_file(c);
    c->cur = (long)c->nfiles - 1;
    c->is_last = true;
    if (!c->buf && !(c->buf = malloc(c->buf_cap = HISTORY_READ_BYTES))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->base = c->done = from;
    c->pos = c->len = 0;
    c->line_len = 0;
    c->rest_len = 0;
    c->rest_pending = c->pieces_out = c->yielded = false;
    long n = 0;
    for (;;) {
        int r = read_line(&h, c, to, err, errlen);
        if (r < 0) return -1;
        if (r == 0) return n;
        emit(ctx, c, &c->pending);
        n++;
    }
}
