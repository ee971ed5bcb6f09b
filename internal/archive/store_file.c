/*
 * file:///dir — objects as files under a directory (local disk or NFS).
 * An object is written to a hidden temporary file beside its final name,
 * fsynced, then linked to its name: link(2) is atomic and refuses an
 * existing name (where rename(2) would replace it), also on NFS. Readers
 * skip the temporary files (their names start with '.').
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "archive_internal.h"

struct file_store {
    char *dir;
};

static bool key_is_safe(const char *key)
{
    if (!*key || key[0] == '/') return false;
    for (const char *seg = key; seg;) {
        const char *slash = strchr(seg, '/');
        size_t n = slash ? (size_t)(slash - seg) : strlen(seg);
        if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.')) return false;
        seg = slash ? slash + 1 : NULL;
    }
    return true;
}

/* Creates every directory above `path` (mode 0755). */
static int make_parents(char *path)
{
    for (char *p = path + 1; (p = strchr(p, '/')); p++) {
        *p = '\0';
        int rc = mkdir(path, 0755);
        int saved = errno;
        *p = '/';
        if (rc != 0 && saved != EEXIST) {
            errno = saved;
            return -1;
        }
    }
    return 0;
}

static int copy_fd(int from, int to, uint64_t size)
{
    char buf[64 * 1024];
    uint64_t done = 0;
    while (done < size) {
        size_t want = size - done < sizeof buf ? (size_t)(size - done) : sizeof buf;
        ssize_t n = pread(from, buf, want, (off_t)done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0) errno = EIO; /* shorter than it was when sealed */
            return -1;
        }
        for (ssize_t w = 0; w < n;) {
            ssize_t m = write(to, buf + w, (size_t)(n - w));
            if (m < 0 && errno == EINTR) continue;
            if (m < 0) return -1;
            w += m;
        }
        done += (uint64_t)n;
    }
    return 0;
}

static void file_put(struct archive_store *st, const char *key, int fd, uint64_t size, const unsigned char md5[16],
                     const unsigned char sha256[32], bool replace, struct archive_outcome *o)
{
    (void)md5;
    (void)sha256;
    struct file_store *fs = st->impl;
    if (!key_is_safe(key)) {
        archive_outcome_set(o, ARCHIVE_REFUSED, 0, "key '%s' has an empty, '.' or '..' segment", key);
        return;
    }
    char path[PATH_MAX], tmp[PATH_MAX + 64];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", fs->dir, key) >= sizeof path) {
        archive_outcome_set(o, ARCHIVE_REFUSED, 0, "path %s/%s is too long", fs->dir, key);
        return;
    }
    char *base = strrchr(path, '/');
    snprintf(tmp, sizeof tmp, "%.*s/.%s.tmp.%ld", (int)(base - path), path, base + 1, (long)getpid());
    if (make_parents(path) != 0) {
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot create the directories of %s: %s", path, strerror(errno));
        return;
    }
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot create %s: %s", tmp, strerror(errno));
        return;
    }
    if (copy_fd(fd, out, size) != 0 || fsync(out) != 0) {
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot write %s: %s", tmp, strerror(errno));
        close(out);
        unlink(tmp);
        return;
    }
    if (close(out) != 0) {
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot write %s: %s", tmp, strerror(errno));
        unlink(tmp);
        return;
    }
    if (replace) {
        if (rename(tmp, path) != 0) {
            archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
            unlink(tmp);
            return;
        }
        archive_outcome_set(o, ARCHIVE_OK, 0, "stored %s", path);
    } else if (link(tmp, path) != 0) {
        int saved = errno;
        unlink(tmp);
        if (saved == EEXIST)
            archive_outcome_set(o, ARCHIVE_EXISTS, 0, "%s exists already", path);
        else
            archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot link %s to %s: %s", tmp, path, strerror(saved));
        return;
    } else if (unlink(tmp) != 0) {
        archive_outcome_set(o, ARCHIVE_OK, 0, "stored %s (its temporary %s stays: %s)", path, tmp, strerror(errno));
    } else {
        archive_outcome_set(o, ARCHIVE_OK, 0, "stored %s", path);
    }
    /* The new name must survive a crash of the node, like the content. */
    *base = '\0';
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
}

