/*
 * drop — discards entries: `line: RE` (the line matches), `older_than: 6h`
 * (its timestamp is older than that when read), `longer_than: 1MiB`, and
 * `source: FIELD` with `value: X` (the field equals X) or `expression: RE`
 * (the field matches). Each condition is a reason on its own: an entry is
 * dropped when any of them holds (Promtail's drop needs all of them; one
 * drop stage per reason reads better and counts better).
 *
 * A dropped entry is acknowledged like a delivered one and counted in
 * loglet_pipeline_dropped_total{reason=line|older_than|longer_than|value}.
 * A pattern over its match limit does not drop (counted in errors).
 *
 * Lines longer than collection.max_line_bytes reach the stages in pieces
 * (source.h: the first is cut with MORE, the others are CONTINUED). An
 * operator means the line, not the piece, so a drop takes the rest of its
 * line with it: once a piece is dropped, for any reason, every CONTINUED
 * piece after it is dropped too, and the line counts once. longer_than
 * judges the line: a piece cut with MORE belongs to a line longer than
 * max_line_bytes, so with longer_than <= max_line_bytes (refused otherwise,
 * at load: the first piece would be sent before the line's length is
 * known) the whole line goes, from its first piece. Pieces ended otherwise
 * (a flush, a stream change) are judged by the bytes of the line so far.
 * What a piece of a line matches (line, value) is still judged per piece:
 * the pieces before the one that matched have gone out.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "source/source.h"
#include "stage.h"

enum { R_LINE, R_OLDER, R_LONGER, R_VALUE };
static const char *const reasons[] = {"line", "older_than", "longer_than", "value", NULL};

struct drop_conf {
    pcre2_code *line, *expr;
    char *line_text, *expr_text, *value;
    int source;
    int64_t older_than_ms, longer_than;
};

/* Per file: the line at hand, when it comes in pieces. Invariant: both are
 * 0 after a record that is not a piece of a longer line (no CONTINUED, MORE
 * or SPLIT); `dropping` is only set by a dropped piece, and only CONTINUED
 * records are dropped for it. */
struct drop_state {
    uint64_t so_far; /* bytes of the line's pieces that passed this stage */
    bool dropping;   /* a piece of this line was dropped: its rest goes too */
};

static bool matches(const struct stage *st, pcre2_code *re, const char *s, size_t len, struct stage_run *r)
{
    int rc = pcre2_match(re, (PCRE2_SPTR)s, len, 0, 0, r->p->md, r->p->mctx);
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT)
        stage_note(r, &((struct stage *)st)->counters.errors, 1);
    return rc >= 0;
}

/* The reason, or -1 to pass; `total` is the line's length so far. */
static int judge(const struct stage *st, const struct drop_conf *dc, struct stage_run *r, uint64_t total)
{
    /* MORE: the line is longer than max_line_bytes, which compile keeps at
     * or above longer_than. */
    if (dc->longer_than && (total > (uint64_t)dc->longer_than || (r->e.flags & SOURCE_RECORD_MORE))) return R_LONGER;
    if (dc->older_than_ms && r->e.ts_ns < r->now_real_ns - dc->older_than_ms * 1000000) return R_OLDER;
    if (dc->line && matches(st, dc->line, r->e.line, r->e.len, r)) return R_LINE;
    if (dc->source >= 0) {
        const char *v;
        size_t len;
        if (stage_get(r, (size_t)dc->source, &v, &len) &&
            ((dc->value && len == strlen(dc->value) && memcmp(v, dc->value, len) == 0) ||
             (dc->expr && matches(st, dc->expr, v, len, r))))
            return R_VALUE;
    }
    return -1;
}

static enum stage_verdict drop_process(const struct stage *st, void *state, struct stage_run *r)
{
    const struct drop_conf *dc = st->conf;
    struct drop_state *s = state;
    const uint8_t flags = r->e.flags;
    const bool piece = flags & (SOURCE_RECORD_SPLIT | SOURCE_RECORD_CONTINUED | SOURCE_RECORD_MORE);
    /* Put back if the entry is refused, so the record read again is judged
     * again from the same state. Lines that are not pieces cost nothing. */
    if (piece || s->so_far || s->dropping) stage_remember(r, s, sizeof *s);
    if (!(flags & SOURCE_RECORD_CONTINUED)) {
        /* A new line: what was kept for the last one (its end may never come:
         * a rotation, a stream change) no longer applies. */
        *s = (struct drop_state){0};
    }
    if (s->dropping) {
        assert(flags & SOURCE_RECORD_CONTINUED);
        r->drop_reason = STAGE_DROP_REST; /* counted with its first dropped piece */
        return STAGE_DROP;
    }
    uint64_t total = s->so_far + r->e.len;
    int reason = judge(st, dc, r, total);
    if (!piece) {
        if (reason < 0) return STAGE_PASS;
        r->drop_reason = (size_t)reason;
        return STAGE_DROP;
    }
    if (reason < 0) {
        s->so_far = total;
        return STAGE_PASS;
    }
    s->dropping = true;
    r->drop_reason = (size_t)reason;
    return STAGE_DROP;
}

