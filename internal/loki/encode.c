/*
 * encode — a batch of streams → logproto.PushRequest (protobuf-c) → one raw
 * snappy block, the body of POST /loki/api/v1/push.
 *
 * The encoder owns every protobuf-c struct it hands to the packer: flat
 * arrays of StreamAdapter / EntryAdapter / Timestamp / LabelPairAdapter and
 * the pointer arrays protobuf-c wants for repeated fields. They grow
 * geometrically to the batch's totals before anything points into them and
 * are kept for the next batch, as are the protobuf and snappy buffers; in
 * steady state an encode allocates nothing.
 *
 * Nothing is copied from the batch: lines go in as `bytes` (see push.proto —
 * wire-identical to Loki's `string`, but length-delimited in memory, so lines
 * need no NUL and may hold one); labels and metadata are NUL-terminated by
 * contract and go in as protobuf-c strings. The casts that drop `const` are
 * safe: protobuf-c only reads a message while packing it.
 *
 * loki_split_body() goes the other way for a 413: decompress, unpack with
 * protobuf-c, re-pack two halves. It shares no state with the encoder (the
 * sender thread calls it while the consumer thread may be encoding).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <snappy-c.h>

#include "loki/loki.h"
#include "loki/push.pb-c.h"

struct loki_encoder {
    Logproto__PushRequest req;

    Logproto__StreamAdapter *streams;
    Logproto__StreamAdapter **stream_ptrs;
    size_t streams_cap;

    Logproto__EntryAdapter *entries;
    Logproto__EntryAdapter **entry_ptrs;
    Logproto__Timestamp *timestamps;
    size_t entries_cap;

    Logproto__LabelPairAdapter *pairs;
    Logproto__LabelPairAdapter **pair_ptrs;
    size_t pairs_cap;

    uint8_t *pb; /* the packed PushRequest */
    size_t pb_cap, pb_len;
    uint8_t *body; /* pb, snappy-compressed */
    size_t body_cap, body_len;
};

struct loki_encoder *loki_encoder_create(void)
{
    struct loki_encoder *enc = calloc(1, sizeof *enc);
    if (!enc) return NULL;
    const Logproto__PushRequest init = LOGPROTO__PUSH_REQUEST__INIT;
    enc->req = init;
    return enc;
}

void loki_encoder_destroy(struct loki_encoder *enc)
{
    if (!enc) return;
    free(enc->streams);
    free(enc->stream_ptrs);
    free(enc->entries);
    free(enc->entry_ptrs);
    free(enc->timestamps);
    free(enc->pairs);
    free(enc->pair_ptrs);
    free(enc->pb);
    free(enc->body);
    free(enc);
}

/* Next capacity >= need: doubling from 64 (0 on overflow). */
static size_t grow_cap(size_t cap, size_t need)
{
    size_t c = cap ? cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2) return 0;
        c *= 2;
    }
    return c;
}

/* Replaces *arr by an uninitialised array of n elements of `size` bytes.
 * The old contents need not survive (every encode refills the arrays), so
 * malloc+free rather than realloc's copy. */
static int replace_array(void **arr, size_t size, size_t n)
{
    if (n == 0 || n > SIZE_MAX / size) return -1;
    void *p = malloc(n * size);
    if (!p) return -1;
    free(*arr);
    *arr = p;
    return 0;
}

#define REPLACE(enc, arr, n) replace_array((void **)&(enc)->arr, sizeof *(enc)->arr, (n))

/* Makes every struct array hold the batch's totals. The arrays of one
 * family share one capacity, raised only once all of them were replaced (a
 * failure leaves some arrays larger than recorded, which is harmless). */
static int reserve_structs(struct loki_encoder *enc, size_t nstreams, size_t nentries, size_t npairs)
{
    if (nstreams > enc->streams_cap) {
        const size_t c = grow_cap(enc->streams_cap, nstreams);
        if (REPLACE(enc, streams, c) < 0 || REPLACE(enc, stream_ptrs, c) < 0) return -1;
        enc->streams_cap = c;
    }
    if (nentries > enc->entries_cap) {
        const size_t c = grow_cap(enc->entries_cap, nentries);
        if (REPLACE(enc, entries, c) < 0 || REPLACE(enc, entry_ptrs, c) < 0 || REPLACE(enc, timestamps, c) < 0)
            return -1;
        enc->entries_cap = c;
    }
    if (npairs > enc->pairs_cap) {
        const size_t c = grow_cap(enc->pairs_cap, npairs);
        if (REPLACE(enc, pairs, c) < 0 || REPLACE(enc, pair_ptrs, c) < 0) return -1;
        enc->pairs_cap = c;
    }
    return 0;
}

