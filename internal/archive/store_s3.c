/*
 * s3://bucket/prefix — any S3-compatible service, through libcurl.
 *
 * Signing is libcurl's own AWS SigV4 (CURLOPT_AWS_SIGV4, "aws:amz:REGION:s3"
 * with the keys as user and password); we only add what libcurl 7.88 does
 * not: x-amz-content-sha256 (S3 refuses SigV4 requests without it; we send
 * the body's real SHA-256, so the signature covers the content) and, for
 * uploads, Content-MD5 (S3 refuses a body that arrives damaged). Queries are
 * written already in SigV4's canonical form (parameters sorted, each with
 * '='), since libcurl 7.88 signs the query as it is given.
 *
 * What an answer means (archive.h): 2xx OK; 401/403 AUTH (the credential
 * files are re-read by the caller's retry); 404 on get/delete NOT_FOUND;
 * 408, 429, 5xx (503 SlowDown) and no answer RETRY, honouring Retry-After;
 * another 4xx REFUSED, with S3's <Code> and <Message> in the detail.
 *
 * Objects above multipart_threshold go up in parts of PART_BYTES (5 MiB) (each with
 * its own Content-MD5); a failed multipart upload is aborted so no parts
 * linger, and the whole object is tried again.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "archive_internal.h"
#include "log/log.h"

#define PART_BYTES (5ULL * 1024 * 1024) /* S3's least part size: a failed part costs little to send again */
#define MAX_RESPONSE_BYTES (16 * 1024 * 1024) /* a listing page of 1000 keys is far below */
#define MAX_LIST_PAGES 10000 /* 10 million keys: more than cat keeps in memory sensibly */
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

struct s3_store {
    struct archive_store *st; /* for its cancel callback */
    char *bucket, *prefix; /* prefix: "" or "a/b/" */
    char *base_url;        /* scheme://host[:port] of the requests, bucket included when virtual */
    bool path_style;
    char sigv4[160];
    const char *key_file, *secret_file, *token_file;
    char key_id[256], secret[256], token[4096];
    CURL *curl;
    char errbuf[CURL_ERROR_SIZE];
    int64_t timeout_ms, multipart_threshold;
    char *ca_file;
};

/* A response body kept for error details and listings (bounded). */
struct response {
    char *data;
    size_t len, cap, limit;
    bool cut; /* more came than limit: what is kept is not the whole answer */
};

static size_t keep_body(char *ptr, size_t size, size_t n, void *ctx)
{
    struct response *r = ctx;
    size_t len = size * n;
    if (r->len + len + 1 > r->limit) {
        len = r->len + 1 < r->limit ? r->limit - r->len - 1 : 0;
        r->cut = true;
    }
    if (r->len + len + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + len + 1) cap *= 2;
        char *more = realloc(r->data, cap);
        if (!more) return 0; /* curl reports a write error */
        r->data = more;
        r->cap = cap;
    }
    memcpy(r->data + r->len, ptr, len);
    r->len += len;
    r->data[r->len] = '\0';
    return size * n;
}

struct upload_src {
    int fd;
    uint64_t offset, left;
};

static size_t read_body(char *buf, size_t size, size_t n, void *ctx)
{
    struct upload_src *u = ctx;
    size_t want = size * n;
    if (want > u->left) want = (size_t)u->left;
    if (want == 0) return 0;
    ssize_t got;
    do got = pread(u->fd, buf, want, (off_t)u->offset);
    while (got < 0 && errno == EINTR);
    if (got <= 0) return CURL_READFUNC_ABORT;
    u->offset += (uint64_t)got;
    u->left -= (uint64_t)got;
    return (size_t)got;
}

struct download_dst {
    int fd;
    int error;
};

static size_t write_fd(char *ptr, size_t size, size_t n, void *ctx)
{
    struct download_dst *d = ctx;
    size_t len = size * n;
    for (size_t w = 0; w < len;) {
        ssize_t m = write(d->fd, ptr + w, len - w);
        if (m < 0 && errno == EINTR) continue;
        if (m <= 0) {
            d->error = m < 0 ? errno : EIO;
            return 0;
        }
        w += (size_t)m;
    }
    return len;
}

struct header_state {
    int64_t retry_after_ms;
    char etag[256];
};

