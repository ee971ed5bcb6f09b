/*
 * source — one tailed file as the rest of the agent sees it: its identity,
 * its metadata, its rendered label sets, and the chunk format in which its
 * lines travel from the collector to the sinks.
 *
 * Contract:
 *  - A source is created by the collector when it opens a file and is
 *    reference-counted: the collector holds one reference while it tails the
 *    file, and every chunk in flight holds one more. It is freed by whoever
 *    drops the last reference, so a sink can still label and acknowledge
 *    lines of a file the collector has long closed (rotated, deleted).
 *  - A source owns its metadata and its label sets. The label sets (one per
 *    stream kind: stdout, stderr, unknown) are rendered once, when the file
 *    is opened (source_render_labels), from the metadata and the label
 *    policy; nothing downstream re-derives them, and sinks group lines into
 *    streams by the rendered text, never by an address.
 *  - Identity, metadata and labels are immutable once the source is handed
 *    to the ring; only `acked_offset` changes, written by the output thread
 *    (the offset up to which every line is delivered) and read by the
 *    collector when it saves positions. Per source, chunks are acknowledged
 *    in order, so acked_offset only grows, except when the collector resets
 *    it after a copytruncate (the file itself starts again at 0).
 *
 * Chunk layout, one ring block:
 *    struct source_chunk | record | content [extras] (padded to 8) | record | …
 *  A record's `extra_len` bytes after its content are what the pipeline
 *  added (internal/pipeline): a little-endian u16 length, that many bytes of
 *  labels (`name="value", name2="v2"`, Loki-escaped, to add to the source's
 *  set), then structured metadata as name NUL value NUL pairs.
 *  A chunk holds lines of one source only, in file order; `end_offset` is
 *  where the file's next unread line starts once the chunk's lines are out.
 */
#ifndef LOGLET_SOURCE_H
#define LOGLET_SOURCE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config/config.h"
#include "metadata/metadata.h"
#include "parser/parser.h"

/* Loki refuses nothing below this, and a label set past it is a runaway
 * static label or path: the file is refused with an error naming it. */
#define SOURCE_LABELS_MAX_BYTES 8192
#define SOURCE_STREAM_KINDS 3 /* enum parser_stream */
/* Outputs that acknowledge at once (Loki, archive, stdout). */
#define SOURCE_MAX_SINKS 3

/* What every source's labels are made of besides its own metadata: decided
 * once at start (NODE_NAME, labels.static, labels.stream). */
struct source_label_policy {
    const char *node_name; /* NULL: no node_name label */
    bool stream;           /* a `stream` label per stdout/stderr */
    const struct config_strmap *static_labels;
    /* What a file's path does not say (pod labels, workload…); NULL: nothing. */
    struct metadata_provider *metadata;
};

struct source {
    atomic_uint refs;
    uint64_t id; /* unique for the process lifetime, for logs */
    struct parser_path_meta meta;
    char *path;      /* as matched by the configured glob (often a symlink) */
    char *real_path; /* what it pointed to when opened */
    dev_t dev;
    ino_t ino;
    /* Rendered label sets, `{a="1", b="2"}`, indexed by stream kind. When the
     * policy has no stream label the three point to one string. */
    const char *labels[SOURCE_STREAM_KINDS];
    char *labels_buf;
    /* The provider's snapshot the labels were rendered from (owned, NULL:
     * none) and how complete it was; immutable like the labels. */
    struct metadata_labels *extra;
    enum metadata_status extra_status;
    bool described;
    uint64_t described_generation; /* the provider's generation() before it was asked */
    /* Fingerprint of the first fp_len bytes (collector-owned: only the
     * collector thread reads or updates these two). */
    uint64_t fp;
    uint32_t fp_len;
    /* Relabelled: a newer source for the same file and content took over,
     * whose position covers this one's (collector-owned). */
    bool relabelled;
    /* The collector keeps a hard link to the file in its spool (spool.c);
     * collector-owned. */
    bool spooled, spooled_gz;
    _Atomic uint64_t acked_offset;
    /* With several outputs, each one's own acknowledged offset (source_ack());
     * acked_offset is then never above the least of them. Unused (0) with
     * one output, which writes acked_offset itself. */
    _Atomic uint64_t sink_acked[SOURCE_MAX_SINKS];
    /* Records of this source the collector has offered to the live tail
     * (collector-owned): lets a follower number lines across entries it
     * missed. */
    uint64_t published_records;
    /* The live tail's generations when the collector began and stopped
     * tailing the file (livetail.h): set under the hub lock; close 0 while
     * it is tailed. */
    uint64_t livetail_open_gen;
    _Atomic uint64_t livetail_close_gen;
    size_t livetail_index; /* in the hub's registry, while registered */
};

