/*
 * ring — the bounded buffer between the collector thread and the output
 * thread.
 *
 * Contract:
 *  - Exactly one producer thread and one consumer thread.
 *  - Capacity is fixed in bytes at creation; the ring never allocates again
 *    and never holds more than that. Units are *blocks*: the producer reserves
 *    contiguous space, fills it, and commits it as one block; the consumer
 *    sees whole blocks in commit order and releases each when done with it.
 *  - Blocking is the back-pressure: ring_reserve() waits (up to its
 *    timeout) while there is no room — the collector then stops reading its
 *    files, nothing is dropped — and ring_peek() waits while there is
 *    nothing to read. Both take a
 *    timeout so their threads can notice shutdown and beat their heartbeat.
 *  - Locking happens once per block, never per line: a block holds many lines.
 *  - ring_close(): the producer will commit nothing more. Reservations then
 *    fail; the consumer still drains every committed block, after which
 *    ring_peek() returns NULL with *closed set.
 */
#ifndef LOGLET_RING_H
#define LOGLET_RING_H

#include <stdbool.h>
#include <stddef.h>

struct ring;

/* capacity is rounded down to a multiple of 8; it must be >= 4 KiB.
 * Returns NULL on allocation failure. */
struct ring *ring_create(size_t capacity);
void ring_destroy(struct ring *ring);

/* The largest block ring_reserve() can ever grant. */
size_t ring_max_block(const struct ring *ring);
/* The same for a ring of `capacity` bytes (>= 4 KiB), before creating it. */
size_t ring_max_block_for(size_t capacity);

/* Reserves `size` contiguous bytes (size <= ring_max_block()). Returns NULL
 * when the timeout expired or the ring is closed (check ring_is_closed()). */
void *ring_reserve(struct ring *ring, size_t size, int timeout_ms);
/* Whether ring_reserve(size) would succeed now, without reserving: a
 * producer that must not block (it has other work while the consumer lags)
 * asks before it reads. When the answer is no, ring_room_fd() becomes
 * readable (poll(2)) once the consumer has freed that much, or the ring is
 * closed; the next call clears it. */
bool ring_has_room(struct ring *ring, size_t size);
int ring_room_fd(const struct ring *ring);
/* Publishes the first `used` bytes of the last reservation (used may be 0:
 * then nothing is published). */
void ring_commit(struct ring *ring, size_t used);

/* Returns the oldest committed block and its size, or NULL on timeout or when
 * the ring is closed and empty (*closed = true then). */
const void *ring_peek(struct ring *ring, size_t *size, int timeout_ms, bool *closed);
/* Frees the block returned by the last ring_peek(). */
void ring_release(struct ring *ring);

void ring_close(struct ring *ring);
bool ring_is_closed(struct ring *ring);

/* Bytes currently held (including wrap padding) and the capacity. */
size_t ring_used(struct ring *ring);
size_t ring_capacity(const struct ring *ring);

#endif
