/*
 * watch — one thread per resource keeping the cache in step with the API
 * server, by the protocol client-go's reflector follows:
 *
 *   list (paged, limit=500) → replace the cache, remember the list's
 *   resourceVersion → watch from it (allowWatchBookmarks=true,
 *   timeoutSeconds 5-10 min) → each line of the chunked answer is one event:
 *   apply it and remember its resourceVersion (a BOOKMARK only moves the
 *   version) → when the server ends the stream, watch again from the last
 *   version → a 410 Gone (as an HTTP status or an ERROR event) means that
 *   version is compacted away: list again.
 *
 * Failures back off (500 ms doubling to 30 s, with jitter) and are said once
 * per outage, with the recovery said once too. A 401 re-reads the token
 * first (bound tokens rotate). An answer that is not the API's (garbage,
 * oversized, wrong types) is an error like any other and is followed by a
 * fresh list: after a stream we could not read, the cache may have missed
 * events. Stopping interrupts a transfer within about a second (curl's
 * progress callback) and a back-off at once (condition variable).
 */
#include <curl/curl.h>
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kube.h"
#include "log/log.h"
#include "metrics/metrics.h"

#define WATCH_IDLE_LIMIT_S 180
#define LIST_MAX_ITEMS 5000 /* over every page of one list; a node runs at most a few hundred pods */
#define WATCH_MIN_HEALTHY_MS 1000 /* a shorter watch with no event is an error */
#define MIN_BACKOFF_MS 500
#define MAX_BACKOFF_MS 30000
#define LIST_TIMEOUT_MS 60000
#define CONNECT_TIMEOUT_MS 10000
#define ERROR_BODY_MAX 512
/* The answer buffer: an event line is rarely longer than a few KiB; a list
 * page makes it grow, and it is given back after the list (kept, a node's
 * list would stay resident for the agent's life). */
#define BUF_INITIAL_BYTES 16384
#define BUF_KEEP_BYTES 65536

struct kube_watch {
    struct kube_auth *auth;
    struct kube_cache *cache;
    enum kube_kind kind;
    char *node_escaped; /* for the field selector; NULL for namespaces */
    pthread_t thread;
    bool started;
    atomic_bool stop;
    pthread_mutex_t sleep_lock;
    pthread_cond_t sleep_cond;

    CURL *curl;
    char errbuf[CURL_ERROR_SIZE];
    /* The answer being received: a list page, or the watch stream's
     * unfinished line. */
    char *buf;
    size_t len, cap, limit;
    bool streaming;
    long status;
    char *version; /* the last resourceVersion we hold everything up to */
    bool gone;     /* 410: the version is too old, list again */
    char failure[640]; /* why the transfer was abandoned (garbage, too large) */
    size_t events;
    bool connected; /* the watch's 200 arrived: the API server is back */
    int64_t last_data_ms;
    int64_t idle_limit_ms;

    int64_t backoff_ms;
    bool outage_said;
    bool unreadable_said; /* an object left out of a list or watch: said once, then at debug level */
    uint64_t rng;
};

static const char *resource(const struct kube_watch *w) { return w->kind == KUBE_POD ? "pods" : "namespaces"; }

static uint64_t rng_next(struct kube_watch *w)
{
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    return w->rng;
}

static bool stopping(struct kube_watch *w) { return atomic_load_explicit(&w->stop, memory_order_relaxed); }

static void sleep_ms(struct kube_watch *w, int64_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&w->sleep_lock);
    while (!stopping(w)) {
        int rc = pthread_cond_timedwait(&w->sleep_cond, &w->sleep_lock, &until);
        if (rc == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&w->sleep_lock);
}

static void count_error(long status)
{
    enum metrics_kube_error e = status == 0     ? METRICS_KUBE_NO_ANSWER
                                : status == 401 ? METRICS_KUBE_401
                                : status == 403 ? METRICS_KUBE_403
                                : status == 410 ? METRICS_KUBE_410
                                : status >= 500 ? METRICS_KUBE_5XX
                                : status == -1  ? METRICS_KUBE_GARBAGE
                                                : METRICS_KUBE_OTHER;
    metrics_add(kube_api_errors[e], 1);
}

/* What lines get while the API server does not answer: it depends on
 * whether this watch ever listed (the cache keeps what it had). */
