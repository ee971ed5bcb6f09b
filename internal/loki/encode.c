/*
 * encode — a batch of streams → logproto.PushRequest → one raw snappy block,
 * the body of POST /loki/api/v1/push.
 *
 * The hot path writes the protobuf bytes itself instead of packing
 * protobuf-c structs: protobuf-c sizes a message by walking it once through
 * its generic descriptors and packs it by walking it again, which cost three
 * quarters of what snappy costs (tests/bench/README.md), and it needs the
 * whole message in one buffer plus a struct and a pointer per entry. Here the
 * sizes are plain arithmetic over the batch (lines are not touched), and the
 * bytes go through a 64 KiB window that is compressed each time it fills, so
 * the uncompressed message never exists whole: the window stays in cache
 * while snappy reads it, and the encoder holds about 150 KiB whatever the
 * batch size. The bytes are exactly protobuf-c's for the same message
 * (tests/unit/test_loki.c compares them for random batches,
 * tests/fuzz/fuzz_push.c for any): fields in number order, proto3 zero
 * values (empty strings, empty lines, zero seconds or nanos) left out, the
 * timestamp always present.
 *
 * Compressing 64 KiB at a time gives the same stream as one snappy_compress
 * of the whole: snappy itself compresses in independent 64 KiB fragments
 * (kBlockSize), each preceded here by nothing but the total length, which we
 * know up front. Each fragment's own snappy_compress() output starts with
 * that fragment's length as a varint; it is dropped.
 *
 * Nothing is copied from the batch but into the window; lines may hold NUL
 * bytes and need none at their end. Labels and metadata are NUL-terminated by
 * contract.
 *
 * loki_split_body() goes the other way for a 413 with protobuf-c: decompress,
 * unpack, re-pack two halves. It shares no state with the encoder (the sender
 * thread calls it while the consumer thread may be encoding).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <snappy-c.h>

#include "loki/loki.h"
#include "loki/push.pb-c.h"

/* snappy's fragment size (snappy::kBlockSize): see the top of this file. */
#define WINDOW_BYTES 65536

struct loki_encoder {
    uint8_t window[WINDOW_BYTES]; /* protobuf bytes not compressed yet */
    size_t window_len;
    uint8_t *fragment; /* one window compressed, its length varint included */
    size_t fragment_cap;
    size_t *stream_sizes; /* StreamAdapter sizes of the batch being encoded */
    size_t stream_sizes_cap;
    /* Where the compressed bytes go: the caller's buffer, reserved ahead. */
    uint8_t *out;
    size_t out_len;
    /* loki_encode()'s own body buffer (loki_encode_into() uses the caller's). */
    uint8_t *body;
    size_t body_cap;
    /* The last body, and its protobuf bytes decompressed on demand (tests). */
    const uint8_t *last_body;
    size_t last_body_len, last_raw_len;
    uint8_t *pb;
    size_t pb_cap, pb_len;
};

struct loki_encoder *loki_encoder_create(void)
{
    struct loki_encoder *enc = calloc(1, sizeof *enc);
    if (!enc) return NULL;
    enc->fragment_cap = snappy_max_compressed_length(WINDOW_BYTES);
    enc->fragment = malloc(enc->fragment_cap);
    if (!enc->fragment) {
        free(enc);
        return NULL;
    }
    return enc;
}

