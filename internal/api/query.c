/*
 * query — parsing and matching of the logs API's query string (see query.h).
 */
#include "api/query.h"

#include <fnmatch.h>
#include <stdio.h>
#include <string.h>

#include "config/config.h"

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes src[0, n) into q->store; returns the value or NULL with err set. */
static char *decode(struct api_query *q, const char *src, size_t n, const char *what, char *err, size_t errlen)
{
    if (q->used + n + 1 > sizeof q->store) {
        snprintf(err, errlen, "query string too long (over %d bytes)", API_QUERY_MAX);
        return NULL;
    }
    char *out = q->store + q->used, *d = out;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int hi = i + 2 < n ? hexval((unsigned char)src[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)src[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                snprintf(err, errlen, "%s: bad percent-encoding (use %%XX with two hex digits)", what);
                return NULL;
            }
            c = (unsigned char)(hi * 16 + lo);
            i += 2;
        }
        if (c == '\0') {
            snprintf(err, errlen, "%s: NUL byte not allowed", what);
            return NULL;
        }
        *d++ = (char)c;
    }
    *d++ = '\0';
    q->used += (size_t)(d - out);
    return out;
}

/* fnmatch(3) takes an unclosed '[' literally; a user who typed one meant a
 * class, so say so instead of matching nothing. */
static int check_globs(const char *list, const char *what, char *err, size_t errlen)
{
    bool open = false;
    for (const char *p = list; *p; p++) {
        if (*p == '\\' && p[1]) {
            p++;
        } else if (!open && *p == '[') {
            open = true;
            if (p[1] == '!' || p[1] == '^') p++;
            if (p[1] == ']') p++; /* a leading ']' is a member */
        } else if (open && *p == ']') {
            open = false;
        } else if (*p == ',' && open) {
            break;
        }
    }
    if (open) {
        snprintf(err, errlen, "%s: unbalanced '[' in glob '%s'", what, list);
        return -1;
    }
    if (!*list) {
        snprintf(err, errlen, "%s: empty pattern", what);
        return -1;
    }
    return 0;
}

static int parse_count(const char *v, int64_t max, int64_t *out, const char *what, char *err, size_t errlen)
{
    int64_t n = 0;
    if (!*v) goto bad;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9') goto bad;
        n = n * 10 + (*p - '0');
        if (n > max) {
            snprintf(err, errlen, "%s: %s is over the limit of %lld", what, v, (long long)max);
            return -1;
        }
    }
    *out = n;
    return 0;
bad:
    snprintf(err, errlen, "%s: '%s' is not a non-negative integer", what, v);
    return -1;
}

static int parse_time(const char *v, int64_t now_ns, int64_t *out, const char *what, char *err, size_t errlen)
{
    int64_t ms;
    if (config_parse_duration_ms(v, &ms) == 0) {
        if (ms > now_ns / 1000000) ms = now_ns / 1000000;
        *out = now_ns - ms * 1000000;
        return 0;
    }
    if (parser_rfc3339(v, strlen(v), out) == 0) return 0;
    snprintf(err, errlen, "%s: '%s' is neither a duration (5m, 1h30m) nor an RFC 3339 time", what, v);
    return -1;
}

static int parse_bool(const char *v, bool *out, const char *what, char *err, size_t errlen)
{
    static const char *const yes[] = {"true", "1", "yes", ""}, *const no[] = {"false", "0", "no"};
    for (size_t i = 0; i < 4; i++)
        if (strcmp(v, yes[i]) == 0) return *out = true, 0;
    for (size_t i = 0; i < 3; i++)
        if (strcmp(v, no[i]) == 0) return *out = false, 0;
    snprintf(err, errlen, "%s: '%s' is not true or false", what, v);
    return -1;
}

enum param {
    P_NAMESPACE, P_POD, P_CONTAINER, P_EXCLUDE_POD, P_EXCLUDE_CONTAINER, P_JOB, P_GREP, P_STREAM,
    P_SINCE, P_UNTIL, P_TAIL_LINES, P_MAX_LINES, P_FOLLOW, P_COUNT
};

static const char *const param_names[P_COUNT] = {
    "namespace", "pod", "container", "exclude_pod", "exclude_container", "job", "grep", "stream",
    "since", "until", "tail_lines", "max_lines", "follow",
};

/* Bounds a request can ask for without being absurd; larger is an error. */
#define API_MAX_COUNT 100000000LL

