/*
 * The collector's private state, shared by its files:
 *   collector.c — lifecycle and the event loop;
 *   watch.c     — inotify, discovery of files, rotation and deletion;
 *   tail.c      — the hot path: read a file, cut lines, fill ring chunks.
 */
#ifndef LOGLET_COLLECTOR_INTERNAL_H
#define LOGLET_COLLECTOR_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <zlib.h>

#include "collector.h"
#include "positions.h"
#include "source/source.h"
#include "table/table.h"

enum file_state {
    FILE_ACTIVE,   /* the file its path names now */
    FILE_DRAINING, /* rotated away, deleted, or its link removed: read to the end, then close */
};

struct watch_dir;

struct tailed_file {
    struct source *src;
    int fd;
    gzFile gz; /* a rotated, compressed file being caught up after downtime */
    uint64_t offset; /* the first byte no committed chunk covers */
    enum config_format format; /* AUTO until the first line decides */
    enum file_state state;
    int64_t draining_since_ms;
    /* A logical line longer than the read buffer continues in the next read. */
    bool continuing;
    uint8_t continuing_stream;
    int64_t continuing_ts;
    size_t continuing_skip; /* content bytes of the first piece already sent */
    bool after_flush;       /* the last line went out without its newline */
    /* The file ends in an unterminated line since this time (0: it does not). */
    int64_t incomplete_since_ms;
    uint64_t incomplete_offset;
    struct watch_dir *dir;
    struct tailed_file *dir_next;
    struct tailed_file *all_prev, *all_next;
    struct tailed_file *pending_next;
    bool pending;
    /* Catch-up after downtime: older files of the same path are read first;
     * this one waits until its predecessor is closed. */
    bool waiting;
    struct tailed_file *successor;
    bool successor_opened; /* after a rotation: the files that followed it are open */
    bool in_path_index; /* src->path maps to this file in collector.files_by_path */
};

struct watch_dir {
    int wd;
    char *path;
    bool holds_links; /* a glob's directory: new entries are candidates */
    struct tailed_file *files;
    bool check_identity; /* an entry was created/renamed/deleted: re-stat its files */
    struct watch_dir *check_next;
};

struct glob_spec {
    char *pattern;
    char *dir;  /* literal directory part */
    char *base; /* the last component, an fnmatch pattern */
    bool dir_has_wildcards; /* then only periodic rescans find its files */
};

/* The chunk being filled in the ring. */
struct chunk_writer {
    struct source_chunk *chunk; /* NULL: no reservation */
    size_t cap;
    size_t len; /* bytes used, chunk header included */
    uint64_t end_offset;
    uint64_t lines, bytes;
};

struct collector {
    const struct config *cfg;
    struct ring *ring;
    pthread_t thread;
    bool thread_started;
    bool scanned; /* the start-up scan ran: positions are ours to write */
    atomic_bool stop;
    atomic_bool watching;
    int inotify_fd;
    int wake_fd; /* eventfd: collector_stop() wakes poll() */

    struct glob_spec *globs;
    size_t nglobs;
    /* Where matched files may resolve to (collection.symlink_roots), resolved. */
    char **roots;
    size_t nroots;
    struct table dirs_by_wd;
    struct table files_by_path;
    struct tailed_file *all_files;
    struct tailed_file *pending_head, *pending_tail;
    struct watch_dir *check_head; /* directories whose files need a stat() */
    struct table reported;        /* paths already reported as unusable */
    bool rescan_needed;
    int64_t last_rescan_ms;
    bool inotify_exhausted_reported;

    /* Positions: what was saved at the last run (by path), and sources of
     * closed files whose lines are still in flight (saved until delivered). */
    struct positions saved;
    struct table saved_by_path; /* path -> struct saved_list */
    bool positions_lost;        /* unreadable at start: files are read from the beginning */
    struct source **retired;
    size_t nretired, retired_cap;
    int64_t last_positions_save_ms;

    /* Exclusion patterns and line filters, compiled once. */
    pcre2_code *include_lines;
    pcre2_code *exclude_lines;
    pcre2_match_data *match_data;

    /* The read buffer and a scratch area, allocated once for every file. */
    char *buf;
    size_t buf_size;
    char *scratch;    /* an unfinished record moving to a new chunk */
    char *docker_buf; /* docker "log" values, unescaped */
    char *utf8_buf;   /* a line with invalid UTF-8, repaired */
    size_t max_line;
    struct chunk_writer writer;
};

/* tail.c */
enum read_result { READ_EOF, READ_MORE, READ_ERROR, READ_STOPPED };
enum read_result tail_read(struct collector *c, struct tailed_file *f, bool flush_incomplete);
/* Commits the chunk being filled, if any. Returns false when stopping. */
void tail_commit(struct collector *c, struct tailed_file *f);

/* watch.c */
int watch_setup(struct collector *c, char *err, size_t errlen);
void watch_scan(struct collector *c, bool at_startup);
void watch_handle_events(struct collector *c);
void watch_check_identities(struct collector *c);
void watch_file_close(struct collector *c, struct tailed_file *f);
void watch_teardown(struct collector *c);

/* positions use, in watch.c */
void watch_load_positions(struct collector *c);
int watch_save_positions(struct collector *c);
void watch_free_positions(struct collector *c);

/* collector.c */
void collector_mark_pending(struct collector *c, struct tailed_file *f);
bool collector_stopping(struct collector *c);

#endif
