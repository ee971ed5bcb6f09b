/*
 * livetail — the live tail's hub, source registry and subscriber queues
 * (see livetail.h).
 *
 * Each subscriber's queue is a ring (ring/): the collector thread is its
 * only producer (publishing under the hub lock), the follower's thread its
 * only consumer. Reservations never wait (timeout 0): a full queue costs the
 * follower a gap it must make up from the file, never the reading path time.
 */
#include "output/livetail.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ring/ring.h"

/* Gaps remembered per subscriber; past them only a count is kept. A gap is
 * per source and grows while drops of that source are contiguous, so a
 * slow follower of a few busy files needs few. */
#define LIVETAIL_GAPS 16

struct livetail_sub {
    struct ring *queue;
    livetail_match_fn match;
    void *ctx;
    /* One-entry cache of the last source's verdict: entries of one file come
     * in runs, so the globs run about once per run, not once per entry. */
    uint64_t cached_id;
    bool cached_match, cached_valid;
    _Atomic uint64_t missed;
    uint64_t offered; /* entries and gaps offered (under the hub lock): their `order` */
    struct livetail_gap gaps[LIVETAIL_GAPS]; /* under the hub lock; source NULL: free */
    const struct livetail_entry *peeked;
};

struct livetail {
    pthread_mutex_t lock;
    size_t max, count, queue_bytes;
    /* count, readable without the lock: with nobody following, publishing
     * costs the collector one atomic load per read. */
    atomic_size_t active;
    struct livetail_sub **subs;
    /* Registered sources (each a reference); generation bumps per event. */
    struct source **sources;
    size_t nsources, capsources;
    _Atomic uint64_t generation;
    bool registry_failed; /* out of memory once: said by the caller's log */
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
    atomic_store(&hub->generation, 1);
    return hub;
}

static void drop_gaps(struct livetail_sub *sub)
{
    for (size_t i = 0; i < LIVETAIL_GAPS; i++) {
        if (sub->gaps[i].source) source_unref(sub->gaps[i].source);
        sub->gaps[i].source = NULL;
    }
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
        drop_gaps(hub->subs[i]);
        ring_destroy(hub->subs[i]->queue);
        free(hub->subs[i]);
    }
    for (size_t i = 0; i < hub->nsources; i++) source_unref(hub->sources[i]);
    free(hub->sources);
    pthread_mutex_destroy(&hub->lock);
    free(hub->subs);
    free(hub);
}

void livetail_source_open(struct livetail *hub, struct source *src)
{
    if (!hub) return;
    pthread_mutex_lock(&hub->lock);
    src->livetail_open_gen = atomic_fetch_add(&hub->generation, 1) + 1;
    atomic_store(&src->livetail_close_gen, 0);
    if (hub->nsources == hub->capsources) {
        size_t cap = hub->capsources ? hub->capsources * 2 : 64;
        struct source **g = realloc(hub->sources, cap * sizeof *g);
        if (g) {
            hub->sources = g;
            hub->capsources = cap;
        }
    }
    if (hub->nsources < hub->capsources) {
        source_ref(src);
        src->livetail_index = hub->nsources;
        hub->sources[hub->nsources++] = src;
    } else {
        /* Out of memory: followers still get its lines; only a request's
         * history may leave its directory out. */
        src->livetail_index = SIZE_MAX;
        hub->registry_failed = true;
    }
    pthread_mutex_unlock(&hub->lock);
}

void livetail_source_close(struct livetail *hub, struct source *src)
{
    if (!hub) return;
    pthread_mutex_lock(&hub->lock);
    atomic_store(&src->livetail_close_gen, atomic_fetch_add(&hub->generation, 1) + 1);
    size_t i = src->livetail_index;
    bool registered = i < hub->nsources && hub->sources[i] == src;
    if (registered) {
        hub->sources[i] = hub->sources[--hub->nsources];
        hub->sources[i]->livetail_index = i;
        src->livetail_index = SIZE_MAX;
    }
    pthread_mutex_unlock(&hub->lock);
    if (registered) source_unref(src);
}

