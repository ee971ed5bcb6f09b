/*
 * api — the read-only logs API: a second listener, off the probe port, on
 * a Unix socket (mode 0600) and optionally on TCP with a bearer token.
 *
 * Contract:
 *  - GET /api/v1/logs?… (see query.h) answers NDJSON, one object per line:
 *    {"log_line","timestamp","time","pod_name","namespace","container",
 *     "stream","line_number","status":"streaming"}, then a final
 *    {"status":"completed","message"} when a non-follow request ends or
 *    max_lines is reached; {"status":"error","message"} for a failure (an
 *    invalid query is answered 400 with that object alone). A follower
 *    that fell behind gets an error object saying how many lines it missed
 *    and stays connected.
 *  - History first (history.h), then, with follow, the lines the output
 *    thread offers the live tail (output/livetail.h), with no gap and no
 *    duplicate between the two: a file the history read is continued from
 *    where the history stopped, by offset.
 *  - Each request has its own thread (history reading blocks on files and
 *    zlib); at most server.api.max_subscribers at once, more get 503. A
 *    client that does not send its request head within request_timeout is
 *    closed; one that stops reading only loses lines (its queue is bounded).
 *  - GET /api/v1/targets answers JSON {"targets":[…]}: every tailed file
 *    with its path, pod metadata, size, read and acknowledged offsets, lag
 *    in bytes and seconds, format, watcher backend, state and last error
 *    (the collector's snapshot, at most half a second old).
 *  - On TCP every request needs `Authorization: Bearer <token>` matching the
 *    token file (read again per request, so it can be rotated): else 401.
 *  - api_stop() closes the listeners, ends every request within about a
 *    second and joins the threads; it runs before the live tail is freed.
 */
#ifndef LOGLET_API_H
#define LOGLET_API_H

#include <stddef.h>

#include "collector/collector.h"
#include "config/config.h"
#include "api/query.h"
#include "output/livetail.h"

struct api;

/* NULL with `err` set only for what the user asked for explicitly and
 * cannot have (TCP that cannot listen, an unreadable token file); a Unix
 * socket that cannot be created is a warning, *disabled set. */
struct api *api_start(const struct config *cfg, struct livetail *hub, struct collector *collector, char *err,
                      size_t errlen);
/* The TCP port bound (0 when none), for tests and the log. */
int api_tcp_port(const struct api *api);
void api_stop(struct api *api);
/* Plugs in what `job=` needs: the job-name label of a pod (issue 10's
 * Kubernetes metadata). Call right after api_start(), before clients come;
 * until then a request with `job` is answered 400 saying metadata is off. */
void api_set_job_label(struct api *api, api_job_label_fn fn, void *ctx);

#endif
