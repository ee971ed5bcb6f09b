/*
 * push_reference — the PushRequest as protobuf-c packs it, for the tests and
 * the fuzzer that prove the hand-written encoder (internal/loki/encode.c)
 * writes the same bytes. This is the encoder loglet used before, kept only
 * as the oracle: it allocates freely and is never on the agent's path.
 */
#ifndef LOGLET_TEST_PUSH_REFERENCE_H
#define LOGLET_TEST_PUSH_REFERENCE_H

#include <stdint.h>
#include <stdlib.h>

#include "loki/loki.h"
#include "loki/push.pb-c.h"

/* Returns the packed bytes (malloc'd, *len of them), or NULL when out of memory. */
static inline uint8_t *push_reference_pack(const struct loki_stream *streams, size_t nstreams, size_t *len)
{
    size_t nentries = 0, npairs = 0;
    for (size_t i = 0; i < nstreams; i++) {
        nentries += streams[i].nentries;
        for (size_t j = 0; j < streams[i].nentries; j++) npairs += streams[i].entries[j].nmetadata;
    }
    Logproto__StreamAdapter *st = calloc(nstreams + 1, sizeof *st);
    Logproto__StreamAdapter **stp = calloc(nstreams + 1, sizeof *stp);
    Logproto__EntryAdapter *en = calloc(nentries + 1, sizeof *en);
    Logproto__EntryAdapter **enp = calloc(nentries + 1, sizeof *enp);
    Logproto__Timestamp *ts = calloc(nentries + 1, sizeof *ts);
    Logproto__LabelPairAdapter *pa = calloc(npairs + 1, sizeof *pa);
    Logproto__LabelPairAdapter **pap = calloc(npairs + 1, sizeof *pap);
    uint8_t *out = NULL;
    if (!st || !stp || !en || !enp || !ts || !pa || !pap) goto done;
    size_t e = 0, p = 0;
    for (size_t i = 0; i < nstreams; i++) {
        const Logproto__StreamAdapter si = LOGPROTO__STREAM_ADAPTER__INIT;
        st[i] = si;
        st[i].labels = (char *)(streams[i].labels ? streams[i].labels : "");
        st[i].n_entries = streams[i].nentries;
        st[i].entries = streams[i].nentries ? &enp[e] : NULL;
        stp[i] = &st[i];
        for (size_t j = 0; j < streams[i].nentries; j++, e++) {
            const struct loki_entry *le = &streams[i].entries[j];
            const Logproto__EntryAdapter ei = LOGPROTO__ENTRY_ADAPTER__INIT;
            const Logproto__Timestamp ti = LOGPROTO__TIMESTAMP__INIT;
            ts[e] = ti;
            int64_t s = le->ts_ns / 1000000000, r = le->ts_ns % 1000000000;
            if (r < 0) {
                r += 1000000000;
                s -= 1;
            }
            ts[e].seconds = s;
            ts[e].nanos = (int32_t)r;
            en[e] = ei;
            en[e].timestamp = &ts[e];
            en[e].line.len = le->len;
            en[e].line.data = (uint8_t *)(le->len ? le->line : NULL);
            en[e].n_structuredmetadata = le->nmetadata;
            en[e].structuredmetadata = le->nmetadata ? &pap[p] : NULL;
            for (size_t k = 0; k < le->nmetadata; k++, p++) {
                const Logproto__LabelPairAdapter pi = LOGPROTO__LABEL_PAIR_ADAPTER__INIT;
                pa[p] = pi;
                pa[p].name = (char *)(le->metadata[k].name ? le->metadata[k].name : "");
                pa[p].value = (char *)(le->metadata[k].value ? le->metadata[k].value : "");
                pap[p] = &pa[p];
            }
            enp[e] = &en[e];
        }
    }
    Logproto__PushRequest req = LOGPROTO__PUSH_REQUEST__INIT;
    req.n_streams = nstreams;
    req.streams = nstreams ? stp : NULL;
    const size_t size = protobuf_c_message_get_packed_size(&req.base);
    out = malloc(size ? size : 1);
    if (out) *len = protobuf_c_message_pack(&req.base, out);
done:
    free(st);
    free(stp);
    free(en);
    free(enp);
    free(ts);
    free(pa);
    free(pap);
    return out;
}

#endif
