/*
 * httpd — the probe and metrics server (see httpd.h for the contract).
 *
 * One thread, one poll(2) loop over: a self-pipe that httpd_stop() writes to,
 * the listening socket, and a fixed array of connection slots. Everything is
 * allocated once in httpd_start(): the slots, their HTTPD_MAX_REQUEST input
 * buffers, the pollfd array and the 256 KiB metrics buffer. Nothing in the
 * loop allocates.
 *
 * A slot's life: READ (collect the head; deadline = accept + timeout) ->
 * WRITE (non-blocking sendmsg, resumed on POLLOUT; deadline = head + timeout)
 * -> LINGER (our side shut down, unread input drained briefly so that close()
 * does not turn into a RST that would destroy the response) -> FREE.
 * The metrics buffer is shared: one GET /metrics or /status response at a time owns it;
 * other /metrics requests wait PARKED (not polled, no deadline) in turn.
 *
 * When every slot is taken, a new client evicts a LINGER connection, else the
 * oldest READ one (pick_slot() says why), so that a slowloris holding every
 * slot cannot keep the kubelet's liveness probe out. The newcomer is read at
 * once, and each wakeup serves connection I/O before accepting, so that a
 * probe whose request is already in is answered before anyone can evict it.
 *
 * Request bytes are never echoed nor logged.
 */
#include "httpd/httpd.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "log/log.h"

#define HTTPD_METRICS_CAP (256 * 1024)
#define HTTPD_MAX_CONNECTIONS 4096
#define HTTPD_LINGER_MS 1000       /* grace for the client to read, after our FIN */
#define HTTPD_ACCEPT_PAUSE_MS 100  /* back-off after EMFILE and friends */
#define HTTPD_ACCEPT_BURST 32      /* accepts per wakeup, to stay fair to clients */
#define HTTPD_DRAIN_BURST 8        /* reads per wakeup while lingering */
#define HTTPD_LOG_EVERY_MS 10000   /* rate limit for per-connection warnings */
#define HTTPD_HDR_CAP 1024         /* response head plus a small body */
#define HTTPD_REASON_CAP 256
#define HTTPD_BIND_RETRY_STEP_MS 100 /* between binds while the port is in use */

/* ---------------------------------------------------------------------------
 * Request-head parser: pure, reads only buf[0, min(len, HTTPD_MAX_REQUEST)).
 */

struct line {
    const char *p;
    size_t n;
};

/* The next LF-terminated line from *pos, without its CR LF (or bare LF).
 * Returns 0 when no LF is left in the window. */
static int next_line(const char *buf, size_t len, size_t *pos, struct line *l)
{
    const char *nl = memchr(buf + *pos, '\n', len - *pos);
    if (nl == NULL) return 0;
    size_t end = (size_t)(nl - buf);
    l->p = buf + *pos;
    l->n = end - *pos;
    if (l->n > 0 && l->p[l->n - 1] == '\r') l->n--;
    *pos = end + 1;
    return 1;
}

/* RFC 9110 tchar; spelled out so no locale is consulted. */
static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int ascii_ieq(const char *a, size_t n, const char *lower)
{
    if (strlen(lower) != n) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)a[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a');
        if (c != (unsigned char)lower[i]) return 0;
    }
    return 1;
}

/* `METHOD SP request-target SP HTTP/1.x` */
static int parse_request_line(struct line l, struct httpd_request *req)
{
    size_t i = 0;
    while (i < l.n && i < sizeof req->method && l.p[i] >= 'A' && l.p[i] <= 'Z') i++;
    if (i == 0 || i >= sizeof req->method || i >= l.n || l.p[i] != ' ') return -1;
    memcpy(req->method, l.p, i);
    req->method[i] = '\0';

    size_t t = ++i;
    for (; i < l.n && l.p[i] != ' '; i++) {
        unsigned char c = (unsigned char)l.p[i];
        if (c <= 0x20 || c >= 0x7f) return -1;
    }
    if (i == t || l.p[t] != '/' || i >= l.n) return -1;
    const char *q = memchr(l.p + t, '?', i - t);
    size_t plen = q != NULL ? (size_t)(q - (l.p + t)) : i - t;
    if (plen >= sizeof req->path) return -1;
    memcpy(req->path, l.p + t, plen);
    req->path[plen] = '\0';

    const char *v = l.p + i + 1;
    size_t vlen = l.n - i - 1;
    if (vlen != 8 || memcmp(v, "HTTP/1.", 7) != 0 || (v[7] != '0' && v[7] != '1')) return -1;
    req->version_minor = v[7] - '0';
    return 0;
}

