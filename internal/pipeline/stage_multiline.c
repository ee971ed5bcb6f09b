/*
 * multiline — joins the lines of one event (a stack trace, a traceback, a
 * panic) into one entry, per file, in file order.
 *
 * A line either continues the entry being held or starts a new one; the
 * held entry goes on when a line starts a new one, when it would pass
 * max_lines or max_bytes, when a line of another stream comes (stdout and
 * stderr are never mixed), or when `timeout` passes with no new line. The
 * joined entry keeps its first line's timestamp and the lines are joined
 * with "\n".
 *
 * Modes: `start: RE` (a matching line starts an entry), `continue: RE` (a
 * matching line continues one), or a built-in for java, python, go and ruby.
 * The built-ins are patterns, compiled once, plus for python and go one
 * state value (inside a traceback / a panic), because their continuation
 * lines are not all recognisable on their own: Python's exception line and
 * Go's frame lines start in column 0. Tested against the real traces in
 * tests/fixtures/multiline/.
 *
 * Delivery: while an entry is held, holding() reports the offset where its
 * first line starts; the collector acknowledges nothing past it, so after a
 * crash the held lines are read again and the entry is joined again.
 * Memory: the buffer grows by doubling to at most max_bytes per file.
 */
#include <stdlib.h>
#include <string.h>

#include "source/source.h"
#include "stage.h"

enum ml_mode { ML_START, ML_CONTINUE, ML_JAVA, ML_PYTHON, ML_GO, ML_RUBY };
static const char *const mode_names[] = {"start", "continue", "java", "python", "go", "ruby"};

/* What each built-in mode recognises. */
enum ml_pattern {
    PAT_JAVA,       /* java: a frame, "... N more", Caused by / Suppressed, an exception header after a message */
    PAT_PY_TB,      /* python: the first line of a traceback */
    PAT_PY_CHAIN,   /* python: the sentences between chained tracebacks */
    PAT_INDENTED,   /* python, go: a frame or source line */
    PAT_BLANK,
    PAT_GO_START,   /* go: panic / fatal error */
    PAT_GO_CONT,    /* go: goroutine headers, frames, created by, signal and exit lines */
    PAT_RUBY,       /* ruby: indented lines ("from", source excerpts), blank lines, bare frame lines */
    NPATTERNS
};

static const char *const patterns[NPATTERNS] = {
    [PAT_JAVA] = "^(?:[\\t ]+(?:at |\\.\\.\\. \\d+ (?:more|common frames omitted)|Caused by: |Suppressed: )"
                 "|Caused by: |(?:[a-zA-Z_$][\\w$]*\\.)+[\\w$]*(?:Exception|Error|Throwable)(?:: |$))",
    [PAT_PY_TB] = "^(?:Traceback \\(most recent call last\\):|  \\+ Exception Group Traceback \\(most recent call last\\):)$",
    [PAT_PY_CHAIN] = "^(?:During handling of the above exception, another exception occurred:"
                     "|The above exception was the direct cause of the following exception:)$",
    [PAT_INDENTED] = "^[\\t ]",
    [PAT_BLANK] = "^\\s*$",
    [PAT_GO_START] = "^(?:panic: |fatal error: |runtime: |SIGSEGV: |SIGABRT: )",
    [PAT_GO_CONT] = "^(?:goroutine \\d+ \\[|created by |\\[signal |exit status \\d+$|\\.\\.\\.\\d+ frames elided\\.\\.\\.$"
                    "|\\[recovered\\]|\\S+\\(.*\\)$|r(?:ax|bx|cx|dx|di|si|bp|sp|ip|\\d+|flags) +0x|(?:cs|fs|gs) +0x)",
    /* Ruby 3.1+ prints error_highlight's source excerpt (a blank line, then
     * indented code and carets) between the message and the "from" lines. */
    [PAT_RUBY] = "^(?:[\\t ]|$|[^\\s:]+:\\d+:in [`'][^']*'$)",
};

/* Python and Go: where in a trace the last line was. */
enum ml_trace { TR_NONE, TR_PY_FRAMES, TR_PY_AFTER_EXC, TR_PY_CHAINING, TR_GO_PANIC };

struct ml_conf {
    enum ml_mode mode;
    pcre2_code *user; /* start: / continue: */
    char *user_text;
    pcre2_code *pat[NPATTERNS];
    int64_t max_lines, max_bytes, timeout_ms;
};

