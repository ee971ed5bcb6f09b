/*
 * Archive: gzip objects per container in a store (archive/: file:// or s3://).
 *
 * The lane's consumer thread formats each record (output.archive.format:
 * cri or json) into its container's open object: a file in the spool
 * directory written through a 32 KiB buffer, so a line costs a memcpy, and
 * a write(2) happens once per 32 KiB. An object is sealed when its first
 * line has waited flush_interval, when it holds max_object_bytes of
 * records, when max_open_objects are open and a new container comes (the
 * least recently written goes first), and at shutdown. The uploader thread takes sealed
 * objects one at a time, oldest first: gzips the records into a second
 * spool file (computing MD5 and SHA-256 as it goes), stores it, retrying
 * with back-off until the store takes it, and only then acknowledges the
 * object's lines. Oldest first keeps each file's acknowledgements in order
 * (one file's lines all go to its container's objects).
 *
 * Bounded: memory is max_open_objects write buffers (and descriptors) plus
 * one gzip stream, and at most max_sealed_objects small sealed objects (no
 * descriptor: the uploader reopens the file by name); disk is
 * spool_max_bytes of records (open plus sealed objects). A full spool or
 * sealed queue makes the consumer wait for the uploader: back-pressure on
 * the ring, then on the files. Nothing is dropped: a store that refuses is
 * retried forever (403: after re-reading the credentials).
 *
 * {index}: one counter per agent, persisted in the spool directory in
 * blocks of INDEX_BLOCK (the file says where the next block starts before
 * any index of the current one is used), so a restart, even after kill -9,
 * never uses an index twice. file:// refuses an existing key outright; the
 * object then takes the next index.
 *
 * After a crash the spool's files are stale copies of lines that were
 * never acknowledged (they are read again from the logs): removed at start.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "archive/archive.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "output_internal.h"
#include "table/table.h"

/* snprintf that may cut a long path short without a warning: messages and
 * names here are bounded by their buffers on purpose. */
static void say(char *dst, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *dst, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, cap, fmt, ap);
    va_end(ap);
}

#define WRITE_BUFFER_BYTES (32 * 1024)
#define GZIP_BUFFER_BYTES (64 * 1024)
#define INDEX_BLOCK 1000
#define MAX_WAIT_MS 500

/* One container's object. Open (consumer-owned): in the open list, the
 * LRU list and the table, fd is its records file, wbuf holds what is not
 * written yet. written + wlen == raw_bytes once a chunk is accounted.
 * Sealed (uploader-owned once queued): every record is in the file
 * (written == raw_bytes, wlen == 0), fd is -1 and wbuf and ident are NULL,
 * so a sealed object costs no descriptor and little memory (the uploader
 * opens the file by its name). seq != 0: the spool file
 * SPOOL/PID-SEQ.raw exists (SPOOL/PID-SEQ.raw.gz while it is gzipped).
 * acks are the chunks whose last record it holds, in order, at most one per
 * source in a row. */
struct object {
    struct object *older, *newer; /* open list, oldest first: opening order is due order */
    struct object *lru_older, *lru_newer; /* open list, least recently written first */
    struct object *next_sealed;
    char *ident;
    struct parser_path_meta meta;
    uint64_t seq;
    int fd;
    char *wbuf;
    size_t wlen;
    uint64_t written; /* bytes in the file */
    uint64_t raw_bytes, lines;
    int64_t opened_ms, first_ts_ns;
    struct aggregator_ack *acks;
    size_t nacks, acks_cap;
    bool has_index;
    uint64_t index;
};

struct archive_sink {
    const struct config *cfg;
    struct output_lane *lane;
    struct archive_store *store;
    char spool_dir[PATH_MAX];
    char index_path[PATH_MAX + 16];
    char node[256];
    pid_t pid; /* in the spool files' names: a crashed run's files are told apart */

    /* consumer-owned */
    struct table open_by_ident;
    struct object *oldest, *newest;
    struct object *lru_oldest, *lru_newest;
    size_t nopen;
    uint64_t spool_seq;
    char *line_buf;
    uint64_t last_source_id;
    struct object *last_object;
    bool said_spool_error;

    pthread_mutex_t lock;
    pthread_cond_t changed;
    /* under lock */
    struct object *sealed_head, *sealed_tail;
    size_t nsealed; /* at most max_sealed_objects: past it sealing waits */
    uint64_t spool_bytes; /* records of open and sealed objects */
    bool stop;
    bool lock_ready;

    pthread_t uploader;
    bool uploader_started;
    /* uploader-owned */
    uint64_t next_index, reserved_until;
    long said[8];
    size_t nsaid;
    bool failing;
    int64_t failing_since;
    int failures;
};

