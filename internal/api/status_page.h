/*
 * status_page — GET /status on the probe port: one self-contained HTML page
 * (no external assets, no script: it refreshes itself with a meta refresh
 * and reads fine without JavaScript) of what the agent is doing: version,
 * uptime, output state, the last failed push, pushes per status, ring use,
 * held files and bytes, followers, and every tailed file with its offsets
 * and lag. Every string from outside (paths, names, URLs) is HTML-escaped.
 */
#ifndef LOGLET_API_STATUS_PAGE_H
#define LOGLET_API_STATUS_PAGE_H

#include <stddef.h>
#include <stdint.h>

#include "collector/collector.h"
#include "config/config.h"
#include "output/livetail.h"

struct api_status_env {
    const struct config *cfg;
    struct collector *collector;
    struct livetail *hub; /* may be NULL */
    int64_t started_ms;   /* CLOCK_MONOTONIC */
};

/* Writes the page into buf (at most cap bytes: a long targets table is cut
 * with a note); returns its length. */
size_t api_status_render(const struct api_status_env *env, char *buf, size_t cap);

#endif
