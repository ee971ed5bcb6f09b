/*
 * The pipeline's runner: compiling the configuration into blocks of
 * stages, choosing a file's block, running one entry through its stages,
 * and the per-stage counters. What each stage does is in its own file
 * (stage_*.c); the interface they share is stage.h.
 */
#include "pipeline.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log/log.h"
#include "metrics/metrics.h"
#include "source/source.h"
#include "stage.h"

/* Stage kinds by their key in a stage's mapping. */
static const struct stage_ops *const kinds[] = {
    &stage_multiline, &stage_json,   &stage_logfmt, &stage_regex_ops, &stage_labels, &stage_structured_metadata,
    &stage_drop,      &stage_limit,  &stage_output, &stage_timestamp,
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

/* A hundred thousand backtracking steps is far more than a sane pattern
 * needs on a line and bounds a pathological one to about a millisecond. */
#define STAGE_MATCH_LIMIT 100000
/* About 800 bytes of /metrics each: 256 fit its 256 KiB with room to spare. */
#define PIPELINE_MAX_STAGES 256
/* A label set unused this long no longer counts against
 * labels.max_pipeline_streams: Loki's default chunk_idle_period, after which
 * an ingester lets an idle stream go. */
#define STREAM_IDLE_MS (30 * 60 * 1000)
/* When the bound is reached, expired sets are swept at most this often
 * (a sweep walks the whole table). */
#define STREAM_SWEEP_EVERY_MS 1000

/* ------------------------------------------------------------------------ */
/* Compile helpers (stage.h)                                                */

int stage_fail(struct stage_compile *cx, const struct config_tree *node, const char *key, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t line = node ? node->line : 0;
    const char *file = cx->file && *cx->file ? cx->file : "(config)";
    if (line)
        snprintf(cx->err, cx->errlen, "%s:%zu: key %s%s%s: %s", file, line, cx->path, key ? "." : "", key ? key : "",
                 msg);
    else
        snprintf(cx->err, cx->errlen, "%s: key %s%s%s: %s", file, cx->path, key ? "." : "", key ? key : "", msg);
    return -1;
}

static const char *kind_name(const struct config_tree *t)
{
    return !t ? "nothing" : t->kind == CONFIG_TREE_MAP ? "a mapping" : t->kind == CONFIG_TREE_LIST ? "a list" : "a scalar";
}

int stage_check_keys(struct stage_compile *cx, const struct config_tree *map, const char *const *allowed)
{
    for (size_t i = 0; i < map->count; i++) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++) ok = strcmp(*a, map->keys[i]) == 0;
        if (ok) continue;
        char names[256] = "";
        for (const char *const *a = allowed; *a; a++) {
            strncat(names, a == allowed ? "" : ", ", sizeof names - strlen(names) - 1);
            strncat(names, *a, sizeof names - strlen(names) - 1);
        }
        return stage_fail(cx, map->items[i], map->keys[i], "unknown key (expected one of: %s)", names);
    }
    return 0;
}

const char *stage_scalar(struct stage_compile *cx, const struct config_tree *map, const char *key, bool *bad)
{
    const struct config_tree *v = config_tree_get(map, key);
    if (!v) return NULL;
    if (v->kind != CONFIG_TREE_SCALAR) {
        stage_fail(cx, v, key, "expected a scalar, got %s", kind_name(v));
        *bad = true;
        return NULL;
    }
    return v->text;
}

static int get_number(struct stage_compile *cx, const struct config_tree *map, const char *key, int64_t *out,
                      int (*parse)(const char *, int64_t *), const char *what)
{
    bool bad = false;
    const char *text = stage_scalar(cx, map, key, &bad);
    if (bad) return -1;
    if (!text) return 0;
    if (parse(text, out) != 0)
        return stage_fail(cx, config_tree_get(map, key), key, "'%s' is not a %s", text, what);
    return 0;
}

int stage_get_size(struct stage_compile *cx, const struct config_tree *map, const char *key, int64_t *out)
{
    return get_number(cx, map, key, out, config_parse_size, "size (e.g. 64KiB)");
}

int stage_get_duration(struct stage_compile *cx, const struct config_tree *map, const char *key, int64_t *out)
{
    return get_number(cx, map, key, out, config_parse_duration_ms, "duration (e.g. 3s)");
}

static int parse_int64(const char *text, int64_t *out)
{
    char *end;
    if (!*text) return -1;
    long long v = strtoll(text, &end, 10);
    if (*end) return -1;
    *out = v;
    return 0;
}

int stage_get_int(struct stage_compile *cx, const struct config_tree *map, const char *key, int64_t lo, int64_t hi,
                  int64_t *out)
{
    int64_t v = *out;
    if (get_number(cx, map, key, &v, parse_int64, "whole number") != 0) return -1;
    if (v < lo || v > hi)
        return stage_fail(cx, config_tree_get(map, key), key, "%lld is outside %lld..%lld", (long long)v,
                          (long long)lo, (long long)hi);
    *out = v;
    return 0;
}

_Static_assert(STAGE_MAX_FIELDS <= 64, "a stage's reads and sets are 64-bit masks of field indexes");

static int intern_field(struct stage_compile *cx, const struct config_tree *node, const char *name)
{
    struct pipeline_block *b = cx->block;
    if (!*name) return stage_fail(cx, node, NULL, "a field name must not be empty");
    for (size_t i = 0; i < b->nfields; i++)
        if (strcmp(b->fields[i], name) == 0) return (int)i;
    if (b->nfields == STAGE_MAX_FIELDS)
        return stage_fail(cx, node, NULL, "more than %d distinct fields in one match block", STAGE_MAX_FIELDS);
    if (!(b->fields[b->nfields] = strdup(name))) return stage_fail(cx, node, NULL, "out of memory");
    return (int)b->nfields++;
}

