/*
 * The positions policy: where a file found at start begins, and when the
 * acknowledged offsets are written down.
 *
 * Where a file begins:
 *  - First start (no positions file): files present now begin at
 *    collection.read_from (end by default); files appearing later at 0.
 *  - Later starts: a file the positions file lists resumes at its
 *    acknowledged offset — in a rotated (maybe compressed) sibling if it was
 *    rotated meanwhile, then through the newer siblings. A file it does not
 *    list is new: it is read from its beginning, with the rotated siblings
 *    no entry covers. read_from no longer applies.
 *  - An unreadable positions file is kept aside and every file is read from
 *    its beginning: duplicates rather than loss.
 *  One log line at start says which rule applies.
 *
 * When positions are written (atomically, see positions.c):
 *  - right after the start-up scan, so that a crash within the first
 *    seconds already knows every file;
 *  - within POSITIONS_DEBOUNCE_MS of a file being opened, rotated or closed;
 *  - every positions_sync_period when an acknowledged offset moved —
 *    including while reading is paused by back-pressure or an outage (the
 *    loop never blocks);
 *  - at shutdown, after the output finished.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "collector_internal.h"
#include "log/log.h"
#include "metrics/metrics.h"

#define POSITIONS_DEBOUNCE_MS 250

struct saved_range {
    size_t first, count; /* indexes into collector.saved, sorted by path */
    bool used;           /* a file at this path was found at start */
};

static int compare_positions(const void *a, const void *b)
{
    return strcmp(((const struct position *)a)->path, ((const struct position *)b)->path);
}

void positions_policy_load(struct collector *c)
{
    const char *file = c->cfg->collection.positions_file;
    char err[1024];
    bool from_end = c->cfg->collection.read_from == CONFIG_READ_FROM_END;
    if (access(file, F_OK) != 0 && errno == ENOENT) {
        log_info("no positions file at %s: first start, files present now are read from their %s "
                 "(collection.read_from: %s); files that appear later from their beginning",
                 file, from_end ? "end" : "beginning", from_end ? "end" : "beginning");
        return;
    }
    if (positions_read(file, &c->saved, err, sizeof err) != 0) {
        char aside[PATH_MAX];
        snprintf(aside, sizeof aside, "%s.corrupt", file);
        bool moved = rename(file, aside) == 0;
        log_error("positions file unusable: %s; every file present now is read from the beginning (duplicates "
                  "rather than loss)%s%s",
                  err, moved ? "; the bad file was kept as " : "", moved ? aside : "");
        c->positions_lost = true;
        return;
    }
    c->positions_existed = true;
    if (c->saved.count) qsort(c->saved.items, c->saved.count, sizeof *c->saved.items, compare_positions);
    for (size_t i = 0; i < c->saved.count;) {
        size_t j = i + 1;
        while (j < c->saved.count && strcmp(c->saved.items[j].path, c->saved.items[i].path) == 0) j++;
        struct saved_range *range = malloc(sizeof *range);
        if (!range || table_put_str(&c->saved_by_path, c->saved.items[i].path, range) != 0) {
            free(range);
            log_error("out of memory loading positions: files without theirs are read from the beginning");
            break;
        }
        *range = (struct saved_range){.first = i, .count = j - i};
        i = j;
    }
    log_info("loaded %zu positions from %s: listed files resume where they were acknowledged; files it does not "
             "list are new and read from their beginning, rotated files included",
             c->saved.count, file);
}

/* A saved path that no glob match names any more: its link went while
 * loglet was down (a pod deleted, say). Its files may still be there — the
 * kubelet keeps a deleted pod's logs for a while — so what they hold past
 * the saved offsets is read now; files already gone are said and counted,
 * since they may have held lines not yet delivered. */
/* The entry of the path's current file: the one whose name is shortest
 * (0.log beside 0.log.<stamp>). A file renamed while loglet ran keeps its
 * old name in its entry, so among equal names the one still found at its
 * name wins, then one not marked renamed (a tie lost to the rotated entry
 * left the current file unread). */
static const struct position *current_entry(const struct position *known, size_t n)
{
    const struct position *base = NULL;
    size_t base_len = 0;
    int base_rank = -1;
    for (size_t k = 0; k < n; k++) {
        size_t len = strlen(known[k].real_path);
        if (base && len > base_len) continue;
        struct stat st;
        int rank = (stat(known[k].real_path, &st) == 0 && known[k].dev == (uint64_t)st.st_dev &&
                    known[k].ino == (uint64_t)st.st_ino) * 2 + !known[k].renamed;
        if (!base || len < base_len || rank > base_rank) {
            base = &known[k];
            base_len = len;
            base_rank = rank;
        }
    }
    return base;
}

