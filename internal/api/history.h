/*
 * history — a container's lines from the node's files, for the logs API:
 * every file of its log directory (earlier restarts first; within one,
 * rotated siblings oldest first — `.gz` read through zlib — then the
 * current file), read and parsed as the collector would (CRI or docker,
 * partial lines joined), numbered from 1 since the first file present.
 *
 * Contract:
 *  - history_scan() finds the selected containers by the collector's globs
 *    (the kubelet's symlinks) and groups them by log directory, so a pod
 *    restart (a new <n>.log beside the old) is one container. It opens every
 *    file of each container before anything is read (listing again when the
 *    set changed meanwhile), so a rotation, compression or deletion during
 *    the read can neither skip a file nor read one twice. At most
 *    `max_files` descriptors are held; needing more, or any open failing
 *    (EMFILE, ENFILE, EACCES: anything but the file having gone), fails
 *    the scan with a message saying which, never a history short of lines.
 *  - history_next() yields the containers' lines merged in timestamp order
 *    (ties: the order of the scan); only complete lines are yielded, a line
 *    longer than max_line_bytes as pieces of that size cut where the
 *    collector cuts them (`continued` on all but the first, which share its
 *    number). After the first pass returns 0 each container remembers the
 *    current file it ended in (kept open) and the offset after its last
 *    complete line, so a follower can go on from there exactly; a second
 *    pass (history_rewind) changes neither.
 *  - Every byte the first pass reads counts against `max_bytes` (a second
 *    pass reads the same bytes again, uncounted); beyond it history_next()
 *    returns -1 with a message saying so. Allocation is per container and
 *    per request (a read buffer, a line buffer), never per line.
 *  - history_finish() closes every file but each container's current one;
 *    history_let_go() closes that one too (a follower done with it).
 */
#ifndef LOGLET_API_HISTORY_H
#define LOGLET_API_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config/config.h"
#include "parser/parser.h"

struct history_line {
    int64_t ts_ns;
    int stream; /* enum parser_stream */
    const char *content;
    size_t len;
    uint64_t number; /* 1-based within the container */
    bool continued;  /* a piece after the first of a long line */
};

struct history_container;
struct history;

/* `allowed` (may be NULL: all) vets each container's log directory: the
 * server passes the directories of the files the collector tails, so the
 * API reads nothing the collector would not (symlink_roots, exclusions). */
struct history *history_scan(const struct config *cfg, bool (*selects)(void *ctx, const struct parser_path_meta *m),
                             bool (*allowed)(void *ctx, const char *dir), void *ctx, int64_t max_bytes,
                             size_t max_files, char *err, size_t errlen);
void history_free(struct history *h);

size_t history_count(const struct history *h);
struct history_container *history_at(struct history *h, size_t i);
const struct parser_path_meta *history_meta(const struct history_container *c);
const char *history_dir(const struct history_container *c);

/* Restarts the merge from the first file. `stop_at`, when not NULL, gives
 * per container the line number to stop after (a second pass ending where a
 * first one did); NULL reads to the files' current end. */
void history_rewind(struct history *h, const uint64_t *stop_at);
/* 1 with *c / *line set (valid until the next call), 0 at the end, -1 with
 * err set. */
int history_next(struct history *h, struct history_container **c, struct history_line *line, char *err,
                 size_t errlen);
/* Lines numbered so far in container c (after a full pass: all of them). */
uint64_t history_lines(const struct history_container *c);
void history_set_lines(struct history_container *c, uint64_t n);
size_t history_index(const struct history_container *c);

/* Where c's last file was left: its identity and the offset after its last
 * complete line. false when c had no file open. */
bool history_end(const struct history_container *c, dev_t *dev, ino_t *ino, uint64_t *offset);
/* The plain files before the last one that the pass read to their end. */
struct history_file_end {
    dev_t dev;
    ino_t ino;
    uint64_t done;
};
size_t history_read_files(const struct history_container *c, const struct history_file_end **files);
/* Reads c's last file from `from` (a line start) up to `to`, yielding each
 * line as history_next() would (numbering on from history_lines()); returns
 * lines yielded or -1. */
long history_read_on(struct history_container *c, uint64_t from, uint64_t to,
                     void (*emit)(void *ctx, struct history_container *c, const struct history_line *l), void *ctx,
                     char *err, size_t errlen);
/* A container of the one file (dev, ino) for a follower to read a gap of
 * the live tail from: opened at `path`, or, renamed by a rotation, found
 * by its identity among the plain files of its directory, or, compressed
 * or deleted since, through the collector's spool link (`spool_dir`, may
 * be NULL), which lasts while the collector holds the file. NULL with err
 * saying why (gone, compressed, the open failed: EMFILE included). Free
 * it with history_container_free(). */
struct history_container *history_open_file(const struct config *cfg, const struct parser_path_meta *meta,
                                            const char *path, const char *spool_dir, dev_t dev, ino_t ino,
                                            char *err, size_t errlen);
void history_container_free(struct history_container *c);
/* After the history is sent: only each container's current file stays open. */
void history_finish(struct history *h);
/* Whether c still holds its current file open; its link count (0: deleted),
 * -1 when not held. */
bool history_holds(const struct history_container *c);
int history_nlink(const struct history_container *c);
void history_let_go(struct history_container *c);

#endif