/* A size as an operator writes it: 1MiB, 300KiB, or bytes. */
static const char *size_text(int64_t v, char *buf, size_t len)
{
    if (v >= 1024 * 1024 && v % (1024 * 1024) == 0) snprintf(buf, len, "%lldMiB", (long long)(v / (1024 * 1024)));
    else if (v >= 1024 && v % 1024 == 0) snprintf(buf, len, "%lldKiB", (long long)(v / 1024));
    else snprintf(buf, len, "%lldB", (long long)v);
    return buf;
}

static int drop_compile(struct stage *st, const struct config_tree *node, struct stage_compile *cx)
{
    static const char *const keys[] = {"line", "older_than", "longer_than", "source", "value", "expression", NULL};
    struct drop_conf *dc = calloc(1, sizeof *dc);
    if (!dc) return stage_fail(cx, node, NULL, "out of memory");
    st->conf = dc;
    dc->source = -1;
    if (node->kind != CONFIG_TREE_MAP || node->count == 0)
        return stage_fail(cx, node, NULL, "expected a mapping of conditions (line, older_than, longer_than, source with value or expression)");
    if (stage_check_keys(cx, node, keys) != 0) return -1;
    bool bad = false;
    const char *line = stage_scalar(cx, node, "line", &bad);
    const char *source = stage_scalar(cx, node, "source", &bad);
    const char *value = stage_scalar(cx, node, "value", &bad);
    const char *expr = stage_scalar(cx, node, "expression", &bad);
    if (bad) return -1;
    if (line) {
        if (!(dc->line_text = strdup(line))) return stage_fail(cx, node, "line", "out of memory");
        if (!(dc->line = stage_regex(cx, config_tree_get(node, "line"), "line", line))) return -1;
    }
    if ((value || expr) && !source) return stage_fail(cx, node, value ? "value" : "expression", "needs source: FIELD");
    if (source && !value && !expr) return stage_fail(cx, node, "source", "needs value or expression");
    if (source && (dc->source = stage_field(cx, config_tree_get(node, "source"), source)) < 0) return -1;
    if (value && !(dc->value = strdup(value))) return stage_fail(cx, node, "value", "out of memory");
    if (expr) {
        if (!(dc->expr_text = strdup(expr))) return stage_fail(cx, node, "expression", "out of memory");
        if (!(dc->expr = stage_regex(cx, config_tree_get(node, "expression"), "expression", expr))) return -1;
    }
    if (stage_get_duration(cx, node, "older_than", &dc->older_than_ms) != 0) return -1;
    if (stage_get_size(cx, node, "longer_than", &dc->longer_than) != 0) return -1;
    /* 0 is how a condition is off inside; written out it would silently be
     * off too (longer than 0 bytes reads as every line). */
    if (config_tree_get(node, "older_than") && dc->older_than_ms <= 0)
        return stage_fail(cx, config_tree_get(node, "older_than"), "older_than", "must be more than 0");
    if (config_tree_get(node, "longer_than") && dc->longer_than <= 0)
        return stage_fail(cx, config_tree_get(node, "longer_than"), "longer_than", "must be more than 0");
    int64_t max_line = cx->cfg->collection.max_line_bytes;
    if (dc->longer_than > max_line) {
        char n[32], m[32];
        return stage_fail(cx, config_tree_get(node, "longer_than"), "longer_than",
                          "%s is more than collection.max_line_bytes (%s): a longer line reaches the stages in "
                          "pieces of max_line_bytes, and its first piece would be sent before its length is "
                          "known; set collection.max_line_bytes to at least %s (lines up to it then reach the "
                          "stages whole), or longer_than to at most %s",
                          size_text(dc->longer_than, n, sizeof n), size_text(max_line, m, sizeof m), n, m);
    }
    return 0;
}

static void drop_print(const struct stage *st, FILE *out)
{
    const struct drop_conf *dc = st->conf;
    const char *sep = "";
    fputc('{', out);
    if (dc->line_text) {
        fputs("line: ", out);
        stage_print_string(out, dc->line_text, strlen(dc->line_text));
        sep = ", ";
    }
    if (dc->older_than_ms) {
        fprintf(out, "%solder_than: %lldms", sep, (long long)dc->older_than_ms);
        sep = ", ";
    }
    if (dc->longer_than) {
        fprintf(out, "%slonger_than: %lld", sep, (long long)dc->longer_than);
        sep = ", ";
    }
    if (dc->source >= 0) {
        fprintf(out, "%ssource: ", sep);
        stage_print_string(out, st->block->fields[dc->source], strlen(st->block->fields[dc->source]));
        if (dc->value) {
            fputs(", value: ", out);
            stage_print_string(out, dc->value, strlen(dc->value));
        }
        if (dc->expr_text) {
            fputs(", expression: ", out);
            stage_print_string(out, dc->expr_text, strlen(dc->expr_text));
        }
    }
    fputc('}', out);
}

static void drop_free(struct stage *st)
{
    struct drop_conf *dc = st->conf;
    if (!dc) return;
    pcre2_code_free(dc->line);
    pcre2_code_free(dc->expr);
    free(dc->line_text);
    free(dc->expr_text);
    free(dc->value);
    free(dc);
}

const struct stage_ops stage_drop = {
    .name = "drop", .drop_reasons = reasons, .compile = drop_compile, .state_size = sizeof(struct drop_state),
    .process = drop_process,
    .print = drop_print, .free = drop_free,
};
