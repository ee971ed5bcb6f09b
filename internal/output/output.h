/*
 * output — the consumer side of the ring: one thread that takes chunks of
 * records, delivers them, and only then acknowledges them to their sources.
 *
 * Contract:
 *  - Delivery per destination: stdout (no Loki URL): a chunk is acknowledged
 *    once all its lines were written to standard output (text or JSON).
 *    Loki: once the push holding them was answered 2xx (see loki/).
 *  - Acknowledging sets source->acked_offset to the chunk's end_offset, in
 *    order per source, then drops the chunk's reference to the source.
 *  - A destination that fails is retried, never skipped: the output then
 *    stops consuming, the ring fills and the collector stops reading.
 *  - output_finish(): after ring_close(), deliver everything still in the
 *    ring within `grace_ms`; what could not be delivered is not acknowledged
 *    (it is read again after a restart). Returns 0 when all was delivered.
 */
#ifndef LOGLET_OUTPUT_H
#define LOGLET_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "ring/ring.h"

struct output;

struct output *output_create(const struct config *cfg, struct ring *ring, char *err, size_t errlen);
int output_start(struct output *out, char *err, size_t errlen);
int output_finish(struct output *out, int64_t grace_ms);
void output_destroy(struct output *out);

/* Formats one record for stdout; exposed for tests. Returns bytes written to
 * dst, which must hold output_stdout_max(len) bytes. */
struct source;
struct source_record;
size_t output_format_text(const struct source *src, const struct source_record *rec, char *dst);
size_t output_format_json(const struct source *src, const struct source_record *rec, char *dst);
size_t output_stdout_max(size_t content_len);

#endif
