/*
 * test_httpd — the request-head parser, then the live server over real
 * sockets on 127.0.0.1 (ephemeral ports).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "httpd/httpd.h"
#include "log/log.h"

/* ---------------------------------------------------------------------------
 * Parser. Every input is copied into an exact-size heap block so that
 * AddressSanitizer catches a read past len.
 */

static enum httpd_parse_status parse_n(const char *s, size_t n, struct httpd_request *req)
{
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, s, n);
    enum httpd_parse_status st = httpd_parse_request(copy, n, req);
    free(copy);
    return st;
}

static enum httpd_parse_status parse(const char *s, struct httpd_request *req)
{
    return parse_n(s, strlen(s), req);
}

static void test_parse_ok_get(void **state)
{
    (void)state;
    struct httpd_request req;
    const char *in = "GET /healthz HTTP/1.1\r\nHost: localhost:3101\r\nUser-Agent: kube-probe/1.29\r\n\r\n";
    assert_int_equal(parse(in, &req), HTTPD_PARSE_OK);
    assert_string_equal(req.method, "GET");
    assert_string_equal(req.path, "/healthz");
    assert_int_equal(req.version_minor, 1);
    assert_int_equal(req.content_length, -1);
    assert_int_equal(req.head_len, strlen(in));
}

static void test_parse_head_len_excludes_trailing(void **state)
{
    (void)state;
    struct httpd_request req;
    assert_int_equal(parse("HEAD /ready HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\n", &req), HTTPD_PARSE_OK);
    assert_string_equal(req.method, "HEAD");
    assert_string_equal(req.path, "/ready");
    assert_int_equal(req.version_minor, 0);
    assert_int_equal(req.head_len, strlen("HEAD /ready HTTP/1.0\r\n\r\n"));
}

