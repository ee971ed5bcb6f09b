/*
 * request — one logs API request, served on its own thread: head, auth,
 * routing, history, follow (see api.h for what the client sees).
 */
#ifndef LOGLET_API_REQUEST_H
#define LOGLET_API_REQUEST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "collector/collector.h"
#include "config/config.h"
#include "api/query.h"
#include "output/livetail.h"

struct api_request_env {
    const struct config *cfg;
    struct livetail *hub;
    atomic_bool *stop;
    bool tcp; /* needs the bearer token */
    atomic_int *active; /* logs requests being served, against max_subscribers */
    atomic_int *history_active; /* of them reading history, against max_history_requests */
    struct collector *collector; /* for /api/v1/targets; may be NULL */
    /* A pod's job-name label, from a Kubernetes metadata provider; NULL
     * while there is none (then `job=` is refused with the reason). */
    api_job_label_fn job_label;
    void *job_ctx;
};

/* Serves one connection to its end; the caller closes fd. `head` (may be
 * NULL, head_len 0: read it here) is a request head the caller already read
 * and authorized. */
void api_request_serve(const struct api_request_env *env, int fd, const char *head, size_t head_len);
/* Whether the head carries `Authorization: Bearer <the token file's token>`
 * (the file is read again each time, so the token can be rotated). */
bool api_request_authorized(const struct config *cfg, const char *head, size_t len);

/* Reads the token file (surrounding whitespace trimmed) into buf (NULL:
 * only check it). 0, or -1 with `why` (unreadable, empty, too long). */
int api_token_load(const char *path, char *buf, size_t cap, char *why, size_t whylen);

#endif
