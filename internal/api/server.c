/*
 * api — listeners and request threads of the logs API (see api.h).
 *
 * One listener thread polls the Unix socket, the TCP socket and a wake pipe;
 * each accepted connection gets a slot (a fixed array of max_subscribers)
 * and a thread, which reads the head, answers and exits. Slots are joined
 * lazily by the listener, and all of them at stop.
 *
 * A TCP connection gets no slot until it has proved it holds the token: the
 * listener itself reads its head (non-blocking, in its poll loop) within
 * API_AUTH_TIMEOUT_MS, checks the bearer token and only then hands the
 * connection and its head to a slot; a wrong token is answered 401 there.
 * At most API_UNAUTH_MAX such connections wait at once, the oldest closed
 * for a newer one, so anonymous clients that send nothing cannot take the
 * slots the socket's users (and the token's holders) need.
 */
#include "api/api.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "api/request.h"
#include "httpd/httpd.h"
#include "log/log.h"

#define API_SPARE_SLOTS 4
#define API_UNAUTH_MAX 32
#define API_AUTH_TIMEOUT_MS 2000

struct api_slot {
    struct api *api;
    int fd;
    bool tcp;
    char *head; /* TCP: the head the listener read and authorized; NULL on the socket */
    size_t head_len;
    pthread_t thread;
    atomic_bool busy;   /* a thread runs (or ran and is not joined yet) */
    atomic_bool exited; /* the thread is done: joinable */
};

struct api {
    const struct config *cfg;
    struct livetail *hub;
    struct collector *collector;
    api_job_label_fn job_label; /* set before requests arrive (api_set_job_label) */
    void *job_ctx;
    int ufd, tfd, tcp_port;
    int wake_rd, wake_wr;
    char *socket_path; /* the one we created, to unlink at stop */
    dev_t sock_dev;
    ino_t sock_ino;
    atomic_bool stop;
    atomic_int active;
    atomic_int history_active;
    pthread_t thread;
    bool thread_started;
    size_t nslots;
    struct api_slot *slots;
    /* TCP connections whose head is being read, not yet authorized (fd -1: free). */
    struct {
        int fd;
        int64_t deadline_ms;
        size_t len;
        char *buf; /* HTTPD_MAX_REQUEST bytes */
    } unauth[API_UNAUTH_MAX];
};

static void close_fd(int fd)
{
    if (fd >= 0 && close(fd) < 0 && errno != EINTR) log_warn("api: close: %s", strerror(errno));
}

static void reap(struct api *api, bool all)
{
    for (size_t i = 0; i < api->nslots; i++) {
        struct api_slot *s = &api->slots[i];
        if (!atomic_load(&s->busy) || (!all && !atomic_load(&s->exited))) continue;
        pthread_join(s->thread, NULL);
        atomic_store(&s->exited, false);
        atomic_store(&s->busy, false);
    }
}

static void *slot_main(void *arg)
{
    struct api_slot *s = arg;
    /* Requests run only on CPU the collector and the output leave idle: on
     * a busy node a follower falls behind (and is told what it missed)
     * rather than taking cycles from shipping. Lowering needs no privilege. */
    struct sched_param idle = {0};
    int rc = pthread_setschedparam(pthread_self(), SCHED_IDLE, &idle);
    if (rc != 0) log_debug("api: cannot lower the request thread's priority: %s", strerror(rc));
    struct api_request_env env = {.cfg = s->api->cfg,
                                  .hub = s->api->hub,
                                  .stop = &s->api->stop,
                                  .tcp = s->tcp,
                                  .active = &s->api->active,
                                  .history_active = &s->api->history_active,
                                  .collector = s->api->collector,
                                  .job_label = s->api->job_label,
                                  .job_ctx = s->api->job_ctx};
    api_request_serve(&env, s->fd, s->head, s->head_len);
    close_fd(s->fd);
    s->fd = -1;
    free(s->head);
    s->head = NULL;
    s->head_len = 0;
    atomic_store(&s->exited, true);
    return NULL;
}