/* Digits only; overflow and a differing duplicate are errors. */
static int parse_content_length(const char *v, size_t n, struct httpd_request *req)
{
    if (n == 0) return -1;
    long long value = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        int d = v[i] - '0';
        if (value > (LLONG_MAX - d) / 10) return -1;
        value = value * 10 + d;
    }
    if (req->content_length >= 0 && req->content_length != value) return -1;
    req->content_length = value;
    return 0;
}

/* `name: value` with a token name, no obs-fold, no controls in the value. */
static int parse_header(struct line l, struct httpd_request *req)
{
    if (l.p[0] == ' ' || l.p[0] == '\t') return -1; /* obs-fold */
    size_t i = 0;
    while (i < l.n && is_tchar((unsigned char)l.p[i])) i++;
    if (i == 0 || i >= l.n || l.p[i] != ':') return -1;

    const char *v = l.p + i + 1;
    size_t n = l.n - i - 1;
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)v[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f) return -1;
    }
    while (n > 0 && (*v == ' ' || *v == '\t')) v++, n--;
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    if (ascii_ieq(l.p, i, "content-length")) return parse_content_length(v, n, req);
    return 0;
}

enum httpd_parse_status httpd_parse_request(const char *buf, size_t len, struct httpd_request *req)
{
    memset(req, 0, sizeof *req);
    req->content_length = -1;
    size_t window = len < HTTPD_MAX_REQUEST ? len : HTTPD_MAX_REQUEST;
    if (window > 0 && memchr(buf, '\0', window) != NULL) return HTTPD_PARSE_BAD;

    size_t pos = 0;
    struct line l;
    int first = 1;
    while (next_line(buf, window, &pos, &l)) {
        if (first) {
            if (parse_request_line(l, req) < 0) return HTTPD_PARSE_BAD;
            first = 0;
        } else if (l.n == 0) {
            req->head_len = pos;
            return HTTPD_PARSE_OK;
        } else if (parse_header(l, req) < 0) {
            return HTTPD_PARSE_BAD;
        }
    }
    return len < HTTPD_MAX_REQUEST ? HTTPD_PARSE_INCOMPLETE : HTTPD_PARSE_TOO_LARGE;
}

/* ---------------------------------------------------------------------------
 * Server state.
 */

enum conn_state { CONN_FREE, CONN_READ, CONN_WRITE, CONN_PARKED, CONN_LINGER };

struct conn {
    int fd;
    enum conn_state state;
    int64_t deadline;  /* CLOCK_MONOTONIC ms; unused when FREE or PARKED */
    uint64_t park_seq; /* order among PARKED /metrics requests */
    uint64_t born;     /* accept order, to find the oldest; unused when FREE */
    int head_only;     /* PARKED: the request was HEAD */
    int status_page;   /* PARKED: /status rather than /metrics (they share the buffer) */
    char *in;          /* HTTPD_MAX_REQUEST bytes, from one shared allocation */
    size_t in_len;
    char hdr[HTTPD_HDR_CAP]; /* response head, plus a small body */
    size_t hdr_len;
    const char *body; /* NULL, or the shared metrics buffer */
    size_t body_len;
    size_t sent;
};

