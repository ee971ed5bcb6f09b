/*
 * The output's lanes and their lifecycle (see output_internal.h): one
 * consumer thread per lane, and with several lanes a dispatcher that copies
 * each chunk from the agent's ring into every lane's own queue.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log/log.h"
#include "metrics/metrics.h"
#include "output_internal.h"

#define IDLE_WAIT_MS 500
/* How long the dispatcher waits on one full lane before it looks at
 * shutdown and beats its heartbeat again. */
#define DISPATCH_WAIT_MS 200

bool output_giving_up(struct output_lane *out)
{
    return atomic_load(&out->finishing) && metrics_now_ms() >= atomic_load(&out->deadline_ms);
}

void output_ack(struct output_lane *out, struct aggregator_ack *acks, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        source_ack(acks[i].source, out->index, acks[i].end_offset);
        source_unref(acks[i].source);
    }
}

void output_forget(struct aggregator_ack *acks, size_t n)
{
    for (size_t i = 0; i < n; i++) source_unref(acks[i].source);
}

void output_wait_beating(pthread_cond_t *cond, pthread_mutex_t *lock)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_nsec += 200000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(cond, lock, &deadline);
    metrics_beat(METRICS_THREAD_OUTPUT);
}

static void *lane_main(void *arg)
{
    struct output_lane *out = arg;
    const struct output_lane_ops *ops = out->ops;
    bool ok = true;
    for (;;) {
        metrics_beat(METRICS_THREAD_OUTPUT);
        if (!out->owns_ring) metrics_set(ring_used_bytes, (int64_t)ring_used(out->ring));
        size_t size;
        bool closed;
        /* Peek without waiting first, so a burst goes out with few syscalls;
         * flush before blocking so nothing lingers in our buffers. */
        const void *block = ring_peek(out->ring, &size, 0, &closed);
        if (!block) {
            if (!(ok = ops->idle(out, closed)) || closed) break;
            block = ring_peek(out->ring, &size, ops->wait_ms(out), &closed);
            if (!block) {
                if (!(ok = ops->idle(out, closed)) || closed) break;
                continue;
            }
        }
        const struct source_chunk *chunk = block;
        if (!ops->deliver(out, chunk)) {
            source_unref(chunk->source); /* given up: this chunk stays unacknowledged */
            ring_release(out->ring);
            ok = false;
            break;
        }
        ring_release(out->ring);
        if (output_giving_up(out)) {
            ok = false;
            break;
        }
    }
    if (ok) ok = ops->finish(out);
    if (!ok) atomic_store(&out->result, -1);
    return NULL;
}

static bool dispatcher_giving_up(struct output *o)
{
    return atomic_load(&o->finishing) && metrics_now_ms() >= atomic_load(&o->deadline_ms);
}

/* Copies every chunk into each lane's queue, in order. A full queue is
 * waited for (the chunk stays in the agent's ring, so the collector pauses
 * once that fills too); the other lanes meanwhile work through what they
 * hold. Each copy carries its own reference to the source. */
static void *dispatcher_main(void *arg)
{
    struct output *o = arg;
    for (;;) {
        metrics_beat(METRICS_THREAD_OUTPUT);
        metrics_set(ring_used_bytes, (int64_t)ring_used(o->ring));
        size_t size;
        bool closed;
        const void *block = ring_peek(o->ring, &size, DISPATCH_WAIT_MS, &closed);
        if (!block) {
            if (closed || dispatcher_giving_up(o)) break;
            continue;
        }
        const struct source_chunk *chunk = block;
        bool given_up = false;
        for (unsigned i = 0; i < o->nlanes && !given_up; i++) {
            void *copy;
            while (!(copy = ring_reserve(o->lanes[i]->ring, size, DISPATCH_WAIT_MS))) {
                metrics_beat(METRICS_THREAD_OUTPUT);
                if (dispatcher_giving_up(o) || ring_is_closed(o->lanes[i]->ring)) {
                    given_up = true;
                    break;
                }
            }
            if (given_up) break;
            memcpy(copy, chunk, size);
            source_ref(chunk->source);
            ring_commit(o->lanes[i]->ring, size);
        }
        source_unref(chunk->source);
        ring_release(o->ring);
        if (given_up) break;
    }
    for (unsigned i = 0; i < o->nlanes; i++) ring_close(o->lanes[i]->ring);
    return NULL;
}

static void drop_ring(struct ring *ring)
{
    size_t size;
    bool closed;
    const void *block;
    while ((block = ring_peek(ring, &size, 0, &closed))) {
        source_unref(((const struct source_chunk *)block)->source);
        ring_release(ring);
    }
}

