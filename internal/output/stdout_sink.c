/* Standard output: a chunk is acknowledged once its lines were written. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log/log.h"
#include "metrics/metrics.h"
#include "output_internal.h"

static const char *const stream_names[] = {"stdout", "stderr", "unknown"};

size_t output_stdout_max(size_t content_len)
{
    /* JSON escapes a byte into at most 6 (\u00XX); metadata is bounded by the
     * fixed-size fields of parser_path_meta plus the path. */
    return content_len * 6 + 4096 + 2 * 4096 + 6 * 8256; /* and a pipeline's labels and metadata */
}

static size_t put(char *dst, const char *s, size_t n)
{
    memcpy(dst, s, n);
    return n;
}

static size_t put_json_string(char *dst, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    dst[o++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f) {
            dst[o++] = (char)ch;
            continue;
        }
        dst[o++] = '\\';
        switch (ch) {
        case '"': dst[o++] = '"'; break;
        case '\\': dst[o++] = '\\'; break;
        case '\n': dst[o++] = 'n'; break;
        case '\r': dst[o++] = 'r'; break;
        case '\t': dst[o++] = 't'; break;
        default:
            dst[o++] = 'u';
            dst[o++] = '0';
            dst[o++] = '0';
            dst[o++] = hex[ch >> 4];
            dst[o++] = hex[ch & 15];
        }
    }
    dst[o++] = '"';
    return o;
}

size_t output_format_text(const struct source *src, const struct source_record *rec, char *dst)
{
    size_t o = parser_format_rfc3339(rec->ts_ns, dst);
    dst[o++] = ' ';
    const struct parser_path_meta *m = &src->meta;
    if (m->namespace_[0] && m->pod[0] && m->container[0])
        o += (size_t)sprintf(dst + o, "%s/%s/%s", m->namespace_, m->pod, m->container);
    else
        o += put(dst + o, src->path, strnlen(src->path, 4000));
    dst[o++] = ' ';
    const char *stream = stream_names[rec->stream < 3 ? rec->stream : 2];
    o += put(dst + o, stream, strlen(stream));
    dst[o++] = ' ';
    const char *labels, *meta;
    size_t labels_len, meta_len;
    source_record_extras(rec, &labels, &labels_len, &meta, &meta_len);
    if (labels_len) { /* what a pipeline added to the stream's labels */
        dst[o++] = '{';
        o += put(dst + o, labels, labels_len);
        o += put(dst + o, "} ", 2);
    }
    o += put(dst + o, source_record_content(rec), rec->len);
    dst[o++] = '\n';
    return o;
}

size_t output_format_json(const struct source *src, const struct source_record *rec, char *dst)
{
    const struct parser_path_meta *m = &src->meta;
    size_t o = put(dst, "{\"time\":\"", 9);
    o += parser_format_rfc3339(rec->ts_ns, dst + o);
    o += put(dst + o, "\",\"namespace\":", 14);
    o += put_json_string(dst + o, m->namespace_, strlen(m->namespace_));
    o += put(dst + o, ",\"pod\":", 7);
    o += put_json_string(dst + o, m->pod, strlen(m->pod));
    o += put(dst + o, ",\"container\":", 13);
    o += put_json_string(dst + o, m->container, strlen(m->container));
    o += put(dst + o, ",\"stream\":\"", 11);
    const char *stream = stream_names[rec->stream < 3 ? rec->stream : 2];
    o += put(dst + o, stream, strlen(stream));
    o += put(dst + o, "\",\"line\":", 9);
    o += put_json_string(dst + o, source_record_content(rec), rec->len);
    const char *labels, *meta;
    size_t labels_len, meta_len;
    source_record_extras(rec, &labels, &labels_len, &meta, &meta_len);
    if (labels_len) {
        o += put(dst + o, ",\"labels\":", 10);
        o += put_json_string(dst + o, labels, labels_len);
    }
    if (meta_len) {
        o += put(dst + o, ",\"metadata\":{", 13);
        for (const char *p = meta, *end = meta + meta_len; p < end;) {
            size_t nl = strnlen(p, (size_t)(end - p));
            const char *v = p + nl + 1;
            if (v > end) break;
            size_t vl = strnlen(v, (size_t)(end - v));
            if (p != meta) dst[o++] = ',';
            o += put_json_string(dst + o, p, nl);
            dst[o++] = ':';
            o += put_json_string(dst + o, v, vl);
            p = v + vl + 1;
        }
        dst[o++] = '}';
    }
    if (!m->namespace_[0]) {
        o += put(dst + o, ",\"file\":", 8);
        o += put_json_string(dst + o, src->path, strnlen(src->path, 4000));
    }
    dst[o++] = '}';
    dst[o++] = '\n';
    return o;
}