static const char *meanwhile(const struct kube_watch *w)
{
    bool listed = w->version != NULL;
    if (w->kind == KUBE_NAMESPACE)
        return listed ? "meanwhile namespace labels and exclusions are those of the last answer"
                      : "until it answers, streams get no namespace labels and namespace exclusions do not apply "
                        "(files opened meanwhile do not wait for them)";
    return listed ? "meanwhile files of pods already cached keep that metadata (it may be stale) and files of pods "
                    "not cached are sent with path labels"
                  : "until it answers, lines are sent with path labels only";
}

/* Said once per outage; the back-off grows. */
static void failed(struct kube_watch *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void failed(struct kube_watch *w, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!w->outage_said) {
        log_error("kubernetes: %s; %s; retrying with back-off (said once until it recovers; see "
                  "loglet_kube_api_errors_total)", msg, meanwhile(w));
        w->outage_said = true;
    } else {
        log_debug("kubernetes: %s", msg);
    }
    /* Unreachable or refusing us: new files should not wait for a pod. After
     * an answer we could not read, a relist follows shortly: they may. */
    if (w->status != -1 && w->status != 410)
        atomic_store(w->kind == KUBE_POD ? &w->cache->unavailable : &w->cache->namespaces_unavailable, true);
    int64_t jitter = (int64_t)(rng_next(w) % (uint64_t)(w->backoff_ms / 2 + 1));
    sleep_ms(w, w->backoff_ms + jitter);
    w->backoff_ms = w->backoff_ms * 2 > MAX_BACKOFF_MS ? MAX_BACKOFF_MS : w->backoff_ms * 2;
}

/* The back-off is not reset here: a list that works followed by a watch
 * that fails at once (an ERROR event, an empty 200) would otherwise loop at
 * the minimum delay and hammer the API server from every node. It is reset
 * only by a watch that lasted or brought events (watch_main). */
static void recovered(struct kube_watch *w, const char *what)
{
    atomic_store(w->kind == KUBE_POD ? &w->cache->unavailable : &w->cache->namespaces_unavailable, false);
    metrics_set(kube_last_update_ms, metrics_now_ms());
    if (w->outage_said) log_info("kubernetes: %s %s again", what, resource(w));
    w->outage_said = false;
}

static void set_version(struct kube_watch *w, const char *version)
{
    if (!version || !*version) return;
    char *copy = strdup(version);
    if (!copy) return; /* keep the older one: a relist or re-watch from it is still right */
    free(w->version);
    w->version = copy;
}

static int grow(struct kube_watch *w, size_t need)
{
    if (need <= w->cap) return 0;
    size_t cap = w->cap ? w->cap : BUF_INITIAL_BYTES;
    while (cap < need) cap *= 2;
    char *p = realloc(w->buf, cap);
    if (!p) return -1;
    w->buf = p;
    w->cap = cap;
    return 0;
}

/* An object the API server sent that could not be read: the others are
 * used, and it is as if it had not been sent (a pod of it is not known and
 * its files are sent with path labels once wait_for_metadata is over). */
static void say_unreadable(struct kube_watch *w, const char *what)
{
    metrics_add(kube_api_errors[METRICS_KUBE_GARBAGE], 1);
    if (w->unreadable_said) {
        log_debug("kubernetes: left out of the %s: %s", resource(w), what);
        return;
    }
    w->unreadable_said = true;
    log_warn("kubernetes: left out of the %s: %s; the others are used (said once; later ones at debug level)",
             resource(w), what);
}