struct httpd {
    struct httpd_handlers h;
    int timeout_ms;
    int port;
    int lfd;
    int wake_rd, wake_wr;
    int nconns;
    struct conn *conns;
    char *inbufs;
    struct pollfd *pfds; /* [0] wake pipe, [1] listener, [2 + i] conns[i] */
    char *metrics;       /* HTTPD_METRICS_CAP bytes, or NULL without a handler */
    struct conn *metrics_owner;
    uint64_t park_seq;
    uint64_t accept_seq;   /* the next conn->born */
    int64_t accept_resume; /* accepting is paused until then; 0: not paused */
    int64_t last_busy_log, last_accept_log, last_evict_log;
    unsigned long long busy_rejected, evicted;
    pthread_t thread;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One warning per HTTPD_LOG_EVERY_MS, so a flood cannot flood the log. */
static int log_due(int64_t *last, int64_t now)
{
    if (*last != 0 && now - *last < HTTPD_LOG_EVERY_MS) return 0;
    *last = now;
    return 1;
}

static void close_fd(int fd)
{
    /* On Linux the descriptor is gone even when close() reports EINTR. */
    if (fd >= 0 && close(fd) < 0 && errno != EINTR) log_warn("httpd: close: %s", strerror(errno));
}

static void conn_close(struct httpd *s, struct conn *c)
{
    if (s->metrics_owner == c) s->metrics_owner = NULL;
    close_fd(c->fd);
    c->fd = -1;
    c->state = CONN_FREE;
    c->in_len = 0;
    c->body = NULL;
}

/* ---------------------------------------------------------------------------
 * Responses.
 */

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

/* Formats the response head into c->hdr; returns -1 if it does not fit. */
static int format_head(struct conn *c, int status, const char *ctype, size_t body_len)
{
    int n = snprintf(c->hdr, sizeof c->hdr,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "%s"
                     "Connection: close\r\n"
                     "\r\n",
                     status, status_text(status), ctype, body_len,
                     status == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof c->hdr) return -1;
    c->hdr_len = (size_t)n;
    return 0;
}

static void conn_write(struct httpd *s, struct conn *c);

static void conn_start_write(struct httpd *s, struct conn *c)
{
    c->state = CONN_WRITE;
    c->sent = 0;
    c->deadline = now_ms() + s->timeout_ms;
    conn_write(s, c);
}

/* A response whose body fits in c->hdr after the head. */
static void respond_text(struct httpd *s, struct conn *c, int status, const char *body, int head_only)
{
    size_t blen = strlen(body);
    if (format_head(c, status, "text/plain; charset=utf-8", blen) < 0 ||
        c->hdr_len + blen > sizeof c->hdr) {
        log_error("httpd: response %d does not fit its buffer", status);
        conn_close(s, c);
        return;
    }
    if (!head_only) {
        memcpy(c->hdr + c->hdr_len, body, blen);
        c->hdr_len += blen;
    }
    c->body = NULL;
    c->body_len = 0;
    conn_start_write(s, c);
}

static void serve_probe(struct httpd *s, struct conn *c, int (*fn)(void *, char *, size_t),
                        const char *dflt, int head_only)
{
    char reason[HTTPD_REASON_CAP] = "";
    if (fn == NULL || fn(s->h.ctx, reason, sizeof reason) > 0) {
        respond_text(s, c, 200, "ok\n", head_only);
        return;
    }
    reason[sizeof reason - 1] = '\0';
    for (char *p = reason; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = ' ';
    char body[HTTPD_REASON_CAP + 1];
    snprintf(body, sizeof body, "%s\n", reason[0] ? reason : dflt);
    respond_text(s, c, 503, body, head_only);
}

/* The shared buffer holds one response at a time; others wait PARKED. */
static void serve_metrics(struct httpd *s, struct conn *c, int head_only, int status_page)
{
    if (s->metrics_owner != NULL) {
        c->state = CONN_PARKED;
        c->park_seq = s->park_seq++;
        c->head_only = head_only;
        c->status_page = status_page;
        return;
    }
    size_t n = (status_page ? s->h.status : s->h.metrics)(s->h.ctx, s->metrics, HTTPD_METRICS_CAP);
    if (n > HTTPD_METRICS_CAP) {
        log_error("httpd: metrics handler returned %zu bytes, over %d", n, HTTPD_METRICS_CAP);
        n = HTTPD_METRICS_CAP;
    }
    if (format_head(c, 200, status_page ? "text/html; charset=utf-8" : "text/plain; version=0.0.4; charset=utf-8",
                    n) < 0) {
        conn_close(s, c);
        return;
    }
    c->body = head_only ? NULL : s->metrics;
    c->body_len = head_only ? 0 : n;
    if (!head_only) s->metrics_owner = c;
    conn_start_write(s, c);
}

/* Hands the free metrics buffer to the longest-waiting PARKED request. */
static void serve_parked(struct httpd *s)
{
    while (s->metrics_owner == NULL) {
        struct conn *next = NULL;
        for (int i = 0; i < s->nconns; i++) {
            struct conn *c = &s->conns[i];
            if (c->state == CONN_PARKED && (next == NULL || c->park_seq < next->park_seq)) next = c;
        }
        if (next == NULL) return;
        next->state = CONN_WRITE;
        serve_metrics(s, next, next->head_only, next->status_page);
    }
}

static void conn_route(struct httpd *s, struct conn *c, const struct httpd_request *req)
{
    int head_only = strcmp(req->method, "HEAD") == 0;
    int get = head_only || strcmp(req->method, "GET") == 0;
    int healthz = strcmp(req->path, "/healthz") == 0;
    int ready = strcmp(req->path, "/ready") == 0;
    int metrics = strcmp(req->path, "/metrics") == 0 && s->h.metrics != NULL;
    int status = strcmp(req->path, "/status") == 0 && s->h.status != NULL;

    if (req->content_length > 0)
        respond_text(s, c, 413, "request body not accepted\n", head_only);
    else if (!healthz && !ready && !metrics && !status)
        respond_text(s, c, 404, "not found\n", head_only);
    else if (!get)
        respond_text(s, c, 405, "method not allowed\n", 0);
    else if (healthz)
        serve_probe(s, c, s->h.healthy, "unhealthy", head_only);
    else if (ready)
        serve_probe(s, c, s->h.ready, "not ready", head_only);
    else
        serve_metrics(s, c, head_only, status);
}

static void conn_request_done(struct httpd *s, struct conn *c, enum httpd_parse_status st,
                              const struct httpd_request *req)
{
    if (st == HTTPD_PARSE_OK)
        conn_route(s, c, req);
    else if (st == HTTPD_PARSE_TOO_LARGE)
        respond_text(s, c, 431, "request header fields too large\n", 0);
    else
        respond_text(s, c, 400, "bad request\n", 0);
}

/* ---------------------------------------------------------------------------
 * Connection I/O. Sockets are non-blocking; EAGAIN returns to the loop.
 */

static void conn_linger(struct httpd *s, struct conn *c)
{
    if (s->metrics_owner == c) s->metrics_owner = NULL;
    c->body = NULL;
    if (shutdown(c->fd, SHUT_WR) < 0) {
        conn_close(s, c);
        return;
    }
    c->state = CONN_LINGER;
    c->deadline = now_ms() + HTTPD_LINGER_MS;
}

static void conn_write(struct httpd *s, struct conn *c)
{
    size_t total = c->hdr_len + c->body_len;
    while (c->sent < total) {
        struct iovec iov[2];
        int n = 0;
        if (c->sent < c->hdr_len) {
            iov[n++] = (struct iovec){c->hdr + c->sent, c->hdr_len - c->sent};
            if (c->body_len > 0) iov[n++] = (struct iovec){(char *)c->body, c->body_len};
        } else {
            iov[n++] = (struct iovec){(char *)c->body + (c->sent - c->hdr_len), total - c->sent};
        }
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            log_debug("httpd: send: %s", strerror(errno));
            conn_close(s, c);
            return;
        }
        c->sent += (size_t)w;
    }
    conn_linger(s, c);
}

/* The parse can only change once a line ends, a NUL arrives or the buffer fills. */
static int worth_parsing(const struct conn *c, const char *fresh, size_t n)
{
    return c->in_len >= HTTPD_MAX_REQUEST || memchr(fresh, '\n', n) != NULL ||
           memchr(fresh, '\0', n) != NULL;
}

static void conn_read(struct httpd *s, struct conn *c)
{
    while (c->in_len < HTTPD_MAX_REQUEST) {
        char *fresh = c->in + c->in_len;
        ssize_t r = recv(c->fd, fresh, HTTPD_MAX_REQUEST - c->in_len, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            log_debug("httpd: recv: %s", strerror(errno));
            conn_close(s, c);
            return;
        }
        if (r == 0) { /* the client gave up before a full head */
            conn_close(s, c);
            return;
        }
        c->in_len += (size_t)r;
        if (!worth_parsing(c, fresh, (size_t)r)) continue;
        struct httpd_request req;
        enum httpd_parse_status st = httpd_parse_request(c->in, c->in_len, &req);
        if (st != HTTPD_PARSE_INCOMPLETE) {
            conn_request_done(s, c, st, &req);
            return;
        }
    }
}

/* After our response: discard what the client still sends until it closes. */
static void conn_drain(struct httpd *s, struct conn *c)
{
    for (int i = 0; i < HTTPD_DRAIN_BURST; i++) {
        ssize_t r = recv(c->fd, c->in, HTTPD_MAX_REQUEST, 0);
        if (r > 0) continue;
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        conn_close(s, c);
        return;
    }
}

/* ---------------------------------------------------------------------------
 * Accepting.
 */

/* All slots are taken: answer 503 best-effort and close. What the client has
 * already sent is read first so that close() sends a FIN, not a RST. */
static void reject_busy(struct httpd *s, int fd)
{
    static const char resp[] = "HTTP/1.1 503 Service Unavailable\r\n"
                               "Content-Type: text/plain; charset=utf-8\r\n"
                               "Content-Length: 21\r\n"
                               "Connection: close\r\n"
                               "\r\n"
                               "too many connections\n";
    char sink[512];
    for (int i = 0; i < 4 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {
    }
    if (send(fd, resp, sizeof resp - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        log_debug("httpd: send 503: %s", strerror(errno));
    close_fd(fd);
    s->busy_rejected++;
    if (log_due(&s->last_busy_log, now_ms())) {
        log_warn("httpd: too many connections (max %d): %llu rejected", s->nconns, s->busy_rejected);
        s->busy_rejected = 0;
    }
}

/* Returns 1 when accept() may be retried now, 0 when the burst should end. */
static int accept_failed(struct httpd *s, int err)
{
    switch (err) {
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
        return 0;
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EPERM:
        return 1; /* this connection failed, not the listener */
    default:
        /* EMFILE, ENFILE, ENOBUFS, ENOMEM...: the pending connection stays
         * queued and poll would report it again at once; pause instead. */
        s->accept_resume = now_ms() + HTTPD_ACCEPT_PAUSE_MS;
        if (log_due(&s->last_accept_log, now_ms()))
            log_warn("httpd: accept: %s; pausing %d ms", strerror(err), HTTPD_ACCEPT_PAUSE_MS);
        return 0;
    }
}

/* The slot for a new client: a free one, else the connection that loses
 * least by being closed, else NULL.
 *  - LINGER first: its whole response is in the kernel, which still delivers
 *    it after close(); all we give up is waiting for the client's FIN.
 *  - Then the oldest READ: it has held its slot longest without a complete
 *    request head. With every slot taken that is a slowloris (or a client
 *    too slow to be served anyway), while a legitimate probe sends its head
 *    right after connecting and is younger; it stays unless `max_connections`
 *    newer clients arrive before its head is complete.
 *  - WRITE and PARKED have a complete request being answered: never. */
static struct conn *pick_slot(struct httpd *s)
{
    struct conn *linger = NULL, *idle = NULL;
    for (int i = 0; i < s->nconns; i++) {
        struct conn *c = &s->conns[i];
        if (c->state == CONN_FREE) return c;
        if (c->state == CONN_LINGER && (linger == NULL || c->born < linger->born)) linger = c;
        if (c->state == CONN_READ && (idle == NULL || c->born < idle->born)) idle = c;
    }
    return linger != NULL ? linger : idle;
}

static void conn_evict(struct httpd *s, struct conn *c)
{
    if (c->state == CONN_LINGER) {
        /* Input left unread would make close() send a RST, which discards
         * the part of the response not yet delivered: read it first. */
        for (int i = 0; i < HTTPD_DRAIN_BURST; i++) {
            ssize_t r = recv(c->fd, c->in, HTTPD_MAX_REQUEST, MSG_DONTWAIT);
            if (r > 0 || (r < 0 && errno == EINTR)) continue;
            break; /* drained (EAGAIN), or EOF or an error: it is closed either way */
        }
    }
    conn_close(s, c);
    s->evicted++;
    if (log_due(&s->last_evict_log, now_ms())) {
        log_warn("httpd: all %d connections busy: %llu closed (answered, or without a full request) "
                 "to make room for newer clients",
                 s->nconns, s->evicted);
        s->evicted = 0;
    }
}

static void accept_clients(struct httpd *s)
{
    for (int i = 0; i < HTTPD_ACCEPT_BURST; i++) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (accept_failed(s, errno)) continue;
            return;
        }
        struct conn *c = pick_slot(s);
        if (c == NULL) {
            reject_busy(s, fd);
            continue;
        }
        if (c->state != CONN_FREE) conn_evict(s, c);
        c->fd = fd;
        c->state = CONN_READ;
        c->in_len = 0;
        c->born = s->accept_seq++;
        c->deadline = now_ms() + s->timeout_ms;
        /* A probe's request usually arrives with the connection: serve it
         * now, before the rest of this burst can make it the oldest. */
        conn_read(s, c);
    }
}

/* ---------------------------------------------------------------------------
 * The loop.
 */

static void expire_conns(struct httpd *s, int64_t now)
{
    for (int i = 0; i < s->nconns; i++) {
        struct conn *c = &s->conns[i];
        if (c->state == CONN_FREE || c->state == CONN_PARKED || now < c->deadline) continue;
        if (c->state == CONN_READ)
            log_debug("httpd: closing a connection without a full request after %d ms", s->timeout_ms);
        else if (c->state == CONN_WRITE)
            log_debug("httpd: closing a connection too slow to read its response");
        conn_close(s, c);
    }
}

static short conn_events(const struct conn *c)
{
    switch (c->state) {
    case CONN_READ:
    case CONN_LINGER: return POLLIN;
    case CONN_WRITE: return POLLOUT;
    default: return 0;
    }
}

/* Fills the pollfd array and returns the poll timeout (-1: none). */
static int poll_prepare(struct httpd *s, int64_t now)
{
    if (s->accept_resume != 0 && now >= s->accept_resume) s->accept_resume = 0;
    int64_t next = s->accept_resume != 0 ? s->accept_resume : INT64_MAX;

    s->pfds[0] = (struct pollfd){.fd = s->wake_rd, .events = POLLIN};
    s->pfds[1] = (struct pollfd){.fd = s->accept_resume != 0 ? -1 : s->lfd, .events = POLLIN};
    for (int i = 0; i < s->nconns; i++) {
        const struct conn *c = &s->conns[i];
        short ev = conn_events(c);
        s->pfds[2 + i] = (struct pollfd){.fd = ev != 0 ? c->fd : -1, .events = ev};
        if (ev != 0 && c->deadline < next) next = c->deadline;
    }
    if (next == INT64_MAX) return -1;
    int64_t wait = next - now;
    return wait <= 0 ? 0 : wait > INT_MAX ? INT_MAX : (int)wait;
}

static void conn_dispatch(struct httpd *s, struct conn *c)
{
    switch (c->state) {
    case CONN_READ: conn_read(s, c); break;
    case CONN_WRITE: conn_write(s, c); break;
    case CONN_LINGER: conn_drain(s, c); break;
    default: break;
    }
}

static void *httpd_main(void *arg)
{
    struct httpd *s = arg;
    for (;;) {
        serve_parked(s);
        int64_t now = now_ms();
        expire_conns(s, now);
        int timeout = poll_prepare(s, now);
        int rc = poll(s->pfds, (nfds_t)s->nconns + 2, timeout);
        if (rc < 0) {
            if (errno == EINTR) continue;
            log_error("httpd: poll: %s", strerror(errno));
            nanosleep(&(struct timespec){0, HTTPD_ACCEPT_PAUSE_MS * 1000000L}, NULL);
            continue;
        }
        if (s->pfds[0].revents != 0) break; /* httpd_stop() */
        /* Connections first: a head completed in this wakeup is answered
         * before accepting can evict its connection, and no slot is reused
         * while its revents are still to be read. */
        for (int i = 0; i < s->nconns; i++)
            if (s->pfds[2 + i].revents != 0) conn_dispatch(s, &s->conns[i]);
        if (s->pfds[1].revents != 0) accept_clients(s);
    }
    return NULL;
}

/* ---------------------------------------------------------------------------
 * Start and stop.
 */

/* host:port, or [host]:port for an IPv6 literal. */
static void format_endpoint(char *buf, size_t cap, const char *host, int port)
{
    int v6 = strchr(host, ':') != NULL;
    snprintf(buf, cap, "%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
}

static void set_err(char *err, size_t errlen, const char *what, const char *host, int port,
                    const char *detail)
{
    if (err == NULL || errlen == 0) return;
    char where[300];
    format_endpoint(where, sizeof where, host, port);
    snprintf(err, errlen, "%s %s: %s", what, where, detail);
}

static void sleep_ms(int ms)
{
    struct timespec left = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) < 0) {
        if (errno != EINTR) {
            log_error("httpd: nanosleep: %s", strerror(errno));
            return;
        }
    }
}

static int listen_on(const struct addrinfo *ai, int backlog)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) return -1;
    /* Without it, the previous process's connections (TIME_WAIT, or
     * FIN_WAIT after a SIGKILL with clients attached) block the port for a
     * minute; a live listener still blocks it, which is what we want. */
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
        int saved = errno;
        close_fd(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) return -1;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

