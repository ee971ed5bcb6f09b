/*
 * The collector's private state, shared by its files, each of which states
 * its own contract on top:
 *   collector.c        — lifecycle, the event loop, back-pressure, periodic duties;
 *   discovery.c        — globs, symlink roots, exclusions: which files to tail;
 *   watcher.h          — change detection, one interface with two backends:
 *   watcher_inotify.c  —   inotify (with polling where a watch cannot be had),
 *   watcher_poll.c     —   stat polling only;
 *   rotation.c         — file identity, rotation, deletion, holding and closing;
 *   catchup.c          — rotated siblings read in order after a gap;
 *   positions_policy.c — where a file starts, and when positions are saved;
 *   positions.c        — the positions file format;
 *   spool.c            — hard links that keep held files past a crash;
 *   tail.c             — the hot path: read, assemble lines, fill ring chunks;
 *   metadata.c         — when a file's labels are decided, and when they change.
 */
#ifndef LOGLET_COLLECTOR_INTERNAL_H
#define LOGLET_COLLECTOR_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include <zlib.h>

#include "collector.h"
#include "pipeline/pipeline.h"
#include "positions.h"
#include "source/source.h"
#include "table/table.h"
#include "watcher.h"

enum file_state {
    FILE_ACTIVE,   /* the file its path names now */
    FILE_DRAINING, /* rotated away, deleted, or its link removed: read to the end, then close */
};

struct watch_dir;

/*
 * One open file.
 *
 * Invariants:
 *  - fd is open for the struct's whole life; gz is set only for a rotated,
 *    compressed sibling being caught up, and then reads go through it.
 *  - offset is where the first line no committed chunk covers starts: every
 *    byte before it is in the ring, delivered, filtered out, or held by
 *    the pipeline (`pipe`, a multiline join): then chunks acknowledge no
 *    further than pipeline_file_ack_limit(), the held join's first line. It is a line
 *    boundary except while `continuing` (see below).
 *  - src->acked_offset <= offset, and acked_offset only grows, except that a
 *    truncation gives the file a fresh source.
 *  - Line assembly across reads. The read buffer is shared by every file,
 *    so nothing of a line is kept between reads except these fields:
 *      continuing: the logical line starting at `offset` already had pieces
 *        emitted (it is longer than max_line_bytes); `continuing_skip`
 *        content bytes of its first physical piece are already out, and its
 *        next piece keeps `continuing_ts` / `continuing_stream`.
 *      after_flush: the line ending at `offset` went out without its newline
 *        (partial_flush_timeout); the next bytes up to a newline are its rest.
 *    continuing and after_flush are never both set. A read that ends inside
 *    a line not yet begun simply reads it again from its first byte; only a
 *    physical line longer than the whole buffer is read on from inside
 *    (phys_at), and then offset stays at its start.
 *  - incomplete_since_ms != 0: the file ends, at incomplete_offset, in a line
 *    without its newline since that time.
 *  - state == FILE_ACTIVE iff in_path_index (src->path maps to this file),
 *    except after an allocation failure, when the file drains.
 *  - waiting: a predecessor (an older file of the same path) is not closed
 *    yet; this file is not read until it is. The chain predecessor ->
 *    successor is oldest to newest.
 *  - held_seq orders held (draining) files oldest first, for releasing.
 */
struct tailed_file {
    struct source *src;
    int fd;
    gzFile gz;
    /* A compressed file is decompressed once, forwards: the unconsumed end
     * of the last read (a line cut by the buffer) is kept here rather than
     * seeking back, which would make zlib start again from the beginning. */
    char *gz_carry;
    size_t gz_carry_len;
    uint64_t offset;
    enum config_format format; /* AUTO until the first line decides */
    enum file_state state;
    int64_t draining_since_ms;
    uint64_t held_seq;
    bool continuing;
    uint8_t continuing_stream;
    int64_t continuing_ts;
    size_t continuing_skip;
    bool after_flush;
    /* Inside a physical line longer than the read buffer: reading goes on
     * at phys_at (> offset, which stays at the line's start); its prefix
     * said phys_ts / phys_stream / phys_partial (a CRI P line). 0: not. */
    uint64_t phys_at;
    int64_t phys_ts;
    uint8_t phys_stream;
    bool phys_partial;
    bool phys_piece_out; /* a piece of that physical line went out: the next continues it */
    int64_t incomplete_since_ms;
    uint64_t incomplete_offset;
    struct watch_dir *dir;
    struct tailed_file *dir_next;
    struct tailed_file *all_prev, *all_next;
    struct tailed_file *pending_next;
    bool pending;
    bool waiting;
    struct tailed_file *successor;
    bool successor_opened; /* after a rotation: the files that followed it are open */
    /* While this file is too young to have a fingerprint, the positions file
     * cannot tell it from a reused inode; the rotated file it follows, read
     * out and delivered, is then saved as a `done` entry in its stead, so a
     * restart resumes after that one (positions_policy.c). Owned strings. */
    struct position follows;
    bool in_path_index;
    /* != 0: its pod is not known yet; not read until it is, or until then
     * (kubernetes.wait_for_metadata). See metadata.c. */
    int64_t metadata_wait_until_ms;
    /* The file's pipeline stages (NULL: none apply); paused_until_ms != 0:
     * a limit with action: wait stopped reading it until then. */
    struct pipeline_file *pipe;
    int64_t paused_until_ms;
};

