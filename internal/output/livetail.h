/*
 * livetail — the live tail: a sink that never acknowledges. The collector
 * offers it the records of every read as it reads them (before its line
 * filters and pipeline stages, so a follower sees what the files hold, as
 * the history does); followers of the logs API (api/) each take a copy from
 * their own bounded queue. Nothing here depends on the output: a follower
 * gets lines while Loki is down, for as long as the collector can read.
 *
 * Contract:
 *  - Publishing never blocks and never waits for a follower: per entry it
 *    takes one lock, and for each subscriber whose filter takes the entry's
 *    source, copies the records into that subscriber's queue (a ring of
 *    `queue_bytes`, allocated once at subscribe) or, when they do not fit,
 *    records a gap (source, sequence numbers, end offset) so the follower
 *    can read those lines from the file instead, or say exactly how many it
 *    missed. No allocation and no syscall per line; nothing here touches
 *    acked_offset, so the live tail can never hold back a file's position.
 *  - Sources are registered by the collector when it starts tailing a file
 *    (before any of its records is published) and unregistered when it
 *    closes it. Each event bumps a generation counter, stamped on the source
 *    (livetail_open_gen / livetail_close_gen): two holders of the same
 *    (dev, ino) whose holding overlapped in generations held the same file,
 *    since an inode cannot be reused while it is open. A subscriber is given
 *    the registered sources at the moment it subscribes, so every source
 *    whose records it did not get from the start is one it was told about.
 *  - An entry holds a reference to its source, dropped by livetail_release()
 *    or when the subscriber goes; so does a gap until taken.
 *  - `first_seq` numbers an entry's first record among all records of its
 *    source ever published.
 *  - At most `max_subscribers` at once; one more is refused with a reason.
 */
#ifndef LOGLET_LIVETAIL_H
#define LOGLET_LIVETAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "source/source.h"

struct livetail;
struct livetail_sub;

/* Called under the hub lock: must be quick and must not call back into
 * livetail. */
typedef bool (*livetail_match_fn)(void *ctx, const struct source *src);
typedef void (*livetail_visit_fn)(void *ctx, const struct source *src);

struct livetail_entry {
    struct source *source; /* a reference owned by the entry */
    uint64_t end_offset;   /* where the line after the entry's last complete one starts */
    uint64_t first_seq;
    uint64_t order; /* this subscriber's count of entries and gaps offered before it */
    uint32_t records;
    uint32_t reserved;
    /* followed by `records` struct source_record, as in a chunk */
};

/* Entries a subscriber's queue had no room for, of one source, contiguous:
 * their lines are the file's bytes [start_offset, end_offset). */
struct livetail_gap {
    struct source *source; /* a reference, the taker's to drop */
    uint64_t first_seq, end_seq;
    uint64_t start_offset, end_offset;
    /* The subscriber's offer count when the gap opened: the queue is in
     * order, so once an entry with a larger `order` is taken, every entry
     * of the gap's source before the gap has been taken too, and the gap
     * can be made up before that entry (keeping a container's files in
     * the order the collector read them). */
    uint64_t order;
};

static inline const struct source_record *livetail_entry_first(const struct livetail_entry *e)
{
    return (const struct source_record *)(e + 1);
}

struct livetail *livetail_create(size_t max_subscribers, size_t queue_bytes);
void livetail_destroy(struct livetail *hub);

/* Collector thread. */
void livetail_source_open(struct livetail *hub, struct source *src);
void livetail_source_close(struct livetail *hub, struct source *src);
/* Whether anyone follows (one atomic load): skip building entries if not. */
bool livetail_wanted(const struct livetail *hub);
/* `body` holds `records` records as in a chunk, `len` bytes: the lines
 * that start at file offset `start_offset` and end at `end_offset`. An
 * entry of more than livetail_max_body() bytes is never queued (every
 * follower gets it as a gap): the collector publishes in pieces of at most
 * that, at record boundaries, unless one record alone is larger. */
void livetail_publish(struct livetail *hub, struct source *src, uint64_t start_offset, uint64_t end_offset,
                      const void *body, size_t len, uint32_t records);
/* The largest entry body that always fits an empty follower queue with
 * room to spare: a quarter of it, so that a follower that keeps up (a few
 * entries behind at most) is never given a gap. */
size_t livetail_max_body(const struct livetail *hub);

/* The generation counter now (see the contract). */
uint64_t livetail_generation(const struct livetail *hub);
/* Calls visit for each registered source, under the hub lock. */
void livetail_sources(struct livetail *hub, livetail_visit_fn visit, void *ctx);

/* NULL with `err` set (the limit is reached, out of memory). `visit` (may be
 * NULL) sees every source registered at the moment of subscribing. */
struct livetail_sub *livetail_subscribe(struct livetail *hub, livetail_match_fn match, void *ctx,
                                        livetail_visit_fn visit, void *visit_ctx, char *err, size_t errlen);
void livetail_unsubscribe(struct livetail *hub, struct livetail_sub *sub);

/* The oldest entry, waiting up to timeout_ms; NULL when none. */
const struct livetail_entry *livetail_next(struct livetail_sub *sub, int timeout_ms);
void livetail_release(struct livetail_sub *sub);
/* Takes a gap that `ready` (NULL: any) says the follower can make up now,
 * i.e. it has every queued entry of that source before it: true with *gap
 * filled. Until a gap is taken, nothing more of its source is queued. */
bool livetail_take_gap(struct livetail *hub, struct livetail_sub *sub,
                       bool (*ready)(void *ctx, const struct livetail_gap *g), void *ctx, struct livetail_gap *gap);
/* Lines dropped with no room left to record their gap (then reset). */
uint64_t livetail_take_missed(struct livetail_sub *sub);
size_t livetail_subscribers(struct livetail *hub);

#endif