static int set_param(struct api_query *q, enum param p, const char *v, int64_t now_ns, char *err, size_t errlen)
{
    const char *what = param_names[p];
    switch (p) {
    case P_NAMESPACE: q->namespace_ = v; return check_globs(v, what, err, errlen);
    case P_POD: q->pod = v; return check_globs(v, what, err, errlen);
    case P_CONTAINER: q->container = v; return check_globs(v, what, err, errlen);
    case P_EXCLUDE_POD: q->exclude_pod = v; return check_globs(v, what, err, errlen);
    case P_EXCLUDE_CONTAINER: q->exclude_container = v; return check_globs(v, what, err, errlen);
    case P_JOB: q->job = v; return check_globs(v, what, err, errlen);
    case P_GREP:
        if (!*v) {
            snprintf(err, errlen, "grep: empty pattern");
            return -1;
        }
        q->grep = v;
        return 0;
    case P_STREAM:
        if (strcmp(v, "stdout") == 0) q->stream = PARSER_STREAM_STDOUT;
        else if (strcmp(v, "stderr") == 0) q->stream = PARSER_STREAM_STDERR;
        else if (strcmp(v, "all") == 0) q->stream = -1;
        else {
            snprintf(err, errlen, "stream: '%s' is not stdout, stderr or all", v);
            return -1;
        }
        return 0;
    case P_SINCE: return parse_time(v, now_ns, &q->since_ns, what, err, errlen);
    case P_UNTIL: return parse_time(v, now_ns, &q->until_ns, what, err, errlen);
    case P_TAIL_LINES:
        if (strcmp(v, "-1") == 0) return q->tail_lines = -1, 0;
        return parse_count(v, API_MAX_COUNT, &q->tail_lines, what, err, errlen);
    case P_MAX_LINES:
        if (parse_count(v, API_MAX_COUNT, &q->max_lines, what, err, errlen) != 0) return -1;
        if (q->max_lines == 0) {
            /* 0 read as "no limit" would surprise whoever meant "none": the
             * parameter left out is the way to say no limit. */
            snprintf(err, errlen, "%s: 0 lines would send nothing; leave max_lines out for no limit", what);
            return -1;
        }
        return 0;
    case P_FOLLOW: return parse_bool(v, &q->follow, what, err, errlen);
    default: return -1;
    }
}

int api_query_parse(const char *qs, size_t len, int64_t now_ns, struct api_query *q, char *err, size_t errlen)
{
    memset(q, 0, offsetof(struct api_query, store));
    q->used = 0;
    q->stream = -1;
    q->until_ns = INT64_MAX;
    q->tail_lines = -1;
    if (len > API_QUERY_MAX) {
        snprintf(err, errlen, "query string too long (%zu bytes, at most %d)", len, API_QUERY_MAX);
        return -1;
    }
    bool seen[P_COUNT] = {false};
    size_t pos = 0;
    while (pos < len) {
        const char *amp = memchr(qs + pos, '&', len - pos);
        size_t end = amp ? (size_t)(amp - qs) : len;
        const char *pair = qs + pos;
        size_t plen = end - pos;
        pos = end + 1;
        if (plen == 0) continue;
        const char *eq = memchr(pair, '=', plen);
        size_t nlen = eq ? (size_t)(eq - pair) : plen;
        size_t saved = q->used;
        char *name = decode(q, pair, nlen, "parameter name", err, errlen);
        if (!name) return -1;
        int p = -1;
        for (int i = 0; i < P_COUNT; i++)
            if (strcmp(name, param_names[i]) == 0) p = i;
        if (p < 0) {
            char shown[64];
            snprintf(shown, sizeof shown, "%s", name);
            for (char *c = shown; *c; c++)
                if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f || *c == '"') *c = '?';
            snprintf(err, errlen, "unknown parameter '%s'", shown);
            return -1;
        }
        q->used = saved; /* the name is not kept */
        if (seen[p]) {
            snprintf(err, errlen, "%s: given more than once", param_names[p]);
            return -1;
        }
        seen[p] = true;
        const char *vsrc = eq ? eq + 1 : pair + plen;
        char *value = decode(q, vsrc, eq ? plen - nlen - 1 : 0, param_names[p], err, errlen);
        if (!value || set_param(q, (enum param)p, value, now_ns, err, errlen) != 0) return -1;
    }
    if (q->since_ns > q->until_ns) {
        snprintf(err, errlen, "since is after until");
        return -1;
    }
    return 0;
}

/* Whether `s` matches one pattern of the comma-separated `list`. */
static bool list_matches(const char *list, const char *s)
{
    char pat[512];
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n < sizeof pat) {
            memcpy(pat, p, n);
            pat[n] = '\0';
            if (n > 0 && fnmatch(pat, s, 0) == 0) return true;
        }
        if (!comma) return false;
        p = comma + 1;
    }
}

bool api_query_selects(const struct api_query *q, const struct parser_path_meta *meta)
{
    if (q->namespace_ && !list_matches(q->namespace_, meta->namespace_)) return false;
    if (q->pod && !list_matches(q->pod, meta->pod)) return false;
    if (q->container && !list_matches(q->container, meta->container)) return false;
    if (q->exclude_pod && list_matches(q->exclude_pod, meta->pod)) return false;
    if (q->exclude_container && list_matches(q->exclude_container, meta->container)) return false;
    return true;
}

bool api_query_job_matches(const struct api_query *q, const char *job)
{
    return !q->job || list_matches(q->job, job);
}

bool api_query_in_range(const struct api_query *q, int64_t ts_ns, int stream)
{
    if (q->stream >= 0 && stream != q->stream) return false;
    return ts_ns >= q->since_ns && ts_ns <= q->until_ns;
}
