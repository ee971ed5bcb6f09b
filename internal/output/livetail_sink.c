/*
 * livetail — the live tail's hub and subscriber queues (see livetail.h).
 *
 * Each subscriber's queue is a ring (ring/): the output thread is its only
 * producer (publishing under the hub lock), the follower's thread its only
 * consumer. Reservations never wait (timeout 0): a full queue costs the
 * follower lines, never the shipping path time.
 */
#include "output/livetail.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ring/ring.h"

struct livetail_sub {
    struct ring *queue;
    livetail_match_fn match;
    void *ctx;
    /* One-entry cache of the last source's verdict: chunks of one file come
     * in runs, so the globs run about once per run, not once per chunk. */
    uint64_t cached_id;
    bool cached_match, cached_valid;
    _Atomic uint64_t missed;
    const struct livetail_entry *peeked;
};

struct livetail {
    pthread_mutex_t lock;
    size_t max, count, queue_bytes;
    /* count, readable without the lock: with nobody following, publishing
     * costs the output thread one atomic load per chunk. */
    atomic_size_t active;
    struct livetail_sub **subs;
};

struct livetail *livetail_create(size_t max_subscribers, size_t queue_bytes)
{
    struct livetail *hub = calloc(1, sizeof *hub);
    if (!hub) return NULL;
    hub->subs = calloc(max_subscribers ? max_subscribers : 1, sizeof *hub->subs);
    if (!hub->subs || pthread_mutex_init(&hub->lock, NULL) != 0) {
        free(hub->subs);
        free(hub);
        return NULL;
    }
    hub->max = max_subscribers;
    hub->queue_bytes = queue_bytes;
    return hub;
}

static void drain(struct livetail_sub *sub)
{
    size_t size;
    bool closed;
    if (sub->peeked) livetail_release(sub);
    const void *block;
    while ((block = ring_peek(sub->queue, &size, 0, &closed))) {
        source_unref(((const struct livetail_entry *)block)->source);
        ring_release(sub->queue);
    }
}

void livetail_destroy(struct livetail *hub)
{
    if (!hub) return;
    /* Subscribers are gone by now (api_stop() runs first); free any left. */
    for (size_t i = 0; i < hub->count; i++) {
        drain(hub->subs[i]);
        ring_destroy(hub->subs[i]->queue);
        free(hub->subs[i]);
    }
    pthread_mutex_destroy(&hub->lock);
    free(hub->subs);
    free(hub);
}

static bool wants(struct livetail_sub *sub, const struct source *src)
{
    if (!sub->cached_valid || sub->cached_id != src->id) {
        sub->cached_id = src->id;
        sub->cached_match = sub->match(sub->ctx, src);
        sub->cached_valid = true;
    }
    return sub->cached_match;
}

void livetail_publish(struct livetail *hub, const struct source_chunk *chunk, size_t size)
{
    struct source *src = chunk->source;
    uint64_t seq = src->published_records;
    src->published_records += chunk->records;
    if (chunk->records == 0 || size < sizeof *chunk ||
        atomic_load_explicit(&hub->active, memory_order_acquire) == 0)
        return;
    size_t body = size - sizeof *chunk;
    pthread_mutex_lock(&hub->lock);
    for (size_t i = 0; i < hub->count; i++) {
        struct livetail_sub *sub = hub->subs[i];
        if (!wants(sub, src)) continue;
        struct livetail_entry *e = ring_reserve(sub->queue, sizeof *e + body, 0);
        if (!e) {
            atomic_fetch_add_explicit(&sub->missed, chunk->records, memory_order_relaxed);
            continue;
        }
        source_ref(src);
        *e = (struct livetail_entry){src, chunk->end_offset, seq, chunk->records, 0};
        memcpy(e + 1, chunk + 1, body);
        ring_commit(sub->queue, sizeof *e + body);
    }
    pthread_mutex_unlock(&hub->lock);
}

struct livetail_sub *livetail_subscribe(struct livetail *hub, livetail_match_fn match, void *ctx, char *err,
                                        size_t errlen)
{
    struct livetail_sub *sub = calloc(1, sizeof *sub);
    if (!sub || !(sub->queue = ring_create(hub->queue_bytes))) {
        free(sub);
        snprintf(err, errlen, "out of memory for a %zu-byte follower queue", hub->queue_bytes);
        return NULL;
    }
    sub->match = match;
    sub->ctx = ctx;
    pthread_mutex_lock(&hub->lock);
    bool full = hub->count >= hub->max;
    if (!full) {
        hub->subs[hub->count++] = sub;
        atomic_store_explicit(&hub->active, hub->count, memory_order_release);
    }
    pthread_mutex_unlock(&hub->lock);
    if (full) {
        ring_destroy(sub->queue);
        free(sub);
        snprintf(err, errlen, "too many followers: server.api.max_subscribers (%zu) are connected", hub->max);
        return NULL;
    }
    return sub;
}

void livetail_unsubscribe(struct livetail *hub, struct livetail_sub *sub)
{
    if (!sub) return;
    pthread_mutex_lock(&hub->lock);
    for (size_t i = 0; i < hub->count; i++) {
        if (hub->subs[i] != sub) continue;
        hub->subs[i] = hub->subs[--hub->count];
        atomic_store_explicit(&hub->active, hub->count, memory_order_release);
        break;
    }
    pthread_mutex_unlock(&hub->lock);
    drain(sub);
    ring_destroy(sub->queue);
    free(sub);
}

const struct livetail_entry *livetail_next(struct livetail_sub *sub, int timeout_ms)
{
    size_t size;
    bool closed;
    if (sub->peeked) livetail_release(sub);
    sub->peeked = ring_peek(sub->queue, &size, timeout_ms, &closed);
    return sub->peeked;
}

void livetail_release(struct livetail_sub *sub)
{
    if (!sub->peeked) return;
    source_unref(sub->peeked->source);
    sub->peeked = NULL;
    ring_release(sub->queue);
}

uint64_t livetail_take_missed(struct livetail_sub *sub)
{
    return atomic_exchange_explicit(&sub->missed, 0, memory_order_relaxed);
}

size_t livetail_subscribers(struct livetail *hub)
{
    pthread_mutex_lock(&hub->lock);
    size_t n = hub->count;
    pthread_mutex_unlock(&hub->lock);
    return n;
}