/* A directory the collector follows: a glob's directory (new and removed
 * links) or a target's directory (writes, renames, creations, deletions).
 * wd < 0: no watch (polling); its files are checked every poll_interval. */
struct watch_dir {
    int wd;
    char *path;
    bool holds_links;
    struct tailed_file *files;
    bool check_identity; /* an entry changed: re-stat its files */
    struct watch_dir *check_next;
    struct watch_dir *all_prev, *all_next;
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
    int wake_fd; /* eventfd: collector_stop() wakes poll() */

    struct watcher *watcher;
    struct source_label_policy label_policy;

    struct glob_spec *globs;
    size_t nglobs;
    char **roots; /* collection.symlink_roots, resolved */
    size_t nroots;
    struct table dirs_by_wd;
    struct table dirs_by_path;
    struct watch_dir *all_dirs;
    struct table files_by_path;
    struct tailed_file *all_files;
    size_t nfiles;
    struct tailed_file *pending_head, *pending_tail;
    struct watch_dir *check_head; /* directories whose files need a stat() */
    struct table reported;        /* paths already reported as unusable */
    /* Paths whose file was renamed away and closed before its successor
     * appeared (link dangling): path -> struct awaited (rotation.c). */
    struct table awaited;
    bool rescan_needed;
    int64_t last_rescan_ms;
    int64_t last_overflow_report_ms;

    /* Back-pressure: the ring had no room for the next chunk. The loop goes
     * on watching (rotations, deletions, new files are followed and held)
     * but reads nothing until the ring has room again. */
    bool blocked;
    size_t blocked_want;
    /* The thread is stopping but still writes what the pipeline holds
     * (flush_held_at_stop): collector_stopping() says no meanwhile. */
    bool final_flush;

    /* Held files (rotated away or deleted, not read to their end) are
     * released oldest first: the order they began to be held in. */
    uint64_t next_held_seq;

    /* Positions: what was saved at the last run (by path), and sources of
     * closed files whose lines are still in flight (saved until delivered). */
    struct positions saved;
    struct table saved_by_path; /* path -> struct saved_range */
    bool positions_existed;     /* a positions file was there at start: files not in it are new */
    bool positions_lost;        /* unreadable at start: files are read from the beginning */
    struct source **retired;
    size_t nretired, retired_cap;
    int64_t last_positions_save_ms;
    int64_t positions_dirty_since_ms; /* a file was opened, rotated or closed: save soon */
    uint64_t positions_last_sum;      /* what the last write held (acked_checksum) */

    /* The spool (spool.c): -1 when there is none. */
    int spool_fd;
    char *spool_path;
    dev_t spool_refused[8]; /* filesystems a link cannot reach (said once each) */
    size_t spool_nrefused;
    bool spool_error_said;

    /* The targets snapshot (snapshot.c): written by the collector thread,
     * read by any, under `lock`. items is NULL while nobody has read it for
     * SNAPSHOT_KEEP_MS; `built` is signalled when items is replaced. */
    struct {
        pthread_mutex_t lock;
        pthread_cond_t built;
        struct collector_target *items;
        size_t n;
        int64_t last_ms;
        _Atomic int64_t read_ms; /* when a reader last asked (monotonic ms), 0: never */
    } snap;
    struct pipeline *pipeline;
    int64_t next_resume_ms; /* the earliest paused_until_ms of any file, 0: none */

    pcre2_code *include_lines;
    pcre2_code *exclude_lines;
    pcre2_match_data *match_data;

    /* The live tail (NULL: no logs API). Every record a read finishes goes
     * to live_buf, before the line filters and pipeline stages, while
     * someone follows (live_on, decided once per read); tail_commit()
     * publishes it with the chunk. Allocated on first need, once. */
    struct livetail *livetail;
    char *live_buf;
    size_t live_len, live_cap;
    /* Entries go out at record boundaries in pieces of at most live_piece
     * bytes (livetail_max_body: what a follower's queue always takes), a
     * larger record alone; live_start is the file offset where the lines
     * in live_buf begin. */
    size_t live_piece;
    uint64_t live_start;
    uint32_t live_records;
    bool live_on, live_alloc_failed;

