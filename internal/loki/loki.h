/*
 * loki — speaks Loki's push API: renders label sets, encodes batches as
 * logproto.PushRequest with protobuf-c, compresses them as one snappy block,
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
 *    across batches (no allocation per entry: arrays grow geometrically and
 *    are kept). Entries keep their order within a stream.
 *  - loki_client pushes one body per call, synchronously, on one keep-alive
 *    connection, and classifies the answer:
 *        2xx                                  → LOKI_PUSH_OK
 *        429, 5xx, timeouts, connection errors → LOKI_PUSH_RETRY (with the
 *                                               server's Retry-After, if any)
 *        other 4xx (and 3xx)                   → LOKI_PUSH_REJECTED
 *    with a one-line detail: status, and the first 256 bytes of Loki's answer
 *    (control characters escaped) or curl's error text. Retrying and back-off
 *    are the caller's (see loki_backoff_ms), so shutdown can interrupt them.
 *  - Secrets (password, bearer token) are read from their files at
 *    creation, never logged, and wiped from memory at destruction.
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
/* The protobuf bytes of the last loki_encode() (before snappy), for tests. */
const uint8_t *loki_encoder_last_protobuf(const struct loki_encoder *enc, size_t *len);

enum loki_push_result { LOKI_PUSH_OK, LOKI_PUSH_RETRY, LOKI_PUSH_REJECTED };

struct loki_client;
/* Reads the secret files and sets up curl. Returns NULL with `err` set
 * ("output.loki.bearer_token_file: cannot read /x: No such file…"). */
struct loki_client *loki_client_create(const struct config *cfg, char *err, size_t errlen);
void loki_client_destroy(struct loki_client *client);

struct loki_push_outcome {
    enum loki_push_result result;
    long http_status;     /* 0 when there was no HTTP answer */
    int64_t retry_after_ms; /* from Retry-After (seconds or HTTP date); -1 when absent */
    double seconds;       /* request duration */
    char detail[512];
};

void loki_push(struct loki_client *client, const uint8_t *body, size_t len, struct loki_push_outcome *outcome);

/* Exponential back-off with full jitter: a random value in
 * [min, min(max, min * 2^attempt)], attempt counting from 0; never less than
 * retry_after_ms when that is >= 0 (capped at max). */
int64_t loki_backoff_ms(int attempt, int64_t min_ms, int64_t max_ms, int64_t retry_after_ms);

#endif
