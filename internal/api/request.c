/*
 * request — one logs API request (see request.h).
 *
 * Output goes through one 64 KiB buffer per request, flushed when full and
 * when the request has nothing to send for a moment, so a burst of lines
 * costs a few syscalls, not one per line. Sends wait in poll(2) in steps of
 * FLUSH_STEP_MS so that shutdown is noticed; a client that does not read at
 * all for server.api.client_timeout is dropped: its lines would only be
 * missed, and a request reading history holds files and buffers meanwhile.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "api/request.h"

#include <errno.h>
#include <fcntl.h>
#include <pcre2.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api/history.h"
#include "api/query.h"
#include "httpd/httpd.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "parser/parser.h"

#define OUT_BYTES (64 * 1024)
#define FLUSH_STEP_MS 500
#define FOLLOW_WAIT_MS 250
#define TOKEN_MAX 4096

struct out {
    int fd;
    atomic_bool *stop;
    int64_t give_up_ms; /* server.api.client_timeout */
    char buf[OUT_BYTES];
    size_t len;
    bool failed;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool out_flush(struct out *o)
{
    size_t sent = 0;
    int64_t give_up = now_ms() + o->give_up_ms;
    while (!o->failed && sent < o->len) {
        ssize_t w = send(o->fd, o->buf + sent, o->len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            sent += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            o->failed = true; /* the client went away */
            break;
        }
        if (atomic_load(o->stop) || now_ms() >= give_up) {
            o->failed = true;
            break;
        }
        struct pollfd p = {o->fd, POLLOUT, 0};
        if (poll(&p, 1, FLUSH_STEP_MS) < 0 && errno != EINTR) o->failed = true;
        else if (p.revents & (POLLERR | POLLHUP)) o->failed = true;
    }
    o->len = 0;
    return !o->failed;
}

static void out_put(struct out *o, const char *p, size_t n)
{
    while (n > 0 && !o->failed) {
        size_t room = OUT_BYTES - o->len;
        if (room == 0) {
            out_flush(o);
            continue;
        }
        size_t k = n < room ? n : room;
        memcpy(o->buf + o->len, p, k);
        o->len += k;
        p += k;
        n -= k;
    }
}

static void out_str(struct out *o, const char *s) { out_put(o, s, strlen(s)); }

/* Decimal, zero-padded to `width` digits: per line, snprintf would be most
 * of the formatting cost. */
static void out_uint(struct out *o, uint64_t v, int width)
{
    char d[24];
    int i = (int)sizeof d;
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i > 0);
    while ((int)sizeof d - i < width && i > 0) d[--i] = '0';
    out_put(o, d + i, sizeof d - (size_t)i);
}

/* A JSON string body (without quotes). Input is valid UTF-8 here. */
static void out_json(struct out *o, const char *s, size_t n)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        out_put(o, s + run, i - run);
        run = i + 1;
        char esc[8];
        switch (c) {
        case '"': out_put(o, "\\\"", 2); break;
        case '\\': out_put(o, "\\\\", 2); break;
        case '\n': out_put(o, "\\n", 2); break;
        case '\r': out_put(o, "\\r", 2); break;
        case '\t': out_put(o, "\\t", 2); break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", c);
            out_put(o, esc, 6);
        }
    }
    out_put(o, s + run, n - run);
}

/* A JSON string body of bytes that may not be valid UTF-8 (names taken
 * from file names, paths): each invalid byte becomes U+FFFD, so the
 * output stays valid JSON whatever the node's file names hold. */
static void out_json_bytes(struct out *o, const char *s, size_t n)
{
    while (n > 0) {
        size_t valid = parser_utf8_valid_prefix(s, n);
        out_json(o, s, valid);
        if (valid == n) return;
        out_put(o, "\xEF\xBF\xBD", 3);
        s += valid + 1;
        n -= valid + 1;
    }
}

static void out_status(struct out *o, const char *status, const char *message)
{
    out_str(o, "{\"status\":\"");
    out_str(o, status);
    out_str(o, "\",\"message\":\"");
    out_json_bytes(o, message, strlen(message)); /* may name a file */
    out_str(o, "\"}\n");
}

static void respond(struct out *o, int code, const char *reason, const char *extra, const char *message)
{
    char head[512];
    snprintf(head, sizeof head,
             "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%sConnection: close\r\n\r\n", code, reason,
             extra ? extra : "");
    out_str(o, head);
    out_status(o, "error", message);
    out_flush(o);
}

/* ---------------------------------------------------------------------- */

int api_token_load(const char *path, char *buf, size_t cap, char *why, size_t whylen)
{
    char tmp[TOKEN_MAX + 2];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, tmp + len, sizeof tmp - 1 - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            snprintf(why, whylen, "cannot read %s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        if (r == 0 || (len += (size_t)r) == sizeof tmp - 1) break;
    }
    close(fd);
    if (len > TOKEN_MAX) {
        snprintf(why, whylen, "%s holds more than %d bytes", path, TOKEN_MAX);
        return -1;
    }
    tmp[len] = '\0';
    char *s = tmp;
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    if (n == 0) {
        snprintf(why, whylen, "%s is empty", path);
        return -1;
    }
    if (buf) {
        if (n >= cap) return -1;
        memcpy(buf, s, n);
        buf[n] = '\0';
    }
    return 0;
}