static void resume_orphan(struct collector *c, struct saved_range *range)
{
    const struct position *known = &c->saved.items[range->first];
    /* The scan found the link dangling (between the kubelet's rename and the
     * runtime's reopen) and the new file has come since: resume the path as
     * the scan would have. Read as an orphan instead, the new file was left
     * to a rescan that found it as a new path at offset 0, after it had
     * rotated away unread (found by the crash loop: a whole file lost). */
    char real[PATH_MAX];
    if (discovery_matches(c, known->path) && realpath(known->path, real)) {
        discovery_open(c, known->path, true, NULL);
        if (table_get_str(&c->files_by_path, known->path)) return;
        /* Its pod is excluded now (annotated while loglet was down): its
         * link is there, so it is no orphan, and not to be read. */
        if (discovery_excluded_by_annotation(c, known->path)) {
            range->used = true;
            return;
        }
    }
    range->used = true;
    const struct position *base = current_entry(known, range->count);
    int fd;
    gzFile gz;
    struct stat st;
    bool there = catchup_open_any(base->real_path, &fd, &gz, &st);
    bool same = there && !gz && base->dev == (uint64_t)st.st_dev && base->ino == (uint64_t)st.st_ino &&
                rotation_fingerprint_matches(fd, NULL, base->fp, base->fp_len);
    /* Rotated siblings: when other files were held, or the file itself was
     * rotated away meanwhile (catch-up then says whether it is gone). */
    struct tailed_file *last = NULL;
    if (range->count > 1 || !same) last = catchup_open(c, base->path, base->real_path, known, range->count, false, same ? base : NULL, NULL);
    struct stat link_st;
    bool link_lives = lstat(base->path, &link_st) == 0;
    if (!there && !link_lives && (base->renamed || catchup_was_rotated(base))) {
        /* Renamed (seen by the last run, or found rotated now), so the
         * runtime most likely opened a new file at its path; that file,
         * never opened by loglet, went with the link (the kubelet removes a
         * dead container's logs when it restarts again, or the pod went):
         * its lines, if it had any, are lost. */
        metrics_add(files_missed, 1);
        log_warn("%s (%s): rotated, and the file that followed it was deleted while loglet was down, never read: "
                 "its lines, if any, are lost (loglet_files_missed_total)",
                 base->path, base->real_path);
    }
    if (!there && link_lives) {
        /* The link is there but names nothing: loglet started between the
         * kubelet's rename and the runtime's reopen. The last file of the
         * chain waits (as after a live rotation) for the new one, opened at
         * its directory's next event; a rescan that finds it first goes on
         * from that file too, so what rotated in between is not skipped. */
        if (last) {
            last->successor_opened = false;
            last->draining_since_ms = metrics_now_ms();
        } else {
            rotation_await_successor(c, base->path, base);
        }
    }
    struct tailed_file *f = NULL;
    if (same && base->offset < (uint64_t)st.st_size)
        f = rotation_track(c, base->path, base->real_path, fd, NULL, &st, base->offset);
    if (!f) {
        if (there && gz) gzclose(gz);
        if (there) close(fd);
        return;
    }
    if (last) {
        last->successor = f;
        f->waiting = true;
    }
    rotation_begin_draining(c, f, "its link was removed while loglet was down");
    f->draining_since_ms = 0;
    f->successor_opened = true;
    log_info("reading the rest of %s (%s) from offset %llu: its link was removed while loglet was down", base->path,
             base->real_path, (unsigned long long)base->offset);
}

void positions_policy_resume_orphans(struct collector *c)
{
    size_t cursor = 0;
    for (struct saved_range *range; (range = table_next(&c->saved_by_path, &cursor));)
        if (!range->used && !table_get_str(&c->files_by_path, c->saved.items[range->first].path)) resume_orphan(c, range);
}

bool positions_policy_known(struct collector *c, const char *link_path)
{
    return table_get_str(&c->saved_by_path, link_path) != NULL;
}

const struct position *positions_policy_saved_entry(struct collector *c, const char *link_path)
{
    const struct saved_range *range = table_get_str(&c->saved_by_path, link_path);
    return range ? current_entry(&c->saved.items[range->first], range->count) : NULL;
}

void positions_policy_free_saved(struct collector *c)
{
    size_t cursor = 0;
    for (void *range; (range = table_next(&c->saved_by_path, &cursor));) free(range);
    table_free(&c->saved_by_path);
    positions_free(&c->saved);
}