static void refuse_busy(int fd, size_t max)
{
    char body[256], msg[512];
    int bl = snprintf(body, sizeof body,
                      "{\"status\":\"error\",\"message\":\"too many requests: server.api.max_subscribers (%zu) "
                      "are being served\"}\n",
                      max);
    int n = snprintf(msg, sizeof msg,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     "Connection: close\r\n\r\n%s",
                     bl, body);
    if (n > 0 && send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        log_debug("api: answering 503: %s", strerror(errno));
    close_fd(fd);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Gives fd a slot and a thread; `head` (owned, may be NULL) was read and
 * authorized by the listener. */
static void start_slot(struct api *api, int fd, bool tcp, char *head, size_t head_len)
{
    reap(api, false);
    struct api_slot *free_slot = NULL;
    for (size_t i = 0; i < api->nslots && !free_slot; i++)
        if (!atomic_load(&api->slots[i].busy)) free_slot = &api->slots[i];
    if (!free_slot) {
        free(head);
        refuse_busy(fd, api->nslots - API_SPARE_SLOTS);
        return;
    }
    free_slot->fd = fd;
    free_slot->tcp = tcp;
    free_slot->head = head;
    free_slot->head_len = head_len;
    atomic_store(&free_slot->exited, false);
    atomic_store(&free_slot->busy, true);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&free_slot->thread, NULL, slot_main, free_slot);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        log_warn("api: cannot start a request thread: %s", strerror(rc));
        free_slot->head = NULL;
        free(head);
        atomic_store(&free_slot->busy, false);
        refuse_busy(fd, api->nslots - API_SPARE_SLOTS);
    }
}

static void answer_and_close(int fd, const char *status, const char *extra, const char *message)
{
    char msg[768];
    int bl = (int)strlen(message) + 32; /* the JSON around it */
    int n = snprintf(msg, sizeof msg,
                     "HTTP/1.1 %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n"
                     "Connection: close\r\n\r\n{\"status\":\"error\",\"message\":\"%s\"}\n",
                     status, extra, bl, message);
    if (n > 0 && send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        log_debug("api: answering %s: %s", status, strerror(errno));
    close_fd(fd);
}

static void unauth_drop(struct api *api, size_t i)
{
    close_fd(api->unauth[i].fd);
    api->unauth[i].fd = -1;
    api->unauth[i].len = 0;
}

/* A TCP connection waits, slotless, for its head (the oldest waiting one
 * makes room when all API_UNAUTH_MAX places are taken). */
static void unauth_add(struct api *api, int fd)
{
    size_t at = API_UNAUTH_MAX, oldest = 0;
    for (size_t i = 0; i < API_UNAUTH_MAX && at == API_UNAUTH_MAX; i++) {
        if (api->unauth[i].fd < 0) at = i;
        else if (api->unauth[i].deadline_ms < api->unauth[oldest].deadline_ms) oldest = i;
    }
    if (at == API_UNAUTH_MAX) {
        log_debug("api: %d TCP connections without a request head: closing the oldest", API_UNAUTH_MAX);
        unauth_drop(api, oldest);
        at = oldest;
    }
    if (!api->unauth[at].buf && !(api->unauth[at].buf = malloc(HTTPD_MAX_REQUEST))) {
        log_warn("api: out of memory for a request head: connection closed");
        close_fd(fd);
        return;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        log_warn("api: cannot make a connection non-blocking: %s", strerror(errno));
        close_fd(fd);
        return;
    }
    api->unauth[at].fd = fd;
    api->unauth[at].len = 0;
    api->unauth[at].deadline_ms = mono_ms() + API_AUTH_TIMEOUT_MS;
}

/* Reads what a waiting connection sent; with a whole head, authorizes it
 * and hands it to a slot, or answers and closes it. */
static void unauth_read(struct api *api, size_t i)
{
    int fd = api->unauth[i].fd;
    char *buf = api->unauth[i].buf;
    ssize_t r = recv(fd, buf + api->unauth[i].len, HTTPD_MAX_REQUEST - api->unauth[i].len, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (r <= 0) {
        unauth_drop(api, i);
        return;
    }
    api->unauth[i].len += (size_t)r;
    struct httpd_request req;
    enum httpd_parse_status st = httpd_parse_request(buf, api->unauth[i].len, &req);
    if (st == HTTPD_PARSE_INCOMPLETE) return;
    api->unauth[i].fd = -1;
    size_t len = api->unauth[i].len;
    api->unauth[i].len = 0;
    if (st == HTTPD_PARSE_BAD) {
        answer_and_close(fd, "400 Bad Request", "", "malformed request");
    } else if (st == HTTPD_PARSE_TOO_LARGE) {
        answer_and_close(fd, "431 Request Header Fields Too Large", "", "request head too large");
    } else if (!api_request_authorized(api->cfg, buf, req.head_len)) {
        answer_and_close(fd, "401 Unauthorized", "WWW-Authenticate: Bearer realm=\"loglet\"\r\n",
                         "a valid bearer token is required (Authorization: Bearer ...)");
    } else {
        char *head = malloc(len);
        if (!head) {
            answer_and_close(fd, "500 Internal Server Error", "", "out of memory");
            return;
        }
        memcpy(head, buf, len);
        int flags = fcntl(fd, F_GETFL);
        if (flags >= 0) (void)fcntl(fd, F_SETFL, flags & ~O_NONBLOCK); /* the thread polls before each send */
        start_slot(api, fd, true, head, len);
    }
}

static void unauth_expire(struct api *api, int64_t now)
{
    for (size_t i = 0; i < API_UNAUTH_MAX; i++)
        if (api->unauth[i].fd >= 0 && now >= api->unauth[i].deadline_ms) unauth_drop(api, i);
}

static void accept_one(struct api *api, int lfd, bool tcp)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
            log_warn("api: accept: %s", strerror(errno));
            nanosleep(&(struct timespec){0, 100 * 1000000L}, NULL); /* EMFILE and friends: back off */
        }
        return;
    }
    if (tcp) unauth_add(api, fd);
    else start_slot(api, fd, false, NULL, 0);
}

