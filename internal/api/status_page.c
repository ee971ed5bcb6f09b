/*
 * status_page — the HTML status page (see status_page.h).
 */
#include "api/status_page.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loki/loki.h"
#include "metrics/metrics.h"

#define STATUS_REFRESH_S 5
#define STATUS_MAX_TARGETS 4096

struct page {
    char *buf;
    size_t len, cap;
    bool full;
};

static void put(struct page *p, const char *s, size_t n)
{
    if (p->full || p->len + n + 1 > p->cap) {
        p->full = true;
        return;
    }
    memcpy(p->buf + p->len, s, n);
    p->len += n;
    p->buf[p->len] = '\0';
}

static void raw(struct page *p, const char *s) { put(p, s, strlen(s)); }

static void fmt(struct page *p, const char *f, ...) __attribute__((format(printf, 2, 3)));
static void fmt(struct page *p, const char *f, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(tmp, sizeof tmp, f, ap);
    va_end(ap);
    if (n > 0) put(p, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Text into HTML element content or a quoted attribute. */
static void esc(struct page *p, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': raw(p, "&lt;"); break;
        case '>': raw(p, "&gt;"); break;
        case '&': raw(p, "&amp;"); break;
        case '"': raw(p, "&quot;"); break;
        case '\'': raw(p, "&#39;"); break;
        default:
            if ((unsigned char)*s < 0x20) raw(p, " ");
            else put(p, s, 1);
        }
    }
}

static void row(struct page *p, const char *k, const char *v)
{
    raw(p, "<tr><th>");
    esc(p, k);
    raw(p, "</th><td>");
    esc(p, v);
    raw(p, "</td></tr>\n");
}

static void duration(char *out, size_t n, int64_t s)
{
    if (s >= 86400) snprintf(out, n, "%lldd %lldh %lldm", (long long)s / 86400, (long long)s % 86400 / 3600, (long long)s % 3600 / 60);
    else if (s >= 3600) snprintf(out, n, "%lldh %lldm %llds", (long long)s / 3600, (long long)s % 3600 / 60, (long long)s % 60);
    else snprintf(out, n, "%lldm %llds", (long long)s / 60, (long long)s % 60);
}

static void summary(struct page *p, const struct api_status_env *env, int64_t now)
{
    char v[256];
    raw(p, "<h2>Agent</h2>\n<table class=kv>\n");
    row(p, "version", LOGLET_VERSION);
    duration(v, sizeof v, (now - env->started_ms) / 1000);
    row(p, "uptime", v);
    const char *url = env->cfg->output.loki.url;
    char shown[1024];
    loki_url_redacted(url, shown, sizeof shown);
    row(p, "output", url[0] ? shown : "stdout");
    int64_t failing = atomic_load(&metrics.push_failing_since_ms);
    if (!url[0]) snprintf(v, sizeof v, "writing to standard output");
    else if (failing) snprintf(v, sizeof v, "pushes failing for %lld s (retrying)", (long long)(now - failing) / 1000);
    else if (atomic_load(&metrics.last_push_ok_ms)) snprintf(v, sizeof v, "delivering; last push OK %lld s ago",
                                                              (long long)(now - atomic_load(&metrics.last_push_ok_ms)) / 1000);
    else snprintf(v, sizeof v, "no push yet");
    row(p, "output state", v);
    /* The last push that did not succeed, as the metrics know it: its status. */
    long last_bad = -1;
    uint64_t bad_count = 0;
    for (int i = 0; i < METRICS_MAX_STATUS_CODES; i++) {
        long code = atomic_load(&metrics.push_status_codes[i]);
        uint64_t n = atomic_load(&metrics.push_status_counts[i]);
        if (n && (code < 200 || code > 299)) last_bad = code, bad_count += n;
    }
    if (last_bad < 0) snprintf(v, sizeof v, "none");
    else if (last_bad == 0) snprintf(v, sizeof v, "no answer (connection or timeout); %llu failed pushes in all", (unsigned long long)bad_count);
    else snprintf(v, sizeof v, "HTTP %ld; %llu failed pushes in all", last_bad, (unsigned long long)bad_count);
    row(p, "last push error", v);
    snprintf(v, sizeof v, "%lld of %lld bytes", (long long)atomic_load(&metrics.ring_used_bytes),
             (long long)atomic_load(&metrics.ring_capacity_bytes));
    row(p, "ring use", v);
    snprintf(v, sizeof v, "%lld files, %lld bytes", (long long)atomic_load(&metrics.held_files),
             (long long)atomic_load(&metrics.held_bytes));
    row(p, "held (rotated or deleted, unread)", v);
    snprintf(v, sizeof v, "%llu read, %llu sent", (unsigned long long)atomic_load(&metrics.lines_read),
             (unsigned long long)atomic_load(&metrics.lines_sent));
    row(p, "lines", v);
    snprintf(v, sizeof v, "%zu", env->hub ? livetail_subscribers(env->hub) : (size_t)0);
    row(p, "live-tail followers", v);
    raw(p, "</table>\n<h2>Pushes by status</h2>\n<table><tr><th>status</th><th>pushes</th></tr>\n");
    bool any = false;
    for (int i = 0; i < METRICS_MAX_STATUS_CODES; i++) {
        uint64_t n = atomic_load(&metrics.push_status_counts[i]);
        if (!n) continue;
        long code = atomic_load(&metrics.push_status_codes[i]);
        if (code) fmt(p, "<tr><td>%ld</td><td class=n>%llu</td></tr>\n", code, (unsigned long long)n);
        else fmt(p, "<tr><td>no answer</td><td class=n>%llu</td></tr>\n", (unsigned long long)n);
        any = true;
    }
    if (!any) raw(p, "<tr><td colspan=2>none yet</td></tr>\n");
    raw(p, "</table>\n");
}

