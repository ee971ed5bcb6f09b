/*
 * livetail — the live tail: a sink that never acknowledges. The output
 * thread offers it every chunk before delivering it; followers of the logs
 * API (api/) each take a copy from their own bounded queue.
 *
 * Contract:
 *  - Publishing never blocks and never waits for a follower: per chunk it
 *    takes one lock, and for each subscriber whose filter takes the chunk's
 *    source, copies the chunk into that subscriber's queue (a ring of
 *    `queue_bytes`, allocated once at subscribe) or, when it does not fit,
 *    adds its records to the subscriber's missed count. No allocation and no
 *    syscall per line; nothing here touches acked_offset, so the live tail
 *    can never hold back a file's position.
 *  - An entry holds a reference to its source, dropped by livetail_release()
 *    or when the subscriber goes.
 *  - `first_seq` numbers an entry's first record among all records of its
 *    source ever published, so a follower that missed entries knows exactly
 *    how many lines of that source it missed.
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

/* Called by the output thread under the hub lock: must be quick and must not
 * call back into livetail. */
typedef bool (*livetail_match_fn)(void *ctx, const struct source *src);

struct livetail_entry {
    struct source *source; /* a reference owned by the entry */
    uint64_t end_offset;   /* as the chunk's */
    uint64_t first_seq;
    uint32_t records;
    uint32_t reserved;
    /* followed by `records` struct source_record, as in a chunk */
};

static inline const struct source_record *livetail_entry_first(const struct livetail_entry *e)
{
    return (const struct source_record *)(e + 1);
}

struct livetail *livetail_create(size_t max_subscribers, size_t queue_bytes);
void livetail_destroy(struct livetail *hub);

/* Output thread only: `size` is the whole ring block of the chunk. */
void livetail_publish(struct livetail *hub, const struct source_chunk *chunk, size_t size);

/* NULL with `err` set (the limit is reached, out of memory). */
struct livetail_sub *livetail_subscribe(struct livetail *hub, livetail_match_fn match, void *ctx, char *err,
                                        size_t errlen);
void livetail_unsubscribe(struct livetail *hub, struct livetail_sub *sub);

/* The oldest entry, waiting up to timeout_ms; NULL when none. */
const struct livetail_entry *livetail_next(struct livetail_sub *sub, int timeout_ms);
void livetail_release(struct livetail_sub *sub);
/* Lines dropped for this subscriber since the last call (then reset). */
uint64_t livetail_take_missed(struct livetail_sub *sub);
size_t livetail_subscribers(struct livetail *hub);

#endif
