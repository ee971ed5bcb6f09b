/*
 * Loki: the consumer thread adds chunks to the aggregator's batch; a sealed
 * batch goes to the sender thread, which pushes it until every line of it is
 * either accepted or given up, and only then acknowledges it. While it
 * retries, the consumer waits for it, the ring fills and the collector stops
 * reading: the files on disk are the buffer.
 *
 * What each answer does to a batch (classes as in loki.h):
 *   OK            accepted: counted as sent.
 *   RETRY         429, 5xx, no answer: retried with back-off, forever unless
 *                 output.loki.max_retries is set.
 *   AUTH          401/403: the same, and the client re-reads the credential
 *                 files before each retry, so a rotated token or Secret heals
 *                 the agent without a restart; counted in
 *                 loglet_push_auth_failures_total.
 *   MISCONFIGURED 404, 405, 3xx, …: the same back-off; nothing is dropped
 *                 because a wrong URL or proxy is the deployment's fault, not
 *                 the lines'.
 *   TOO_LARGE     413: the body is split in two (loki_split_body) and each
 *                 half pushed, first half first, splitting again as needed;
 *                 a single entry still too large is dropped and counted
 *                 (reason="too_large").
 *   REJECTED      400/422: Loki has stored the valid entries and refused the
 *                 rest for their content; retrying cannot help, so the batch
 *                 is dropped and counted (reason="rejected").
 * The three retried classes set push_failing_since_ms, which /ready compares
 * with output.loki.unready_after; an answer that settles the lines (2xx, a
 * 400, a 413 to a single entry) clears it, since Loki is reachable and takes
 * our credentials again. A failing episode — failures without such an answer
 * between them, possibly over several batches — is logged once for each
 * status it shows (not at every retry), and its end once.
 *
 * A 413 is acted on at once (no back-off: the server has answered, and the
 * halves are smaller); the halves are cold-path allocations owned by the
 * sender until pushed. max_retries, when set, counts per piece.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log/log.h"
#include "metrics/metrics.h"
#include "output_internal.h"

/* A batch's pieces waiting to be pushed, last in first out: a split replaces
 * the top by its two halves, second below first. Each split at least halves
 * a piece's entries (ceil(N/2) and floor(N/2)), so the stack holds at most
 * one pending second half per halving of a size_t count plus the top. */
#define MAX_PIECES (sizeof(size_t) * 8 + 2)

struct piece {
    const uint8_t *body;
    size_t len;
    size_t entries, line_bytes;
    struct loki_body owned; /* owned.data is set when the piece owns its body (a half) */
};

/* The sender thread's own memory, on its stack. Invariant: nsaid and
 * failures are 0 unless failing. */
struct sender {
    bool failing;    /* within a failing episode */
    long said[8];    /* the statuses logged in it (0: no answer) */
    size_t nsaid;
    int failures;    /* failed pushes in it */
    int64_t failing_since_ms;
    bool said_split; /* a 413 split was logged (once per process) */
    bool said_split_nomem;
};

int loki_sink_init(struct output_lane *out, char *err, size_t errlen)
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

/* Logs a drop once per HTTP status for the process (counted always). */
static void report_drop(struct output_lane *out, const struct loki_push_outcome *o, size_t lines, const char *what,
                        const char *reason)
{
    size_t slots = sizeof out->rejected_seen / sizeof out->rejected_seen[0];
    for (size_t i = 0; i < slots; i++) {
        if (out->rejected_seen[i] == o->http_status) return;
        if (out->rejected_seen[i] == 0) {
            out->rejected_seen[i] = o->http_status;
            break;
        }
    }
    log_error("Loki %s %zu lines: %s; such lines are dropped and counted in "
              "loglet_lines_dropped_total{reason=\"%s\"} (said once per HTTP status)",
              what, lines, o->detail, reason);
}

/* Sleeps up to ms, in slices, so shutdown is not delayed by a back-off. */
static void backoff_sleep(struct output_lane *out, int64_t ms)
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

/* A push failed and will be retried (or dropped by max_retries): the
 * episode's bookkeeping, and a log line for each status the episode has not
 * shown yet (a flapping Loki is said a few times, not at every retry). */