static void targets(struct page *p, const struct api_status_env *env)
{
    size_t n = collector_targets(env->collector, NULL, 0);
    if (n > STATUS_MAX_TARGETS) n = STATUS_MAX_TARGETS;
    struct collector_target *t = calloc(n ? n : 1, sizeof *t);
    if (!t) {
        raw(p, "<p>out of memory listing the files</p>\n");
        return;
    }
    size_t now_n = collector_targets(env->collector, t, n); /* it may have shrunk meanwhile */
    if (now_n < n) n = now_n;
    fmt(p, "<h2>Tailed files (%zu)</h2>\n", n);
    raw(p, "<table id=targets><tr><th>namespace/pod/container</th><th>path</th><th>size</th><th>read offset</th>"
           "<th>acknowledged offset</th><th>lag bytes</th><th>lag s</th><th>format</th><th>watcher</th>"
           "<th>state</th><th>last error</th></tr>\n");
    size_t shown = 0;
    for (size_t i = 0; i < n; i++) {
        size_t before = p->len;
        uint64_t lag = t[i].size > t[i].acked_offset ? t[i].size - t[i].acked_offset : 0;
        raw(p, "<tr><td>");
        esc(p, t[i].namespace_);
        raw(p, "/");
        esc(p, t[i].pod);
        raw(p, "/");
        esc(p, t[i].container);
        raw(p, "</td><td class=path>");
        esc(p, t[i].real_path[0] ? t[i].real_path : t[i].path);
        fmt(p, "</td><td class=n>%llu</td><td class=n>%llu</td><td class=n>%llu</td><td class=n>%llu</td>"
               "<td class=n>%lld</td><td>%s</td><td>%s</td><td>%s</td><td>",
            (unsigned long long)t[i].size, (unsigned long long)t[i].read_offset,
            (unsigned long long)t[i].acked_offset, (unsigned long long)lag, (long long)t[i].lag_seconds,
            t[i].format, t[i].watcher, t[i].state);
        esc(p, t[i].last_error);
        raw(p, "</td></tr>\n");
        /* Leave room for the note and the closing tags. */
        if (p->full || p->cap - p->len < 1024) {
            p->len = before;
            p->full = false;
            p->buf[p->len] = '\0';
            break;
        }
        shown++;
    }
    raw(p, "</table>\n");
    if (shown < n) fmt(p, "<p>%zu more files not shown (page size limit).</p>\n", n - shown);
    free(t);
}

size_t api_status_render(const struct api_status_env *env, char *buf, size_t cap)
{
    struct page p = {buf, 0, cap, false};
    if (cap == 0) return 0;
    buf[0] = '\0';
    int64_t now = metrics_now_ms();
    fmt(&p,
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>\n"
        "<meta http-equiv=refresh content=%d>\n"
        "<meta name=viewport content=\"width=device-width, initial-scale=1\">\n"
        "<title>loglet status</title>\n",
        STATUS_REFRESH_S);
    raw(&p, "<style>body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
            "h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.4em}"
            "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
            "th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}"
            "td.path{font-family:monospace;font-size:12px;word-break:break-all}"
            "table.kv th{width:16em}</style>\n</head><body>\n<h1>loglet status</h1>\n");
    fmt(&p, "<p>This page refreshes every %d s.</p>\n", STATUS_REFRESH_S);
    summary(&p, env, now);
    targets(&p, env);
    raw(&p, "</body></html>\n");
    return p.len;
}
