/*
 * Metadata: when a file's labels are decided, and when they change.
 *
 * A source's labels are rendered when it is created, with what the metadata
 * provider knows then (source_render_labels). Two things make the collector
 * come back to them, never per line:
 *  - A new file whose pod the provider does not know yet, while its watch is
 *    up (the kubelet wrote before the API server's event reached us), is
 *    opened but not read for up to kubernetes.wait_for_metadata. Other files
 *    go on meanwhile; when the pod appears, or the time is up, the file gets
 *    a fresh source with what is known and is read from where it was.
 *  - When the provider's generation moves (a pod was added, changed or
 *    deleted), every active file is described again; one whose labels differ
 *    gets a new source, as after a copytruncate. The old source stays as it
 *    was for the chunks in flight (a sink may be reading its label text), is
 *    retired and not saved, and the new one starts from the old one's
 *    acknowledged offset, so a crash in between repeats lines, never skips
 *    them. A pod that disappeared changes nothing: its files keep the labels
 *    they had to their last line.
 *  - An annotation that excludes a file is honoured when the file is found
 *    (discovery asks metadata_excluded), when its wait ends, and when it is
 *    added to the pod of a file already open (the file is closed where it
 *    is, like any other: what was read goes out; its position stays in the
 *    positions file marked excluded, so that a restart while the API server
 *    is down resumes it there instead of sending all of it, and a restart
 *    that finds it still excluded keeps it). When the exclusion is lifted,
 *    the file is opened again at its end: the lines written while it was
 *    excluded are not wanted. A restart cannot tell when it was lifted, so
 *    it resumes where it was excluded: duplicates rather than loss.
 */
#include <stdlib.h>
#include <string.h>

#include "collector_internal.h"
#include "output/livetail.h"
#include "log/log.h"
#include "metrics/metrics.h"

void collector_use_metadata(struct collector *c, struct metadata_provider *provider)
{
    c->label_policy.metadata = provider;
    c->metadata_generation = provider ? provider->ops->generation(provider) : 0;
}

void metadata_file_opened_or_closed(struct collector *c, const struct tailed_file *f, bool open)
{
    struct metadata_provider *p = c->label_policy.metadata;
    if (p && p->ops->file_opened_or_closed) p->ops->file_opened_or_closed(p, &f->src->meta, open);
}

bool metadata_excluded(struct collector *c, const struct parser_path_meta *meta, bool was_excluded, const char **why)
{
    struct metadata_provider *p = c->label_policy.metadata;
    if (!p) return false;
    struct metadata_labels *m = NULL;
    enum metadata_status st = p->ops->describe(p, meta, &m);
    bool excluded = st == METADATA_FOUND ? m && m->excluded : was_excluded;
    static char reason[160];
    if (excluded && st == METADATA_FOUND)
        snprintf(reason, sizeof reason, "%s", m->why_excluded ? m->why_excluded : "annotation");
    else if (excluded)
        snprintf(reason, sizeof reason, "its pod was excluded and is not known any more");
    *why = reason;
    free(m);
    return excluded;
}

void metadata_track(struct collector *c, struct tailed_file *f)
{
    if (!c->label_policy.metadata) return;
    enum metadata_status st = f->src->extra_status;
    bool excluded = f->src->extra && f->src->extra->excluded;
    if (st == METADATA_PENDING && c->cfg->kubernetes.wait_for_metadata_ms > 0) {
        f->metadata_wait_until_ms = metrics_now_ms() + c->cfg->kubernetes.wait_for_metadata_ms;
        c->metadata_waiting++;
        log_debug("%s: pod %s/%s not known yet, waiting up to %lld ms for its metadata", f->src->path,
                  f->src->meta.namespace_, f->src->meta.pod, (long long)c->cfg->kubernetes.wait_for_metadata_ms);
    } else if (excluded) {
        /* A rotated sibling found with its file: closed at the next tick. */
        f->metadata_wait_until_ms = 1;
        c->metadata_waiting++;
    } else if (st != METADATA_FOUND) {
        metrics_add(files_without_metadata, 1);
    }
}

static struct pipeline_meta pipeline_meta_of(const struct source *src)
{
    return (struct pipeline_meta){src->meta.namespace_, src->meta.pod, src->meta.container,
                                  src->extra ? src->extra->pod_labels : NULL, src->extra ? src->extra->npod_labels : 0};
}

static bool block_of(struct collector *c, const struct source *src, size_t *block)
{
    struct pipeline_meta pm = pipeline_meta_of(src);
    return pipeline_choose(c->pipeline, &pm, block);
}

bool metadata_pipeline_changes(struct collector *c, const struct tailed_file *f, const struct source *fresh)
{
    size_t block;
    bool any = block_of(c, fresh, &block);
    if (!f->pipe) return any;
    return !any || block != pipeline_file_block(f->pipe);
}

