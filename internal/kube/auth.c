/*
 * auth — where the API server is and which credentials to present, found
 * the way client-go looks for them: in cluster first (the service account
 * the kubelet mounts), else a kubeconfig's current context.
 *
 * In cluster, the token is a bound service-account token the kubelet
 * rewrites about hourly (through the ..data symlink swap): it is re-read
 * when stat() says the file changed, and unconditionally after a 401. A
 * token file that turned unreadable or empty keeps the last good token, said
 * once until it is good again.
 *
 * Kubeconfig: one file (kubernetes.kubeconfig, which must exist), or the
 * files $KUBECONFIG lists, merged as client-go merges them: empty entries
 * and missing files are skipped, a file that cannot be read or parsed is an
 * error, the first file that sets current-context names it, and the first
 * definition of a named context, cluster or user wins whole.
 * Then the current context's cluster (server, certificate-authority
 * or -data, insecure-skip-tls-verify) and user (client-certificate and
 * client-key or their -data, token or tokenFile). Relative paths are
 * relative to the kubeconfig's directory, as kubectl reads them. Users that
 * need a plugin (exec, auth-provider) are refused with that reason rather
 * than sent unauthenticated.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "kube.h"
#include "log/log.h"

#define TOKEN_MAX_BYTES KUBE_TOKEN_MAX_BYTES

static void wipe_free(char *s)
{
    if (!s) return;
    explicit_bzero(s, strlen(s));
    free(s);
}

void kube_auth_free(struct kube_auth *auth)
{
    free(auth->server);
    free(auth->origin);
    free(auth->ca_file);
    free(auth->cert_file);
    free(auth->key_file);
    free(auth->ca_data);
    free(auth->cert_data);
    if (auth->key_data) explicit_bzero(auth->key_data, auth->key_len);
    free(auth->key_data);
    free(auth->token_file);
    wipe_free(auth->token);
    pthread_mutex_destroy(&auth->token_lock);
    memset(auth, 0, sizeof *auth);
}

static void auth_init(struct kube_auth *auth)
{
    memset(auth, 0, sizeof *auth);
    pthread_mutex_init(&auth->token_lock, NULL);
}

/* The file's token, trailing whitespace removed; NULL with `err`. */
static char *read_token(const char *path, struct stat *st, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        kube_setf(err, errlen, "cannot read the token %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(TOKEN_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, TOKEN_MAX_BYTES + 1, f) : 0;
    bool failed = !buf || ferror(f);
    if (st && fstat(fileno(f), st) != 0) memset(st, 0, sizeof *st);
    fclose(f);
    if (failed || n > TOKEN_MAX_BYTES) {
        kube_setf(err, errlen, "cannot read the token %s: %s", path, !buf ? "out of memory" : failed ? "read error" : "larger than 64 KiB");
        if (buf) explicit_bzero(buf, n);
        free(buf);
        return NULL;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t')) n--;
    buf[n] = '\0';
    if (!n || memchr(buf, '\n', n) || strlen(buf) != n) {
        kube_setf(err, errlen, "the token %s is %s", path, n ? "not one line of text" : "empty");
        explicit_bzero(buf, n);
        free(buf);
        return NULL;
    }
    return buf;
}

static bool same_file_state(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

void kube_auth_refresh_token(struct kube_auth *auth, bool force)
{
    if (!auth->token_file) return;
    pthread_mutex_lock(&auth->token_lock);
    struct stat now;
    if (!force && stat(auth->token_file, &now) == 0 && same_file_state(&now, &auth->token_stat)) {
        pthread_mutex_unlock(&auth->token_lock);
        return;
    }
    char err[512];
    struct stat st;
    char *token = read_token(auth->token_file, &st, err, sizeof err);
    if (!token) {
        if (!auth->token_error_said) log_error("kubernetes: %s; keeping the last token", err);
        auth->token_error_said = true;
    } else {
        if (auth->token_error_said || (auth->token && strcmp(auth->token, token) != 0))
            log_info("kubernetes: read the new token of %s", auth->token_file);
        auth->token_error_said = false;
        wipe_free(auth->token);
        auth->token = token;
        auth->token_stat = st;
    }
    pthread_mutex_unlock(&auth->token_lock);
}

void kube_auth_header(struct kube_auth *auth, char *dst, size_t cap)
{
    pthread_mutex_lock(&auth->token_lock);
    if (auth->token) snprintf(dst, cap, "Authorization: Bearer %s", auth->token);
    else if (cap) dst[0] = '\0';
    pthread_mutex_unlock(&auth->token_lock);
}

int kube_auth_in_cluster(const char *sa_dir, struct kube_auth *auth, char *err, size_t errlen)
{
    const char *host = getenv("KUBERNETES_SERVICE_HOST");
    const char *port = getenv("KUBERNETES_SERVICE_PORT");
    if (!host || !*host || !port || !*port) return 1;
    auth_init(auth);
    bool v6 = strchr(host, ':') != NULL;
    char server[512], token[PATH_MAX], ca[PATH_MAX];
    snprintf(server, sizeof server, "https://%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "", port);
    snprintf(token, sizeof token, "%s/token", sa_dir);
    snprintf(ca, sizeof ca, "%s/ca.crt", sa_dir);
    char origin[PATH_MAX + 32];
    snprintf(origin, sizeof origin, "in-cluster (%s)", sa_dir);
    if (!(auth->server = strdup(server)) || !(auth->token_file = strdup(token)) || !(auth->ca_file = strdup(ca)) ||
        !(auth->origin = strdup(origin))) {
        kube_setf(err, errlen, "out of memory");
        kube_auth_free(auth);
        return -1;
    }
    if (access(ca, R_OK) != 0) {
        kube_setf(err, errlen, "in cluster (KUBERNETES_SERVICE_HOST is set) but the CA %s cannot be read: %s", ca,
             strerror(errno));
        kube_auth_free(auth);
        return -1;
    }
    char why[512];
    if (!(auth->token = read_token(token, &auth->token_stat, why, sizeof why))) {
        kube_setf(err, errlen, "in cluster (KUBERNETES_SERVICE_HOST is set) but %s", why);
        kube_auth_free(auth);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Kubeconfig                                                               */

/* One kubeconfig file, parsed. */
struct kc_file {
    char path[PATH_MAX];
    char dir[PATH_MAX]; /* relative paths in it are relative to this */
    yaml_document_t doc;
    bool loaded;
};

/* The files of $KUBECONFIG (or the one file named), in order: client-go
 * merges them so that the first file setting current-context wins, and the
 * first definition of a named context, cluster or user wins as a whole. */
struct kc {
    struct kc_file *files;
    size_t n;
    const char *origin; /* the path or list as given, for messages */
    bool is_list;
    char *err;
    size_t errlen;
};

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* The value of `key` in mapping `map` of file f, or NULL. */
static yaml_node_t *member(struct kc_file *f, const yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE) return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *k = scalar(yaml_document_get_node(&f->doc, p->key));
        if (k && strcmp(k, key) == 0) return yaml_document_get_node(&f->doc, p->value);
    }
    return NULL;
}

static yaml_node_t *root_of(struct kc_file *f) { return yaml_document_get_root_node(&f->doc); }

/* The first item, over the files in order, of list `section` whose `name` is
 * `name`, and its `inner` mapping (NULL when that item has none); *from is
 * the file that defines it. */
static yaml_node_t *named(struct kc *kc, const char *section, const char *name, const char *inner,
                          struct kc_file **from)
{
    for (size_t i = 0; i < kc->n; i++) {
        struct kc_file *f = &kc->files[i];
        yaml_node_t *list = member(f, root_of(f), section);
        if (!list || list->type != YAML_SEQUENCE_NODE) continue;
        for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top; it++) {
            yaml_node_t *item = yaml_document_get_node(&f->doc, *it);
            const char *n = scalar(member(f, item, "name"));
            if (!n || strcmp(n, name) != 0) continue;
            *from = f;
            yaml_node_t *in = member(f, item, inner);
            return in && in->type == YAML_MAPPING_NODE ? in : NULL;
        }
    }
    *from = NULL;
    return NULL;
}

/* An error about file f (NULL: about the merged whole). */
static int kc_fail(struct kc *kc, const struct kc_file *f, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int kc_fail(struct kc *kc, const struct kc_file *f, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (f && kc->n > 1) kube_setf(kc->err, kc->errlen, "kubeconfig %s (of %s): %s", f->path, kc->origin, msg);
    else kube_setf(kc->err, kc->errlen, "kubeconfig %s: %s", f ? f->path : kc->origin, msg);
    return -1;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Standard base64 (padding optional, whitespace ignored). Returns a
 * malloc'd buffer, or NULL when the text is not base64. */
static unsigned char *b64_decode(const char *text, size_t *out_len)
{
    size_t n = strlen(text);
    unsigned char *out = malloc(n / 4 * 3 + 4);
    if (!out) return NULL;
    uint32_t acc = 0;
    int bits = 0;
    size_t len = 0;
    bool padding = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            padding = true;
            continue;
        }
        int v = b64_value(c);
        if (v < 0 || padding) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[len++] = (unsigned char)(acc >> bits);
        }
    }
    *out_len = len;
    return out;
}

/* A path in kubeconfig file f, relative to its directory. */
static int resolve(struct kc *kc, const struct kc_file *f, const char *path, char *full, size_t cap)
{
    int n = path[0] == '/' ? snprintf(full, cap, "%s", path) : snprintf(full, cap, "%s/%s", f->dir, path);
    if (n < 0 || (size_t)n >= cap) return kc_fail(kc, f, "the path %.200s is too long", path);
    return 0;
}

/* A file given as `key` (relative to its kubeconfig) or inline as `key-data`. */
static int file_or_data(struct kc *kc, struct kc_file *f, const yaml_node_t *map, const char *key, const char *what,
                        char **file, unsigned char **data, size_t *len)
{
    char data_key[64];
    snprintf(data_key, sizeof data_key, "%s-data", key);
    const char *inline_b64 = scalar(member(f, map, data_key));
    const char *path = scalar(member(f, map, key));
    if (inline_b64 && *inline_b64) {
        if (!(*data = b64_decode(inline_b64, len)) || !*len) {
            free(*data);
            *data = NULL;
            return kc_fail(kc, f, "%s: %s is not base64", what, data_key);
        }
        return 0;
    }
    if (!path || !*path) return 0;
    char full[PATH_MAX];
    if (resolve(kc, f, path, full, sizeof full) != 0) return -1;
    if (access(full, R_OK) != 0)
        return kc_fail(kc, f, "%s: %s %s cannot be read: %s", what, key, full, strerror(errno));
    if (!(*file = strdup(full))) return kc_fail(kc, f, "out of memory");
    return 0;
}

static int read_kubeconfig(struct kc *kc, struct kube_auth *auth)
{
    const char *ctx_name = NULL;
    struct kc_file *ctx_file = NULL;
    for (size_t i = 0; i < kc->n && !ctx_name; i++) {
        const char *name = scalar(member(&kc->files[i], root_of(&kc->files[i]), "current-context"));
        if (name && *name) {
            ctx_name = name;
            ctx_file = &kc->files[i];
        }
    }
    if (!ctx_name) return kc_fail(kc, NULL, "no current-context");
    struct kc_file *from;
    yaml_node_t *ctx = named(kc, "contexts", ctx_name, "context", &from);
    if (!ctx) return kc_fail(kc, kc->n > 1 ? NULL : ctx_file, "current-context \"%s\" is not among its contexts", ctx_name);
    const char *cluster_name = scalar(member(from, ctx, "cluster"));
    const char *user_name = scalar(member(from, ctx, "user"));
    struct kc_file *cluster_file;
    yaml_node_t *cluster = cluster_name ? named(kc, "clusters", cluster_name, "cluster", &cluster_file) : NULL;
    if (!cluster)
        return kc_fail(kc, kc->n > 1 ? NULL : from, "context \"%s\": cluster \"%s\" not found", ctx_name,
                       cluster_name ? cluster_name : "");
    const char *server = scalar(member(cluster_file, cluster, "server"));
    if (!server || (strncmp(server, "https://", 8) != 0 && strncmp(server, "http://", 7) != 0))
        return kc_fail(kc, cluster_file, "cluster \"%s\": server must be an http:// or https:// URL", cluster_name);
    size_t slen = strlen(server);
    while (slen > 8 && server[slen - 1] == '/') slen--;
    if (!(auth->server = strndup(server, slen))) return kc_fail(kc, NULL, "out of memory");
    const char *insecure = scalar(member(cluster_file, cluster, "insecure-skip-tls-verify"));
    auth->insecure_skip_verify = insecure && strcmp(insecure, "true") == 0;
    if (file_or_data(kc, cluster_file, cluster, "certificate-authority", "cluster", &auth->ca_file, &auth->ca_data,
                     &auth->ca_len) != 0)
        return -1;

    struct kc_file *uf = NULL;
    yaml_node_t *user = user_name && *user_name ? named(kc, "users", user_name, "user", &uf) : NULL;
    if (user_name && *user_name && !user)
        return kc_fail(kc, kc->n > 1 ? NULL : from, "context \"%s\": user \"%s\" not found", ctx_name, user_name);
    if (user) {
        if (member(uf, user, "exec") || member(uf, user, "auth-provider"))
            return kc_fail(kc, uf, "user \"%s\" needs a credential plugin (exec or auth-provider), which loglet does "
                           "not run: use a token, tokenFile or a client certificate", user_name);
        if (file_or_data(kc, uf, user, "client-certificate", "user", &auth->cert_file, &auth->cert_data,
                         &auth->cert_len) != 0 ||
            file_or_data(kc, uf, user, "client-key", "user", &auth->key_file, &auth->key_data, &auth->key_len) != 0)
            return -1;
        if (!(auth->cert_file || auth->cert_data) != !(auth->key_file || auth->key_data))
            return kc_fail(kc, uf, "user \"%s\": client-certificate and client-key must be given together", user_name);
        const char *token = scalar(member(uf, user, "token"));
        const char *token_file = scalar(member(uf, user, "tokenFile"));
        if (token && *token) {
            if (!(auth->token = strdup(token))) return kc_fail(kc, NULL, "out of memory");
        } else if (token_file && *token_file) {
            char full[PATH_MAX];
            if (resolve(kc, uf, token_file, full, sizeof full) != 0) return -1;
            char why[512];
            if (!(auth->token_file = strdup(full))) return kc_fail(kc, NULL, "out of memory");
            if (!(auth->token = read_token(full, &auth->token_stat, why, sizeof why)))
                return kc_fail(kc, uf, "user \"%s\": %s", user_name, why);
        }
    }
    char origin[PATH_MAX + 300];
    snprintf(origin, sizeof origin, "kubeconfig %s, context %s", kc->n > 1 ? kc->origin : ctx_file->path, ctx_name);
    if (!(auth->origin = strdup(origin))) return kc_fail(kc, NULL, "out of memory");
    return 0;
}

/* Parses f->path into f->doc. Returns 0, 1 when the file does not exist
 * and `missing_ok`, or -1 with the error set. */
static int load_file(struct kc *kc, struct kc_file *f, bool missing_ok)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof copy, "%s", f->path);
    snprintf(f->dir, sizeof f->dir, "%s", dirname(copy));
    FILE *in = fopen(f->path, "rb");
    if (!in) {
        if (errno == ENOENT && missing_ok) return 1;
        return kc_fail(kc, f, "cannot open: %s", strerror(errno));
    }
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        fclose(in);
        return kc_fail(kc, f, "out of memory");
    }
    yaml_parser_set_input_file(&parser, in);
    int rc = 0;
    if (!yaml_parser_load(&parser, &f->doc)) {
        rc = kc_fail(kc, f, "YAML error at line %zu: %s", parser.problem_mark.line + 1,
                     parser.problem ? parser.problem : "invalid YAML");
    } else {
        f->loaded = true;
        yaml_node_t *root = root_of(f);
        /* An empty file adds nothing to a list (client-go reads it as an
         * empty config); anything else must be a mapping. */
        if (root ? root->type != YAML_MAPPING_NODE : !kc->is_list) rc = kc_fail(kc, f, "not a mapping");
    }
    yaml_parser_delete(&parser);
    fclose(in);
    return rc;
}

