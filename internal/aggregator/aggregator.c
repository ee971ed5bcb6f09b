#include "aggregator.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "loki/loki.h"
#include "metrics/metrics.h"
#include "table/table.h"

/* What an entry costs in a batch besides its line: protobuf framing and
 * timestamp, roughly — counted so tiny lines cannot make a batch huge. */
#define ENTRY_OVERHEAD 16

struct batch_entry {
    int64_t ts_ns;
    size_t off; /* line bytes in the arena */
    uint32_t len;
    uint32_t stream;
    uint32_t meta; /* index into metas, or UINT32_MAX */
    /* Structured metadata a pipeline stage added: name NUL value NUL pairs
     * in the arena (xmeta_len 0: none). */
    size_t xmeta_off;
    uint32_t xmeta_len, xmeta_pairs;
};

struct batch_stream {
    const char *labels; /* the source's rendered text */
    size_t count;
    size_t start; /* first of its entries once sorted */
};

/* A chunk's structured metadata: pod uid and container id (with
 * output.loki.structured_metadata), then the provider's pairs
 * (kubernetes.structured_metadata), all NUL-terminated in the arena. */
struct batch_meta {
    bool ids;
    size_t pod_uid_off, container_id_off;
    size_t pairs_off; /* name, value, name, value… */
    uint32_t npairs;
    size_t first_label; /* in meta_labels, set at encoding */
};

/* What a sealed batch keeps while the sender pushes it: its compressed body
 * (in the aggregator's one body buffer) and its acknowledgements. The lines
 * themselves are gone from memory by then: they live in the body. */
struct aggregator_batch_state {
    struct aggregator_ack *acks;
    size_t nacks, acks_cap;
};

/* The batch being filled, and the encoder's scratch: one of each, reused. */
struct fill_state {
    char *arena;
    size_t arena_len, arena_cap;
    struct batch_entry *entries;
    size_t nentries, entries_cap;
    struct batch_stream *streams;
    size_t nstreams, streams_cap;
    struct table by_labels;
    struct batch_meta *metas;
    size_t nmetas, metas_cap;
    /* Encoding views, rebuilt at each seal. */
    struct loki_entry *lentries;
    size_t lentries_cap;
    struct loki_stream *lstreams;
    size_t lstreams_cap;
    struct loki_label *meta_labels;
    size_t meta_labels_cap;
    size_t nxmeta; /* pipeline metadata pairs of all entries */
    /* Label sets a pipeline extended (the source's set plus its labels):
     * owned here, one per distinct set in the batch, freed at fill_clear. */
    char **owned;
    size_t nowned, owned_cap;
    char *merge_buf;
    size_t merge_cap;
    size_t *fill;
    size_t fill_cap;
    size_t size; /* lines + per-entry overhead, against batch_bytes */
    int64_t first_ms;
    int64_t oldest_ns;
};

struct aggregator {
    const struct config *cfg;
    struct aggregator_batch batches[2];
    struct aggregator_batch_state states[2];
    int current;
    struct fill_state fill;
    struct loki_encoder *encoder; /* writes each body into body_buf */
    /* The sealed batch's body. One buffer serves both batches: a seal needs
     * the other batch released (aggregator.h), so two bodies never live at
     * once — a full body less of peak memory than one per batch. */
    uint8_t *body_buf;
    size_t body_cap;
};

/* Grows *array to hold `need` items of `size` bytes (doubling). */
static int reserve(void **array, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    void *grown = realloc(*array, n * size);
    if (!grown) return -1;
    *array = grown;
    *cap = n;
    return 0;
}
#define RESERVE(arr, cap, need) reserve((void **)&(arr), &(cap), (need), sizeof *(arr))

struct aggregator *aggregator_create(const struct config *cfg, char *err, size_t errlen)
{
    struct aggregator *agg = calloc(1, sizeof *agg);
    if (!agg || !(agg->encoder = loki_encoder_create())) {
        snprintf(err, errlen, "out of memory");
        free(agg);
        return NULL;
    }
    agg->cfg = cfg;
    for (int i = 0; i < 2; i++) agg->batches[i].state = &agg->states[i];
    return agg;
}

