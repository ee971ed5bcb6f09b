/*
 * The pipeline's private parts: the stage interface every stage file
 * implements, the compiled block, and the per-entry scratch the stages share.
 *
 * A stage is a small table of functions (struct stage_ops), one instance
 * per kind, chosen once when the configuration is compiled; the runner in
 * pipeline.c never tests which kind it holds. Its contract:
 *   compile     — reads its YAML node, fails with the key and line;
 *   state_size  — bytes of per-file state (0: stateless), zeroed at file
 *                 start, released by state_free;
 *   process     — one entry: pass it on (possibly changed), drop it (with a
 *                 reason index), or hold it (multiline). Must not allocate
 *                 except to grow a bounded per-file buffer;
 *   flush       — what a holding stage sends when its timeout fires;
 *   print       — its effective settings, as a YAML flow mapping.
 */
#ifndef LOGLET_PIPELINE_STAGE_H
#define LOGLET_PIPELINE_STAGE_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdatomic.h>

#include "pipeline.h"

#define STAGE_MAX_FIELDS 64 /* named values a block may extract */
#define STAGE_MAX_LABELS 16 /* labels a block may add */
#define STAGE_MAX_META 16   /* structured metadata a block may add */
#define STAGE_MAX_REASONS 4
#define STAGE_MAX_UNDO 16   /* stages of a block that change state per entry (limit, drop) */
#define STAGE_EXTRAS_MAX 8192 /* labels and metadata of one entry; more is cut, counted */

struct stage;
struct stage_run;

enum stage_verdict {
    STAGE_PASS,
    STAGE_DROP, /* run->drop_reason says which of ops->drop_reasons (or STAGE_DROP_REST) */
    STAGE_HOLD, /* taken by the stage (a join); nothing goes on now */
    STAGE_FAIL, /* emit refused: nothing changed, try again later */
};

/* A drop_reason for the later pieces of a line whose earlier piece was
 * dropped (and counted): dropped, not counted again. */
#define STAGE_DROP_REST STAGE_MAX_REASONS

struct stage_compile {
    const struct config *cfg;
    const char *file;
    char path[96]; /* "pipeline[0].stages[2].json" */
    char *err;
    size_t errlen;
    struct pipeline_block *block;
    struct stage *stage; /* the stage being compiled: stage_field() marks what it reads and sets */
};

struct stage_ops {
    const char *name;
    const char *const *drop_reasons; /* NULL-terminated; NULL: never drops */
    int (*compile)(struct stage *st, const struct config_tree *node, struct stage_compile *cx);
    size_t state_size;
    void (*state_free)(const struct stage *st, void *state);
    enum stage_verdict (*process)(const struct stage *st, void *state, struct stage_run *run);
    /* Holding stages only (NULL otherwise). */
    enum stage_verdict (*flush)(const struct stage *st, void *state, struct stage_run *run);
    bool (*holding)(const struct stage *st, const void *state, uint64_t *since_offset, int64_t *since_ms,
                    size_t *bytes);
    bool (*due)(const struct stage *st, const void *state, int64_t now_ms);
    /* Drops what is held without sending it (the file is closed unread). */
    void (*discard)(const struct stage *st, void *state, void (*release_origin)(void *));
    /* Moves a held join to the state of the next file of the same path. */
    bool (*handoff)(const struct stage *st, void *from, void *to, void *origin, uint64_t origin_end,
                    uint64_t to_offset);
    /* Rate-limiting stages: the file waits until *until_ms. */
    bool (*paused)(const struct stage *st, const void *state, int64_t now_ms, int64_t *until_ms);
    void (*print)(const struct stage *st, FILE *out);
    void (*free)(struct stage *st);
};

/* What a stage counts. For each entry: `in` once when it reaches the stage,
 * then `out` (passed on), a `dropped` reason, or nothing while a multiline
 * join holds it; a multiline stage counts `out` once per entry it sends and
 * `joined` the lines of those entries made of two or more. So for a stage,
 * in = out + dropped + (lines held or discarded by a join) + (the later
 * pieces of a line a drop stage dropped: the line counts once in dropped,
 * each piece in `in`), and a stage's out is the next one's in. Counted only for entries that got through: a refused
 * emit counts nothing (stage_note). */
struct stage_counters {
    _Atomic uint64_t in, out, joined, errors;
    _Atomic uint64_t dropped[STAGE_MAX_REASONS];
};

struct stage {
    const struct stage_ops *ops;
    size_t index;
    struct pipeline_block *block;
    void *conf; /* the kind's compiled settings */
    size_t state_off; /* into the file's state area */
    bool pauses;      /* limit with action: wait (set by its compile) */
    /* Fields (bit i: block->fields[i]) the stage reads and the ones it can
     * set, for the checks of the order of a block's stages (pipeline.c). */
    uint64_t reads, sets;
    struct stage_counters counters;
};

