/*
 * api — listeners and request threads of the logs API (see api.h).
 *
 * One listener thread polls the Unix socket, the TCP socket and a wake pipe;
 * each accepted connection gets a slot (a fixed array of max_subscribers)
 * and a thread, which reads the head, answers and exits. Slots are joined
 * lazily by the listener, and all of them at stop.
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

struct api_slot {
    struct api *api;
    int fd;
    bool tcp;
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
    pthread_t thread;
    bool thread_started;
    size_t nslots;
    struct api_slot *slots;
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
                                  .collector = s->api->collector,
                                  .job_label = s->api->job_label,
                                  .job_ctx = s->api->job_ctx};
    api_request_serve(&env, s->fd);
    close_fd(s->fd);
    s->fd = -1;
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
    reap(api, false);
    struct api_slot *free_slot = NULL;
    for (size_t i = 0; i < api->nslots && !free_slot; i++)
        if (!atomic_load(&api->slots[i].busy)) free_slot = &api->slots[i];
    if (!free_slot) {
        refuse_busy(fd, api->nslots - API_SPARE_SLOTS);
        return;
    }
    free_slot->fd = fd;
    free_slot->tcp = tcp;
    atomic_store(&free_slot->exited, false);
    atomic_store(&free_slot->busy, true);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&free_slot->thread, NULL, slot_main, free_slot);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        log_warn("api: cannot start a request thread: %s", strerror(rc));
        atomic_store(&free_slot->busy, false);
        refuse_busy(fd, api->nslots - API_SPARE_SLOTS);
    }
}

static void *api_main(void *arg)
{
    struct api *api = arg;
    while (!atomic_load(&api->stop)) {
        struct pollfd p[3] = {{api->wake_rd, POLLIN, 0}, {api->ufd, POLLIN, 0}, {api->tfd, POLLIN, 0}};
        int rc = poll(p, 3, 1000);
        if (rc < 0 && errno != EINTR) {
            log_error("api: poll: %s", strerror(errno));
            nanosleep(&(struct timespec){0, 100 * 1000000L}, NULL);
            continue;
        }
        reap(api, false);
        if (rc <= 0) continue;
        if (p[0].revents) break;
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