int kube_auth_kubeconfig(const char *paths, bool is_list, struct kube_auth *auth, char *err, size_t errlen)
{
    auth_init(auth);
    struct kc kc = {.origin = paths, .is_list = is_list, .err = err, .errlen = errlen};
    /* One file, or every entry of the list (empty ones skipped, as client-go does). */
    size_t entries = 1;
    for (const char *p = paths; is_list && *p; p++) entries += *p == ':';
    if (!(kc.files = calloc(entries, sizeof *kc.files))) {
        kube_setf(err, errlen, "out of memory reading kubeconfig %s", paths);
        kube_auth_free(auth);
        return -1;
    }
    int rc = 0;
    size_t missing = 0;
    for (const char *p = paths; rc == 0 && *p;) {
        size_t len = is_list ? strcspn(p, ":") : strlen(p);
        struct kc_file *f = &kc.files[kc.n];
        if (len && len < sizeof f->path) {
            memcpy(f->path, p, len);
            f->path[len] = '\0';
            kc.n++;
            rc = load_file(&kc, f, is_list);
            if (rc == 1) { /* missing from the list: skipped, as client-go does */
                kc.n--;
                missing++;
                rc = 0;
            }
        } else if (len) {
            rc = kc_fail(&kc, NULL, "a path in the list is longer than %d bytes", PATH_MAX - 1);
        }
        p += len;
        if (*p == ':') p++;
    }
    if (rc == 0 && kc.n == 0)
        rc = kc_fail(&kc, NULL, missing ? "none of its files exist" : "names no file");
    if (rc == 0) rc = read_kubeconfig(&kc, auth);
    for (size_t i = 0; i < entries; i++)
        if (kc.files[i].loaded) yaml_document_delete(&kc.files[i].doc);
    free(kc.files);
    if (rc != 0) kube_auth_free(auth);
    return rc;
}