uint64_t positions_policy_resume(struct collector *c, const char *link_path, const char *real, int fd,
                                 const struct stat *st, struct tailed_file **predecessor)
{
    *predecessor = NULL;
    struct saved_range *range = table_get_str(&c->saved_by_path, link_path);
    if (range) range->used = true;
    if (!range) {
        if (c->positions_existed || c->positions_lost) {
            /* New since the positions were written: all of it, oldest first. */
            *predecessor = catchup_open(c, link_path, real, NULL, 0, false, NULL, NULL);
            return 0;
        }
        return c->cfg->collection.read_from == CONFIG_READ_FROM_END ? (uint64_t)st->st_size : 0;
    }
    const struct position *current = NULL;
    bool others = false;
    for (size_t k = range->first; k < range->first + range->count; k++) {
        const struct position *p = &c->saved.items[k];
        bool same = p->dev == (uint64_t)st->st_dev && p->ino == (uint64_t)st->st_ino;
        if (!current && same && rotation_fingerprint_matches(fd, NULL, p->fp, p->fp_len)) current = p;
        else others = true;
    }
    if (others || !current)
        *predecessor = catchup_open(c, link_path, real, &c->saved.items[range->first], range->count, false, current, NULL);
    if (!current) return 0; /* created while loglet was stopped: all of it is new */
    if (current->offset > (uint64_t)st->st_size) {
        log_warn("%s shrank below its saved offset (%llu > %lld) while loglet was stopped: reading it from the start",
                 link_path, (unsigned long long)current->offset, (long long)st->st_size);
        metrics_add(truncations, 1);
        return 0;
    }
    return current->offset;
}

void positions_policy_dirty(struct collector *c)
{
    if (!c->positions_dirty_since_ms) c->positions_dirty_since_ms = metrics_now_ms();
}

void follows_clear(struct tailed_file *f)
{
    free(f->follows.path);
    free(f->follows.real_path);
    memset(&f->follows, 0, sizeof f->follows);
}

/* A rotated file delivered to its end leaves the positions file; if the
 * current file of its path is still empty, it is kept as that file's
 * `follows` entry (see struct tailed_file). */
static void follows_remember(struct collector *c, const struct source *src)
{
    struct tailed_file *cur = table_get_str(&c->files_by_path, src->path);
    if (!cur || cur->src == src || (cur->src->dev == src->dev && cur->src->ino == src->ino)) return;
    if (cur->src->fp_len < POSITIONS_FP_MAX) rotation_take_fingerprint(cur);
    if (cur->src->fp_len > 0 || !src->fp_len) return;
    char *path = strdup(src->path), *real = strdup(src->real_path);
    if (!path || !real) {
        free(path);
        free(real);
        log_error("out of memory saving the position of %s: a restart may send it again", src->real_path);
        return;
    }
    follows_clear(cur);
    cur->follows = (struct position){.path = path, .real_path = real, .dev = (uint64_t)src->dev,
                                     .ino = (uint64_t)src->ino, .fp = src->fp, .fp_len = src->fp_len,
                                     .offset = atomic_load(&src->acked_offset), .done = true};
}

/* A closed file whose lines are still in flight keeps its position in the
 * positions file until they are delivered. */
void positions_policy_retire(struct collector *c, struct source *src)
{
    if (atomic_load(&src->refs) == 1) {
        follows_remember(c, src);
        spool_forget(c, src);
        source_unref(src);
        return;
    }
    if (c->nretired == c->retired_cap) {
        size_t cap = c->retired_cap ? c->retired_cap * 2 : 16;
        struct source **grown = realloc(c->retired, cap * sizeof *grown);
        if (!grown) {
            log_error("out of memory: the position of %s is not kept until its last lines are delivered", src->path);
            source_unref(src);
            return;
        }
        c->retired = grown;
        c->retired_cap = cap;
    }
    c->retired[c->nretired++] = src;
}

static int add_position(struct positions *ps, struct source *src, bool done, bool renamed)
{
    struct position p = {
        .path = src->path, .real_path = src->real_path, .dev = (uint64_t)src->dev, .ino = (uint64_t)src->ino,
        .fp = src->fp, .fp_len = src->fp_len,
        .offset = atomic_load_explicit(&src->acked_offset, memory_order_acquire), .done = done, .renamed = renamed,
    };
    return positions_add(ps, &p);
}

