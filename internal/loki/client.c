/*
 * client — POSTs push bodies to Loki over one libcurl easy handle, kept for
 * the client's life so the connection is reused (keep-alive), and classifies
 * the answer (see loki.h). Also loki_backoff_ms().
 *
 * Threads: a client is used by one thread at a time. curl_global_init() runs
 * exactly once per process, under pthread_once, the first time a client is
 * created; curl_global_cleanup() is never called (the process exit reclaims
 * it, and calling it while another thread may still use curl is unsafe).
 * CURLOPT_NOSIGNAL keeps curl's resolver timeouts away from signals.
 *
 * Secrets: the password and bearer token are read with plain read(2) (no
 * stdio buffer keeps a copy), into malloc'd memory that is explicit_bzero'd
 * before it is freed; the Authorization header line is wiped the same way.
 * They are never logged nor put in error texts. (libcurl keeps its own
 * copies of CURLOPT_PASSWORD and of the request it sends; those are out of
 * our reach.)
 *
 * Rotation: a projected service-account token expires and is rewritten by
 * the kubelet; a Secret's volume is swapped atomically (a new ..<timestamp>
 * directory, then a rename of the ..data symlink); an operator may rewrite a
 * file in place. So before every push each secret file is stat()ed (one
 * syscall per push, not per line) and re-read when its identity — device,
 * inode, size, mtime, ctime, taken with fstat() on the descriptor *before*
 * reading, so a write racing the read shows up as a change next time — is
 * not the one last read. After a 401/403 it is re-read whatever stat says:
 * a same-size rewrite within one clock tick does not move mtime. A new value
 * rebuilds the header list (or CURLOPT_PASSWORD); a failed read keeps the
 * last good value, said once until a read succeeds again.
 *
 * The response body is kept up to RESPONSE_KEEP bytes in the client; the
 * rest is counted and dropped, so a huge error page costs no memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "log/log.h"
#include "loki/loki.h"

#define RESPONSE_KEEP 256
#define SECRET_MAX (64 * 1024)
#define CONNECT_TIMEOUT_MAX_MS 10000

/* What a secret file was when it was last read (or found missing). */
struct file_id {
    bool present; /* false: stat/open failed */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
};

/* One credential file. Invariant: when path is set, value holds the last
 * good content (never NULL after creation); id is the file as it was at the
 * last read attempt, good or not. */
struct secret {
    const char *key;  /* the config key, for messages */
    const char *path; /* NULL when not configured */
    char *value;      /* wiped when replaced and at destroy */
    struct file_id id;
    bool complained; /* a failed re-read was logged since the last good one */
};

struct loki_client {
    CURL *curl;
    const struct config *cfg;   /* kept to rebuild the headers */
    struct curl_slist *headers; /* holds the Authorization line: wiped when replaced */
    struct secret token, password;
    bool reread_secrets; /* the last answer was 401/403: re-read before the next push */
    char errbuf[CURL_ERROR_SIZE];
    char resp[RESPONSE_KEEP]; /* the start of the response body */
    size_t resp_len;          /* bytes kept in resp */
    size_t resp_total;        /* bytes received */
    int64_t retry_after_ms;   /* of the current response, -1 when absent */
};

/* ---------------------------------------------------------------------------
 * curl_global_init, once per process.
 */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---------------------------------------------------------------------------
 * Helpers for creation.
 */

static void setf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void setf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int nonempty(const char *s)
{
    return s && *s;
}

static void free_secret(char *s)
{
    if (!s) return;
    explicit_bzero(s, strlen(s));
    free(s);
}

static void file_id_of(const struct stat *st, struct file_id *id)
{
    id->present = true;
    id->dev = st->st_dev;
    id->ino = st->st_ino;
    id->size = st->st_size;
    id->mtime = st->st_mtim;
    id->ctime = st->st_ctim;
}