/* Compares in time independent of where they differ. */
static bool same_secret(const char *a, size_t an, const char *b, size_t bn)
{
    unsigned char d = an != bn;
    for (size_t i = 0; i < an && i < bn; i++) d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

static bool ieq_prefix(const char *p, size_t n, const char *lower)
{
    size_t k = strlen(lower);
    if (n < k) return false;
    for (size_t i = 0; i < k; i++) {
        char c = p[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != lower[i]) return false;
    }
    return true;
}

/* The value of `Authorization: Bearer X` in the head, or NULL. */
static const char *bearer(const char *head, size_t len, size_t *n)
{
    const char *p = head, *end = head + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t ln = (size_t)(le - p);
        if (ln > 0 && p[ln - 1] == '\r') ln--;
        if (ieq_prefix(p, ln, "authorization:")) {
            const char *v = p + 14, *ve = p + ln;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            if (!ieq_prefix(v, (size_t)(ve - v), "bearer ")) return NULL;
            v += 7;
            while (v < ve && *v == ' ') v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            *n = (size_t)(ve - v);
            return v;
        }
        if (!nl) break;
        p = nl + 1;
    }
    return NULL;
}

bool api_request_authorized(const struct config *cfg, const char *head, size_t len)
{
    char token[TOKEN_MAX + 1], why[512];
    if (api_token_load(cfg->server.api.bearer_token_file, token, sizeof token, why, sizeof why) != 0) {
        log_warn("api: refusing TCP requests: server.api.bearer_token_file: %s", why);
        return false;
    }
    size_t n;
    const char *got = bearer(head, len, &n);
    return got && same_secret(got, n, token, strlen(token));
}

/* ---------------------------------------------------------------------- */
/* /api/v1/logs                                                           */

struct logs {
    const struct api_request_env *env;
    struct out *o;
    struct api_query q;
    pcre2_code *re;
    pcre2_match_data *md;
    char *clean; /* UTF-8 sanitizing, 3 * max_line_bytes */
    uint64_t emitted;
    uint64_t grep_failed; /* lines grep could not decide (PCRE2 limits): not sent */
    uint64_t grep_said;   /* of them, already said to a follower */
    bool limit_hit;
    char **dirs; /* of the files the collector tails; NULL: no collector, all */
    size_t ndirs;
    bool dirs_failed; /* out of memory taking them: answered 500 */
    /* The sources the collector tailed when this follower subscribed (each
     * a reference), to bind the history's files to, and the live tail's
     * generation then. */
    struct source **tailed;
    size_t ntailed, captailed;
    uint64_t sub_gen;
};

static bool grep_ok(struct logs *lg, const char *s, size_t n)
{
    if (!lg->re) return true;
    int rc = pcre2_match(lg->re, (PCRE2_SPTR)s, n, 0, 0, lg->md, NULL);
    /* Over PCRE2's match, depth or heap limit (a pattern that backtracks
     * badly): treated as no match, as for the collector's filters, but
     * counted and said in the final status, not silently dropped. */
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) lg->grep_failed++;
    return rc >= 0;
}

/* Whether the line passes the query's filters (not the counts). */
static bool wanted(struct logs *lg, int64_t ts, int stream, const char *s, size_t n)
{
    return api_query_in_range(&lg->q, ts, stream) && grep_ok(lg, s, n);
}

static const char *stream_name(int s) { return s == PARSER_STREAM_STDOUT ? "stdout" : s == PARSER_STREAM_STDERR ? "stderr" : "unknown"; }

static void emit(struct logs *lg, const struct parser_path_meta *m, int64_t ts, int stream, const char *s, size_t n,
                 uint64_t number)
{
    if (lg->limit_hit) return;
    size_t valid = parser_utf8_valid_prefix(s, n);
    if (valid != n) {
        size_t replaced = 0, cap = (size_t)lg->env->cfg->collection.max_line_bytes;
        if (!lg->clean && !(lg->clean = malloc(3 * cap))) {
            n = valid; /* out of memory: the valid part only */
            goto format;
        }
        if (n > cap) n = cap;
        n = parser_utf8_sanitize(s, n, lg->clean, &replaced);
        s = lg->clean;
    }
format:;
    char ts_text[31];
    parser_format_rfc3339(ts, ts_text);
    out_str(lg->o, "{\"log_line\":\"");
    out_json(lg->o, s, n);
    long long sec = ts / 1000000000LL, ns = ts % 1000000000LL;
    if (ns < 0) sec--, ns += 1000000000LL;
    out_str(lg->o, "\",\"timestamp\":");
    out_uint(lg->o, (uint64_t)(sec < 0 ? 0 : sec), 0);
    out_put(lg->o, ".", 1);
    out_uint(lg->o, (uint64_t)ns, 9);
    out_str(lg->o, ",\"time\":\"");
    out_put(lg->o, ts_text, 30);
    out_str(lg->o, "\",\"pod_name\":\"");
    out_json_bytes(lg->o, m->pod, strlen(m->pod));
    out_str(lg->o, "\",\"namespace\":\"");
    out_json_bytes(lg->o, m->namespace_, strlen(m->namespace_));
    out_str(lg->o, "\",\"container\":\"");
    out_json_bytes(lg->o, m->container, strlen(m->container));
    out_str(lg->o, "\",\"stream\":\"");
    out_str(lg->o, stream_name(stream));
    out_str(lg->o, "\",\"line_number\":");
    out_uint(lg->o, number, 0);
    out_str(lg->o, ",\"status\":\"streaming\"}\n");
    lg->emitted++;
    if (lg->q.max_lines && lg->emitted >= (uint64_t)lg->q.max_lines) lg->limit_hit = true;
}

