#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_LEVEL_INFO;
static enum log_format out_format = LOG_FORMAT_LOGFMT;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_setup(enum log_level level, enum log_format format)
{
    min_level = level;
    out_format = format;
}

int log_enabled(enum log_level level) { return level >= min_level; }

const char *log_level_name(enum log_level level) { return level_names[level]; }

int log_level_parse(const char *name, enum log_level *out)
{
    for (unsigned i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcmp(name, "warning") == 0) {
        *out = LOG_LEVEL_WARN;
        return 0;
    }
    return -1;
}

/* Quotes and escapes `msg` into dst; both logfmt and JSON accept this escaping
 * for the characters we emit (\" \\ \n \t and \u00XX for other controls). */
static size_t append_quoted(char *dst, size_t cap, const char *msg)
{
    size_t n = 0;
    if (n < cap) dst[n++] = '"';
    for (const unsigned char *p = (const unsigned char *)msg; *p && n + 8 < cap; p++) {
        switch (*p) {
        case '"': dst[n++] = '\\'; dst[n++] = '"'; break;
        case '\\': dst[n++] = '\\'; dst[n++] = '\\'; break;
        case '\n': dst[n++] = '\\'; dst[n++] = 'n'; break;
        case '\t': dst[n++] = '\\'; dst[n++] = 't'; break;
        case '\r': dst[n++] = '\\'; dst[n++] = 'r'; break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                n += (size_t)snprintf(dst + n, cap - n, "\\u%04x", *p);
            else
                dst[n++] = (char)*p;
        }
    }
    if (n < cap) dst[n++] = '"';
    return n;
}

void log_vwrite(enum log_level level, const char *fmt, va_list ap)
{
    if (level < min_level) return;
    int saved_errno = errno;
    char msg[LOG_LINE_MAX];
    int len = vsnprintf(msg, sizeof msg, fmt, ap);
    if (len >= (int)sizeof msg) memcpy(msg + sizeof msg - 4, "\xe2\x80\xa6", 4); /* "…" */

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char ts[96];
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, now.tv_nsec / 1000000);

    char line[LOG_LINE_MAX * 2 + 128];
    size_t n;
    if (out_format == LOG_FORMAT_JSON)
        n = (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", ts,
                             level_names[level]);
    else
        n = (size_t)snprintf(line, sizeof line, "ts=%s level=%s msg=", ts, level_names[level]);
    n += append_quoted(line + n, sizeof line - n - 2, msg);
    if (out_format == LOG_FORMAT_JSON) line[n++] = '}';
    line[n++] = '\n';
    /* One write per line keeps concurrent messages whole; a failed write to
     * stderr has nowhere better to be reported. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
    errno = saved_errno;
}

void log_write(enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(level, fmt, ap);
    va_end(ap);
}
