/*
 * archive — the objects of the archive output (output.archive): how their
 * keys are made, and the stores they go to (file:///dir, s3://bucket/prefix).
 * The output's lane that builds objects is output/archive_sink.c; the CLI
 * that reads and compacts them is archive/cli.c.
 *
 * Contract:
 *  - archive_key_render() fills output.archive.key_format's placeholders;
 *    values are made safe as key segments ('/' and control bytes become
 *    '_', an empty value "unknown", "." and ".." are refused as values),
 *    so a pod's name can never lead a key out of the prefix.
 *  - A store is used by one thread at a time. Every call fills an
 *    archive_outcome: OK, or what went wrong in words (`detail`, naming the
 *    key and the HTTP status or errno) and whether trying again can help.
 *  - put_file() stores the whole of `fd` (from offset 0) under `key`
 *    atomically: a reader sees the old state or the complete object, never
 *    a part. Without `replace` an existing key is never replaced
 *    (ARCHIVE_EXISTS): file:// links without overwriting; s3:// asks with
 *    a HEAD and sends "If-None-Match: *". s3:// sends Content-MD5 and the payload's SHA-256, so S3 refuses a
 *    body damaged in transit, and uploads in parts above
 *    multipart_threshold.
 *  - Credentials (s3://) come from the configured files or the standard
 *    AWS environment variables; archive_store_reload_credentials() reads
 *    the files again (after a 403: rotated Secret).
 */
#ifndef LOGLET_ARCHIVE_H
#define LOGLET_ARCHIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

#define ARCHIVE_KEY_MAX 1024

struct archive_key_fields {
    const char *namespace_, *pod, *container, *container_id, *pod_uid, *node;
    int64_t first_ts_ns; /* {date} {hour} {time}, UTC */
    uint64_t index;
};

/* Returns the key's length, or 0 when it would not fit in `cap` (with a
 * reason in `err`). */
size_t archive_key_render(const char *fmt, const struct archive_key_fields *f, char *dst, size_t cap, char *err,
                          size_t errlen);

enum archive_result {
    ARCHIVE_OK,
    ARCHIVE_RETRY,     /* 5xx, 429, 503 SlowDown, no answer, a local I/O error: try again later */
    ARCHIVE_AUTH,      /* 401/403: re-read the credentials, then try again */
    ARCHIVE_EXISTS,    /* the key is taken (put without replace); another key must be used */
    ARCHIVE_NOT_FOUND, /* get/delete of a key that is not there */
    ARCHIVE_REFUSED,   /* another 4xx: the request is wrong (bucket missing, key refused); retried too */
};

struct archive_outcome {
    enum archive_result result;
    long http_status; /* 0: no HTTP answer (file://, or none came) */
    int64_t retry_after_ms;
    char detail[512];
};

struct archive_store_options {
    const char *url;
    const char *endpoint, *region;
    enum config_archive_addressing addressing;
    const char *access_key_id_file, *secret_access_key_file, *session_token_file;
    const char *tls_ca_file;
    int64_t timeout_ms;
    int64_t multipart_threshold;
};

/* Fills options from the output.archive settings. */
void archive_store_options_from_config(struct archive_store_options *o, const struct config *cfg);

struct archive_store;

struct archive_store *archive_store_open(const struct archive_store_options *opt, char *err, size_t errlen);
void archive_store_close(struct archive_store *st);
const char *archive_store_describe(const struct archive_store *st); /* the URL, without secrets */

/* md5 and sha256 are the digests of the fd's `size` bytes. replace: the
 * key may exist and is replaced (indexes, compaction re-runs); without it
 * a taken key is ARCHIVE_EXISTS (on s3://, unless it holds these very
 * bytes: an earlier attempt whose answer was lost, then ARCHIVE_OK). */
void archive_store_put_file(struct archive_store *st, const char *key, int fd, uint64_t size,
                            const unsigned char md5[16], const unsigned char sha256[32], bool replace,
                            struct archive_outcome *o);
/* Calls `each` for every key below `prefix` (relative to the URL's prefix),
 * in no particular order; a non-zero return stops the listing. */
typedef int (*archive_list_fn)(void *ctx, const char *key, uint64_t size);
void archive_store_list(struct archive_store *st, const char *prefix, archive_list_fn each, void *ctx,
                        struct archive_outcome *o);
/* Writes the object's bytes to `fd`. */
void archive_store_get(struct archive_store *st, const char *key, int fd, struct archive_outcome *o);
void archive_store_delete(struct archive_store *st, const char *key, struct archive_outcome *o);
void archive_store_reload_credentials(struct archive_store *st);
/* A request in progress is given up (ARCHIVE_RETRY) once cancelled(ctx)
 * answers true: shutdown is not held up by a store that does not answer. */
void archive_store_set_cancel(struct archive_store *st, bool (*cancelled)(void *ctx), void *ctx);

/* Fills f's placeholders from a key made by `fmt` (its {date}, {hour} and
 * {time} as text into date/hour/time). Returns 0, or -1 when the key is not
 * of that layout. Values never contain '/'; {container_id} is hex (or
 * "unknown"), {index} digits, so "{container}-{container_id}" splits right
 * even when the container's name has a '-'. */
struct archive_key_parsed {
    char namespace_[256], pod[256], container[256], container_id[128], pod_uid[128], node[256];
    char date[16], hour[8], time[16];
    uint64_t index;
};
int archive_key_parse(const char *fmt, const char *key, struct archive_key_parsed *out);

/* Delay before retry `attempt` (0-based): min·2^attempt up to max, with
 * jitter, at least retry_after_ms. */
int64_t archive_backoff_ms(int attempt, int64_t min_ms, int64_t max_ms, int64_t retry_after_ms);

/* MD5 and SHA-256 of a whole file (from offset 0) and its size; -1 with
 * errno on a read error. */
int archive_digest_fd(int fd, uint64_t *size, unsigned char md5[16], unsigned char sha256[32]);
/* The same over `len` bytes from `offset` (UINT64_MAX: to the end); a file
 * shorter than the range is an error (EIO). *size: the bytes read. */
int archive_digest_range(int fd, uint64_t offset, uint64_t len, uint64_t *size, unsigned char md5[16],
                         unsigned char sha256[32]);

/* `loglet archive …`: returns the process exit status. */
int archive_cli_main(int argc, char **argv);

#endif
