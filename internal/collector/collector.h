/*
 * collector — finds the container log files, tails them, and hands their
 * lines to the ring.
 *
 * Contract:
 *  - One thread, one poll(2) loop over an inotify descriptor: no thread and
 *    no timer per file. Files matching the configured globs — at start or
 *    created later — are opened; lines appended to them reach the ring within
 *    a second (usually milliseconds), woken by inotify, not by a sleep loop.
 *  - Globs name the kubelet's symlinks (/var/log/containers/NAME.log); the
 *    collector reads their targets (/var/log/pods/…) and takes namespace,
 *    pod, container, pod uid and container id from both paths.
 *  - A file found at start-up is read from its end (collection.read_from:
 *    end) or its beginning; a file that appears later is read from its start.
 *  - Only complete lines leave the collector: a line without its newline
 *    waits for it (or for partial_flush_timeout), and CRI `P` pieces / docker
 *    pieces are joined into one logical line. Every line is parsed into a
 *    record (timestamp, stream, content); a line that does not parse is
 *    shipped as-is with the read time and counted, never dropped.
 *  - Pipeline stages (internal/pipeline), chosen per file when it is
 *    opened, run on each record before it enters the ring. A multiline
 *    join they hold keeps the file's acknowledged offset at its first line;
 *    a dropped line is acknowledged; a limit with action: wait pauses the
 *    reading of that file only.
 *  - Back-pressure: when the ring is full the collector waits and reads
 *    nothing more; the files on disk are the buffer.
 *  - Positions: each file's acknowledged offset is saved (see positions.h);
 *    at start every known file resumes exactly there, including files that
 *    were rotated (and gzip-compressed) while the agent was stopped, which
 *    are read to their end, oldest first, before the current file.
 *  - Labels come from the file's path and, through collector_use_metadata,
 *    a metadata provider, asked when a file is opened and when the
 *    provider's answers change, never per line. A new file whose pod the
 *    provider expects to know soon is not read for up to
 *    kubernetes.wait_for_metadata; no other file waits for it (metadata.c).
 *  - collector_stop() makes the loop finish the chunk it is writing, commit
 *    nothing further, and join; lines it had read but not committed are
 *    simply read again next time (they are past no acknowledged offset).
 */
#ifndef LOGLET_COLLECTOR_H
#define LOGLET_COLLECTOR_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"
#include "ring/ring.h"

struct collector;

/* Validates what depends on the file system and compiles the line filters.
 * Returns NULL with `err` set. */
struct collector *collector_create(const struct config *cfg, struct ring *ring, char *err, size_t errlen);
/* Labels files with what `provider` knows besides their paths (kept, not
 * owned; it must outlive the collector). Call before collector_start. */
struct metadata_provider;
void collector_use_metadata(struct collector *collector, struct metadata_provider *provider);
/* The live tail the collector offers every record it reads and every file
 * it starts or stops tailing (kept, not owned; it must outlive the
 * collector). Call before collector_start. */
struct livetail;
void collector_set_livetail(struct collector *collector, struct livetail *hub);
/* Scans the globs, sets up the watches and starts the thread. */
int collector_start(struct collector *collector, char *err, size_t errlen);
/* True once the initial scan is done and the directories are watched. */
bool collector_is_watching(struct collector *collector);
void collector_stop(struct collector *collector);
/* Writes the positions file (acknowledged offsets). The thread does this
 * every positions_sync_period; call it once more after collector_stop() and
 * after the output finished, so the final acknowledgements are kept. */
int collector_save_positions(struct collector *collector);
void collector_destroy(struct collector *collector);

/* One tailed file as /api/v1/targets and /status show it: a copy taken by
 * the collector thread about twice a second (snapshot.c), so readers on
 * other threads never touch the collector's own state. */
struct collector_target {
    char path[512];      /* as matched by the glob */
    char real_path[512];
    char namespace_[64], pod[254], container[64];
    uint64_t size;         /* bytes in the file (uncompressed so far for .gz) */
    uint64_t read_offset;  /* where the next unread line starts */
    uint64_t acked_offset; /* every line before it delivered */
    int64_t lag_seconds;   /* how long acked_offset has been behind size; 0 when caught up */
    const char *format;    /* cri, docker, or auto (undecided) */
    const char *watcher;   /* inotify, or poll where no watch could be had */
    const char *state;     /* active, or draining (rotated or deleted, read on to its end) */
    char last_error[128];  /* "" when none */
    uint64_t source_id;
    int64_t behind_since_ms; /* CLOCK_MONOTONIC; 0 when caught up */
};
/* Copies up to `cap` targets into out (may be NULL to count); returns how
 * many there are. Safe from any thread. */
size_t collector_targets(struct collector *collector, struct collector_target *out, size_t cap);
/* The spool directory, holding `<dev>-<ino>` (hex) hard links to the files
 * the collector has open (spool.c); NULL: none. Set before the collector
 * runs and unchanged until it is destroyed, so safe from any thread. */
const char *collector_spool_dir(const struct collector *collector);

#endif