static void fill_clear(struct fill_state *st)
{
    table_free(&st->by_labels);
    for (size_t i = 0; i < st->nowned; i++) free(st->owned[i]);
    st->nowned = 0;
    st->nstreams = st->nentries = st->nmetas = st->nxmeta = 0;
    st->arena_len = 0;
    st->size = 0;
    st->first_ms = 0;
    st->oldest_ns = 0;
}

void aggregator_destroy(struct aggregator *agg)
{
    if (!agg) return;
    struct fill_state *st = &agg->fill;
    fill_clear(st);
    free(st->arena);
    free(st->entries);
    free(st->streams);
    free(st->metas);
    free(st->lentries);
    free(st->lstreams);
    free(st->meta_labels);
    free(st->owned);
    free(st->merge_buf);
    free(st->fill);
    for (int i = 0; i < 2; i++) {
        free(agg->states[i].acks);
    }
    free(agg->body_buf);
    loki_encoder_destroy(agg->encoder);
    free(agg);
}

struct aggregator_batch *aggregator_current(struct aggregator *agg) { return &agg->batches[agg->current]; }

/* The stream of a label set in the batch being filled. Keyed by the text
 * the source rendered, so two files share a stream exactly when their
 * labels are equal, whatever memory their chunks or sources occupy. The
 * text stays valid while the batch fills: the chunks' sources are held by
 * acknowledgements not yet made. */
static int64_t stream_index(struct aggregator *agg, const char *labels)
{
    struct fill_state *st = &agg->fill;
    size_t idx = (size_t)(uintptr_t)table_get_str(&st->by_labels, labels);
    if (idx) return (int64_t)idx - 1; /* stored +1 so that 0 means absent */
    if (RESERVE(st->streams, st->streams_cap, st->nstreams + 1) != 0) return -1;
    if (table_put_str(&st->by_labels, labels, (void *)(uintptr_t)(st->nstreams + 1)) != 0) return -1;
    st->streams[st->nstreams] = (struct batch_stream){labels, 0, 0};
    return (int64_t)st->nstreams++;
}

/* The stream of a source's label set extended by a pipeline's labels
 * (`a="1", b="2"`, already escaped): the set's text with them before its
 * closing brace. Loki sorts labels itself, and one block always adds them
 * in the same order, so equal sets give equal text. */
/* Whether a rendered label set `{a="1", b="2"}` has a label of this name. */
static bool label_named(const char *set, const char *name, size_t len)
{
    for (const char *p = set; (p = strstr(p, "=\"")); p++) {
        const char *q = p;
        while (q > set && q[-1] != '{' && q[-1] != ' ') q--;
        if ((size_t)(p - q) == len && memcmp(q, name, len) == 0) return true;
    }
    return false;
}

static int64_t merged_stream_index(struct aggregator *agg, const char *base, const char *extra, size_t extra_len)
{
    struct fill_state *st = &agg->fill;
    size_t blen = strlen(base);
    if (blen < 2 || base[blen - 1] != '}') return stream_index(agg, base);
    size_t need = blen + 2 + extra_len + 2;
    if (reserve((void **)&st->merge_buf, &st->merge_cap, need, 1) != 0) return -1;
    char *m = st->merge_buf;
    size_t o = blen - 1;
    memcpy(m, base, o);
    /* A pipeline label the file's own set already has (a Kubernetes label
     * named like an extracted field: `app`, `job`) is left out: Loki refuses
     * a stream with a name twice, and the file's own labels win. */
    size_t kept = 0;
    for (size_t i = 0; i < extra_len;) {
        size_t start = i, name_end;
        while (i < extra_len && extra[i] != '=') i++;
        name_end = i;
        if (i + 1 < extra_len && extra[i + 1] == '"') i += 2;
        while (i < extra_len && extra[i] != '"') i += extra[i] == '\\' ? 2 : 1;
        if (i < extra_len) i++; /* the closing quote */
        if (i > extra_len) i = extra_len; /* a trailing backslash */
        size_t item_end = i;
        while (i < extra_len && (extra[i] == ',' || extra[i] == ' ')) i++;
        if (label_named(base, extra + start, name_end - start)) continue;
        if (kept || blen > 2) {
            memcpy(m + o, ", ", 2);
            o += 2;
        }
        memcpy(m + o, extra + start, item_end - start);
        o += item_end - start;
        kept++;
    }
    m[o++] = '}';
    m[o] = '\0';
    size_t idx = (size_t)(uintptr_t)table_get_str(&st->by_labels, m);
    if (idx) return (int64_t)idx - 1;
    if (RESERVE(st->owned, st->owned_cap, st->nowned + 1) != 0) return -1;
    char *copy = strdup(m);
    if (!copy) return -1;
    st->owned[st->nowned++] = copy;
    return stream_index(agg, copy);
}