static bool file_id_equal(const struct file_id *a, const struct file_id *b)
{
    if (a->present != b->present) return false;
    if (!a->present) return true;
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
           a->mtime.tv_nsec == b->mtime.tv_nsec && a->ctime.tv_sec == b->ctime.tv_sec &&
           a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* Reads a one-line secret from `path` into a malloc'd, NUL-terminated
 * string with trailing whitespace removed. Errors name the config key and
 * the file, never the content. *id receives the file's identity as it was
 * before the read (not present when it could not be opened). */
static char *read_secret(const char *key, const char *path, struct file_id *id, char *err, size_t errlen)
{
    id->present = false;
    const int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        setf(err, errlen, "%s: cannot read %s: %s", key, path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        setf(err, errlen, "%s: cannot read %s: %s", key, path, strerror(errno));
        close(fd);
        return NULL;
    }
    file_id_of(&st, id);
    char *buf = malloc(SECRET_MAX + 1);
    if (!buf) {
        close(fd);
        setf(err, errlen, "%s: cannot read %s: out of memory", key, path);
        return NULL;
    }
    size_t n = 0;
    const char *why = NULL;
    int saved = 0;
    for (;;) {
        const ssize_t r = read(fd, buf + n, SECRET_MAX + 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            saved = errno;
            break;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n > SECRET_MAX) {
            why = "is larger than 64 KiB";
            break;
        }
    }
    close(fd);
    while (!why && !saved && n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
                                       buf[n - 1] == '\t' || buf[n - 1] == '\v' || buf[n - 1] == '\f'))
        n--;
    if (!why && !saved) {
        if (n == 0)
            why = "is empty";
        else if (memchr(buf, '\n', n) || memchr(buf, '\r', n))
            why = "holds more than one line";
        else if (memchr(buf, '\0', n))
            why = "holds a NUL byte";
    }
    if (saved || why) {
        if (saved)
            setf(err, errlen, "%s: cannot read %s: %s", key, path, strerror(saved));
        else
            setf(err, errlen, "%s: %s %s", key, path, why);
        explicit_bzero(buf, n < SECRET_MAX + 1 ? n + 1 : SECRET_MAX + 1);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* Checks that a file named by a TLS setting can be opened, so that a typo
 * fails at start-up naming the key instead of at every push. */
static int check_readable(const char *key, const char *path, char *err, size_t errlen)
{
    const int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        setf(err, errlen, "%s: cannot read %s: %s", key, path, strerror(errno));
        return -1;
    }
    close(fd);
    return 0;
}

/* RFC 9110 token characters. */
static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int check_header(const char *name, const char *value, char *err, size_t errlen)
{
    if (!*name) {
        setf(err, errlen, "output.loki.headers: a header name is empty");
        return -1;
    }
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        if (!is_tchar(*p)) {
            setf(err, errlen, "output.loki.headers: '%s' is not a valid header name", name);
            return -1;
        }
    }
    if (strpbrk(value, "\r\n")) {
        setf(err, errlen, "output.loki.headers: the value of '%s' holds a line break", name);
        return -1;
    }
    return 0;
}

/* True if the user's extra headers set `name` themselves (then they win). */
static int user_sets(const struct config *cfg, const char *name)
{
    const struct config_strmap *h = &cfg->output.loki.headers;
    for (size_t i = 0; i < h->count; i++)
        if (strcasecmp(h->keys[i], name) == 0) return 1;
    return 0;
}

/* Appends "fmt…" to the header list; the temporary line is wiped because it
 * may hold a secret (curl_slist_append copies it). */
static int add_header(struct curl_slist **list, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int add_header(struct curl_slist **list, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *line = NULL;
    const int n = vasprintf(&line, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    struct curl_slist *l = curl_slist_append(*list, line);
    explicit_bzero(line, (size_t)n);
    free(line);
    if (!l) return -1;
    *list = l;
    return 0;
}

static void free_headers(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l; l = l->next)
        if (l->data) explicit_bzero(l->data, strlen(l->data));
    curl_slist_free_all(list);
}

static int check_url(const char *url, char *err, size_t errlen)
{
    if (!nonempty(url)) {
        setf(err, errlen, "output.loki.url: not set");
        return -1;
    }
    CURLU *u = curl_url();
    if (!u) {
        setf(err, errlen, "output.loki.url: out of memory");
        return -1;
    }
    int rc = 0;
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (uc != CURLUE_OK) {
        setf(err, errlen, "output.loki.url: invalid URL \"%s\": %s", url, curl_url_strerror(uc));
        rc = -1;
    } else {
        char *scheme = NULL;
        uc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
        if (uc != CURLUE_OK || !scheme || (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)) {
            setf(err, errlen, "output.loki.url: \"%s\" is neither http:// nor https://", url);
            rc = -1;
        }
        curl_free(scheme);
    }
    curl_url_cleanup(u);
    return rc;
}

/* ---------------------------------------------------------------------------
 * curl callbacks.
 */

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    struct loki_client *c = userdata;
    const size_t n = size * nmemb;
    const size_t room = RESPONSE_KEEP - c->resp_len;
    const size_t take = n < room ? n : room;
    memcpy(c->resp + c->resp_len, data, take);
    c->resp_len += take;
    c->resp_total += n;
    return n;
}