int positions_policy_save(struct collector *c)
{
    struct positions ps = {0};
    int rc = 0;
    /* Closed files first: one delivered meanwhile may become the `follows`
     * entry of its path's current file, written below in this same save. */
    size_t kept = 0;
    for (size_t i = 0; i < c->nretired; i++) {
        struct source *src = c->retired[i];
        if (atomic_load(&src->refs) == 1) { /* every chunk delivered: nothing left to resume */
            follows_remember(c, src);
            spool_forget(c, src);
            source_unref(src);
            continue;
        }
        c->retired[kept++] = src;
        if (rc == 0 && !src->relabelled) rc = add_position(&ps, src, false, false);
    }
    c->nretired = kept;
    for (struct tailed_file *f = c->all_files; f && rc == 0; f = f->all_next) {
        if (f->src->fp_len < POSITIONS_FP_MAX) rotation_take_fingerprint(f); /* it may have grown */
        /* A rotated file delivered to its end has nothing to resume. It is
         * left out when a newer file of its path is saved too; otherwise
         * (renamed, not recreated yet; its pod deleted) it is the path's
         * only entry, kept so the path is not taken for a new one, and
         * marked done so its deletion is not taken for a loss. */
        struct stat st;
        bool done = f->state == FILE_DRAINING && !f->gz && fstat(f->fd, &st) == 0 &&
                    atomic_load(&f->src->acked_offset) >= (uint64_t)st.st_size;
        if (done && f->successor) {
            struct tailed_file *next = f->successor;
            if (next->src->fp_len < POSITIONS_FP_MAX) rotation_take_fingerprint(next);
            if (next->src->fp_len > 0) continue; /* the newer file identifies itself */
        }
        struct stat link_st;
        bool renamed = f->state == FILE_DRAINING && !f->successor && !f->successor_opened &&
                       !table_get_str(&c->files_by_path, f->src->path) && lstat(f->src->path, &link_st) == 0;
        rc = add_position(&ps, f->src, done, renamed);
        if (rc == 0 && f->follows.real_path) {
            if (f->src->fp_len > 0) follows_clear(f);
            else rc = positions_add(&ps, &f->follows);
        }
    }
    if (rc == 0) rc = rotation_save_awaited(c, &ps);
    if (rc == 0) rc = discovery_save_excluded(c, &ps);
    char err[1024];
    if (rc != 0) {
        log_error("out of memory saving positions");
    } else if ((rc = positions_write(c->cfg->collection.positions_file, &ps, err, sizeof err)) != 0) {
        log_error("saving positions: %s", err);
    }
    metrics_add(positions_writes, 1);
    if (rc != 0) metrics_add(positions_errors, 1);
    positions_free(&ps);
    c->last_positions_save_ms = metrics_now_ms();
    if (rc == 0) c->positions_dirty_since_ms = 0;
    return rc;
}

/* Something to write: files changed, or an acknowledged offset moved. */
static uint64_t acked_checksum(const struct collector *c)
{
    uint64_t sum = c->nfiles * 0x9E3779B97F4A7C15ULL + c->nretired;
    for (const struct tailed_file *f = c->all_files; f; f = f->all_next)
        sum = sum * 31 + atomic_load_explicit(&f->src->acked_offset, memory_order_relaxed) + (uint64_t)f->src->ino;
    for (size_t i = 0; i < c->nretired; i++)
        sum = sum * 31 + atomic_load_explicit(&c->retired[i]->acked_offset, memory_order_relaxed) +
              atomic_load_explicit(&c->retired[i]->refs, memory_order_relaxed);
    return sum;
}

void positions_policy_tick(struct collector *c, int64_t now)
{
    uint64_t *last_sum = &c->positions_last_sum;
    if (c->positions_dirty_since_ms && now - c->positions_dirty_since_ms >= POSITIONS_DEBOUNCE_MS) {
        if (positions_policy_save(c) == 0) *last_sum = acked_checksum(c);
        return;
    }
    if (now - c->last_positions_save_ms < c->cfg->collection.positions_sync_period_ms) return;
    uint64_t sum = acked_checksum(c);
    if (sum == *last_sum) {
        c->last_positions_save_ms = now;
        return;
    }
    if (positions_policy_save(c) == 0) *last_sum = sum;
}

void positions_policy_teardown(struct collector *c)
{
    for (size_t i = 0; i < c->nretired; i++) {
        /* Delivered: its link goes. Not delivered (the output gave up at
         * shutdown): the link keeps the file for the next start. */
        if (atomic_load(&c->retired[i]->refs) == 1) spool_forget(c, c->retired[i]);
        source_unref(c->retired[i]);
    }
    free(c->retired);
    c->retired = NULL;
    c->nretired = 0;
    positions_policy_free_saved(c);
}
