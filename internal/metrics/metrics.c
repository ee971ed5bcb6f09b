#include "metrics.h"
#include "pipeline/pipeline.h"

#include <stdarg.h>
#include <stdio.h>
#include <dirent.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct metrics metrics;

/* A fixed-bucket histogram, updated with relaxed atomics (the sum in
 * micro-units so it stays an integer). */
#define HIST_MAX_BUCKETS 12
struct histogram {
    const double *bounds;
    int nbounds;
    _Atomic uint64_t counts[HIST_MAX_BUCKETS + 1];
    _Atomic uint64_t sum_micro;
};

static const double push_seconds_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
static const double batch_entries_bounds[] = {1, 10, 100, 1000, 5000, 10000, 50000, 100000};
static struct histogram push_seconds = {push_seconds_bounds, 11, {0}, 0};
static struct histogram batch_entries = {batch_entries_bounds, 8, {0}, 0};

static void observe(struct histogram *h, double value)
{
    int i = 0;
    while (i < h->nbounds && value > h->bounds[i]) i++;
    atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_micro, (uint64_t)(value * 1e6), memory_order_relaxed);
}

void metrics_observe_push(double seconds, size_t body_bytes)
{
    (void)body_bytes;
    observe(&push_seconds, seconds);
}

void metrics_count_status(long status)
{
    /* Slots are claimed by the sender thread only, so a plain scan is safe;
     * readers may see a slot's code before its first count, which is fine. */
    int last = METRICS_MAX_STATUS_CODES - 1;
    for (int i = 0; i < last; i++) {
        long code = atomic_load(&metrics.push_status_codes[i]);
        if (atomic_load(&metrics.push_status_counts[i]) && code == status) {
            atomic_fetch_add(&metrics.push_status_counts[i], 1);
            return;
        }
        if (!atomic_load(&metrics.push_status_counts[i])) {
            atomic_store(&metrics.push_status_codes[i], status);
            atomic_fetch_add(&metrics.push_status_counts[i], 1);
            return;
        }
    }
    atomic_store(&metrics.push_status_codes[last], -1);
    atomic_fetch_add(&metrics.push_status_counts[last], 1);
}

void metrics_observe_batch(size_t entries, size_t raw_bytes)
{
    (void)raw_bytes;
    observe(&batch_entries, (double)entries);
}


static const char *const thread_names[METRICS_THREAD_COUNT] = {"collector", "output"};

int64_t metrics_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void metrics_beat(enum metrics_thread thread)
{
    atomic_store_explicit(&metrics.last_beat_ms[thread], metrics_now_ms(), memory_order_relaxed);
}

const char *metrics_stalled(int64_t max_age_ms)
{
    int64_t now = metrics_now_ms();
    for (int i = 0; i < METRICS_THREAD_COUNT; i++) {
        int64_t beat = atomic_load_explicit(&metrics.last_beat_ms[i], memory_order_relaxed);
        if (now - beat > max_age_ms) return thread_names[i];
    }
    return NULL;
}

struct writer {
    char *buf;
    size_t cap;
    size_t len;
};

static void emit(struct writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(struct writer *w, const char *fmt, ...)
{
    if (w->len >= w->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->buf + w->len, w->cap - w->len, fmt, ap);
    va_end(ap);
    if (n > 0) w->len += (size_t)n < w->cap - w->len ? (size_t)n : w->cap - w->len - 1;
}

static void emit_histogram(struct writer *w, const char *name, const char *help, struct histogram *h)
{
    emit(w, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t total = 0;
    for (int i = 0; i <= h->nbounds; i++) {
        total += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
        if (i < h->nbounds) emit(w, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], (unsigned long long)total);
        else emit(w, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)total);
    }
    emit(w, "%s_sum %.6f\n%s_count %llu\n", name,
         (double)atomic_load_explicit(&h->sum_micro, memory_order_relaxed) / 1e6, name, (unsigned long long)total);
}

static void counter(struct writer *w, const char *name, const char *help, _Atomic uint64_t *value)
{
    emit(w, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
         (unsigned long long)atomic_load_explicit(value, memory_order_relaxed));
}