static bool stopping(struct archive_sink *s)
{
    pthread_mutex_lock(&s->lock);
    bool stop = s->stop;
    pthread_mutex_unlock(&s->lock);
    return stop || output_giving_up(s->lane);
}

static bool store_cancelled(void *ctx) { return stopping(ctx); }

/* Sleeps up to ms in slices, so shutdown is not held up by a back-off. */
static void pause_ms(struct archive_sink *s, int64_t ms)
{
    int64_t until = metrics_now_ms() + ms;
    while (!stopping(s)) {
        int64_t left = until - metrics_now_ms();
        if (left <= 0) return;
        if (left > 200) left = 200;
        struct timespec t = {left / 1000, (left % 1000) * 1000000L};
        nanosleep(&t, NULL);
        metrics_beat(METRICS_THREAD_OUTPUT);
    }
}

/* ------------------------------------------------------------------------ */
/* The spool directory and the index counter                                */

static int make_dirs(const char *dir)
{
    char path[PATH_MAX];
    say(path, sizeof path, "%s/", dir);
    for (char *p = path + 1; (p = strchr(p, '/')); p++) {
        *p = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return 0;
}

static void clear_spool(struct archive_sink *s)
{
    DIR *d = opendir(s->spool_dir);
    if (!d) return;
    size_t removed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        bool ours = (n > 4 && strcmp(e->d_name + n - 4, ".raw") == 0) ||
                    (n > 7 && strcmp(e->d_name + n - 7, ".raw.gz") == 0);
        if (!ours) continue;
        char path[PATH_MAX];
        say(path, sizeof path, "%s/%s", s->spool_dir, e->d_name);
        if (unlink(path) == 0) removed++;
        else log_warn("cannot remove the stale archive spool file %s: %s", path, strerror(errno));
    }
    closedir(d);
    if (removed)
        log_info("removed %zu archive objects a previous run had not stored from %s; their lines are read again "
                 "from the logs (positions never passed them)",
                 removed, s->spool_dir);
}

static int read_index(struct archive_sink *s, char *err, size_t errlen)
{
    FILE *f = fopen(s->index_path, "r");
    if (!f) {
        if (errno == ENOENT) return 0;
        say(err, errlen, "cannot read the archive index counter %s: %s", s->index_path, strerror(errno));
        return -1;
    }
    unsigned long long v = 0;
    int n = fscanf(f, "%llu", &v);
    fclose(f);
    if (n != 1) {
        say(err, errlen, "the archive index counter %s does not hold a number; remove it only if the "
                 "archive's keys cannot collide (another spool dir, an empty archive)", s->index_path);
        return -1;
    }
    s->next_index = s->reserved_until = v;
    return 0;
}

