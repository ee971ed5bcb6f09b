/*
 * source — one tailed file as the rest of the agent sees it, and the chunk
 * format in which its lines travel from the collector to the output.
 *
 * Contract:
 *  - A source is created by the collector when it opens a file and is
 *    reference-counted: the collector holds one reference while it tails the
 *    file, and every chunk in flight holds one more. It is freed by whoever
 *    drops the last reference, so the output can still label and acknowledge
 *    lines of a file the collector has long closed (rotated, deleted).
 *  - Its identity and metadata are immutable after creation; only
 *    `acked_offset` changes, written by the output thread (the offset up to
 *    which every line is delivered: stdout written, or Loki answered 2xx) and
 *    read by the collector when it saves positions. Per source, chunks are
 *    acknowledged in order, so acked_offset only grows (except after a
 *    copytruncate, when the file itself starts again at 0).
 *
 * Chunk layout, one ring block:
 *    struct source_chunk | record | content (padded to 8) | record | …
 *  A chunk holds lines of one source only, in file order; `end_offset` is
 *  where the file's next unread line starts once the chunk's lines are out.
 */
#ifndef LOGLET_SOURCE_H
#define LOGLET_SOURCE_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "parser/parser.h"

struct source {
    atomic_uint refs;
    uint64_t id; /* unique for the process lifetime, for logs */
    struct parser_path_meta meta;
    char *path;      /* as matched by the configured glob (often a symlink) */
    char *real_path; /* what it pointed to when opened */
    dev_t dev;
    ino_t ino;
    /* Fingerprint of the first fp_len bytes (collector-owned: only the
     * collector thread reads or updates these two). */
    uint64_t fp;
    uint32_t fp_len;
    _Atomic uint64_t acked_offset;
};

enum source_record_flags {
    SOURCE_RECORD_MALFORMED = 1 << 0, /* not in the file's format: shipped as-is with the read time */
    SOURCE_RECORD_SPLIT = 1 << 1,     /* a piece of a line longer than max_line_bytes */
    SOURCE_RECORD_UTF8_FIXED = 1 << 2,  /* invalid UTF-8 replaced by U+FFFD */
    SOURCE_RECORD_FLUSHED = 1 << 3,   /* emitted without its newline after the flush timeout */
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
    uint16_t reserved;
};

#define SOURCE_ALIGN(n) (((size_t)(n) + 7) & ~(size_t)7)
#define SOURCE_RECORD_SIZE(len) (sizeof(struct source_record) + SOURCE_ALIGN(len))

static inline const char *source_record_content(const struct source_record *rec)
{
    return (const char *)(rec + 1);
}

static inline const struct source_record *source_record_next(const struct source_record *rec)
{
    return (const struct source_record *)((const char *)rec + SOURCE_RECORD_SIZE(rec->len));
}

static inline const struct source_record *source_chunk_first(const struct source_chunk *chunk)
{
    return (const struct source_record *)(chunk + 1);
}

/* Returns a source with one reference, or NULL on allocation failure. */
struct source *source_new(const char *path, const char *real_path, const struct parser_path_meta *meta,
                          dev_t dev, ino_t ino);
void source_ref(struct source *src);
void source_unref(struct source *src);

#endif