/* Retry-After: delay-seconds or an HTTP-date; 0 when neither. Capped at a
 * day here (no overflow); the caller caps it at max_backoff. */
static int64_t retry_after_ms(const char *v, size_t len)
{
    char text[128];
    while (len && (*v == ' ' || *v == '\t')) v++, len--;
    while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' ')) len--;
    if (!len || len >= sizeof text) return 0;
    memcpy(text, v, len);
    text[len] = '\0';
    const int64_t day_s = 86400;
    int64_t secs;
    if (text[0] >= '0' && text[0] <= '9') {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(text, &end, 10);
        if (*end) return 0;
        secs = errno == ERANGE || n > (unsigned long long)day_s ? day_s : (int64_t)n;
    } else {
        time_t at = curl_getdate(text, NULL);
        if (at < 0) return 0;
        secs = (int64_t)at - (int64_t)time(NULL);
        if (secs < 0) secs = 0;
        if (secs > day_s) secs = day_s;
    }
    return secs * 1000;
}

static size_t read_header(char *buf, size_t size, size_t n, void *ctx)
{
    struct header_state *h = ctx;
    size_t len = size * n;
    if (len > 12 && strncasecmp(buf, "Retry-After:", 12) == 0) h->retry_after_ms = retry_after_ms(buf + 12, len - 12);
    if (len > 5 && strncasecmp(buf, "ETag:", 5) == 0) {
        const char *v = buf + 5;
        while (*v == ' ') v++;
        size_t l = len - (size_t)(v - buf);
        while (l && (v[l - 1] == '\r' || v[l - 1] == '\n' || v[l - 1] == ' ')) l--;
        if (l < sizeof h->etag) {
            memcpy(h->etag, v, l);
            h->etag[l] = '\0';
        }
    }
    return len;
}

static void hex(const unsigned char *d, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[2 * n] = '\0';
}

static void base64(const unsigned char *d, size_t n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, d, (int)n);
}

/* Percent-encodes all but SigV4's unreserved characters (and '/' when a path). */
static void uri_encode(const char *s, bool path, char *out, size_t cap)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *s && o + 4 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~' || (path && ch == '/')) {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = digits[ch >> 4];
            out[o++] = digits[ch & 15];
        }
    }
    out[o] = '\0';
}

/* Reads a one-line secret; keeps the old value when the file is unreadable
 * or empty (a Secret being swapped), says so. */
static void read_secret(const char *file, const char *env, char *dst, size_t cap, const char *what)
{
    if (file && *file) {
        FILE *f = fopen(file, "r");
        if (!f) {
            log_error("cannot read the archive's %s from %s: %s; keeping the last one", what, file, strerror(errno));
            return;
        }
        char buf[4096];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        while (n && isspace((unsigned char)buf[n - 1])) buf[--n] = '\0';
        if (!n) {
            log_error("the archive's %s file %s is empty; keeping the last one", what, file);
            return;
        }
        snprintf(dst, cap, "%s", buf);
        return;
    }
    const char *v = getenv(env);
    snprintf(dst, cap, "%s", v ? v : "");
}

static void s3_reload(struct archive_store *st)
{
    struct s3_store *s = st->impl;
    read_secret(s->key_file, "AWS_ACCESS_KEY_ID", s->key_id, sizeof s->key_id, "access key id");
    read_secret(s->secret_file, "AWS_SECRET_ACCESS_KEY", s->secret, sizeof s->secret, "secret access key");
    if (s->token_file && *s->token_file)
        read_secret(s->token_file, "AWS_SESSION_TOKEN", s->token, sizeof s->token, "session token");
    else
        read_secret(NULL, "AWS_SESSION_TOKEN", s->token, sizeof s->token, "session token");
}