/* A glob list per metadata field; an empty list matches everything. */
struct match_rule {
    size_t field; /* index into match.c's field table */
    char *label; /* pod_labels: the pod label's key */
    char **globs;
    size_t nglobs;
};

struct pipeline_block {
    size_t index;
    struct match_rule *rules;
    size_t nrules;
    struct stage *stages;
    size_t nstages;
    size_t state_size;
    /* Names interned by the stages: fields they extract or read. */
    char *fields[STAGE_MAX_FIELDS];
    size_t nfields;
    char *labels[STAGE_MAX_LABELS]; /* label names the block sets, in stage order */
    size_t nlabels;
    char *meta[STAGE_MAX_META];
    size_t nmeta;
    /* Shared limit buckets (by: match) live in their stage's conf. */
};

/* The entry being processed and everything the stages extract from it.
 * One per pipeline (one thread): reset for each entry. */
struct stage_run {
    struct pipeline *p;
    struct pipeline_block *block;
    struct pipeline_file *pf;
    size_t at; /* the stage running now */
    pipeline_emit_fn emit;
    void *emit_ctx;
    int64_t now_ms;      /* CLOCK_MONOTONIC: joins' timeouts, buckets */
    int64_t now_real_ns; /* CLOCK_REALTIME: drop older_than */
    size_t drop_reason;

    struct pipeline_entry e; /* e.line points at `line` */
    uint64_t line_start;
    char *line;
    size_t line_cap;
    /* Extracted values: set when gen[i] == cur_gen. They point into the
     * line, into `arena`, or into the configuration. */
    const char *val[STAGE_MAX_FIELDS];
    size_t vlen[STAGE_MAX_FIELDS];
    uint32_t gen[STAGE_MAX_FIELDS];
    uint32_t cur_gen;
    char *arena;
    size_t arena_len, arena_cap;
    const char *label_val[STAGE_MAX_LABELS];
    size_t label_len[STAGE_MAX_LABELS];
    bool label_set[STAGE_MAX_LABELS];
    bool meta_set[STAGE_MAX_META];
    const char *meta_val[STAGE_MAX_META];
    size_t meta_len[STAGE_MAX_META];
    char extras[STAGE_EXTRAS_MAX + 64];

    /* What this entry changed, settled when it is through: counter
     * increments applied, state a stage changed (a limit's bucket) kept;
     * when emit refuses it, the increments are forgotten and the state put
     * back, so the record read again counts and costs once. Sized at
     * pipeline_create for the longest block. */
    struct stage_pending {
        _Atomic uint64_t *counter;
        uint64_t n;
    } *pending;
    size_t npending, pending_cap;
    struct stage_undo {
        void *at;
        size_t len;
        unsigned char was[32];
    } undo[STAGE_MAX_UNDO];
    size_t nundo;
};

/* The label sets pipeline labels made on this node lately (labels.
 * max_pipeline_streams): open addressing on a hash of the file's identity,
 * stream kind and labels text. Invariant: live <= max, and every slot with
 * key != 0 is counted in live, expired or not (sweeps drop the expired). */
struct stream_slot {
    uint64_t key;
    int64_t last_ms;
};
struct stream_bound {
    size_t max;             /* 0: no bound */
    struct stream_slot *slots, *spare;
    size_t cap;             /* a power of two, at least 2 * max */
    size_t live;
    int64_t last_sweep_ms;
    bool said;
    _Atomic uint64_t limited; /* entries sent with their file's own labels */
    _Atomic uint64_t active;  /* live, for /metrics */
};

struct pipeline {
    struct pipeline_block *blocks;
    size_t nblocks;
    struct stream_bound streams;
    size_t max_line;   /* largest entry: collection.max_line_bytes, UTF-8 repaired */
    /* Every pattern matches with these: ovector for the largest pattern,
     * and a match limit, so a pathological line costs a bounded time. */
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    uint32_t max_captures;
    void (*release_origin)(void *origin);
    /* pipeline_set_clock(): the caller's time for the entries of one read
     * (0: read the clocks for each entry). */
    int64_t clock_ms, clock_real_ns;
    struct stage_run run;       /* the current line */
    struct stage_run held_run;  /* a held join going out while the current line waits */
};

struct pipeline_file {
    struct pipeline *p;
    struct pipeline_block *block;
    uint64_t identity; /* the file's own label set (pipeline_file_set_identity) */
    bool can_pause; /* a stage of the block rate-limits with action: wait */
    /* block->state_size bytes, each stage's at its state_off (16-aligned). */
    _Alignas(16) char state[];
};