static void *api_main(void *arg)
{
    struct api *api = arg;
    while (!atomic_load(&api->stop)) {
        struct pollfd p[3 + API_UNAUTH_MAX] = {{api->wake_rd, POLLIN, 0}, {api->ufd, POLLIN, 0}, {api->tfd, POLLIN, 0}};
        size_t which[API_UNAUTH_MAX], np = 3;
        for (size_t i = 0; i < API_UNAUTH_MAX; i++)
            if (api->unauth[i].fd >= 0) {
                which[np - 3] = i;
                p[np++] = (struct pollfd){api->unauth[i].fd, POLLIN, 0};
            }
        int rc = poll(p, (nfds_t)np, np > 3 ? 250 : 1000);
        if (rc < 0 && errno != EINTR) {
            log_error("api: poll: %s", strerror(errno));
            nanosleep(&(struct timespec){0, 100 * 1000000L}, NULL);
            continue;
        }
        reap(api, false);
        unauth_expire(api, mono_ms());
        if (rc <= 0) continue;
        if (p[0].revents) break;
        for (size_t k = 3; k < np; k++)
            if (p[k].revents && api->unauth[which[k - 3]].fd == p[k].fd) unauth_read(api, which[k - 3]);
        if (p[1].revents) accept_one(api, api->ufd, false);
        if (p[2].revents) accept_one(api, api->tfd, true);
    }
    return NULL;
}

static int make_dir_of(const char *path, char *err, size_t errlen)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) goto fail;
        *p = '/';
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) goto fail;
    return 0;
fail:
    snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
    return -1;
}

/* The socket is created 0600 (umask, then chmod to be sure): the logs of
 * every container are behind it. A stale socket of a previous run is
 * replaced; any other file in the way is an error. */
static int listen_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "socket path %s is longer than %zu bytes", path, sizeof sa.sun_path - 1);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (make_dir_of(path, err, errlen) != 0) return -1;
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "%s exists and is not a socket", path);
            return -1;
        }
        /* Only a dead agent's socket is stale: never take a live one's. */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (probe >= 0) close_fd(probe);
        if (live) {
            snprintf(err, errlen, "%s is in use by another process", path);
            return -1;
        }
        if (unlink(path) != 0) {
            snprintf(err, errlen, "cannot remove the stale socket %s: %s", path, strerror(errno));
            return -1;
        }
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    mode_t old = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    int saved = errno;
    umask(old);
    if (rc != 0 || chmod(path, 0600) != 0 || listen(fd, 64) != 0) {
        if (rc == 0) saved = errno;
        snprintf(err, errlen, "cannot listen on %s: %s", path, strerror(saved));
        close_fd(fd);
        return -1;
    }
    return fd;
}

