/*
 * `loglet archive cat` and `loglet archive compact`: reading the archive
 * back, and merging its small objects. Off the hot path: a command, not the
 * agent; it allocates freely and keeps the selection in memory.
 *
 * Layout (archive.h): raw objects under output.archive.key_format (default
 * kube.var.log.containers.{pod}_{namespace}_{container}-{container_id}/
 * {date}_{index}.gz), compacted objects data/{namespace}/{pod}/
 * {container_id}/{date}_{hour}.gz, one index per pod
 * metadata/{namespace}_{pod}.json:
 *   {"version": 1, "namespace": …, "pod": …, "objects": [
 *     {"key": "data/…gz", "container": …, "container_id": …, "date": …,
 *      "hour": …, "lines": N, "sources": ["raw key", …], "run": MS,
 *      "delete_after": MS, "sources_deleted": false}, …]}
 *
 * The rule that makes reading during compaction exact: a compacted object
 * counts only once the index lists it, and then the raw objects it lists
 * as sources do not count. Compaction writes the merged object first, then
 * the index; it deletes the sources of entries an earlier run wrote at
 * least --delete-after (10 min) before, so a reader that listed before the index changed still
 * finds every raw object it listed. Each step is idempotent: an interrupted
 * run leaves at most a merged object no index lists (ignored, and written
 * again the same by the next run), or sources left to delete.
 *
 * A raw object belongs to the hour of its first record; a compacted
 * object may therefore hold a few lines of the next hour (at most
 * flush_interval's worth). A second merge of one hour (objects that came
 * late) gets its own key, {date}_{hour}.1.gz, and so on.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "archive_internal.h"
#include "config/config.h"
#include "parser/parser.h"

struct opts {
    struct archive_store_options store;
    const char *key_format;
    const char *namespace_, *pod, *container, *job;
    int64_t since_ns, until_ns;
    int64_t older_than_ms;
    int64_t delete_after_ms; /* raw objects merged this long ago may go */
    bool cri; /* print records as stored */
};

struct raw {
    char *key;
    struct archive_key_parsed k;
    bool covered;
};

struct entry {
    json_t *obj; /* in its index's "objects" array (borrowed) */
    const char *key, *container, *container_id, *date, *hour;
    bool present; /* listed in the store */
};

struct pod_index {
    char *key; /* metadata/{ns}_{pod}.json */
    char *namespace_, *pod;
    json_t *root;
    bool dirty;
};

struct listing {
    struct raw *raws;
    size_t nraws, raws_cap;
    char **compacted;
    size_t ncompacted, compacted_cap;
    char **indexes;
    size_t nindexes, indexes_cap;
    const char *key_format;
    char err[256];
};

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int push_str(char ***arr, size_t *n, size_t *cap, const char *s)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        char **more = realloc(*arr, c * sizeof *more);
        if (!more) return -1;
        *arr = more;
        *cap = c;
    }
    if (!((*arr)[*n] = strdup(s))) return -1;
    (*n)++;
    return 0;
}

static int on_key(void *ctx, const char *key, uint64_t size)
{
    (void)size;
    struct listing *l = ctx;
    if (strncmp(key, "data/", 5) == 0)
        return push_str(&l->compacted, &l->ncompacted, &l->compacted_cap, key) ? -1 : 0;
    if (strncmp(key, "metadata/", 9) == 0) {
        size_t n = strlen(key);
        if (n > 5 && strcmp(key + n - 5, ".json") == 0)
            return push_str(&l->indexes, &l->nindexes, &l->indexes_cap, key) ? -1 : 0;
        return 0;
    }
    struct archive_key_parsed k;
    if (archive_key_parse(l->key_format, key, &k) != 0) return 0; /* not ours (or another layout) */
    if (l->nraws == l->raws_cap) {
        size_t c = l->raws_cap ? l->raws_cap * 2 : 256;
        struct raw *more = realloc(l->raws, c * sizeof *more);
        if (!more) return -1;
        l->raws = more;
        l->raws_cap = c;
    }
    struct raw *r = &l->raws[l->nraws];
    if (!(r->key = strdup(key))) return -1;
    r->k = k;
    r->covered = false;
    l->nraws++;
    return 0;
}

static void listing_free(struct listing *l)
{
    for (size_t i = 0; i < l->nraws; i++) free(l->raws[i].key);
    for (size_t i = 0; i < l->ncompacted; i++) free(l->compacted[i]);
    for (size_t i = 0; i < l->nindexes; i++) free(l->indexes[i]);
    free(l->raws);
    free(l->compacted);
    free(l->indexes);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int cmp_raw(const void *a, const void *b)
{
    const struct raw *x = a, *y = b;
    int c;
    if ((c = strcmp(x->k.namespace_, y->k.namespace_))) return c;
    if ((c = strcmp(x->k.pod, y->k.pod))) return c;
    if ((c = strcmp(x->k.container, y->k.container))) return c;
    if ((c = strcmp(x->k.container_id, y->k.container_id))) return c;
    if (x->k.index != y->k.index) return x->k.index < y->k.index ? -1 : 1;
    return strcmp(x->key, y->key);
}

static int list_all(struct archive_store *st, struct listing *l)
{
    struct archive_outcome o;
    archive_store_list(st, "", on_key, l, &o);
    if (o.result != ARCHIVE_OK) {
        fprintf(stderr, "loglet archive: cannot list %s: %s\n", archive_store_describe(st), o.detail);
        return -1;
    }
    /* qsort and bsearch take no NULL array, even with no elements. */
    if (l->nraws) qsort(l->raws, l->nraws, sizeof *l->raws, cmp_raw);
    if (l->ncompacted) qsort(l->compacted, l->ncompacted, sizeof *l->compacted, cmp_str);
    return 0;
}

static bool listed_compacted(const struct listing *l, const char *key)
{
    return l->ncompacted && bsearch(&key, l->compacted, l->ncompacted, sizeof *l->compacted, cmp_str) != NULL;
}

/* Downloads an object into an unlinked temporary file; returns its fd. */
static int fetch(struct archive_store *st, const char *key, struct archive_outcome *o)
{
    FILE *tmp = tmpfile();
    if (!tmp) {
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot create a temporary file: %s", strerror(errno));
        return -1;
    }
    int fd = dup(fileno(tmp));
    fclose(tmp);
    if (fd < 0) {
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot create a temporary file: %s", strerror(errno));
        return -1;
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0) break;
        archive_store_get(st, key, fd, o);
        if (o->result == ARCHIVE_OK) return fd;
        if (o->result != ARCHIVE_RETRY) break;
        struct timespec t = {0, 200000000L * (attempt + 1)};
        nanosleep(&t, NULL);
    }
    close(fd);
    return -1;
}

