/*
 * The collector's thread: one loop that waits on the watcher (or a short
 * timeout), turns events into a FIFO of files with something to read, and
 * reads each of them one buffer per turn so that one busy file cannot starve
 * the others. It never blocks on the ring: while the ring is full it keeps
 * following the files (see rotation.c) and saving positions, and reads
 * again when there is room.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "collector_internal.h"
#include "output/livetail.h"
#include "log/log.h"
#include "metrics/metrics.h"

/* How often the globs are expanded again even though inotify is watching:
 * a safety net for events the kernel could not deliver. */
#define RESCAN_INTERVAL_MS 10000
/* How long a rotated file stays open after its end for the writer's last
 * lines (containerd reopens its log right after the kubelet's rename). */
#define ROTATE_WAIT_MS 2000
#define IDLE_POLL_MS 250

bool collector_stopping(struct collector *c)
{
    return atomic_load_explicit(&c->stop, memory_order_relaxed) && !c->final_flush;
}

void collector_mark_pending(struct collector *c, struct tailed_file *f)
{
    if (f->pending || f->waiting || f->metadata_wait_until_ms) return;
    f->pending = true;
    f->pending_next = NULL;
    if (c->pending_tail) c->pending_tail->pending_next = f;
    else c->pending_head = f;
    c->pending_tail = f;
}

static void push_front_pending(struct collector *c, struct tailed_file *f)
{
    if (f->pending || f->waiting) return;
    f->pending = true;
    f->pending_next = c->pending_head;
    c->pending_head = f;
    if (!c->pending_tail) c->pending_tail = f;
}

static struct tailed_file *pop_pending(struct collector *c)
{
    struct tailed_file *f = c->pending_head;
    if (!f) return NULL;
    c->pending_head = f->pending_next;
    if (!c->pending_head) c->pending_tail = NULL;
    f->pending = false;
    return f;
}

static pcre2_code *compile_filter(const char *key, const char *pattern, char *err, size_t errlen)
{
    if (!pattern || !*pattern) return NULL;
    int code;
    PCRE2_SIZE offset;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_MATCH_INVALID_UTF,
                                   &code, &offset, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        snprintf(err, errlen, "%s: invalid regular expression at offset %zu: %s", key, (size_t)offset, msg);
        return NULL;
    }
    /* JIT is an optimisation; without it (e.g. no executable memory) matching still works. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

/* A rotated file's source a held join still owned when its file state went. */
static void pipeline_release_source(void *origin) { source_unref(origin); }

struct collector *collector_create(const struct config *cfg, struct ring *ring, char *err, size_t errlen)
{
    struct collector *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->cfg = cfg;
    c->ring = ring;
    c->wake_fd = -1;
    c->spool_fd = -1;
    c->max_line = (size_t)cfg->collection.max_line_bytes;
    pthread_mutex_init(&c->snap.lock, NULL);
    pthread_cond_init(&c->snap.built, NULL);
    source_label_policy_init(&c->label_policy, cfg);
    /* A logical line up to max_line_bytes, with its CRI prefixes, must fit in
     * one read so it can be joined without keeping it per file. */
    c->buf_size = (size_t)cfg->collection.read_buffer_bytes;
    if (c->buf_size < c->max_line + c->max_line / 4) c->buf_size = c->max_line + c->max_line / 4;
    size_t record_max = sizeof(struct source_record) + 3 * c->max_line + 16;
    if (sizeof(struct source_chunk) + record_max > ring_max_block(ring)) {
        snprintf(err, errlen, "buffer.max_bytes (%zu) is too small for collection.max_line_bytes (%zu): "
                 "it must be at least 8 times larger", ring_capacity(ring), c->max_line);
        collector_destroy(c);
        return NULL;
    }
    c->buf = malloc(c->buf_size);
    c->docker_buf = malloc(c->buf_size);
    c->scratch = malloc(record_max);
    c->utf8_buf = malloc(3 * c->max_line + 16);
    c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!c->buf || !c->docker_buf || !c->scratch || !c->utf8_buf || c->wake_fd < 0) {
        snprintf(err, errlen, "cannot allocate the collector's buffers: %s", strerror(errno ? errno : ENOMEM));
        collector_destroy(c);
        return NULL;
    }
    err[0] = '\0';
    c->include_lines = compile_filter("collection.include_lines", cfg->collection.include_lines, err, errlen);
    if (!c->include_lines && err[0]) {
        collector_destroy(c);
        return NULL;
    }
    c->exclude_lines = compile_filter("collection.exclude_lines", cfg->collection.exclude_lines, err, errlen);
    if (!c->exclude_lines && err[0]) {
        collector_destroy(c);
        return NULL;
    }
    if ((c->include_lines || c->exclude_lines) && !(c->match_data = pcre2_match_data_create(4, NULL))) {
        snprintf(err, errlen, "out of memory");
        collector_destroy(c);
        return NULL;
    }
    if (!(c->pipeline = pipeline_create(cfg, err, errlen))) {
        collector_destroy(c);
        return NULL;
    }
    pipeline_set_origin_release(c->pipeline, pipeline_release_source);
    pipeline_publish_metrics(c->pipeline);
    return c;
}