static bool selects_meta(void *ctx, const struct parser_path_meta *m)
{
    struct logs *lg = ctx;
    if (!api_query_selects(&lg->q, m)) return false;
    if (!lg->q.job) return true;
    const char *job = lg->env->job_label(lg->env->job_ctx, m);
    return job && api_query_job_matches(&lg->q, job);
}

static bool selects_source(void *ctx, const struct source *src) { return selects_meta(ctx, &src->meta); }

static bool dir_allowed(void *ctx, const char *dir)
{
    struct logs *lg = ctx;
    if (!lg->dirs) return true;
    for (size_t i = 0; i < lg->ndirs; i++)
        if (strcmp(lg->dirs[i], dir) == 0) return true;
    return false;
}

static void add_dir(struct logs *lg, const char *real_path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", real_path);
    char *slash = strrchr(dir, '/');
    if (!slash) return;
    *slash = '\0';
    if (!lg->dirs || dir_allowed(lg, dir)) return;
    if (lg->ndirs % 64 == 0) {
        char **g = realloc(lg->dirs, (lg->ndirs + 64) * sizeof *g);
        if (!g) {
            lg->dirs_failed = true;
            return;
        }
        lg->dirs = g;
    }
    if (!(lg->dirs[lg->ndirs] = strdup(dir))) {
        lg->dirs_failed = true;
        return;
    }
    lg->ndirs++;
}

/* Under the hub lock (at subscribe, or for a request without follow): the
 * collector's tailed files are the ones the API serves. Taken from the live
 * tail's registry, which has a file from before its first line is read, so
 * a pod started a moment ago is in the history or in the live tail. */
static void visit_tailed(void *ctx, const struct source *src)
{
    struct logs *lg = ctx;
    add_dir(lg, src->real_path);
    if (!lg->q.follow || !selects_source(lg, src)) return;
    if (lg->ntailed == lg->captailed) {
        size_t cap = lg->captailed ? lg->captailed * 2 : 16;
        struct source **g = realloc(lg->tailed, cap * sizeof *g);
        if (!g) return; /* only costs binding: a held file is let go later */
        lg->tailed = g;
        lg->captailed = cap;
    }
    source_ref((struct source *)src);
    lg->tailed[lg->ntailed++] = (struct source *)src;
}

/* Without a live tail: the directories of the collector's snapshot. */
static int load_dirs_snapshot(struct logs *lg)
{
    struct collector *c = lg->env->collector;
    if (!c) return 0;
    size_t n = collector_targets(c, NULL, 0);
    struct collector_target *t = calloc(n ? n : 1, sizeof *t);
    if (!t) return -1;
    size_t got = collector_targets(c, t, n);
    if (got < n) n = got;
    for (size_t i = 0; i < n; i++) add_dir(lg, t[i].real_path);
    free(t);
    return lg->dirs_failed ? -1 : 0;
}

/* History, oldest first, merged; with tail_lines a first pass counts each
 * container's matching lines and the second emits the last N, ending where
 * the first pass ended so that lines appended meanwhile come later, once. */
static int send_history(struct logs *lg, struct history *h, char *err, size_t errlen)
{
    size_t n = history_count(h);
    uint64_t *matched = NULL, *stop = NULL, *seen = NULL;
    struct history_container *c;
    struct history_line l;
    int r;
    if (lg->q.tail_lines >= 0) {
        matched = calloc(n ? n : 1, sizeof *matched);
        stop = calloc(n ? n : 1, sizeof *stop);
        seen = calloc(n ? n : 1, sizeof *seen);
        if (!matched || !stop || !seen) {
            snprintf(err, errlen, "out of memory");
            r = -1;
            goto done;
        }
        while ((r = history_next(h, &c, &l, err, errlen)) > 0)
            if (wanted(lg, l.ts_ns, l.stream, l.content, l.len)) matched[history_index(c)]++;
        /* tail_lines counts what is sent: a piece of a long line is one. */
        if (r < 0) goto done;
        for (size_t i = 0; i < n; i++) stop[i] = history_lines(history_at(h, i));
        history_rewind(h, stop);
    }
    while (!lg->limit_hit && !lg->o->failed && (r = history_next(h, &c, &l, err, errlen)) > 0) {
        if (!wanted(lg, l.ts_ns, l.stream, l.content, l.len)) continue;
        if (matched) {
            size_t i = history_index(c);
            if (++seen[i] + (uint64_t)lg->q.tail_lines <= matched[i]) continue;
        }
        emit(lg, history_meta(c), l.ts_ns, l.stream, l.content, l.len, l.number);
    }
    if (lg->limit_hit || lg->o->failed) r = 0;
done:
    free(matched);
    free(stop);
    free(seen);
    return r;
}

/* What a follower knows of one file: where it has its lines up to.
 * Invariants: `src` set once the live tail's source of the file is known
 * (a reference); until then the file is known by device and inode, and a
 * source is taken for it only if the two held the inode at once (their
 * generations overlap: see livetail.h), so a reused inode is another file.
 * !started: lines up to `upto` came from the history; `hc` set while the
 * history still holds the file open, to read from it what the live tail
 * has not brought (the rest of a straddling entry, a gap). */
struct followed {
    struct source *src;
    dev_t dev;
    ino_t ino;
    uint64_t gen_from, gen_to; /* the history held it between these (gen_to: UINT64_MAX while held) */
    uint64_t upto;             /* file offset up to which its lines were sent */
    uint64_t next_seq;         /* the live tail's number of the next record */
    bool started, seen;
    struct history_container *hc;
    bool hc_owned; /* hc was opened for a gap (history_open_file), not the history's */
    uint64_t *number; /* the container's line counter */
};

