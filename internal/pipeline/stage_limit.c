/*
 * limit — a token bucket of `rate` entries per second and `burst` tokens
 * (default: rate), per file (`by: stream`, the default: a container's log)
 * or shared by every file of the block (`by: match`).
 *
 * action: drop — an entry finding the bucket empty is dropped, acknowledged
 * and counted (reason "rate").
 * action: wait — nothing is dropped and nothing is held in memory: the
 * entry that takes the last token goes on, and paused() tells the collector
 * to read no more of that file until a token is back. The file on disk is
 * the buffer; other files are not slowed.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "stage.h"

static const char *const reasons[] = {"rate", NULL};

struct bucket {
    double tokens;
    int64_t last_ms;
    bool started;
};

struct limit_conf {
    double rate, burst;
    bool wait;
    bool shared;
    struct bucket bucket; /* by: match */
};

static void refill(const struct limit_conf *lc, struct bucket *b, int64_t now)
{
    if (!b->started) {
        b->tokens = lc->burst;
        b->last_ms = now;
        b->started = true;
        return;
    }
    if (now > b->last_ms) {
        b->tokens += (double)(now - b->last_ms) * lc->rate / 1000.0;
        if (b->tokens > lc->burst) b->tokens = lc->burst;
        b->last_ms = now;
    }
}

static struct bucket *bucket_of(const struct stage *st, void *state)
{
    struct limit_conf *lc = st->conf;
    return lc->shared ? &lc->bucket : state;
}

static enum stage_verdict limit_process(const struct stage *st, void *state, struct stage_run *r)
{
    const struct limit_conf *lc = st->conf;
    struct bucket *b = bucket_of(st, state);
    stage_remember(r, b, sizeof *b); /* a refused entry gives its token back */
    refill(lc, b, r->now_ms);
    if (b->tokens >= 1.0 || lc->wait) {
        b->tokens -= 1.0;
        return STAGE_PASS;
    }
    r->drop_reason = 0;
    return STAGE_DROP;
}

static bool limit_paused(const struct stage *st, const void *state, int64_t now_ms, int64_t *until_ms)
{
    const struct limit_conf *lc = st->conf;
    if (!lc->wait) return false;
    const struct bucket *b = lc->shared ? &lc->bucket : state;
    if (!b->started) return false;
    double tokens = b->tokens + (double)(now_ms - b->last_ms) * lc->rate / 1000.0;
    if (tokens >= 1.0) return false;
    *until_ms = now_ms + (int64_t)ceil((1.0 - tokens) * 1000.0 / lc->rate);
    return true;
}

static int limit_compile(struct stage *st, const struct config_tree *node, struct stage_compile *cx)
{
    static const char *const keys[] = {"rate", "burst", "by", "action", NULL};
    struct limit_conf *lc = calloc(1, sizeof *lc);
    if (!lc) return stage_fail(cx, node, NULL, "out of memory");
    st->conf = lc;
    if (node->kind != CONFIG_TREE_MAP) return stage_fail(cx, node, NULL, "expected a mapping with rate");
    if (stage_check_keys(cx, node, keys) != 0) return -1;
    bool bad = false;
    const char *rate = stage_scalar(cx, node, "rate", &bad);
    const char *by = stage_scalar(cx, node, "by", &bad);
    const char *action = stage_scalar(cx, node, "action", &bad);
    if (bad) return -1;
    char *end = NULL;
    lc->rate = rate ? strtod(rate, &end) : 0;
    if (!rate || !*rate || *end || !(lc->rate > 0) || lc->rate > 1e9)
        return stage_fail(cx, rate ? config_tree_get(node, "rate") : node, "rate",
                          "missing or invalid: entries per second, more than 0");
    int64_t burst = (int64_t)ceil(lc->rate);
    if (stage_get_int(cx, node, "burst", 1, 1000000000, &burst) != 0) return -1;
    lc->burst = (double)burst;
    if (by && strcmp(by, "stream") != 0 && strcmp(by, "match") != 0)
        return stage_fail(cx, config_tree_get(node, "by"), "by", "'%s' is not one of stream, match", by);
    lc->shared = by && strcmp(by, "match") == 0;
    if (action && strcmp(action, "drop") != 0 && strcmp(action, "wait") != 0)
        return stage_fail(cx, config_tree_get(node, "action"), "action", "'%s' is not one of drop, wait", action);
    lc->wait = action && strcmp(action, "wait") == 0;
    st->pauses = lc->wait;
    return 0;
}

static void limit_print(const struct stage *st, FILE *out)
{
    const struct limit_conf *lc = st->conf;
    fprintf(out, "{rate: %g, burst: %lld, by: %s, action: %s}", lc->rate, (long long)lc->burst,
            lc->shared ? "match" : "stream", lc->wait ? "wait" : "drop");
}

static void limit_free(struct stage *st) { free(st->conf); }

const struct stage_ops stage_limit = {
    .name = "limit", .drop_reasons = reasons, .compile = limit_compile, .state_size = sizeof(struct bucket),
    .process = limit_process, .paused = limit_paused, .print = limit_print, .free = limit_free,
};