struct ml_state {
    char *buf;
    size_t cap, len;
    size_t lines;
    bool open;
    uint8_t stream, flags;
    int64_t ts_ns;
    uint64_t start_offset;
    int64_t last_ms;
    enum ml_trace trace;
    void *origin; /* a closed predecessor's source, when the entry began there */
    uint64_t origin_end;
};

static bool hit(const struct ml_conf *mc, enum ml_pattern p, struct stage_run *r, bool *limit)
{
    int rc = pcre2_match(mc->pat[p], (PCRE2_SPTR)r->e.line, r->e.len, 0, 0, r->p->md, r->p->mctx);
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT) *limit = true;
    return rc >= 0;
}

/* Whether the line continues the held entry, and the trace state after it. */
static bool continues(const struct ml_conf *mc, enum ml_trace trace, struct stage_run *r, enum ml_trace *next,
                      bool *limit)
{
    *next = TR_NONE;
    switch (mc->mode) {
    case ML_START: {
        int rc = pcre2_match(mc->user, (PCRE2_SPTR)r->e.line, r->e.len, 0, 0, r->p->md, r->p->mctx);
        if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT) *limit = true;
        return rc < 0;
    }
    case ML_CONTINUE: {
        int rc = pcre2_match(mc->user, (PCRE2_SPTR)r->e.line, r->e.len, 0, 0, r->p->md, r->p->mctx);
        if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT) *limit = true;
        return rc >= 0;
    }
    case ML_JAVA:
        return hit(mc, PAT_JAVA, r, limit);
    case ML_RUBY:
        return hit(mc, PAT_RUBY, r, limit);
    case ML_GO:
        if (hit(mc, PAT_GO_START, r, limit)) {
            *next = TR_GO_PANIC;
            return false; /* a panic starts an entry */
        }
        if (trace != TR_GO_PANIC) return false;
        *next = TR_GO_PANIC;
        return hit(mc, PAT_BLANK, r, limit) || hit(mc, PAT_INDENTED, r, limit) || hit(mc, PAT_GO_CONT, r, limit);
    case ML_PYTHON:
        if (hit(mc, PAT_PY_TB, r, limit)) {
            *next = TR_PY_FRAMES; /* joined to the message logged before it */
            return true;
        }
        switch (trace) {
        case TR_PY_FRAMES:
            *next = TR_PY_FRAMES;
            if (hit(mc, PAT_INDENTED, r, limit)) return true;
            *next = TR_PY_AFTER_EXC; /* the exception line ends the frames */
            return true;
        case TR_PY_AFTER_EXC:
        case TR_PY_CHAINING:
            if (hit(mc, PAT_PY_CHAIN, r, limit) || hit(mc, PAT_BLANK, r, limit)) {
                *next = TR_PY_CHAINING;
                return true;
            }
            /* Indented lines after the exception: a multi-line message or notes. */
            if (trace == TR_PY_AFTER_EXC && hit(mc, PAT_INDENTED, r, limit)) {
                *next = TR_PY_AFTER_EXC;
                return true;
            }
            return false;
        default:
            return false;
        }
    }
    return false;
}

static bool grow(struct ml_state *s, size_t need, size_t max)
{
    if (need <= s->cap) return true;
    size_t cap = s->cap ? s->cap : 4096;
    while (cap < need) cap *= 2;
    if (cap > max) cap = max;
    if (cap < need) return false;
    char *p = realloc(s->buf, cap);
    if (!p) return false;
    s->buf = p;
    s->cap = cap;
    return true;
}

/* Sends the held entry through the stages after this one. */
static enum stage_verdict send_held(const struct stage *st, struct ml_state *s, struct stage_run *r)
{
    struct stage_run *out = &r->p->held_run;
    stage_run_begin(out); /* the held run: the current one keeps its values */
    /* Counted with the entry: applied only if it gets through. */
    stage_note(out, &((struct stage *)st)->counters.out, 1);
    if (s->lines > 1) stage_note(out, &((struct stage *)st)->counters.joined, s->lines);
    size_t len = s->len < out->line_cap ? s->len : out->line_cap;
    memcpy(out->line, s->buf, len);
    out->e = (struct pipeline_entry){.line = out->line, .len = len, .ts_ns = s->ts_ns, .stream = s->stream,
                                     .flags = s->flags, .origin = s->origin, .origin_end = s->origin_end};
    out->line_start = s->start_offset;
    if (stage_run_rest(r, out) == STAGE_FAIL) return STAGE_FAIL;
    s->open = false;
    s->len = 0;
    s->lines = 0;
    s->origin = NULL; /* the emitter took the reference */
    return STAGE_PASS;
}