/* Same for the byte buffers (at least 4 KiB, so small batches never grow). */
static int reserve_bytes(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap && *buf) return 0;
    const size_t c = grow_cap(*cap < 4096 ? 4096 : *cap, need);
    if (c == 0) return -1;
    uint8_t *p = malloc(c);
    if (!p) return -1;
    free(*buf);
    *buf = p;
    *cap = c;
    return 0;
}

/* google.protobuf.Timestamp: seconds = floor(ns / 1e9), 0 <= nanos < 1e9. */
static void split_ts(int64_t ts_ns, int64_t *seconds, int32_t *nanos)
{
    int64_t s = ts_ns / 1000000000;
    int64_t r = ts_ns % 1000000000; /* C truncates toward zero */
    if (r < 0) {
        r += 1000000000;
        s -= 1;
    }
    *seconds = s;
    *nanos = (int32_t)r;
}

static char *str_or_empty(const char *s)
{
    return (char *)(s ? s : "");
}

int loki_encode(struct loki_encoder *enc, const struct loki_stream *streams, size_t nstreams, const uint8_t **body,
                size_t *body_len, size_t *raw_len)
{
    /* Totals first: nothing may point into an array that is still to grow. */
    size_t nentries = 0, npairs = 0;
    for (size_t i = 0; i < nstreams; i++) {
        nentries += streams[i].nentries;
        for (size_t j = 0; j < streams[i].nentries; j++)
            npairs += streams[i].entries[j].nmetadata;
    }
    if (reserve_structs(enc, nstreams, nentries, npairs) < 0) return -1;

    static const Logproto__StreamAdapter stream_init = LOGPROTO__STREAM_ADAPTER__INIT;
    static const Logproto__EntryAdapter entry_init = LOGPROTO__ENTRY_ADAPTER__INIT;
    static const Logproto__Timestamp ts_init = LOGPROTO__TIMESTAMP__INIT;
    static const Logproto__LabelPairAdapter pair_init = LOGPROTO__LABEL_PAIR_ADAPTER__INIT;

    /* The hot loop: per entry, fill three structs and a pointer. It must
     * never allocate or copy a line. */
    size_t e = 0, p = 0;
    for (size_t i = 0; i < nstreams; i++) {
        const struct loki_stream *in = &streams[i];
        Logproto__StreamAdapter *st = &enc->streams[i];
        *st = stream_init;
        st->labels = str_or_empty(in->labels);
        st->n_entries = in->nentries;
        st->entries = in->nentries ? &enc->entry_ptrs[e] : NULL;
        enc->stream_ptrs[i] = st;
        for (size_t j = 0; j < in->nentries; j++, e++) {
            const struct loki_entry *le = &in->entries[j];
            Logproto__EntryAdapter *ea = &enc->entries[e];
            Logproto__Timestamp *ts = &enc->timestamps[e];
            *ts = ts_init;
            split_ts(le->ts_ns, &ts->seconds, &ts->nanos);
            *ea = entry_init;
            ea->timestamp = ts;
            ea->line.len = le->len;
            ea->line.data = (uint8_t *)(le->len ? le->line : NULL);
            if (le->nmetadata) {
                ea->n_structuredmetadata = le->nmetadata;
                ea->structuredmetadata = &enc->pair_ptrs[p];
                for (size_t k = 0; k < le->nmetadata; k++, p++) {
                    Logproto__LabelPairAdapter *lp = &enc->pairs[p];
                    *lp = pair_init;
                    lp->name = str_or_empty(le->metadata[k].name);
                    lp->value = str_or_empty(le->metadata[k].value);
                    enc->pair_ptrs[p] = lp;
                }
            }
            enc->entry_ptrs[e] = ea;
        }
    }
    enc->req.n_streams = nstreams;
    enc->req.streams = nstreams ? enc->stream_ptrs : NULL;

    const size_t size = protobuf_c_message_get_packed_size(&enc->req.base);
    if (reserve_bytes(&enc->pb, &enc->pb_cap, size) < 0) return -1;
    enc->pb_len = protobuf_c_message_pack(&enc->req.base, enc->pb);

    size_t out_len = snappy_max_compressed_length(enc->pb_len);
    if (reserve_bytes(&enc->body, &enc->body_cap, out_len) < 0) return -1;
    if (snappy_compress((const char *)enc->pb, enc->pb_len, (char *)enc->body, &out_len) != SNAPPY_OK) return -1;
    enc->body_len = out_len;

    *body = enc->body;
    *body_len = enc->body_len;
    if (raw_len) *raw_len = enc->pb_len;
    return 0;
}

const uint8_t *loki_encoder_last_protobuf(const struct loki_encoder *enc, size_t *len)
{
    *len = enc->pb_len;
    return enc->pb;
}

/* ---------------------------------------------------------------------------
 * Splitting a body after a 413. Cold path: it allocates freely (a decoded
 * copy of the request and two new bodies), and it runs only when a server
 * refused a body for its size.
 */

