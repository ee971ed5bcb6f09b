/*
 * metrics — the agent's counters and gauges, and the liveness heartbeats.
 *
 * Contract:
 *  - One process-wide set (`metrics`), updated with relaxed atomics from any
 *    thread. Hot loops add their counts once per buffer or batch, not per
 *    line, so the cost is a handful of atomic adds per 256 KiB.
 *  - No per-file or per-pod labels: cardinality is fixed, so /metrics stays
 *    small however many pods a node runs.
 *  - metrics_render() writes the Prometheus text exposition format (0.0.4).
 *  - Heartbeats: each long-running thread calls metrics_beat() at least once
 *    per second of its loop, including while it waits; metrics_stalled()
 *    names a thread whose last beat is older than the given age.
 */
#ifndef LOGLET_METRICS_H
#define LOGLET_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Distinct HTTP statuses tracked; more (unlikely) are counted as "other". */
#define METRICS_MAX_STATUS_CODES 16

/* API server answers counted by loglet_kube_api_errors_total{code}. */
enum metrics_kube_error { METRICS_KUBE_NO_ANSWER, METRICS_KUBE_401, METRICS_KUBE_403, METRICS_KUBE_410,
                          METRICS_KUBE_5XX, METRICS_KUBE_OTHER, METRICS_KUBE_GARBAGE, METRICS_KUBE_ERRORS };

enum metrics_thread { METRICS_THREAD_COLLECTOR, METRICS_THREAD_OUTPUT, METRICS_THREAD_COUNT };

struct metrics {
    _Atomic uint64_t lines_read;
    _Atomic uint64_t bytes_read;
    _Atomic uint64_t lines_malformed;
    _Atomic uint64_t lines_split;
    _Atomic uint64_t lines_utf8_fixed;
    _Atomic uint64_t lines_flushed_incomplete;
    _Atomic uint64_t lines_excluded;
    _Atomic uint64_t lines_sent;
    _Atomic uint64_t bytes_sent;
    _Atomic uint64_t bytes_sent_compressed;   /* Loki request bodies */
    _Atomic uint64_t bytes_sent_uncompressed; /* the same, before snappy */
    _Atomic uint64_t lines_dropped_rejected;  /* Loki answered 400/422 */
    _Atomic uint64_t lines_dropped_retries;   /* output.loki.max_retries ran out */
    _Atomic uint64_t lines_dropped_too_large; /* Loki answered 413 to a single entry */
    _Atomic uint64_t push_retries;
    _Atomic uint64_t push_auth_failures; /* pushes answered 401/403 (retried) */
    _Atomic uint64_t push_splits;        /* bodies split in two after a 413 */
    /* Push answers by HTTP status code (0: no answer); see metrics_count_status(). */
    _Atomic long push_status_codes[METRICS_MAX_STATUS_CODES];
    _Atomic uint64_t push_status_counts[METRICS_MAX_STATUS_CODES];
    _Atomic int64_t last_push_ok_ms;
    _Atomic int64_t push_failing_since_ms; /* 0 while pushes succeed */
    _Atomic int64_t oldest_unacked_ns;     /* timestamp of the oldest line being pushed, 0 when none */
    _Atomic uint64_t files_opened;
    _Atomic uint64_t files_closed;
    _Atomic uint64_t files_excluded;
    _Atomic uint64_t file_errors;
    _Atomic uint64_t rotations;
    _Atomic uint64_t truncations;
    _Atomic uint64_t inotify_fallbacks;
    _Atomic uint64_t inotify_overflows;
    _Atomic uint64_t lines_lost_released; /* held files released unread (collection.max_held_*) */
    _Atomic uint64_t bytes_lost_released;
    _Atomic uint64_t files_missed;        /* a saved position's file deleted while the agent was down */
    _Atomic uint64_t files_recovered;     /* read from the spool: deleted while held, then the agent restarted */
    _Atomic int64_t spooled_files;        /* open files with a link in the spool */
    _Atomic int64_t held_files;           /* rotated or deleted files kept open, not read to their end */
    _Atomic int64_t held_bytes;
    _Atomic int64_t collector_paused;     /* 1 while reading waits for room in the ring */
    _Atomic uint64_t positions_writes;
    _Atomic uint64_t positions_errors;
    _Atomic int64_t files_tailed;
    _Atomic int64_t ring_used_bytes;
    _Atomic int64_t ring_capacity_bytes;
    _Atomic int64_t batch_streams; /* streams (label sets) in the last batch: what pipeline labels add shows here */
    _Atomic int64_t last_beat_ms[METRICS_THREAD_COUNT];
    /* Kubernetes metadata (internal/kube, internal/metadata). */
    _Atomic uint64_t kube_watch_restarts;
    _Atomic uint64_t kube_relists;
    _Atomic uint64_t kube_api_errors[METRICS_KUBE_ERRORS];
    _Atomic int64_t kube_pods_cached;
    _Atomic int64_t kube_last_update_ms; /* 0: never heard from the API server */
    _Atomic uint64_t files_without_metadata;
    /* The archive output (output/archive_sink.c). */
    _Atomic uint64_t archive_objects;        /* objects stored */
    _Atomic uint64_t archive_lines;          /* lines in them */
    _Atomic uint64_t archive_bytes;          /* their bytes, gzipped */
    _Atomic uint64_t archive_bytes_raw;      /* their record bytes before gzip */
    _Atomic uint64_t archive_upload_failures; /* attempts that failed (retried) */
    _Atomic int64_t archive_spool_bytes;      /* objects being built or waiting to go up */
    _Atomic int64_t archive_failing_since_ms; /* 0 while uploads succeed */
};

extern struct metrics metrics;

#define metrics_add(field, n) atomic_fetch_add_explicit(&metrics.field, (n), memory_order_relaxed)
#define metrics_set(field, v) atomic_store_explicit(&metrics.field, (v), memory_order_relaxed)

int64_t metrics_now_ms(void); /* CLOCK_MONOTONIC */
/* Histograms: push latency and body size, batch entries. */
void metrics_observe_push(double seconds, size_t body_bytes);
void metrics_observe_batch(size_t entries, size_t raw_bytes);
/* Counts one push answer (status 0: no HTTP answer). One thread calls it. */
void metrics_count_status(long status);
void metrics_beat(enum metrics_thread thread);
/* Returns the name of a thread silent for longer than max_age_ms, or NULL. */
const char *metrics_stalled(int64_t max_age_ms);
size_t metrics_render(char *buf, size_t cap);

#endif
