/*
 * parser — pure functions that turn the kubelet's bytes into fields.
 *
 * Contract:
 *  - No allocation, no syscalls, no global state: safe from any thread, and
 *    each call is O(length of its input).
 *  - Inputs are not NUL-terminated; outputs that point into the input stay
 *    valid as long as the input does.
 *  - Malformed input is reported through a return value, never by crashing
 *    or reading past `len`; the caller decides to ship the line as-is.
 *
 * Formats:
 *  - CRI (containerd, CRI-O): `<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <content>`
 *    one physical line per '\n'; P marks a piece of a longer logical line.
 *  - docker json-file: `{"log":"…","stream":"stdout","time":"<RFC3339Nano>"}`;
 *    a "log" value without a trailing "\n" is a piece of a longer line.
 *  - Paths: `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` and
 *    `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log[.<rotation>]`.
 */
#ifndef LOGLET_PARSER_H
#define LOGLET_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum parser_stream { PARSER_STREAM_STDOUT = 0, PARSER_STREAM_STDERR = 1, PARSER_STREAM_UNKNOWN = 2 };

struct parser_line {
    int64_t ts_ns;       /* nanoseconds since the epoch, UTC */
    const char *content; /* CRI: into the input; docker: into the caller's dst */
    size_t content_len;
    enum parser_stream stream;
    bool partial; /* more pieces of this logical line follow */
};

/* Parses one CRI line (no trailing '\n'). Returns 0, or -1 when it is not a
 * CRI line (then `out` is unspecified). */
int parser_cri_line(const char *line, size_t len, struct parser_line *out);

/* Parses one docker json-file line (no trailing '\n'). The "log" value is
 * unescaped into dst (at most dst_cap bytes; longer content is cut and
 * *truncated set). A trailing "\n" in "log" is removed; its absence sets
 * `partial`. Returns 0, or -1 when the line is not such an object. Unknown
 * keys are ignored; \uXXXX escapes (with surrogate pairs) become UTF-8. */
int parser_docker_line(const char *line, size_t len, char *dst, size_t dst_cap,
                       struct parser_line *out, bool *truncated);

/* RFC 3339 with optional fraction (up to 9 digits) and 'Z' or ±hh:mm offset.
 * Returns 0 and nanoseconds since the epoch (UTC), or -1. */
int parser_rfc3339(const char *text, size_t len, int64_t *ts_ns);

/* Writes `YYYY-MM-DDThh:mm:ss.nnnnnnnnnZ` (30 bytes) plus a NUL; returns 30. */
size_t parser_format_rfc3339(int64_t ts_ns, char out[31]);

/* Copies src to dst replacing every invalid UTF-8 sequence (including
 * overlongs, surrogates, and > U+10FFFF) by U+FFFD, maximal-subpart style.
 * dst must hold 3 * len bytes in the worst case. Returns bytes written and
 * adds the number of replacements to *replaced. */
size_t parser_utf8_sanitize(const char *src, size_t len, char *dst, size_t *replaced);
/* Returns the length of the longest valid UTF-8 prefix of src (fast path:
 * equal to len for valid input). */
size_t parser_utf8_valid_prefix(const char *src, size_t len);
/* Where to cut a line's piece that has `room` bytes left, in `len` > room
 * bytes of content: on a UTF-8 boundary, so that neither side needs repair
 * and the pieces concatenated are the line. Runtimes cut P pieces at any
 * byte, so a character may have begun before: then its last bytes (at most
 * 3) come along and the piece ends up to 3 bytes past its room. Used by the
 * collector (tail.c) and the pipeline's dry run, which must cut alike. */
size_t parser_utf8_piece_cut(const char *s, size_t len, size_t room);

/* Kubernetes metadata derived from a log path. Empty strings when unknown. */
struct parser_path_meta {
    char namespace_[64];
    char pod[254];
    char container[64];
    char pod_uid[48];
    char container_id[72];
};

/* Fills `meta` from the symlink path (/var/log/containers/…) and/or its
 * resolved target (/var/log/pods/…); either may be NULL. The target wins for
 * namespace/pod/container/uid, the link supplies the container id. Returns 0
 * when namespace, pod and container are known, -1 otherwise (fields that
 * could be read are still filled). */
int parser_path_meta(const char *link_path, const char *target_path, struct parser_path_meta *meta);

#endif