static void gauge(struct writer *w, const char *name, const char *help, _Atomic int64_t *value)
{
    emit(w, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name,
         (long long)atomic_load_explicit(value, memory_order_relaxed));
}

/* Read from /proc at scrape time: nothing on the hot path. */
static void process_metrics(struct writer *w)
{
    long rss_pages = 0, ticks = sysconf(_SC_CLK_TCK);
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        long size;
        if (fscanf(f, "%ld %ld", &size, &rss_pages) != 2) rss_pages = 0;
        fclose(f);
    }
    unsigned long utime = 0, stime = 0;
    f = fopen("/proc/self/stat", "r");
    if (f) {
        char line[1024];
        if (fgets(line, sizeof line, f)) {
            const char *p = strrchr(line, ')'); /* the command name may hold spaces */
            if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
                utime = stime = 0;
        }
        fclose(f);
    }
    long fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        for (struct dirent *e; (e = readdir(d));) fds += e->d_name[0] != '.';
        closedir(d);
        fds--; /* the directory stream itself */
    }
    emit(w, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\n"
            "process_resident_memory_bytes %ld\n", rss_pages * sysconf(_SC_PAGESIZE));
    emit(w, "# HELP process_cpu_seconds_total User and system CPU time in seconds.\n# TYPE process_cpu_seconds_total counter\n"
            "process_cpu_seconds_total %.2f\n", ticks > 0 ? (double)(utime + stime) / (double)ticks : 0.0);
    emit(w, "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds %ld\n", fds);
    int64_t oldest = atomic_load(&metrics.oldest_unacked_ns);
    double lag = 0;
    if (oldest) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        lag = ((double)now.tv_sec * 1e9 + (double)now.tv_nsec - (double)oldest) / 1e9;
        if (lag < 0) lag = 0;
    }
    emit(w, "# HELP loglet_lag_seconds Age of the oldest line being pushed (0 when nothing waits).\n"
            "# TYPE loglet_lag_seconds gauge\nloglet_lag_seconds %.3f\n", lag);
    int64_t since = atomic_load(&metrics.push_failing_since_ms);
    emit(w, "# HELP loglet_push_failing_seconds How long pushes have failed without a break.\n"
            "# TYPE loglet_push_failing_seconds gauge\nloglet_push_failing_seconds %.3f\n",
         since ? (double)(metrics_now_ms() - since) / 1000.0 : 0.0);
}

static void kube_metrics(struct writer *w)
{
    static const char *const codes[METRICS_KUBE_ERRORS] = {"none", "401", "403", "410", "5xx", "other", "garbage"};
    counter(w, "loglet_kube_watch_restarts_total", "Watches of the API server started again after their stream ended.",
            &metrics.kube_watch_restarts);
    counter(w, "loglet_kube_relists_total", "Full lists of the node's pods (or namespaces) from the API server.",
            &metrics.kube_relists);
    emit(w, "# HELP loglet_kube_api_errors_total API server requests that failed, by status (none: no answer, "
            "garbage: an answer that was not what the API sends).\n# TYPE loglet_kube_api_errors_total counter\n");
    for (int i = 0; i < METRICS_KUBE_ERRORS; i++)
        emit(w, "loglet_kube_api_errors_total{code=\"%s\"} %llu\n", codes[i],
             (unsigned long long)atomic_load(&metrics.kube_api_errors[i]));
    gauge(w, "loglet_kube_pods_cached", "Pods of this node in the metadata cache (deleted ones kept while their files drain).",
          &metrics.kube_pods_cached);
    int64_t last = atomic_load(&metrics.kube_last_update_ms);
    emit(w, "# HELP loglet_kube_metadata_age_seconds Time since the API server last sent a list, event or bookmark "
            "(-1: never).\n# TYPE loglet_kube_metadata_age_seconds gauge\nloglet_kube_metadata_age_seconds %.3f\n",
         last ? (double)(metrics_now_ms() - last) / 1000.0 : -1.0);
    counter(w, "loglet_files_without_metadata_total", "Files sent with path labels only: their pod was not known "
            "within kubernetes.wait_for_metadata, or the API server could not be reached.", &metrics.files_without_metadata);
}