/* Resolves opts->address (NULL or "": every address) and listens on the
 * first result that binds. While the port is in use, retries for
 * HTTPD_BIND_RETRY_MS: after a SIGKILL the kubelet starts the next agent at
 * once, and the dying one may still hold its listener for a moment. Any
 * other error fails at once. Returns the fd or -1 with err filled. */
static int open_listener(const struct httpd_options *o, int backlog, char *err, size_t errlen)
{
    const char *node = o->address != NULL && o->address[0] != '\0' ? o->address : NULL;
    const char *host = node != NULL ? node : "*";
    char service[16];
    snprintf(service, sizeof service, "%d", o->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(node, service, &hints, &res);
    if (rc != 0) {
        set_err(err, errlen, "resolve", host, o->port, rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        return -1;
    }
    int64_t give_up = now_ms() + HTTPD_BIND_RETRY_MS;
    int fd = -1, saved = EADDRNOTAVAIL, in_use = 0, retried = 0;
    for (;;) {
        in_use = 0;
        for (const struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
            fd = listen_on(ai, backlog);
            if (fd < 0) saved = errno;
            if (fd < 0 && errno == EADDRINUSE) in_use = 1;
        }
        if (fd >= 0 || !in_use || now_ms() >= give_up) break;
        if (!retried) {
            char where[300];
            format_endpoint(where, sizeof where, host, o->port);
            log_warn("httpd: %s is in use; retrying for up to %d s", where, HTTPD_BIND_RETRY_MS / 1000);
            retried = 1;
        }
        sleep_ms(HTTPD_BIND_RETRY_STEP_MS);
    }
    freeaddrinfo(res);
    if (fd < 0 && in_use) {
        char detail[128];
        snprintf(detail, sizeof detail, "%s (still, after retrying for %d s)", strerror(EADDRINUSE),
                 HTTPD_BIND_RETRY_MS / 1000);
        set_err(err, errlen, "listen", host, o->port, detail);
    } else if (fd < 0) {
        set_err(err, errlen, "listen", host, o->port, strerror(saved));
    }
    return fd;
}

static int check_options(const struct httpd_options *o, char *err, size_t errlen)
{
    const char *bad = NULL;
    if (o == NULL)
        bad = "no options";
    else if (o->port < 0 || o->port > 65535)
        bad = "port must be 0..65535";
    else if (o->max_connections < 1 || o->max_connections > HTTPD_MAX_CONNECTIONS)
        bad = "max_connections must be 1..4096";
    else if (o->request_timeout_ms < 1)
        bad = "request_timeout_ms must be positive";
    if (bad != NULL && err != NULL && errlen > 0) snprintf(err, errlen, "httpd: %s", bad);
    return bad != NULL ? -1 : 0;
}

static void httpd_free(struct httpd *s)
{
    if (s->conns != NULL)
        for (int i = 0; i < s->nconns; i++) close_fd(s->conns[i].fd);
    close_fd(s->lfd);
    close_fd(s->wake_rd);
    close_fd(s->wake_wr);
    free(s->conns);
    free(s->inbufs);
    free(s->pfds);
    free(s->metrics);
    free(s);
}

/* Everything the loop will ever need, allocated now. */
static int httpd_alloc(struct httpd *s, char *err, size_t errlen)
{
    size_t n = (size_t)s->nconns;
    s->conns = calloc(n, sizeof *s->conns);
    s->inbufs = malloc(n * HTTPD_MAX_REQUEST);
    s->pfds = calloc(n + 2, sizeof *s->pfds);
    int shared = s->h.metrics != NULL || s->h.status != NULL;
    if (shared) s->metrics = malloc(HTTPD_METRICS_CAP);
    if (s->conns == NULL || s->inbufs == NULL || s->pfds == NULL || (shared && s->metrics == NULL)) {
        if (err != NULL && errlen > 0) snprintf(err, errlen, "httpd: out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        s->conns[i].fd = -1;
        s->conns[i].in = s->inbufs + i * HTTPD_MAX_REQUEST;
    }
    return 0;
}

/* The thread blocks every signal: they belong to the main thread. */
static int httpd_spawn(struct httpd *s, char *err, size_t errlen)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&s->thread, NULL, httpd_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0 && err != NULL && errlen > 0) snprintf(err, errlen, "httpd: thread: %s", strerror(rc));
    return rc != 0 ? -1 : 0;
}

struct httpd *httpd_start(const struct httpd_options *opts, const struct httpd_handlers *handlers,
                          char *err, size_t errlen)
{
    if (check_options(opts, err, errlen) < 0) return NULL;
    if (handlers == NULL) {
        if (err != NULL && errlen > 0) snprintf(err, errlen, "httpd: no handlers");
        return NULL;
    }
    struct httpd *s = calloc(1, sizeof *s);
    if (s == NULL) {
        if (err != NULL && errlen > 0) snprintf(err, errlen, "httpd: out of memory");
        return NULL;
    }
    s->h = *handlers;
    s->timeout_ms = opts->request_timeout_ms;
    s->nconns = opts->max_connections;
    s->lfd = s->wake_rd = s->wake_wr = -1;

    int pipefd[2];
    if (pipe2(pipefd, O_NONBLOCK | O_CLOEXEC) < 0) {
        if (err != NULL && errlen > 0) snprintf(err, errlen, "httpd: pipe: %s", strerror(errno));
        httpd_free(s);
        return NULL;
    }
    s->wake_rd = pipefd[0];
    s->wake_wr = pipefd[1];
    int backlog = opts->max_connections < SOMAXCONN ? SOMAXCONN : opts->max_connections;
    if (httpd_alloc(s, err, errlen) < 0 || (s->lfd = open_listener(opts, backlog, err, errlen)) < 0) {
        httpd_free(s);
        return NULL;
    }
    s->port = bound_port(s->lfd);
    if (s->port < 0) {
        if (err != NULL && errlen > 0) snprintf(err, errlen, "httpd: getsockname: %s", strerror(errno));
        httpd_free(s);
        return NULL;
    }
    if (httpd_spawn(s, err, errlen) < 0) {
        httpd_free(s);
        return NULL;
    }
    return s;
}

int httpd_port(const struct httpd *server) { return server != NULL ? server->port : -1; }

void httpd_stop(struct httpd *server)
{
    if (server == NULL) return;
    ssize_t w;
    do
        w = write(server->wake_wr, "x", 1);
    while (w < 0 && errno == EINTR);
    /* EAGAIN: the pipe is full, so the loop is already woken. */
    if (w < 0 && errno != EAGAIN) log_error("httpd: wake: %s", strerror(errno));
    int rc = pthread_join(server->thread, NULL);
    if (rc != 0) log_error("httpd: join: %s", strerror(rc));
    httpd_free(server);
}
