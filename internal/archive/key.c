/* Object keys from output.archive.key_format. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
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

static bool all_of(const char *v, size_t n, const char *set)
{
    for (size_t i = 0; i < n; i++)
        if (!strchr(set, v[i])) return false;
    return true;
}

/* Whether `v` (n bytes) can be the value of placeholder `name`. */
static bool value_fits(const char *name, size_t name_len, const char *v, size_t n)
{
#define IS(s) (name_len == sizeof(s) - 1 && strncmp(name, s, name_len) == 0)
    if (n == 0 || memchr(v, '/', n)) return false;
    if (IS("container_id")) return all_of(v, n, "0123456789abcdef") || (n == 7 && strncmp(v, "unknown", 7) == 0);
    if (IS("index")) return all_of(v, n, "0123456789");
    if (IS("date")) return n == 10 && all_of(v, n, "0123456789-") && v[4] == '-' && v[7] == '-';
    if (IS("hour")) return n == 2 && all_of(v, n, "0123456789");
    if (IS("time")) return n == 6 && all_of(v, n, "0123456789");
    return true;
#undef IS
}

static char *field_of(struct archive_key_parsed *out, const char *name, size_t len, size_t *cap)
{
    struct {
        const char *name;
        char *dst;
        size_t cap;
    } fields[] = {
        {"namespace", out->namespace_, sizeof out->namespace_},
        {"pod", out->pod, sizeof out->pod},
        {"container", out->container, sizeof out->container},
        {"container_id", out->container_id, sizeof out->container_id},
        {"pod_uid", out->pod_uid, sizeof out->pod_uid},
        {"node", out->node, sizeof out->node},
        {"date", out->date, sizeof out->date},
        {"hour", out->hour, sizeof out->hour},
        {"time", out->time, sizeof out->time},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (strlen(fields[i].name) == len && strncmp(fields[i].name, name, len) == 0) {
            *cap = fields[i].cap;
            return fields[i].dst;
        }
    return NULL;
}

/* Backtracking match: each placeholder takes the shortest value that lets
 * the rest of the key match (so "{pod}_{namespace}" splits at the first
 * '_', which neither may contain). */
static bool match_key(const char *fmt, const char *key, struct archive_key_parsed *out, int depth)
{
    if (depth > 32) return false;
    while (*fmt && *fmt != '{') {
        if (*fmt++ != *key++) return false;
    }
    if (!*fmt) return !*key;
    const char *end = strchr(fmt, '}');
    if (!end) return false;
    const char *name = fmt + 1;
    size_t name_len = (size_t)(end - name);
    for (size_t n = 1; key[n - 1] && key[n - 1] != '/'; n++) {
        if (!value_fits(name, name_len, key, n)) continue;
        if (!match_key(end + 1, key + n, out, depth + 1)) continue;
        size_t cap = 0;
        char *dst = field_of(out, name, name_len, &cap);
        if (dst) {
            if (n >= cap) return false;
            memcpy(dst, key, n);
            dst[n] = '\0';
        } else if (name_len == 5 && strncmp(name, "index", 5) == 0) {
            out->index = strtoull(key, NULL, 10);
        }
        return true;
    }
    return false;
}

int archive_key_parse(const char *fmt, const char *key, struct archive_key_parsed *out)
{
    memset(out, 0, sizeof *out);
    return match_key(fmt, key, out, 0) ? 0 : -1;
}