/* Between <tag> and </tag> after `from`, copied to dst; NULL when absent. */
static const char *xml_value(const char *from, const char *tag, char *dst, size_t cap)
{
    char open[64], close_[64];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close_, sizeof close_, "</%s>", tag);
    const char *a = strstr(from, open);
    if (!a) return NULL;
    a += strlen(open);
    const char *b = strstr(a, close_);
    if (!b) return NULL;
    /* Entities S3 uses in keys and messages. */
    size_t o = 0;
    for (const char *p = a; p < b && o + 1 < cap; p++) {
        static const struct {
            const char *ent;
            char ch;
        } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
        bool done = false;
        for (size_t i = 0; i < sizeof ents / sizeof ents[0] && *p == '&'; i++) {
            size_t l = strlen(ents[i].ent);
            if ((size_t)(b - p) >= l && strncmp(p, ents[i].ent, l) == 0) {
                dst[o++] = ents[i].ch;
                p += l - 1;
                done = true;
                break;
            }
        }
        if (!done) dst[o++] = *p;
    }
    dst[o] = '\0';
    return b + strlen(close_);
}

static int progress(void *ctx, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    const struct archive_store *st = ctx;
    return st->cancelled && st->cancelled(st->cancel_ctx) ? 1 : 0;
}

enum verb { VERB_GET, VERB_HEAD, VERB_PUT, VERB_POST, VERB_DELETE };

struct request {
    enum verb verb;
    const char *key;   /* below the prefix; NULL: the bucket itself */
    const char *query; /* canonical: sorted, each with '=' */
    struct upload_src *body;
    const char *sha256_hex;
    const char *md5_b64;
    const char *post_data; /* VERB_POST */
    bool if_none_match;    /* "If-None-Match: *": S3 answers 412 rather than replace the key */
    struct download_dst *download;
    struct response *response;
    struct header_state headers;
};

/* One request; fills the outcome from the answer. */
static void perform(struct s3_store *s, struct request *rq, struct archive_outcome *o)
{
    CURL *c = s->curl;
    curl_easy_reset(c);
    char path[3 * ARCHIVE_KEY_MAX + 64], url[4 * ARCHIVE_KEY_MAX + 512], full[ARCHIVE_KEY_MAX + 512];
    /* No key: the bucket itself (a listing), whose prefix is in the query. */
    snprintf(full, sizeof full, "%s%s", rq->key ? s->prefix : "", rq->key ? rq->key : "");
    uri_encode(full, true, path, sizeof path);
    if (s->path_style && !rq->key) /* the bucket: no trailing '/', which S3 would sign as part of the path */
        snprintf(url, sizeof url, "%s/%s%s%s", s->base_url, s->bucket, rq->query ? "?" : "",
                 rq->query ? rq->query : "");
    else if (s->path_style)
        snprintf(url, sizeof url, "%s/%s/%s%s%s", s->base_url, s->bucket, path, rq->query ? "?" : "",
                 rq->query ? rq->query : "");
    else
        snprintf(url, sizeof url, "%s/%s%s%s", s->base_url, path, rq->query ? "?" : "", rq->query ? rq->query : "");
    struct response err_body = {.limit = 8192};
    struct response *resp = rq->response ? rq->response : &err_body;
    char sha_header[128], md5_header[96], token_header[4200];
    static const char none_match_header[] = "If-None-Match: *";
    snprintf(sha_header, sizeof sha_header, "x-amz-content-sha256: %s", rq->sha256_hex ? rq->sha256_hex : EMPTY_SHA256);
    struct curl_slist *hdrs = curl_slist_append(NULL, sha_header);
    struct curl_slist *more = hdrs;
    if (rq->md5_b64 && more) {
        snprintf(md5_header, sizeof md5_header, "Content-MD5: %s", rq->md5_b64);
        more = curl_slist_append(hdrs, md5_header);
    }
    if (rq->if_none_match && more) more = curl_slist_append(hdrs, none_match_header);
    if (s->token[0] && more) {
        snprintf(token_header, sizeof token_header, "x-amz-security-token: %s", s->token);
        more = curl_slist_append(hdrs, token_header);
    }
    /* No "Expect:" to suppress 100-continue: libcurl 7.88 would sign the
     * empty header, and S3 would then miss it in the request. */
    if (!hdrs || !more) {
        curl_slist_free_all(hdrs);
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "out of memory building a request for %s", full);
        return;
    }
    s->errbuf[0] = '\0';
    rq->headers = (struct header_state){0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_AWS_SIGV4, s->sigv4);
    /* Apart, so a ':' in a key cannot move the split between them. */
    curl_easy_setopt(c, CURLOPT_USERNAME, s->key_id);
    curl_easy_setopt(c, CURLOPT_PASSWORD, s->secret);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, s->errbuf);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)s->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, read_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &rq->headers);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, s->st);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    if (s->ca_file) curl_easy_setopt(c, CURLOPT_CAINFO, s->ca_file);
    switch (rq->verb) {
    case VERB_GET: break;
    case VERB_HEAD: curl_easy_setopt(c, CURLOPT_NOBODY, 1L); break;
    case VERB_PUT:
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, read_body);
        curl_easy_setopt(c, CURLOPT_READDATA, rq->body);
        curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)rq->body->left);
        break;
    case VERB_POST:
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, rq->post_data ? rq->post_data : "");
        break;
    case VERB_DELETE: curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE"); break;
    }
    if (rq->download) {
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_fd);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, rq->download);
    } else {
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
    }
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    static const char *const verbs[] = {"GET", "HEAD", "PUT", "POST", "DELETE"};
    const char *what = verbs[rq->verb];
    if (rc != CURLE_OK && !(status >= 300 && rq->download)) {
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "%s s3://%s/%s: %s", what, s->bucket, full,
                            s->errbuf[0] ? s->errbuf : curl_easy_strerror(rc));
        free(err_body.data);
        return;
    }
    char code[128] = "", message[512] = "";
    if (status >= 300 && resp->data) {
        xml_value(resp->data, "Code", code, sizeof code);
        xml_value(resp->data, "Message", message, sizeof message);
    }
    enum archive_result r;
    if (status >= 200 && status < 300) r = ARCHIVE_OK;
    else if (status == 412 && rq->if_none_match) r = ARCHIVE_EXISTS;
    else if (status == 401 || status == 403) r = ARCHIVE_AUTH;
    else if (status == 404 && rq->key && strcmp(code, "NoSuchBucket") != 0 && rq->verb != VERB_PUT) r = ARCHIVE_NOT_FOUND;
    else if (status == 408 || status == 429 || status >= 500) r = ARCHIVE_RETRY;
    else r = ARCHIVE_REFUSED;
    archive_outcome_set(o, r, status, "%s s3://%s/%s: HTTP %ld%s%s%s%s", what, s->bucket, full, status,
                        code[0] ? " " : "", code, message[0] ? ": " : "", message);
    o->retry_after_ms = rq->headers.retry_after_ms;
    free(err_body.data);
}