bool metadata_choose_pipeline(struct collector *c, struct tailed_file *f)
{
    const char *labels = source_stream_labels(f->src, 0);
    uint64_t identity = pipeline_hash(0, labels, strlen(labels));
    if (!metadata_pipeline_changes(c, f, f->src)) {
        if (f->pipe) pipeline_file_set_identity(f->pipe, identity);
        return true;
    }
    if (f->pipe) {
        if (!tail_pipeline_flush(c, f)) return false; /* its join goes out under the stages that held it */
        pipeline_file_free(f->pipe);
        f->pipe = NULL;
        f->paused_until_ms = 0;
    }
    bool oom = false;
    struct pipeline_meta pm = pipeline_meta_of(f->src);
    f->pipe = pipeline_file_new(c->pipeline, &pm, &oom);
    if (oom) log_error("out of memory: %s is tailed without its pipeline stages", f->src->path);
    if (f->pipe) pipeline_file_set_identity(f->pipe, identity);
    return true;
}

/* A source like f's with what the provider knows now; NULL on failure (said). */
static struct source *fresh_source(struct collector *c, struct tailed_file *f)
{
    struct source *old = f->src;
    struct source *src = source_new(old->path, old->real_path, &old->meta, old->dev, old->ino);
    if (!src) {
        log_error("out of memory relabelling %s", old->path);
        return NULL;
    }
    char err[512];
    if (source_render_labels(src, &c->label_policy, err, sizeof err) != 0) {
        log_error("keeping the labels of %s: %s", old->path, err);
        source_unref(src);
        return NULL;
    }
    src->fp = old->fp;
    src->fp_len = old->fp_len;
    atomic_store(&src->acked_offset, atomic_load(&old->acked_offset));
    return src;
}

static bool same_labels(const struct source *a, const struct source *b)
{
    for (unsigned k = 0; k < SOURCE_STREAM_KINDS; k++)
        if (strcmp(source_stream_labels(a, k), source_stream_labels(b, k)) != 0) return false;
    return true;
}

/* False when f's pipeline must change and its held join cannot go out now
 * (no room in the ring): nothing changed, f is tried again later. */
static bool swap_source(struct collector *c, struct tailed_file *f, struct source *fresh)
{
    struct source *old = f->src;
    /* A join held under the old stages goes out with the old labels. */
    if (f->pipe && metadata_pipeline_changes(c, f, fresh) && !tail_pipeline_flush(c, f)) return false;
    if (f->in_path_index) table_del_str(&c->files_by_path, old->path);
    old->relabelled = true;
    spool_handover(old, fresh); /* the same file: its link stays */
    positions_policy_retire(c, old);
    livetail_source_open(c->livetail, fresh);
    livetail_source_close(c->livetail, old);
    f->src = fresh;
    if (f->in_path_index && table_put_str(&c->files_by_path, f->src->path, f) != 0) {
        log_error("out of memory indexing %s", f->src->path);
        f->in_path_index = false;
        rotation_begin_draining(c, f, "out of memory");
    }
    metadata_choose_pipeline(c, f); /* nothing is held any more: settles */
    return true;
}

/* Excluded once its pod was known, or since: out, and not found again
 * while it is (discovery asks); when the exclusion is lifted, discovery
 * opens it at its end (discovery_recheck_excluded). `why` comes from the
 * description that excluded it. */
static void close_excluded(struct collector *c, struct tailed_file *f, const char *why)
{
    if (!discovery_excluded_by_annotation(c, f->src->path)) metrics_add(files_excluded, 1);
    discovery_report_once(c, f->src->path, DISCOVERY_EXCLUDED_BY_ANNOTATION, "not tailing %s (%s) from offset %llu "
                          "on: %s", f->src->path, f->src->real_path, (unsigned long long)f->offset, why);
    /* A predecessor waiting to hand over to f hands over to f's successor instead. */
    for (struct tailed_file *g = c->all_files; g; g = g->all_next) {
        if (g->successor != f) continue;
        g->successor = f->successor;
        f->successor = NULL;
    }
    /* Where it stops is kept (positions: excluded), so that a restart
     * while the API server is down resumes here, not at its beginning. */
    if (f->src->fp_len < POSITIONS_FP_MAX) rotation_take_fingerprint(f);
    struct position at = {.path = f->src->path, .real_path = f->src->real_path, .dev = (uint64_t)f->src->dev,
                          .ino = (uint64_t)f->src->ino, .fp = f->src->fp, .fp_len = f->src->fp_len, .offset = f->offset};
    discovery_note_excluded_at(c, f->src->path, &at);
    positions_policy_dirty(c);
    rotation_close(c, f);
}

