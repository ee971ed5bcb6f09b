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

#endif