static int put_fd(struct archive_store *st, const char *key, int fd, struct archive_outcome *o)
{
    uint64_t size;
    unsigned char md5[16], sha[32];
    if (archive_digest_fd(fd, &size, md5, sha) != 0) {
        archive_outcome_set(o, ARCHIVE_RETRY, 0, "cannot read what %s should hold: %s", key, strerror(errno));
        return -1;
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        archive_store_put_file(st, key, fd, size, md5, sha, true, o);
        if (o->result == ARCHIVE_OK) return 0;
        if (o->result != ARCHIVE_RETRY) break;
        struct timespec t = {0, 200000000L * (attempt + 1)};
        nanosleep(&t, NULL);
    }
    return -1;
}

/* Record timestamp: CRI's first field, or the json format's "time". */
static bool record_ts(const char *line, size_t len, int64_t *ts)
{
    if (len > 9 && strncmp(line, "{\"time\":\"", 9) == 0) {
        const char *q = memchr(line + 9, '"', len - 9);
        return q && parser_rfc3339(line + 9, (size_t)(q - line - 9), ts) == 0;
    }
    const char *sp = memchr(line, ' ', len);
    return sp && parser_rfc3339(line, (size_t)(sp - line), ts) == 0;
}

/* A CRI line's tag ('P': a partial piece, the record goes on in the next
 * line; 'F': full or last piece), and where its content starts; 0 when the
 * line is not CRI (the json format). */
static char cri_tag(const char *line, size_t len, size_t *content)
{
    const char *sp = memchr(line, ' ', len);
    if (!sp) return 0;
    size_t o = (size_t)(sp - line) + 1;
    const char *sp2 = memchr(line + o, ' ', len - o);
    if (!sp2) return 0;
    o = (size_t)(sp2 - line) + 1;
    if (o >= len || (line[o] != 'P' && line[o] != 'F') || (o + 1 < len && line[o + 1] != ' ')) return 0;
    *content = o + 1 < len ? o + 2 : len;
    return line[o];
}

