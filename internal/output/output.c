#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log/log.h"
#include "metrics/metrics.h"
#include "output_internal.h"

#define IDLE_WAIT_MS 500

bool output_giving_up(struct output *out)
{
    return atomic_load(&out->finishing) && metrics_now_ms() >= atomic_load(&out->deadline_ms);
}

void output_ack(struct aggregator_ack *acks, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        atomic_store_explicit(&acks[i].source->acked_offset, acks[i].end_offset, memory_order_release);
        source_unref(acks[i].source);
    }
}

void output_forget(struct aggregator_ack *acks, size_t n)
{
    for (size_t i = 0; i < n; i++) source_unref(acks[i].source);
}

static bool loki_mode(const struct output *out) { return out->cfg->output.loki.url[0] != '\0'; }

static bool deliver(struct output *out, const struct source_chunk *chunk)
{
    return loki_mode(out) ? loki_sink_deliver(out, chunk) : stdout_sink_deliver(out, chunk);
}

/* Called when the ring has nothing right now: nothing may wait in our
 * buffers longer than it must. */
static bool on_idle(struct output *out, bool closed)
{
    if (!loki_mode(out)) return stdout_sink_idle(out) || stdout_sink_flush(out);
    if (closed) return loki_sink_drain(out);
    if (metrics_now_ms() >= aggregator_due_ms(out->agg)) return loki_sink_handoff(out);
    return true;
}

static int wait_ms(struct output *out)
{
    if (!loki_mode(out)) return IDLE_WAIT_MS;
    int64_t left = aggregator_due_ms(out->agg) - metrics_now_ms();
    if (left < 0) return 0;
    return left < IDLE_WAIT_MS ? (int)left : IDLE_WAIT_MS;
}

static void *output_main(void *arg)
{
    struct output *out = arg;
    bool ok = true;
    for (;;) {
        metrics_beat(METRICS_THREAD_OUTPUT);
        metrics_set(ring_used_bytes, (int64_t)ring_used(out->ring));
        size_t size;
        bool closed;
        /* Peek without waiting first, so a burst goes out with few syscalls;
         * flush before blocking so nothing lingers in our buffers. */
        const void *block = ring_peek(out->ring, &size, 0, &closed);
        if (!block) {
            if (!(ok = on_idle(out, closed)) || closed) break;
            block = ring_peek(out->ring, &size, wait_ms(out), &closed);
            if (!block) {
                if (!(ok = on_idle(out, closed)) || closed) break;
                continue;
            }
        }
        const struct source_chunk *chunk = block;
        if (!deliver(out, chunk)) {
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
    if (ok && !loki_mode(out)) ok = stdout_sink_idle(out) || stdout_sink_flush(out);
    if (!ok) atomic_store(&out->result, -1);
    return NULL;
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
    int rc = loki_mode(out) ? loki_sink_init(out, err, errlen) : stdout_sink_init(out, err, errlen);
    if (rc != 0) {
        output_destroy(out);
        return NULL;
    }
    return out;
}

int output_start(struct output *out, char *err, size_t errlen)
{
    metrics_beat(METRICS_THREAD_OUTPUT);
    if (loki_mode(out) && loki_sink_start(out, err, errlen) != 0) return -1;
    int rc = pthread_create(&out->thread, NULL, output_main, out);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the output thread: %s", strerror(rc));
        return -1;
    }
    out->thread_started = true;
    return 0;
}

int output_finish(struct output *out, int64_t grace_ms)
{
    atomic_store(&out->deadline_ms, metrics_now_ms() + grace_ms);
    atomic_store(&out->finishing, true);
    if (!out->thread_started) return 0;
    pthread_join(out->thread, NULL);
    out->thread_started = false;
    /* Chunks still in the ring were not delivered: drop their references only. */
    size_t size;
    bool closed;
    const void *block;
    while ((block = ring_peek(out->ring, &size, 0, &closed))) {
        source_unref(((const struct source_chunk *)block)->source);
        ring_release(out->ring);
    }
    return atomic_load(&out->result);
}

void output_destroy(struct output *out)
{
    if (!out) return;
    if (loki_mode(out)) loki_sink_free(out);
    else stdout_sink_free(out);
    free(out);
}
