/*
 * positions — where each file was acknowledged up to, kept across restarts.
 *
 * Contract:
 *  - A file is identified by device + inode + a fingerprint (an FNV-1a-style
 *    hash of its first `fp_len` bytes, at most POSITIONS_FP_MAX — its offset
 *    basis differs from FNV's published one and stays as it is, or every
 *    saved position would look like another file), so a reused inode is not
 *    mistaken for the file it replaced.
 *  - The offset saved is the *acknowledged* one (source->acked_offset): a
 *    kill -9 at any moment loses nothing and re-sends only what was in flight.
 *  - positions_write() is atomic: temp file in the same directory (mode 0600),
 *    fsync, rename, fsync of the directory.
 *  - positions_read() never crashes on a corrupt file: it returns -1 with
 *    "FILE:LINE: what is wrong" and the caller decides the fallback.
 *
 * Format (YAML, one flow mapping per file, so a human can read it):
 *    version: 1
 *    positions:
 *      - {path: "/var/log/containers/…", real_path: "/var/log/pods/…", dev: 2049, ino: 131, fp: "9c3e…", fp_len: 256, offset: 4096}
 *  with `done: 1`, `renamed: 1` or `excluded: 1` after the offset when set.
 *  A path that is not printable ASCII is written as `path_hex` / `real_path_hex`
 *  (its bytes in hex): YAML cannot carry every byte a file name may hold.
 */
#ifndef LOGLET_COLLECTOR_POSITIONS_H
#define LOGLET_COLLECTOR_POSITIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define POSITIONS_FP_MAX 256

struct position {
    char *path;
    char *real_path;
    uint64_t dev;
    uint64_t ino;
    uint64_t fp;
    uint32_t fp_len;
    uint64_t offset;
    /* Delivered to its end when saved (a rotated or deleted file read out):
     * if it is gone at the next start, nothing was lost. Written as
     * `done: 1`; older files without it read as not done. */
    bool done;
    /* Renamed away from its path with no newer file there yet (the runtime
     * had not reopened): the next file at the path follows this one. Written
     * as `renamed: 1`; if the path is gone at the next start, that next
     * file went unread. */
    bool renamed;
    /* Closed because an annotation excluded its pod, at `offset` (what was
     * read before goes out): a restart resumes there unless it is still
     * excluded, rather than take it for a new file and send all of it.
     * Written as `excluded: 1`; older readers take it for a plain position. */
    bool excluded;
};

struct positions {
    struct position *items;
    size_t count;
    size_t cap;
};

int positions_read(const char *file, struct positions *out, char *err, size_t errlen);
/* Appends a copy of p; returns -1 on allocation failure. */
int positions_add(struct positions *ps, const struct position *p);
int positions_write(const char *file, const struct positions *ps, char *err, size_t errlen);
void positions_free(struct positions *ps);

/* The fingerprint hash of buf (see above). */
uint64_t positions_fingerprint(const void *buf, size_t len);

#endif
