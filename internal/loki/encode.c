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
 */
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