static void put_range(struct s3_store *s, const char *key, const char *query, int fd, uint64_t offset, uint64_t len,
                      const unsigned char md5[16], const unsigned char sha[32], bool if_none_match,
                      struct archive_outcome *o, char *etag, size_t etag_cap)
{
    char sha_hex[65], md5_b64[32];
    hex(sha, 32, sha_hex);
    base64(md5, 16, md5_b64);
    struct upload_src body = {fd, offset, len};
    struct request rq = {.verb = VERB_PUT, .key = key, .query = query, .body = &body, .sha256_hex = sha_hex,
                         .md5_b64 = md5_b64, .if_none_match = if_none_match};
    perform(s, &rq, o);
    if (etag) snprintf(etag, etag_cap, "%s", rq.headers.etag);
}

static void sha256_hex_of(const char *data, size_t len, char out[65])
{
    unsigned char d[32];
    unsigned int l;
    EVP_Digest(data, len, d, &l, EVP_sha256(), NULL);
    hex(d, 32, out);
}

static void multipart_put(struct s3_store *s, const char *key, int fd, uint64_t size, bool if_none_match,
                          struct archive_outcome *o)
{
    struct response resp = {.limit = 65536};
    struct request create = {.verb = VERB_POST, .key = key, .query = "uploads=", .response = &resp};
    perform(s, &create, o);
    char upload_id[1024];
    if (o->result != ARCHIVE_OK || !resp.data || !xml_value(resp.data, "UploadId", upload_id, sizeof upload_id)) {
        if (o->result == ARCHIVE_OK)
            archive_outcome_set(o, ARCHIVE_RETRY, o->http_status, "POST s3://%s/%s%s?uploads: no UploadId in the answer",
                                s->bucket, s->prefix, key);
        free(resp.data);
        return;
    }
    free(resp.data);
    char enc_id[3 * sizeof upload_id];
    uri_encode(upload_id, false, enc_id, sizeof enc_id);
    const size_t parts = (size_t)((size + PART_BYTES - 1) / PART_BYTES);
    size_t cap = parts * 400 + 128;
    char *complete = malloc(cap);
    if (!complete) {
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "out of memory for a %zu-part upload of %s", parts, key);
        goto abort;
    }
    size_t len = (size_t)snprintf(complete, cap, "<CompleteMultipartUpload>");
    for (size_t i = 0; i < parts; i++) {
        uint64_t off = (uint64_t)i * PART_BYTES, n = size - off < PART_BYTES ? size - off : PART_BYTES;
        unsigned char md5[16], sha[32];
        uint64_t digested;
        if (archive_digest_range(fd, off, n, &digested, md5, sha) != 0) {
            archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot read part %zu of %s: %s", i + 1, key, strerror(errno));
            goto abort;
        }
        char query[sizeof enc_id + 64], etag[256];
        snprintf(query, sizeof query, "partNumber=%zu&uploadId=%s", i + 1, enc_id);
        put_range(s, key, query, fd, off, n, md5, sha, false, o, etag, sizeof etag);
        if (o->result != ARCHIVE_OK) goto abort;
        len += (size_t)snprintf(complete + len, cap - len, "<Part><PartNumber>%zu</PartNumber><ETag>%s</ETag></Part>",
                                i + 1, etag);
    }
    len += (size_t)snprintf(complete + len, cap - len, "</CompleteMultipartUpload>");
    char sha_hex[65], query[sizeof enc_id + 32];
    sha256_hex_of(complete, len, sha_hex);
    snprintf(query, sizeof query, "uploadId=%s", enc_id);
    struct response done_resp = {.limit = 65536};
    struct request finish = {.verb = VERB_POST, .key = key, .query = query, .post_data = complete,
                             .sha256_hex = sha_hex, .response = &done_resp, .if_none_match = if_none_match};
    perform(s, &finish, o);
    /* S3 may answer 200 with an <Error> in the body. */
    if (o->result == ARCHIVE_OK && done_resp.data && strstr(done_resp.data, "<Error>"))
        archive_outcome_set(o, ARCHIVE_RETRY, 200, "completing the upload of s3://%s/%s%s failed: %.300s", s->bucket,
                            s->prefix, key, done_resp.data);
    free(done_resp.data);
    free(complete);
    if (o->result == ARCHIVE_OK) return;
    complete = NULL;