static enum stage_verdict ml_process(const struct stage *st, void *state, struct stage_run *r)
{
    const struct ml_conf *mc = st->conf;
    struct ml_state *s = state;
    bool limit = false;
    enum ml_trace next;
    bool cont = continues(mc, s->open ? s->trace : TR_NONE, r, &next, &limit);
    if (limit) stage_note(r, &((struct stage *)st)->counters.errors, 1);
    size_t max = (size_t)mc->max_bytes;
    if (s->open && cont && r->e.stream == s->stream && s->lines < (size_t)mc->max_lines &&
        s->len + 1 + r->e.len <= max && grow(s, s->len + 1 + r->e.len, max)) {
        s->buf[s->len++] = '\n';
        memcpy(s->buf + s->len, r->e.line, r->e.len);
        s->len += r->e.len;
        s->lines++;
        s->flags |= r->e.flags & (SOURCE_RECORD_UTF8_FIXED | SOURCE_RECORD_MALFORMED);
        /* Whether the entry's last line goes on in the next record is its
         * last line's to say (a drop after the join judges by it). */
        s->flags = (uint8_t)((s->flags & ~SOURCE_RECORD_MORE) | (r->e.flags & SOURCE_RECORD_MORE));
        s->last_ms = r->now_ms;
        s->trace = next;
        return STAGE_HOLD;
    }
    if (s->open && send_held(st, s, r) == STAGE_FAIL) return STAGE_FAIL;
    if (r->e.len > max || !grow(s, r->e.len ? r->e.len : 1, max)) return STAGE_PASS; /* alone, at once */
    memcpy(s->buf, r->e.line, r->e.len);
    s->len = r->e.len;
    s->lines = 1;
    s->open = true;
    s->ts_ns = r->e.ts_ns;
    s->stream = r->e.stream;
    s->flags = r->e.flags;
    s->start_offset = r->line_start;
    s->last_ms = r->now_ms;
    s->trace = next;
    return STAGE_HOLD;
}

static enum stage_verdict ml_flush(const struct stage *st, void *state, struct stage_run *r)
{
    struct ml_state *s = state;
    if (!s->open) return STAGE_PASS;
    enum stage_verdict v = send_held(st, s, r);
    if (v != STAGE_FAIL) s->trace = TR_NONE;
    return v;
}

static bool ml_holding(const struct stage *st, const void *state, uint64_t *since_offset, int64_t *since_ms,
                       size_t *bytes)
{
    (void)st;
    const struct ml_state *s = state;
    if (!s->open) return false;
    *since_offset = s->start_offset;
    *since_ms = s->last_ms;
    *bytes = s->len;
    return true;
}

static bool ml_due(const struct stage *st, const void *state, int64_t now_ms)
{
    const struct ml_conf *mc = st->conf;
    const struct ml_state *s = state;
    return s->open && now_ms - s->last_ms >= mc->timeout_ms;
}

static bool ml_handoff(const struct stage *st, void *from, void *to, void *origin, uint64_t origin_end,
                       uint64_t to_offset)
{
    (void)st;
    struct ml_state *a = from, *b = to;
    /* A join that already began in an earlier file (a trace longer than a
     * rotation) goes out here instead of moving on again: its first file
     * must be acknowledged once, by one entry. */
    if (!a->open || a->origin || b->open || b->origin) return false;
    char *spare = b->buf;
    size_t spare_cap = b->cap;
    *b = *a;
    /* Nothing of the next file may be acknowledged before the entry is out. */
    b->start_offset = to_offset;
    b->origin = origin;
    b->origin_end = origin_end;
    *a = (struct ml_state){.buf = spare, .cap = spare_cap};
    return true;
}

static void ml_discard(const struct stage *st, void *state, void (*release_origin)(void *))
{
    (void)st;
    struct ml_state *s = state;
    if (s->origin && release_origin) release_origin(s->origin);
    s->origin = NULL;
    s->open = false;
    s->len = s->lines = 0;
}