struct counter {
    char dir[4096];
    uint64_t number;
};

struct follow_state {
    struct logs *lg;
    struct history *h;
    struct followed *files;
    size_t nfiles, capfiles;
    struct counter **ctrs;
    size_t nctrs;
    uint64_t missed; /* to say in the next error object */
    char missed_why[512]; /* why a gap could not be read from its file ("": the queue) */
    uint64_t before; /* gaps opened before the entry with this order are ready (livetail_gap.order) */
};

static uint64_t *counter_for(struct follow_state *fs, const char *dir)
{
    for (size_t i = 0; i < fs->nctrs; i++)
        if (strcmp(fs->ctrs[i]->dir, dir) == 0) return &fs->ctrs[i]->number;
    struct counter **g = realloc(fs->ctrs, (fs->nctrs + 1) * sizeof *g);
    if (!g) return NULL;
    fs->ctrs = g;
    struct counter *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    fs->ctrs[fs->nctrs++] = c;
    return &c->number;
}

static struct followed *followed_add(struct follow_state *fs)
{
    if (fs->nfiles == fs->capfiles) {
        size_t cap = fs->capfiles ? fs->capfiles * 2 : 16;
        struct followed *g = realloc(fs->files, cap * sizeof *g);
        if (!g) return NULL;
        fs->files = g;
        fs->capfiles = cap;
    }
    struct followed *f = &fs->files[fs->nfiles++];
    memset(f, 0, sizeof *f);
    return f;
}

static bool same_file(const struct followed *f, const struct source *src)
{
    if (f->src || f->dev != src->dev || f->ino != src->ino) return false;
    uint64_t closed = atomic_load(&((struct source *)src)->livetail_close_gen);
    return src->livetail_open_gen < f->gen_to && (closed == 0 || closed > f->gen_from);
}

static struct followed *find_bound(struct follow_state *fs, const struct source *src)
{
    for (size_t i = 0; i < fs->nfiles; i++)
        if (fs->files[i].src == src) return &fs->files[i];
    return NULL;
}

/* The follower's record of src's file: bound, taken over from the history,
 * or new (numbered on from its directory's counter). NULL: out of memory. */