static void note_failure(struct sender *snd, const struct config *cfg, const struct loki_push_outcome *o,
                         size_t lines, int64_t wait)
{
    const int64_t now = metrics_now_ms();
    if (!atomic_load(&metrics.push_failing_since_ms)) metrics_set(push_failing_since_ms, now);
    if (!snd->failing) {
        snd->failing = true;
        snd->failing_since_ms = now;
    }
    snd->failures++;
    for (size_t i = 0; i < snd->nsaid; i++)
        if (snd->said[i] == o->http_status) return;
    if (snd->nsaid == sizeof snd->said / sizeof snd->said[0]) return;
    snd->said[snd->nsaid++] = o->http_status;
    switch (o->result) {
    case LOKI_PUSH_AUTH: {
        const char *file = cfg->output.loki.bearer_token_file, *key = "output.loki.bearer_token_file";
        if (!file || !*file) {
            file = cfg->output.loki.basic_auth_password_file;
            key = "output.loki.basic_auth.password_file";
        }
        if (file && *file)
            log_error("Loki refused the credentials (%s): %s (%s) is re-read before every retry; retrying %zu "
                      "lines with back-off (next in %lld ms); they wait on disk, nothing is dropped "
                      "(said once until pushes succeed or the answer changes)",
                      o->detail, key, file, lines, (long long)wait);
        else
            log_error("Loki refused the request (%s) and no credentials are configured "
                      "(output.loki.bearer_token_file or basic_auth); retrying %zu lines with back-off (next in "
                      "%lld ms); they wait on disk, nothing is dropped "
                      "(said once until pushes succeed or the answer changes)",
                      o->detail, lines, (long long)wait);
        break;
    }
    case LOKI_PUSH_MISCONFIGURED:
        log_error("Loki's URL answered %s: check output.loki.url, headers and proxies; retrying %zu lines with "
                  "back-off (next in %lld ms); they wait on disk, nothing is dropped "
                  "(said once until pushes succeed or the answer changes)",
                  o->detail, lines, (long long)wait);
        break;
    default:
        log_warn("push of %zu lines failed: %s; retrying in %lld ms; lines stay on disk meanwhile "
                 "(said once until pushes succeed or the answer changes)",
                 lines, o->detail, (long long)wait);
        break;
    }
}

/* Loki answered with a verdict on the lines (accepted, or refused for
 * their content): whatever failed before works again, so the episode ends
 * and /ready may recover, also after a 400. */
static void note_answer(struct sender *snd, bool accepted)
{
    if (accepted) metrics_set(last_push_ok_ms, metrics_now_ms());
    metrics_set(push_failing_since_ms, 0);
    if (!snd->failing) return;
    log_info("Loki %s again after %d failed attempts over %.1f s", accepted ? "accepts pushes" : "answers",
             snd->failures, (double)(metrics_now_ms() - snd->failing_since_ms) / 1000.0);
    snd->failing = false;
    snd->failures = 0;
    snd->nsaid = 0;
}

enum piece_fate {
    PIECE_DONE,     /* accepted or dropped */
    PIECE_SPLIT,    /* halves[0] and halves[1] replace it */
    PIECE_SHUTDOWN, /* shutdown cut it short */
};

/* Pushes one piece until it is accepted, dropped, or split. */
static enum piece_fate push_piece(struct output_lane *out, struct sender *snd, const struct piece *p,
                                  struct loki_body halves[2])
{
    const struct config *cfg = out->cfg;
    for (int attempt = 0;; attempt++) {
        struct loki_push_outcome o;
        loki_push(out->client, p->body, p->len, &o);
        metrics_count_status(o.http_status);
        metrics_observe_push(o.seconds, p->len);
        switch (o.result) {
        case LOKI_PUSH_OK:
            metrics_add(lines_sent, p->entries);
            metrics_add(bytes_sent, p->line_bytes);
            metrics_add(bytes_sent_compressed, p->len);
            note_answer(snd, true);
            return PIECE_DONE;
        case LOKI_PUSH_REJECTED:
            report_drop(out, &o, p->entries, "rejected a batch of", "rejected");
            metrics_add(lines_dropped_rejected, p->entries);
            note_answer(snd, false);
            return PIECE_DONE;
        case LOKI_PUSH_TOO_LARGE: {
            const enum loki_split_result r =
                p->entries < 2 ? LOKI_SPLIT_SINGLE : loki_split_body(p->body, p->len, &halves[0], &halves[1]);
            if (r == LOKI_SPLIT_OK) {
                if (!snd->said_split)
                    log_warn("Loki refused a body of %zu bytes (%zu lines) as too large (%s): splitting it, and "
                             "any later one, into halves until they fit; output.loki.batch_bytes may be above "
                             "what the server or a proxy takes (said once)",
                             p->len, p->entries, o.detail);
                snd->said_split = true;
                metrics_add(push_splits, 1);
                return PIECE_SPLIT;
            }
            if (r == LOKI_SPLIT_SINGLE || r == LOKI_SPLIT_INVALID) {
                report_drop(out, &o, p->entries,
                            r == LOKI_SPLIT_SINGLE ? "refused as too large a single entry of"
                                                   : "refused as too large an undecodable body of",
                            "too_large");
                metrics_add(lines_dropped_too_large, p->entries);
                note_answer(snd, false);
                return PIECE_DONE;
            }
            /* Out of memory: keep the piece and try again after a back-off
             * (the next attempt answers 413 again and splits then). */
            if (!snd->said_split_nomem)
                log_error("out of memory splitting a body Loki refused as too large; retrying (said once)");
            snd->said_split_nomem = true;
            break;
        }
        case LOKI_PUSH_RETRY:
        case LOKI_PUSH_AUTH:
        case LOKI_PUSH_MISCONFIGURED:
            break;
        }
        if (o.result == LOKI_PUSH_AUTH) metrics_add(push_auth_failures, 1);
        const int64_t wait = loki_backoff_ms(attempt, cfg->output.loki.min_backoff_ms,
                                             cfg->output.loki.max_backoff_ms, o.retry_after_ms);
        if (o.result != LOKI_PUSH_TOO_LARGE) note_failure(snd, cfg, &o, p->entries, wait);
        if (cfg->output.loki.max_retries > 0 && attempt + 1 >= cfg->output.loki.max_retries) {
            log_error("push failed %d times (%s); dropping %zu lines as output.loki.max_retries allows",
                      attempt + 1, o.detail, p->entries);
            metrics_add(lines_dropped_retries, p->entries);
            return PIECE_DONE;
        }
        metrics_add(push_retries, 1);
        if (output_giving_up(out)) return PIECE_SHUTDOWN;
        backoff_sleep(out, wait);
        if (output_giving_up(out)) return PIECE_SHUTDOWN;
    }
}

