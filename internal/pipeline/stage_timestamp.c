/*
 * timestamp — takes the entry's time from a field: `timestamp: {source:
 * ts, format: rfc3339}` (or unix, unix_ms, unix_us, unix_ns; unix may have
 * a fraction). Off unless configured: the runtime's time is the default.
 * A value that does not parse leaves the time as it was and is counted in
 * the stage's errors.
 */
#include <stdlib.h>
#include <string.h>

#include "parser/parser.h"
#include "stage.h"

enum ts_format { TS_RFC3339, TS_UNIX, TS_UNIX_MS, TS_UNIX_US, TS_UNIX_NS };
static const char *const format_names[] = {"rfc3339", "unix", "unix_ms", "unix_us", "unix_ns", NULL};

struct ts_conf {
    int field;
    enum ts_format format;
};

/* Digits with an optional fraction, scaled to nanoseconds. */
static bool parse_unix(const char *s, size_t len, int64_t scale, int64_t *out)
{
    int64_t whole = 0, frac = 0, frac_scale = 1;
    size_t i = 0;
    if (len == 0) return false;
    for (; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
        if (whole > (INT64_MAX - 9) / 10) return false;
        whole = whole * 10 + (s[i] - '0');
    }
    /* The whole part, scaled to nanoseconds, and what the fraction adds,
     * must fit: checked after the last digit, not before it. */
    if (whole > (INT64_MAX - (scale - 1)) / scale) return false;
    if (i == 0) return false;
    if (i < len && s[i] == '.') {
        for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++)
            if (frac_scale < scale) {
                frac = frac * 10 + (s[i] - '0');
                frac_scale *= 10;
            }
    }
    if (i != len) return false;
    *out = whole * scale + (frac_scale > 1 ? frac * (scale / frac_scale) : 0);
    return true;
}

static enum stage_verdict ts_process(const struct stage *st, void *state, struct stage_run *r)
{
    (void)state;
    const struct ts_conf *tc = st->conf;
    const char *v;
    size_t len;
    if (!stage_get(r, (size_t)tc->field, &v, &len)) return STAGE_PASS;
    int64_t ns = 0;
    bool ok;
    switch (tc->format) {
    case TS_RFC3339: ok = parser_rfc3339(v, len, &ns) == 0; break;
    case TS_UNIX: ok = parse_unix(v, len, 1000000000, &ns); break;
    case TS_UNIX_MS: ok = parse_unix(v, len, 1000000, &ns); break;
    case TS_UNIX_US: ok = parse_unix(v, len, 1000, &ns); break;
    default: ok = parse_unix(v, len, 1, &ns); break;
    }
    if (ok) r->e.ts_ns = ns;
    else stage_note(r, &((struct stage *)st)->counters.errors, 1);
    return STAGE_PASS;
}

static int ts_compile(struct stage *st, const struct config_tree *node, struct stage_compile *cx)
{
    static const char *const keys[] = {"source", "format", NULL};
    struct ts_conf *tc = calloc(1, sizeof *tc);
    if (!tc) return stage_fail(cx, node, NULL, "out of memory");
    st->conf = tc;
    if (node->kind != CONFIG_TREE_MAP) return stage_fail(cx, node, NULL, "expected {source: FIELD, format: F}");
    if (stage_check_keys(cx, node, keys) != 0) return -1;
    bool bad = false;
    const char *source = stage_scalar(cx, node, "source", &bad);
    const char *format = stage_scalar(cx, node, "format", &bad);
    if (bad) return -1;
    if (!source || !*source) return stage_fail(cx, node, "source", "missing: the field holding the time");
    if ((tc->field = stage_field(cx, config_tree_get(node, "source"), source)) < 0) return -1;
    tc->format = TS_RFC3339;
    if (format) {
        int found = -1;
        for (int i = 0; format_names[i]; i++)
            if (strcmp(format_names[i], format) == 0) found = i;
        if (found < 0)
            return stage_fail(cx, config_tree_get(node, "format"), "format",
                              "'%s' is not one of rfc3339, unix, unix_ms, unix_us, unix_ns", format);
        tc->format = (enum ts_format)found;
    }
    return 0;
}

static void ts_print(const struct stage *st, FILE *out)
{
    const struct ts_conf *tc = st->conf;
    fputs("{source: ", out);
    stage_print_string(out, st->block->fields[tc->field], strlen(st->block->fields[tc->field]));
    fprintf(out, ", format: %s}", format_names[tc->format]);
}

static void ts_free(struct stage *st) { free(st->conf); }

const struct stage_ops stage_timestamp = {
    .name = "timestamp", .compile = ts_compile, .process = ts_process, .print = ts_print, .free = ts_free,
};