    /* The read buffer and scratch areas, allocated once for every file. */
    char *buf;
    size_t buf_size;
    char *scratch;    /* an unfinished record moving to a new chunk */
    char *docker_buf; /* docker "log" values, unescaped */
    char *utf8_buf;   /* a line with invalid UTF-8, repaired */
    size_t max_line;
    struct chunk_writer writer;

    /* The provider's generation the active files were labelled at, and how
     * many files wait for their pod (metadata.c). */
    uint64_t metadata_generation;
    size_t metadata_waiting;
};

/* tail.c */
enum read_result {
    READ_EOF,     /* read everything there is */
    READ_MORE,    /* more to read: call again */
    READ_BLOCKED, /* the ring is full: nothing was lost, read again when it has room */
    READ_ERROR,
    READ_STOPPED,
    READ_PAUSED, /* a pipeline limit (action: wait): read again at f->paused_until_ms */
};
enum read_result tail_read(struct collector *c, struct tailed_file *f, bool flush_incomplete);
/* Sends what the file's pipeline holds (a join, at its timeout or when the
 * file closes); false when the ring has no room (still held). */
bool tail_pipeline_flush(struct collector *c, struct tailed_file *f);
/* The ring space one read may need. */
size_t tail_chunk_bytes(const struct collector *c);
/* Counts the lines and bytes from f->offset to the end (a file released unread). */
void tail_count_rest(struct collector *c, struct tailed_file *f, uint64_t *lines, uint64_t *bytes);

/* discovery.c */
/* Reasons a path is reported as not tailed (besides errno values). */
#define DISCOVERY_EXCLUDED_BY_PATTERN (-1)
#define DISCOVERY_EXCLUDED_BY_ANNOTATION (-2)
int discovery_setup(struct collector *c, char *err, size_t errlen);
void discovery_scan(struct collector *c, bool at_startup);
/* A name appeared in (created) or left (!created) a directory that holds links. */
void discovery_link_event(struct collector *c, struct watch_dir *dir, const char *name, bool created);
void discovery_open(struct collector *c, const char *link_path, bool at_startup, struct tailed_file *predecessor);
void discovery_forget_report(struct collector *c, const char *path);
/* The path is excluded by an annotation (reported so): `at` (copied) is
 * where its file was, kept in the positions file as `excluded: 1`. */
void discovery_note_excluded_at(struct collector *c, const char *path, const struct position *at);
/* Adds those positions (of links still there) to ps; -1 when out of memory. */
int discovery_save_excluded(struct collector *c, struct positions *ps);
/* Whether the path is not tailed because an annotation excludes its pod. */
bool discovery_excluded_by_annotation(struct collector *c, const char *path);
/* The paths an annotation excluded are looked at again (the provider's
 * answer moved): those no longer excluded are opened, at their end. */
