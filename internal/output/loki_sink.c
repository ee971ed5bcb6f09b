/*
 * Loki: the consumer thread adds chunks to the aggregator's batch; a sealed
 * batch goes to the sender thread, which pushes it until Loki takes it
 * (2xx: acknowledged), refuses it (other 4xx: dropped, counted, acknowledged
 * so the agent does not wedge) or max_retries runs out. While it retries,
 * the consumer waits for it, the ring fills and the collector stops reading:
 * the files on disk are the buffer.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log/log.h"
#include "metrics/metrics.h"
#include "output_internal.h"

int loki_sink_init(struct output *out, char *err, size_t errlen)
{
    out->agg = aggregator_create(out->cfg, err, errlen);
    if (!out->agg) return -1;
    out->client = loki_client_create(out->cfg, err, errlen);
    if (!out->client) return -1;
    if (pthread_mutex_init(&out->lock, NULL) != 0 || pthread_cond_init(&out->changed, NULL) != 0) {
        snprintf(err, errlen, "cannot initialise the sender's lock");
        return -1;
    }
    return 0;
}

static void report_rejection(struct output *out, const struct loki_push_outcome *o, size_t lines)
{
    size_t slots = sizeof out->rejected_seen / sizeof out->rejected_seen[0];
    for (size_t i = 0; i < slots; i++) {
        if (out->rejected_seen[i] == o->http_status) return; /* said once per status; counted always */
        if (out->rejected_seen[i] == 0) {
            out->rejected_seen[i] = o->http_status;
            break;
        }
    }
    log_error("Loki rejected a batch of %zu lines: %s; such lines are dropped and counted in "
              "loglet_lines_dropped_total{reason=\"rejected\"} (said once per HTTP status)",
              lines, o->detail);
}

/* Sleeps up to ms, in slices, so shutdown is not delayed by a back-off. */
static void backoff_sleep(struct output *out, int64_t ms)
{
    int64_t until = metrics_now_ms() + ms;
    while (!output_giving_up(out)) {
        int64_t left = until - metrics_now_ms();
        if (left <= 0) return;
        if (left > 200) left = 200;
        struct timespec pause = {left / 1000, (left % 1000) * 1000000L};
        nanosleep(&pause, NULL);
        metrics_beat(METRICS_THREAD_OUTPUT);
    }
}

/* Pushes one batch to the end; returns false when shutdown cut it short
 * (its lines then stay unacknowledged, to be read again after the restart). */
static bool push_batch(struct output *out, struct aggregator_batch *batch)
{
    const struct config *cfg = out->cfg;
    int64_t last_report = 0;
    metrics_set(oldest_unacked_ns, batch->oldest_entry_ns);
    for (int attempt = 0;; attempt++) {
        struct loki_push_outcome o;
        loki_push(out->client, batch->body, batch->body_len, &o);
        metrics_count_status(o.http_status);
        metrics_observe_push(o.seconds, batch->body_len);
        if (o.result == LOKI_PUSH_OK) {
            metrics_add(lines_sent, batch->entries);
            metrics_add(bytes_sent, batch->line_bytes);
            metrics_add(bytes_sent_compressed, batch->body_len);
            metrics_set(last_push_ok_ms, metrics_now_ms());
            metrics_set(push_failing_since_ms, 0);
            metrics_set(oldest_unacked_ns, 0);
            if (attempt > 0) log_info("push succeeded after %d retries", attempt);
            output_ack(batch->acks, batch->nacks);
            return true;
        }
        if (o.result == LOKI_PUSH_REJECTED) {
            report_rejection(out, &o, batch->entries);
            metrics_add(lines_dropped_rejected, batch->entries);
            output_ack(batch->acks, batch->nacks);
            return true;
        }
        if (!atomic_load(&metrics.push_failing_since_ms)) metrics_set(push_failing_since_ms, metrics_now_ms());
        if (cfg->output.loki.max_retries > 0 && attempt + 1 >= cfg->output.loki.max_retries) {
            log_error("push failed %d times (%s); dropping %zu lines as output.loki.max_retries allows",
                      attempt + 1, o.detail, batch->entries);
            metrics_add(lines_dropped_retries, batch->entries);
            output_ack(batch->acks, batch->nacks);
            return true;
        }
        int64_t wait = loki_backoff_ms(attempt, cfg->output.loki.min_backoff_ms, cfg->output.loki.max_backoff_ms,
                                       o.retry_after_ms);
        int64_t now = metrics_now_ms();
        if (attempt == 0 || now - last_report >= 30000) {
            log_warn("push of %zu lines failed: %s; retrying in %lld ms (attempt %d); lines stay on disk meanwhile",
                     batch->entries, o.detail, (long long)wait, attempt + 1);
            last_report = now;
        }
        metrics_add(push_retries, 1);
        if (output_giving_up(out)) return false;
        backoff_sleep(out, wait);
        if (output_giving_up(out)) return false;
    }
}

