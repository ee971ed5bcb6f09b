/*
 * query — the logs API's query string: parsed once per request into a
 * fixed-size struct (no allocation), then used to select sources and lines.
 *
 * Contract:
 *  - api_query_parse() accepts `name=value&…` with percent-encoding and `+`
 *    for space. It fails with one specific message (which parameter, what is
 *    wrong) on: an unknown or repeated parameter, bad percent-encoding, a NUL
 *    byte, a value that does not convert, an unbalanced glob bracket, a
 *    query longer than API_QUERY_MAX. It never reads past `len`.
 *  - Selection globs (fnmatch(3)) may be comma-separated lists: a source is
 *    selected when namespace, pod and container each match one pattern of
 *    their list (an absent list matches all) and neither exclude list
 *    matches. `job` is kept for a metadata provider that knows a pod's
 *    `job-name` label (api_job_label_fn); with path metadata only, the
 *    server refuses it with a clear error.
 *  - since/until: a duration (`5m`, `1h30m`: that long before `now_ns`) or
 *    an RFC 3339 time. tail_lines: last N lines per container (-1: all).
 *    max_lines: total, at least 1 (left out: no limit; 0 is refused). follow: true/false (1/0, yes/no).
 */
#ifndef LOGLET_API_QUERY_H
#define LOGLET_API_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "parser/parser.h"

#define API_QUERY_MAX 4096

struct api_query {
    /* NUL-terminated values in `store`, NULL when absent. */
    const char *namespace_, *pod, *container, *exclude_pod, *exclude_container, *job, *grep;
    int stream; /* -1: both; else enum parser_stream */
    int64_t since_ns, until_ns; /* [since, until]; 0 / INT64_MAX when absent */
    int64_t tail_lines;         /* -1: all */
    int64_t max_lines;          /* 0: not given, no limit (0 in the query is refused) */
    bool follow;
    char store[API_QUERY_MAX + 16];
    size_t used;
};

int api_query_parse(const char *qs, size_t len, int64_t now_ns, struct api_query *q, char *err, size_t errlen);

/* The job a pod belongs to (its `job-name` label), or NULL when unknown; a
 * Kubernetes metadata provider supplies it. */
typedef const char *(*api_job_label_fn)(void *ctx, const struct parser_path_meta *meta);

/* Whether the source with this metadata is selected (job aside). */
bool api_query_selects(const struct api_query *q, const struct parser_path_meta *meta);
/* Whether `job` (a pod's job-name label) matches the query's job globs. */
bool api_query_job_matches(const struct api_query *q, const char *job);
/* Whether a line's time and stream are in range (grep is the server's). */
bool api_query_in_range(const struct api_query *q, int64_t ts_ns, int stream);

#endif