abort:
    free(complete);
    {
        struct archive_outcome ignored;
        char abort_query[sizeof enc_id + 32];
        snprintf(abort_query, sizeof abort_query, "uploadId=%s", enc_id);
        struct request ab = {.verb = VERB_DELETE, .key = key, .query = abort_query};
        perform(s, &ab, &ignored);
    }
}

static void s3_put(struct archive_store *st, const char *key, int fd, uint64_t size, const unsigned char md5[16],
                   const unsigned char sha256[32], bool replace, struct archive_outcome *o)
{
    struct s3_store *s = st->impl;
    if (!replace) {
        /* S3 replaces a key without a word. The agent's keys do not repeat
         * while its index counter lives, but a lost spool directory restarts
         * it: the key must be free. "If-None-Match: *" makes S3 refuse to
         * replace it (412) atomically; services that ignore the header
         * (s3rver, older MinIO and Ceph) are asked first with a HEAD. A key
         * that holds these very bytes (an earlier attempt whose answer was
         * lost) is ours: stored. */
        struct request head = {.verb = VERB_HEAD, .key = key};
        perform(s, &head, o);
        if (o->result == ARCHIVE_OK) {
            char ours[40];
            hex(md5, 16, ours + 1);
            ours[0] = '"';
            ours[33] = '"';
            ours[34] = '\0';
            if (strcmp(head.headers.etag, ours) == 0) return;
            archive_outcome_set(o, ARCHIVE_EXISTS, o->http_status, "s3://%s/%s%s exists (ETag %s), not replaced",
                                s->bucket, s->prefix, key, head.headers.etag[0] ? head.headers.etag : "none");
            return;
        }
        /* No answer (a timeout, a refused connection): said as it is.
         * Another answer (no HEAD: 501, 405; a 403, a 503) goes on to the
         * PUT: If-None-Match still guards the key, and a failure's answer
         * then has a body, with S3's code and message for the log. */
        if (o->http_status == 0 && o->result != ARCHIVE_NOT_FOUND) return;
    }
    if (size > (uint64_t)s->multipart_threshold) {
        multipart_put(s, key, fd, size, !replace, o);
        return;
    }
    put_range(s, key, NULL, fd, 0, size, md5, sha256, !replace, o, NULL, 0);
}

