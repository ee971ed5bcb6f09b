/* Object keys from output.archive.key_format. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "archive.h"

/* Appends a placeholder's value as one safe key segment. */
static bool put_value(char *dst, size_t cap, size_t *o, const char *v)
{
    if (!v || !*v) v = "unknown";
    if (strcmp(v, ".") == 0 || strcmp(v, "..") == 0) v = "_";
    for (const char *p = v; *p; p++) {
        if (*o + 1 >= cap) return false;
        unsigned char ch = (unsigned char)*p;
        dst[(*o)++] = ch == '/' || ch < 0x20 || ch == 0x7f || ch == '\\' ? '_' : (char)ch;
    }
    return true;
}

size_t archive_key_render(const char *fmt, const struct archive_key_fields *f, char *dst, size_t cap, char *err,
                          size_t errlen)
{
    const time_t secs = (time_t)(f->first_ts_ns / 1000000000LL);
    struct tm tm;
    if (!gmtime_r(&secs, &tm)) memset(&tm, 0, sizeof tm);
    char date[48], hour[16], time_[48], index[24];
    snprintf(date, sizeof date, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    snprintf(hour, sizeof hour, "%02d", tm.tm_hour);
    snprintf(time_, sizeof time_, "%02d%02d%02d", tm.tm_hour, tm.tm_min, tm.tm_sec);
    snprintf(index, sizeof index, "%llu", (unsigned long long)f->index);
    const struct {
        const char *name;
        const char *value;
    } fields[] = {
        {"namespace", f->namespace_}, {"pod", f->pod},   {"container", f->container}, {"container_id", f->container_id},
        {"pod_uid", f->pod_uid},      {"node", f->node}, {"date", date},              {"hour", hour},
        {"time", time_},              {"index", index},
    };
    size_t o = 0;
    for (const char *p = fmt; *p;) {
        if (*p == '{') {
            const char *end = strchr(p, '}');
            size_t n = end ? (size_t)(end - p - 1) : 0;
            size_t i;
            for (i = 0; end && i < sizeof fields / sizeof fields[0]; i++)
                if (strlen(fields[i].name) == n && strncmp(p + 1, fields[i].name, n) == 0) break;
            if (end && i < sizeof fields / sizeof fields[0]) {
                if (!put_value(dst, cap, &o, fields[i].value)) goto too_long;
                p = end + 1;
                continue;
            }
        }
        if (o + 1 >= cap) goto too_long;
        dst[o++] = *p++;
    }
    dst[o] = '\0';
    return o;
too_long:
    snprintf(err, errlen, "the key made from '%s' is longer than %zu bytes", fmt, cap - 1);
    return 0;
}