void collector_on_event(struct collector *c, struct watch_dir *dir, enum watch_event event, const char *name)
{
    switch (event) {
    case WATCH_OVERFLOW:
        /* Said once per burst: one overflow event can follow another. */
        if (metrics_now_ms() - c->last_overflow_report_ms >= 10000) {
            log_warn("inotify queue overflowed (fs.inotify.max_queued_events): rescanning and checking every open "
                     "file (said at most every 10 s; counted in loglet_inotify_overflows_total)");
            c->last_overflow_report_ms = metrics_now_ms();
        }
        metrics_add(inotify_overflows, 1);
        c->rescan_needed = true;
        rotation_check_all(c);
        return;
    case WATCH_DIR_GONE:
        rotation_dir_gone(c, dir, false);
        return;
    case WATCH_DROPPED:
        rotation_dir_gone(c, dir, true);
        return;
    case WATCH_CREATED:
    case WATCH_REMOVED:
        if (dir->holds_links && name) discovery_link_event(c, dir, name, event == WATCH_CREATED);
        if (dir->files) rotation_schedule_check(c, dir);
        break;
    case WATCH_POLLED:
        if (dir->holds_links) c->rescan_needed = true;
        if (dir->files) rotation_schedule_check(c, dir);
        break;
    case WATCH_APPENDED:
        break;
    }
    for (struct tailed_file *f = dir->files; f; f = f->dir_next) collector_mark_pending(c, f);
}

/* Every poll_interval: polled directories, flush timeouts, closing drained
 * files, the held-files bound. */
static void periodic_sweep(struct collector *c, int64_t now)
{
    c->watcher->ops->tick(c->watcher, c);
    rotation_check_identities(c);
    int64_t flush_after = c->cfg->collection.partial_flush_timeout_ms;
    for (struct tailed_file *f = c->all_files; f; f = f->all_next) {
        if (f->incomplete_since_ms && now - f->incomplete_since_ms >= flush_after) collector_mark_pending(c, f);
        if (f->state == FILE_DRAINING) collector_mark_pending(c, f);
        if (f->pipe && pipeline_file_due(f->pipe, now)) collector_mark_pending(c, f);
    }
    rotation_enforce_held(c);
}

static bool should_close(const struct tailed_file *f, int64_t now)
{
    if (f->state != FILE_DRAINING) return false;
    if (f->incomplete_since_ms) return false; /* wait for the rest of its last line, or the flush */
    struct stat st;
    /* Deleted: nobody can write to it any more, and holding it keeps the disk space. */
    if (fstat(f->fd, &st) == 0 && st.st_nlink == 0) return true;
    return now - f->draining_since_ms >= ROTATE_WAIT_MS;
}

