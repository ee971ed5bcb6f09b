/*
 * httpd — the probe and metrics server: a tiny HTTP/1.1 server on its own
 * thread, one poll(2) loop, no framework.
 *
 * Contract:
 *  - Answers GET (and HEAD) for /healthz, /ready, /metrics and /status by calling the
 *    handlers given at start; any other path is 404, any other method 405,
 *    a malformed request 400, a request head over HTTPD_MAX_REQUEST bytes 431.
 *  - Request bodies are not accepted (413 when Content-Length > 0).
 *  - At most `max_connections` clients at once. When every slot is taken, a
 *    new client gets the slot of a connection already answered (lingering for
 *    the client's close), else of the oldest one without a complete request
 *    head, which is closed without a response: idle and slow clients holding
 *    every slot cannot keep a probe out. A connection whose request is being
 *    answered is never evicted; when all are, the newcomer gets 503 and is
 *    closed. A newcomer's request is read at accept, so a probe that sends it
 *    with the connection is answered before later arrivals can evict it; one
 *    whose head is still arriving goes only once it is the oldest such.
 *  - A client that has not sent a full request head within
 *    `request_timeout_ms` is closed (slowloris), as is one that has not read
 *    its response within that time.
 *  - Responses are `Connection: close`; nothing from the request is echoed.
 *  - Per-connection memory is a fixed buffer; nothing is allocated per byte.
 *  - httpd_start() binds with SO_REUSEADDR; while the port is held by a live
 *    listener (EADDRINUSE: typically the previous agent, still exiting after
 *    a SIGKILL) it retries for HTTPD_BIND_RETRY_MS before failing.
 *  - httpd_stop() wakes the loop, closes every socket and joins the thread.
 */
#ifndef LOGLET_HTTPD_H
#define LOGLET_HTTPD_H

#include <stddef.h>

#define HTTPD_MAX_REQUEST 8192
#define HTTPD_BIND_RETRY_MS 5000

struct httpd;

struct httpd_handlers {
    void *ctx;
    /* Return 1 when healthy/ready; `reason` (may be left empty) goes into the
     * body of a 503 so an operator sees why. */
    int (*healthy)(void *ctx, char *reason, size_t reason_len);
    int (*ready)(void *ctx, char *reason, size_t reason_len);
    /* Writes the metrics exposition into buf; returns bytes written (it must
     * fit in cap; the server passes 256 KiB). NULL: /metrics is 404. */
    size_t (*metrics)(void *ctx, char *buf, size_t cap);
    /* Writes the HTML status page into buf, as metrics does. NULL: /status
     * is 404. */
    size_t (*status)(void *ctx, char *buf, size_t cap);
};

struct httpd_options {
    const char *address; /* IPv4 or IPv6 literal, or a host name */
    int port;            /* 0 picks a free port (tests): see httpd_port() */
    int max_connections;
    int request_timeout_ms;
};

/* Binds, listens and starts the thread; may block up to HTTPD_BIND_RETRY_MS
 * while the port is in use. Returns NULL with `err` set (e.g. "listen
 * 0.0.0.0:3101: Address already in use (still, after retrying for 5 s)"). */
struct httpd *httpd_start(const struct httpd_options *opts, const struct httpd_handlers *handlers,
                          char *err, size_t errlen);
int httpd_port(const struct httpd *server);
void httpd_stop(struct httpd *server);

/* Request-head parsing, exposed for unit tests and fuzzing. */
enum httpd_parse_status {
    HTTPD_PARSE_INCOMPLETE, /* no blank line yet: read more */
    HTTPD_PARSE_OK,
    HTTPD_PARSE_BAD,       /* 400 */
    HTTPD_PARSE_TOO_LARGE, /* 431 */
};

struct httpd_request {
    char method[16];
    char path[256]; /* without the query string */
    int version_minor; /* HTTP/1.x */
    long long content_length; /* -1 when absent */
    size_t head_len; /* bytes up to and including the blank line */
};

enum httpd_parse_status httpd_parse_request(const char *buf, size_t len, struct httpd_request *req);

#endif