static int listen_tcp(const char *host, int port, int *bound, char *err, size_t errlen)
{
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "server.api.listen_address %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        int one = 1;
        if (fd >= 0 && (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
                        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0)) {
            saved = errno;
            close_fd(fd);
            fd = -1;
        } else if (fd < 0) {
            saved = errno;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d for the logs API: %s", host, port, strerror(saved));
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    *bound = port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

void api_stop(struct api *api)
{
    if (!api) return;
    atomic_store(&api->stop, true);
    if (api->thread_started) {
        ssize_t w;
        do
            w = write(api->wake_wr, "x", 1);
        while (w < 0 && errno == EINTR);
        pthread_join(api->thread, NULL);
    }
    if (api->slots) reap(api, true);
    for (size_t i = 0; i < API_UNAUTH_MAX; i++) {
        if (api->unauth[i].fd >= 0) close_fd(api->unauth[i].fd);
        free(api->unauth[i].buf);
    }
    close_fd(api->ufd);
    close_fd(api->tfd);
    close_fd(api->wake_rd);
    close_fd(api->wake_wr);
    struct stat st;
    if (api->socket_path && lstat(api->socket_path, &st) == 0 && st.st_dev == api->sock_dev &&
        st.st_ino == api->sock_ino && unlink(api->socket_path) != 0 && errno != ENOENT)
        log_warn("api: cannot remove %s: %s", api->socket_path, strerror(errno));
    free(api->socket_path);
    free(api->slots);
    free(api);
}

struct api *api_start(const struct config *cfg, struct livetail *hub, struct collector *collector, char *err,
                      size_t errlen)
{
    const char *sock = cfg->server.api.socket, *host = cfg->server.api.listen_address;
    if (errlen) err[0] = '\0';
    if (!sock[0] && !host[0]) return NULL;
    struct api *api = calloc(1, sizeof *api);
    if (!api) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    api->cfg = cfg;
    api->hub = hub;
    api->collector = collector;
    api->ufd = api->tfd = api->wake_rd = api->wake_wr = -1;
    for (size_t i = 0; i < API_UNAUTH_MAX; i++) api->unauth[i].fd = -1;
    /* A few slots beyond the limit, so that one request too many is read
     * and answered 503 with a reason rather than reset. */
    api->nslots = (size_t)cfg->server.api.max_subscribers + API_SPARE_SLOTS;
    api->slots = calloc(api->nslots, sizeof *api->slots);
    int pipefd[2];
    if (!api->slots || pipe2(pipefd, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf(err, errlen, "api: %s", api->slots ? strerror(errno) : "out of memory");
        api_stop(api);
        return NULL;
    }
    api->wake_rd = pipefd[0];
    api->wake_wr = pipefd[1];
    for (size_t i = 0; i < api->nslots; i++) {
        api->slots[i].api = api;
        api->slots[i].fd = -1;
    }
    if (host[0]) {
        char why[512];
        if (api_token_load(cfg->server.api.bearer_token_file, NULL, 0, why, sizeof why) != 0) {
            snprintf(err, errlen, "server.api.bearer_token_file: %s", why);
            api_stop(api);
            return NULL;
        }
        api->tfd = listen_tcp(host, (int)cfg->server.api.listen_port, &api->tcp_port, err, errlen);
        if (api->tfd < 0) {
            api_stop(api);
            return NULL;
        }
        log_info("logs API on tcp %s:%d (bearer token required)", host, api->tcp_port);
    }
    if (sock[0]) {
        char why[PATH_MAX + 512];
        api->ufd = listen_unix(sock, why, sizeof why);
        if (api->ufd < 0) {
            log_warn("logs API socket disabled: %s (set server.api.socket, or mount a writable directory there)", why);
        } else {
            api->socket_path = strdup(sock);
            struct stat st;
            if (lstat(sock, &st) == 0) {
                api->sock_dev = st.st_dev;
                api->sock_ino = st.st_ino;
            }
            log_info("logs API on unix:%s", sock);
        }
    }
    if (api->ufd < 0 && api->tfd < 0) {
        api_stop(api);
        return NULL;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&api->thread, NULL, api_main, api);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "api: thread: %s", strerror(rc));
        api_stop(api);
        return NULL;
    }
    api->thread_started = true;
    return api;
}

int api_tcp_port(const struct api *api) { return api ? api->tcp_port : 0; }

void api_set_job_label(struct api *api, api_job_label_fn fn, void *ctx)
{
    if (!api) return;
    api->job_label = fn;
    api->job_ctx = ctx;
}
