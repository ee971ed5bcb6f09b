/*
 * httpd — the probe and metrics server: a tiny HTTP/1.1 server on its own
 * thread, one poll(2) loop, no framework.
 *
 * Contract:
 *  - Answers GET (and HEAD) for /healthz, /ready and /metrics by calling the
 *    handlers given at start; any other path is 404, any other method 405,
 *    a malformed request 400, a request head over HTTPD_MAX_REQUEST bytes 431.
 *  - Request bodies are not accepted (413 when Content-Length > 0).
 *  - At most `max_connections` clients at once (more are accepted and closed
 *    at once with 503); a client that has not sent a full request head within
 *    `request_timeout_ms` is closed (slowloris).
 *  - Responses are `Connection: close`; nothing from the request is echoed.
 *  - Per-connection memory is a fixed buffer; nothing is allocated per byte.
 *  - httpd_stop() wakes the loop, closes every socket and joins the thread.
 */
#ifndef LOGLET_HTTPD_H
#define LOGLET_HTTPD_H

#include <stddef.h>

#define HTTPD_MAX_REQUEST 8192

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
};

struct httpd_options {
    const char *address; /* IPv4 or IPv6 literal, or a host name */
    int port;            /* 0 picks a free port (tests): see httpd_port() */
    int max_connections;
    int request_timeout_ms;
};

/* Binds, listens and starts the thread. Returns NULL with `err` set (e.g.
 * "listen 0.0.0.0:3101: Address already in use"). */
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