static void *sender_main(void *arg)
{
    struct output *out = arg;
    pthread_mutex_lock(&out->lock);
    for (;;) {
        while (!out->in_flight && !out->sender_stop) pthread_cond_wait(&out->changed, &out->lock);
        if (!out->in_flight) break;
        struct aggregator_batch *batch = out->in_flight;
        pthread_mutex_unlock(&out->lock);
        if (!push_batch(out, batch)) {
            output_forget(batch->acks, batch->nacks);
            atomic_store(&out->result, -1);
        }
        metrics_set(oldest_unacked_ns, 0);
        aggregator_release(out->agg, batch);
        pthread_mutex_lock(&out->lock);
        out->in_flight = NULL;
        pthread_cond_broadcast(&out->changed);
    }
    pthread_mutex_unlock(&out->lock);
    return NULL;
}

int loki_sink_start(struct output *out, char *err, size_t errlen)
{
    int rc = pthread_create(&out->sender, NULL, sender_main, out);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the sender thread: %s", strerror(rc));
        return -1;
    }
    out->sender_started = true;
    return 0;
}

/* Waits (beating the heartbeat) until the sender is idle or shutdown gives up. */
static bool wait_sender_idle(struct output *out)
{
    pthread_mutex_lock(&out->lock);
    while (out->in_flight && !output_giving_up(out)) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_nsec += 200000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&out->changed, &out->lock, &deadline);
        metrics_beat(METRICS_THREAD_OUTPUT);
    }
    bool idle = !out->in_flight;
    pthread_mutex_unlock(&out->lock);
    return idle;
}

bool loki_sink_handoff(struct output *out)
{
    if (!aggregator_has_data(out->agg)) return true;
    if (!wait_sender_idle(out)) return false;
    struct aggregator_batch *batch = aggregator_seal(out->agg);
    if (!batch) {
        log_error("out of memory encoding a batch; retrying");
        return true;
    }
    metrics_observe_batch(batch->entries, batch->raw_len);
    metrics_add(bytes_sent_uncompressed, batch->raw_len);
    pthread_mutex_lock(&out->lock);
    out->in_flight = batch;
    pthread_cond_broadcast(&out->changed);
    pthread_mutex_unlock(&out->lock);
    return true;
}

bool loki_sink_deliver(struct output *out, const struct source_chunk *chunk)
{
    const struct source_record *next = NULL;
    uint32_t done = 0;
    while (!aggregator_add(out->agg, chunk, &next, &done))
        if (!loki_sink_handoff(out)) return false;
    return true;
}

bool loki_sink_drain(struct output *out)
{
    if (!loki_sink_handoff(out)) return false;
    return wait_sender_idle(out);
}

void loki_sink_free(struct output *out)
{
    if (out->sender_started) {
        pthread_mutex_lock(&out->lock);
        out->sender_stop = true;
        pthread_cond_broadcast(&out->changed);
        pthread_mutex_unlock(&out->lock);
        pthread_join(out->sender, NULL);
        out->sender_started = false;
        pthread_mutex_destroy(&out->lock);
        pthread_cond_destroy(&out->changed);
    }
    if (out->agg) {
        /* What the current batch holds was never sent: it stays unacknowledged. */
        size_t n;
        struct aggregator_ack *acks = aggregator_pending_acks(out->agg, &n);
        output_forget(acks, n);
    }
    aggregator_destroy(out->agg);
    loki_client_destroy(out->client);
}
