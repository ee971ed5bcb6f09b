/*
 * aggregator — turns chunks of records into Loki push batches, grouped per
 * stream (label set), bounded in bytes and age.
 *
 * Contract:
 *  - A batch holds copies of its lines (the ring space can be reused at once),
 *    at most `output.loki.batch_bytes` of line bytes, and is due
 *    `output.loki.batch_wait` after its first entry arrived.
 *  - A stream is a label set as its source rendered it (source.h): records
 *    go to the stream whose text equals their source's label set for their
 *    stream kind. The aggregator renders nothing and remembers nothing of a
 *    chunk or a source beyond the call that adds it. Pod uid and container
 *    id never become labels; with output.loki.structured_metadata they go to
 *    each entry's structured metadata instead, followed by the pairs the
 *    metadata provider put there (kubernetes.structured_metadata).
 *  - Within a stream, entries keep the order in which they arrived.
 *  - A batch carries the acknowledgements of the chunks whose last record it
 *    holds (each with the chunk's reference to its source): whoever finishes
 *    the batch acknowledges them in order.
 *  - No allocation per line: arrays and the arena grow geometrically and are
 *    reused batch after batch. Only one batch is ever being filled; a sealed
 *    batch keeps just its compressed body and acknowledgements, and as a
 *    seal needs the other batch released, one body buffer serves both: memory
 *    is about one batch_bytes of lines plus one compressed body.
 */
#ifndef LOGLET_AGGREGATOR_H
#define LOGLET_AGGREGATOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "source/source.h"

struct aggregator_ack {
    struct source *source;
    uint64_t end_offset;
};

struct aggregator_batch {
    /* Filled by aggregator_seal(): */
    const uint8_t *body; /* snappy-compressed PushRequest */
    size_t body_len;
    size_t raw_len; /* protobuf bytes before compression */
    size_t entries;
    size_t line_bytes;
    int64_t oldest_entry_ns; /* for the lag metric */
    struct aggregator_ack *acks;
    size_t nacks;
    /* private */
    struct aggregator_batch_state *state;
};

struct aggregator;

struct aggregator *aggregator_create(const struct config *cfg, char *err, size_t errlen);
void aggregator_destroy(struct aggregator *agg);

/* Returns the batch being filled (one of two, alternating). */
struct aggregator_batch *aggregator_current(struct aggregator *agg);

/* Adds the chunk's records from `*next` on (start with NULL). Returns true
 * when the whole chunk is in (its ack too); false when the batch filled up
 * first — seal it, hand it off, and call again with the same `next`. */
bool aggregator_add(struct aggregator *agg, const struct source_chunk *chunk, const struct source_record **next,
                    uint32_t *done);

bool aggregator_has_data(struct aggregator *agg);
/* Milliseconds (monotonic) at which the current batch is due, or INT64_MAX. */
int64_t aggregator_due_ms(struct aggregator *agg);

/* Encodes the current batch and switches to the other one, which must have
 * been released. Returns NULL on allocation failure (nothing is lost: the
 * batch stays current). */
struct aggregator_batch *aggregator_seal(struct aggregator *agg);
/* The acknowledgements gathered by the batch being filled (not sealed yet),
 * e.g. to drop their references at shutdown; *n receives their number. */
struct aggregator_ack *aggregator_pending_acks(struct aggregator *agg, size_t *n);

/* Clears a finished batch for reuse (its acks must have been handled). */
void aggregator_release(struct aggregator *agg, struct aggregator_batch *batch);

#endif