static void s3_list(struct archive_store *st, const char *prefix, archive_list_fn each, void *ctx,
                    struct archive_outcome *o)
{
    struct s3_store *s = st->impl;
    char full[ARCHIVE_KEY_MAX + 512], enc_prefix[3 * sizeof full], token[2048] = "", enc_token[3 * sizeof token];
    snprintf(full, sizeof full, "%s%s", s->prefix, prefix);
    uri_encode(full, false, enc_prefix, sizeof enc_prefix);
    const size_t strip = strlen(s->prefix);
    size_t pages = 1;
    for (;;) {
        char query[sizeof enc_prefix + sizeof enc_token + 64];
        if (token[0]) {
            uri_encode(token, false, enc_token, sizeof enc_token);
            snprintf(query, sizeof query, "continuation-token=%s&list-type=2&prefix=%s", enc_token, enc_prefix);
        } else {
            snprintf(query, sizeof query, "list-type=2&prefix=%s", enc_prefix);
        }
        struct response resp = {.limit = MAX_RESPONSE_BYTES};
        struct request rq = {.verb = VERB_GET, .key = NULL, .query = query, .response = &resp};
        perform(s, &rq, o);
        if (o->result != ARCHIVE_OK) {
            free(resp.data);
            return;
        }
        if (resp.cut) {
            archive_outcome_set(o, ARCHIVE_REFUSED, o->http_status,
                                "listing s3://%s/%s: a page of more than %d bytes, cut; refusing a partial listing",
                                s->bucket, full, MAX_RESPONSE_BYTES);
            free(resp.data);
            return;
        }
        const char *p = resp.data ? resp.data : "";
        char key[ARCHIVE_KEY_MAX + 512], size[32];
        int stop = 0;
        for (const char *c; !stop && (c = strstr(p, "<Contents>"));) {
            const char *end = strstr(c, "</Contents>");
            if (!end) break;
            key[0] = size[0] = '\0';
            xml_value(c, "Key", key, sizeof key);
            xml_value(c, "Size", size, sizeof size);
            if (strlen(key) >= strip) stop = each(ctx, key + strip, strtoull(size, NULL, 10));
            p = end;
        }
        bool truncated = strstr(resp.data ? resp.data : "", "<IsTruncated>true</IsTruncated>") != NULL;
        char next[sizeof token] = "";
        if (truncated && resp.data) xml_value(resp.data, "NextContinuationToken", next, sizeof next);
        free(resp.data);
        if (stop || !truncated) break;
        /* A server that says "more" with no way on, the same token again, or
         * pages without end would make the listing loop and grow forever. */
        if (!next[0] || strcmp(next, token) == 0 || ++pages >= MAX_LIST_PAGES) {
            archive_outcome_set(o, ARCHIVE_REFUSED, 200,
                                "listing s3://%s/%s: %s after %zu pages; refusing a listing that does not end",
                                s->bucket, full,
                                !next[0] ? "truncated without a continuation token"
                                : pages >= MAX_LIST_PAGES ? "too many pages" : "the same continuation token again",
                                pages);
            return;
        }
        snprintf(token, sizeof token, "%s", next);
    }
    archive_outcome_set(o, ARCHIVE_OK, 200, "listed s3://%s/%s", s->bucket, full);
}

static void s3_get(struct archive_store *st, const char *key, int fd, struct archive_outcome *o)
{
    struct s3_store *s = st->impl;
    struct download_dst d = {fd, 0};
    struct response resp = {.limit = 8192};
    struct request rq = {.verb = VERB_GET, .key = key, .download = &d, .response = &resp};
    perform(s, &rq, o);
    if (d.error) archive_outcome_set(o, ARCHIVE_RETRY, o->http_status, "writing s3://%s/%s%s: %s", s->bucket, s->prefix,
                                     key, strerror(d.error));
    free(resp.data);
}

