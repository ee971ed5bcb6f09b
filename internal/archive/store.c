/* The store chosen by the URL's scheme, and what both stores share. */
#include <errno.h>
#include <stdbool.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "archive_internal.h"

void archive_outcome_set(struct archive_outcome *o, enum archive_result r, long status, const char *fmt, ...)
{
    o->result = r;
    o->http_status = status;
    o->retry_after_ms = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->detail, sizeof o->detail, fmt, ap);
    va_end(ap);
}

void archive_store_options_from_config(struct archive_store_options *o, const struct config *cfg)
{
    *o = (struct archive_store_options){
        .url = cfg->output.archive.url,
        .endpoint = cfg->output.archive.endpoint,
        .region = cfg->output.archive.region,
        .addressing = cfg->output.archive.addressing,
        .access_key_id_file = cfg->output.archive.access_key_id_file,
        .secret_access_key_file = cfg->output.archive.secret_access_key_file,
        .session_token_file = cfg->output.archive.session_token_file,
        .tls_ca_file = cfg->output.archive.tls_ca_file,
        .timeout_ms = cfg->output.archive.timeout_ms,
        .multipart_threshold = cfg->output.archive.multipart_threshold,
    };
}

struct archive_store *archive_store_open(const struct archive_store_options *opt, char *err, size_t errlen)
{
    struct archive_store *st = calloc(1, sizeof *st);
    if (!st || !(st->url = strdup(opt->url))) {
        free(st);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int rc;
    if (strncmp(opt->url, "file:///", 8) == 0) {
        rc = archive_file_open(st, opt->url + 7, err, errlen);
    } else if (strncmp(opt->url, "s3://", 5) == 0) {
        rc = archive_s3_open(st, opt, err, errlen);
    } else {
        snprintf(err, errlen, "archive URL '%s' must be s3://bucket[/prefix] or file:///dir", opt->url);
        rc = -1;
    }
    if (rc != 0) {
        if (st->ops) st->ops->close(st);
        free(st->url);
        free(st);
        return NULL;
    }
    return st;
}

void archive_store_close(struct archive_store *st)
{
    if (!st) return;
    if (st->ops) st->ops->close(st);
    free(st->url);
    free(st);
}

const char *archive_store_describe(const struct archive_store *st) { return st->url; }

void archive_store_put_file(struct archive_store *st, const char *key, int fd, uint64_t size,
                            const unsigned char md5[16], const unsigned char sha256[32], bool replace,
                            struct archive_outcome *o)
{
    st->ops->put_file(st, key, fd, size, md5, sha256, replace, o);
}

void archive_store_list(struct archive_store *st, const char *prefix, archive_list_fn each, void *ctx,
                        struct archive_outcome *o)
{
    st->ops->list(st, prefix, each, ctx, o);
}

void archive_store_get(struct archive_store *st, const char *key, int fd, struct archive_outcome *o)
{
    st->ops->get(st, key, fd, o);
}

void archive_store_delete(struct archive_store *st, const char *key, struct archive_outcome *o)
{
    st->ops->del(st, key, o);
}

void archive_store_set_cancel(struct archive_store *st, bool (*cancelled)(void *ctx), void *ctx)
{
    st->cancelled = cancelled;
    st->cancel_ctx = ctx;
}

void archive_store_reload_credentials(struct archive_store *st)
{
    if (st->ops->reload) st->ops->reload(st);
}

int64_t archive_backoff_ms(int attempt, int64_t min_ms, int64_t max_ms, int64_t retry_after_ms)
{
    int64_t wait = min_ms;
    for (int i = 0; i < attempt && wait < max_ms; i++) wait *= 2;
    if (wait > max_ms) wait = max_ms;
    /* Jitter of up to a quarter, so agents of many nodes do not retry in step. */
    if (wait >= 4) wait = wait - wait / 4 + (int64_t)((uint64_t)random() % (uint64_t)(wait / 4 + 1));
    /* A server's Retry-After is honoured up to max_ms: a proxy asking for a
     * day must not stop the archive for a day. */
    if (wait < retry_after_ms) wait = retry_after_ms < max_ms ? retry_after_ms : max_ms;
    return wait;
}

int archive_digest_range(int fd, uint64_t offset, uint64_t len, uint64_t *size, unsigned char md5[16],
                         unsigned char sha256[32])
{
    EVP_MD_CTX *a = EVP_MD_CTX_new(), *b = EVP_MD_CTX_new();
    char *buf = malloc(64 * 1024);
    int rc = -1;
    bool to_end = len == UINT64_MAX;
    *size = 0;
    if (!a || !b || !buf || !EVP_DigestInit_ex(a, EVP_md5(), NULL) || !EVP_DigestInit_ex(b, EVP_sha256(), NULL)) {
        errno = ENOMEM;
        goto done;
    }
    while (len) {
        size_t want = len < 64 * 1024 ? (size_t)len : 64 * 1024;
        ssize_t n = pread(fd, buf, want, (off_t)(offset + *size));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) goto done;
        if (n == 0) {
            if (to_end) break;
            errno = EIO; /* shorter than the range asked for */
            goto done;
        }
        EVP_DigestUpdate(a, buf, (size_t)n);
        EVP_DigestUpdate(b, buf, (size_t)n);
        *size += (uint64_t)n;
        if (!to_end) len -= (uint64_t)n;
    }
    unsigned int l;
    EVP_DigestFinal_ex(a, md5, &l);
    EVP_DigestFinal_ex(b, sha256, &l);
    rc = 0;
done:
    EVP_MD_CTX_free(a);
    EVP_MD_CTX_free(b);
    free(buf);
    return rc;
}

int archive_digest_fd(int fd, uint64_t *size, unsigned char md5[16], unsigned char sha256[32])
{
    return archive_digest_range(fd, 0, UINT64_MAX, size, md5, sha256);
}