static int arena_put(struct fill_state *st, const void *data, size_t len, size_t *off)
{
    if (reserve((void **)&st->arena, &st->arena_cap, st->arena_len + len, 1) != 0) return -1;
    memcpy(st->arena + st->arena_len, data, len);
    *off = st->arena_len;
    st->arena_len += len;
    return 0;
}

static uint32_t chunk_meta(struct aggregator *agg, const struct source *src)
{
    struct fill_state *st = &agg->fill;
    bool ids = agg->cfg->output.loki.structured_metadata;
    size_t npairs = src->extra ? src->extra->nstructured : 0;
    if (!ids && !npairs) return UINT32_MAX;
    if (RESERVE(st->metas, st->metas_cap, st->nmetas + 1) != 0) return UINT32_MAX;
    struct batch_meta *meta = &st->metas[st->nmetas];
    *meta = (struct batch_meta){.ids = ids, .npairs = (uint32_t)npairs, .pairs_off = st->arena_len};
    if (ids && (arena_put(st, src->meta.pod_uid, strlen(src->meta.pod_uid) + 1, &meta->pod_uid_off) != 0 ||
                arena_put(st, src->meta.container_id, strlen(src->meta.container_id) + 1, &meta->container_id_off) != 0))
        return UINT32_MAX;
    meta->pairs_off = st->arena_len;
    for (size_t i = 0; i < npairs; i++) {
        const struct loki_label *l = &src->extra->structured[i];
        size_t off;
        if (arena_put(st, l->name, strlen(l->name) + 1, &off) != 0 ||
            arena_put(st, l->value, strlen(l->value) + 1, &off) != 0)
            return UINT32_MAX;
    }
    return (uint32_t)st->nmetas++;
}