static void s3_del(struct archive_store *st, const char *key, struct archive_outcome *o)
{
    struct s3_store *s = st->impl;
    struct request rq = {.verb = VERB_DELETE, .key = key};
    perform(s, &rq, o);
}

static void s3_close(struct archive_store *st)
{
    struct s3_store *s = st->impl;
    if (!s) return;
    if (s->curl) curl_easy_cleanup(s->curl);
    free(s->bucket);
    free(s->prefix);
    free(s->base_url);
    free(s->ca_file);
    explicit_bzero(s->secret, sizeof s->secret);
    free(s);
}

static const struct archive_store_ops s3_ops = {
    .put_file = s3_put, .list = s3_list, .get = s3_get, .del = s3_del, .reload = s3_reload, .close = s3_close,
};

/* curl_global_init() once per process, before the first handle (libcurl
 * keeps a count, so the Loki client's own call does no harm). */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;
static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

int archive_s3_open(struct archive_store *st, const struct archive_store_options *opt, char *err, size_t errlen)
{
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK) {
        snprintf(err, errlen, "output.archive: curl_global_init failed: %s", curl_easy_strerror(curl_init_rc));
        return -1;
    }
    struct s3_store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    st->impl = s;
    st->ops = &s3_ops;
    s->st = st;
    const char *rest = opt->url + 5;
    const char *slash = strchr(rest, '/');
    s->bucket = slash ? strndup(rest, (size_t)(slash - rest)) : strdup(rest);
    const char *prefix = slash ? slash + 1 : "";
    size_t plen = strlen(prefix);
    while (plen && prefix[plen - 1] == '/') plen--;
    s->prefix = malloc(plen + 2);
    if (!s->bucket || !s->prefix) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(s->prefix, prefix, plen);
    if (plen) s->prefix[plen++] = '/';
    s->prefix[plen] = '\0';
    const char *region = opt->region && *opt->region ? opt->region : "us-east-1";
    char endpoint[1024];
    if (opt->endpoint && *opt->endpoint) snprintf(endpoint, sizeof endpoint, "%s", opt->endpoint);
    else snprintf(endpoint, sizeof endpoint, "https://s3.%s.amazonaws.com", region);
    size_t elen = strlen(endpoint);
    while (elen && endpoint[elen - 1] == '/') endpoint[--elen] = '\0';
    const char *scheme_end = strstr(endpoint, "://");
    if (!scheme_end || (strncmp(endpoint, "http://", 7) != 0 && strncmp(endpoint, "https://", 8) != 0)) {
        snprintf(err, errlen, "output.archive.endpoint '%s' must start with http:// or https://", endpoint);
        return -1;
    }
    s->path_style = opt->addressing == CONFIG_ADDRESSING_PATH ||
                    (opt->addressing == CONFIG_ADDRESSING_AUTO && opt->endpoint && *opt->endpoint);
    char base[2048];
    if (s->path_style)
        snprintf(base, sizeof base, "%s", endpoint);
    else
        snprintf(base, sizeof base, "%.*s%s.%s", (int)(scheme_end + 3 - endpoint), endpoint, s->bucket,
                 scheme_end + 3);
    s->base_url = strdup(base);
    s->ca_file = opt->tls_ca_file && *opt->tls_ca_file ? strdup(opt->tls_ca_file) : NULL;
    snprintf(s->sigv4, sizeof s->sigv4, "aws:amz:%s:s3", region);
    s->key_file = opt->access_key_id_file;
    s->secret_file = opt->secret_access_key_file;
    s->token_file = opt->session_token_file;
    s->timeout_ms = opt->timeout_ms > 0 ? opt->timeout_ms : 60000;
    s->multipart_threshold = opt->multipart_threshold > 0 ? opt->multipart_threshold : (int64_t)64 << 20;
    s->curl = curl_easy_init();
    if (!s->base_url || !s->curl) {
        snprintf(err, errlen, "cannot set up libcurl for %s", opt->url);
        return -1;
    }
    s3_reload(st);
    if (!s->key_id[0] || !s->secret[0]) {
        snprintf(err, errlen,
                 "output.archive.url %s: no credentials: set output.archive.access_key_id_file and "
                 "secret_access_key_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                 opt->url);
        return -1;
    }
    return 0;
}