void loki_body_free(struct loki_body *b)
{
    if (!b) return;
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* Packs and compresses req into a new body; -1 when out of memory. */
static int pack_piece(const Logproto__PushRequest *req, struct loki_body *out)
{
    const size_t size = protobuf_c_message_get_packed_size(&req->base);
    uint8_t *pb = malloc(size ? size : 1);
    if (!pb) return -1;
    const size_t pb_len = protobuf_c_message_pack(&req->base, pb);
    size_t len = snappy_max_compressed_length(pb_len);
    uint8_t *data = malloc(len);
    if (!data) {
        free(pb);
        return -1;
    }
    const snappy_status st = snappy_compress((const char *)pb, pb_len, (char *)data, &len);
    free(pb);
    if (st != SNAPPY_OK) {
        free(data);
        return -1;
    }
    out->data = data;
    out->len = len;
    out->raw_len = pb_len;
    out->entries = 0;
    out->line_bytes = 0;
    for (size_t i = 0; i < req->n_streams; i++) {
        out->entries += req->streams[i]->n_entries;
        for (size_t j = 0; j < req->streams[i]->n_entries; j++)
            out->line_bytes += req->streams[i]->entries[j]->line.len;
    }
    return 0;
}

enum loki_split_result loki_split_body(const uint8_t *body, size_t len, struct loki_body *first,
                                       struct loki_body *second)
{
    memset(first, 0, sizeof *first);
    memset(second, 0, sizeof *second);

    size_t raw_len;
    if (snappy_uncompressed_length((const char *)body, len, &raw_len) != SNAPPY_OK) return LOKI_SPLIT_INVALID;
    char *raw = malloc(raw_len ? raw_len : 1);
    if (!raw) return LOKI_SPLIT_NOMEM;
    if (snappy_uncompress((const char *)body, len, raw, &raw_len) != SNAPPY_OK) {
        free(raw);
        return LOKI_SPLIT_INVALID;
    }
    /* protobuf-c copies what it keeps (bytes and strings), so raw can go. It
     * cannot tell a malformed message from an allocation failure; both are
     * called invalid, which is right for ours: the encoder never writes a
     * malformed one, so that NULL is almost surely the body's fault. */
    Logproto__PushRequest *req = logproto__push_request__unpack(NULL, raw_len, (const uint8_t *)raw);
    free(raw);
    if (!req) return LOKI_SPLIT_INVALID;

    size_t total = 0;
    for (size_t i = 0; i < req->n_streams; i++) total += req->streams[i]->n_entries;
    if (total < 2) {
        logproto__push_request__free_unpacked(req, NULL);
        return LOKI_SPLIT_SINGLE;
    }

    /* The cut: stream `cut` gives its first `keep` entries to the first
     * piece and the rest to the second; streams before it go wholly to the
     * first, streams after it to the second. keep is never 0 (a stream with
     * nothing before the cut would be an empty stream in the first piece),
     * and the stream is in the second piece only if something is left. */
    const size_t want = (total + 1) / 2;
    size_t cut = 0, before = 0;
    while (before + req->streams[cut]->n_entries < want) before += req->streams[cut++]->n_entries;
    const size_t keep = want - before;
    const Logproto__StreamAdapter *split = req->streams[cut];
    const bool shared = keep < split->n_entries;

    /* Shallow copies: the pieces point at req's entries and labels. */
    const size_t n1 = cut + 1, n2 = req->n_streams - cut - (shared ? 0 : 1);
    Logproto__StreamAdapter *streams = malloc((n1 + n2) * sizeof *streams);
    Logproto__StreamAdapter **ptrs = malloc((n1 + n2) * sizeof *ptrs);
    enum loki_split_result rc = LOKI_SPLIT_NOMEM;
    if (!streams || !ptrs) goto out;
    for (size_t i = 0; i < n1; i++) {
        streams[i] = *req->streams[i];
        ptrs[i] = &streams[i];
    }
    streams[cut].n_entries = keep;
    for (size_t i = 0; i < n2; i++) {
        const size_t from = req->n_streams - n2 + i;
        streams[n1 + i] = *req->streams[from];
        ptrs[n1 + i] = &streams[n1 + i];
    }
    if (shared) {
        streams[n1].entries = split->entries + keep;
        streams[n1].n_entries = split->n_entries - keep;
    }
    Logproto__PushRequest a = LOGPROTO__PUSH_REQUEST__INIT, b = LOGPROTO__PUSH_REQUEST__INIT;
    a.n_streams = n1;
    a.streams = ptrs;
    b.n_streams = n2;
    b.streams = n2 ? ptrs + n1 : NULL;
    if (pack_piece(&a, first) < 0 || pack_piece(&b, second) < 0) {
        loki_body_free(first);
        loki_body_free(second);
        goto out;
    }
    rc = LOKI_SPLIT_OK;
out:
    free(streams);
    free(ptrs);
    logproto__push_request__free_unpacked(req, NULL);
    return rc;
}