/* Calls each() for every line (without its newline) of a gzip object. */
typedef int (*line_fn)(void *ctx, const char *line, size_t len);
static int each_line(int fd, const char *key, line_fn each, void *ctx)
{
    if (lseek(fd, 0, SEEK_SET) != 0) return -1;
    int dfd = dup(fd);
    gzFile gz = dfd >= 0 ? gzdopen(dfd, "rb") : NULL;
    if (!gz) {
        if (dfd >= 0) close(dfd);
        fprintf(stderr, "loglet archive: cannot read %s: %s\n", key, strerror(errno));
        return -1;
    }
    gzbuffer(gz, 128 * 1024);
    size_t cap = 64 * 1024, len = 0;
    char *line = malloc(cap);
    int rc = 0;
    if (!line) rc = -1;
    for (int ch; rc == 0 && (ch = gzgetc(gz)) != -1;) {
        if (ch == '\n') {
            rc = each(ctx, line, len);
            len = 0;
            continue;
        }
        if (len + 1 >= cap) {
            char *more = realloc(line, cap * 2);
            if (!more) {
                rc = -1;
                break;
            }
            line = more;
            cap *= 2;
        }
        line[len++] = (char)ch;
    }
    int zerr = Z_OK;
    const char *msg = gzerror(gz, &zerr);
    if (rc == 0 && zerr != Z_OK && zerr != Z_STREAM_END) {
        fprintf(stderr, "loglet archive: %s is not a valid gzip object: %s\n", key, msg);
        rc = -1;
    }
    if (rc == 0 && len) rc = each(ctx, line, len); /* a last record without its newline */
    free(line);
    gzclose(gz);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Indexes                                                                  */

struct indexes {
    struct pod_index *pods;
    size_t n, cap;
};

static struct pod_index *index_for(struct indexes *ix, const char *ns, const char *pod)
{
    for (size_t i = 0; i < ix->n; i++)
        if (strcmp(ix->pods[i].namespace_, ns) == 0 && strcmp(ix->pods[i].pod, pod) == 0) return &ix->pods[i];
    if (ix->n == ix->cap) {
        size_t c = ix->cap ? ix->cap * 2 : 16;
        struct pod_index *more = realloc(ix->pods, c * sizeof *more);
        if (!more) return NULL;
        ix->pods = more;
        ix->cap = c;
    }
    struct pod_index *p = &ix->pods[ix->n];
    char key[1024];
    snprintf(key, sizeof key, "metadata/%s_%s.json", ns, pod);
    p->key = strdup(key);
    p->namespace_ = strdup(ns);
    p->pod = strdup(pod);
    p->root = json_pack("{s:i, s:s, s:s, s:[]}", "version", 1, "namespace", ns, "pod", pod, "objects");
    p->dirty = false;
    if (!p->key || !p->namespace_ || !p->pod || !p->root) return NULL;
    ix->n++;
    return p;
}

static void indexes_free(struct indexes *ix)
{
    for (size_t i = 0; i < ix->n; i++) {
        free(ix->pods[i].key);
        free(ix->pods[i].namespace_);
        free(ix->pods[i].pod);
        json_decref(ix->pods[i].root);
    }
    free(ix->pods);
}

static int load_indexes(struct archive_store *st, const struct listing *l, struct indexes *ix)
{
    for (size_t i = 0; i < l->nindexes; i++) {
        struct archive_outcome o;
        int fd = fetch(st, l->indexes[i], &o);
        if (fd < 0) {
            if (o.result == ARCHIVE_NOT_FOUND) continue;
            fprintf(stderr, "loglet archive: cannot read the index %s: %s\n", l->indexes[i], o.detail);
            return -1;
        }
        lseek(fd, 0, SEEK_SET);
        FILE *f = fdopen(fd, "r");
        json_error_t jerr;
        json_t *root = f ? json_loadf(f, 0, &jerr) : NULL;
        if (f) fclose(f);
        else close(fd);
        const char *ns = root ? json_string_value(json_object_get(root, "namespace")) : NULL;
        const char *pod = root ? json_string_value(json_object_get(root, "pod")) : NULL;
        if (!root || !ns || !pod || !json_is_array(json_object_get(root, "objects"))) {
            fprintf(stderr, "loglet archive: the index %s is not valid%s%s (line %d); refusing to go on without it\n",
                    l->indexes[i], root ? "" : ": ", root ? "" : jerr.text, root ? 0 : jerr.line);
            json_decref(root);
            return -1;
        }
        struct pod_index *p = index_for(ix, ns, pod);
        if (!p) {
            json_decref(root);
            return -1;
        }
        json_decref(p->root);
        p->root = root;
    }
    return 0;
}

static int save_index(struct archive_store *st, struct pod_index *p)
{
    char *text = json_dumps(p->root, JSON_INDENT(1) | JSON_SORT_KEYS);
    FILE *tmp = text ? tmpfile() : NULL;
    int rc = -1;
    if (tmp && fputs(text, tmp) >= 0 && fflush(tmp) == 0) {
        struct archive_outcome o;
        rc = put_fd(st, p->key, fileno(tmp), &o);
        if (rc != 0) fprintf(stderr, "loglet archive: cannot write the index %s: %s\n", p->key, o.detail);
    } else {
        fprintf(stderr, "loglet archive: cannot prepare the index %s: %s\n", p->key, strerror(errno));
    }
    if (tmp) fclose(tmp);
    free(text);
    if (rc == 0) p->dirty = false;
    return rc;
}

static const char *entry_str(json_t *e, const char *name)
{
    const char *v = json_string_value(json_object_get(e, name));
    return v ? v : "";
}

/* Marks the raw objects the listed (present) compacted objects replace. */
static void mark_covered(struct listing *l, struct indexes *ix)
{
    for (size_t i = 0; i < ix->n; i++) {
        json_t *objs = json_object_get(ix->pods[i].root, "objects"), *e;
        size_t j;
        json_array_foreach(objs, j, e) {
            if (!listed_compacted(l, entry_str(e, "key"))) continue;
            json_t *srcs = json_object_get(e, "sources"), *s;
            size_t k;
            json_array_foreach(srcs, k, s) {
                const char *key = json_string_value(s);
                for (size_t r = 0; key && r < l->nraws; r++)
                    if (strcmp(l->raws[r].key, key) == 0) l->raws[r].covered = true;
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* cat                                                                      */

static bool pod_of_job(const char *pod, const char *job)
{
    /* A Job's pods are named "{job}-{5 random characters}". */
    size_t n = strlen(job), p = strlen(pod);
    if (p != n + 6 || strncmp(pod, job, n) != 0 || pod[n] != '-') return false;
    for (size_t i = n + 1; i < p; i++)
        if (!((pod[i] >= 'a' && pod[i] <= 'z') || (pod[i] >= '0' && pod[i] <= '9'))) return false;
    return true;
}

static bool selected(const struct opts *op, const char *ns, const char *pod, const char *container)
{
    if (op->namespace_ && strcmp(op->namespace_, ns) != 0) return false;
    if (op->pod && strcmp(op->pod, pod) != 0) return false;
    if (op->container && strcmp(op->container, container) != 0) return false;
    if (op->job && !pod_of_job(pod, op->job)) return false;
    return true;
}

/* Whether an object whose first line is on `date` at `hour` (-1: some hour
 * of that day) can hold lines between since and until. Objects span at most
 * their flush_interval, so a day (or an hour) of slack is plenty. */
static bool may_overlap(const struct opts *op, const char *date, int hour)
{
    struct tm tm = {0};
    if (sscanf(date, "%d-%d-%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday) != 3) return true;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    tm.tm_hour = hour < 0 ? 0 : hour;
    const int64_t start = (int64_t)timegm(&tm) * 1000000000LL;
    const int64_t span = (hour < 0 ? 2 * 86400LL : 2 * 3600LL) * 1000000000LL;
    if (op->until_ns && start > op->until_ns) return false;
    if (op->since_ns && start + span < op->since_ns) return false;
    return true;
}

struct rec {
    int64_t ts;
    uint64_t seq;
    uint32_t source; /* the object it came from: index into names and read_keys */
    size_t off, len;
};

struct gather {
    const struct opts *op;
    struct rec *recs;
    size_t n, cap;
    char *text;
    size_t text_len, text_cap;
    uint32_t source;
    uint64_t seq;
    /* A record of partial (P) pieces being read: recs[n - 1] (or skipped,
     * outside --since/--until), until its F piece or the object's end. */
    bool partial, partial_skipped;
};

static int add_text(struct gather *g, const char *data, size_t len)
{
    if (g->text_len + len > g->text_cap) {
        size_t c = g->text_cap ? g->text_cap : 1 << 20;
        while (c < g->text_len + len) c *= 2;
        char *more = realloc(g->text, c);
        if (!more) return -1;
        g->text = more;
        g->text_cap = c;
    }
    memcpy(g->text + g->text_len, data, len);
    g->text_len += len;
    return 0;
}

/* A record's pieces are kept as stored, one after the other with a '\n'
 * between them: one rec, printed as one record in time order. */
static int gather_line(void *ctx, const char *line, size_t len)
{
    struct gather *g = ctx;
    size_t content;
    const char tag = cri_tag(line, len, &content);
    const bool continues = g->partial;
    g->partial = tag == 'P';
    if (continues) {
        if (!g->partial_skipped) {
            if (add_text(g, "\n", 1) != 0 || add_text(g, line, len) != 0) return -1;
            g->recs[g->n - 1].len += 1 + len;
        }
        if (!g->partial) g->partial_skipped = false;
        return 0;
    }
    int64_t ts = 0;
    if (!record_ts(line, len, &ts)) ts = 0; /* kept, first in order */
    g->partial_skipped = (g->op->since_ns && ts < g->op->since_ns) || (g->op->until_ns && ts >= g->op->until_ns);
    if (g->partial_skipped) {
        if (!g->partial) g->partial_skipped = false;
        return 0;
    }
    if (g->n == g->cap) {
        size_t c = g->cap ? g->cap * 2 : 4096;
        struct rec *more = realloc(g->recs, c * sizeof *more);
        if (!more) return -1;
        g->recs = more;
        g->cap = c;
    }
    const size_t off = g->text_len;
    if (add_text(g, line, len) != 0) return -1;
    g->recs[g->n++] = (struct rec){ts, g->seq++, g->source, off, len};
    return 0;
}

static int cmp_rec(const void *a, const void *b)
{
    const struct rec *x = a, *y = b;
    if (x->ts != y->ts) return x->ts < y->ts ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int read_into(struct archive_store *st, const char *key, struct gather *g)
{
    struct archive_outcome o;
    int fd = fetch(st, key, &o);
    if (fd < 0) {
        if (o.result == ARCHIVE_NOT_FOUND) return 1; /* gone since the listing: the caller finds where */
        fprintf(stderr, "loglet archive: cannot read %s: %s\n", key, o.detail);
        return -1;
    }
    int rc = each_line(fd, key, gather_line, g);
    /* An object never ends inside a record (the agent writes a record's
     * pieces together); if one does, what came is a record of its own. */
    g->partial = g->partial_skipped = false;
    close(fd);
    return rc;
}

/* Merged objects cat read late: a raw object it had listed was gone when
 * fetched (compacted, and its sources deleted, meanwhile). The store is
 * listed and the indexes read again once; a merged object that lists the
 * raw key as a source is read instead, and every raw object it replaces is
 * then skipped (or its records dropped, if already read). */
struct late {
    bool relisted;
    struct listing l;
    struct indexes ix;
    char **sources; /* raw keys the merged objects read late replace */
    size_t nsources, sources_cap;
    char **merged; /* the merged objects read late */
    size_t nmerged, merged_cap;
    uint32_t *objects; /* their source numbers (struct rec.source) */
    size_t nobjects, objects_cap;
};

static bool in_list(char **arr, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(arr[i], key) == 0) return true;
    return false;
}

static bool superseded(const struct late *t, const char *key) { return in_list(t->sources, t->nsources, key); }

static bool late_source(const struct late *t, uint32_t source)
{
    for (size_t i = 0; i < t->nobjects; i++)
        if (t->objects[i] == source) return true;
    return false;
}

static void late_free(struct late *t)
{
    if (t->relisted) {
        indexes_free(&t->ix);
        listing_free(&t->l);
    }
    for (size_t i = 0; i < t->nsources; i++) free(t->sources[i]);
    for (size_t i = 0; i < t->nmerged; i++) free(t->merged[i]);
    free(t->sources);
    free(t->merged);
    free(t->objects);
}

static int read_merged_instead(struct archive_store *st, const struct opts *op, const char *raw, struct late *t,
                               struct gather *g, char ***names, size_t *nnames, size_t *names_cap, char ***read_keys,
                               size_t *nread_keys, size_t *read_keys_cap)
{
    if (!t->relisted) {
        t->relisted = true;
        t->l.key_format = op->key_format;
        if (list_all(st, &t->l) != 0 || load_indexes(st, &t->l, &t->ix) != 0) return -1;
    }
    for (size_t i = 0; i < t->ix.n; i++) {
        json_t *objs = json_object_get(t->ix.pods[i].root, "objects"), *e;
        size_t j;
        json_array_foreach(objs, j, e) {
            const char *key = entry_str(e, "key");
            if (!listed_compacted(&t->l, key)) continue;
            json_t *srcs = json_object_get(e, "sources"), *src;
            size_t k;
            bool lists_raw = false;
            json_array_foreach(srcs, k, src) if (json_string_value(src) && strcmp(json_string_value(src), raw) == 0)
                lists_raw = true;
            if (!lists_raw) continue;
            if (in_list(t->merged, t->nmerged, key)) return 0; /* read already, for another of its sources */
            json_array_foreach(srcs, k, src) {
                if (json_string_value(src) &&
                    push_str(&t->sources, &t->nsources, &t->sources_cap, json_string_value(src)) != 0)
                    return -1;
            }
            char name[1024];
            snprintf(name, sizeof name, "%s/%s/%s", t->ix.pods[i].namespace_, t->ix.pods[i].pod,
                     entry_str(e, "container"));
            if (push_str(&t->merged, &t->nmerged, &t->merged_cap, key) != 0 ||
                push_str(names, nnames, names_cap, name) != 0 || push_str(read_keys, nread_keys, read_keys_cap, key))
                return -1;
            if (t->nobjects == t->objects_cap) {
                size_t c = t->objects_cap ? t->objects_cap * 2 : 8;
                uint32_t *more = realloc(t->objects, c * sizeof *more);
                if (!more) return -1;
                t->objects = more;
                t->objects_cap = c;
            }
            t->objects[t->nobjects++] = g->source = (uint32_t)(*nnames - 1);
            const int got = read_into(st, key, g);
            if (got == 1) fprintf(stderr, "loglet archive: the merged object %s is gone since the listing\n", key);
            return got == 0 ? 0 : -1;
        }
    }
    fprintf(stderr,
            "loglet archive: %s was listed but is gone, and no merged object in the indexes lists it: the archive "
            "changed under the reader (objects deleted by hand, or compactions faster than --delete-after); "
            "nothing printed, run it again\n",
            raw);
    return -1;
}

static int cmd_cat(struct archive_store *st, const struct opts *op)
{
    struct listing l = {.key_format = op->key_format};
    struct indexes ix = {0};
    struct gather g = {.op = op};
    struct late late = {0};
    char **names = NULL, **read_keys = NULL;
    size_t nnames = 0, names_cap = 0, nread_keys = 0, read_keys_cap = 0;
    int rc = -1;
    if (list_all(st, &l) != 0 || load_indexes(st, &l, &ix) != 0) goto done;
    mark_covered(&l, &ix);
    for (size_t i = 0; i < ix.n; i++) {
        json_t *objs = json_object_get(ix.pods[i].root, "objects"), *e;
        size_t j;
        json_array_foreach(objs, j, e) {
            const char *key = entry_str(e, "key");
            if (!listed_compacted(&l, key)) continue;
            if (!selected(op, ix.pods[i].namespace_, ix.pods[i].pod, entry_str(e, "container"))) continue;
            if (!may_overlap(op, entry_str(e, "date"), atoi(entry_str(e, "hour")))) continue;
            char name[1024];
            snprintf(name, sizeof name, "%s/%s/%s", ix.pods[i].namespace_, ix.pods[i].pod, entry_str(e, "container"));
            if (push_str(&names, &nnames, &names_cap, name) != 0 ||
                push_str(&read_keys, &nread_keys, &read_keys_cap, key) != 0)
                goto done;
            g.source = (uint32_t)(nnames - 1);
            const int got = read_into(st, key, &g);
            if (got == 1) /* listed and indexed, then gone: not what compaction does */
                fprintf(stderr, "loglet archive: the merged object %s is gone since the listing\n", key);
            if (got != 0) goto done;
        }
    }
    for (size_t i = 0; i < l.nraws; i++) {
        const struct raw *r = &l.raws[i];
        if (r->covered || !selected(op, r->k.namespace_, r->k.pod, r->k.container)) continue;
        if (r->k.date[0] && !may_overlap(op, r->k.date, r->k.hour[0] ? atoi(r->k.hour) : -1)) continue;
        if (superseded(&late, r->key)) continue; /* its lines came with a merged object read late */
        char name[1024];
        snprintf(name, sizeof name, "%s/%s/%s", r->k.namespace_, r->k.pod, r->k.container);
        if (push_str(&names, &nnames, &names_cap, name) != 0 ||
            push_str(&read_keys, &nread_keys, &read_keys_cap, r->key) != 0)
            goto done;
        g.source = (uint32_t)(nnames - 1);
        const int got = read_into(st, r->key, &g);
        if (got < 0) goto done;
        if (got == 1 && read_merged_instead(st, op, r->key, &late, &g, &names, &nnames, &names_cap, &read_keys,
                                            &nread_keys, &read_keys_cap) != 0)
            goto done;
    }
    /* Records of raw objects a merged object read late holds again. */
    size_t kept = 0;
    for (size_t i = 0; i < g.n; i++)
        if (!superseded(&late, read_keys[g.recs[i].source]) || late_source(&late, g.recs[i].source))
            g.recs[kept++] = g.recs[i];
    g.n = kept;
    if (g.n) qsort(g.recs, g.n, sizeof *g.recs, cmp_rec);
    for (size_t i = 0; i < g.n; i++) {
        const struct rec *r = &g.recs[i];
        const char *line = g.text + r->off;
        if (op->cri || (r->len && line[0] == '{')) { /* as stored; a json-format record says it all */
            fwrite(line, 1, r->len, stdout);
        } else {
            /* "TIME NAMESPACE/POD/CONTAINER STREAM CONTENT", as the agent's
             * stdout text; a record of pieces prints its lines joined back. */
            const char *sp = memchr(line, ' ', r->len);
            size_t tlen = sp ? (size_t)(sp - line) : 0;
            fwrite(line, 1, tlen, stdout);
            fprintf(stdout, " %s", names[r->source]);
            for (size_t at = 0, piece = 0; at < r->len; piece++) {
                const char *nl = memchr(line + at, '\n', r->len - at);
                const size_t plen = nl ? (size_t)(nl - line) - at : r->len - at;
                const char *p = line + at;
                size_t content;
                const char tag = cri_tag(p, plen, &content);
                if (piece > 0) fputc('\n', stdout);
                if (tag && piece == 0) { /* " stdout F x" -> " stdout x" */
                    const char *stream = (const char *)memchr(p, ' ', plen) + 1;
                    const char *stream_end = memchr(stream, ' ', (size_t)(p + plen - stream));
                    fputc(' ', stdout);
                    fwrite(stream, 1, (size_t)(stream_end - stream), stdout);
                    fputc(' ', stdout);
                    fwrite(p + content, 1, plen - content, stdout);
                } else if (tag) {
                    fwrite(p + content, 1, plen - content, stdout);
                } else {
                    fwrite(piece == 0 ? p + tlen : p, 1, piece == 0 ? plen - tlen : plen, stdout);
                }
                at += plen + 1;
            }
        }
        fputc('\n', stdout);
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "loglet archive: cannot write to stdout: %s\n", strerror(errno));
        goto done;
    }
    rc = 0;
done:
    for (size_t i = 0; i < nnames; i++) free(names[i]);
    free(names);
    for (size_t i = 0; i < nread_keys; i++) free(read_keys[i]);
    free(read_keys);
    late_free(&late);
    free(g.recs);
    free(g.text);
    indexes_free(&ix);
    listing_free(&l);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* compact                                                                  */

struct first_line {
    int64_t ts;
    bool found;
};

static int take_first(void *ctx, const char *line, size_t len)
{
    struct first_line *f = ctx;
    f->found = record_ts(line, len, &f->ts);
    return 1; /* stop */
}

struct merge {
    gzFile out;
    uint64_t lines;
};

static int merge_line(void *ctx, const char *line, size_t len)
{
    struct merge *m = ctx;
    if ((len && gzwrite(m->out, line, (unsigned)len) != (int)len) || gzputc(m->out, '\n') != '\n') return -1;
    size_t content;
    if (cri_tag(line, len, &content) != 'P') m->lines++; /* records: a P piece's record ends further on */
    return 0;
}

static bool entry_key_taken(struct pod_index *p, const char *key)
{
    json_t *objs = json_object_get(p->root, "objects"), *e;
    size_t j;
    json_array_foreach(objs, j, e) if (strcmp(entry_str(e, "key"), key) == 0) return true;
    return false;
}

static bool same_container(const struct raw *a, const struct raw *b)
{
    return strcmp(a->k.namespace_, b->k.namespace_) == 0 && strcmp(a->k.pod, b->k.pod) == 0 &&
           strcmp(a->k.container, b->k.container) == 0 && strcmp(a->k.container_id, b->k.container_id) == 0;
}

/* Merges raws[group[0..n)] (one container, one hour, in index order). */
static int merge_group(struct archive_store *st, struct indexes *ix, struct raw *raws, const int *fds,
                       const size_t *group, size_t n_group, const char *date, int hour, int64_t run,
                       int64_t delete_after_ms)
{
    const struct raw *first = &raws[group[0]];
    struct pod_index *p = index_for(ix, first->k.namespace_, first->k.pod);
    if (!p) return -1;
    char key[1024];
    for (int n = 0;; n++) {
        if (n == 0)
            snprintf(key, sizeof key, "data/%s/%s/%s/%s_%02d.gz", first->k.namespace_, first->k.pod,
                     first->k.container_id, date, hour);
        else
            snprintf(key, sizeof key, "data/%s/%s/%s/%s_%02d.%d.gz", first->k.namespace_, first->k.pod,
                     first->k.container_id, date, hour, n);
        if (!entry_key_taken(p, key)) break;
    }
    FILE *tmp = tmpfile();
    int tfd = tmp ? dup(fileno(tmp)) : -1;
    if (tmp) fclose(tmp);
    gzFile out = tfd >= 0 ? gzdopen(dup(tfd), "wb6") : NULL;
    if (!out) {
        fprintf(stderr, "loglet archive: cannot create a temporary file for %s: %s\n", key, strerror(errno));
        if (tfd >= 0) close(tfd);
        return -1;
    }
    struct merge m = {out, 0};
    json_t *sources = json_array();
    int rc = sources ? 0 : -1;
    for (size_t g = 0; rc == 0 && g < n_group; g++) {
        const size_t i = group[g];
        rc = each_line(fds[i], raws[i].key, merge_line, &m);
        if (rc == 0 && json_array_append_new(sources, json_string(raws[i].key)) != 0) rc = -1;
    }
    if (gzclose(out) != Z_OK) rc = -1;
    struct archive_outcome o;
    if (rc == 0 && put_fd(st, key, tfd, &o) != 0) {
        fprintf(stderr, "loglet archive: cannot store %s: %s\n", key, o.detail);
        rc = -1;
    }
    close(tfd);
    if (rc != 0) {
        json_decref(sources);
        return -1;
    }
    char hh[8];
    snprintf(hh, sizeof hh, "%02d", hour);
    json_t *e = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:o, s:I, s:I, s:b}", "key", key, "container",
                          first->k.container, "container_id", first->k.container_id, "date", date, "hour", hh,
                          "lines", (json_int_t)m.lines, "sources", sources, "run", (json_int_t)run,
                          "delete_after", (json_int_t)(run + delete_after_ms), "sources_deleted", 0);
    if (!e || json_array_append_new(json_object_get(p->root, "objects"), e) != 0) return -1;
    /* Listed from here on: readers skip its sources. */
    if (save_index(st, p) != 0) return -1;
    fprintf(stderr, "loglet archive: merged %zu objects (%llu lines) into %s\n", n_group,
            (unsigned long long)m.lines, key);
    return 0;
}

static int cmd_compact(struct archive_store *st, const struct opts *op)
{
    const int64_t run = now_ns() / 1000000;
    struct listing l = {.key_format = op->key_format};
    struct indexes ix = {0};
    int *fds = NULL;
    int64_t *first_ts = NULL;
    size_t *group = NULL;
    int rc = -1;
    if (list_all(st, &l) != 0 || load_indexes(st, &l, &ix) != 0) goto done;
    mark_covered(&l, &ix);
    /* 1. Sources of entries an earlier run listed at least delete_after
     * ago (recorded in the entry): a reader that listed them before the
     * merge has read them by then. A later run alone is not enough: two
     * runs in a row (an interrupted one run again) would delete what a
     * reader still in its listing is about to fetch. */
    for (size_t i = 0; i < ix.n; i++) {
        json_t *objs = json_object_get(ix.pods[i].root, "objects"), *e;
        size_t j;
        json_array_foreach(objs, j, e) {
            if (json_is_true(json_object_get(e, "sources_deleted"))) continue;
            const int64_t merged = json_integer_value(json_object_get(e, "run"));
            json_t *after = json_object_get(e, "delete_after");
            if (merged >= run) continue;
            if (run < (json_is_integer(after) ? json_integer_value(after) : merged + op->delete_after_ms)) continue;
            if (!listed_compacted(&l, entry_str(e, "key"))) continue; /* never delete what nothing replaces */
            json_t *srcs = json_object_get(e, "sources"), *s;
            size_t k;
            bool all = true;
            json_array_foreach(srcs, k, s) {
                struct archive_outcome o;
                archive_store_delete(st, json_string_value(s), &o);
                if (o.result != ARCHIVE_OK && o.result != ARCHIVE_NOT_FOUND) {
                    fprintf(stderr, "loglet archive: cannot delete %s: %s (the next run tries again)\n",
                            json_string_value(s), o.detail);
                    all = false;
                }
            }
            if (all) {
                json_object_set_new(e, "sources_deleted", json_true());
                ix.pods[i].dirty = true;
            }
        }
        if (ix.pods[i].dirty && save_index(st, &ix.pods[i]) != 0) goto done;
    }
    /* 2. Merge each container's raw objects per hour of their first line. */
    fds = calloc(l.nraws ? l.nraws : 1, sizeof *fds);
    first_ts = calloc(l.nraws ? l.nraws : 1, sizeof *first_ts);
    if (!fds || !first_ts) goto done;
    for (size_t i = 0; i < l.nraws; i++) fds[i] = -1;
    const int64_t cutoff_ns = now_ns() - op->older_than_ms * 1000000LL;
    for (size_t i = 0; i < l.nraws; i++) {
        struct raw *r = &l.raws[i];
        if (r->covered) continue;
        struct archive_outcome o;
        fds[i] = fetch(st, r->key, &o);
        if (fds[i] < 0) {
            if (o.result == ARCHIVE_NOT_FOUND) continue;
            fprintf(stderr, "loglet archive: cannot read %s: %s\n", r->key, o.detail);
            goto done;
        }
        struct first_line f = {0, false};
        if (each_line(fds[i], r->key, take_first, &f) < 0 || !f.found) {
            fprintf(stderr, "loglet archive: %s has no readable first record; left as it is\n", r->key);
            close(fds[i]);
            fds[i] = -1;
            continue;
        }
        first_ts[i] = f.ts;
    }
    group = calloc(l.nraws ? l.nraws : 1, sizeof *group);
    if (!group) goto done;
    for (size_t i = 0; i < l.nraws;) {
        if (fds[i] < 0) {
            i++;
            continue;
        }
        /* One container's objects (in index order) whose first line is in
         * the same hour; objects not read (covered, unreadable) are skipped. */
        const int64_t hour_start = first_ts[i] / 3600000000000LL * 3600000000000LL;
        size_t n = 0, j = i;
        for (; j < l.nraws && same_container(&l.raws[i], &l.raws[j]); j++) {
            if (fds[j] < 0) continue;
            if (first_ts[j] / 3600000000000LL * 3600000000000LL != hour_start) break;
            group[n++] = j;
        }
        if (hour_start + 3600000000000LL <= cutoff_ns) {
            const time_t secs = (time_t)(hour_start / 1000000000LL);
            struct tm tm;
            gmtime_r(&secs, &tm);
            char date[32];
            snprintf(date, sizeof date, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
            if (merge_group(st, &ix, l.raws, fds, group, n, date, tm.tm_hour, run, op->delete_after_ms) != 0) goto done;
        }
        i = j; /* the container's next hour, or the next container */
    }
    rc = 0;
done:
    for (size_t i = 0; fds && i < l.nraws; i++)
        if (fds[i] >= 0) close(fds[i]);
    free(fds);
    free(first_ts);
    free(group);
    indexes_free(&ix);
    listing_free(&l);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Flags                                                                    */

static int parse_time(const char *text, int64_t *ns)
{
    int64_t ms;
    if (config_parse_duration_ms(text, &ms) == 0) { /* relative: "2h" is two hours ago */
        *ns = now_ns() - ms * 1000000LL;
        return 0;
    }
    return parser_rfc3339(text, strlen(text), ns);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: loglet archive cat     [--config FILE | --url URL [store flags]] [--namespace NS] [--pod POD]\n"
            "                              [--container NAME] [--job JOB] [--since T] [--until T] [--cri]\n"
            "       loglet archive compact [--config FILE | --url URL [store flags]] --older-than DURATION\n"
            "                              [--delete-after DURATION (10m): raw objects go once merged this long ago]\n"
            "store flags: --endpoint URL --region R --addressing auto|path|virtual --access-key-id-file F\n"
            "             --secret-access-key-file F --session-token-file F --tls-ca-file F --key-format FMT\n"
            "  (default: the agent's output.archive settings from --config; credentials else from AWS_*)\n"
            "T: RFC 3339 (2026-01-02T15:04:05Z) or a duration ago (90m, 2h)\n");
}

int archive_cli_main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "cat") != 0 && strcmp(argv[1], "compact") != 0)) {
        usage(argc >= 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
        return 2;
    }
    const bool cat = strcmp(argv[1], "cat") == 0;
    struct config cfg;
    char err[1024];
    if (config_init(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "loglet archive: %s\n", err);
        config_free(&cfg);
        return 1;
    }
    struct opts op = {.delete_after_ms = 10 * 60 * 1000};
    const char *config_path = NULL;
    static const struct option longs[] = {
        {"config", required_argument, NULL, 'c'},       {"url", required_argument, NULL, 'u'},
        {"endpoint", required_argument, NULL, 'e'},     {"region", required_argument, NULL, 'r'},
        {"addressing", required_argument, NULL, 'a'},   {"access-key-id-file", required_argument, NULL, 'k'},
        {"secret-access-key-file", required_argument, NULL, 's'},
        {"session-token-file", required_argument, NULL, 't'},
        {"tls-ca-file", required_argument, NULL, 'C'},  {"key-format", required_argument, NULL, 'f'},
        {"namespace", required_argument, NULL, 'n'},    {"pod", required_argument, NULL, 'p'},
        {"container", required_argument, NULL, 'o'},    {"job", required_argument, NULL, 'j'},
        {"since", required_argument, NULL, 'S'},        {"until", required_argument, NULL, 'U'},
        {"older-than", required_argument, NULL, 'O'},   {"cri", no_argument, NULL, 'R'},
        {"delete-after", required_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},               {NULL, 0, NULL, 0},
    };
    /* The flags are read twice: --config first (its values are the defaults). */
    for (int i = 2; i + 1 < argc; i++)
        if (strcmp(argv[i], "--config") == 0) config_path = argv[i + 1];
    if (config_path && config_load(&cfg, config_path, err, sizeof err) != 0) {
        fprintf(stderr, "loglet archive: invalid configuration: %s\n", err);
        config_free(&cfg);
        return 1;
    }
    archive_store_options_from_config(&op.store, &cfg);
    op.key_format = cfg.output.archive.key_format;
    bool have_older = false;
    int rc = 0;
    optind = 2;
    for (int c; rc == 0 && (c = getopt_long(argc, argv, "", longs, NULL)) != -1;) {
        switch (c) {
        case 'c': break;
        case 'u': op.store.url = optarg; break;
        case 'e': op.store.endpoint = optarg; break;
        case 'r': op.store.region = optarg; break;
        case 'a':
            if (strcmp(optarg, "path") == 0) op.store.addressing = CONFIG_ADDRESSING_PATH;
            else if (strcmp(optarg, "virtual") == 0) op.store.addressing = CONFIG_ADDRESSING_VIRTUAL;
            else if (strcmp(optarg, "auto") == 0) op.store.addressing = CONFIG_ADDRESSING_AUTO;
            else {
                fprintf(stderr, "loglet archive: --addressing must be auto, path or virtual, not '%s'\n", optarg);
                rc = 2;
            }
            break;
        case 'k': op.store.access_key_id_file = optarg; break;
        case 's': op.store.secret_access_key_file = optarg; break;
        case 't': op.store.session_token_file = optarg; break;
        case 'C': op.store.tls_ca_file = optarg; break;
        case 'f': op.key_format = optarg; break;
        case 'n': op.namespace_ = optarg; break;
        case 'p': op.pod = optarg; break;
        case 'o': op.container = optarg; break;
        case 'j': op.job = optarg; break;
        case 'S':
        case 'U':
            if (parse_time(optarg, c == 'S' ? &op.since_ns : &op.until_ns) != 0) {
                fprintf(stderr, "loglet archive: --%s '%s' is neither RFC 3339 nor a duration\n",
                        c == 'S' ? "since" : "until", optarg);
                rc = 2;
            }
            break;
        case 'O':
            if (config_parse_duration_ms(optarg, &op.older_than_ms) != 0) {
                fprintf(stderr, "loglet archive: --older-than '%s' is not a duration (90m, 1h)\n", optarg);
                rc = 2;
            }
            have_older = true;
            break;
        case 'R': op.cri = true; break;
        case 'D':
            if (config_parse_duration_ms(optarg, &op.delete_after_ms) != 0) {
                fprintf(stderr, "loglet archive: --delete-after '%s' is not a duration (10m, 0s)\n", optarg);
                rc = 2;
            }
            break;
        case 'h': usage(stdout); config_free(&cfg); return 0;
        default: rc = 2; break;
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf(stderr, "loglet archive: unexpected argument '%s'\n", argv[optind]);
        rc = 2;
    }
    if (rc == 0 && (!op.store.url || !*op.store.url)) {
        fprintf(stderr, "loglet archive: no archive: give --url s3://bucket/prefix or file:///dir, or --config "
                        "with output.archive.url\n");
        rc = 2;
    }
    if (rc == 0 && !cat && !have_older) {
        fprintf(stderr, "loglet archive compact: --older-than is required (e.g. 1h): hours younger than that may "
                        "still get objects\n");
        rc = 2;
    }
    if (rc != 0) {
        usage(stderr);
        config_free(&cfg);
        return rc;
    }
    struct archive_store *st = archive_store_open(&op.store, err, sizeof err);
    if (!st) {
        fprintf(stderr, "loglet archive: %s\n", err);
        config_free(&cfg);
        return 1;
    }
    rc = cat ? cmd_cat(st, &op) : cmd_compact(st, &op);
    archive_store_close(st);
    config_free(&cfg);
    return rc == 0 ? 0 : 1;
}
