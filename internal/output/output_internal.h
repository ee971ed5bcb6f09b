/*
 * The output's private state, shared by its files:
 *   output.c      — the consumer thread and lifecycle;
 *   stdout_sink.c — formatting and writing lines to standard output;
 *   loki_sink.c   — batching through the aggregator and the sender thread.
 */
#ifndef LOGLET_OUTPUT_INTERNAL_H
#define LOGLET_OUTPUT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "aggregator/aggregator.h"
#include "loki/loki.h"
#include "output.h"
#include "source/source.h"

#define STDOUT_BUFFER_BYTES (256 * 1024)
/* Chunks written into the buffer but not yet flushed: bounded, so a burst of
 * one-line chunks cannot grow the list. */
#define MAX_UNFLUSHED_ACKS 512

struct output {
    const struct config *cfg;
    struct ring *ring;
    pthread_t thread;
    bool thread_started;
    atomic_bool finishing;
    _Atomic int64_t deadline_ms; /* when finishing: give up delivering after this */
    atomic_int result;

    /* stdout */
    char *buf;
    size_t len;
    struct aggregator_ack acks[MAX_UNFLUSHED_ACKS];
    size_t nacks;
    uint64_t unflushed_lines, unflushed_bytes;
    char *line_buf; /* one formatted record */
    /* stdout is a pipe or socket: a write may block for as long as nobody
     * reads, so writes wait in poll(2) (bounded, shutdown can interrupt)
     * and never exceed what the kernel takes without blocking. */
    bool stdout_may_block;

    /* Loki: the consumer thread fills batches; the sender pushes them one at
     * a time, in order, so per-stream order holds without coordination. */
    struct aggregator *agg;
    struct loki_client *client;
    pthread_t sender;
    bool sender_started;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    struct aggregator_batch *in_flight; /* handed to the sender, not yet finished */
    bool sender_stop;
    long rejected_seen[16]; /* HTTP statuses already reported */
};

bool output_giving_up(struct output *out);
void output_ack(struct aggregator_ack *acks, size_t n);
void output_forget(struct aggregator_ack *acks, size_t n);

int stdout_sink_init(struct output *out, char *err, size_t errlen);
bool stdout_sink_deliver(struct output *out, const struct source_chunk *chunk);
bool stdout_sink_flush(struct output *out);
bool stdout_sink_idle(struct output *out);
void stdout_sink_free(struct output *out);

int loki_sink_init(struct output *out, char *err, size_t errlen);
int loki_sink_start(struct output *out, char *err, size_t errlen);
/* Hands the current batch to the sender (waiting while it is busy). */
bool loki_sink_handoff(struct output *out);
bool loki_sink_deliver(struct output *out, const struct source_chunk *chunk);
/* Waits until the sender has finished its batch (or the deadline passed). */
bool loki_sink_drain(struct output *out);
void loki_sink_free(struct output *out);

#endif