static void service_pending(struct collector *c)
{
    /* One turn over the files pending now; files still busy go to the back. */
    struct tailed_file *last = c->pending_tail;
    while (c->pending_head && !collector_stopping(c) && !c->blocked) {
        struct tailed_file *f = pop_pending(c);
        if (f->waiting) { /* queued before it was chained after a predecessor: read once that one closes */
            if (f == last) break;
            continue;
        }
        int64_t now = metrics_now_ms();
        bool flush = f->incomplete_since_ms && now - f->incomplete_since_ms >= c->cfg->collection.partial_flush_timeout_ms;
        if (flush && f->state == FILE_DRAINING && now - f->draining_since_ms < ROTATE_WAIT_MS) flush = false;
        /* A rotated file ending in an unfinished line: the writer has moved
         * on, so its successor (which waits for it) need not wait longer. */
        if (!flush && f->incomplete_since_ms && f->state == FILE_DRAINING && f->successor &&
            now - f->draining_since_ms >= ROTATE_WAIT_MS)
            flush = true;
        enum read_result r = tail_read(c, f, flush);
        if (r == READ_STOPPED) return;
        if (r == READ_BLOCKED) {
            push_front_pending(c, f); /* first in line when the ring has room again */
            return;
        }
        if (r == READ_PAUSED) { /* resumed by resume_paused() */
            if (f == last) break;
            continue;
        }
        /* A join that waited its timeout goes out; a rotated file's join
         * waits for the file to close and moves to its successor. */
        if (r == READ_EOF && f->pipe && pipeline_file_due(f->pipe, now) &&
            !(f->state == FILE_DRAINING && f->successor) && !tail_pipeline_flush(c, f)) {
            push_front_pending(c, f);
            return;
        }
        if (r == READ_MORE) collector_mark_pending(c, f);
        else if (r == READ_ERROR) rotation_close(c, f);
        else if (should_close(f, now)) {
            if (!rotation_release_pipeline(c, f)) {
                push_front_pending(c, f); /* its join waits for room in the ring */
                return;
            }
            rotation_close(c, f);
        }
        metrics_beat(METRICS_THREAD_COLLECTOR);
        if (f == last) break;
    }
}

/* Files a limit (action: wait) paused whose time has come are read again. */
static void resume_paused(struct collector *c, int64_t now)
{
    if (!c->next_resume_ms || now < c->next_resume_ms) return;
    c->next_resume_ms = 0;
    for (struct tailed_file *f = c->all_files; f; f = f->all_next) {
        if (!f->paused_until_ms) continue;
        if (f->paused_until_ms <= now) {
            collector_mark_pending(c, f);
        } else if (!c->next_resume_ms || f->paused_until_ms < c->next_resume_ms) {
            c->next_resume_ms = f->paused_until_ms;
        }
    }
}

/* At a clean stop, before the last positions are saved: joins the pipeline
 * holds go into the ring, so the output can deliver them and the offsets
 * acknowledged then cover their lines (otherwise they are only read again at
 * the next start, and lost if their file is deleted meanwhile). Waits for
 * room in the ring at most output.shutdown_grace.
 *
 * Except in a file a limit (action: wait) paused: its reading stopped at
 * the limit, not at the end of what was written, so the join's next lines
 * may be on disk unread, and sending it now would split the event in two.
 * Its join stays held, so the file stays acknowledged at the join's first
 * line (as after a kill -9) and the next start reads and joins it whole. */