void loki_encoder_destroy(struct loki_encoder *enc)
{
    if (!enc) return;
    free(enc->fragment);
    free(enc->stream_sizes);
    free(enc->body);
    free(enc->pb);
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

/* Makes *buf hold at least `need` bytes; the contents need not survive
 * (every encode rewrites them), so malloc+free rather than realloc's copy. */
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

/* --- Sizes: what protobuf-c's get_packed_size would say, by arithmetic. --- */

static size_t varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* A length-delimited field of `len` bytes: its one-byte tag (every field
 * number here is below 16), the length, the bytes. */
static size_t delimited_size(size_t len) { return 1 + varint_size(len) + len; }

/* int64 and int32 are varints of their two's complement as 64 bits: a
 * negative value takes 10 bytes, as protobuf-c writes it. */
static size_t timestamp_size(int64_t seconds, int32_t nanos)
{
    return (seconds ? 1 + varint_size((uint64_t)seconds) : 0) + (nanos ? 1 + varint_size((uint64_t)(int64_t)nanos) : 0);
}

static size_t string_field_size(const char *s)
{
    size_t len = s ? strlen(s) : 0;
    return len ? delimited_size(len) : 0; /* proto3: an empty string is not sent */
}

static size_t pair_size(const struct loki_label *l)
{
    return string_field_size(l->name) + string_field_size(l->value);
}

static size_t entry_size(const struct loki_entry *e)
{
    int64_t seconds;
    int32_t nanos;
    split_ts(e->ts_ns, &seconds, &nanos);
    size_t n = delimited_size(timestamp_size(seconds, nanos)); /* always present, as the encoder always set it */
    if (e->len) n += delimited_size(e->len);
    for (size_t k = 0; k < e->nmetadata; k++) n += delimited_size(pair_size(&e->metadata[k]));
    return n;
}

static size_t stream_size(const struct loki_stream *s)
{
    size_t n = string_field_size(s->labels);
    for (size_t j = 0; j < s->nentries; j++) n += delimited_size(entry_size(&s->entries[j]));
    return n;
}

/* --- Writing through the window. --- */

/* Compresses the window onto the output (whose room was reserved for it). */
static int flush_window(struct loki_encoder *enc)
{
    if (!enc->window_len) return 0;
    size_t len = enc->fragment_cap;
    if (snappy_compress((const char *)enc->window, enc->window_len, (char *)enc->fragment, &len) != SNAPPY_OK) {
        enc->window_len = 0; /* the encode fails; emptied, so the writers still make progress until then */
        return -1;
    }
    const size_t skip = varint_size(enc->window_len); /* the fragment's own length */
    memcpy(enc->out + enc->out_len, enc->fragment + skip, len - skip);
    enc->out_len += len - skip;
    enc->window_len = 0;
    return 0;
}

/* Appends bytes to the message: flush errors are remembered in *failed and
 * checked once at the end, so the writers below stay straight-line. */
static void put(struct loki_encoder *enc, const void *data, size_t len, bool *failed)
{
    const uint8_t *p = data;
    while (len) {
        size_t n = WINDOW_BYTES - enc->window_len;
        if (n > len) n = len;
        memcpy(enc->window + enc->window_len, p, n);
        enc->window_len += n;
        p += n;
        len -= n;
        if (enc->window_len == WINDOW_BYTES && flush_window(enc) != 0) *failed = true;
    }
}

/* Writes v as a varint at p (at most 10 bytes); returns the end. */
static inline uint8_t *varint_at(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* A tag, or a varint: written in the window directly when it fits (almost
 * always), through put() across its end. */
static void put_varint(struct loki_encoder *enc, uint64_t v, bool *failed)
{
    uint8_t tmp[10];
    const size_t n = (size_t)(varint_at(tmp, v) - tmp);
    if (enc->window_len + n < WINDOW_BYTES) {
        memcpy(enc->window + enc->window_len, tmp, n);
        enc->window_len += n;
    } else {
        put(enc, tmp, n, failed);
    }
}

static void put_delimited_header(struct loki_encoder *enc, uint8_t tag, size_t len, bool *failed)
{
    put_varint(enc, tag, failed);
    put_varint(enc, len, failed);
}

static void put_string_field(struct loki_encoder *enc, uint8_t tag, const char *s, bool *failed)
{
    size_t len = s ? strlen(s) : 0;
    if (!len) return;
    put_delimited_header(enc, tag, len, failed);
    put(enc, s, len, failed);
}

/* Wire tags: field number << 3 | wire type (0 varint, 2 length-delimited). */
enum {
    TAG_REQUEST_STREAMS = 1 << 3 | 2,
    TAG_STREAM_LABELS = 1 << 3 | 2,
    TAG_STREAM_ENTRIES = 2 << 3 | 2,
    TAG_ENTRY_TIMESTAMP = 1 << 3 | 2,
    TAG_ENTRY_LINE = 2 << 3 | 2,
    TAG_ENTRY_METADATA = 3 << 3 | 2,
    TAG_PAIR_NAME = 1 << 3 | 2,
    TAG_PAIR_VALUE = 2 << 3 | 2,
    TAG_TIMESTAMP_SECONDS = 1 << 3 | 0,
    TAG_TIMESTAMP_NANOS = 2 << 3 | 0,
};

/* The most an entry's framing takes before its line: entry tag and length
 * (1 + 10), timestamp tag and length (1 + 1), seconds (1 + 10), nanos
 * (1 + 10), line tag and length (1 + 10). */
#define ENTRY_HEAD_MAX 46

/* The hot loop: per entry its framing, written with one bounds check, and
 * one copy of its line into the window. It must never allocate. */
static void put_entries(struct loki_encoder *enc, const struct loki_stream *s, bool *failed)
{
    for (size_t j = 0; j < s->nentries; j++) {
        const struct loki_entry *e = &s->entries[j];
        int64_t seconds;
        int32_t nanos;
        split_ts(e->ts_ns, &seconds, &nanos);
        uint8_t tmp[ENTRY_HEAD_MAX];
        const bool direct = WINDOW_BYTES - enc->window_len > ENTRY_HEAD_MAX;
        uint8_t *start = direct ? enc->window + enc->window_len : tmp, *p = start;
        *p++ = TAG_STREAM_ENTRIES;
        p = varint_at(p, entry_size(e));
        *p++ = TAG_ENTRY_TIMESTAMP;
        p = varint_at(p, timestamp_size(seconds, nanos));
        if (seconds) {
            *p++ = TAG_TIMESTAMP_SECONDS;
            p = varint_at(p, (uint64_t)seconds);
        }
        if (nanos) {
            *p++ = TAG_TIMESTAMP_NANOS;
            p = varint_at(p, (uint64_t)(int64_t)nanos);
        }
        if (e->len) {
            *p++ = TAG_ENTRY_LINE;
            p = varint_at(p, e->len);
        }
        if (direct) enc->window_len += (size_t)(p - start);
        else put(enc, tmp, (size_t)(p - start), failed);
        if (e->len) put(enc, e->line, e->len, failed);
        for (size_t k = 0; k < e->nmetadata; k++) {
            const struct loki_label *l = &e->metadata[k];
            put_delimited_header(enc, TAG_ENTRY_METADATA, pair_size(l), failed);
            put_string_field(enc, TAG_PAIR_NAME, l->name, failed);
            put_string_field(enc, TAG_PAIR_VALUE, l->value, failed);
        }
    }
}

/* The most a raw snappy block of `raw` bytes compressed window by window can
 * take: the total's varint, then each fragment at snappy's bound for it. */
static size_t body_bound(size_t raw)
{
    const size_t fragments = raw / WINDOW_BYTES + 1;
    const size_t per_fragment = snappy_max_compressed_length(WINDOW_BYTES);
    if (fragments > (SIZE_MAX - 16) / per_fragment) return 0;
    return 10 + fragments * per_fragment;
}

int loki_encode_into(struct loki_encoder *enc, const struct loki_stream *streams, size_t nstreams, uint8_t **buf,
                     size_t *cap, size_t *body_len, size_t *raw_len)
{
    /* Sizes first: every length prefix comes before its message. */
    if (nstreams > enc->stream_sizes_cap) {
        const size_t c = grow_cap(enc->stream_sizes_cap, nstreams);
        size_t *sizes = c && c <= SIZE_MAX / sizeof *sizes ? malloc(c * sizeof *sizes) : NULL;
        if (!sizes) return -1;
        free(enc->stream_sizes);
        enc->stream_sizes = sizes;
        enc->stream_sizes_cap = c;
    }
    size_t raw = 0;
    for (size_t i = 0; i < nstreams; i++) {
        enc->stream_sizes[i] = stream_size(&streams[i]);
        raw += delimited_size(enc->stream_sizes[i]);
    }
    const size_t bound = body_bound(raw);
    if (bound == 0 || reserve_bytes(buf, cap, bound) != 0) return -1;

    enc->out = *buf;
    enc->out_len = 0;
    enc->window_len = 0;
    bool failed = false;
    /* The raw block's preamble: the uncompressed length. */
    uint64_t v = raw;
    while (v >= 0x80) {
        enc->out[enc->out_len++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    enc->out[enc->out_len++] = (uint8_t)v;
    for (size_t i = 0; i < nstreams; i++) {
        put_delimited_header(enc, TAG_REQUEST_STREAMS, enc->stream_sizes[i], &failed);
        put_string_field(enc, TAG_STREAM_LABELS, streams[i].labels, &failed);
        put_entries(enc, &streams[i], &failed);
    }
    if (flush_window(enc) != 0 || failed) return -1;

    *body_len = enc->out_len;
    if (raw_len) *raw_len = raw;
    enc->last_body = enc->out;
    enc->last_body_len = enc->out_len;
    enc->last_raw_len = raw;
    enc->pb_len = SIZE_MAX; /* not decompressed yet */
    enc->out = NULL;
    return 0;
}

int loki_encode(struct loki_encoder *enc, const struct loki_stream *streams, size_t nstreams, const uint8_t **body,
                size_t *body_len, size_t *raw_len)
{
    if (loki_encode_into(enc, streams, nstreams, &enc->body, &enc->body_cap, body_len, raw_len) != 0) return -1;
    *body = enc->body;
    return 0;
}

const uint8_t *loki_encoder_last_protobuf(struct loki_encoder *enc, size_t *len)
{
    if (enc->pb_len == SIZE_MAX) {
        size_t n = enc->last_raw_len;
        if (reserve_bytes(&enc->pb, &enc->pb_cap, n ? n : 1) != 0 ||
            snappy_uncompress((const char *)enc->last_body, enc->last_body_len, (char *)enc->pb, &n) != SNAPPY_OK) {
            *len = 0;
            return NULL;
        }
        enc->pb_len = n;
    }
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