/* Counters have one writer (the collector thread) and readers anywhere
 * (/metrics): a relaxed load and store, no locked read-modify-write per line. */
static inline void stage_count(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}
/* Counts n for the entry being run, once it is through (see stage_run.pending). */
void stage_note(struct stage_run *r, _Atomic uint64_t *c, uint64_t n);
/* Remembers `len` bytes at `at` (at most 32), put back if the entry is refused. */
void stage_remember(struct stage_run *r, void *at, size_t len);

static inline void *stage_state(struct pipeline_file *pf, const struct stage *st)
{
    return st->ops->state_size ? pf->state + st->state_off : NULL;
}

/* Values. */
static inline void stage_set(struct stage_run *r, size_t field, const char *v, size_t len)
{
    r->val[field] = v;
    r->vlen[field] = len;
    r->gen[field] = r->cur_gen;
}
static inline bool stage_get(const struct stage_run *r, size_t field, const char **v, size_t *len)
{
    if (r->gen[field] != r->cur_gen) return false;
    *v = r->val[field];
    *len = r->vlen[field];
    return true;
}
/* Room for `len` more bytes of decoded values; NULL when the arena (sized
 * for the largest entry) has none, which a line cannot cause. */
char *stage_arena(struct stage_run *r, size_t len);
/* Makes r ready for a new entry (values, labels, what it changed). */
void stage_run_begin(struct stage_run *r);
/* Runs the stages after the current one on another entry (a join ending):
 * PASS when it went out or was dropped, FAIL when emit refused. */
enum stage_verdict stage_run_rest(struct stage_run *from, struct stage_run *sub);

/* Compiling. */
int stage_fail(struct stage_compile *cx, const struct config_tree *node, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Unknown keys are errors; `allowed` ends with NULL. */
int stage_check_keys(struct stage_compile *cx, const struct config_tree *map, const char *const *allowed);
/* A scalar setting: NULL when absent; fails (sets *bad) when not a scalar. */
const char *stage_scalar(struct stage_compile *cx, const struct config_tree *map, const char *key, bool *bad);
int stage_get_size(struct stage_compile *cx, const struct config_tree *map, const char *key, int64_t *out);
int stage_get_duration(struct stage_compile *cx, const struct config_tree *map, const char *key, int64_t *out);
int stage_get_int(struct stage_compile *cx, const struct config_tree *map, const char *key, int64_t lo, int64_t hi,
                  int64_t *out);
/* Interns a field name for this block: its index, or -1 after stage_fail.
 * stage_field: a field the stage reads; stage_field_set: one it extracts. */
int stage_field(struct stage_compile *cx, const struct config_tree *node, const char *name);
int stage_field_set(struct stage_compile *cx, const struct config_tree *node, const char *name);
/* `fields:` of json / logfmt: a map of field name -> key in the line (or a
 * list of names, each its own key). Fills slots (interned field indexes)
 * and srcs (malloc'd keys); returns the count, or -1 after stage_fail. */
struct stage_fieldmap {
    size_t n;
    int slot[STAGE_MAX_FIELDS];
    char *src[STAGE_MAX_FIELDS];
    int source; /* -1: the line; else a field to parse instead */
};
int stage_fieldmap(struct stage_compile *cx, const struct config_tree *node, struct stage_fieldmap *fm);
void stage_fieldmap_free(struct stage_fieldmap *fm);
void stage_fieldmap_print(const struct stage *st, const struct stage_fieldmap *fm, FILE *out);
/* The text a stage reads: the line, or the `source` field (false: absent). */
bool stage_input(const struct stage_run *r, int source, const char **text, size_t *len);
/* Compiles a pattern (UTF, JIT); NULL after stage_fail. */
pcre2_code *stage_regex(struct stage_compile *cx, const struct config_tree *node, const char *key,
                        const char *pattern);
void stage_print_string(FILE *out, const char *s, size_t len);
void stage_print_key(FILE *out, const char *s, size_t len);

/* Every kind, for the compiler's lookup (pipeline.c). */
extern const struct stage_ops stage_multiline, stage_json, stage_logfmt, stage_regex_ops, stage_labels,
    stage_structured_metadata, stage_drop, stage_limit, stage_output, stage_timestamp;

/* match.c */
int match_compile(struct stage_compile *cx, const struct config_tree *node, struct pipeline_block *b);
bool match_block(const struct pipeline_block *b, const struct pipeline_meta *meta);
void match_print(const struct pipeline_block *b, FILE *out);
void match_free(struct pipeline_block *b);

#endif