static void flush_held_at_stop(struct collector *c)
{
    int64_t deadline = metrics_now_ms() + c->cfg->output.shutdown_grace_ms;
    size_t flushed = 0, left = 0, paused = 0;
    c->final_flush = true;
    for (struct tailed_file *f = c->all_files; f; f = f->all_next) {
        if (!f->pipe || !pipeline_file_held_bytes(f->pipe)) continue;
        if (f->paused_until_ms) {
            paused++;
            continue;
        }
        for (;;) {
            c->blocked = false;
            if (tail_pipeline_flush(c, f)) {
                flushed++;
                break;
            }
            int64_t wait = deadline - metrics_now_ms();
            if (!c->blocked || wait <= 0) {
                left++;
                break;
            }
            /* The output is still running: it frees room as it sends. */
            if (!ring_has_room(c->ring, c->blocked_want)) {
                struct pollfd room = {.fd = ring_room_fd(c->ring), .events = POLLIN};
                if (poll(&room, 1, wait > 100 ? 100 : (int)wait) < 0 && errno != EINTR) {
                    log_error("waiting for room in the ring at shutdown: %s", strerror(errno));
                    left++;
                    break;
                }
            }
        }
    }
    c->final_flush = false;
    c->blocked = false;
    if (flushed) log_info("sent %zu held multiline join%s at shutdown", flushed, flushed == 1 ? "" : "s");
    if (paused)
        log_info("kept %zu held multiline join%s of files paused by a limit (action: wait) at shutdown: their next "
                 "lines may be unread, so they are read and joined again at the next start",
                 paused, paused == 1 ? "" : "s");
    if (left)
        log_warn("%zu held multiline join%s could not be sent within output.shutdown_grace (the ring stayed full); "
                 "their lines are read again at the next start", left, left == 1 ? "" : "s");
}

static void *collector_main(void *arg)
{
    struct collector *c = arg;
    int64_t last_sweep = 0;
    while (!collector_stopping(c)) {
        metrics_beat(METRICS_THREAD_COLLECTOR);
        /* Asking arms the room descriptor when the answer is no. */
        if (c->blocked && ring_has_room(c->ring, c->blocked_want)) c->blocked = false;
        int watch_fd = c->watcher->ops->fd(c->watcher);
        /* While blocked, the ring's room descriptor wakes the loop the
         * moment the output frees enough: no sleep decides the throughput. */
        struct pollfd fds[3] = {{.fd = c->wake_fd, .events = POLLIN},
                                {.fd = c->blocked ? ring_room_fd(c->ring) : -1, .events = POLLIN},
                                {.fd = watch_fd, .events = POLLIN}};
        int timeout = c->blocked ? IDLE_POLL_MS : c->pending_head ? 0 : IDLE_POLL_MS;
        /* Files waiting for their pod's metadata look for it often (metadata.c). */
        if (c->metadata_waiting && timeout > METADATA_WAIT_POLL_MS) timeout = METADATA_WAIT_POLL_MS;
        if (c->next_resume_ms && !c->pending_head) {
            int64_t wait = c->next_resume_ms - metrics_now_ms();
            if (wait < timeout) timeout = wait < 0 ? 0 : (int)wait;
        }
        int rc = poll(fds, 3, timeout);
        if (rc < 0 && errno != EINTR) {
            log_error("collector poll: %s", strerror(errno));
            break;
        }
        /* A reader of the targets woke us (snapshot.c): clear it, or poll
         * would return at once from now on. */
        uint64_t woken;
        if (rc > 0 && (fds[0].revents & POLLIN) && read(c->wake_fd, &woken, sizeof woken) < 0 && errno != EAGAIN)
            log_warn("collector wake descriptor: %s", strerror(errno));
        /* Events are handled whether or not reading is paused: a file
         * rotated or deleted meanwhile is opened and held now. */
        if (watch_fd >= 0 && (fds[2].revents & POLLIN)) {
            c->watcher->ops->dispatch(c->watcher, c);
            rotation_check_identities(c);
        }
        int64_t now = metrics_now_ms();
        bool polling = watch_fd < 0;
        int64_t rescan_every = polling ? c->cfg->collection.poll_interval_ms : RESCAN_INTERVAL_MS;
        if (now - last_sweep >= c->cfg->collection.poll_interval_ms) {
            periodic_sweep(c, now);
            last_sweep = now;
        }
        if (c->rescan_needed || now - c->last_rescan_ms >= rescan_every) discovery_scan(c, false);
        positions_policy_tick(c, now);
        metadata_tick(c, now);
        snapshot_tick(c, now);
        if (c->blocked && ring_has_room(c->ring, c->blocked_want)) c->blocked = false;
        metrics_set(collector_paused, c->blocked ? 1 : 0);
        resume_paused(c, metrics_now_ms());
        service_pending(c);
    }
    flush_held_at_stop(c);
    return NULL;
}