/* Walks dir/rel recursively, calling each() with keys relative to the store. */
static int walk(struct file_store *fs, char *rel, size_t rel_len, size_t cap, archive_list_fn each, void *ctx,
                struct archive_outcome *o)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", fs->dir, rel);
    DIR *d = opendir(path);
    if (!d) {
        if (errno == ENOENT || errno == ENOTDIR) return 0;
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot list %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue; /* ".", "..", and temporary files */
        size_t n = strlen(e->d_name);
        if (rel_len + n + 2 > cap) continue;
        size_t at = rel_len;
        if (at) rel[at++] = '/';
        memcpy(rel + at, e->d_name, n + 1);
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", fs->dir, rel);
        if (lstat(path, &sb) != 0) {
            rel[rel_len] = '\0';
            continue; /* deleted meanwhile (compaction) */
        }
        if (S_ISDIR(sb.st_mode))
            rc = walk(fs, rel, at + n, cap, each, ctx, o);
        else if (S_ISREG(sb.st_mode) && each(ctx, rel, (uint64_t)sb.st_size) != 0)
            rc = 1;
        rel[rel_len] = '\0';
    }
    closedir(d);
    return rc;
}

struct list_filter {
    archive_list_fn each;
    void *ctx;
    const char *prefix;
    size_t prefix_len;
};

static int filtered(void *ctx, const char *key, uint64_t size)
{
    struct list_filter *f = ctx;
    return strncmp(key, f->prefix, f->prefix_len) == 0 ? f->each(f->ctx, key, size) : 0;
}

static void file_list(struct archive_store *st, const char *prefix, archive_list_fn each, void *ctx,
                      struct archive_outcome *o)
{
    struct file_store *fs = st->impl;
    char rel[PATH_MAX];
    /* Walk from the prefix's directory; keys are then matched in full. */
    const char *slash = strrchr(prefix, '/');
    size_t n = slash ? (size_t)(slash - prefix) : 0;
    if (n >= sizeof rel) n = 0;
    memcpy(rel, prefix, n);
    rel[n] = '\0';
    archive_outcome_set(o, ARCHIVE_OK, 0, "listed");
    struct list_filter filter = {each, ctx, prefix, strlen(prefix)};
    walk(fs, rel, n, sizeof rel, filtered, &filter, o);
}

static void file_get(struct archive_store *st, const char *key, int fd, struct archive_outcome *o)
{
    struct file_store *fs = st->impl;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", fs->dir, key);
    int in = open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        archive_outcome_set(o, errno == ENOENT ? ARCHIVE_NOT_FOUND : ARCHIVE_RETRY, 0, "cannot open %s: %s", path,
                            strerror(errno));
        return;
    }
    struct stat sb;
    if (fstat(in, &sb) != 0 || copy_fd(in, fd, (uint64_t)sb.st_size) != 0)
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot read %s: %s", path, strerror(errno));
    else
        archive_outcome_set(o, ARCHIVE_OK, 0, "read %s", path);
    close(in);
}

static void file_del(struct archive_store *st, const char *key, struct archive_outcome *o)
{
    struct file_store *fs = st->impl;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", fs->dir, key);
    if (unlink(path) != 0)
        archive_outcome_set(o, errno == ENOENT ? ARCHIVE_NOT_FOUND : ARCHIVE_RETRY, 0, "cannot delete %s: %s",
                            path, strerror(errno));
    else
        archive_outcome_set(o, ARCHIVE_OK, 0, "deleted %s", path);
}

static void file_close(struct archive_store *st)
{
    struct file_store *fs = st->impl;
    if (!fs) return;
    free(fs->dir);
    free(fs);
}

static const struct archive_store_ops file_ops = {
    .put_file = file_put, .list = file_list, .get = file_get, .del = file_del, .close = file_close,
};

int archive_file_open(struct archive_store *st, const char *dir, char *err, size_t errlen)
{
    struct file_store *fs = calloc(1, sizeof *fs);
    if (!fs || !(fs->dir = strdup(dir))) {
        free(fs);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t n = strlen(fs->dir);
    while (n > 1 && fs->dir[n - 1] == '/') fs->dir[--n] = '\0';
    char probe[PATH_MAX];
    snprintf(probe, sizeof probe, "%s/x", fs->dir);
    if (make_parents(probe) != 0) {
        snprintf(err, errlen, "output.archive.url: cannot create %s: %s", fs->dir, strerror(errno));
        free(fs->dir);
        free(fs);
        return -1;
    }
    st->impl = fs;
    st->ops = &file_ops;
    return 0;
}