size_t metrics_render(char *buf, size_t cap)
{
    struct writer w = {buf, cap, 0};
    if (cap == 0) return 0;
    buf[0] = '\0';
    emit(&w, "# HELP loglet_build_info Build information.\n# TYPE loglet_build_info gauge\n"
             "loglet_build_info{version=\"%s\"} 1\n", LOGLET_VERSION);
    counter(&w, "loglet_lines_read_total", "Log lines read from files.", &metrics.lines_read);
    counter(&w, "loglet_bytes_read_total", "Bytes read from log files.", &metrics.bytes_read);
    counter(&w, "loglet_lines_malformed_total", "Lines not in the file's format, shipped as-is.", &metrics.lines_malformed);
    counter(&w, "loglet_lines_split_total", "Pieces of lines longer than max_line_bytes.", &metrics.lines_split);
    counter(&w, "loglet_lines_utf8_fixed_total", "Lines whose invalid UTF-8 was replaced.", &metrics.lines_utf8_fixed);
    counter(&w, "loglet_lines_flushed_incomplete_total", "Lines emitted without a newline after the flush timeout.", &metrics.lines_flushed_incomplete);
    counter(&w, "loglet_lines_excluded_total", "Lines dropped by the include/exclude line filters.", &metrics.lines_excluded);
    counter(&w, "loglet_lines_sent_total", "Lines delivered to the output.", &metrics.lines_sent);
    counter(&w, "loglet_bytes_sent_total", "Line bytes delivered to the output.", &metrics.bytes_sent);
    counter(&w, "loglet_bytes_sent_compressed_total", "Loki request body bytes sent (snappy).", &metrics.bytes_sent_compressed);
    counter(&w, "loglet_bytes_sent_uncompressed_total", "Loki request bytes before compression.", &metrics.bytes_sent_uncompressed);
    emit(&w, "# HELP loglet_lines_dropped_total Lines given up on, by reason.\n# TYPE loglet_lines_dropped_total counter\n"
             "loglet_lines_dropped_total{reason=\"rejected\"} %llu\nloglet_lines_dropped_total{reason=\"max_retries\"} %llu\n"
             "loglet_lines_dropped_total{reason=\"too_large\"} %llu\n",
         (unsigned long long)atomic_load(&metrics.lines_dropped_rejected),
         (unsigned long long)atomic_load(&metrics.lines_dropped_retries),
         (unsigned long long)atomic_load(&metrics.lines_dropped_too_large));
    counter(&w, "loglet_push_retries_total", "Pushes retried after 429, 5xx, 401/403, 404 and the like, or no answer.",
            &metrics.push_retries);
    counter(&w, "loglet_push_auth_failures_total", "Pushes answered 401 or 403 (retried after re-reading the credential files).",
            &metrics.push_auth_failures);
    counter(&w, "loglet_push_splits_total", "Push bodies split in two after a 413.", &metrics.push_splits);
    emit(&w, "# HELP loglet_push_requests_total Push requests by HTTP status (none: no answer).\n"
             "# TYPE loglet_push_requests_total counter\n");
    for (int i = 0; i < METRICS_MAX_STATUS_CODES; i++) {
        uint64_t n = atomic_load(&metrics.push_status_counts[i]);
        long code = atomic_load(&metrics.push_status_codes[i]);
        if (!n) continue;
        if (code == 0) emit(&w, "loglet_push_requests_total{status=\"none\"} %llu\n", (unsigned long long)n);
        else if (code < 0) emit(&w, "loglet_push_requests_total{status=\"other\"} %llu\n", (unsigned long long)n);
        else emit(&w, "loglet_push_requests_total{status=\"%ld\"} %llu\n", code, (unsigned long long)n);
    }
    emit_histogram(&w, "loglet_push_duration_seconds", "Push request latency.", &push_seconds);
    emit_histogram(&w, "loglet_batch_entries", "Entries per pushed batch.", &batch_entries);
    counter(&w, "loglet_files_opened_total", "Log files opened.", &metrics.files_opened);
    counter(&w, "loglet_files_closed_total", "Log files closed.", &metrics.files_closed);
    counter(&w, "loglet_files_excluded_total", "Files not opened because of exclusions.", &metrics.files_excluded);
    counter(&w, "loglet_file_errors_total", "Errors opening or reading log files.", &metrics.file_errors);
    counter(&w, "loglet_rotations_total", "File rotations seen.", &metrics.rotations);
    counter(&w, "loglet_truncations_total", "Files truncated in place (copytruncate).", &metrics.truncations);
    counter(&w, "loglet_inotify_fallbacks_total", "Times inotify could not be used and polling took over.", &metrics.inotify_fallbacks);
    counter(&w, "loglet_inotify_overflows_total", "inotify queue overflows (each followed by a full rescan).", &metrics.inotify_overflows);
    emit(&w, "# HELP loglet_lines_lost_total Lines never read, by reason (released: a held file over collection.max_held_*).\n"
             "# TYPE loglet_lines_lost_total counter\nloglet_lines_lost_total{reason=\"released\"} %llu\n",
         (unsigned long long)atomic_load(&metrics.lines_lost_released));
    emit(&w, "# HELP loglet_bytes_lost_total Bytes never read, by reason.\n"
             "# TYPE loglet_bytes_lost_total counter\nloglet_bytes_lost_total{reason=\"released\"} %llu\n",
         (unsigned long long)atomic_load(&metrics.bytes_lost_released));
    counter(&w, "loglet_files_missed_total", "Files a saved position named that the kubelet deleted while loglet was down.", &metrics.files_missed);
    counter(&w, "loglet_files_recovered_total", "Files the kubelet deleted while loglet held them, read from the spool after a restart.", &metrics.files_recovered);
    gauge(&w, "loglet_spooled_files", "Open files with a hard link in collection.spool_dir.", &metrics.spooled_files);
    gauge(&w, "loglet_held_files", "Files the kubelet deleted that only loglet keeps (open or in the spool) until read (the files are the buffer).", &metrics.held_files);
    gauge(&w, "loglet_held_bytes", "Unread bytes of the held files (collection.max_held_bytes bounds it).", &metrics.held_bytes);
    gauge(&w, "loglet_collector_paused", "1 while reading waits for room in the ring (the output lags).", &metrics.collector_paused);
    counter(&w, "loglet_archive_objects_total", "Archive objects stored.", &metrics.archive_objects);
    counter(&w, "loglet_archive_lines_total", "Lines in the archive objects stored.", &metrics.archive_lines);
    counter(&w, "loglet_archive_bytes_total", "Bytes of the archive objects stored (gzip).", &metrics.archive_bytes);
    counter(&w, "loglet_archive_raw_bytes_total", "Record bytes of the archive objects stored, before gzip.",
            &metrics.archive_bytes_raw);
    counter(&w, "loglet_archive_upload_failures_total", "Archive uploads that failed and were retried.",
            &metrics.archive_upload_failures);
    emit(&w, "# HELP loglet_archive_spool_bytes Bytes of archive objects being built or waiting to be stored.\n"
             "# TYPE loglet_archive_spool_bytes gauge\nloglet_archive_spool_bytes %lld\n",
         (long long)atomic_load(&metrics.archive_spool_bytes));
    counter(&w, "loglet_positions_writes_total", "Times the positions file was written.", &metrics.positions_writes);
    counter(&w, "loglet_positions_errors_total", "Failed writes of the positions file.", &metrics.positions_errors);
    gauge(&w, "loglet_files_tailed", "Files currently open.", &metrics.files_tailed);
    gauge(&w, "loglet_ring_used_bytes", "Bytes held in the ring buffer.", &metrics.ring_used_bytes);
    gauge(&w, "loglet_ring_capacity_bytes", "Capacity of the ring buffer.", &metrics.ring_capacity_bytes);
    kube_metrics(&w);
    gauge(&w, "loglet_batch_streams", "Streams (distinct label sets) in the last batch sealed for Loki.", &metrics.batch_streams);
    process_metrics(&w);
    if (w.len < w.cap) w.len += pipeline_render_metrics(w.buf + w.len, w.cap - w.len);
    return w.len;
}