bool aggregator_add(struct aggregator *agg, const struct source_chunk *chunk, const struct source_record **next,
                    uint32_t *done)
{
    struct fill_state *st = &agg->fill;
    struct aggregator_batch_state *slot = &agg->states[agg->current];
    size_t limit = (size_t)agg->cfg->output.loki.batch_bytes;
    if (!*next) {
        *next = source_chunk_first(chunk);
        *done = 0;
    }
    /* Stream indexes of this call only: a batch boundary or another chunk
     * starts afresh, so nothing outlives the batch it was looked up in. */
    int64_t stream_of[SOURCE_STREAM_KINDS] = {-1, -1, -1};
    /* Label sets a pipeline extended, seen in this call: a file's entries
     * use a handful (a level label's values), so most lines find theirs
     * here without rendering the set and hashing it. */
    struct {
        unsigned kind;
        const char *labels;
        size_t len;
        int64_t stream;
    } seen[8];
    size_t nseen = 0, next_seen = 0;
    uint32_t meta = chunk->records > *done ? chunk_meta(agg, chunk->source) : UINT32_MAX;
    const struct source_record *rec = *next;
    for (; *done < chunk->records; (*done)++, rec = source_record_next(rec)) {
        size_t cost = rec->len + ENTRY_OVERHEAD;
        if (st->nentries && st->size + cost > limit) {
            *next = rec;
            return false;
        }
        unsigned kind = rec->stream < SOURCE_STREAM_KINDS ? rec->stream : PARSER_STREAM_UNKNOWN;
        if (stream_of[kind] < 0) stream_of[kind] = stream_index(agg, source_stream_labels(chunk->source, kind));
        int64_t stream = stream_of[kind];
        const char *xlabels = NULL, *xmeta = NULL;
        size_t xlabels_len = 0, xmeta_len = 0, xmeta_off = 0;
        if (rec->extra_len) {
            source_record_extras(rec, &xlabels, &xlabels_len, &xmeta, &xmeta_len);
            if (xlabels_len) {
                stream = -1;
                for (size_t k = 0; k < nseen && stream < 0; k++)
                    if (seen[k].kind == kind && seen[k].len == xlabels_len && memcmp(seen[k].labels, xlabels, xlabels_len) == 0)
                        stream = seen[k].stream;
                if (stream < 0) {
                    stream = merged_stream_index(agg, source_stream_labels(chunk->source, kind), xlabels, xlabels_len);
                    size_t at = nseen < 8 ? nseen++ : next_seen++ % 8;
                    seen[at].kind = kind;
                    seen[at].labels = xlabels;
                    seen[at].len = xlabels_len;
                    seen[at].stream = stream;
                }
            }
        }
        size_t off;
        if (stream < 0 || RESERVE(st->entries, st->entries_cap, st->nentries + 1) != 0 ||
            arena_put(st, source_record_content(rec), rec->len, &off) != 0 ||
            (xmeta_len && arena_put(st, xmeta, xmeta_len, &xmeta_off) != 0)) {
            *next = rec; /* out of memory: the caller seals what is there and retries */
            return false;
        }
        uint32_t pairs = 0;
        for (size_t i = 0; i < xmeta_len; i++) pairs += xmeta[i] == '\0';
        st->entries[st->nentries++] = (struct batch_entry){rec->ts_ns, off, rec->len, (uint32_t)stream, meta,
                                                           xmeta_off, (uint32_t)xmeta_len, pairs / 2};
        st->nxmeta += pairs / 2;
        st->streams[stream].count++;
        st->size += cost;
        if (!st->first_ms) st->first_ms = metrics_now_ms();
        if (!st->oldest_ns || rec->ts_ns < st->oldest_ns) st->oldest_ns = rec->ts_ns;
    }
    if (RESERVE(slot->acks, slot->acks_cap, slot->nacks + 1) != 0) {
        *next = rec;
        return false;
    }
    slot->acks[slot->nacks++] = (struct aggregator_ack){chunk->source, chunk->end_offset};
    if (!st->first_ms) st->first_ms = metrics_now_ms(); /* an ack alone must not wait forever */
    return true;
}

bool aggregator_has_data(struct aggregator *agg)
{
    return agg->fill.nentries || agg->states[agg->current].nacks;
}

int64_t aggregator_due_ms(struct aggregator *agg)
{
    if (!agg->fill.first_ms) return INT64_MAX;
    return agg->fill.first_ms + agg->cfg->output.loki.batch_wait_ms;
}

/* Groups entries per stream (stable counting sort) and encodes into the body
 * buffer. */
static size_t meta_count(const struct batch_meta *m) { return (m->ids ? 2u : 0u) + m->npairs; }

