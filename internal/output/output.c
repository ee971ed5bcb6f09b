#include "output.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log/log.h"
#include "metrics/metrics.h"
#include "source/source.h"

#define STDOUT_BUFFER_BYTES (256 * 1024)
/* Chunks written into the buffer but not yet flushed: bounded, so a burst of
 * one-line chunks cannot grow the list. */
#define MAX_UNFLUSHED_ACKS 512

struct pending_ack {
    struct source *source;
    uint64_t end_offset;
};

struct output {
    const struct config *cfg;
    struct ring *ring;
    pthread_t thread;
    bool thread_started;
    atomic_bool finishing;
    _Atomic int64_t deadline_ms; /* when finishing: give up delivering after this */
    atomic_int result;

    char *buf;
    size_t len;
    struct pending_ack acks[MAX_UNFLUSHED_ACKS];
    size_t nacks;
    uint64_t unflushed_lines, unflushed_bytes;
    char *line_buf; /* one formatted record */
};

static const char *const stream_names[] = {"stdout", "stderr", "unknown"};

size_t output_stdout_max(size_t content_len)
{
    /* JSON escapes a byte into at most 6 (\u00XX); metadata is bounded by the
     * fixed-size fields of parser_path_meta plus the path. */
    return content_len * 6 + 4096 + 2 * 4096;
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
    if (!m->namespace_[0]) {
        o += put(dst + o, ",\"file\":", 8);
        o += put_json_string(dst + o, src->path, strnlen(src->path, 4000));
    }
    dst[o++] = '}';
    dst[o++] = '\n';
    return o;
}

static bool giving_up(struct output *out)
{
    return atomic_load(&out->finishing) && metrics_now_ms() >= atomic_load(&out->deadline_ms);
}

/* Writes the whole buffer to stdout, retrying transient failures; a broken
 * stdout is retried every second (lines are never thrown away) until the
 * shutdown grace period ends. */
static bool flush_stdout(struct output *out)
{
    size_t done = 0;
    int64_t last_report = 0;
    while (done < out->len) {
        ssize_t n = write(STDOUT_FILENO, out->buf + done, out->len - done);
        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        int64_t now = metrics_now_ms();
        if (now - last_report >= 10000) {
            log_error("cannot write to stdout: %s; retrying, lines stay unacknowledged",
                      n < 0 ? strerror(errno) : "wrote nothing");
            last_report = now;
        }
        if (giving_up(out)) {
            memmove(out->buf, out->buf + done, out->len - done);
            out->len -= done;
            return false;
        }
        metrics_beat(METRICS_THREAD_OUTPUT);
        struct timespec pause = {0, errno == EAGAIN ? 10000000L : 200000000L};
        nanosleep(&pause, NULL);
    }
    out->len = 0;
    for (size_t i = 0; i < out->nacks; i++) {
        atomic_store_explicit(&out->acks[i].source->acked_offset, out->acks[i].end_offset, memory_order_release);
        source_unref(out->acks[i].source);
    }
    out->nacks = 0;
    metrics_add(lines_sent, out->unflushed_lines);
    metrics_add(bytes_sent, out->unflushed_bytes);
    out->unflushed_lines = out->unflushed_bytes = 0;
    return true;
}

static bool append_stdout(struct output *out, const char *data, size_t n)
{
    while (n) {
        if (out->len == STDOUT_BUFFER_BYTES && !flush_stdout(out)) return false;
        size_t take = STDOUT_BUFFER_BYTES - out->len;
        if (take > n) take = n;
        memcpy(out->buf + out->len, data, take);
        out->len += take;
        data += take;
        n -= take;
    }
    return true;
}

static bool deliver_chunk_stdout(struct output *out, const struct source_chunk *chunk)
{
    bool json = out->cfg->output.stdout_.format == CONFIG_STDOUT_JSON;
    const struct source_record *rec = source_chunk_first(chunk);
    for (uint32_t i = 0; i < chunk->records; i++, rec = source_record_next(rec)) {
        size_t n = json ? output_format_json(chunk->source, rec, out->line_buf)
                        : output_format_text(chunk->source, rec, out->line_buf);
        if (!append_stdout(out, out->line_buf, n)) return false;
        out->unflushed_lines++;
        out->unflushed_bytes += rec->len;
    }
    if (out->nacks == MAX_UNFLUSHED_ACKS && !flush_stdout(out)) return false;
    out->acks[out->nacks++] = (struct pending_ack){chunk->source, chunk->end_offset};
    return true;
}

static void *output_main(void *arg)
{
    struct output *out = arg;
    for (;;) {
        metrics_beat(METRICS_THREAD_OUTPUT);
        metrics_set(ring_used_bytes, (int64_t)ring_used(out->ring));
        size_t size;
        bool closed;
        /* Peek without waiting first, so a burst is written with few syscalls;
         * flush before blocking so nothing waits in our buffer. */
        const void *block = ring_peek(out->ring, &size, 0, &closed);
        if (!block && !closed) {
            if ((out->len || out->nacks) && !flush_stdout(out)) break;
            block = ring_peek(out->ring, &size, 500, &closed);
        }
        if (!block) {
            if (closed) break;
            continue;
        }
        const struct source_chunk *chunk = block;
        if (!deliver_chunk_stdout(out, chunk)) {
            source_unref(chunk->source);
            ring_release(out->ring);
            break;
        }
        ring_release(out->ring);
        if (giving_up(out)) break;
    }
    int ok = (out->len == 0 && out->nacks == 0) || flush_stdout(out);
    atomic_store(&out->result, ok ? 0 : -1);
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
    out->buf = malloc(STDOUT_BUFFER_BYTES);
    out->line_buf = malloc(output_stdout_max((size_t)cfg->collection.max_line_bytes * 3 + 64));
    if (!out->buf || !out->line_buf) {
        snprintf(err, errlen, "cannot allocate the output buffers");
        output_destroy(out);
        return NULL;
    }
    return out;
}

int output_start(struct output *out, char *err, size_t errlen)
{
    metrics_beat(METRICS_THREAD_OUTPUT);
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
    if (!out->thread_started) return 0;
    atomic_store(&out->deadline_ms, metrics_now_ms() + grace_ms);
    atomic_store(&out->finishing, true);
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
    for (size_t i = 0; i < out->nacks; i++) source_unref(out->acks[i].source);
    out->nacks = 0;
    return atomic_load(&out->result);
}

void output_destroy(struct output *out)
{
    if (!out) return;
    free(out->buf);
    free(out->line_buf);
    free(out);
}