static struct followed *followed_for(struct follow_state *fs, struct source *src)
{
    struct followed *f = find_bound(fs, src);
    if (f) return f;
    for (size_t i = 0; i < fs->nfiles && !f; i++)
        if (same_file(&fs->files[i], src)) f = &fs->files[i];
    if (f) {
        source_ref(src);
        f->src = src;
        return f;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", src->real_path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    uint64_t *num = counter_for(fs, dir);
    if (!num || !(f = followed_add(fs))) return NULL;
    source_ref(src);
    f->src = src;
    f->dev = src->dev;
    f->ino = src->ino;
    f->number = num;
    f->started = true;
    /* A file tailed since before this follower came, that its history did
     * not have (its link gone): its earlier lines were never this
     * follower's. One tailed since: every record of it is. */
    f->next_seq = src->livetail_open_gen < fs->lg->sub_gen ? UINT64_MAX : 0;
    return f;
}

static void emit_read_on(void *ctx, struct history_container *c, const struct history_line *l)
{
    struct logs *lg = ctx;
    if (wanted(lg, l->ts_ns, l->stream, l->content, l->len))
        emit(lg, history_meta(c), l->ts_ns, l->stream, l->content, l->len, l->number);
}

/* Sends f's lines from upto to `to` from the file the history holds. */
static int read_from_file(struct follow_state *fs, struct followed *f, uint64_t to, char *err, size_t errlen)
{
    history_set_lines(f->hc, *f->number);
    if (history_read_on(f->hc, f->upto, to, emit_read_on, fs->lg, err, errlen) < 0) return -1;
    *f->number = history_lines(f->hc);
    f->upto = to;
    return 0;
}

static void let_go(struct follow_state *fs, struct followed *f)
{
    if (!f->hc) return;
    if (f->hc_owned) history_container_free(f->hc);
    else history_let_go(f->hc);
    f->hc = NULL;
    f->hc_owned = false;
    f->gen_to = livetail_generation(fs->lg->env->hub);
}

/* Entries of f's source that did not fit the queue: read from the file,
 * the history's or, for any other file the collector tails, opened now by
 * its identity; counted as missed (and why) only when it cannot be. */
static int follow_gap(struct follow_state *fs, const struct livetail_gap *g, char *err, size_t errlen)
{
    struct followed *f = followed_for(fs, g->source);
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (f->next_seq == UINT64_MAX) f->next_seq = g->first_seq;
    f->seen = true;
    if (!f->started && g->end_offset <= f->upto) {
        f->next_seq = g->end_seq; /* the history sent them */
        return 0;
    }
    if (!(f->hc && history_holds(f->hc))) {
        char why[512];
        if (f->hc) let_go(fs, f);
        struct source *src = g->source;
        const char *spool = fs->lg->env->collector ? collector_spool_dir(fs->lg->env->collector) : NULL;
        if ((f->hc = history_open_file(fs->lg->env->cfg, &src->meta, src->real_path, spool, src->dev, src->ino, why,
                                       sizeof why))) {
            f->hc_owned = true;
            if (f->started || g->start_offset > f->upto) f->upto = g->start_offset;
        } else {
            snprintf(fs->missed_why, sizeof fs->missed_why, "%s", why);
        }
    }
    if (f->hc && history_holds(f->hc)) {
        if (read_from_file(fs, f, g->end_offset, err, errlen) != 0) return -1;
        f->started = true;
        f->next_seq = g->end_seq;
        return 0;
    }
    uint64_t from = g->first_seq > f->next_seq ? g->first_seq : f->next_seq;
    if (g->end_seq > from) {
        fs->missed += g->end_seq - from;
        *f->number += g->end_seq - from; /* as lines: a long line's pieces count each */
    }
    f->started = true;
    f->upto = g->end_offset;
    f->next_seq = g->end_seq;
    return 0;
}

/* One live-tail entry: skipped when history had it, read from the file
 * when it straddles the history's end, else sent record by record. */
static int follow_entry(struct follow_state *fs, const struct livetail_entry *e, char *err, size_t errlen)
{
    struct source *src = e->source;
    struct followed *f = followed_for(fs, src);
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    uint64_t end_seq = e->first_seq + e->records;
    if (f->next_seq == UINT64_MAX) f->next_seq = e->first_seq;
    f->seen = true;
    if (!f->started) {
        if (e->end_offset <= f->upto) {
            f->next_seq = end_seq;
            return 0;
        }
        if (f->hc && history_holds(f->hc)) {
            if (read_from_file(fs, f, e->end_offset, err, errlen) != 0) return -1;
            f->started = true;
            f->next_seq = end_seq;
            return 0;
        }
        f->started = true; /* a rotated file that grew after the history read it: rare */
    }
    if (e->first_seq > f->next_seq) {
        fs->missed += e->first_seq - f->next_seq;
        *f->number += e->first_seq - f->next_seq;
    }
    const struct source_record *rec = livetail_entry_first(e);
    for (uint32_t i = 0; i < e->records; i++, rec = source_record_next(rec)) {
        if (!(rec->flags & SOURCE_RECORD_CONTINUED)) ++*f->number; /* a piece shares its line's number */
        const char *s = source_record_content(rec);
        if (wanted(fs->lg, rec->ts_ns, rec->stream, s, rec->len))
            emit(fs->lg, &src->meta, rec->ts_ns, rec->stream, s, rec->len, *f->number);
    }
    f->upto = e->end_offset;
    f->next_seq = end_seq;
    return 0;
}

/* A gap can be made up once every queued entry of its source before it is
 * done: its source's next record is the gap's first. */
static bool gap_ready(void *ctx, const struct livetail_gap *g)
{
    struct follow_state *fs = ctx;
    if (g->order < fs->before) return true;
    struct followed *f = find_bound(fs, g->source);
    return f && f->seen && f->next_seq == g->first_seq;
}

static int take_gaps(struct follow_state *fs, struct livetail_sub *sub, bool queue_empty, char *err, size_t errlen)
{
    struct livetail_gap g;
    while (livetail_take_gap(fs->lg->env->hub, sub, queue_empty ? NULL : gap_ready, fs, &g)) {
        int rc = follow_gap(fs, &g, err, errlen);
        source_unref(g.source);
        if (rc != 0) return -1;
    }
    return 0;
}

/* With nothing queued: files the follower holds that nobody else needs
 * are let go, so a deleted pod's files do not stay on disk for as long
 * as `loglet tail -f` runs. The collector closed the file (every line of
 * it is out), or it is deleted and nobody tails it. */
static void let_go_drained(struct follow_state *fs)
{
    for (size_t i = 0; i < fs->nfiles; i++) {
        struct followed *f = &fs->files[i];
        if (!f->hc) continue;
        bool closed = f->src && atomic_load(&f->src->livetail_close_gen) != 0;
        if (closed || (!f->src && history_nlink(f->hc) == 0)) let_go(fs, f);
    }
}

/* Whether the client is gone (a follower's only way to say stop): its
 * socket hung up (POLLHUP: closed both ways) or errs. Bytes it sends after
 * its request are read and discarded, so that they can neither hide a hang
 * up nor fill the socket; its end of input (a half-close: `curl -N`, a
 * shell's `< /dev/null`) alone is no reason to stop sending to it: a failed
 * write or a hang up is. */
static bool client_gone(int fd)
{
    struct pollfd p = {fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLHUP | POLLERR | POLLNVAL)) return true;
    char b[512];
    for (int i = 0; i < 16 && (p.revents & POLLIN); i++) {
        ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
        if (r == 0) break; /* half-closed: still listening, maybe */
        if (r < 0) return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
    }
    return false;
}