/* Persists the start of the next block before the current one is used. */
static int reserve_indexes(struct archive_sink *s, char *why, size_t whylen)
{
    char tmp[PATH_MAX + 32];
    say(tmp, sizeof tmp, "%s.tmp", s->index_path);
    const uint64_t until = s->next_index + INDEX_BLOCK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        say(why, whylen, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    char text[32];
    int n = snprintf(text, sizeof text, "%llu\n", (unsigned long long)until);
    if (write(fd, text, (size_t)n) != n || fsync(fd) != 0) {
        say(why, whylen, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    if (rename(tmp, s->index_path) != 0) {
        say(why, whylen, "cannot rename %s to %s: %s", tmp, s->index_path, strerror(errno));
        return -1;
    }
    s->reserved_until = until;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Consumer side: open objects                                              */

/* The object's records file; with ".gz", its gzipped copy. */
static void object_path(const struct archive_sink *s, const struct object *obj, const char *suffix, char *dst,
                        size_t cap)
{
    say(dst, cap, "%s/%llu-%llu.raw%s", s->spool_dir, (unsigned long long)s->pid, (unsigned long long)obj->seq,
        suffix);
}

static void object_free(struct archive_sink *s, struct object *obj)
{
    if (!obj) return;
    output_forget(obj->acks, obj->nacks);
    if (obj->fd >= 0) close(obj->fd);
    if (obj->seq) {
        char path[PATH_MAX + 16];
        object_path(s, obj, "", path, sizeof path);
        unlink(path);
        object_path(s, obj, ".gz", path, sizeof path);
        unlink(path);
    }
    free(obj->acks);
    free(obj->wbuf);
    free(obj->ident);
    free(obj);
}

/* Writes the buffer to the object's file; a failing disk is retried
 * (the lines are not acknowledged meanwhile) until shutdown gives up. */
static bool flush_object(struct archive_sink *s, struct object *obj)
{
    size_t done = 0;
    while (done < obj->wlen) {
        ssize_t n = pwrite(obj->fd, obj->wbuf + done, obj->wlen - done, (off_t)(obj->written + done));
        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (!s->said_spool_error) {
            char path[PATH_MAX + 16];
            object_path(s, obj, "", path, sizeof path);
            log_error("cannot write the archive object %s: %s; retrying, its lines stay unacknowledged (said once)",
                      path, n < 0 ? strerror(errno) : "wrote nothing");
        }
        s->said_spool_error = true;
        if (stopping(s)) return false;
        pause_ms(s, 1000);
    }
    obj->written += obj->wlen;
    obj->wlen = 0;
    return true;
}

static void unlink_open(struct archive_sink *s, struct object *obj)
{
    if (obj->older) obj->older->newer = obj->newer;
    else s->oldest = obj->newer;
    if (obj->newer) obj->newer->older = obj->older;
    else s->newest = obj->older;
    obj->older = obj->newer = NULL;
    if (obj->lru_older) obj->lru_older->lru_newer = obj->lru_newer;
    else s->lru_oldest = obj->lru_newer;
    if (obj->lru_newer) obj->lru_newer->lru_older = obj->lru_older;
    else s->lru_newest = obj->lru_older;
    obj->lru_older = obj->lru_newer = NULL;
    s->nopen--;
    table_del_str(&s->open_by_ident, obj->ident);
    if (s->last_object == obj) s->last_object = NULL;
}

/* Makes obj the most recently written open object. */
static void touch(struct archive_sink *s, struct object *obj)
{
    if (s->lru_newest == obj) return;
    if (obj->lru_older) obj->lru_older->lru_newer = obj->lru_newer;
    else if (s->lru_oldest == obj) s->lru_oldest = obj->lru_newer;
    if (obj->lru_newer) obj->lru_newer->lru_older = obj->lru_older;
    obj->lru_newer = NULL;
    obj->lru_older = s->lru_newest;
    if (s->lru_newest) s->lru_newest->lru_newer = obj;
    else s->lru_oldest = obj;
    s->lru_newest = obj;
}

/* Waits, under s->lock, while max_sealed_objects wait for the uploader
 * (a store that refuses): back-pressure on reading, never more objects.
 * false: shutdown came first (the lock is still held). */
static bool wait_for_room_locked(struct archive_sink *s)
{
    const size_t max = (size_t)s->cfg->output.archive.max_sealed_objects;
    while (s->nsealed >= max) {
        if (s->stop || output_giving_up(s->lane)) return false;
        output_wait_beating(&s->changed, &s->lock);
    }
    return true;
}

/* Moves an open object to the uploader's queue; its descriptor, buffer
 * and name go (the uploader reopens the file). */
static bool seal(struct archive_sink *s, struct object *obj)
{
    if (!flush_object(s, obj)) return false;
    assert(obj->wlen == 0 && obj->written == obj->raw_bytes);
    pthread_mutex_lock(&s->lock);
    const bool room = wait_for_room_locked(s);
    pthread_mutex_unlock(&s->lock);
    if (!room) return false;
    unlink_open(s, obj);
    free(obj->wbuf);
    obj->wbuf = NULL;
    free(obj->ident);
    obj->ident = NULL;
    if (close(obj->fd) != 0) log_warn("closing an archive spool file failed: %s", strerror(errno));
    obj->fd = -1;
    pthread_mutex_lock(&s->lock);
    s->nsealed++;
    if (s->sealed_tail) s->sealed_tail->next_sealed = obj;
    else s->sealed_head = obj;
    s->sealed_tail = obj;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
    return true;
}

static void ident_of(const struct parser_path_meta *m, char *dst, size_t cap)
{
    say(dst, cap, "%s\x1f%s\x1f%s\x1f%s", m->namespace_, m->pod, m->container, m->container_id);
}

/* The open object of the chunk's container, opened if need be. NULL:
 * the spool file could not be created (said; the caller retries). */
static struct object *object_for(struct archive_sink *s, const struct source *src)
{
    if (s->last_object && s->last_source_id == src->id) return s->last_object;
    char ident[sizeof src->meta + 8];
    ident_of(&src->meta, ident, sizeof ident);
    struct object *obj = table_get_str(&s->open_by_ident, ident);
    if (!obj) {
        /* Full: the least recently written goes up early, so containers
         * that keep writing keep their objects whole. */
        if (s->nopen >= (size_t)s->cfg->output.archive.max_open_objects && s->lru_oldest &&
            !seal(s, s->lru_oldest))
            return NULL;
        obj = calloc(1, sizeof *obj);
        if (!obj || !(obj->ident = strdup(ident)) || !(obj->wbuf = malloc(WRITE_BUFFER_BYTES))) {
            log_error("out of memory opening an archive object for %s; retrying", src->path);
            if (obj) {
                obj->fd = -1;
                object_free(s, obj);
            }
            return NULL;
        }
        obj->meta = src->meta;
        obj->seq = ++s->spool_seq;
        char path[PATH_MAX + 16];
        object_path(s, obj, "", path, sizeof path);
        obj->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (obj->fd < 0) {
            if (!s->said_spool_error)
                log_error("cannot create the archive object %s: %s; retrying, reading waits (said once)", path,
                          strerror(errno));
            s->said_spool_error = true;
            obj->seq = 0;
            object_free(s, obj);
            return NULL;
        }
        if (table_put_str(&s->open_by_ident, obj->ident, obj) != 0) {
            log_error("out of memory indexing an archive object for %s; retrying", src->path);
            object_free(s, obj);
            return NULL;
        }
        obj->opened_ms = metrics_now_ms();
        obj->older = s->newest;
        if (s->newest) s->newest->newer = obj;
        else s->oldest = obj;
        s->newest = obj;
        s->nopen++;
    }
    touch(s, obj);
    s->last_source_id = src->id;
    s->last_object = obj;
    return obj;
}

static const char *cri_stream(uint8_t stream) { return stream == PARSER_STREAM_STDERR ? "stderr" : "stdout"; }

static bool append(struct archive_sink *s, struct object *obj, const char *data, size_t n)
{
    while (n) {
        if (obj->wlen == WRITE_BUFFER_BYTES && !flush_object(s, obj)) return false;
        size_t take = WRITE_BUFFER_BYTES - obj->wlen;
        if (take > n) take = n;
        memcpy(obj->wbuf + obj->wlen, data, take);
        obj->wlen += take;
        data += take;
        n -= take;
    }
    return true;
}

/* The kubelet's own format: "TIME STREAM F CONTENT". A record holding
 * newlines (lines the multiline stage joined) cannot be one CRI line: it
 * goes as the kubelet's partial records, a "P" piece per line and the last
 * one "F", all with the record's time and stream, so a CRI reader takes
 * them as one record (the archive's reader puts the newlines back). Pieces
 * are appended one by one: a record of many short lines grows by a prefix
 * per line, which no fixed buffer bounds. Adds the bytes written to *n. */
static bool append_cri(struct archive_sink *s, struct object *obj, const struct source_record *rec, uint64_t *n)
{
    char prefix[64];
    size_t plen = parser_format_rfc3339(rec->ts_ns, prefix);
    const char *stream = cri_stream(rec->stream);
    const size_t slen = strlen(stream);
    prefix[plen++] = ' ';
    memcpy(prefix + plen, stream, slen);
    plen += slen;
    memcpy(prefix + plen, " F ", 3);
    const size_t tag = plen + 1;
    plen += 3;
    const char *p = source_record_content(rec), *end = p + rec->len;
    for (;;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *piece_end = nl ? nl : end;
        prefix[tag] = nl ? 'P' : 'F';
        if (!append(s, obj, prefix, plen) || !append(s, obj, p, (size_t)(piece_end - p)) || !append(s, obj, "\n", 1))
            return false;
        *n += plen + (size_t)(piece_end - p) + 1;
        if (!nl) return true;
        p = nl + 1;
    }
}

static bool add_ack(struct object *obj, struct source *src, uint64_t end_offset)
{
    if (obj->nacks && obj->acks[obj->nacks - 1].source == src) {
        obj->acks[obj->nacks - 1].end_offset = end_offset;
        source_unref(src); /* the object holds this source already */
        return true;
    }
    if (obj->nacks == obj->acks_cap) {
        size_t cap = obj->acks_cap ? obj->acks_cap * 2 : 4;
        struct aggregator_ack *more = realloc(obj->acks, cap * sizeof *more);
        if (!more) return false;
        obj->acks = more;
        obj->acks_cap = cap;
    }
    obj->acks[obj->nacks++] = (struct aggregator_ack){src, end_offset};
    return true;
}

/* Seals every object whose first line has waited flush_interval. */
static bool seal_due(struct archive_sink *s)
{
    const int64_t now = metrics_now_ms();
    while (s->oldest && now - s->oldest->opened_ms >= s->cfg->output.archive.flush_interval_ms)
        if (!seal(s, s->oldest)) return false;
    return true;
}

/* Waits while the spool is full: the uploader frees it, or shutdown. */
static bool wait_for_spool(struct archive_sink *s)
{
    const uint64_t max = (uint64_t)s->cfg->output.archive.spool_max_bytes;
    pthread_mutex_lock(&s->lock);
    while (s->spool_bytes >= max) {
        if (!s->sealed_head && s->oldest) {
            /* Everything is in open objects: let the oldest go up. */
            pthread_mutex_unlock(&s->lock);
            if (!seal(s, s->oldest)) return false;
            pthread_mutex_lock(&s->lock);
            continue;
        }
        if (s->stop || output_giving_up(s->lane)) {
            pthread_mutex_unlock(&s->lock);
            return false;
        }
        output_wait_beating(&s->changed, &s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return true;
}

/* Counts `added` bytes of records into obj and the spool. */
static void account(struct archive_sink *s, struct object *obj, uint64_t added)
{
    obj->raw_bytes += added;
    pthread_mutex_lock(&s->lock);
    s->spool_bytes += added;
    metrics_set(archive_spool_bytes, (int64_t)s->spool_bytes);
    pthread_mutex_unlock(&s->lock);
}

static struct object *open_object(struct archive_sink *s, const struct source *src)
{
    struct object *obj;
    while (!(obj = object_for(s, src))) {
        if (stopping(s)) return NULL;
        pause_ms(s, 1000);
    }
    return obj;
}

static bool archive_deliver(struct output_lane *out, const struct source_chunk *chunk)
{
    struct archive_sink *s = out->archive;
    if (!wait_for_spool(s)) return false;
    struct object *obj = open_object(s, chunk->source);
    if (!obj) return false;
    const bool json = s->cfg->output.archive.format == CONFIG_ARCHIVE_JSON;
    const uint64_t max_bytes = (uint64_t)s->cfg->output.archive.max_object_bytes;
    uint64_t added = 0;
    /* The hot loop: format into the object's buffer (json through
     * line_buf); never a malloc, never a syscall but the 32 KiB write. */
    const struct source_record *rec = source_chunk_first(chunk);
    for (uint32_t i = 0; i < chunk->records; i++, rec = source_record_next(rec)) {
        if (json) {
            size_t n = output_format_json(chunk->source, rec, s->line_buf);
            if (!append(s, obj, s->line_buf, n)) return false;
            added += n;
        } else if (!append_cri(s, obj, rec, &added)) {
            return false;
        }
        if (obj->lines++ == 0) obj->first_ts_ns = rec->ts_ns;
        if (obj->raw_bytes + added >= max_bytes && i + 1 < chunk->records) {
            /* Full in the middle of a chunk: the rest goes to the next
             * object, which then carries the chunk's acknowledgement (the
             * uploader stores them in order). */
            account(s, obj, added);
            added = 0;
            if (!seal(s, obj) || !(obj = open_object(s, chunk->source))) return false;
        }
    }
    account(s, obj, added);
    while (!add_ack(obj, chunk->source, chunk->end_offset)) {
        log_error("out of memory recording an acknowledgement of %s; retrying", chunk->source->path);
        if (stopping(s)) return false;
        pause_ms(s, 1000);
    }
    if (obj->raw_bytes >= max_bytes && !seal(s, obj)) return false;
    return seal_due(s);
}

static bool uploads_done(struct archive_sink *s)
{
    pthread_mutex_lock(&s->lock);
    while (s->sealed_head && !s->stop && !output_giving_up(s->lane)) {
        output_wait_beating(&s->changed, &s->lock);
    }
    bool done = !s->sealed_head;
    pthread_mutex_unlock(&s->lock);
    return done;
}

static bool archive_idle(struct output_lane *out, bool closed)
{
    struct archive_sink *s = out->archive;
    if (!closed) return seal_due(s);
    /* Nothing more will come: what is open goes up now. */
    while (s->oldest)
        if (!seal(s, s->oldest)) return false;
    return uploads_done(s);
}

static int archive_wait_ms(struct output_lane *out)
{
    struct archive_sink *s = out->archive;
    if (!s->oldest) return MAX_WAIT_MS;
    int64_t left = s->oldest->opened_ms + s->cfg->output.archive.flush_interval_ms - metrics_now_ms();
    if (left < 0) return 0;
    return left < MAX_WAIT_MS ? (int)left : MAX_WAIT_MS;
}

static bool archive_finish(struct output_lane *out)
{
    (void)out;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Uploader side                                                            */

/* Gzips obj's records (PID-SEQ.raw) into PID-SEQ.raw.gz; returns the
 * latter's descriptor (read from 0) with size and digests, or -1 with `why`
 * set. */
static int gzip_object(struct archive_sink *s, struct object *obj, uint64_t *size, unsigned char md5[16],
                       unsigned char sha256[32], char *why, size_t whylen)
{
    char raw[PATH_MAX + 16], gz[PATH_MAX + 16];
    object_path(s, obj, "", raw, sizeof raw);
    object_path(s, obj, ".gz", gz, sizeof gz);
    const int rfd = open(raw, O_RDONLY | O_CLOEXEC);
    if (rfd < 0) {
        say(why, whylen, "cannot open %s: %s", raw, strerror(errno));
        return -1;
    }
    int fd = open(gz, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        say(why, whylen, "cannot create %s: %s", gz, strerror(errno));
        close(rfd);
        return -1;
    }
    unsigned char *in = malloc(GZIP_BUFFER_BYTES), *zout = malloc(GZIP_BUFFER_BYTES);
    EVP_MD_CTX *m5 = EVP_MD_CTX_new(), *m256 = EVP_MD_CTX_new();
    z_stream z = {0};
    bool z_ready = false, ok = false;
    *size = 0;
    if (!in || !zout || !m5 || !m256 || !EVP_DigestInit_ex(m5, EVP_md5(), NULL) ||
        !EVP_DigestInit_ex(m256, EVP_sha256(), NULL)) {
        say(why, whylen, "out of memory gzipping %s", raw);
        goto done;
    }
    /* windowBits 15 + 16: a gzip header and trailer, what gunzip and zcat read. */
    if (deflateInit2(&z, (int)s->cfg->output.archive.gzip_level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
        Z_OK) {
        say(why, whylen, "cannot set up zlib for %s", raw);
        goto done;
    }
    z_ready = true;
    uint64_t pos = 0;
    int flush = Z_NO_FLUSH;
    do {
        if (z.avail_in == 0 && flush != Z_FINISH) {
            ssize_t n = pread(rfd, in, GZIP_BUFFER_BYTES, (off_t)pos);
            if (n < 0) {
                if (errno == EINTR) continue;
                say(why, whylen, "cannot read %s: %s", raw, strerror(errno));
                goto done;
            }
            pos += (uint64_t)n;
            z.next_in = in;
            z.avail_in = (uInt)n;
            if (n == 0 || pos >= obj->written) flush = Z_FINISH;
        }
        z.next_out = zout;
        z.avail_out = GZIP_BUFFER_BYTES;
        int rc = deflate(&z, flush);
        if (rc == Z_STREAM_ERROR) {
            say(why, whylen, "zlib failed on %s", raw);
            goto done;
        }
        size_t have = GZIP_BUFFER_BYTES - z.avail_out;
        for (size_t w = 0; w < have;) {
            ssize_t n = write(fd, zout + w, have - w);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                say(why, whylen, "cannot write %s: %s", gz, n < 0 ? strerror(errno) : "wrote nothing");
                goto done;
            }
            w += (size_t)n;
        }
        EVP_DigestUpdate(m5, zout, have);
        EVP_DigestUpdate(m256, zout, have);
        *size += have;
        if (rc == Z_STREAM_END) break;
    } while (1);
    unsigned int len;
    EVP_DigestFinal_ex(m5, md5, &len);
    EVP_DigestFinal_ex(m256, sha256, &len);
    ok = true;
done:
    if (z_ready) deflateEnd(&z);
    close(rfd);
    EVP_MD_CTX_free(m5);
    EVP_MD_CTX_free(m256);
    free(in);
    free(zout);
    if (!ok) {
        close(fd);
        unlink(gz);
        return -1;
    }
    return fd;
}

static void note_failure(struct archive_sink *s, const struct archive_outcome *o, const char *key,
                         const struct object *obj, int64_t wait)
{
    metrics_add(archive_upload_failures, 1);
    if (!s->failing) {
        s->failing = true;
        s->failing_since = metrics_now_ms();
        metrics_set(archive_failing_since_ms, s->failing_since);
    }
    s->failures++;
    for (size_t i = 0; i < s->nsaid; i++)
        if (s->said[i] == o->http_status) return;
    if (s->nsaid < sizeof s->said / sizeof s->said[0]) s->said[s->nsaid++] = o->http_status;
    if (o->result == ARCHIVE_AUTH)
        log_error("the archive refused the credentials storing %s (%s): the credential files are re-read before "
                  "every retry; retrying %llu lines with back-off (next in %lld ms); they wait on disk, nothing is "
                  "dropped (said once until uploads succeed or the answer changes)",
                  key, o->detail, (unsigned long long)obj->lines, (long long)wait);
    else
        log_error("cannot store archive object %s: %s; retrying %llu lines with back-off (next in %lld ms); they "
                  "wait on disk, nothing is dropped (said once until uploads succeed or the answer changes)",
                  key, o->detail, (unsigned long long)obj->lines, (long long)wait);
}

static void note_success(struct archive_sink *s)
{
    metrics_set(archive_failing_since_ms, 0);
    if (!s->failing) return;
    log_info("the archive (%s) stores objects again after %d failed attempts over %.1f s",
             archive_store_describe(s->store), s->failures, (double)(metrics_now_ms() - s->failing_since) / 1000.0);
    s->failing = false;
    s->failures = 0;
    s->nsaid = 0;
}

/* Stores one object until the store takes it. false: shutdown came first. */
static bool upload(struct archive_sink *s, struct object *obj)
{
    const struct config *cfg = s->cfg;
    uint64_t size = 0;
    unsigned char md5[16], sha256[32];
    int fd;
    for (int attempt = 0;; attempt++) {
        char why[512];
        fd = gzip_object(s, obj, &size, md5, sha256, why, sizeof why);
        if (fd >= 0) break;
        struct archive_outcome o = {.retry_after_ms = 0};
        o.result = ARCHIVE_RETRY;
        o.http_status = 0;
        say(o.detail, sizeof o.detail, "%s", why);
        const int64_t wait = archive_backoff_ms(attempt, cfg->output.archive.min_backoff_ms,
                                                cfg->output.archive.max_backoff_ms, 0);
        char raw[PATH_MAX + 16];
        object_path(s, obj, "", raw, sizeof raw);
        note_failure(s, &o, raw, obj, wait);
        if (stopping(s)) return false;
        pause_ms(s, wait);
    }
    bool stored = false;
    char key[ARCHIVE_KEY_MAX];
    object_path(s, obj, "", key, sizeof key);
    for (int attempt = 0; !stored;) {
        struct archive_outcome o = {.result = ARCHIVE_RETRY};
        if (!obj->has_index) {
            char why[512];
            if (s->next_index == s->reserved_until && reserve_indexes(s, why, sizeof why) != 0) {
                o.result = ARCHIVE_RETRY;
                o.http_status = 0;
                o.retry_after_ms = 0;
                say(o.detail, sizeof o.detail, "cannot persist the index counter: %s", why);
                goto failed;
            }
            obj->index = s->next_index++;
            obj->has_index = true;
        }
        struct archive_key_fields f = {obj->meta.namespace_, obj->meta.pod,     obj->meta.container,
                                       obj->meta.container_id, obj->meta.pod_uid, s->node,
                                       obj->first_ts_ns,        obj->index};
        char why[256];
        if (!archive_key_render(cfg->output.archive.key_format, &f, key, sizeof key, why, sizeof why)) {
            o.result = ARCHIVE_REFUSED;
            o.http_status = 0;
            o.retry_after_ms = 0;
            say(o.detail, sizeof o.detail, "%s", why);
            say(key, sizeof key, "(key of %s/%s/%s)", obj->meta.namespace_, obj->meta.pod, obj->meta.container);
            goto failed;
        }
        archive_store_put_file(s->store, key, fd, size, md5, sha256, false, &o);
        if (o.result == ARCHIVE_OK) {
            stored = true;
            break;
        }
        if (o.result == ARCHIVE_EXISTS) {
            /* Not ours to replace (another agent's, or a lost counter): the
             * object takes the next index. */
            log_warn("archive key %s is taken (%s); storing the object under the next index", key, o.detail);
            obj->has_index = false;
            continue;
        }
    failed:;
        if (o.result == ARCHIVE_AUTH) archive_store_reload_credentials(s->store);
        const int64_t wait = archive_backoff_ms(attempt, cfg->output.archive.min_backoff_ms,
                                                cfg->output.archive.max_backoff_ms, o.retry_after_ms);
        note_failure(s, &o, key, obj, wait);
        attempt++;
        if (stopping(s)) break;
        pause_ms(s, wait);
        if (stopping(s)) break;
    }
    close(fd);
    if (!stored) return false;
    note_success(s);
    log_debug("stored archive object %s: %llu lines, %llu bytes, %llu gzipped", key, (unsigned long long)obj->lines,
              (unsigned long long)obj->raw_bytes, (unsigned long long)size);
    metrics_add(archive_objects, 1);
    metrics_add(archive_lines, obj->lines);
    metrics_add(archive_bytes, size);
    metrics_add(archive_bytes_raw, obj->raw_bytes);
    if (!s->lane->owns_ring) { /* the only output: its lines are the agent's lines sent */
        metrics_add(lines_sent, obj->lines);
        metrics_add(bytes_sent, obj->raw_bytes);
    }
    output_ack(s->lane, obj->acks, obj->nacks);
    obj->nacks = 0;
    return true;
}

static void *uploader_main(void *arg)
{
    struct archive_sink *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->sealed_head && !s->stop) pthread_cond_wait(&s->changed, &s->lock);
        if (!s->sealed_head) break;
        struct object *obj = s->sealed_head;
        pthread_mutex_unlock(&s->lock);
        bool ok = upload(s, obj);
        pthread_mutex_lock(&s->lock);
        if (!ok) {
            atomic_store(&s->lane->result, -1);
            break; /* shutdown: the object stays queued, unacknowledged */
        }
        s->sealed_head = obj->next_sealed;
        if (!s->sealed_head) s->sealed_tail = NULL;
        assert(s->nsealed > 0);
        s->nsealed--;
        assert(s->spool_bytes >= obj->raw_bytes);
        s->spool_bytes -= obj->raw_bytes;
        metrics_set(archive_spool_bytes, (int64_t)s->spool_bytes);
        pthread_cond_broadcast(&s->changed);
        pthread_mutex_unlock(&s->lock);
        object_free(s, obj);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Lifecycle                                                                */

static int archive_init(struct output_lane *out, char *err, size_t errlen)
{
    const struct config *cfg = out->cfg;
    struct archive_sink *s = calloc(1, sizeof *s);
    if (!s) {
        say(err, errlen, "out of memory");
        return -1;
    }
    out->archive = s;
    s->cfg = cfg;
    s->lane = out;
    if (pthread_mutex_init(&s->lock, NULL) != 0 || pthread_cond_init(&s->changed, NULL) != 0) {
        say(err, errlen, "cannot initialise the archive's lock");
        return -1;
    }
    s->lock_ready = true;
    s->pid = getpid();
    if (cfg->output.archive.spool_dir[0]) {
        say(s->spool_dir, sizeof s->spool_dir, "%s", cfg->output.archive.spool_dir);
    } else {
        char pos[PATH_MAX];
        say(pos, sizeof pos, "%s", cfg->collection.positions_file);
        say(s->spool_dir, sizeof s->spool_dir, "%s/archive-spool", dirname(pos));
    }
    if (make_dirs(s->spool_dir) != 0) {
        say(err, errlen, "output.archive.spool_dir: cannot create %s: %s", s->spool_dir, strerror(errno));
        return -1;
    }
    say(s->index_path, sizeof s->index_path, "%s/next-index", s->spool_dir);
    if (read_index(s, err, errlen) != 0) return -1;
    clear_spool(s);
    const char *node = getenv("NODE_NAME");
    if (!node || !*node) node = cfg->kubernetes.node_name;
    if (node && *node) say(s->node, sizeof s->node, "%s", node);
    else if (gethostname(s->node, sizeof s->node) != 0) say(s->node, sizeof s->node, "unknown");
    s->line_buf = malloc(output_stdout_max((size_t)cfg->collection.max_line_bytes * 3 + 64));
    if (!s->line_buf) {
        say(err, errlen, "cannot allocate the archive's line buffer");
        return -1;
    }
    struct archive_store_options opt;
    archive_store_options_from_config(&opt, cfg);
    s->store = archive_store_open(&opt, err, errlen);
    if (!s->store) return -1;
    archive_store_set_cancel(s->store, store_cancelled, s);
    log_info("archive output to %s, objects built in %s (next index %llu)", archive_store_describe(s->store),
             s->spool_dir, (unsigned long long)s->next_index);
    return 0;
}

static int archive_start(struct output_lane *out, char *err, size_t errlen)
{
    struct archive_sink *s = out->archive;
    int rc = pthread_create(&s->uploader, NULL, uploader_main, s);
    if (rc != 0) {
        say(err, errlen, "cannot start the archive's uploader thread: %s", strerror(rc));
        return -1;
    }
    s->uploader_started = true;
    return 0;
}

static void archive_free(struct output_lane *out)
{
    struct archive_sink *s = out->archive;
    if (!s) return;
    if (s->uploader_started) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_broadcast(&s->changed);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->uploader, NULL);
    }
    /* What was not stored stays unacknowledged: read again after a restart. */
    while (s->oldest) {
        struct object *obj = s->oldest;
        unlink_open(s, obj);
        object_free(s, obj);
    }
    while (s->sealed_head) {
        struct object *obj = s->sealed_head;
        s->sealed_head = obj->next_sealed;
        object_free(s, obj);
    }
    table_free(&s->open_by_ident);
    archive_store_close(s->store);
    free(s->line_buf);
    if (s->lock_ready) {
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->changed);
    }
    free(s);
    out->archive = NULL;
}

const struct output_lane_ops output_archive_ops = {
    .name = "archive",
    .init = archive_init,
    .start = archive_start,
    .deliver = archive_deliver,
    .idle = archive_idle,
    .wait_ms = archive_wait_ms,
    .finish = archive_finish,
    .free = archive_free,
};