enum source_record_flags {
    SOURCE_RECORD_MALFORMED = 1 << 0, /* not in the file's format: shipped as-is with the read time */
    SOURCE_RECORD_SPLIT = 1 << 1,     /* a piece of a line longer than max_line_bytes */
    SOURCE_RECORD_UTF8_FIXED = 1 << 2,  /* invalid UTF-8 replaced by U+FFFD */
    SOURCE_RECORD_FLUSHED = 1 << 3,   /* emitted without its newline after the flush timeout */
    SOURCE_RECORD_CONTINUED = 1 << 4, /* a piece after the first of a split line: the same line number */
    /* Cut at max_line_bytes with bytes of the line left over: the line is
     * longer than max_line_bytes and its next record (CONTINUED) goes on
     * with it. Lets a stage judge the whole line from its first piece
     * (drop longer_than). Pieces ended otherwise (a stream change, a
     * flush, a read that cannot go on) do not say it. */
    SOURCE_RECORD_MORE = 1 << 5,
};

struct source_chunk {
    struct source *source; /* a reference owned by the chunk */
    uint64_t end_offset;
    uint32_t records;
    uint32_t reserved;
};

struct source_record {
    int64_t ts_ns;
    uint32_t len; /* content bytes that follow */
    uint8_t stream; /* enum parser_stream */
    uint8_t flags;  /* enum source_record_flags */
    uint16_t extra_len; /* pipeline labels and metadata after the content (0: none) */
};

#define SOURCE_ALIGN(n) (((size_t)(n) + 7) & ~(size_t)7)
#define SOURCE_RECORD_SIZE(len) (sizeof(struct source_record) + SOURCE_ALIGN(len))

static inline const char *source_record_content(const struct source_record *rec)
{
    return (const char *)(rec + 1);
}

static inline const struct source_record *source_record_next(const struct source_record *rec)
{
    return (const struct source_record *)((const char *)rec + SOURCE_RECORD_SIZE((size_t)rec->len + rec->extra_len));
}

/* The record's pipeline labels (without braces) and metadata pairs. */
static inline void source_record_extras(const struct source_record *rec, const char **labels, size_t *labels_len,
                                        const char **meta, size_t *meta_len)
{
    const unsigned char *x = (const unsigned char *)source_record_content(rec) + rec->len;
    *labels_len = *meta_len = 0;
    *labels = *meta = NULL;
    if (rec->extra_len < 2) return;
    size_t ll = (size_t)x[0] | ((size_t)x[1] << 8);
    if (ll > (size_t)rec->extra_len - 2) return;
    *labels = (const char *)x + 2;
    *labels_len = ll;
    *meta = (const char *)x + 2 + ll;
    *meta_len = (size_t)rec->extra_len - 2 - ll;
}

static inline const struct source_record *source_chunk_first(const struct source_chunk *chunk)
{
    return (const struct source_record *)(chunk + 1);
}

static inline const char *source_stream_labels(const struct source *src, unsigned stream)
{
    return src->labels[stream < SOURCE_STREAM_KINDS ? stream : PARSER_STREAM_UNKNOWN];
}

/* Returns a source with one reference, or NULL on allocation failure. */
struct source *source_new(const char *path, const char *real_path, const struct parser_path_meta *meta,
                          dev_t dev, ino_t ino);
void source_ref(struct source *src);
/* How many outputs acknowledge lines (set once, before any thread runs). */
void source_set_sinks(unsigned n);
/* Output `sink` has delivered every line of src before end_offset. With
 * one output that is the file's acknowledged offset; with several,
 * acked_offset becomes the least of their offsets, and never moves back. */
void source_ack(struct source *src, unsigned sink, uint64_t end_offset);
/* The collector starts the file again at `offset` (copytruncate): every
 * output's slot with it. */
void source_reset_acked(struct source *src, uint64_t offset);
void source_unref(struct source *src);

/* The policy of this process: NODE_NAME from the environment, the rest from cfg. */
void source_label_policy_init(struct source_label_policy *policy, const struct config *cfg);
/* Renders the source's label sets from its metadata and, the first time,
 * what the policy's provider adds. Returns 0, or -1 with
 * `err` set (out of memory; a set over SOURCE_LABELS_MAX_BYTES). */
int source_render_labels(struct source *src, const struct source_label_policy *policy, char *err, size_t errlen);

#endif