/* One complete line of the watch stream. Returns false to abandon it. */
static bool on_event_line(struct kube_watch *w, const char *line, size_t len)
{
    while (len && (line[len - 1] == '\r' || line[len - 1] == ' ')) len--;
    if (!len) return true;
    struct kube_event ev;
    char err[384];
    if (kube_parse_event(line, len, w->kind, &ev, err, sizeof err) != 0) {
        snprintf(w->failure, sizeof w->failure, "the watch of %s sent something unreadable: %s", resource(w), err);
        return false;
    }
    if (ev.type == KUBE_EVENT_ERROR) {
        if (ev.code == 410) w->gone = true;
        else snprintf(w->failure, sizeof w->failure, "the watch of %s ended in an error %ld: %s", resource(w), ev.code,
                      ev.message);
        kube_event_free(&ev);
        return false;
    }
    w->events++;
    set_version(w, ev.resource_version);
    if (ev.type == KUBE_EVENT_UNREADABLE) {
        char what[400];
        snprintf(what, sizeof what, "a watch event of %s", ev.message);
        say_unreadable(w, what);
    } else if (ev.type == KUBE_EVENT_BOOKMARK) {
        atomic_store(&w->cache->last_update_ms, metrics_now_ms());
        /* A quiet node has few events: deleted pods whose files closed go
         * at the next bookmark (about every minute) at the latest. */
        kube_cache_expire(w->cache, metrics_now_ms());
    } else {
        kube_cache_apply(w->cache, &ev);
    }
    metrics_set(kube_last_update_ms, metrics_now_ms());
    kube_event_free(&ev);
    return true;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    struct kube_watch *w = userdata;
    size_t n = size * nmemb;
    w->last_data_ms = metrics_now_ms();
    if (!w->status) curl_easy_getinfo(w->curl, CURLINFO_RESPONSE_CODE, &w->status);
    if (w->status != 200) {
        /* An error answer: keep its start for the message. */
        size_t keep = w->len < ERROR_BODY_MAX ? ERROR_BODY_MAX - w->len : 0;
        if (keep > n) keep = n;
        if (keep && grow(w, w->len + keep + 1) == 0) {
            memcpy(w->buf + w->len, data, keep);
            w->len += keep;
        }
        return n;
    }
    if (w->len + n > w->limit) {
        snprintf(w->failure, sizeof w->failure, "%s from the API server is larger than %zu bytes%s",
                 w->streaming ? "a watch event" : "a list page", w->limit, w->streaming ? " (or not split in lines)" : "");
        return 0;
    }
    if (grow(w, w->len + n + 1) != 0) {
        snprintf(w->failure, sizeof w->failure, "out of memory reading the API server's answer");
        return 0;
    }
    memcpy(w->buf + w->len, data, n);
    w->len += n;
    if (!w->streaming) return n;
    /* Events are newline-delimited; the last piece may be unfinished. */
    size_t start = 0;
    for (char *nl; (nl = memchr(w->buf + start, '\n', w->len - start));) {
        size_t end = (size_t)(nl - w->buf);
        if (!on_event_line(w, w->buf + start, end - start)) return 0;
        start = end + 1;
    }
    memmove(w->buf, w->buf + start, w->len - start);
    w->len -= start;
    return n;
}

static void recovered(struct kube_watch *w, const char *what);

static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    struct kube_watch *w = userdata;
    if (stopping(w)) return 1;
    if (w->streaming && !w->connected) {
        long code = 0;
        curl_easy_getinfo(w->curl, CURLINFO_RESPONSE_CODE, &code);
        if (code == 200) {
            w->connected = true;
            recovered(w, "watching");
        }
    }
    /* A watch the server stopped feeding (a half-open connection) is
     * abandoned a minute after it should have ended. */
    if (w->idle_limit_ms && metrics_now_ms() - w->last_data_ms > w->idle_limit_ms) {
        snprintf(w->failure, sizeof w->failure, "the watch of %s sent nothing for %lld s", resource(w),
                 (long long)w->idle_limit_ms / 1000);
        return 1;
    }
    return 0;
}

