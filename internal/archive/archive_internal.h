/*
 * The archive module's private parts: the store interface both targets
 * implement (store_file.c, store_s3.c), chosen once by the URL's scheme.
 */
#ifndef LOGLET_ARCHIVE_INTERNAL_H
#define LOGLET_ARCHIVE_INTERNAL_H

#include "archive.h"

struct archive_store_ops {
    void (*put_file)(struct archive_store *st, const char *key, int fd, uint64_t size, const unsigned char md5[16],
                     const unsigned char sha256[32], bool replace, struct archive_outcome *o);
    void (*list)(struct archive_store *st, const char *prefix, archive_list_fn each, void *ctx,
                 struct archive_outcome *o);
    void (*get)(struct archive_store *st, const char *key, int fd, struct archive_outcome *o);
    void (*del)(struct archive_store *st, const char *key, struct archive_outcome *o);
    void (*reload)(struct archive_store *st);
    void (*close)(struct archive_store *st);
};

struct archive_store {
    const struct archive_store_ops *ops;
    bool (*cancelled)(void *ctx);
    void *cancel_ctx;
    char *url; /* as configured; holds no secret */
    void *impl;
};

int archive_file_open(struct archive_store *st, const char *dir, char *err, size_t errlen);
int archive_s3_open(struct archive_store *st, const struct archive_store_options *opt, char *err, size_t errlen);

void archive_outcome_set(struct archive_outcome *o, enum archive_result r, long status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
