/*
 * pipeline — declarative processing of a file's lines between line assembly
 * (collector/tail.c) and the ring: multiline joins, json / logfmt / regex
 * extraction, labels from an allow-list, structured metadata, drops, rate
 * limits, line rewriting and timestamps, chosen per namespace, pod or
 * container by the first `match` block that applies.
 *
 * Contract:
 *  - pipeline_create() compiles cfg->pipeline once: every regex (PCRE2, JIT)
 *    and its match data, globs, allow-lists, scratch buffers. A bad block
 *    fails it with "FILE:LINE: key pipeline[B].stages[S].KIND.KEY: why".
 *  - A file whose metadata no block matches gets no state (NULL) and costs
 *    nothing. One that matches gets a pipeline_file, bounded by its block's
 *    configuration (a multiline join holds at most max_bytes / max_lines).
 *  - pipeline_process() takes one assembled record and passes 0, 1 or 2
 *    entries to `emit` (a held join ending, the line itself). `emit` may
 *    refuse (no room in the ring); then pipeline_process() returns false and
 *    the file's held state is what it was before the call, so reading the
 *    line again later gives the same result. No allocation, no syscall per
 *    line; the join buffer grows geometrically up to max_bytes.
 *  - Delivery: while a join is held, pipeline_file_ack_limit() is the file
 *    offset where its first line starts, and the collector never
 *    acknowledges past it: a crash re-reads the held lines. A dropped line
 *    is reported to the caller (counted here by stage and reason) and is
 *    acknowledged like a delivered one.
 *  - limit with action: wait never holds a line: the line that empties the
 *    bucket goes through, and pipeline_file_paused() tells the collector to
 *    read nothing more of that file until the bucket has a token again.
 *  - One thread uses a pipeline (the collector's); counters are atomics,
 *    rendered by pipeline_render_metrics() from any thread.
 */
#ifndef LOGLET_PIPELINE_H
#define LOGLET_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config/config.h"

struct pipeline;
struct pipeline_file;

struct loki_label;

/* What a match block can test: the path's names and, with Kubernetes
 * metadata, the pod's labels (keys as Kubernetes has them; none: no pod
 * labels known, and a block with pod_labels does not apply). */
struct pipeline_meta {
    const char *namespace_;
    const char *pod;
    const char *container;
    const struct loki_label *pod_labels;
    size_t npod_labels;
};

/* One entry leaving the pipeline. `extras`, when extras_len > 0, is the
 * record's extras block (source.h: pipeline labels and structured metadata). */
struct pipeline_entry {
    char *line;
    size_t len;
    int64_t ts_ns;
    uint8_t stream;
    uint8_t flags; /* enum source_record_flags */
    const char *extras;
    size_t extras_len;
    /* A join begun in a rotated file that has since closed: that file's
     * source (opaque here) and the offset it is acknowledged to once this
     * entry is delivered. The emitter takes over the reference. NULL: the
     * entry belongs to the file being read. */
    void *origin;
    uint64_t origin_end;
};

/* Writes an entry out; false: no room now (nothing was written). */
typedef bool (*pipeline_emit_fn)(void *ctx, const struct pipeline_entry *e);

/* NULL with err set on a configuration error or out of memory. A
 * configuration without `pipeline:` gives a pipeline with no blocks. */
struct pipeline *pipeline_create(const struct config *cfg, char *err, size_t errlen);
void pipeline_destroy(struct pipeline *p);
bool pipeline_empty(const struct pipeline *p);
/* Prints the effective pipeline (every default filled in) as YAML, each
 * line after `prefix` ("# " to keep it beside config_print's output). */
void pipeline_print(const struct pipeline *p, FILE *out, const char *prefix);
/* Makes /metrics show this pipeline's counters (NULL: none). */
void pipeline_publish_metrics(struct pipeline *p);
size_t pipeline_render_metrics(char *buf, size_t cap);
/* Most bytes an entry's extras block takes (so callers can reserve room). */
size_t pipeline_extras_max(const struct pipeline *p);

/* The state of a file the first matching block applies to; NULL when none
 * applies (or out of memory: then `*oom` is set and the file is tailed
 * without stages, logged by the caller). */
struct pipeline_file *pipeline_file_new(struct pipeline *p, const struct pipeline_meta *meta, bool *oom);
void pipeline_file_free(struct pipeline_file *pf);
/* Which block pipeline_file_new() would choose: false when none applies
 * (or it has no stages). */
bool pipeline_choose(const struct pipeline *p, const struct pipeline_meta *meta, size_t *block);
/* The index of the block in the configuration. */
size_t pipeline_file_block(const struct pipeline_file *pf);
/* What tells the file's streams from another file's: a hash of its own
 * labels, for labels.max_pipeline_streams (files with the same labels, a
 * rotated file and the next, share their streams). 0 until set. */
void pipeline_file_set_identity(struct pipeline_file *pf, uint64_t identity);
/* FNV-1a, 64 bits: a label text's identity. */
uint64_t pipeline_hash(uint64_t seed, const char *s, size_t len);

/* The time for the entries that follow (one read's worth): monotonic ms
 * for timeouts and rate limits, realtime ns for older_than. Without it the
 * clocks are read for each entry. */
void pipeline_set_clock(struct pipeline *p, int64_t mono_ms, int64_t real_ns);

/* One record of the file: its content, timestamp, stream kind and flags, and
 * `line_start`, the file offset where its line begins. On return *dropped
 * is true when a stage dropped it. */
bool pipeline_process(struct pipeline_file *pf, const char *content, size_t len, int64_t ts_ns, uint8_t stream,
                      uint8_t flags, uint64_t line_start, pipeline_emit_fn emit, void *ctx, bool *dropped);

/* The offset past which the file must not be acknowledged, or UINT64_MAX
 * when nothing is held. */
uint64_t pipeline_file_ack_limit(const struct pipeline_file *pf);
/* True when a held join has waited its timeout (monotonic ms). */
bool pipeline_file_due(const struct pipeline_file *pf, int64_t now_ms);
/* Sends what is held (the join ends here). False: emit refused; still held. */
bool pipeline_file_flush(struct pipeline_file *pf, pipeline_emit_fn emit, void *ctx);
/* The bytes a flush may need in the ring (0: nothing held). */
size_t pipeline_file_held_bytes(const struct pipeline_file *pf);
/* limit, action wait: the file is not to be read before *until_ms. now_ms
 * 0: read the clock only if a stage of the block can pause (the hot loop
 * asks after every line). */
bool pipeline_file_paused(const struct pipeline_file *pf, int64_t now_ms, int64_t *until_ms);
/* A rotated file closes while a join is held: the next file of the same
 * path (same block) takes the join over, with `origin` (a reference the
 * pipeline now owns) and `origin_end`, handed back in the entry when the
 * join goes out; `to` acknowledges nothing past `to_offset` (where its
 * reading starts) until then. False when `to` cannot take it (nothing
 * changed). */
bool pipeline_file_handoff(struct pipeline_file *from, struct pipeline_file *to, void *origin, uint64_t origin_end,
                           uint64_t to_offset);
/* How the pipeline drops an origin reference it still owns when a file's
 * state is freed (set once by the collector). */
void pipeline_set_origin_release(struct pipeline *p, void (*release)(void *origin));

/* -pipeline-test: FILE through the pipeline `meta` selects, printed to out. */
int pipeline_dry_run(const struct config *cfg, const char *path, const struct pipeline_meta *meta, FILE *out,
                     char *err, size_t errlen);

#endif
