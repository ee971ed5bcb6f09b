/*
 * libFuzzer harness for the hand-written PushRequest encoder (loki_encode).
 * The input describes a batch: it is read as a stream of records, each a
 * control byte followed by what it says:
 *   bits 0-1  0: a new stream, its labels the next NUL-terminated string
 *             1: an entry in the current stream (one is opened if none):
 *                8 bytes of timestamp (little-endian, any sign), a 3-byte
 *                length scaled by bit 2 (x 97, so lines reach past the 64 KiB
 *                window), the line's bytes taken from the input from there
 *                (as many as remain), then up to 3 metadata pairs (bits 4-5),
 *                each two NUL-terminated strings
 *             2, 3: the same entry as 1 without metadata
 * Invariant: the protobuf bytes are exactly protobuf-c's for the same
 * PushRequest (tests/unit/push_reference.h), and the body is exactly
 * snappy_compress() of them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <snappy-c.h>

#include "../unit/push_reference.h"
#include "loki/loki.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_STREAMS 64
#define MAX_ENTRIES 4096
#define MAX_PAIRS 4096

/* The next NUL-terminated string of the input (the copy ends at the input's
 * end); strings live in `text`: each input byte is copied at most once, and a
 * record (one control byte at least) makes at most 7 strings, each with its
 * NUL, so 8 bytes per input byte always suffice. */
static const char *take_string(const uint8_t *data, size_t size, size_t *at, char *text, size_t *text_len)
{
    char *s = text + *text_len;
    while (*at < size && data[*at]) text[(*text_len)++] = (char)data[(*at)++];
    if (*at < size) (*at)++;
    text[(*text_len)++] = '\0';
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20) return 0;
    static struct loki_stream streams[MAX_STREAMS];
    static struct loki_entry entries[MAX_ENTRIES];
    static struct loki_label pairs[MAX_PAIRS];
    char *text = malloc(8 * size + 1);
    if (!text) abort();
    size_t text_len = 0, nstreams = 0, nentries = 0, npairs = 0, at = 0;
    while (at < size) {
        const uint8_t ctl = data[at++];
        if ((ctl & 3) == 0 || nstreams == 0) {
            if (nstreams == MAX_STREAMS) break;
            const char *labels = (ctl & 3) == 0 ? take_string(data, size, &at, text, &text_len) : "{}";
            streams[nstreams++] = (struct loki_stream){.labels = labels, .entries = &entries[nentries]};
            if ((ctl & 3) == 0) continue;
        }
        if (nentries == MAX_ENTRIES) break;
        uint64_t ts = 0;
        for (int i = 0; i < 8 && at < size; i++) ts |= (uint64_t)data[at++] << (8 * i);
        size_t len = 0;
        for (int i = 0; i < 3 && at < size; i++) len |= (size_t)data[at++] << (8 * i);
        if (ctl & 4) len = len * 97 % (1 << 20);
        if (len > size - at) len = size - at;
        struct loki_entry *e = &entries[nentries++];
        *e = (struct loki_entry){.ts_ns = (int64_t)ts, .line = (const char *)data + at, .len = len};
        at += len;
        if ((ctl & 3) == 1) {
            size_t n = (ctl >> 4) & 3;
            if (n > MAX_PAIRS - npairs) n = MAX_PAIRS - npairs;
            e->metadata = n ? &pairs[npairs] : NULL;
            for (size_t k = 0; k < n; k++) {
                const char *name = take_string(data, size, &at, text, &text_len);
                const char *value = take_string(data, size, &at, text, &text_len);
                pairs[npairs++] = (struct loki_label){name, value};
            }
            e->nmetadata = n;
        }
        streams[nstreams - 1].nentries++;
    }

    struct loki_encoder *enc = loki_encoder_create();
    if (!enc) abort();
    const uint8_t *body;
    size_t body_len, raw_len, want_len = 0, pb_len;
    if (loki_encode(enc, streams, nstreams, &body, &body_len, &raw_len) != 0) abort();
    uint8_t *want = push_reference_pack(streams, nstreams, &want_len);
    if (!want) abort();
    const uint8_t *pb = loki_encoder_last_protobuf(enc, &pb_len);
    if (!pb || pb_len != want_len || raw_len != want_len || memcmp(pb, want, want_len) != 0) abort();
    size_t one_len = snappy_max_compressed_length(want_len);
    char *one = malloc(one_len);
    if (!one || snappy_compress((const char *)want, want_len, one, &one_len) != SNAPPY_OK) abort();
    if (one_len != body_len || memcmp(one, body, body_len) != 0) abort();
    free(one);
    free(want);
    loki_encoder_destroy(enc);
    free(text);
    return 0;
}