static int encode(struct aggregator *agg, struct aggregator_batch *b)
{
    struct fill_state *st = &agg->fill;
    struct aggregator_batch_state *slot = b->state;
    size_t nlabels = 0, per_entry = 0;
    for (size_t i = 0; i < st->nmetas; i++) nlabels += meta_count(&st->metas[i]);
    /* An entry with pipeline metadata gets its own array: its chunk's pairs, then its own. */
    for (size_t i = 0; i < st->nentries; i++) {
        const struct batch_entry *e = &st->entries[i];
        if (e->xmeta_pairs) per_entry += (e->meta != UINT32_MAX ? meta_count(&st->metas[e->meta]) : 0) + e->xmeta_pairs;
    }
    if (RESERVE(st->lentries, st->lentries_cap, st->nentries) != 0 ||
        RESERVE(st->lstreams, st->lstreams_cap, st->nstreams) != 0 ||
        RESERVE(st->meta_labels, st->meta_labels_cap, nlabels + per_entry ? nlabels + per_entry : 1) != 0 ||
        RESERVE(st->fill, st->fill_cap, st->nstreams ? st->nstreams : 1) != 0)
        return -1;
    size_t at = 0;
    for (size_t i = 0; i < st->nmetas; i++) {
        struct batch_meta *m = &st->metas[i];
        m->first_label = at;
        if (m->ids) {
            st->meta_labels[at++] = (struct loki_label){LOKI_META_POD_UID, st->arena + m->pod_uid_off};
            st->meta_labels[at++] = (struct loki_label){LOKI_META_CONTAINER_ID, st->arena + m->container_id_off};
        }
        const char *p = st->arena + m->pairs_off;
        for (uint32_t k = 0; k < m->npairs; k++) {
            const char *name = p;
            const char *value = name + strlen(name) + 1;
            p = value + strlen(value) + 1;
            st->meta_labels[at++] = (struct loki_label){name, value};
        }
    }
    size_t start = 0;
    for (size_t s = 0; s < st->nstreams; s++) {
        st->streams[s].start = start;
        start += st->streams[s].count;
    }
    size_t *fill = st->fill;
    memset(fill, 0, st->nstreams * sizeof *fill);
    size_t line_bytes = 0;
    size_t extra_at = nlabels; /* per-entry metadata arrays follow the per-chunk pairs */
    for (size_t i = 0; i < st->nentries; i++) {
        const struct batch_entry *e = &st->entries[i];
        struct loki_entry *out = &st->lentries[st->streams[e->stream].start + fill[e->stream]++];
        *out = (struct loki_entry){e->ts_ns, st->arena + e->off, e->len, NULL, 0};
        if (e->xmeta_pairs) {
            struct loki_label *m = &st->meta_labels[extra_at];
            size_t n = 0;
            if (e->meta != UINT32_MAX) {
                const struct batch_meta *bm = &st->metas[e->meta];
                n = meta_count(bm);
                memcpy(m, &st->meta_labels[bm->first_label], n * sizeof *m);
            }
            const char *p = st->arena + e->xmeta_off;
            for (uint32_t k = 0; k < e->xmeta_pairs; k++) {
                const char *name = p;
                p += strlen(p) + 1;
                m[n++] = (struct loki_label){name, p};
                p += strlen(p) + 1;
            }
            out->metadata = m;
            out->nmetadata = n;
            extra_at += n;
        } else if (e->meta != UINT32_MAX) {
            const struct batch_meta *m = &st->metas[e->meta];
            out->metadata = &st->meta_labels[m->first_label];
            out->nmetadata = meta_count(m);
        }
        line_bytes += e->len;
    }
    for (size_t s = 0; s < st->nstreams; s++)
        st->lstreams[s] = (struct loki_stream){st->streams[s].labels, st->lentries + st->streams[s].start,
                                               st->streams[s].count};
    /* Compressed straight into the buffer that keeps it while it is pushed. */
    size_t body_len;
    if (loki_encode_into(agg->encoder, st->lstreams, st->nstreams, &agg->body_buf, &agg->body_cap, &body_len,
                         &b->raw_len) != 0)
        return -1;
    b->body = agg->body_buf;
    b->body_len = body_len;
    b->entries = st->nentries;
    b->line_bytes = line_bytes;
    metrics_set(batch_streams, (int64_t)st->nstreams);
    b->oldest_entry_ns = st->oldest_ns;
    b->acks = slot->acks;
    b->nacks = slot->nacks;
    return 0;
}

struct aggregator_batch *aggregator_seal(struct aggregator *agg)
{
    struct aggregator_batch *b = &agg->batches[agg->current];
    /* The other batch's body shares body_buf: it must be done with. */
    assert(agg->batches[agg->current ^ 1].body == NULL);
    if (encode(agg, b) != 0) return NULL;
    fill_clear(&agg->fill);
    agg->current ^= 1;
    return b;
}

struct aggregator_ack *aggregator_pending_acks(struct aggregator *agg, size_t *n)
{
    struct aggregator_batch_state *slot = &agg->states[agg->current];
    *n = slot->nacks;
    return slot->acks;
}

void aggregator_release(struct aggregator *agg, struct aggregator_batch *batch)
{
    (void)agg;
    batch->state->nacks = 0;
    batch->body = NULL;
    batch->body_len = batch->raw_len = batch->entries = batch->line_bytes = batch->nacks = 0;
    batch->acks = NULL;
}