/* Retry-After: delay-seconds or an HTTP-date. Returns ms, or -1. */
static int64_t parse_retry_after(const char *v)
{
    if (*v >= '0' && *v <= '9') {
        int64_t s = 0;
        for (; *v >= '0' && *v <= '9'; v++) {
            if (s > INT64_MAX / 10000) return INT64_MAX / 1000 * 1000; /* absurd but valid: saturate */
            s = s * 10 + (*v - '0');
        }
        return *v ? -1 : s * 1000;
    }
    const time_t when = curl_getdate(v, NULL);
    if (when == (time_t)-1) return -1;
    const time_t now = time(NULL);
    return when > now ? (int64_t)(when - now) * 1000 : 0;
}

static size_t on_header(char *data, size_t size, size_t nitems, void *userdata)
{
    struct loki_client *c = userdata;
    const size_t n = size * nitems;
    static const char status_line[] = "HTTP/", name[] = "retry-after:";
    if (n >= sizeof status_line - 1 && memcmp(data, status_line, sizeof status_line - 1) == 0) {
        /* A new response starts (after a 1xx, say): forget the last one's. */
        c->retry_after_ms = -1;
        c->resp_len = c->resp_total = 0;
    } else if (n > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0) {
        size_t i = sizeof name - 1, end = n;
        while (i < end && (data[i] == ' ' || data[i] == '\t')) i++;
        while (end > i && (data[end - 1] == '\r' || data[end - 1] == '\n' || data[end - 1] == ' ' ||
                           data[end - 1] == '\t'))
            end--;
        char v[128];
        if (end - i < sizeof v) {
            memcpy(v, data + i, end - i);
            v[end - i] = '\0';
            c->retry_after_ms = parse_retry_after(v);
        }
    }
    return n;
}

/* ---------------------------------------------------------------------------
 * Creation and destruction.
 */

void loki_client_destroy(struct loki_client *c)
{
    if (!c) return;
    if (c->curl) curl_easy_cleanup(c->curl);
    free_headers(c->headers);
    free_secret(c->token.value);
    free_secret(c->password.value);
    explicit_bzero(c, sizeof *c);
    free(c);
}

/* The whole header list, with the current bearer token. The user's extra
 * headers win over ours of the same name. Returns -1 with err set; *out is
 * then untouched. */
static int build_headers(const struct loki_client *c, struct curl_slist **out, char *err, size_t errlen)
{
    const struct config *cfg = c->cfg;
    const __typeof__(cfg->output.loki) *lc = &cfg->output.loki;
    struct curl_slist *list = NULL;

    if (!user_sets(cfg, "Content-Type") && add_header(&list, "Content-Type: application/x-protobuf") < 0) goto oom;
    if (!user_sets(cfg, "Expect") && add_header(&list, "Expect:") < 0) goto oom; /* no 100-continue */
    if (nonempty(lc->tenant_id) && !user_sets(cfg, "X-Scope-OrgID") &&
        add_header(&list, "X-Scope-OrgID: %s", lc->tenant_id) < 0)
        goto oom;
    if (c->token.value && !user_sets(cfg, "Authorization") &&
        add_header(&list, "Authorization: Bearer %s", c->token.value) < 0)
        goto oom;
    for (size_t i = 0; i < lc->headers.count; i++) {
        const char *name = lc->headers.keys[i], *value = lc->headers.values[i] ? lc->headers.values[i] : "";
        if (check_header(name, value, err, errlen) < 0) {
            free_headers(list);
            return -1;
        }
        /* curl: "Name:" would remove the header, "Name;" sends it empty. */
        if ((*value ? add_header(&list, "%s: %s", name, value) : add_header(&list, "%s;", name)) < 0) goto oom;
    }
    *out = list;
    return 0;
oom:
    setf(err, errlen, "output.loki: out of memory");
    free_headers(list);
    return -1;
}

/* Hands a new value of `s` to curl: a new header list for the token, the
 * password option for the password. On failure nothing changed (curl keeps
 * the old value). The caller has not stored the value in `s` yet. */