/* mkdir -p for the positions file's directory (0750: only the agent writes there). */
static int make_parent_dirs(const char *file, char *err, size_t errlen)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", file);
    for (char *p = path + 1; (p = strchr(p, '/')); p++) {
        *p = '\0';
        if (mkdir(path, 0750) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "collection.positions_file: cannot create directory %s: %s", path, strerror(errno));
            return -1;
        }
        *p = '/';
    }
    /* Anyone able to write there could swap the positions file or plant a
     * symlink at its temporary name: refuse rather than trust it. */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", file);
    char *slash = strrchr(dir, '/');
    if (slash) *(slash == dir ? slash + 1 : slash) = '\0';
    struct stat st;
    if (slash && stat(dir, &st) == 0 && (st.st_mode & S_IWOTH)) {
        snprintf(err, errlen, "collection.positions_file: directory %s is world-writable (mode %04o); "
                 "use a directory only loglet can write to", dir, (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}

int collector_start(struct collector *c, char *err, size_t errlen)
{
    if (make_parent_dirs(c->cfg->collection.positions_file, err, errlen) != 0) return -1;
    if (spool_open(c, err, errlen) != 0) return -1;
    if (discovery_setup(c, err, errlen) != 0) return -1;
    c->watcher = c->cfg->collection.watcher == CONFIG_WATCHER_POLL ? watcher_poll_create(err, errlen)
                                                                    : watcher_inotify_create(c, err, errlen);
    if (!c->watcher) return -1;
    log_info("watching files with %s%s", c->watcher->ops->name,
             c->watcher->ops->fd(c->watcher) >= 0 ? "" : " (every collection.poll_interval)");
    positions_policy_load(c);
    discovery_scan(c, true);
    positions_policy_resume_orphans(c);
    spool_sweep(c); /* after every saved position had its chance to claim its link */
    c->scanned = true;
    /* Now, not a sync period later: a crash in the first seconds must find
     * every file known, or it would take them for new ones. */
    positions_policy_save(c);
    metrics_beat(METRICS_THREAD_COLLECTOR);
    int rc = pthread_create(&c->thread, NULL, collector_main, c);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the collector thread: %s", strerror(rc));
        return -1;
    }
    c->thread_started = true;
    atomic_store(&c->watching, true);
    return 0;
}

bool collector_is_watching(struct collector *c) { return atomic_load(&c->watching); }

int collector_save_positions(struct collector *c)
{
    if (c->thread_started) return -1; /* the thread owns the files while it runs */
    if (!c->scanned) return 0;        /* never started: nothing known, keep the old file */
    return positions_policy_save(c);
}

void collector_stop(struct collector *c)
{
    if (!c->thread_started) return;
    atomic_store(&c->stop, true);
    uint64_t one = 1;
    if (write(c->wake_fd, &one, sizeof one) < 0 && errno != EAGAIN)
        log_warn("waking the collector: %s", strerror(errno));
    pthread_join(c->thread, NULL);
    c->thread_started = false;
    atomic_store(&c->watching, false);
}

void collector_destroy(struct collector *c)
{
    if (!c) return;
    collector_stop(c);
    rotation_teardown(c);
    discovery_teardown(c);
    positions_policy_teardown(c);
    spool_close(c);
    snapshot_teardown(c);
    if (c->watcher) c->watcher->ops->destroy(c->watcher);
    pcre2_code_free(c->include_lines);
    pcre2_code_free(c->exclude_lines);
    pcre2_match_data_free(c->match_data);
    pipeline_destroy(c->pipeline);
    if (c->wake_fd >= 0) close(c->wake_fd);
    free(c->buf);
    free(c->docker_buf);
    free(c->scratch);
    free(c->utf8_buf);
    free(c->live_buf);
    free(c);
}

void collector_set_livetail(struct collector *c, struct livetail *hub) { c->livetail = hub; }