int stage_field(struct stage_compile *cx, const struct config_tree *node, const char *name)
{
    int f = intern_field(cx, node, name);
    if (f >= 0 && cx->stage) cx->stage->reads |= (uint64_t)1 << f;
    return f;
}

int stage_field_set(struct stage_compile *cx, const struct config_tree *node, const char *name)
{
    int f = intern_field(cx, node, name);
    if (f >= 0 && cx->stage) cx->stage->sets |= (uint64_t)1 << f;
    return f;
}

pcre2_code *stage_regex(struct stage_compile *cx, const struct config_tree *node, const char *key, const char *pattern)
{
    int code;
    PCRE2_SIZE offset;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_MATCH_INVALID_UTF,
                                   &code, &offset, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        stage_fail(cx, node, key, "invalid regular expression at offset %zu: %s", (size_t)offset, (char *)msg);
        return NULL;
    }
    /* JIT is an optimisation; without it (no executable memory) matching still works. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

static void print_quoted(FILE *out, const char *s, size_t len, bool dollar)
{
    fputc('"', out);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') fprintf(out, "\\%c", ch);
        else if (ch == '$' && dollar) fputs("$$", out);
        else if (ch < 0x20 || ch == 0x7f) fprintf(out, "\\x%02x", ch);
        else fputc(ch, out);
    }
    fputc('"', out);
}

/* Values are ${VAR}-expanded when loaded, so "$" prints as "$$"; keys are not. */
void stage_print_string(FILE *out, const char *s, size_t len) { print_quoted(out, s, len, true); }
void stage_print_key(FILE *out, const char *s, size_t len) { print_quoted(out, s, len, false); }

char *stage_arena(struct stage_run *r, size_t len)
{
    if (r->arena_cap - r->arena_len < len) return NULL;
    char *at = r->arena + r->arena_len;
    r->arena_len += len;
    return at;
}

/* ------------------------------------------------------------------------ */
/* Compiling the configuration                                              */

static void block_free(struct pipeline_block *b)
{
    for (size_t i = 0; i < b->nstages; i++)
        if (b->stages[i].ops && b->stages[i].ops->free) b->stages[i].ops->free(&b->stages[i]);
    free(b->stages);
    match_free(b);
    for (size_t i = 0; i < b->nfields; i++) free(b->fields[i]);
    for (size_t i = 0; i < b->nlabels; i++) free(b->labels[i]);
    for (size_t i = 0; i < b->nmeta; i++) free(b->meta[i]);
}

static int compile_stage(struct stage_compile *cx, struct pipeline_block *b, size_t si, const struct config_tree *node)
{
    size_t base = strlen(cx->path);
    snprintf(cx->path + base, sizeof cx->path - base, ".stages[%zu]", si);
    if (node->kind != CONFIG_TREE_MAP || node->count != 1)
        return stage_fail(cx, node, NULL, "a stage is a mapping with one key, its kind (e.g. `- json: {...}`), got %s",
                          node->kind == CONFIG_TREE_MAP ? "several keys" : kind_name(node));
    const char *name = node->keys[0];
    const struct stage_ops *ops = NULL;
    for (size_t k = 0; k < NKINDS && !ops; k++)
        if (strcmp(kinds[k]->name, name) == 0) ops = kinds[k];
    if (!ops) {
        char names[256] = "";
        for (size_t k = 0; k < NKINDS; k++) {
            strncat(names, k ? ", " : "", sizeof names - strlen(names) - 1);
            strncat(names, kinds[k]->name, sizeof names - strlen(names) - 1);
        }
        return stage_fail(cx, node, NULL, "unknown stage '%s' (expected one of: %s)", name, names);
    }
    size_t at = strlen(cx->path);
    snprintf(cx->path + at, sizeof cx->path - at, ".%s", name);
    struct stage *st = &b->stages[si];
    *st = (struct stage){.ops = ops, .index = si, .block = b};
    cx->stage = st;
    int rc = ops->compile(st, node->items[0], cx);
    cx->stage = NULL;
    if (rc != 0) return -1;
    if (ops->state_size) {
        b->state_size = (b->state_size + 15) & ~(size_t)15;
        st->state_off = b->state_size;
        b->state_size += ops->state_size;
    }
    cx->path[base] = '\0';
    return 0;
}

/* The first field (lowest index) in `mask`. */
static const char *first_field(const struct pipeline_block *b, uint64_t mask)
{
    for (size_t f = 0; f < b->nfields; f++)
        if (mask & ((uint64_t)1 << f)) return b->fields[f];
    return "?";
}

/* A multiline join is a new entry: it goes through the stages after the
 * multiline stage with nothing of what the stages before it set on its
 * lines (its first line's labels, metadata and fields). So what would be
 * lost without a word is refused here, naming the stages to move:
 *  - labels or structured_metadata before multiline;
 *  - a stage after multiline reading a field only a stage before it sets.
 * A stage reading a field that no earlier stage sets at all loses nothing
 * (it never has a value, as with a line the field is missing from), so it
 * is only a warning: refusing it would stop the agent over a stage left
 * from an edit. Stages before multiline may still extract for each other
 * (json, then output or drop on its fields, then multiline). */