static int apply_secret(struct loki_client *c, struct secret *s, char *value, char *err, size_t errlen)
{
    if (s == &c->password) {
        if (!nonempty(c->cfg->output.loki.basic_auth_username)) return 0;
        if (curl_easy_setopt(c->curl, CURLOPT_PASSWORD, value) != CURLE_OK) {
            setf(err, errlen, "output.loki: libcurl refused CURLOPT_PASSWORD");
            return -1;
        }
        return 0;
    }
    char *old = c->token.value;
    c->token.value = value; /* build_headers reads it from there */
    struct curl_slist *list = NULL;
    const int rc = build_headers(c, &list, err, errlen);
    c->token.value = old;
    if (rc < 0) return -1;
    if (curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, list) != CURLE_OK) {
        setf(err, errlen, "output.loki: libcurl refused CURLOPT_HTTPHEADER");
        free_headers(list);
        return -1;
    }
    free_headers(c->headers); /* curl no longer points at it */
    c->headers = list;
    return 0;
}

/* Re-reads one secret file if it changed since the last read (or always,
 * when `force`). Called before a push, on the sender's thread. */
static void refresh_secret(struct loki_client *c, struct secret *s, bool force)
{
    if (!s->path) return;
    if (!force) {
        struct stat st;
        struct file_id now = {.present = false};
        if (stat(s->path, &st) == 0) file_id_of(&st, &now);
        if (file_id_equal(&now, &s->id)) return;
    }
    char err[512];
    struct file_id id;
    char *value = read_secret(s->key, s->path, &id, err, sizeof err);
    if (!value) {
        s->id = id; /* not read again until the file moves or Loki says 401/403 */
        if (!s->complained)
            log_warn("%s; pushing with the last credential read from it until it can be read again", err);
        s->complained = true;
        return;
    }
    if (strcmp(value, s->value) == 0) {
        s->id = id;
        if (s->complained) log_info("%s: %s can be read again; the credential is unchanged", s->key, s->path);
        s->complained = false;
        free_secret(value);
        return;
    }
    if (apply_secret(c, s, value, err, sizeof err) < 0) {
        /* s->id stays the old file's, so the next push tries again. */
        if (!s->complained) log_warn("%s: %s changed but cannot be used yet: %s", s->key, s->path, err);
        s->complained = true;
        free_secret(value);
        return;
    }
    free_secret(s->value);
    s->value = value;
    s->id = id;
    s->complained = false;
    log_info("%s: %s changed; pushes use the new credential from now on", s->key, s->path);
}