void discovery_recheck_excluded(struct collector *c);
void discovery_report_once(struct collector *c, const char *path, int reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void discovery_teardown(struct collector *c);

/* rotation.c */
struct watch_dir *rotation_dir(struct collector *c, const char *path, bool holds_links);
struct tailed_file *rotation_track(struct collector *c, const char *link_path, const char *real, int fd, gzFile gz,
                                   const struct stat *st, uint64_t offset);
void rotation_take_fingerprint(struct tailed_file *f);
bool rotation_fingerprint_matches(int fd, gzFile gz, uint64_t fp, uint32_t fp_len);
bool rotation_identifies(uint64_t fp, uint32_t fp_len, int fd);
struct tailed_file *rotation_track_detached(struct collector *c, const char *link_path, const char *real, int fd,
                                            gzFile gz, const struct stat *st, uint64_t offset);
void rotation_await_successor(struct collector *c, const char *link_path, const struct position *after);
struct tailed_file *rotation_awaited(struct collector *c, const char *link_path, const char *real);
void rotation_forget_awaited(struct collector *c, const char *link_path);
/* Adds the awaited paths' last files to a positions save: without them a
 * path whose new file is late would be taken for a new one at the next
 * start and its rotated file read again. */
int rotation_save_awaited(struct collector *c, struct positions *ps);
/* True when a configured glob names `path`. */
bool discovery_matches(const struct collector *c, const char *path);
void rotation_begin_draining(struct collector *c, struct tailed_file *f, const char *why);
void rotation_schedule_check(struct collector *c, struct watch_dir *dir);
void rotation_check_identities(struct collector *c);
/* Every file of every directory: after an inotify overflow, or polling. */
void rotation_check_all(struct collector *c);
void rotation_dir_gone(struct collector *c, struct watch_dir *dir, bool watch_dropped);
void rotation_close(struct collector *c, struct tailed_file *f);
/* A copytruncate: the file starts again at 0 under a fresh source. */
void rotation_truncated(struct collector *c, struct tailed_file *f);
/* Held files and bytes measured; beyond the bounds the oldest are released. */
void rotation_enforce_held(struct collector *c);
void rotation_teardown(struct collector *c);
/* Before a drained file closes: a join its pipeline holds moves to the file
 * that follows it on the path, or goes out. False: no room in the ring. */
bool rotation_release_pipeline(struct collector *c, struct tailed_file *f);

/* catchup.c */
/* Opens the rotated siblings of `real` not open yet: from the one `known`
 * identifies (at its offset), or after it when `after_known`; all of them
 * when none is identified. They are chained oldest first after
 * `predecessor` (may be NULL); returns the last of the chain (predecessor
 * when none was opened). After downtime (!after_known), every position in
 * `known` but `current` (the file still at the path) that no sibling
 * answers to is reported and counted as missed. */
struct tailed_file *catchup_open(struct collector *c, const char *link_path, const char *real,
                                 const struct position *known, size_t nknown, bool after_known,
                                 const struct position *current, struct tailed_file *predecessor);
bool catchup_open_any(const char *path, int *fd, gzFile *gz, struct stat *st);
/* True when a rotated sibling of p->real_path is the file `p` names. */
bool catchup_was_rotated(const struct position *p);
/* After a copytruncate of `f`: the sibling holding its old content (known
 * by `old`, its full fingerprint), opened from old->offset and draining;
 * NULL when there is none. */
struct tailed_file *catchup_copy(struct collector *c, struct tailed_file *f, const struct position *old);

/* positions_policy.c */
void positions_policy_load(struct collector *c);
uint64_t positions_policy_resume(struct collector *c, const char *link_path, const char *real, int fd,
                                 const struct stat *st, struct tailed_file **predecessor);
/* Whether the positions read at start listed this path (they are kept for
 * the whole run: a link dangling at start, say, is found again later). */
bool positions_policy_known(struct collector *c, const char *link_path);
/* At start: the saved entry of the path's current file, or NULL. */
const struct position *positions_policy_saved_entry(struct collector *c, const char *link_path);
void follows_clear(struct tailed_file *f);
/* After the start-up scan: saved paths nothing matched any more. */
void positions_policy_resume_orphans(struct collector *c);
void positions_policy_dirty(struct collector *c);
void positions_policy_tick(struct collector *c, int64_t now);
int positions_policy_save(struct collector *c);
void positions_policy_retire(struct collector *c, struct source *src);
void positions_policy_free_saved(struct collector *c);
void positions_policy_teardown(struct collector *c);

/* metadata.c */
#define METADATA_WAIT_POLL_MS 20
/* After a file's source is made: wait for its pod, or count it unlabelled. */
void metadata_track(struct collector *c, struct tailed_file *f);
/* Every turn of the loop: ends waits, relabels files whose pod changed. */
void metadata_tick(struct collector *c, int64_t now);
/* Chooses f's pipeline block from what its source says now (path names,
 * the pod's labels); on a change of block a join still held under the old
 * one goes out first. False when it cannot (no room in the ring): f keeps
 * its old stages and the caller tries again later. */
bool metadata_choose_pipeline(struct collector *c, struct tailed_file *f);
/* Whether a fresh source of f would choose another block. */
bool metadata_pipeline_changes(struct collector *c, const struct tailed_file *f, const struct source *fresh);
/* A tailed file came (open) or went (!open): the provider keeps its pod's
 * metadata while any is open (file_link/file_unlink, once each). */
void metadata_file_opened_or_closed(struct collector *c, const struct tailed_file *f, bool open);
/* Whether an annotation excludes a file with this path metadata (*why says
 * which). `was_excluded`: it did, and then a pod that is not known any more
 * (deleted, or the provider cannot say) keeps it excluded: only a pod seen
 * without the annotation lifts it. */
bool metadata_excluded(struct collector *c, const struct parser_path_meta *meta, bool was_excluded, const char **why);

/* collector.c */
void collector_mark_pending(struct collector *c, struct tailed_file *f);
bool collector_stopping(struct collector *c);

/* spool.c */
int spool_open(struct collector *c, char *err, size_t errlen);
void spool_keep(struct collector *c, struct tailed_file *f);
void spool_forget(struct collector *c, struct source *src);
void spool_handover(struct source *from, struct source *to);
bool spool_reopen(struct collector *c, const struct position *p, int *fd, gzFile *gz, struct stat *st);
void spool_sweep(struct collector *c);
void spool_close(struct collector *c);

/* snapshot.c: refreshes the targets snapshot when it is due. */
void snapshot_tick(struct collector *c, int64_t now_ms);
void snapshot_teardown(struct collector *c);

#endif