static void lane_destroy(struct output_lane *lane)
{
    if (!lane) return;
    lane->ops->free(lane);
    if (lane->owns_ring) {
        drop_ring(lane->ring);
        ring_destroy(lane->ring);
    }
    free(lane);
}

static int add_lane(struct output *o, const struct output_lane_ops *ops, char *err, size_t errlen)
{
    struct output_lane *lane = calloc(1, sizeof *lane);
    if (!lane) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    lane->cfg = o->cfg;
    lane->ops = ops;
    lane->index = o->nlanes;
    lane->ring = o->ring;
    o->lanes[o->nlanes++] = lane;
    return 0;
}

struct output *output_create(const struct config *cfg, struct ring *ring, char *err, size_t errlen)
{
    struct output *out = calloc(1, sizeof *out);
    if (!out) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    out->cfg = cfg;
    out->ring = ring;
    int rc = 0;
    if (cfg->output.loki.url[0]) rc = add_lane(out, &output_loki_ops, err, errlen);
    if (rc == 0 && cfg->output.archive.url[0]) rc = add_lane(out, &output_archive_ops, err, errlen);
    if (rc == 0 && out->nlanes == 0) rc = add_lane(out, &output_stdout_ops, err, errlen);
    if (rc == 0 && out->nlanes > 1) {
        /* A lane's queue takes any block the agent's ring takes. */
        for (unsigned i = 0; i < out->nlanes && rc == 0; i++) {
            out->lanes[i]->ring = ring_create(ring_capacity(ring));
            if (!out->lanes[i]->ring) {
                snprintf(err, errlen, "cannot allocate the %zu-byte queue of the %s output", ring_capacity(ring),
                         out->lanes[i]->ops->name);
                out->lanes[i]->ring = ring;
                rc = -1;
                break;
            }
            out->lanes[i]->owns_ring = true;
        }
    }
    for (unsigned i = 0; i < out->nlanes && rc == 0; i++) rc = out->lanes[i]->ops->init(out->lanes[i], err, errlen);
    if (rc != 0) {
        output_destroy(out);
        return NULL;
    }
    source_set_sinks(out->nlanes);
    return out;
}

int output_start(struct output *out, char *err, size_t errlen)
{
    metrics_beat(METRICS_THREAD_OUTPUT);
    for (unsigned i = 0; i < out->nlanes; i++) {
        struct output_lane *lane = out->lanes[i];
        if (lane->ops->start && lane->ops->start(lane, err, errlen) != 0) return -1;
        int rc = pthread_create(&lane->thread, NULL, lane_main, lane);
        if (rc != 0) {
            snprintf(err, errlen, "cannot start the %s output's thread: %s", lane->ops->name, strerror(rc));
            return -1;
        }
        lane->thread_started = true;
    }
    if (out->nlanes > 1) {
        int rc = pthread_create(&out->dispatcher, NULL, dispatcher_main, out);
        if (rc != 0) {
            snprintf(err, errlen, "cannot start the output dispatcher: %s", strerror(rc));
            return -1;
        }
        out->dispatcher_started = true;
    }
    return 0;
}

int output_finish(struct output *out, int64_t grace_ms)
{
    const int64_t deadline = metrics_now_ms() + grace_ms;
    atomic_store(&out->deadline_ms, deadline);
    atomic_store(&out->finishing, true);
    for (unsigned i = 0; i < out->nlanes; i++) {
        atomic_store(&out->lanes[i]->deadline_ms, deadline);
        atomic_store(&out->lanes[i]->finishing, true);
    }
    if (out->dispatcher_started) {
        pthread_join(out->dispatcher, NULL);
        out->dispatcher_started = false;
    } else if (out->nlanes > 1) {
        for (unsigned i = 0; i < out->nlanes; i++) ring_close(out->lanes[i]->ring);
    }
    int result = 0;
    for (unsigned i = 0; i < out->nlanes; i++) {
        struct output_lane *lane = out->lanes[i];
        if (lane->thread_started) {
            pthread_join(lane->thread, NULL);
            lane->thread_started = false;
        }
        if (atomic_load(&lane->result) != 0) result = -1;
        /* Chunks still queued were not delivered: drop their references only. */
        if (lane->owns_ring) drop_ring(lane->ring);
    }
    drop_ring(out->ring);
    return result;
}

void output_destroy(struct output *out)
{
    if (!out) return;
    for (unsigned i = 0; i < out->nlanes; i++) lane_destroy(out->lanes[i]);
    free(out);
}
