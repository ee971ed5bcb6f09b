/*
 * The output's private state, shared by its files:
 *   output.c       — the lanes' consumer threads, the dispatcher and lifecycle;
 *   stdout_sink.c  — formatting and writing lines to standard output;
 *   loki_sink.c    — batching through the aggregator and the sender thread;
 *   archive_sink.c — objects per container, built in spool files, uploaded
 *                    by their own thread (internal/archive).
 *
 * A lane is one output (stdout, Loki, archive) with its own consumer thread,
 * its own batching, retries and back-off. Alone, a lane reads the agent's
 * ring itself. With several, the dispatcher copies each chunk into every
 * lane's own queue (a ring of buffer.max_bytes), so a lane that fails only
 * stops the others once its queue is full: the files are then the buffer
 * again. Each lane acknowledges in its own slot of the source
 * (source_ack()); a file's position is the minimum over the lanes.
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

struct output_lane;

/* One output's operations, chosen once at start (the caller never tests
 * which one it holds). deliver() takes a chunk, whose reference it owns
 * from then on; idle() runs when the lane's ring has nothing right now
 * (closed: nothing will come again) and flushes what may not wait;
 * wait_ms() is how long the lane may sleep for the next chunk; finish() is
 * the last call of a lane whose loop ended well. false from deliver(),
 * idle() or finish(): shutdown gave up. */
struct output_lane_ops {
    const char *name;
    int (*init)(struct output_lane *out, char *err, size_t errlen);
    int (*start)(struct output_lane *out, char *err, size_t errlen); /* NULL: nothing to start */
    bool (*deliver)(struct output_lane *out, const struct source_chunk *chunk);
    bool (*idle)(struct output_lane *out, bool closed);
    int (*wait_ms)(struct output_lane *out);
    bool (*finish)(struct output_lane *out);
    void (*free)(struct output_lane *out);
};

extern const struct output_lane_ops output_stdout_ops, output_loki_ops, output_archive_ops;

struct archive_sink;

struct output_lane {
    const struct config *cfg;
    const struct output_lane_ops *ops;
    unsigned index;  /* its acknowledgement slot in every source */
    struct ring *ring; /* the agent's ring when alone, else its own queue */
    bool owns_ring;
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

    /* archive (archive_sink.c) */
    struct archive_sink *archive;
};

#define OUTPUT_MAX_LANES 3

struct output {
    const struct config *cfg;
    struct ring *ring; /* the agent's ring */
    struct output_lane *lanes[OUTPUT_MAX_LANES];
    unsigned nlanes;
    /* With several lanes: the thread copying chunks from `ring` into each
     * lane's queue. */
    pthread_t dispatcher;
    bool dispatcher_started;
    atomic_bool finishing;
    _Atomic int64_t deadline_ms;
};

bool output_giving_up(struct output_lane *out);
/* Waits on `cond` (lock held) at most 200 ms, then beats the output thread's
 * heartbeat: callers loop on their own condition and on output_giving_up(),
 * and a long wait is never taken for a hung thread. */
void output_wait_beating(pthread_cond_t *cond, pthread_mutex_t *lock);
/* Records in each source's slot for this lane that the lines before
 * end_offset are delivered, and drops the acks' references. */
void output_ack(struct output_lane *out, struct aggregator_ack *acks, size_t n);
void output_forget(struct aggregator_ack *acks, size_t n);

int stdout_sink_init(struct output_lane *out, char *err, size_t errlen);
bool stdout_sink_deliver(struct output_lane *out, const struct source_chunk *chunk);
bool stdout_sink_flush(struct output_lane *out);
bool stdout_sink_idle(struct output_lane *out);
void stdout_sink_free(struct output_lane *out);

int loki_sink_init(struct output_lane *out, char *err, size_t errlen);
int loki_sink_start(struct output_lane *out, char *err, size_t errlen);
/* Hands the current batch to the sender (waiting while it is busy). */
bool loki_sink_handoff(struct output_lane *out);
bool loki_sink_deliver(struct output_lane *out, const struct source_chunk *chunk);
/* Waits until the sender has finished its batch (or the deadline passed). */
bool loki_sink_drain(struct output_lane *out);
void loki_sink_free(struct output_lane *out);

#endif