#define SETOPT(c, opt, val)                                             \
    do {                                                                \
        if (curl_easy_setopt((c)->curl, (opt), (val)) != CURLE_OK) {    \
            setf(err, errlen, "output.loki: libcurl refused " #opt);    \
            goto fail;                                                  \
        }                                                               \
    } while (0)

struct loki_client *loki_client_create(const struct config *cfg, char *err, size_t errlen)
{
    const __typeof__(cfg->output.loki) *lc = &cfg->output.loki;

    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK) {
        setf(err, errlen, "output.loki: curl_global_init failed: %s", curl_easy_strerror(curl_init_rc));
        return NULL;
    }
    if (check_url(lc->url, err, errlen) < 0) return NULL;

    struct loki_client *c = calloc(1, sizeof *c);
    if (!c) {
        setf(err, errlen, "output.loki: out of memory");
        return NULL;
    }
    c->retry_after_ms = -1;
    c->cfg = cfg;
    c->token.key = "output.loki.bearer_token_file";
    c->password.key = "output.loki.basic_auth.password_file";

    /* Files first: their errors are the ones a user will most likely see.
     * At start an unreadable secret is fatal: there is no last good one. */
    if (nonempty(lc->bearer_token_file)) {
        c->token.path = lc->bearer_token_file;
        if (!(c->token.value = read_secret(c->token.key, c->token.path, &c->token.id, err, errlen))) goto fail;
    }
    if (nonempty(lc->basic_auth_password_file)) {
        c->password.path = lc->basic_auth_password_file;
        if (!(c->password.value = read_secret(c->password.key, c->password.path, &c->password.id, err, errlen)))
            goto fail;
    }
    if (nonempty(lc->tls_ca_file) && check_readable("output.loki.tls.ca_file", lc->tls_ca_file, err, errlen) < 0)
        goto fail;
    if (nonempty(lc->tls_cert_file) && check_readable("output.loki.tls.cert_file", lc->tls_cert_file, err, errlen) < 0)
        goto fail;
    if (nonempty(lc->tls_key_file) && check_readable("output.loki.tls.key_file", lc->tls_key_file, err, errlen) < 0)
        goto fail;
    if (strpbrk(lc->tenant_id ? lc->tenant_id : "", "\r\n")) {
        setf(err, errlen, "output.loki.tenant_id: holds a line break");
        goto fail;
    }

    if (build_headers(c, &c->headers, err, errlen) < 0) goto fail;

    c->curl = curl_easy_init();
    if (!c->curl) {
        setf(err, errlen, "output.loki: curl_easy_init failed");
        goto fail;
    }
    const long timeout = lc->timeout_ms > 0 ? (long)lc->timeout_ms : 0;
    const long connect_timeout = timeout > 0 && timeout < CONNECT_TIMEOUT_MAX_MS ? timeout : CONNECT_TIMEOUT_MAX_MS;

    SETOPT(c, CURLOPT_ERRORBUFFER, c->errbuf);
    SETOPT(c, CURLOPT_URL, lc->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    SETOPT(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SETOPT(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    SETOPT(c, CURLOPT_POST, 1L);
    SETOPT(c, CURLOPT_HTTPHEADER, c->headers);
    SETOPT(c, CURLOPT_USERAGENT, "loglet/" LOGLET_VERSION);
    SETOPT(c, CURLOPT_NOSIGNAL, 1L);
    SETOPT(c, CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(c, CURLOPT_TIMEOUT_MS, timeout);
    SETOPT(c, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout);
    SETOPT(c, CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(c, CURLOPT_WRITEDATA, c);
    SETOPT(c, CURLOPT_HEADERFUNCTION, on_header);
    SETOPT(c, CURLOPT_HEADERDATA, c);
    if (nonempty(lc->basic_auth_username)) {
        SETOPT(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SETOPT(c, CURLOPT_USERNAME, lc->basic_auth_username);
        SETOPT(c, CURLOPT_PASSWORD, c->password.value ? c->password.value : "");
    }
    if (nonempty(lc->tls_ca_file)) SETOPT(c, CURLOPT_CAINFO, lc->tls_ca_file);
    if (nonempty(lc->tls_cert_file)) SETOPT(c, CURLOPT_SSLCERT, lc->tls_cert_file);
    if (nonempty(lc->tls_key_file)) SETOPT(c, CURLOPT_SSLKEY, lc->tls_key_file);
    if (lc->tls_insecure_skip_verify) {
        SETOPT(c, CURLOPT_SSL_VERIFYPEER, 0L);
        SETOPT(c, CURLOPT_SSL_VERIFYHOST, 0L);
        log_warn("output.loki.tls.insecure_skip_verify is set: Loki's TLS certificate is not verified");
    }
    return c;

fail:
    loki_client_destroy(c);
    return NULL;
}

/* ---------------------------------------------------------------------------
 * Pushing.
 */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Appends src (len bytes) to dst (whose used length is *pos), escaping
 * control characters; stops when dst is full. Always NUL-terminates. */
static void append_escaped(char *dst, size_t cap, size_t *pos, const char *src, size_t len)
{
    size_t p = *pos;
    for (size_t i = 0; i < len; i++) {
        const unsigned char ch = (unsigned char)src[i];
        char esc[5];
        size_t n = 0;
        if (ch == '\n') n = (size_t)snprintf(esc, sizeof esc, "\\n");
        else if (ch == '\r') n = (size_t)snprintf(esc, sizeof esc, "\\r");
        else if (ch == '\t') n = (size_t)snprintf(esc, sizeof esc, "\\t");
        else if (ch < 0x20 || ch == 0x7f) n = (size_t)snprintf(esc, sizeof esc, "\\x%02x", ch);
        else esc[n++] = (char)ch;
        if (p + n >= cap) break;
        memcpy(dst + p, esc, n);
        p += n;
    }
    dst[p] = '\0';
    *pos = p;
}

static void describe_answer(const struct loki_client *c, long status, char *detail, size_t cap)
{
    int n = snprintf(detail, cap, "HTTP %ld", status);
    size_t pos = n > 0 && (size_t)n < cap ? (size_t)n : cap - 1;
    size_t len = c->resp_len;
    while (len > 0 && (c->resp[len - 1] == '\n' || c->resp[len - 1] == '\r' || c->resp[len - 1] == ' ' ||
                       c->resp[len - 1] == '\t'))
        len--;
    if (len == 0) return;
    append_escaped(detail, cap, &pos, ": ", 2);
    append_escaped(detail, cap, &pos, c->resp, len);
    if (c->resp_total > c->resp_len) append_escaped(detail, cap, &pos, "\xe2\x80\xa6", 3); /* "…" */
}

/* See the classification table in loki.h. */
static enum loki_push_result classify(long status)
{
    if (status >= 200 && status < 300) return LOKI_PUSH_OK;
    if (status == 401 || status == 403) return LOKI_PUSH_AUTH;
    if (status == 413) return LOKI_PUSH_TOO_LARGE;
    if (status == 400 || status == 422) return LOKI_PUSH_REJECTED;
    if (status == 408 || status == 429 || status >= 500) return LOKI_PUSH_RETRY;
    if (status >= 300) return LOKI_PUSH_MISCONFIGURED;
    return LOKI_PUSH_RETRY; /* a final 1xx, or nonsense: no verdict, so try again */
}

void loki_push(struct loki_client *c, const uint8_t *body, size_t len, struct loki_push_outcome *o)
{
    refresh_secret(c, &c->token, c->reread_secrets);
    refresh_secret(c, &c->password, c->reread_secrets);

    c->resp_len = c->resp_total = 0;
    c->retry_after_ms = -1;
    c->errbuf[0] = '\0';
    o->detail[0] = '\0';

    /* A NULL POSTFIELDS would make curl read the body from stdin. */
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body ? (const void *)body : (const void *)"");

    const double t0 = now_seconds();
    const CURLcode rc = curl_easy_perform(c->curl);
    o->seconds = now_seconds() - t0;

    long status = 0;
    if (curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK) status = 0;
    o->http_status = status;
    o->retry_after_ms = c->retry_after_ms;

    if (rc != CURLE_OK) {
        /* Timeouts, refused or reset connections, TLS failures: retry.
         * reread_secrets stays as it was: no answer is no verdict on them. */
        o->result = LOKI_PUSH_RETRY;
        const char *why = c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc);
        size_t pos = 0;
        if (status > 0) {
            const int n = snprintf(o->detail, sizeof o->detail, "HTTP %ld, then ", status);
            pos = n > 0 && (size_t)n < sizeof o->detail ? (size_t)n : 0;
        }
        append_escaped(o->detail, sizeof o->detail, &pos, why, strlen(why));
        return;
    }
    o->result = classify(status);
    c->reread_secrets = o->result == LOKI_PUSH_AUTH;
    describe_answer(c, status, o->detail, sizeof o->detail);
}

/* ---------------------------------------------------------------------------
 * Back-off: a per-thread xorshift64* generator, seeded lazily from the
 * clock, the pid and the thread's own address; no lock, no global state.
 */

static __thread uint64_t rng_state;

static uint64_t rng_next(void)
{
    if (rng_state == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t z = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        z ^= (uint64_t)getpid() << 32;
        z ^= (uint64_t)(uintptr_t)&rng_state;
        /* splitmix64 finaliser, so that close seeds give unrelated states */
        z += 0x9E3779B97F4A7C15u;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
        z ^= z >> 31;
        rng_state = z ? z : 0x2545F4914F6CDD1Du;
    }
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Du;
}

int64_t loki_backoff_ms(int attempt, int64_t min_ms, int64_t max_ms, int64_t retry_after_ms)
{
    if (min_ms < 0) min_ms = 0;
    if (max_ms < min_ms) max_ms = min_ms;
    int64_t upper = min_ms;
    for (int i = 0; i < attempt && upper < max_ms; i++)
        upper = upper > max_ms / 2 ? max_ms : upper * 2;
    if (upper > max_ms) upper = max_ms;

    const uint64_t span = (uint64_t)(upper - min_ms) + 1;
    int64_t delay = min_ms + (int64_t)(rng_next() % span);
    if (retry_after_ms >= 0) {
        const int64_t floor_ms = retry_after_ms < max_ms ? retry_after_ms : max_ms;
        if (delay < floor_ms) delay = floor_ms;
    }
    return delay;
}

void loki_url_redacted(const char *url, char *out, size_t outlen)
{
    const char *scheme = strstr(url, "://");
    const char *host = scheme ? scheme + 3 : url;
    size_t authority = strcspn(host, "/?#");
    const char *at = NULL; /* the last '@' of the authority ends the userinfo (a password may hold one) */
    for (size_t i = 0; i < authority; i++)
        if (host[i] == '@') at = host + i;
    if (!at) {
        snprintf(out, outlen, "%s", url);
        return;
    }
    snprintf(out, outlen, "%.*s***%s", (int)(host - url), url, at);
}
