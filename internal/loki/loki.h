/*
 * loki — speaks Loki's push API: renders label sets, encodes batches as
 * logproto.PushRequest (written directly; protobuf-c only splits a body after a
 * 413), compresses them as one snappy block,
 * and POSTs them with libcurl.
 *
 * Contract:
 *  - Label sets are rendered as Loki (and Promtail) write them:
 *    `{name="value", name2="value2"}` — names sorted bytewise, ", " between
 *    pairs, values double-quoted with \\ \" and \n escaped. Names must be
 *    valid Prometheus label names ([a-zA-Z_][a-zA-Z0-9_]*); invalid
 *    characters are replaced by '_' (a name starting with a digit gets a '_'
 *    prefix), as Promtail's relabeling would.
 *  - loki_encoder turns a batch into the HTTP body; it reuses its buffers
 *    across batches (no allocation per entry; about 150 KiB whatever the
 *    batch size, as the protobuf bytes are compressed 64 KiB at a time).
 *    Entries keep their order within a stream. The protobuf bytes are
 *    exactly those protobuf-c packs for the same PushRequest.
 *  - loki_client pushes one body per call, synchronously, on one keep-alive
 *    connection, and classifies the answer:
 *        2xx                                  → LOKI_PUSH_OK
 *        408, 429, 5xx, timeouts,             → LOKI_PUSH_RETRY (with the
 *        connection errors                      server's Retry-After, if any)
 *        401, 403                             → LOKI_PUSH_AUTH: the credential
 *                                               files are re-read before the
 *                                               next push
 *        3xx, 404, 405, 407, any other 4xx    → LOKI_PUSH_MISCONFIGURED: the
 *        not named here                         request cannot succeed until
 *                                               the deployment is fixed (URL,
 *                                               proxy, method, headers)
 *        413                                  → LOKI_PUSH_TOO_LARGE: split the
 *                                               body (loki_split_body) and push
 *                                               the pieces
 *        400, 422                             → LOKI_PUSH_REJECTED: Loki judged
 *                                               the content (timestamp too old,
 *                                               line too long, bad labels) and
 *                                               has stored the valid entries
 *    with a one-line detail: status, and the first 256 bytes of Loki's answer
 *    (control characters escaped) or curl's error text. The caller retries
 *    RETRY, AUTH and MISCONFIGURED alike, never drops them (but for
 *    output.loki.max_retries): only REJECTED, and a TOO_LARGE single entry,
 *    mean the lines are given up. An unknown 4xx is retried rather than
 *    dropped because a wrong answer there costs lines, a wrong retry only
 *    delay. Retrying and back-off are the caller's (see loki_backoff_ms), so
 *    shutdown can interrupt them.
 *  - Secrets (password, bearer token) are read from their files at creation
 *    and again when they change: before each push the client stat()s them
 *    (following symlinks, so a Kubernetes ..data swap is seen) and re-reads
 *    one whose device, inode, size, mtime or ctime moved; after a 401 or 403
 *    it re-reads them unconditionally (an in-place rewrite within one clock
 *    tick leaves the stat unchanged). A file that became unreadable, empty or
 *    malformed keeps the last good credential, said once until it is good
 *    again. Secrets are never logged, and are wiped from memory when replaced
 *    and at destruction.
 *  - loki_split_body cuts a body in two pieces of about half its entries
 *    each, for a 413 (cold path: it allocates).
 */
#ifndef LOGLET_LOKI_H
#define LOGLET_LOKI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

struct loki_label {
    const char *name;
    const char *value;
};

/* Renders labels (any order in, sorted out) into dst. Returns the length
 * (excluding the NUL), or 0 when it does not fit in cap (a NUL is always
 * written when cap > 0). At most 64 labels (it sorts on the stack); more
 * also returns 0. */
size_t loki_render_labels(const struct loki_label *labels, size_t n, char *dst, size_t cap);

/* Label names as Loki receives them: the one sanitising rule every label
 * name goes through, stream labels (as loki_render_labels writes them) and
 * structured metadata alike. Every character outside [a-zA-Z0-9_] is one
 * '_' (a character is one valid UTF-8 sequence, or one byte of an invalid
 * one), a leading digit gets a '_' prefix, an empty or NULL name is "_".
 * loki_sanitise_label_name writes it into dst and returns its length, or 0
 * (and "" when cap > 0) when it does not fit in cap bytes with its NUL; it
 * is at most strlen(name) + 1 bytes long. */
size_t loki_sanitise_label_name(const char *name, char *dst, size_t cap);
/* Compares two names as Loki sees them (sanitised), like strcmp. */
int loki_label_name_cmp(const char *a, const char *b);
/* Whether the sanitised name starts with "__", which Loki (like Prometheus)
 * reserves for its own use: such a name must not be sent. */
bool loki_label_name_reserved(const char *name);
/* The structured metadata the agent sends itself, on every line, with
 * output.loki.structured_metadata (the aggregator): no provider or pipeline
 * pair may take these names then, or a pod could claim another's uid. */