#define SETOPT(opt, val)                                                                               \
    do {                                                                                               \
        if (curl_easy_setopt(w->curl, (opt), (val)) != CURLE_OK) {                                     \
            snprintf(err, errlen, "kubernetes: libcurl refused %s", #opt);                             \
            return -1;                                                                                 \
        }                                                                                              \
    } while (0)

static int setup_curl(struct kube_watch *w, char *err, size_t errlen)
{
    struct kube_auth *a = w->auth;
    if (!(w->curl = curl_easy_init())) {
        snprintf(err, errlen, "kubernetes: cannot initialise libcurl");
        return -1;
    }
    SETOPT(CURLOPT_ERRORBUFFER, w->errbuf);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_USERAGENT, "loglet/" LOGLET_VERSION);
    SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
    SETOPT(CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(CURLOPT_WRITEDATA, w);
    SETOPT(CURLOPT_XFERINFOFUNCTION, on_progress);
    SETOPT(CURLOPT_XFERINFODATA, w);
    SETOPT(CURLOPT_NOPROGRESS, 0L);
    SETOPT(CURLOPT_ACCEPT_ENCODING, ""); /* the API server gzips large lists */
    if (a->ca_file) SETOPT(CURLOPT_CAINFO, a->ca_file);
    if (a->ca_data) {
        struct curl_blob blob = {a->ca_data, a->ca_len, CURL_BLOB_COPY};
        SETOPT(CURLOPT_CAINFO_BLOB, &blob);
    }
    if (a->cert_file) SETOPT(CURLOPT_SSLCERT, a->cert_file);
    if (a->cert_data) {
        struct curl_blob blob = {a->cert_data, a->cert_len, CURL_BLOB_COPY};
        SETOPT(CURLOPT_SSLCERT_BLOB, &blob);
    }
    if (a->key_file) SETOPT(CURLOPT_SSLKEY, a->key_file);
    if (a->key_data) {
        struct curl_blob blob = {a->key_data, a->key_len, CURL_BLOB_COPY};
        SETOPT(CURLOPT_SSLKEY_BLOB, &blob);
    }
    if (a->insecure_skip_verify) {
        SETOPT(CURLOPT_SSL_VERIFYPEER, 0L);
        SETOPT(CURLOPT_SSL_VERIFYHOST, 0L);
    }
    return 0;
}

enum outcome {
    DONE,    /* a 200 answer read to its end */
    STOPPED, /* the agent stops */
    FAILED,  /* said and backed off by the caller */
};

/* Performs one GET. On a failure, w->status and `why` say what happened. */
static enum outcome get(struct kube_watch *w, const char *url, bool streaming, char *why, size_t whylen)
{
    kube_auth_refresh_token(w->auth, false);
    char auth[KUBE_TOKEN_MAX_BYTES + 64];
    kube_auth_header(w->auth, auth, sizeof auth);
    struct curl_slist *headers = curl_slist_append(NULL, "Accept: application/json");
    struct curl_slist *with_auth = headers && auth[0] ? curl_slist_append(headers, auth) : headers;
    /* Only what was written: wiping the whole buffer would make 64 KiB of
     * this thread's stack resident for a token of a few hundred bytes. */
    explicit_bzero(auth, strlen(auth));
    if (!with_auth) {
        curl_slist_free_all(headers);
        snprintf(why, whylen, "out of memory");
        w->status = -1;
        return FAILED;
    }
    headers = with_auth;
    w->len = 0;
    w->status = 0;
    w->streaming = streaming;
    w->limit = streaming ? KUBE_MAX_EVENT_BYTES : KUBE_MAX_LIST_BYTES;
    w->failure[0] = '\0';
    w->errbuf[0] = '\0';
    w->gone = false;
    w->events = 0;
    w->connected = false;
    w->last_data_ms = metrics_now_ms();
    CURLcode rc = curl_easy_setopt(w->curl, CURLOPT_URL, url);
    if (rc == CURLE_OK) rc = curl_easy_setopt(w->curl, CURLOPT_HTTPHEADER, headers);
    if (rc == CURLE_OK) rc = curl_easy_setopt(w->curl, CURLOPT_TIMEOUT_MS, streaming ? 0L : (long)LIST_TIMEOUT_MS);
    if (rc == CURLE_OK) rc = curl_easy_perform(w->curl);
    curl_easy_setopt(w->curl, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(headers);
    if (!w->status) curl_easy_getinfo(w->curl, CURLINFO_RESPONSE_CODE, &w->status);
    if (stopping(w)) return STOPPED;
    if (w->gone) {
        w->status = 410;
        snprintf(why, whylen, "resourceVersion %s is too old (410 Gone)", w->version ? w->version : "");
        return FAILED;
    }
    if (w->failure[0]) {
        snprintf(why, whylen, "%s", w->failure);
        w->status = -1;
        return FAILED;
    }
    if (rc != CURLE_OK) {
        snprintf(why, whylen, "cannot reach %s: %s", w->auth->server, w->errbuf[0] ? w->errbuf : curl_easy_strerror(rc));
        w->status = 0;
        return FAILED;
    }
    if (w->status != 200) {
        char body[ERROR_BODY_MAX + 1];
        size_t n = w->len < ERROR_BODY_MAX ? w->len : ERROR_BODY_MAX;
        for (size_t i = 0; i < n; i++) body[i] = (w->buf[i] >= 0x20 && w->buf[i] < 0x7f) ? w->buf[i] : ' ';
        body[n] = '\0';
        const char *hint = w->status == 401   ? " (the token is not accepted: re-reading it)"
                           : w->status == 403 ? " (the service account needs get, list and watch on this resource: "
                                                "check the ClusterRole)"
                                              : "";
        snprintf(why, whylen, "GET %s answered %ld%s: %.300s", w->kind == KUBE_POD ? "/api/v1/pods" : "/api/v1/namespaces",
                 w->status, hint, body);
        return FAILED;
    }
    return DONE;
}

static void build_url(struct kube_watch *w, char *url, size_t cap, bool watch, const char *cont)
{
    int n = snprintf(url, cap, "%s/api/v1/%s?", w->auth->server, resource(w));
    if (w->node_escaped) n += snprintf(url + n, cap - (size_t)n, "fieldSelector=spec.nodeName%%3D%s&", w->node_escaped);
    if (watch) {
        /* client-go spreads its watches over 5-10 minutes. */
        long timeout = 300 + (long)(rng_next(w) % 300);
        snprintf(url + n, cap - (size_t)n, "watch=true&allowWatchBookmarks=true&resourceVersion=%s&timeoutSeconds=%ld",
                 w->version ? w->version : "", timeout);
        /* Bookmarks come about every minute from a live server: three
         * minutes of silence is a stalled watch, not a quiet node. */
        w->idle_limit_ms = (timeout + 60 < WATCH_IDLE_LIMIT_S ? timeout + 60 : WATCH_IDLE_LIMIT_S) * 1000;
    } else {
        snprintf(url + n, cap - (size_t)n, "limit=500%s%s", cont ? "&continue=" : "", cont ? cont : "");
        w->idle_limit_ms = 0;
    }
}

/* Appends a page's items to `all` (takes them). */
static int merge(struct kube_list *all, struct kube_list *page)
{
    if (page->count) {
        struct kube_object *items = realloc(all->items, (all->count + page->count) * sizeof *items);
        if (!items) return -1;
        all->items = items;
        memcpy(all->items + all->count, page->items, page->count * sizeof *items);
        all->count += page->count;
        free(page->items);
        page->items = NULL;
        page->count = 0;
    }
    free(all->resource_version);
    all->resource_version = page->resource_version;
    page->resource_version = NULL;
    return 0;
}

/* After a list (at start, and after a 410 or an error, so rarely): the
 * page buffer and the JSON trees of the pages were as large as the node's
 * pod list, on this thread's malloc arena, which glibc does not give back
 * by itself. Given back here, the agent's resident memory is not raised
 * for the rest of its life by the size of a list it no longer holds. */
static void shrink_after_list(struct kube_watch *w)
{
    if (w->cap > BUF_KEEP_BYTES) {
        free(w->buf);
        w->buf = NULL;
        w->cap = w->len = 0;
    }
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

static enum outcome list(struct kube_watch *w, char *why, size_t whylen)
{
    struct kube_list all = {0};
    char *cont = NULL;
    char url[4096];
    enum outcome out;
    metrics_add(kube_relists, 1);
    do {
        char *escaped = cont ? curl_easy_escape(w->curl, cont, 0) : NULL;
        build_url(w, url, sizeof url, false, escaped);
        curl_free(escaped);
        free(cont);
        cont = NULL;
        out = get(w, url, false, why, whylen);
        if (out != DONE) break;
        struct kube_list page;
        char err[512];
        if (kube_parse_list(w->buf, w->len, w->kind, &page, err, sizeof err) != 0) {
            snprintf(why, whylen, "the list of %s is unreadable: %s", resource(w), err);
            w->status = -1;
            out = FAILED;
            break;
        }
        if (page.nskipped) {
            char what[400];
            snprintf(what, sizeof what, "%zu item%s of the list, the first being %s", page.nskipped,
                     page.nskipped == 1 ? "" : "s", page.skipped);
            say_unreadable(w, what);
        }
        cont = page.continue_token;
        page.continue_token = NULL;
        int merged = merge(&all, &page);
        kube_list_free(&page);
        if (merged != 0) {
            snprintf(why, whylen, "out of memory listing %s", resource(w));
            w->status = -1;
            out = FAILED;
            break;
        }
        /* One node holds a few hundred pods: pages that never end are a
         * broken or hostile server, not a big node. */
        if (cont && all.count >= LIST_MAX_ITEMS) {
            snprintf(why, whylen, "the list of %s goes on past %d items (continue tokens that never end)",
                     resource(w), LIST_MAX_ITEMS);
            w->status = -1;
            out = FAILED;
            break;
        }
    } while (cont);
    free(cont);
    if (out == DONE) {
        set_version(w, all.resource_version);
        size_t n = all.count;
        kube_cache_replace(w->cache, w->kind, &all);
        shrink_after_list(w);
        log_info("kubernetes: listed %zu %s%s%s at resourceVersion %s", n, resource(w),
                 w->node_escaped ? " of node " : "", w->node_escaped ? w->node_escaped : "", w->version ? w->version : "?");
        recovered(w, "listed");
    }
    kube_list_free(&all);
    return out;
}

static void *watch_main(void *arg)
{
    struct kube_watch *w = arg;
    bool need_list = true, just_listed = false;
    char why[1024], url[4096];
    while (!stopping(w)) {
        if (need_list) {
            enum outcome out = list(w, why, sizeof why);
            if (out == STOPPED) break;
            if (out == FAILED) {
                count_error(w->status);
                if (w->status == 401) kube_auth_refresh_token(w->auth, true);
                failed(w, "%s", why);
                continue;
            }
            need_list = false;
            just_listed = true;
        }
        build_url(w, url, sizeof url, true, NULL);
        int64_t watch_began = metrics_now_ms();
        enum outcome out = get(w, url, true, why, sizeof why);
        bool watched_after_list = just_listed;
        just_listed = false;
        if (out == STOPPED) break;
        if (out == DONE && (w->events > 0 || metrics_now_ms() - watch_began >= WATCH_MIN_HEALTHY_MS)) {
            /* The server ended the watch (its timeout): go on from where it left off. */
            metrics_add(kube_watch_restarts, 1);
            w->backoff_ms = MIN_BACKOFF_MS;
            recovered(w, "watching");
            continue;
        }
        if (out == DONE) {
            /* Ended at once with nothing in it, as client-go counts it: an
             * error, so that a server doing this is not asked again at once. */
            metrics_add(kube_watch_restarts, 1);
            failed(w, "the watch of %s ended at once with no event", resource(w));
            continue;
        }
        count_error(w->status);
        /* A 410 at once after a list is a server that cannot keep up: back off. */
        if (w->status == 410 && !(watched_after_list && w->events == 0)) {
            /* Not an outage: the server compacted past our version. */
            log_info("kubernetes: %s; listing %s again", why, resource(w));
            metrics_add(kube_watch_restarts, 1);
            need_list = true;
            continue;
        }
        if (w->status == 401) kube_auth_refresh_token(w->auth, true);
        /* After garbage the stream may have lost events: start again from a list. */
        if (w->status == -1 || w->status == 410) need_list = true;
        failed(w, "%s", why);
    }
    return NULL;
}

struct kube_watch *kube_watch_start(struct kube_auth *auth, struct kube_cache *cache, enum kube_kind kind,
                                    const char *node, char *err, size_t errlen)
{
    struct kube_watch *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    w->auth = auth;
    w->cache = cache;
    w->kind = kind;
    w->backoff_ms = MIN_BACKOFF_MS;
    w->rng = (uint64_t)metrics_now_ms() * 0x9E3779B97F4A7C15ULL + (uint64_t)kind + 1;
    atomic_init(&w->stop, false);
    pthread_mutex_init(&w->sleep_lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&w->sleep_cond, &attr);
    pthread_condattr_destroy(&attr);
    if (setup_curl(w, err, errlen) != 0) {
        kube_watch_stop(w);
        return NULL;
    }
    if (kind == KUBE_POD && !(w->node_escaped = curl_easy_escape(w->curl, node, 0))) {
        snprintf(err, errlen, "out of memory");
        kube_watch_stop(w);
        return NULL;
    }
    int rc = pthread_create(&w->thread, NULL, watch_main, w);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the kubernetes %s thread: %s", resource(w), strerror(rc));
        kube_watch_stop(w);
        return NULL;
    }
    w->started = true;
    return w;
}

void kube_watch_stop(struct kube_watch *w)
{
    if (!w) return;
    atomic_store(&w->stop, true);
    pthread_mutex_lock(&w->sleep_lock);
    pthread_cond_broadcast(&w->sleep_cond);
    pthread_mutex_unlock(&w->sleep_lock);
    if (w->started) pthread_join(w->thread, NULL);
    if (w->curl) curl_easy_cleanup(w->curl);
    curl_free(w->node_escaped);
    free(w->buf);
    free(w->version);
    pthread_mutex_destroy(&w->sleep_lock);
    pthread_cond_destroy(&w->sleep_cond);
    free(w);
}
