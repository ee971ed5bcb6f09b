/*
 * log — the agent's own diagnostics, written to stderr.
 *
 * Contract:
 *  - One line per message, logfmt by default (`ts=… level=… msg="…" k=v`) or
 *    one JSON object per line; chosen once at start with log_setup().
 *  - Thread-safe: each message is formatted into a stack buffer and written
 *    with a single write(2), so lines from different threads never interleave.
 *  - Never allocates; a message longer than LOG_LINE_MAX is cut and ends in "…".
 *  - Secrets must never be passed here; callers mask them (see config).
 *  - Messages below the configured level cost one comparison.
 */
#ifndef LOGLET_LOG_H
#define LOGLET_LOG_H

#include <stdarg.h>

#define LOG_LINE_MAX 4096

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };
enum log_format { LOG_FORMAT_LOGFMT, LOG_FORMAT_JSON };

void log_setup(enum log_level level, enum log_format format);
int log_enabled(enum log_level level);
int log_level_parse(const char *name, enum log_level *out);
const char *log_level_name(enum log_level level);

/* The message is free text (printf-style); it is quoted/escaped for the format. */
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vwrite(enum log_level level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

#define log_debug(...) do { if (log_enabled(LOG_LEVEL_DEBUG)) log_write(LOG_LEVEL_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...)  log_write(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