static void ml_state_free(const struct stage *st, void *state)
{
    (void)st;
    struct ml_state *s = state;
    free(s->buf);
    s->buf = NULL;
}

static int ml_compile(struct stage *st, const struct config_tree *node, struct stage_compile *cx)
{
    static const char *const keys[] = {"mode", "start", "continue", "max_lines", "max_bytes", "timeout", NULL};
    struct ml_conf *mc = calloc(1, sizeof *mc);
    if (!mc) return stage_fail(cx, node, NULL, "out of memory");
    st->conf = mc;
    mc->max_lines = 500;
    mc->max_bytes = cx->cfg->collection.max_line_bytes;
    mc->timeout_ms = 3000;
    if (node->kind != CONFIG_TREE_MAP)
        return stage_fail(cx, node, NULL, "expected a mapping (mode, or start / continue, and limits)");
    if (stage_check_keys(cx, node, keys) != 0) return -1;
    bool bad = false;
    const char *mode = stage_scalar(cx, node, "mode", &bad);
    const char *start = stage_scalar(cx, node, "start", &bad);
    const char *cont = stage_scalar(cx, node, "continue", &bad);
    if (bad) return -1;
    if (!!mode + !!start + !!cont != 1)
        return stage_fail(cx, node, NULL, "set exactly one of mode (java, python, go, ruby), start or continue");
    if (mode) {
        mc->mode = ML_START;
        for (int m = ML_JAVA; m <= ML_RUBY; m++)
            if (strcmp(mode, mode_names[m]) == 0) mc->mode = (enum ml_mode)m;
        if (mc->mode == ML_START)
            return stage_fail(cx, config_tree_get(node, "mode"), "mode", "'%s' is not one of java, python, go, ruby",
                              mode);
        for (int p = 0; p < NPATTERNS; p++)
            if (!(mc->pat[p] = stage_regex(cx, node, "mode", patterns[p]))) return -1;
    } else {
        const char *key = start ? "start" : "continue";
        mc->mode = start ? ML_START : ML_CONTINUE;
        if (!(mc->user_text = strdup(start ? start : cont))) return stage_fail(cx, node, key, "out of memory");
        if (!(mc->user = stage_regex(cx, config_tree_get(node, key), key, mc->user_text))) return -1;
    }
    if (stage_get_int(cx, node, "max_lines", 1, 100000, &mc->max_lines) != 0) return -1;
    if (stage_get_size(cx, node, "max_bytes", &mc->max_bytes) != 0) return -1;
    if (stage_get_duration(cx, node, "timeout", &mc->timeout_ms) != 0) return -1;
    if (mc->max_bytes < 1 || mc->max_bytes > cx->cfg->collection.max_line_bytes)
        return stage_fail(cx, config_tree_get(node, "max_bytes"), "max_bytes",
                          "must be between 1 and collection.max_line_bytes (%lld): a joined entry is one Loki line",
                          (long long)cx->cfg->collection.max_line_bytes);
    if (mc->timeout_ms < 1) return stage_fail(cx, config_tree_get(node, "timeout"), "timeout", "must be more than 0");
    return 0;
}

static void ml_print(const struct stage *st, FILE *out)
{
    const struct ml_conf *mc = st->conf;
    fputc('{', out);
    if (mc->user) {
        fprintf(out, "%s: ", mode_names[mc->mode]);
        stage_print_string(out, mc->user_text, strlen(mc->user_text));
    } else {
        fprintf(out, "mode: %s", mode_names[mc->mode]);
    }
    fprintf(out, ", max_lines: %lld, max_bytes: %lld, timeout: %lldms}", (long long)mc->max_lines,
            (long long)mc->max_bytes, (long long)mc->timeout_ms);
}

static void ml_free(struct stage *st)
{
    struct ml_conf *mc = st->conf;
    if (!mc) return;
    pcre2_code_free(mc->user);
    for (int p = 0; p < NPATTERNS; p++) pcre2_code_free(mc->pat[p]);
    free(mc->user_text);
    free(mc);
}

const struct stage_ops stage_multiline = {
    .name = "multiline",
    .compile = ml_compile,
    .state_size = sizeof(struct ml_state),
    .state_free = ml_state_free,
    .process = ml_process,
    .flush = ml_flush,
    .holding = ml_holding,
    .due = ml_due,
    .handoff = ml_handoff,
    .discard = ml_discard,
    .print = ml_print,
    .free = ml_free,
};