static int follow_setup(struct follow_state *fs, struct history *h, uint64_t gen_from, uint64_t gen_closed,
                        char *err, size_t errlen)
{
    struct logs *lg = fs->lg;
    for (size_t i = 0; i < history_count(h); i++) {
        struct history_container *c = history_at(h, i);
        uint64_t *num = counter_for(fs, history_dir(c));
        if (!num) goto oom;
        *num = history_lines(c);
        const struct history_file_end *done;
        size_t nd = history_read_files(c, &done);
        for (size_t k = 0; k < nd; k++) {
            struct followed *f = followed_add(fs);
            if (!f) goto oom;
            *f = (struct followed){.dev = done[k].dev, .ino = done[k].ino, .gen_from = gen_from,
                                   .gen_to = gen_closed, .upto = done[k].done, .number = num};
        }
        dev_t dev;
        ino_t ino;
        uint64_t off;
        if (!history_end(c, &dev, &ino, &off)) continue;
        struct followed *f = followed_add(fs);
        if (!f) goto oom;
        *f = (struct followed){.dev = dev, .ino = ino, .gen_from = gen_from, .gen_to = UINT64_MAX,
                               .upto = off, .hc = c, .number = num};
    }
    /* The files the collector tailed at subscription are bound now, so a
     * held one is let go as soon as the collector closes it. */
    for (size_t t = 0; t < lg->ntailed; t++)
        for (size_t i = 0; i < fs->nfiles; i++)
            if (same_file(&fs->files[i], lg->tailed[t])) {
                source_ref(lg->tailed[t]);
                fs->files[i].src = lg->tailed[t];
                break;
            }
    for (size_t i = 0; i < fs->nfiles; i++) fs->files[i].next_seq = UINT64_MAX; /* from their first entry */
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

static int follow(struct logs *lg, struct history *h, struct livetail_sub *sub, uint64_t gen_from, char *err,
                  size_t errlen)
{
    struct follow_state fs = {.lg = lg, .h = h};
    int rc = 0;
    history_finish(h);
    uint64_t gen_closed = livetail_generation(lg->env->hub);
    if (follow_setup(&fs, h, gen_from, gen_closed, err, errlen) != 0) {
        rc = -1;
        goto done;
    }
    int64_t checked_ms = metrics_now_ms();
    while (!lg->limit_hit && !lg->o->failed && !atomic_load(lg->env->stop)) {
        /* Also while entries keep coming that a filter (grep, stream, since)
         * skips: nothing is written then, and only this notices a client
         * that left, whose slot would be held for as long as its pod logs. */
        int64_t now = metrics_now_ms();
        if (now - checked_ms >= FOLLOW_WAIT_MS) {
            checked_ms = now;
            if (!lg->o->len && client_gone(lg->o->fd)) break;
        }
        fs.missed += livetail_take_missed(sub);
        if (fs.missed) {
            char msg[768];
            if (fs.missed_why[0])
                snprintf(msg, sizeof msg,
                         "%llu lines missed: this follower read too slowly for its queue "
                         "(server.api.subscriber_buffer) and they could not be read from the file: %s",
                         (unsigned long long)fs.missed, fs.missed_why);
            else
                snprintf(msg, sizeof msg,
                         "%llu lines missed: this follower read too slowly for its queue (server.api.subscriber_buffer)",
                         (unsigned long long)fs.missed);
            out_status(lg->o, "error", msg);
            fs.missed = 0;
            fs.missed_why[0] = '\0';
        }
        if (lg->grep_failed > lg->grep_said) {
            char msg[256];
            snprintf(msg, sizeof msg,
                     "%llu lines not sent: grep hit PCRE2's match limit on them (simplify the pattern)",
                     (unsigned long long)(lg->grep_failed - lg->grep_said));
            out_status(lg->o, "error", msg);
            lg->grep_said = lg->grep_failed;
        }
        const struct livetail_entry *e = livetail_next(sub, lg->o->len ? 0 : FOLLOW_WAIT_MS);
        if (!e) {
            if (take_gaps(&fs, sub, true, err, errlen) != 0) {
                rc = -1;
                break;
            }
            let_go_drained(&fs);
            if (lg->o->len) out_flush(lg->o);
            else if (client_gone(lg->o->fd)) break;
            continue;
        }
        /* Gaps opened before this entry was offered come first: their
         * files' earlier entries are all taken (the queue is in order). */
        fs.before = e->order;
        rc = take_gaps(&fs, sub, false, err, errlen);
        if (rc == 0) rc = follow_entry(&fs, e, err, errlen);
        livetail_release(sub);
        if (rc == 0) rc = take_gaps(&fs, sub, false, err, errlen);
        if (rc != 0) break;
    }
done:
    for (size_t i = 0; i < fs.nfiles; i++) {
        if (fs.files[i].hc_owned) history_container_free(fs.files[i].hc);
        if (fs.files[i].src) source_unref(fs.files[i].src);
    }
    free(fs.files);
    for (size_t i = 0; i < fs.nctrs; i++) free(fs.ctrs[i]);
    free(fs.ctrs);
    return rc;
}

static void serve_logs(const struct api_request_env *env, struct out *o, const char *qs, size_t qlen)
{
    struct logs *lg = calloc(1, sizeof *lg);
    char err[1024];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (!lg) {
        respond(o, 500, "Internal Server Error", NULL, "out of memory");
        return;
    }
    lg->env = env;
    lg->o = o;
    int64_t max = env->cfg->server.api.max_subscribers;
    if (atomic_fetch_add(env->active, 1) >= max) {
        atomic_fetch_sub(env->active, 1);
        snprintf(err, sizeof err, "too many requests: server.api.max_subscribers (%lld) are being served",
                 (long long)max);
        respond(o, 503, "Service Unavailable", NULL, err);
        free(lg);
        return;
    }
    struct history *h = NULL;
    struct livetail_sub *sub = NULL;
    bool history_held = false;
    if (api_query_parse(qs, qlen, (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec, &lg->q, err, sizeof err) != 0) {
        respond(o, 400, "Bad Request", NULL, err);
        goto out;
    }
    if (lg->q.job && !env->job_label) {
        respond(o, 400, "Bad Request", NULL,
                "job: selecting a Job's pods needs Kubernetes metadata (the pods' job-name label), which this "
                "agent does not have; select them with pod=<job>-* instead");
        goto out;
    }
    if (lg->q.grep) {
        int ecode;
        PCRE2_SIZE eoff;
        lg->re = pcre2_compile((PCRE2_SPTR)lg->q.grep, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_MATCH_INVALID_UTF,
                               &ecode, &eoff, NULL);
        if (!lg->re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ecode, msg, sizeof msg);
            snprintf(err, sizeof err, "grep: invalid regular expression at offset %zu: %s", (size_t)eoff,
                     (const char *)msg);
            respond(o, 400, "Bad Request", NULL, err);
            goto out;
        }
        pcre2_jit_compile(lg->re, PCRE2_JIT_COMPLETE); /* optional speed-up; matching works without */
        if (!(lg->md = pcre2_match_data_create_from_pattern(lg->re, NULL))) {
            respond(o, 500, "Internal Server Error", NULL, "out of memory");
            goto out;
        }
    }
    /* Subscribe before reading history: every line is then in one or the
     * other (or both, and the offsets sort that out). The directories served
     * are those tailed at that moment, taken with the subscription. */
    lg->dirs = env->collector ? calloc(64, sizeof *lg->dirs) : NULL;
    if (env->collector && !lg->dirs) lg->dirs_failed = true;
    if (lg->q.follow) {
        if (!env->hub) {
            respond(o, 503, "Service Unavailable", NULL, "follow is not available (no live tail)");
            goto out;
        }
        lg->sub_gen = livetail_generation(env->hub);
        if (!(sub = livetail_subscribe(env->hub, selects_source, lg, visit_tailed, lg, err, sizeof err))) {
            respond(o, 503, "Service Unavailable", NULL, err);
            goto out;
        }
    } else if (env->hub && lg->dirs) {
        livetail_sources(env->hub, visit_tailed, lg);
    } else if (lg->dirs && load_dirs_snapshot(lg) != 0) {
        lg->dirs_failed = true;
    }
    if (lg->dirs_failed) {
        respond(o, 500, "Internal Server Error", NULL, "out of memory");
        goto out;
    }
    /* Files the history opens from now on: a source holding the same inode
     * later than this is the same file (livetail.h). */
    uint64_t gen_from = env->hub ? livetail_generation(env->hub) : 0;
    /* History holds files and buffers for as long as its client takes to
     * read it: only so many at once (the followers after it hold one file
     * per container at most). */
    int64_t max_hist = env->cfg->server.api.max_history_requests;
    int64_t wait_until = now_ms() + env->cfg->server.request_timeout_ms;
    bool got_slot;
    /* Most history reads take moments (a follower's tail_lines=0 only
     * scans): a newcomer waits up to request_timeout for a slot. */
    while (!(got_slot = atomic_fetch_add(env->history_active, 1) < max_hist)) {
        atomic_fetch_sub(env->history_active, 1);
        if (now_ms() >= wait_until || atomic_load(env->stop)) break;
        struct timespec pause = {0, 20 * 1000000L};
        nanosleep(&pause, NULL);
    }
    if (!got_slot) {
        snprintf(err, sizeof err,
                 "too many history requests: server.api.max_history_requests (%lld) are reading history",
                 (long long)max_hist);
        respond(o, 503, "Service Unavailable", NULL, err);
        goto out;
    }
    history_held = true;
    h = history_scan(env->cfg, selects_meta, dir_allowed, lg, env->cfg->server.api.max_history_bytes,
                     (size_t)env->cfg->server.api.max_history_files, err, sizeof err);
    if (!h) {
        respond(o, 503, "Service Unavailable", NULL, err);
        goto out;
    }
    out_str(o, "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\n"
               "Connection: close\r\n\r\n");
    int rc = send_history(lg, h, err, sizeof err);
    atomic_fetch_sub(env->history_active, 1);
    history_held = false;
    if (rc == 0 && lg->q.follow && !lg->limit_hit) rc = follow(lg, h, sub, gen_from, err, sizeof err);
    if (rc < 0) {
        out_status(o, "error", err);
    } else if (!lg->q.follow || lg->limit_hit) {
        char msg[512], grep_note[256] = "";
        if (lg->grep_failed)
            snprintf(grep_note, sizeof grep_note,
                     "; %llu lines not sent: grep hit PCRE2's match limit on them (simplify the pattern)",
                     (unsigned long long)lg->grep_failed);
        snprintf(msg, sizeof msg, "%llu lines from %zu containers%s%s", (unsigned long long)lg->emitted,
                 history_count(h), lg->limit_hit ? " (max_lines reached)" : "", grep_note);
        out_status(o, "completed", msg);
    }
    out_flush(o);
out:
    if (history_held) atomic_fetch_sub(env->history_active, 1);
    if (sub) livetail_unsubscribe(env->hub, sub);
    history_free(h);
    pcre2_match_data_free(lg->md);
    pcre2_code_free(lg->re);
    free(lg->clean);
    for (size_t i = 0; i < lg->ndirs; i++) free(lg->dirs[i]);
    free(lg->dirs);
    for (size_t i = 0; i < lg->ntailed; i++) source_unref(lg->tailed[i]);
    free(lg->tailed);
    free(lg);
    atomic_fetch_sub(env->active, 1);
}

/* ---------------------------------------------------------------------- */
/* /api/v1/targets                                                        */

static void json_field(struct out *o, const char *name, const char *v, bool comma)
{
    out_str(o, comma ? ",\"" : "\"");
    out_str(o, name);
    out_str(o, "\":\"");
    out_json_bytes(o, v, strlen(v));
    out_str(o, "\"");
}

static void serve_targets(const struct api_request_env *env, struct out *o)
{
    size_t n = collector_targets(env->collector, NULL, 0);
    struct collector_target *t = calloc(n ? n : 1, sizeof *t);
    if (!t) {
        respond(o, 500, "Internal Server Error", NULL, "out of memory");
        return;
    }
    size_t got = collector_targets(env->collector, t, n);
    if (got < n) n = got;
    out_str(o, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
               "Connection: close\r\n\r\n{\"targets\":[");
    for (size_t i = 0; i < n; i++) {
        out_str(o, i ? ",\n{" : "\n{");
        json_field(o, "path", t[i].path, false);
        json_field(o, "real_path", t[i].real_path, true);
        json_field(o, "namespace", t[i].namespace_, true);
        json_field(o, "pod_name", t[i].pod, true);
        json_field(o, "container", t[i].container, true);
        char num[256];
        uint64_t lag = t[i].size > t[i].acked_offset ? t[i].size - t[i].acked_offset : 0;
        snprintf(num, sizeof num,
                 ",\"size\":%llu,\"read_offset\":%llu,\"acked_offset\":%llu,\"lag_bytes\":%llu,\"lag_seconds\":%lld",
                 (unsigned long long)t[i].size, (unsigned long long)t[i].read_offset,
                 (unsigned long long)t[i].acked_offset, (unsigned long long)lag, (long long)t[i].lag_seconds);
        out_str(o, num);
        json_field(o, "format", t[i].format, true);
        json_field(o, "watcher", t[i].watcher, true);
        json_field(o, "state", t[i].state, true);
        json_field(o, "last_error", t[i].last_error, true);
        out_str(o, "}");
    }
    out_str(o, "\n]}\n");
    out_flush(o);
    free(t);
}

/* ---------------------------------------------------------------------- */

/* Reads the request head within request_timeout; returns its length or 0
 * (closed, timed out, too large or malformed: answered when possible). */
static size_t read_head(const struct api_request_env *env, struct out *o, char *buf, struct httpd_request *req)
{
    size_t len = 0;
    int64_t deadline = now_ms() + env->cfg->server.request_timeout_ms;
    for (;;) {
        enum httpd_parse_status st = httpd_parse_request(buf, len, req);
        if (st == HTTPD_PARSE_OK) return len;
        if (st == HTTPD_PARSE_BAD) {
            respond(o, 400, "Bad Request", NULL, "malformed request");
            return 0;
        }
        if (st == HTTPD_PARSE_TOO_LARGE) {
            respond(o, 431, "Request Header Fields Too Large", NULL, "request head too large");
            return 0;
        }
        int64_t left = deadline - now_ms();
        if (left <= 0 || atomic_load(env->stop)) return 0;
        struct pollfd p = {o->fd, POLLIN, 0};
        int pr = poll(&p, 1, left > FLUSH_STEP_MS ? FLUSH_STEP_MS : (int)left);
        if (pr < 0 && errno != EINTR) return 0;
        if (pr <= 0) continue;
        ssize_t r = recv(o->fd, buf + len, HTTPD_MAX_REQUEST - len, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r <= 0) return 0;
        len += (size_t)r;
    }
}

void api_request_serve(const struct api_request_env *env, int fd, const char *head, size_t head_len)
{
    struct out *o = calloc(1, sizeof *o);
    char *buf = malloc(HTTPD_MAX_REQUEST);
    if (!o || !buf) {
        free(o);
        free(buf);
        return;
    }
    o->fd = fd;
    o->stop = env->stop;
    o->give_up_ms = env->cfg->server.api.client_timeout_ms;
    struct httpd_request req;
    size_t len = head_len;
    if (head_len) {
        memcpy(buf, head, head_len < HTTPD_MAX_REQUEST ? head_len : HTTPD_MAX_REQUEST);
        if (httpd_parse_request(buf, len, &req) != HTTPD_PARSE_OK) len = 0; /* the listener parsed it: cannot be */
    } else {
        len = read_head(env, o, buf, &req);
    }
    if (len == 0) goto done;
    /* The target: after the method's space, up to the next space. */
    const char *t = memchr(buf, ' ', len);
    const char *te = t ? memchr(t + 1, ' ', len - (size_t)(t + 1 - buf)) : NULL;
    const char *q = t && te ? memchr(t + 1, '?', (size_t)(te - t - 1)) : NULL;
    /* On TCP the listener checked the token before giving a slot (server.c);
     * on the socket, its mode is the access control. */
    if (env->tcp && !head_len && !api_request_authorized(env->cfg, buf, req.head_len)) {
        respond(o, 401, "Unauthorized", "WWW-Authenticate: Bearer realm=\"loglet\"\r\n",
                "a valid bearer token is required (Authorization: Bearer …)");
    } else if (strcmp(req.method, "GET") != 0) {
        respond(o, 405, "Method Not Allowed", "Allow: GET\r\n", "only GET is served");
    } else if (req.content_length > 0) {
        respond(o, 413, "Content Too Large", NULL, "request body not accepted");
    } else if (strcmp(req.path, "/api/v1/targets") == 0) {
        serve_targets(env, o);
    } else if (strcmp(req.path, "/api/v1/logs") == 0) {
        serve_logs(env, o, q ? q + 1 : "", q ? (size_t)(te - q - 1) : 0);
    } else {
        respond(o, 404, "Not Found", NULL, "not found: the API serves /api/v1/logs and /api/v1/targets");
    }
done:
    free(buf);
    free(o);
}