#define LOKI_META_POD_UID "pod_uid"
#define LOKI_META_CONTAINER_ID "container_id"
/* Whether name, as Loki sees it, is one of those. */
bool loki_structured_name_agents(const char *name);

struct loki_entry {
    int64_t ts_ns;
    const char *line;
    size_t len;
    const struct loki_label *metadata; /* structured metadata, or NULL */
    size_t nmetadata;
};

struct loki_stream {
    const char *labels; /* rendered, NUL-terminated */
    const struct loki_entry *entries;
    size_t nentries;
};

struct loki_encoder;
struct loki_encoder *loki_encoder_create(void);
void loki_encoder_destroy(struct loki_encoder *enc);
/* Encodes the streams; on success *body and *body_len point into the encoder's
 * buffer (valid until the next call) and *raw_len is the protobuf size
 * before compression. Returns -1 on allocation failure. */
int loki_encode(struct loki_encoder *enc, const struct loki_stream *streams, size_t nstreams, const uint8_t **body,
                size_t *body_len, size_t *raw_len);
/* The same into the caller's buffer *buf of *cap bytes, replaced by a larger
 * one (malloc'd; its old contents lost) when the body may not fit, so the
 * compressed body is written once, where it is kept. On failure (-1) *buf
 * and *cap are valid but the contents are not a body. */
int loki_encode_into(struct loki_encoder *enc, const struct loki_stream *streams, size_t nstreams, uint8_t **buf,
                     size_t *cap, size_t *body_len, size_t *raw_len);
/* The protobuf bytes of the last encode (before snappy), for tests: they are
 * decompressed from the last body, which must still be where it was written.
 * NULL when out of memory. */
const uint8_t *loki_encoder_last_protobuf(struct loki_encoder *enc, size_t *len);

/* A body cut out of another by loki_split_body(): malloc'd, owned by whoever
 * holds it (loki_body_free). entries and line_bytes count what it holds. */
struct loki_body {
    uint8_t *data; /* snappy-compressed PushRequest */
    size_t len;
    size_t raw_len; /* protobuf bytes before compression */
    size_t entries;
    size_t line_bytes;
};

enum loki_split_result {
    LOKI_SPLIT_OK = 0,     /* *first and *second hold the two pieces */
    LOKI_SPLIT_SINGLE = 1, /* the body holds fewer than two entries: nothing to split */
    LOKI_SPLIT_NOMEM = -1, /* out of memory: nothing changed, try again later */
    LOKI_SPLIT_INVALID = -2, /* not a snappy-compressed PushRequest */
};

/* Cuts a push body in two. With N entries in all (streams in order, entries
 * in order within each), the first piece holds the first ceil(N/2) of them
 * and the second the rest, so pushing the first before the second keeps
 * every stream's order; a stream cut in the middle appears in both pieces
 * with the same labels; a stream without entries goes with the piece its
 * place falls in. Each piece is re-packed and snappy-compressed on its own.
 * On anything but LOKI_SPLIT_OK, *first and *second are zeroed. */
enum loki_split_result loki_split_body(const uint8_t *body, size_t len, struct loki_body *first,
                                       struct loki_body *second);
void loki_body_free(struct loki_body *body);

enum loki_push_result {
    LOKI_PUSH_OK,
    LOKI_PUSH_RETRY,
    LOKI_PUSH_AUTH,
    LOKI_PUSH_MISCONFIGURED,
    LOKI_PUSH_TOO_LARGE,
    LOKI_PUSH_REJECTED,
};

struct loki_client;
/* Reads the secret files and sets up curl. Returns NULL with `err` set
 * ("output.loki.bearer_token_file: cannot read /x: No such file…"). The
 * client keeps `cfg` (to rebuild its headers when a credential changes): it
 * must outlive the client. */
struct loki_client *loki_client_create(const struct config *cfg, char *err, size_t errlen);
void loki_client_destroy(struct loki_client *client);

struct loki_push_outcome {
    enum loki_push_result result;
    long http_status;     /* 0 when there was no HTTP answer */
    int64_t retry_after_ms; /* from Retry-After (seconds or HTTP date); -1 when absent */
    double seconds;       /* request duration */
    char detail[512];
};

/* Checks the credential files (see the contract), then POSTs the body. */
void loki_push(struct loki_client *client, const uint8_t *body, size_t len, struct loki_push_outcome *outcome);

/* Exponential back-off with full jitter: a random value in
 * [min, min(max, min * 2^attempt)], attempt counting from 0; never less than
 * retry_after_ms when that is >= 0 (capped at max). */
int64_t loki_backoff_ms(int attempt, int64_t min_ms, int64_t max_ms, int64_t retry_after_ms);

/* The URL with any user:password@ replaced by "***@", for logs and pages
 * (libcurl accepts credentials in the URL; they must not leak there). */
void loki_url_redacted(const char *url, char *out, size_t outlen);

#endif