/* Returns true while f still waits (f may be closed otherwise). */
static bool end_wait(struct collector *c, struct tailed_file *f, int64_t now)
{
    struct source *fresh = fresh_source(c, f);
    if (fresh && fresh->extra_status == METADATA_PENDING && now < f->metadata_wait_until_ms) {
        source_unref(fresh); /* still unknown, time left */
        return true;
    }
    f->metadata_wait_until_ms = 0;
    if (fresh && !swap_source(c, f, fresh)) source_unref(fresh); /* not read yet: holds nothing */
    if (f->src->extra_status != METADATA_FOUND && f->src->extra && f->src->extra->why_incomplete) {
        /* Known in part (the pod, not its namespace): sent with that; a
         * later answer relabels it, or closes it if it is excluded. */
        metrics_add(files_without_metadata, 1);
        log_info("%s: the metadata of pod %s/%s is still incomplete after %lld ms (%s): sending its lines with what "
                 "is known, until the rest arrives", f->src->path, f->src->meta.namespace_, f->src->meta.pod,
                 (long long)c->cfg->kubernetes.wait_for_metadata_ms, f->src->extra->why_incomplete);
    } else if (f->src->extra_status != METADATA_FOUND) {
        metrics_add(files_without_metadata, 1);
        log_info("%s: pod %s/%s still not known after %lld ms: sending its lines with path labels", f->src->path,
                 f->src->meta.namespace_, f->src->meta.pod, (long long)c->cfg->kubernetes.wait_for_metadata_ms);
    }
    if (f->src->extra && f->src->extra->excluded) {
        close_excluded(c, f, f->src->extra->why_excluded ? f->src->extra->why_excluded : "excluded");
        return false;
    }
    collector_mark_pending(c, f);
    return false;
}

void metadata_tick(struct collector *c, int64_t now)
{
    struct metadata_provider *p = c->label_policy.metadata;
    if (!p) return;
    uint64_t gen = p->ops->generation(p);
    bool changed = gen != c->metadata_generation;
    if (!changed && !c->metadata_waiting) return;
    c->metadata_generation = gen;
    bool retry = false;
    /* Counted afresh: a waiting file may also have been closed elsewhere
     * (released over collection.max_held_*). */
    size_t waiting = 0;
    for (struct tailed_file *f = c->all_files, *next; f; f = next) {
        next = f->all_next; /* f may be closed */
        if (f->metadata_wait_until_ms) {
            bool still = !(changed || now >= f->metadata_wait_until_ms) || end_wait(c, f, now);
            waiting += still;
            continue;
        }
        if (!changed) continue;
        /* Described in full before: only a change to its own pod (or
         * namespace) can change its labels. Otherwise (the API server was
         * down, the pod unknown) any change may be the one it needs. A file
         * draining (rotated away) is looked at only for an exclusion. */
        bool found = f->src->extra_status == METADATA_FOUND;
        if (found && !p->ops->changed_since(p, &f->src->meta, f->src->described_generation)) continue;
        if (f->state != FILE_ACTIVE && !found) continue;
        struct source *fresh = fresh_source(c, f);
        if (!fresh) continue;
        if (fresh->extra_status == METADATA_FOUND && fresh->extra && fresh->extra->excluded) {
            /* Excluded since it was opened: it stops here. Its lines read
             * so far go out; its position leaves the positions file once
             * they are delivered, like any closed file's. */
            char why[160];
            snprintf(why, sizeof why, "%s", fresh->extra->why_excluded ? fresh->extra->why_excluded : "excluded");
            source_unref(fresh);
            close_excluded(c, f, why);
            continue;
        }
        bool relabel = !same_labels(fresh, f->src), restage = metadata_pipeline_changes(c, f, fresh);
        if (f->state != FILE_ACTIVE || fresh->extra_status != METADATA_FOUND || (!relabel && !restage)) {
            source_unref(fresh);
            continue;
        }
        if (!swap_source(c, f, fresh)) {
            source_unref(fresh);
            retry = true; /* its join waits for room in the ring */
            continue;
        }
        if (relabel)
            log_info("%s: the pod's metadata changed, new lines are labelled %s", f->src->path, source_stream_labels(f->src, 0));
        if (restage && f->pipe)
            log_info("%s: the pod's metadata changed, its lines now go through pipeline match block %zu", f->src->path,
                     pipeline_file_block(f->pipe));
        else if (restage)
            log_info("%s: the pod's metadata changed, no pipeline match block applies any more", f->src->path);
    }
    c->metadata_waiting = waiting;
    /* Looked at again next turn, as if the generation had moved. */
    if (retry) c->metadata_generation = gen - 1;
    /* Files an annotation kept out: opened (at their end) once it is lifted. */
    if (changed) discovery_recheck_excluded(c);
}