/* Pushes one batch to the end: every piece of it accepted or dropped, then
 * the batch acknowledged. Returns false when shutdown cut it short (its
 * lines then stay unacknowledged, to be read again after the restart; pieces
 * already accepted will be sent twice, which at-least-once allows). */
static bool push_batch(struct output_lane *out, struct sender *snd, struct aggregator_batch *batch)
{
    struct piece stack[MAX_PIECES];
    size_t top = 0;
    stack[top++] = (struct piece){.body = batch->body, .len = batch->body_len, .entries = batch->entries,
                                  .line_bytes = batch->line_bytes};
    metrics_set(oldest_unacked_ns, batch->oldest_entry_ns);
    bool finished = true;
    while (top > 0) {
        struct piece *p = &stack[top - 1];
        struct loki_body halves[2];
        const enum piece_fate fate = push_piece(out, snd, p, halves);
        if (fate == PIECE_SHUTDOWN) {
            finished = false;
            break;
        }
        loki_body_free(&p->owned); /* done with, or replaced by its halves */
        top--;
        if (fate == PIECE_DONE) continue;
        assert(top + 2 <= MAX_PIECES);
        for (int i = 1; i >= 0; i--) /* the first half on top: it goes first */
            stack[top++] = (struct piece){.body = halves[i].data, .len = halves[i].len,
                                          .entries = halves[i].entries, .line_bytes = halves[i].line_bytes,
                                          .owned = halves[i]};
    }
    while (top > 0) loki_body_free(&stack[--top].owned);
    if (!finished) return false;
    metrics_set(oldest_unacked_ns, 0);
    output_ack(out, batch->acks, batch->nacks);
    return true;
}

static void *sender_main(void *arg)
{
    struct output_lane *out = arg;
    struct sender snd = {.failing = false};
    pthread_mutex_lock(&out->lock);
    for (;;) {
        while (!out->in_flight && !out->sender_stop) pthread_cond_wait(&out->changed, &out->lock);
        if (!out->in_flight) break;
        struct aggregator_batch *batch = out->in_flight;
        pthread_mutex_unlock(&out->lock);
        if (!push_batch(out, &snd, batch)) {
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

int loki_sink_start(struct output_lane *out, char *err, size_t errlen)
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
static bool wait_sender_idle(struct output_lane *out)
{
    pthread_mutex_lock(&out->lock);
    while (out->in_flight && !output_giving_up(out)) {
        output_wait_beating(&out->changed, &out->lock);
    }
    bool idle = !out->in_flight;
    pthread_mutex_unlock(&out->lock);
    return idle;
}

bool loki_sink_handoff(struct output_lane *out)
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

bool loki_sink_deliver(struct output_lane *out, const struct source_chunk *chunk)
{
    const struct source_record *next = NULL;
    uint32_t done = 0;
    while (!aggregator_add(out->agg, chunk, &next, &done))
        if (!loki_sink_handoff(out)) return false;
    return true;
}

bool loki_sink_drain(struct output_lane *out)
{
    if (!loki_sink_handoff(out)) return false;
    return wait_sender_idle(out);
}

void loki_sink_free(struct output_lane *out)
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

static bool loki_lane_idle(struct output_lane *out, bool closed)
{
    if (closed) return loki_sink_drain(out);
    if (metrics_now_ms() >= aggregator_due_ms(out->agg)) return loki_sink_handoff(out);
    return true;
}

static int loki_lane_wait_ms(struct output_lane *out)
{
    int64_t left = aggregator_due_ms(out->agg) - metrics_now_ms();
    if (left < 0) return 0;
    return left < 500 ? (int)left : 500;
}

static bool loki_lane_finish(struct output_lane *out)
{
    (void)out;
    return true;
}

const struct output_lane_ops output_loki_ops = {
    .name = "Loki",
    .init = loki_sink_init,
    .start = loki_sink_start,
    .deliver = loki_sink_deliver,
    .idle = loki_lane_idle,
    .wait_ms = loki_lane_wait_ms,
    .finish = loki_lane_finish,
    .free = loki_sink_free,
};
