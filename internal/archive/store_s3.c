/* s3://bucket/prefix — placeholder until the S3 store lands. */
#include <stdio.h>

#include "archive_internal.h"

int archive_s3_open(struct archive_store *st, const struct archive_store_options *opt, char *err, size_t errlen)
{
    (void)st;
    snprintf(err, errlen, "output.archive.url '%s': s3:// is not supported yet", opt->url);
    return -1;
}