static void test_parse_query_stripped(void **state)
{
    (void)state;
    struct httpd_request req;
    assert_int_equal(parse("GET /metrics?name[]=up&x=%20 HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_OK);
    assert_string_equal(req.path, "/metrics");
    assert_int_equal(parse("GET /?a HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_OK);
    assert_string_equal(req.path, "/");
}

static void test_parse_lf_only(void **state)
{
    (void)state;
    struct httpd_request req;
    const char *in = "GET /ready HTTP/1.1\nHost: a\n\n";
    assert_int_equal(parse(in, &req), HTTPD_PARSE_OK);
    assert_string_equal(req.path, "/ready");
    assert_int_equal(req.head_len, strlen(in));
    /* Mixed endings too. */
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\n\r\n", &req), HTTPD_PARSE_OK);
}

static void test_parse_incomplete(void **state)
{
    (void)state;
    struct httpd_request req;
    const char *in = "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    size_t n = strlen(in);
    for (size_t i = 0; i < n; i++) assert_int_equal(parse_n(in, i, &req), HTTPD_PARSE_INCOMPLETE);
    assert_int_equal(parse_n(in, n, &req), HTTPD_PARSE_OK);
    assert_int_equal(parse_n("", 0, &req), HTTPD_PARSE_INCOMPLETE);
}

static void test_parse_too_large(void **state)
{
    (void)state;
    struct httpd_request req;
    char *big = malloc(HTTPD_MAX_REQUEST + 64);
    assert_non_null(big);
    const char *start = "GET / HTTP/1.1\r\nX-Pad: ";
    memcpy(big, start, strlen(start));
    memset(big + strlen(start), 'a', HTTPD_MAX_REQUEST + 64 - strlen(start));
    assert_int_equal(parse_n(big, HTTPD_MAX_REQUEST - 1, &req), HTTPD_PARSE_INCOMPLETE);
    assert_int_equal(parse_n(big, HTTPD_MAX_REQUEST, &req), HTTPD_PARSE_TOO_LARGE);
    assert_int_equal(parse_n(big, HTTPD_MAX_REQUEST + 64, &req), HTTPD_PARSE_TOO_LARGE);
    /* A complete head whose blank line ends past the limit is too large. */
    memcpy(big + HTTPD_MAX_REQUEST + 60, "\r\n\r\n", 4);
    assert_int_equal(parse_n(big, HTTPD_MAX_REQUEST + 64, &req), HTTPD_PARSE_TOO_LARGE);
    /* One that ends exactly at the limit is fine. */
    memcpy(big + HTTPD_MAX_REQUEST - 4, "\r\n\r\n", 4);
    assert_int_equal(parse_n(big, HTTPD_MAX_REQUEST, &req), HTTPD_PARSE_OK);
    assert_int_equal(req.head_len, HTTPD_MAX_REQUEST);
    free(big);
}

static void test_parse_bad_method(void **state)
{
    (void)state;
    struct httpd_request req;
    assert_int_equal(parse("get / HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("G3T / HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse(" GET / HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET  / HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("\r\nGET / HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("ABCDEFGHIJKLMNOP / HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD); /* 16 */
    assert_int_equal(parse("ABCDEFGHIJKLMNO / HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_OK);   /* 15 */
    assert_string_equal(req.method, "ABCDEFGHIJKLMNO");
    assert_int_equal(parse("garbage\r\n\r\n", &req), HTTPD_PARSE_BAD);
    /* A bad request line is reported before the head is complete. */
    assert_int_equal(parse("garbage\r\n", &req), HTTPD_PARSE_BAD);
}

static void test_parse_bad_target(void **state)
{
    (void)state;
    struct httpd_request req;
    assert_int_equal(parse("GET healthz HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET * HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET http://x/ HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET /a b HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET /a\tb HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET /a\x01 HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET /a\x7f HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET /\xc3\xa9 HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET /a\rb HTTP/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);

    /* 255 path bytes fit path[256]; 256 do not; a long query does not count. */
    char line[700];
    char path[300];
    memset(path, 'a', sizeof path);
    path[0] = '/';
    snprintf(line, sizeof line, "GET %.255s HTTP/1.1\r\n\r\n", path);
    assert_int_equal(parse(line, &req), HTTPD_PARSE_OK);
    assert_int_equal(strlen(req.path), 255);
    snprintf(line, sizeof line, "GET %.256s HTTP/1.1\r\n\r\n", path);
    assert_int_equal(parse(line, &req), HTTPD_PARSE_BAD);
    snprintf(line, sizeof line, "GET /x?%.300s HTTP/1.1\r\n\r\n", path);
    assert_int_equal(parse(line, &req), HTTPD_PARSE_OK);
    assert_string_equal(req.path, "/x");
}

static void test_parse_bad_version(void **state)
{
    (void)state;
    struct httpd_request req;
    assert_int_equal(parse("GET / HTTP/2.0\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.2\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / http/1.1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.1 \r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.10\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET /\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / \r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.0\r\n\r\n", &req), HTTPD_PARSE_OK);
    assert_int_equal(req.version_minor, 0);
}

static void test_parse_bad_headers(void **state)
{
    (void)state;
    struct httpd_request req;
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost localhost\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost : x\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\n: x\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nA(b: x\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nA: x\r\n folded\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nA: x\r\n\tfolded\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nA: x\ry\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nA: x\x01y\r\n\r\n", &req), HTTPD_PARSE_BAD);
    /* Reported before the blank line arrives. */
    assert_int_equal(parse("GET / HTTP/1.1\r\nno colon\r\n", &req), HTTPD_PARSE_BAD);
    /* Fine: empty value, tabs, obs-text, odd token characters. */
    assert_int_equal(parse("GET / HTTP/1.1\r\nX-Empty:\r\nX-T:\tv\t\r\nX-U: \xc3\xa9\r\n"
                           "!#$%&'*+-.^_`|~0aZ: v\r\n\r\n",
                           &req),
                     HTTPD_PARSE_OK);
}

static void test_parse_content_length(void **state)
{
    (void)state;
    struct httpd_request req;
    assert_int_equal(parse("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &req), HTTPD_PARSE_OK);
    assert_int_equal(req.content_length, 0);
    assert_int_equal(parse("POST / HTTP/1.1\r\ncontent-LENGTH:   42 \t\r\n\r\n", &req), HTTPD_PARSE_OK);
    assert_int_equal(req.content_length, 42);
    assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n", &req),
                     HTTPD_PARSE_OK);
    assert_true(req.content_length == LLONG_MAX);
    assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n", &req),
                     HTTPD_PARSE_BAD);
    assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", &req),
                     HTTPD_PARSE_BAD);
    assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 5,5\r\n\r\n", &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", &req),
                     HTTPD_PARSE_OK);
    assert_int_equal(req.content_length, 5);
    assert_int_equal(parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", &req),
                     HTTPD_PARSE_BAD);
    /* Not the header: a longer or shorter name. */
    assert_int_equal(parse("GET / HTTP/1.1\r\nContent-Lengthx: abc\r\nContent-Lengt: z\r\n\r\n", &req),
                     HTTPD_PARSE_OK);
    assert_int_equal(req.content_length, -1);
}

static void test_parse_nul(void **state)
{
    (void)state;
    struct httpd_request req;
    static const char a[] = "GE\0T / HTTP/1.1\r\n\r\n";
    static const char b[] = "GET /he\0althz HTTP/1.1\r\n\r\n";
    static const char c[] = "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n";
    static const char d[] = "GET / HTTP/1.1\r\nHost: a"; /* incomplete so far... */
    static const char e[] = "\0";
    assert_int_equal(parse_n(a, sizeof a - 1, &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse_n(b, sizeof b - 1, &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse_n(c, sizeof c - 1, &req), HTTPD_PARSE_BAD);
    assert_int_equal(parse_n(d, sizeof d - 1, &req), HTTPD_PARSE_INCOMPLETE);
    assert_int_equal(parse_n(d, sizeof d, &req), HTTPD_PARSE_BAD); /* ...until a NUL */
    assert_int_equal(parse_n(e, 1, &req), HTTPD_PARSE_BAD);
}

/* ---------------------------------------------------------------------------
 * Live server.
 */

struct stub {
    int healthy;
    int ready;
    const char *reason;
    size_t metrics_len; /* 0: a short exposition */
    unsigned calls;     /* each long exposition differs from the previous one */
};

static int stub_healthy(void *ctx, char *reason, size_t len)
{
    struct stub *st = ctx;
    if (!st->healthy && st->reason) snprintf(reason, len, "%s", st->reason);
    return st->healthy;
}

static int stub_ready(void *ctx, char *reason, size_t len)
{
    struct stub *st = ctx;
    if (!st->ready && st->reason) snprintf(reason, len, "%s", st->reason);
    return st->ready;
}

static size_t stub_metrics(void *ctx, char *buf, size_t cap)
{
    struct stub *st = ctx;
    if (st->metrics_len == 0) return (size_t)snprintf(buf, cap, "loglet_up 1\n");
    size_t n = st->metrics_len < cap ? st->metrics_len : cap;
    unsigned k = st->calls++;
    for (size_t i = 0; i < n; i++) buf[i] = (char)('a' + (i + k) % 26);
    return n;
}

static struct httpd *start(struct stub *st, int max_conns, int timeout_ms)
{
    struct httpd_handlers h = {.ctx = st, .healthy = stub_healthy, .ready = stub_ready, .metrics = stub_metrics};
    struct httpd_options o = {.address = "127.0.0.1", .port = 0, .max_connections = max_conns,
                              .request_timeout_ms = timeout_ms};
    char err[256] = "";
    struct httpd *s = httpd_start(&o, &h, err, sizeof err);
    if (s == NULL) fail_msg("httpd_start: %s", err);
    assert_true(httpd_port(s) > 0);
    return s;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int dial_rcvbuf(int port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    if (rcvbuf > 0) assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    struct timeval tv = {.tv_sec = 5};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static int dial(int port) { return dial_rcvbuf(port, 0); }

static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        assert_true(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

static void send_str(int fd, const char *s) { send_all(fd, s, strlen(s)); }

/* Reads until EOF; a reset after data counts as EOF. Returns the length. */
static size_t recv_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) fail_msg("recv timed out");
        if (r <= 0) break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return n;
}

static size_t roundtrip(int port, const char *req, size_t len, char *resp, size_t cap)
{
    int fd = dial(port);
    send_all(fd, req, len);
    size_t n = recv_all(fd, resp, cap);
    close(fd);
    return n;
}

static size_t get(int port, const char *req, char *resp, size_t cap)
{
    return roundtrip(port, req, strlen(req), resp, cap);
}

/* Checks the exact status line, Connection: close, and that Content-Length
 * matches the body (or, for HEAD, that there is no body). Returns the body. */
static const char *check_response(const char *resp, size_t n, const char *status_line, int head)
{
    size_t sl = strlen(status_line);
    if (n < sl + 2 || memcmp(resp, status_line, sl) != 0 || memcmp(resp + sl, "\r\n", 2) != 0)
        fail_msg("want status '%s', got '%.60s'", status_line, resp);
    const char *end = strstr(resp, "\r\n\r\n");
    assert_non_null(end);
    assert_non_null(strstr(resp, "\r\nConnection: close\r\n"));
    const char *cl = strstr(resp, "\r\nContent-Length: ");
    assert_true(cl != NULL && cl < end);
    size_t want = strtoul(cl + 18, NULL, 10);
    const char *body = end + 4;
    size_t got = n - (size_t)(body - resp);
    if (head)
        assert_int_equal(got, 0);
    else
        assert_int_equal(got, want);
    return body;
}

static void test_live_healthz(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd *s = start(&st, 8, 2000);
    char resp[4096];
    size_t n = get(httpd_port(s), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    n = get(httpd_port(s), "GET /ready?verbose HTTP/1.0\n\n", resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");

    st.healthy = 0;
    n = get(httpd_port(s), "GET /healthz HTTP/1.1\r\n\r\n", resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 503 Service Unavailable", 0), "unhealthy\n");
    httpd_stop(s);
}

static void test_live_ready_reason(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 0, .reason = "waiting for\nfirst flush"};
    struct httpd *s = start(&st, 8, 2000);
    char resp[4096];
    size_t n = get(httpd_port(s), "GET /ready HTTP/1.1\r\n\r\n", resp, sizeof resp);
    /* The handler's newline is flattened so the body stays one line. */
    assert_string_equal(check_response(resp, n, "HTTP/1.1 503 Service Unavailable", 0),
                        "waiting for first flush\n");
    st.reason = NULL;
    n = get(httpd_port(s), "GET /ready HTTP/1.1\r\n\r\n", resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 503 Service Unavailable", 0), "not ready\n");
    httpd_stop(s);
}

static void test_live_metrics(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd *s = start(&st, 8, 2000);
    char resp[4096];
    size_t n = get(httpd_port(s), "GET /metrics HTTP/1.1\r\n\r\n", resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "loglet_up 1\n");
    assert_non_null(strstr(resp, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    httpd_stop(s);
}

static size_t stub_status(void *ctx, char *buf, size_t cap)
{
    (void)ctx;
    return (size_t)snprintf(buf, cap, "<!DOCTYPE html><p>status</p>\n");
}

/* /status shares the metrics buffer: each answer is its own handler's. */
static void test_live_status(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd_handlers h = {.ctx = &st, .healthy = stub_healthy, .ready = stub_ready, .metrics = stub_metrics,
                               .status = stub_status};
    struct httpd_options o = {.address = "127.0.0.1", .port = 0, .max_connections = 8, .request_timeout_ms = 2000};
    char err[256] = "";
    struct httpd *s = httpd_start(&o, &h, err, sizeof err);
    if (s == NULL) fail_msg("httpd_start: %s", err);
    char resp[4096];
    size_t n = get(httpd_port(s), "GET /status HTTP/1.1\r\n\r\n", resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "<!DOCTYPE html><p>status</p>\n");
    assert_non_null(strstr(resp, "\r\nContent-Type: text/html; charset=utf-8\r\n"));
    n = get(httpd_port(s), "GET /metrics HTTP/1.1\r\n\r\n", resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "loglet_up 1\n");
    httpd_stop(s);
    /* Without a status handler (the default start() of these tests) it is 404. */
    s = start(&st, 8, 2000);
    n = get(httpd_port(s), "GET /status HTTP/1.1\r\n\r\n", resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 404 Not Found", 0);
    httpd_stop(s);
}

static void test_live_errors(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd *s = start(&st, 8, 2000);
    int port = httpd_port(s);
    char resp[4096];
    size_t n = get(port, "GET /nope HTTP/1.1\r\n\r\n", resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 404 Not Found", 0);
    n = get(port, "GET /healthz/ HTTP/1.1\r\n\r\n", resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 404 Not Found", 0);

    n = get(port, "POST /healthz HTTP/1.1\r\n\r\n", resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 405 Method Not Allowed", 0);
    assert_non_null(strstr(resp, "\r\nAllow: GET, HEAD\r\n"));

    n = get(port, "POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 413 Content Too Large", 0);

    n = get(port, "garbage\r\n\r\n", resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 400 Bad Request", 0);
    static const char nul[] = "GET /healthz\0 HTTP/1.1\r\n\r\n";
    n = roundtrip(port, nul, sizeof nul - 1, resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 400 Bad Request", 0);
    /* Nothing from the request is echoed. */
    n = get(port, "GET /<script> HTTP/1.1\r\n\r\n", resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 404 Not Found", 0);
    assert_null(strstr(resp, "script"));
    httpd_stop(s);
}

static void test_live_oversized_head(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd *s = start(&st, 8, 2000);
    size_t len = HTTPD_MAX_REQUEST + 4000;
    char *req = malloc(len);
    assert_non_null(req);
    const char *start_line = "GET /healthz HTTP/1.1\r\nX-Pad: ";
    memcpy(req, start_line, strlen(start_line));
    memset(req + strlen(start_line), 'a', len - strlen(start_line));
    char resp[4096];
    size_t n = roundtrip(httpd_port(s), req, len, resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 431 Request Header Fields Too Large", 0);
    free(req);
    httpd_stop(s);
}

static void test_live_head(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 0};
    struct httpd *s = start(&st, 8, 2000);
    char resp[4096];
    size_t n = get(httpd_port(s), "HEAD /healthz HTTP/1.1\r\n\r\n", resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 200 OK", 1);
    assert_non_null(strstr(resp, "\r\nContent-Length: 3\r\n"));
    n = get(httpd_port(s), "HEAD /ready HTTP/1.1\r\n\r\n", resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 503 Service Unavailable", 1);
    n = get(httpd_port(s), "HEAD /metrics HTTP/1.1\r\n\r\n", resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 200 OK", 1);
    assert_non_null(strstr(resp, "\r\nContent-Length: 12\r\n"));
    httpd_stop(s);
}

static void test_live_byte_by_byte(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd *s = start(&st, 8, 2000);
    int fd = dial(httpd_port(s));
    const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for (const char *p = req; *p; p++) {
        send_all(fd, p, 1);
        usleep(1000);
    }
    char resp[4096];
    size_t n = recv_all(fd, resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    close(fd);
    httpd_stop(s);
}

static void test_live_slowloris(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd *s = start(&st, 8, 300);
    int64_t t0 = mono_ms();
    int slow = dial(httpd_port(s));
    send_str(slow, "GET /healthz HTTP/1.1\r\nHost:");

    /* Another client is served meanwhile, well within the slow one's timeout. */
    char resp[4096];
    size_t n = get(httpd_port(s), "GET /healthz HTTP/1.1\r\n\r\n", resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    assert_true(mono_ms() - t0 < 250);

    /* The slow one is closed without a response after ~300 ms. */
    n = recv_all(slow, resp, sizeof resp);
    int64_t took = mono_ms() - t0;
    assert_int_equal(n, 0);
    assert_true(took >= 280);
    assert_true(took < 2000);
    close(slow);
    httpd_stop(s);
}

/* True when the server has closed fd: EOF (or a reset) within wait_ms,
 * with nothing received before it. */
static int closed_without_response(int fd, int wait_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, wait_ms) != 1) return 0;
    char buf[64];
    ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno == ECONNRESET);
}

/* True when nothing at all (data, EOF, reset) arrives on fd within wait_ms:
 * the server still holds the connection. */
static int still_open(int fd, int wait_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, wait_ms) == 0;
}

/* Every slot held by clients without a full request: a newcomer takes the
 * slot of the oldest, which is closed without a response, and is served. */
static void test_live_evicts_oldest_idle(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd *s = start(&st, 2, 5000);
    int port = httpd_port(s);
    int a = dial(port);
    send_str(a, "GET");
    usleep(20 * 1000);
    int b = dial(port); /* sends nothing at all */
    usleep(20 * 1000);

    int c = dial(port);
    assert_true(closed_without_response(a, 1000));
    assert_true(still_open(b, 100));
    send_str(c, "GET /healthz HTTP/1.1\r\n\r\n");
    char resp[4096];
    size_t n = recv_all(c, resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    close(c);

    /* A free slot is used before anyone is evicted ... */
    usleep(50 * 1000); /* let the server see c's close */
    int d = dial(port);
    assert_true(still_open(b, 100));
    /* ... and with none left, b is now the oldest. */
    int e = dial(port);
    assert_true(closed_without_response(b, 1000));
    assert_true(still_open(d, 100));
    send_str(e, "GET /ready HTTP/1.1\r\n\r\n");
    n = recv_all(e, resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    close(a);
    close(b);
    close(d);
    close(e);
    httpd_stop(s);
}

/* A client whose head is still arriving is not the one evicted while older
 * idle connections exist: newest-first or random eviction would fail here. */
static void test_live_eviction_spares_in_progress(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    enum { SLOTS = 8 };
    struct httpd *s = start(&st, SLOTS, 5000);
    int port = httpd_port(s);
    int idle[SLOTS - 1], fresh[SLOTS - 1];
    for (int i = 0; i < SLOTS - 1; i++) {
        idle[i] = dial(port);
        if (i % 2) send_str(idle[i], "GET /healthz HTTP/1.1\r\nX-Slow: ");
    }
    usleep(20 * 1000);
    int probe = dial(port);
    send_str(probe, "GET /healthz HTTP/1.1\r\n");
    usleep(20 * 1000);
    /* As many newcomers as there are older idle connections. */
    for (int i = 0; i < SLOTS - 1; i++) {
        fresh[i] = dial(port);
        usleep(5 * 1000);
    }
    for (int i = 0; i < SLOTS - 1; i++)
        if (!closed_without_response(idle[i], 1000)) fail_msg("idle client %d was not evicted", i);
    assert_true(still_open(probe, 50));
    send_str(probe, "Host: x\r\n\r\n");
    char resp[4096];
    size_t n = recv_all(probe, resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    close(probe);
    for (int i = 0; i < SLOTS - 1; i++) {
        assert_true(still_open(fresh[i], 0));
        close(idle[i]);
        close(fresh[i]);
    }
    httpd_stop(s);
}

/* A connection already answered (lingering for the client's close) goes
 * before one still reading a request, even a younger one; its response,
 * already queued in the kernel, still reaches the client. */
static void test_live_evicts_lingering_first(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd *s = start(&st, 2, 5000);
    int port = httpd_port(s);
    int done = dial(port);
    send_str(done, "GET /healthz HTTP/1.1\r\n\r\n"); /* the response is not read yet */
    usleep(50 * 1000);
    int reading = dial(port);
    send_str(reading, "GET /ready HTTP/1.1\r\n");
    usleep(20 * 1000);

    int c = dial(port);
    char resp[4096];
    size_t n = recv_all(done, resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    assert_true(still_open(reading, 100));
    send_str(c, "GET /healthz HTTP/1.1\r\n\r\n");
    n = recv_all(c, resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    send_str(reading, "\r\n");
    n = recv_all(reading, resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    close(done);
    close(reading);
    close(c);
    httpd_stop(s);
}

/* The server runs in this process: find the socket it accepted for
 * `client` (its peer is the client's local address) and shrink its send
 * buffer so that writes really go partial and resume on POLLOUT (the kernel
 * would otherwise autotune it to megabytes and take any response at once). */
static void shrink_server_sndbuf(int client)
{
    struct sockaddr_storage mine;
    socklen_t ml = sizeof mine;
    assert_int_equal(getsockname(client, (struct sockaddr *)&mine, &ml), 0);
    for (int tries = 0; tries < 200; tries++) {
        for (int fd = 0; fd < 1024; fd++) {
            struct sockaddr_storage peer;
            socklen_t pl = sizeof peer;
            if (fd == client || getpeername(fd, (struct sockaddr *)&peer, &pl) < 0) continue;
            if (pl != ml || memcmp(&peer, &mine, ml) != 0) continue;
            int small = 4096;
            assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
            return;
        }
        usleep(5 * 1000); /* not accepted yet */
    }
    fail_msg("the server never accepted the connection");
}

/* A long body of stub_metrics(), from whichever call made it. */
static void check_long_body(const char *body, size_t want)
{
    assert_int_equal(strlen(body), want);
    unsigned k = (unsigned)(body[0] - 'a');
    for (size_t i = 0; i < want; i++)
        if (body[i] != (char)('a' + (i + k) % 26)) fail_msg("body differs at %zu", i);
}

/* A client that does not read a large /metrics response must not block the
 * loop; a second /metrics request waits for the shared buffer (it must not
 * overwrite the first response), then gets a whole body too. */
static void test_live_slow_reader(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1, .metrics_len = 250 * 1024};
    struct httpd *s = start(&st, 8, 5000);
    int port = httpd_port(s);
    int slow = dial_rcvbuf(port, 4096);
    shrink_server_sndbuf(slow);
    send_str(slow, "GET /metrics HTTP/1.1\r\n\r\n");
    usleep(50 * 1000);
    int second = dial_rcvbuf(port, 4096);
    shrink_server_sndbuf(second);
    send_str(second, "GET /metrics HTTP/1.1\r\n\r\n");
    usleep(50 * 1000);

    int64_t t0 = mono_ms();
    char resp[4096];
    size_t n = get(port, "GET /healthz HTTP/1.1\r\n\r\n", resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    assert_true(mono_ms() - t0 < 1000);

    size_t cap = 300 * 1024;
    char *big = malloc(cap);
    assert_non_null(big);
    int fds[2] = {slow, second};
    for (int i = 0; i < 2; i++) {
        n = recv_all(fds[i], big, cap);
        check_long_body(check_response(big, n, "HTTP/1.1 200 OK", 0), 250 * 1024);
        close(fds[i]);
    }
    assert_int_equal(st.calls, 2);
    free(big);
    httpd_stop(s);
}

/* Connections whose request is being answered are never evicted: with
 * every slot writing (or waiting for the metrics buffer), a newcomer gets
 * 503 and the two responses still arrive whole. */
static void test_live_busy_when_all_answering(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1, .metrics_len = 250 * 1024};
    struct httpd *s = start(&st, 2, 5000);
    int port = httpd_port(s);
    int writing = dial_rcvbuf(port, 4096);
    shrink_server_sndbuf(writing);
    send_str(writing, "GET /metrics HTTP/1.1\r\n\r\n");
    usleep(50 * 1000);
    int parked = dial_rcvbuf(port, 4096);
    shrink_server_sndbuf(parked);
    send_str(parked, "GET /metrics HTTP/1.1\r\n\r\n");
    usleep(50 * 1000);

    /* It has sent nothing, so the close is a clean FIN and the 503 readable. */
    int c = dial(port);
    char resp[4096];
    size_t n = recv_all(c, resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 503 Service Unavailable", 0),
                        "too many connections\n");
    close(c);

    size_t cap = 300 * 1024;
    char *big = malloc(cap);
    assert_non_null(big);
    int fds[2] = {writing, parked};
    for (int i = 0; i < 2; i++) {
        n = recv_all(fds[i], big, cap);
        check_long_body(check_response(big, n, "HTTP/1.1 200 OK", 0), 250 * 1024);
        close(fds[i]);
    }
    free(big);
    httpd_stop(s);
}

/* A client that sends more after its request (pipelining, or a body we do
 * not want) still gets the whole response: the server half-closes and drains
 * instead of closing with unread input, which would reset the connection and
 * drop the unsent part of the response. */
static void test_live_trailing_input(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1, .metrics_len = 250 * 1024};
    struct httpd *s = start(&st, 8, 5000);
    /* The server's send buffer stays large: the whole response is queued in
     * the kernel when the junk arrives, which is when a plain close() would
     * throw it away. */
    int fd = dial_rcvbuf(httpd_port(s), 4096);
    send_str(fd, "GET /metrics HTTP/1.1\r\n\r\n");
    usleep(100 * 1000);
    char junk[2000];
    memset(junk, 'j', sizeof junk);
    send_all(fd, junk, sizeof junk);
    usleep(100 * 1000);
    size_t cap = 300 * 1024;
    char *big = malloc(cap);
    assert_non_null(big);
    size_t n = recv_all(fd, big, cap);
    check_long_body(check_response(big, n, "HTTP/1.1 200 OK", 0), 250 * 1024);
    free(big);
    close(fd);
    httpd_stop(s);
}

static int64_t cpu_ms(void)
{
    struct rusage ru;
    assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
    return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

/* accept() failing with EMFILE (the pending connection stays queued, so the
 * listener stays readable) must not spin the loop; once descriptors are
 * back, the waiting client is served. */
static void test_live_emfile_backoff(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd *s = start(&st, 8, 5000);
    struct rlimit old, low;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    low.rlim_cur = old.rlim_cur < 256 ? old.rlim_cur : 256;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);

    int held[256 + 1];
    int nheld = 0;
    while (nheld < 256) {
        int fd = dup(0);
        if (fd < 0) break;
        held[nheld++] = fd;
    }
    assert_true(nheld > 0);
    close(held[--nheld]);
    int client = dial(httpd_port(s)); /* takes the last descriptor */

    int64_t cpu0 = cpu_ms(), t0 = mono_ms();
    usleep(500 * 1000);
    int64_t cpu = cpu_ms() - cpu0, wall = mono_ms() - t0;
    for (int i = 0; i < nheld; i++) close(held[i]);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    if (cpu * 4 > wall) fail_msg("the loop spun: %lld ms CPU in %lld ms", (long long)cpu, (long long)wall);
    send_str(client, "GET /healthz HTTP/1.1\r\n\r\n");
    char resp[4096];
    size_t n = recv_all(client, resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    close(client);
    httpd_stop(s);
}

static void test_live_stop_prompt(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd *s = start(&st, 4, 60000);
    int idle = dial(httpd_port(s));
    send_str(idle, "GET /");
    usleep(20 * 1000);
    int64_t t0 = mono_ms();
    httpd_stop(s);
    assert_true(mono_ms() - t0 < 500);
    /* The idle client sees the close. */
    char buf[64];
    assert_int_equal(recv_all(idle, buf, sizeof buf), 0);
    close(idle);
}

static void test_live_start_errors(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd *s = start(&st, 4, 1000);
    struct httpd_handlers h = {.ctx = &st, .healthy = stub_healthy, .ready = stub_ready};
    struct httpd_options o = {.address = "127.0.0.1", .port = httpd_port(s), .max_connections = 4,
                              .request_timeout_ms = 1000};
    char err[256] = "";
    /* A port held for good: retried for HTTPD_BIND_RETRY_MS, then an error
     * naming address and port. The holder keeps serving meanwhile. */
    int64_t t0 = mono_ms();
    assert_null(httpd_start(&o, &h, err, sizeof err));
    int64_t took = mono_ms() - t0;
    if (took < HTTPD_BIND_RETRY_MS - 100 || took > HTTPD_BIND_RETRY_MS + 2000)
        fail_msg("gave up after %lld ms", (long long)took);
    char want[128];
    snprintf(want, sizeof want, "listen 127.0.0.1:%d: Address already in use (still, after retrying for 5 s)",
             httpd_port(s));
    assert_string_equal(err, want);
    char resp[4096];
    size_t n = get(httpd_port(s), "GET /healthz HTTP/1.1\r\n\r\n", resp, sizeof resp);
    check_response(resp, n, "HTTP/1.1 200 OK", 0);
    httpd_stop(s);

    /* Any other bind error is not retried. */
    o.address = "192.0.2.1"; /* TEST-NET-1: not an address of this host */
    o.port = 0;
    t0 = mono_ms();
    assert_null(httpd_start(&o, &h, err, sizeof err));
    assert_true(mono_ms() - t0 < 1000);
    assert_string_equal(err, "listen 192.0.2.1:0: Cannot assign requested address");
    o.address = "127.0.0.1";

    o.port = 0;
    o.max_connections = 0;
    assert_null(httpd_start(&o, &h, err, sizeof err));
    o.max_connections = 4;
    o.address = "no-such-host.invalid";
    assert_null(httpd_start(&o, &h, err, sizeof err));
    assert_true(strncmp(err, "resolve no-such-host.invalid:0: ", 32) == 0);
}

struct holder {
    int fd;
    int ms;
};

static void *release_later(void *arg)
{
    struct holder *h = arg;
    usleep((useconds_t)h->ms * 1000);
    close(h->fd);
    return NULL;
}

/* The port still held by a plain listener (the previous agent, dying):
 * httpd_start() waits for it and then serves on that very port. */
static void test_live_bind_retry(void **state)
{
    (void)state;
    int hold = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(hold >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(hold, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(hold, 8), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(hold, (struct sockaddr *)&sa, &sl), 0);
    int port = ntohs(sa.sin_port);

    struct holder h = {.fd = hold, .ms = 400};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_later, &h), 0);
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd_handlers hs = {.ctx = &st, .healthy = stub_healthy, .ready = stub_ready};
    struct httpd_options o = {.address = "127.0.0.1", .port = port, .max_connections = 4,
                              .request_timeout_ms = 1000};
    char err[256] = "";
    int64_t t0 = mono_ms();
    struct httpd *s = httpd_start(&o, &hs, err, sizeof err);
    int64_t took = mono_ms() - t0;
    assert_int_equal(pthread_join(t, NULL), 0);
    if (s == NULL) fail_msg("httpd_start: %s", err);
    if (took < 350 || took > 2000) fail_msg("bound after %lld ms, the port was released after 400", (long long)took);
    assert_int_equal(httpd_port(s), port);
    char resp[4096];
    size_t n = get(port, "GET /healthz HTTP/1.1\r\n\r\n", resp, sizeof resp);
    assert_string_equal(check_response(resp, n, "HTTP/1.1 200 OK", 0), "ok\n");
    httpd_stop(s);
}

static void test_live_ipv6_and_no_metrics(void **state)
{
    (void)state;
    struct stub st = {.healthy = 1, .ready = 1};
    struct httpd_handlers h = {.ctx = &st, .healthy = stub_healthy, .ready = stub_ready};
    struct httpd_options o = {.address = "::1", .port = 0, .max_connections = 4, .request_timeout_ms = 1000};
    char err[256] = "";
    struct httpd *s = httpd_start(&o, &h, err, sizeof err);
    if (s == NULL) {
        if (strncmp(err, "listen [::1]", 12) != 0 && strncmp(err, "resolve [::1]", 13) != 0)
            fail_msg("httpd_start: %s", err);
        print_message("no IPv6 here (%s), skipping\n", err);
        skip();
    }
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)httpd_port(s)),
                              .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    send_str(fd, "GET /metrics HTTP/1.1\r\n\r\n");
    char resp[4096];
    size_t n = recv_all(fd, resp, sizeof resp);
    /* No metrics handler: /metrics is 404. */
    check_response(resp, n, "HTTP/1.1 404 Not Found", 0);
    close(fd);
    httpd_stop(s);
}

int main(void)
{
    log_setup(LOG_LEVEL_ERROR, LOG_FORMAT_LOGFMT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ok_get),
        cmocka_unit_test(test_parse_head_len_excludes_trailing),
        cmocka_unit_test(test_parse_query_stripped),
        cmocka_unit_test(test_parse_lf_only),
        cmocka_unit_test(test_parse_incomplete),
        cmocka_unit_test(test_parse_too_large),
        cmocka_unit_test(test_parse_bad_method),
        cmocka_unit_test(test_parse_bad_target),
        cmocka_unit_test(test_parse_bad_version),
        cmocka_unit_test(test_parse_bad_headers),
        cmocka_unit_test(test_parse_content_length),
        cmocka_unit_test(test_parse_nul),
        cmocka_unit_test(test_live_healthz),
        cmocka_unit_test(test_live_ready_reason),
        cmocka_unit_test(test_live_metrics),
        cmocka_unit_test(test_live_status),
        cmocka_unit_test(test_live_errors),
        cmocka_unit_test(test_live_oversized_head),
        cmocka_unit_test(test_live_head),
        cmocka_unit_test(test_live_byte_by_byte),
        cmocka_unit_test(test_live_slowloris),
        cmocka_unit_test(test_live_evicts_oldest_idle),
        cmocka_unit_test(test_live_eviction_spares_in_progress),
        cmocka_unit_test(test_live_evicts_lingering_first),
        cmocka_unit_test(test_live_slow_reader),
        cmocka_unit_test(test_live_busy_when_all_answering),
        cmocka_unit_test(test_live_trailing_input),
        cmocka_unit_test(test_live_emfile_backoff),
        cmocka_unit_test(test_live_stop_prompt),
        cmocka_unit_test(test_live_start_errors),
        cmocka_unit_test(test_live_bind_retry),
        cmocka_unit_test(test_live_ipv6_and_no_metrics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