static int check_order(struct stage_compile *cx, struct pipeline_block *b, const struct config_tree *stages)
{
    size_t base = strlen(cx->path);
    uint64_t avail = 0, lost = 0;
    const struct stage *ml = NULL;
    for (size_t i = 0; i < b->nstages; i++) {
        const struct stage *st = &b->stages[i];
        const struct config_tree *node = stages->items[i];
        snprintf(cx->path + base, sizeof cx->path - base, ".stages[%zu].%s", i, st->ops->name);
        if (st->ops == &stage_multiline) {
            for (size_t j = 0; j < i; j++) {
                const struct stage_ops *k = b->stages[j].ops;
                if (k != &stage_labels && k != &stage_structured_metadata) continue;
                return stage_fail(cx, node, NULL,
                                  "multiline must come before stages that set labels or structured metadata "
                                  "(stages[%zu] is %s): a joined entry is a new entry and would go out without "
                                  "them; put multiline first",
                                  j, k->name);
            }
            ml = st;
            lost = avail;
            avail = 0;
        }
        uint64_t missing = st->reads & ~avail;
        if (missing & lost) {
            const char *f = first_field(b, missing & lost);
            size_t by = 0;
            while (by < ml->index && !(b->stages[by].sets & missing & lost)) by++;
            return stage_fail(cx, node, NULL,
                              "reads field '%s', which only stages[%zu] (%s) extracts, before the multiline stage "
                              "(stages[%zu]): a joined entry is a new entry and does not carry it; multiline must "
                              "come before stages that extract the fields later stages use",
                              f, by, b->stages[by].ops->name, ml->index);
        }
        if (missing) {
            char msg[1024];
            char *err = cx->err;
            size_t errlen = cx->errlen;
            cx->err = msg;
            cx->errlen = sizeof msg;
            stage_fail(cx, node, NULL,
                       "reads field '%s', which no earlier stage of this block extracts (json, logfmt or regex "
                       "fields): it never has a value here",
                       first_field(b, missing));
            cx->err = err;
            cx->errlen = errlen;
            log_warn("%s", msg);
        }
        avail |= st->sets;
    }
    cx->path[base] = '\0';
    return 0;
}

static int compile_block(struct stage_compile *cx, struct pipeline_block *b, const struct config_tree *node)
{
    static const char *const keys[] = {"match", "stages", NULL};
    if (node->kind != CONFIG_TREE_MAP)
        return stage_fail(cx, node, NULL, "expected a mapping with match and stages, got %s", kind_name(node));
    if (stage_check_keys(cx, node, keys) != 0) return -1;
    if (match_compile(cx, config_tree_get(node, "match"), b) != 0) return -1;
    const struct config_tree *stages = config_tree_get(node, "stages");
    if (!stages) return stage_fail(cx, node, "stages", "missing: a match block needs a list of stages");
    if (stages->kind != CONFIG_TREE_LIST) return stage_fail(cx, stages, "stages", "expected a list, got %s", kind_name(stages));
    if (!(b->stages = calloc(stages->count ? stages->count : 1, sizeof *b->stages)))
        return stage_fail(cx, stages, "stages", "out of memory");
    size_t multiline = 0, limits = 0;
    for (size_t i = 0; i < stages->count; i++) {
        b->nstages = i + 1;
        if (compile_stage(cx, b, i, stages->items[i]) != 0) return -1;
        if (b->stages[i].ops == &stage_multiline && ++multiline > 1)
            return stage_fail(cx, stages->items[i], NULL, "only one multiline stage per match block");
        /* Each keeps state an entry refused by emit must give back (stage_remember):
         * a limit's bucket, a drop's line in pieces. */
        if ((b->stages[i].ops == &stage_limit || b->stages[i].ops == &stage_drop) && ++limits > STAGE_MAX_UNDO)
            return stage_fail(cx, stages->items[i], NULL, "more than %d limit and drop stages in one match block",
                              STAGE_MAX_UNDO);
    }
    return check_order(cx, b, stages);
}

static int run_init(struct stage_run *r, struct pipeline *p, size_t cap, size_t max_stages)
{
    r->p = p;
    /* in, out or dropped, and errors (a stage may count two) per stage,
     * and the extras' error. */
    r->pending_cap = 4 * max_stages + 4;
    r->pending = calloc(r->pending_cap, sizeof *r->pending);
    if (!r->pending) return -1;
    r->line_cap = cap;
    r->arena_cap = 2 * cap + 64;
    r->line = malloc(r->line_cap);
    r->arena = malloc(r->arena_cap);
    r->cur_gen = 1;
    return r->line && r->arena ? 0 : -1;
}

static int streams_init(struct stream_bound *sb, size_t max);

