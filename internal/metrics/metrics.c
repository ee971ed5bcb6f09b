#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

struct metrics metrics;

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
    counter(&w, "loglet_files_opened_total", "Log files opened.", &metrics.files_opened);
    counter(&w, "loglet_files_closed_total", "Log files closed.", &metrics.files_closed);
    counter(&w, "loglet_files_excluded_total", "Files not opened because of exclusions.", &metrics.files_excluded);
    counter(&w, "loglet_file_errors_total", "Errors opening or reading log files.", &metrics.file_errors);
    counter(&w, "loglet_rotations_total", "File rotations seen.", &metrics.rotations);
    counter(&w, "loglet_truncations_total", "Files truncated in place (copytruncate).", &metrics.truncations);
    counter(&w, "loglet_inotify_fallbacks_total", "Times inotify could not be used and polling took over.", &metrics.inotify_fallbacks);
    counter(&w, "loglet_positions_writes_total", "Times the positions file was written.", &metrics.positions_writes);
    counter(&w, "loglet_positions_errors_total", "Failed writes of the positions file.", &metrics.positions_errors);
    gauge(&w, "loglet_files_tailed", "Files currently open.", &metrics.files_tailed);
    gauge(&w, "loglet_ring_used_bytes", "Bytes held in the ring buffer.", &metrics.ring_used_bytes);
    gauge(&w, "loglet_ring_capacity_bytes", "Capacity of the ring buffer.", &metrics.ring_capacity_bytes);
    return w.len;
}