int stdout_sink_init(struct output_lane *out, char *err, size_t errlen)
{
    out->buf = malloc(STDOUT_BUFFER_BYTES);
    out->line_buf = malloc(output_stdout_max((size_t)out->cfg->collection.max_line_bytes * 3 + 64));
    if (!out->buf || !out->line_buf) {
        snprintf(err, errlen, "cannot allocate the output buffers");
        return -1;
    }
    struct stat st;
    out->stdout_may_block = fstat(STDOUT_FILENO, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode));
    return 0;
}

void stdout_sink_free(struct output_lane *out)
{
    output_forget(out->acks, out->nacks);
    out->nacks = 0;
    free(out->buf);
    free(out->line_buf);
}

bool stdout_sink_idle(struct output_lane *out) { return out->len == 0 && out->nacks == 0; }

/* Writes the whole buffer to stdout, retrying transient failures; a broken
 * stdout is retried (lines are never thrown away) until the shutdown grace
 * period ends. */
bool stdout_sink_flush(struct output_lane *out)
{
    size_t done = 0;
    int64_t last_report = 0;
    while (done < out->len) {
        size_t want = out->len - done;
        if (out->stdout_may_block) {
            struct pollfd p = {.fd = STDOUT_FILENO, .events = POLLOUT};
            int ready = poll(&p, 1, 200);
            if (ready < 0 && errno != EINTR) {
                log_error("cannot wait for stdout: %s", strerror(errno));
                return false;
            }
            if (ready <= 0 || !(p.revents & (POLLOUT | POLLERR | POLLHUP))) {
                if (output_giving_up(out)) {
                    memmove(out->buf, out->buf + done, out->len - done);
                    out->len -= done;
                    return false;
                }
                /* No heartbeat: a stdout nobody reads is no progress, and
                 * /healthz says so (as when a write blocked outright). */
                continue;
            }
            /* A pipe reporting POLLOUT takes PIPE_BUF bytes without blocking. */
            if (want > PIPE_BUF) want = PIPE_BUF;
        }
        ssize_t n = write(STDOUT_FILENO, out->buf + done, want);
        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        int saved = errno;
        int64_t now = metrics_now_ms();
        if (now - last_report >= 10000) {
            log_error("cannot write to stdout: %s; retrying, lines stay unacknowledged",
                      n < 0 ? strerror(saved) : "wrote nothing");
            last_report = now;
        }
        if (output_giving_up(out)) {
            memmove(out->buf, out->buf + done, out->len - done);
            out->len -= done;
            return false;
        }
        metrics_beat(METRICS_THREAD_OUTPUT);
        struct timespec pause = {0, saved == EAGAIN ? 10000000L : 200000000L};
        nanosleep(&pause, NULL);
    }
    out->len = 0;
    output_ack(out, out->acks, out->nacks);
    out->nacks = 0;
    metrics_add(lines_sent, out->unflushed_lines);
    metrics_add(bytes_sent, out->unflushed_bytes);
    out->unflushed_lines = out->unflushed_bytes = 0;
    return true;
}

static bool append(struct output_lane *out, const char *data, size_t n)
{
    while (n) {
        if (out->len == STDOUT_BUFFER_BYTES && !stdout_sink_flush(out)) return false;
        size_t take = STDOUT_BUFFER_BYTES - out->len;
        if (take > n) take = n;
        memcpy(out->buf + out->len, data, take);
        out->len += take;
        data += take;
        n -= take;
    }
    return true;
}

bool stdout_sink_deliver(struct output_lane *out, const struct source_chunk *chunk)
{
    bool json = out->cfg->output.stdout_.format == CONFIG_STDOUT_JSON;
    const struct source_record *rec = source_chunk_first(chunk);
    for (uint32_t i = 0; i < chunk->records; i++, rec = source_record_next(rec)) {
        size_t n = json ? output_format_json(chunk->source, rec, out->line_buf)
                        : output_format_text(chunk->source, rec, out->line_buf);
        if (!append(out, out->line_buf, n)) return false;
        out->unflushed_lines++;
        out->unflushed_bytes += rec->len;
    }
    if (out->nacks == MAX_UNFLUSHED_ACKS && !stdout_sink_flush(out)) return false;
    out->acks[out->nacks++] = (struct aggregator_ack){chunk->source, chunk->end_offset};
    return true;
}

static bool stdout_lane_idle(struct output_lane *out, bool closed)
{
    (void)closed;
    return stdout_sink_idle(out) || stdout_sink_flush(out);
}

static int stdout_lane_wait_ms(struct output_lane *out)
{
    (void)out;
    return 500;
}

static bool stdout_lane_finish(struct output_lane *out) { return stdout_sink_idle(out) || stdout_sink_flush(out); }

const struct output_lane_ops output_stdout_ops = {
    .name = "stdout",
    .init = stdout_sink_init,
    .deliver = stdout_sink_deliver,
    .idle = stdout_lane_idle,
    .wait_ms = stdout_lane_wait_ms,
    .finish = stdout_lane_finish,
    .free = stdout_sink_free,
};