struct pipeline *pipeline_create(const struct config *cfg, char *err, size_t errlen)
{
    struct pipeline *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->max_line = (size_t)cfg->collection.max_line_bytes;
    struct stage_compile cx = {.cfg = cfg, .file = cfg->source_path, .err = err, .errlen = errlen};
    const struct config_tree *top = cfg->pipeline;
    if (top && top->kind != CONFIG_TREE_LIST) {
        snprintf(cx.path, sizeof cx.path, "pipeline");
        stage_fail(&cx, top, NULL, "expected a list of match blocks, got %s", kind_name(top));
        goto fail;
    }
    size_t n = top ? top->count : 0;
    if (n && !(p->blocks = calloc(n, sizeof *p->blocks))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    size_t stages = 0;
    for (size_t i = 0; i < n; i++) {
        struct pipeline_block *b = &p->blocks[i];
        b->index = i;
        p->nblocks = i + 1;
        cx.block = b;
        snprintf(cx.path, sizeof cx.path, "pipeline[%zu]", i);
        if (compile_block(&cx, b, top->items[i]) != 0) goto fail;
        /* Each stage has its own series in /metrics, which is bounded. */
        if ((stages += b->nstages) > PIPELINE_MAX_STAGES) {
            stage_fail(&cx, top->items[i], NULL, "more than %d stages in all match blocks", PIPELINE_MAX_STAGES);
            goto fail;
        }
    }
    /* An entry is at most a logical line repaired (3 bytes per invalid byte). */
    size_t cap = 3 * p->max_line + 16;
    p->max_captures = 64; /* regex refuses a pattern with more groups */
    if (n == 0) return p; /* no block: nothing will ever run */
    size_t longest = 0;
    for (size_t i = 0; i < n; i++)
        if (p->blocks[i].nstages > longest) longest = p->blocks[i].nstages;
    if (run_init(&p->run, p, cap, longest) != 0 || run_init(&p->held_run, p, cap, longest) != 0 ||
        !(p->md = pcre2_match_data_create(p->max_captures, NULL)) || !(p->mctx = pcre2_match_context_create(NULL))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (streams_init(&p->streams, (size_t)cfg->labels.max_pipeline_streams) != 0) {
        snprintf(err, errlen, "out of memory (labels.max_pipeline_streams)");
        goto fail;
    }
    pcre2_set_match_limit(p->mctx, STAGE_MATCH_LIMIT);
    pcre2_set_depth_limit(p->mctx, STAGE_MATCH_LIMIT / 10);
    return p;
fail:
    pipeline_destroy(p);
    return NULL;
}

static struct pipeline *published;

void pipeline_destroy(struct pipeline *p)
{
    if (!p) return;
    if (published == p) pipeline_publish_metrics(NULL);
    for (size_t i = 0; i < p->nblocks; i++) block_free(&p->blocks[i]);
    free(p->blocks);
    free(p->run.line);
    free(p->run.arena);
    free(p->held_run.line);
    free(p->held_run.arena);
    free(p->run.pending);
    free(p->held_run.pending);
    pcre2_match_data_free(p->md);
    pcre2_match_context_free(p->mctx);
    free(p->streams.slots);
    free(p->streams.spare);
    free(p);
}

bool pipeline_empty(const struct pipeline *p) { return !p || p->nblocks == 0; }

size_t pipeline_extras_max(const struct pipeline *p)
{
    (void)p;
    return STAGE_EXTRAS_MAX + 64;
}

void pipeline_print(const struct pipeline *p, FILE *out, const char *prefix)
{
    if (pipeline_empty(p)) {
        fprintf(out, "%spipeline: []\n", prefix);
        return;
    }
    fprintf(out, "%spipeline:\n", prefix);
    for (size_t i = 0; i < p->nblocks; i++) {
        const struct pipeline_block *b = &p->blocks[i];
        fprintf(out, "%s  - match: ", prefix);
        match_print(b, out);
        fprintf(out, "\n%s    stages:\n", prefix);
        for (size_t s = 0; s < b->nstages; s++) {
            fprintf(out, "%s      - %s: ", prefix, b->stages[s].ops->name);
            b->stages[s].ops->print(&b->stages[s], out);
            fputc('\n', out);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Files                                                                    */

bool pipeline_choose(const struct pipeline *p, const struct pipeline_meta *meta, size_t *block)
{
    for (size_t i = 0; p && i < p->nblocks; i++) {
        if (!match_block(&p->blocks[i], meta)) continue;
        *block = i;
        return p->blocks[i].nstages > 0;
    }
    return false;
}

struct pipeline_file *pipeline_file_new(struct pipeline *p, const struct pipeline_meta *meta, bool *oom)
{
    *oom = false;
    if (!p) return NULL;
    for (size_t i = 0; i < p->nblocks; i++) {
        struct pipeline_block *b = &p->blocks[i];
        if (!match_block(b, meta)) continue;
        if (b->nstages == 0) return NULL;
        struct pipeline_file *pf = calloc(1, sizeof *pf + b->state_size);
        if (!pf) {
            *oom = true;
            return NULL;
        }
        pf->p = p;
        pf->block = b;
        for (size_t s = 0; s < b->nstages; s++) pf->can_pause |= b->stages[s].pauses;
        return pf;
    }
    return NULL;
}

void pipeline_file_free(struct pipeline_file *pf)
{
    if (!pf) return;
    for (size_t i = 0; i < pf->block->nstages; i++) {
        const struct stage *st = &pf->block->stages[i];
        if (st->ops->discard) st->ops->discard(st, stage_state(pf, st), pf->p->release_origin);
        if (st->ops->state_free) st->ops->state_free(st, stage_state(pf, st));
    }
    free(pf);
}

size_t pipeline_file_block(const struct pipeline_file *pf) { return pf->block->index; }

void pipeline_file_set_identity(struct pipeline_file *pf, uint64_t identity) { pf->identity = identity; }

static const struct stage *holder(const struct pipeline_file *pf)
{
    for (size_t i = 0; i < pf->block->nstages; i++)
        if (pf->block->stages[i].ops->holding) return &pf->block->stages[i];
    return NULL;
}

/* What the holding stage holds: the offset its first line starts at and its bytes. */
static bool held(const struct pipeline_file *pf, uint64_t *off, size_t *bytes)
{
    const struct stage *st = holder(pf);
    int64_t since;
    return st && st->ops->holding(st, stage_state((struct pipeline_file *)pf, st), off, &since, bytes);
}

uint64_t pipeline_file_ack_limit(const struct pipeline_file *pf)
{
    uint64_t off;
    size_t bytes;
    return held(pf, &off, &bytes) ? off : UINT64_MAX;
}

size_t pipeline_file_held_bytes(const struct pipeline_file *pf)
{
    uint64_t off;
    size_t bytes;
    if (held(pf, &off, &bytes)) return bytes;
    return 0;
}

bool pipeline_file_due(const struct pipeline_file *pf, int64_t now_ms)
{
    const struct stage *st = holder(pf);
    return st && st->ops->due(st, stage_state((struct pipeline_file *)pf, st), now_ms);
}

/* ------------------------------------------------------------------------ */
/* Running                                                                  */

void stage_note(struct stage_run *r, _Atomic uint64_t *c, uint64_t n)
{
    if (r->npending == r->pending_cap) { /* cannot happen: sized for the longest block */
        stage_count(c, n);
        return;
    }
    r->pending[r->npending++] = (struct stage_pending){c, n};
}

void stage_remember(struct stage_run *r, void *at, size_t len)
{
    struct stage_undo *u = &r->undo[r->nundo];
    if (r->nundo == STAGE_MAX_UNDO || len > sizeof u->was) return; /* compile refuses more such stages */
    u->at = at;
    u->len = len;
    memcpy(u->was, at, len);
    r->nundo++;
}

/* The entry is through (keep) or refused: apply its counts, or forget them
 * and put back what its stages changed, latest first. */
static void run_settle(struct stage_run *r, bool keep)
{
    if (keep) {
        for (size_t i = 0; i < r->npending; i++) stage_count(r->pending[i].counter, r->pending[i].n);
    } else {
        for (size_t i = r->nundo; i-- > 0;) memcpy(r->undo[i].at, r->undo[i].was, r->undo[i].len);
    }
    r->npending = 0;
    r->nundo = 0;
}

void stage_run_begin(struct stage_run *r)
{
    if (++r->cur_gen == 0) { /* wrapped: every old mark must read as unset */
        memset(r->gen, 0, sizeof r->gen);
        r->cur_gen = 1;
    }
    r->arena_len = 0;
    memset(r->label_set, 0, sizeof r->label_set);
    memset(r->meta_set, 0, sizeof r->meta_set);
    r->e.extras = NULL;
    r->e.extras_len = 0;
    r->npending = 0;
    r->nundo = 0;
}

static void run_reset(struct stage_run *r) { stage_run_begin(r); }

/* Label values as Loki reads them: `name="value"`, with \ " and newline escaped. */
/* A label value as Loki's label syntax quotes it. Control characters (a
 * NUL would end the label text early) become U+FFFD, as invalid UTF-8 does. */
static const char *escape_of(char ch, size_t *n)
{
    *n = 2;
    switch (ch) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\n': return "\\n";
    case '\t': return "\\t";
    }
    if ((unsigned char)ch < 0x20 || ch == 0x7f) {
        *n = 3;
        return "\xef\xbf\xbd";
    }
    *n = 1;
    return NULL;
}

static size_t escaped_len(const char *s, size_t len)
{
    size_t total = 0, n;
    for (size_t i = 0; i < len; i++) {
        escape_of(s[i], &n);
        total += n;
    }
    return total;
}

static size_t put_escaped(char *dst, const char *s, size_t len)
{
    size_t o = 0, n;
    for (size_t i = 0; i < len; i++) {
        const char *esc = escape_of(s[i], &n);
        if (esc) memcpy(dst + o, esc, n);
        else dst[o] = s[i];
        o += n;
    }
    return o;
}

/* The extras block (source.h): u16 labels length, the labels text, then
 * name\0value\0 pairs of structured metadata. */
static void render_extras(struct stage_run *r, struct stage *last)
{
    struct pipeline_block *b = r->block;
    char *x = r->extras;
    size_t room = STAGE_EXTRAS_MAX, o = 2;
    bool cut = false, any = false;
    for (size_t i = 0; i < b->nlabels; i++) {
        /* Loki and Prometheus read a label with an empty value as no label:
         * leaving it out sends what they store, and one label set, not two
         * (labels.max_pipeline_streams counts what is sent). */
        if (!r->label_set[i] || !r->label_len[i]) continue;
        size_t nl = strlen(b->labels[i]);
        /* Whole or not at all: a value cut short would be a wrong value. */
        size_t vl = escaped_len(r->label_val[i], r->label_len[i]);
        if (o + nl + 6 + vl > room) {
            cut = true;
            continue;
        }
        if (any) {
            memcpy(x + o, ", ", 2);
            o += 2;
        }
        memcpy(x + o, b->labels[i], nl);
        o += nl;
        memcpy(x + o, "=\"", 2);
        o += 2;
        o += put_escaped(x + o, r->label_val[i], r->label_len[i]);
        x[o++] = '"';
        any = true;
    }
    size_t labels_len = o - 2;
    x[0] = (char)(labels_len & 0xff);
    x[1] = (char)(labels_len >> 8);
    for (size_t i = 0; i < b->nmeta; i++) {
        if (!r->meta_set[i]) continue;
        size_t nl = strlen(b->meta[i]), vl = r->meta_len[i];
        /* A NUL inside a value would end it early: such values are cut there. */
        const char *nul = memchr(r->meta_val[i], '\0', vl);
        if (nul) vl = (size_t)(nul - r->meta_val[i]);
        if (o + nl + vl + 2 > room) {
            cut = true;
            continue;
        }
        memcpy(x + o, b->meta[i], nl + 1);
        o += nl + 1;
        memcpy(x + o, r->meta_val[i], vl);
        o += vl;
        x[o++] = '\0';
    }
    if (cut && last) stage_note(r, &last->counters.errors, 1);
    if (o > 2) {
        r->e.extras = x;
        r->e.extras_len = o;
    }
}

/* ------------------------------------------------------------------------ */
/* The node's bound on streams made by pipeline labels                      */

uint64_t pipeline_hash(uint64_t seed, const char *s, size_t len)
{
    uint64_t h = seed ^ 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int streams_init(struct stream_bound *sb, size_t max)
{
    sb->max = max;
    if (!max) return 0;
    for (sb->cap = 16; sb->cap < 2 * max; sb->cap *= 2) {}
    sb->slots = calloc(sb->cap, sizeof *sb->slots);
    sb->spare = calloc(sb->cap, sizeof *sb->spare);
    return sb->slots && sb->spare ? 0 : -1;
}

static struct stream_slot *streams_find(struct stream_slot *slots, size_t cap, uint64_t key)
{
    for (size_t i = key & (cap - 1);; i = (i + 1) & (cap - 1))
        if (slots[i].key == key || slots[i].key == 0) return &slots[i];
}

/* Keeps the sets used within STREAM_IDLE_MS (rebuilt: open addressing has no cheap delete). */
static void streams_sweep(struct stream_bound *sb, int64_t now)
{
    memset(sb->spare, 0, sb->cap * sizeof *sb->spare);
    sb->live = 0;
    for (size_t i = 0; i < sb->cap; i++) {
        struct stream_slot *old = &sb->slots[i];
        if (!old->key || now - old->last_ms >= STREAM_IDLE_MS) continue;
        *streams_find(sb->spare, sb->cap, old->key) = *old;
        sb->live++;
    }
    struct stream_slot *t = sb->slots;
    sb->slots = sb->spare;
    sb->spare = t;
    sb->last_sweep_ms = now;
    atomic_store_explicit(&sb->active, sb->live, memory_order_relaxed);
}

/* Whether the entry's label set may be a stream: one in use, or a new one
 * while the node is under labels.max_pipeline_streams. */
static bool streams_admit(struct stream_bound *sb, uint64_t key, int64_t now)
{
    if (!key) key = 1; /* 0 marks an empty slot */
    struct stream_slot *slot = streams_find(sb->slots, sb->cap, key);
    if (slot->key) {
        slot->last_ms = now;
        return true;
    }
    if (sb->live >= sb->max && now - sb->last_sweep_ms >= STREAM_SWEEP_EVERY_MS) {
        streams_sweep(sb, now);
        slot = streams_find(sb->slots, sb->cap, key);
    }
    if (sb->live >= sb->max) return false;
    *slot = (struct stream_slot){key, now};
    sb->live++;
    atomic_store_explicit(&sb->active, sb->live, memory_order_relaxed);
    return true;
}

/* Beyond the bound the entry keeps its file's own labels (never dropped);
 * its structured metadata stays. */
static void bound_streams(struct stage_run *r)
{
    struct stream_bound *sb = &r->p->streams;
    if (!sb->max || r->e.extras_len < 2) return;
    char *x = r->extras;
    size_t labels_len = (size_t)(unsigned char)x[0] | (size_t)(unsigned char)x[1] << 8;
    if (!labels_len) return;
    uint64_t key = pipeline_hash(r->pf->identity ^ ((uint64_t)r->e.stream << 56), x + 2, labels_len);
    if (streams_admit(sb, key, r->now_ms)) return;
    stage_note(r, &sb->limited, 1);
    if (!sb->said) {
        sb->said = true;
        log_warn("pipeline labels reached labels.max_pipeline_streams (%zu label sets used in the last %d minutes): "
                 "entries that would make a new stream keep their file's own labels; said once, counted in "
                 "loglet_pipeline_streams_limited_total",
                 sb->max, STREAM_IDLE_MS / 60000);
    }
    size_t rest = r->e.extras_len - 2 - labels_len;
    memmove(x + 2, x + 2 + labels_len, rest);
    x[0] = x[1] = 0;
    r->e.extras_len = 2 + rest;
    if (!rest) {
        r->e.extras = NULL;
        r->e.extras_len = 0;
    }
}

/* Runs r's entry from stage `from` to the end and emits it. */
static enum stage_verdict run_from(struct stage_run *r, size_t from)
{
    struct pipeline_block *b = r->block;
    for (size_t i = from; i < b->nstages; i++) {
        struct stage *st = &b->stages[i];
        r->at = i;
        stage_note(r, &st->counters.in, 1);
        enum stage_verdict v = st->ops->process(st, stage_state(r->pf, st), r);
        switch (v) {
        case STAGE_PASS:
            stage_note(r, &st->counters.out, 1);
            continue;
        case STAGE_DROP:
            if (r->drop_reason < STAGE_MAX_REASONS) stage_note(r, &st->counters.dropped[r->drop_reason], 1);
            return STAGE_DROP;
        case STAGE_HOLD: /* counted as out (and joined) when the join is sent */
            return STAGE_HOLD;
        case STAGE_FAIL:
            return STAGE_FAIL;
        }
    }
    if (b->nlabels || b->nmeta) render_extras(r, b->nstages ? &b->stages[b->nstages - 1] : NULL);
    if (b->nlabels) bound_streams(r);
    return r->emit(r->emit_ctx, &r->e) ? STAGE_PASS : STAGE_FAIL;
}

enum stage_verdict stage_run_rest(struct stage_run *from, struct stage_run *sub)
{
    sub->block = from->block;
    sub->pf = from->pf;
    sub->emit = from->emit;
    sub->emit_ctx = from->emit_ctx;
    sub->now_ms = from->now_ms;
    sub->now_real_ns = from->now_real_ns;
    enum stage_verdict v = run_from(sub, from->at + 1);
    run_settle(sub, v != STAGE_FAIL);
    return v == STAGE_FAIL ? STAGE_FAIL : STAGE_PASS;
}

void pipeline_set_clock(struct pipeline *p, int64_t mono_ms, int64_t real_ns)
{
    p->clock_ms = mono_ms;
    p->clock_real_ns = real_ns;
}

static void set_now(struct pipeline *p, struct stage_run *r)
{
    if (p->clock_ms) {
        r->now_ms = p->clock_ms;
        r->now_real_ns = p->clock_real_ns;
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->now_real_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    r->now_ms = metrics_now_ms();
}

bool pipeline_process(struct pipeline_file *pf, const char *content, size_t len, int64_t ts_ns, uint8_t stream,
                      uint8_t flags, uint64_t line_start, pipeline_emit_fn emit, void *ctx, bool *dropped)
{
    struct stage_run *r = &pf->p->run;
    *dropped = false;
    if (len > r->line_cap) len = r->line_cap; /* cannot happen: entries are at most a repaired line */
    run_reset(r);
    r->block = pf->block;
    r->pf = pf;
    r->emit = emit;
    r->emit_ctx = ctx;
    set_now(pf->p, r);
    memcpy(r->line, content, len);
    r->e = (struct pipeline_entry){.line = r->line, .len = len, .ts_ns = ts_ns, .stream = stream, .flags = flags};
    r->line_start = line_start;
    enum stage_verdict v = run_from(r, 0);
    run_settle(r, v != STAGE_FAIL);
    *dropped = v == STAGE_DROP;
    return v != STAGE_FAIL;
}

bool pipeline_file_flush(struct pipeline_file *pf, pipeline_emit_fn emit, void *ctx)
{
    const struct stage *st = holder(pf);
    if (!st) return true;
    struct stage_run *r = &pf->p->run;
    run_reset(r);
    r->block = pf->block;
    r->pf = pf;
    r->emit = emit;
    r->emit_ctx = ctx;
    set_now(pf->p, r);
    r->at = st->index;
    bool ok = st->ops->flush(st, stage_state(pf, st), r) != STAGE_FAIL;
    run_settle(r, ok);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* Metrics                                                                  */

void pipeline_publish_metrics(struct pipeline *p) { published = p; }

struct mw {
    char *buf;
    size_t cap, len;
};

static void mw_put(struct mw *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mw_put(struct mw *w, const char *fmt, ...)
{
    if (w->len + 1 >= w->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->buf + w->len, w->cap - w->len, fmt, ap);
    va_end(ap);
    if (n > 0) w->len += (size_t)n < w->cap - w->len ? (size_t)n : w->cap - w->len - 1;
}

size_t pipeline_render_metrics(char *buf, size_t cap)
{
    struct pipeline *p = published;
    struct mw w = {buf, cap, 0};
    if (!p || !p->nblocks || !cap) return 0;
    static const struct {
        const char *name, *help;
        size_t off;
    } series[] = {
        {"in", "Entries a pipeline stage received.", offsetof(struct stage_counters, in)},
        {"out", "Entries a pipeline stage passed on.", offsetof(struct stage_counters, out)},
        {"joined", "Lines a multiline stage sent joined (an entry of N >= 2 lines counts N).", offsetof(struct stage_counters, joined)},
        {"errors", "Entries a stage could not process (malformed JSON or logfmt, regex match limit, bad timestamp, extras cut); they pass unchanged.",
         offsetof(struct stage_counters, errors)},
    };
    for (size_t k = 0; k < sizeof series / sizeof series[0]; k++) {
        mw_put(&w, "# HELP loglet_pipeline_%s_total %s\n# TYPE loglet_pipeline_%s_total counter\n", series[k].name,
               series[k].help, series[k].name);
        for (size_t i = 0; i < p->nblocks; i++)
            for (size_t s = 0; s < p->blocks[i].nstages; s++) {
                struct stage *st = &p->blocks[i].stages[s];
                _Atomic uint64_t *c = (_Atomic uint64_t *)((char *)&st->counters + series[k].off);
                mw_put(&w, "loglet_pipeline_%s_total{block=\"%zu\",stage=\"%zu\",type=\"%s\"} %llu\n", series[k].name,
                       i, s, st->ops->name, (unsigned long long)atomic_load_explicit(c, memory_order_relaxed));
            }
    }
    mw_put(&w, "# HELP loglet_pipeline_dropped_total Entries a pipeline stage dropped, by reason (acknowledged, never sent).\n"
               "# TYPE loglet_pipeline_dropped_total counter\n");
    for (size_t i = 0; i < p->nblocks; i++)
        for (size_t s = 0; s < p->blocks[i].nstages; s++) {
            struct stage *st = &p->blocks[i].stages[s];
            if (!st->ops->drop_reasons) continue;
            for (size_t r = 0; st->ops->drop_reasons[r] && r < STAGE_MAX_REASONS; r++)
                mw_put(&w, "loglet_pipeline_dropped_total{block=\"%zu\",stage=\"%zu\",type=\"%s\",reason=\"%s\"} %llu\n", i,
                       s, st->ops->name, st->ops->drop_reasons[r],
                       (unsigned long long)atomic_load_explicit(&st->counters.dropped[r], memory_order_relaxed));
        }
    if (p->streams.max) {
        mw_put(&w, "# HELP loglet_pipeline_streams Label sets pipeline labels made on this node in the last %d minutes "
                   "(at most labels.max_pipeline_streams, %zu).\n# TYPE loglet_pipeline_streams gauge\nloglet_pipeline_streams %llu\n",
               STREAM_IDLE_MS / 60000, p->streams.max,
               (unsigned long long)atomic_load_explicit(&p->streams.active, memory_order_relaxed));
        mw_put(&w, "# HELP loglet_pipeline_streams_limited_total Entries sent with their file's own labels because "
                   "their pipeline labels would have made more streams than labels.max_pipeline_streams.\n"
                   "# TYPE loglet_pipeline_streams_limited_total counter\nloglet_pipeline_streams_limited_total %llu\n",
               (unsigned long long)atomic_load_explicit(&p->streams.limited, memory_order_relaxed));
    }
    return w.len;
}

/* ------------------------------------------------------------------------ */
/* Field maps (json, logfmt)                                                */

int stage_fieldmap(struct stage_compile *cx, const struct config_tree *node, struct stage_fieldmap *fm)
{
    static const char *const keys[] = {"fields", "source", NULL};
    fm->n = 0;
    fm->source = -1;
    if (node->kind != CONFIG_TREE_MAP) return stage_fail(cx, node, NULL, "expected a mapping with fields");
    if (stage_check_keys(cx, node, keys) != 0) return -1;
    bool bad = false;
    const char *source = stage_scalar(cx, node, "source", &bad);
    if (bad) return -1;
    if (source && (fm->source = stage_field(cx, config_tree_get(node, "source"), source)) < 0) return -1;
    const struct config_tree *f = config_tree_get(node, "fields");
    if (!f || f->count == 0) return stage_fail(cx, f ? f : node, "fields", "missing: name the fields to extract");
    if (f->kind == CONFIG_TREE_SCALAR) return stage_fail(cx, f, "fields", "expected a mapping or a list of names");
    for (size_t i = 0; i < f->count; i++) {
        const struct config_tree *v = f->items[i];
        const char *name = f->kind == CONFIG_TREE_MAP ? f->keys[i] : v->text;
        const char *src = v->kind == CONFIG_TREE_SCALAR && *v->text ? v->text : name;
        if (v->kind != CONFIG_TREE_SCALAR || !name)
            return stage_fail(cx, v, "fields", "each field is `name: key` (or a list of names)");
        if (fm->n == STAGE_MAX_FIELDS) return stage_fail(cx, v, "fields", "more than %d fields", STAGE_MAX_FIELDS);
        int slot = stage_field_set(cx, v, name);
        if (slot < 0) return -1;
        if (!(fm->src[fm->n] = strdup(src))) return stage_fail(cx, v, "fields", "out of memory");
        fm->slot[fm->n++] = slot;
    }
    return 0;
}

void stage_fieldmap_free(struct stage_fieldmap *fm)
{
    for (size_t i = 0; i < fm->n; i++) free(fm->src[i]);
    fm->n = 0;
}

void stage_fieldmap_print(const struct stage *st, const struct stage_fieldmap *fm, FILE *out)
{
    fputs("{fields: {", out);
    for (size_t i = 0; i < fm->n; i++) {
        const char *name = st->block->fields[fm->slot[i]];
        if (i) fputs(", ", out);
        stage_print_key(out, name, strlen(name));
        fputs(": ", out);
        stage_print_string(out, fm->src[i], strlen(fm->src[i]));
    }
    fputc('}', out);
    if (fm->source >= 0) {
        fputs(", source: ", out);
        stage_print_string(out, st->block->fields[fm->source], strlen(st->block->fields[fm->source]));
    }
    fputc('}', out);
}

bool stage_input(const struct stage_run *r, int source, const char **text, size_t *len)
{
    if (source < 0) {
        *text = r->e.line;
        *len = r->e.len;
        return true;
    }
    return stage_get(r, (size_t)source, text, len);
}

/* ------------------------------------------------------------------------ */
/* Pausing and handing over                                                 */

bool pipeline_file_paused(const struct pipeline_file *pf, int64_t now_ms, int64_t *until_ms)
{
    if (!pf->can_pause) return false;
    if (!now_ms) now_ms = metrics_now_ms();
    for (size_t i = 0; i < pf->block->nstages; i++) {
        const struct stage *st = &pf->block->stages[i];
        if (st->ops->paused && st->ops->paused(st, stage_state((struct pipeline_file *)pf, st), now_ms, until_ms))
            return true;
    }
    return false;
}

bool pipeline_file_handoff(struct pipeline_file *from, struct pipeline_file *to, void *origin, uint64_t origin_end,
                           uint64_t to_offset)
{
    if (!from || !to || from->block != to->block) return false;
    const struct stage *st = holder(from);
    if (!st || !st->ops->handoff) return false;
    return st->ops->handoff(st, stage_state(from, st), stage_state(to, st), origin, origin_end, to_offset);
}

void pipeline_set_origin_release(struct pipeline *p, void (*release)(void *origin)) { p->release_origin = release; }