uint64_t livetail_generation(const struct livetail *hub) { return atomic_load(&hub->generation); }

void livetail_sources(struct livetail *hub, livetail_visit_fn visit, void *ctx)
{
    pthread_mutex_lock(&hub->lock);
    for (size_t i = 0; i < hub->nsources; i++) visit(ctx, hub->sources[i]);
    pthread_mutex_unlock(&hub->lock);
}

bool livetail_wanted(const struct livetail *hub)
{
    return hub && atomic_load_explicit(&hub->active, memory_order_acquire) != 0;
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

/* Under the hub lock: records of `src` did not fit `sub`'s queue. */
static void note_gap(struct livetail_sub *sub, struct source *src, uint64_t seq, uint32_t records, uint64_t start,
                     uint64_t end)
{
    struct livetail_gap *free_gap = NULL;
    for (size_t i = 0; i < LIVETAIL_GAPS; i++) {
        struct livetail_gap *g = &sub->gaps[i];
        if (g->source == src && g->end_seq == seq) {
            g->end_seq = seq + records;
            g->end_offset = end;
            return;
        }
        if (!g->source && !free_gap) free_gap = g;
    }
    if (!free_gap) {
        atomic_fetch_add_explicit(&sub->missed, records, memory_order_relaxed);
        return;
    }
    source_ref(src);
    *free_gap = (struct livetail_gap){src, seq, seq + records, start, end, sub->offered};
}

size_t livetail_max_body(const struct livetail *hub)
{
    size_t quarter = hub->queue_bytes / 4, max_block = ring_max_block_for(hub->queue_bytes);
    size_t block = quarter < max_block ? quarter : max_block;
    return block > sizeof(struct livetail_entry) ? block - sizeof(struct livetail_entry) : 0;
}

void livetail_publish(struct livetail *hub, struct source *src, uint64_t start_offset, uint64_t end_offset,
                      const void *body, size_t len, uint32_t records)
{
    uint64_t seq = src->published_records;
    src->published_records += records;
    if (records == 0 || !livetail_wanted(hub)) return;
    pthread_mutex_lock(&hub->lock);
    for (size_t i = 0; i < hub->count; i++) {
        struct livetail_sub *sub = hub->subs[i];
        if (!wants(sub, src)) continue;
        sub->offered++;
        bool gap_open = false;
        for (size_t k = 0; k < LIVETAIL_GAPS && !gap_open; k++) gap_open = sub->gaps[k].source == src;
        /* Behind an open gap nothing more is queued for that source: the
         * follower makes the gap up from the file, in order, up to its end. */
        struct livetail_entry *e =
            gap_open || len > livetail_max_body(hub) ? NULL : ring_reserve(sub->queue, sizeof *e + len, 0);
        if (!e) {
            note_gap(sub, src, seq, records, start_offset, end_offset);
            continue;
        }
        source_ref(src);
        *e = (struct livetail_entry){src, end_offset, seq, sub->offered, records, 0};
        memcpy(e + 1, body, len);
        ring_commit(sub->queue, sizeof *e + len);
    }
    pthread_mutex_unlock(&hub->lock);
}

struct livetail_sub *livetail_subscribe(struct livetail *hub, livetail_match_fn match, void *ctx,
                                        livetail_visit_fn visit, void *visit_ctx, char *err, size_t errlen)
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
        for (size_t i = 0; visit && i < hub->nsources; i++) visit(visit_ctx, hub->sources[i]);
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
    drop_gaps(sub);
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

bool livetail_take_gap(struct livetail *hub, struct livetail_sub *sub,
                       bool (*ready)(void *ctx, const struct livetail_gap *g), void *ctx, struct livetail_gap *gap)
{
    bool found = false;
    pthread_mutex_lock(&hub->lock);
    for (size_t i = 0; i < LIVETAIL_GAPS && !found; i++) {
        struct livetail_gap *g = &sub->gaps[i];
        if (!g->source || (ready && !ready(ctx, g))) continue;
        *gap = *g;
        g->source = NULL;
        found = true;
    }
    pthread_mutex_unlock(&hub->lock);
    return found;
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
