/*
 * libFuzzer harness for the API server's answers (internal/kube/object.c):
 * each input is read as a watch event (pod and namespace) and as a list.
 * Invariants: a call returns 0 or -1; on -1 a reason is written and nothing
 * is left allocated (the sanitizers' leak check); on 0 every string the
 * object holds is NUL-terminated, non-NULL where the contract says so, and
 * the counts stay within the bounds object.c promises. Applied to a cache,
 * parsed events never break its counts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kube/kube.h"
#include "log/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_object(const struct kube_object *o)
{
    if (!o->name || !o->name[0] || !o->uid || !o->resource_version) abort();
    if (o->kind == KUBE_POD && (!o->namespace_ || !o->node_name)) abort();
    if (o->nlabels > KUBE_MAX_PAIRS || o->nannotations > KUBE_MAX_PAIRS) abort();
    for (size_t i = 0; i < o->nlabels; i++)
        if (!o->labels[i].key || !o->labels[i].value) abort();
    for (size_t i = 0; i < o->nannotations; i++)
        if (strncmp(o->annotations[i].key, "loglet.io/", 10) != 0) abort();
    if (!o->owner_kind != !o->owner_name) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet++) log_setup(LOG_LEVEL_ERROR, LOG_FORMAT_LOGFMT);
    const char *text = (const char *)data;
    char err[512];
    static struct kube_cache cache;
    static int cache_ready;
    if (!cache_ready++) kube_cache_init(&cache);
    for (int k = 0; k < 2; k++) {
        enum kube_kind kind = k ? KUBE_NAMESPACE : KUBE_POD;
        struct kube_event ev;
        err[0] = '\0';
        int rc = kube_parse_event(text, size, kind, &ev, err, sizeof err);
        if (rc != 0 && (rc != -1 || !err[0])) abort();
        if (rc == 0) {
            /* An unreadable object says why and holds nothing; its version may be unreadable too. */
            if (ev.type == KUBE_EVENT_UNREADABLE && (!ev.message[0] || ev.object.name)) abort();
            if (ev.type != KUBE_EVENT_ERROR && ev.type != KUBE_EVENT_UNREADABLE && !ev.resource_version) abort();
            if (ev.type <= KUBE_EVENT_DELETED) check_object(&ev.object);
            kube_cache_apply(&cache, &ev);
            kube_event_free(&ev);
        }
        struct kube_list list;
        err[0] = '\0';
        rc = kube_parse_list(text, size, kind, &list, err, sizeof err);
        if (rc != 0 && (rc != -1 || !err[0])) abort();
        if (rc == 0) {
            if (!list.resource_version) abort();
            for (size_t i = 0; i < list.count; i++) check_object(&list.items[i]);
            if (list.nskipped && !list.skipped[0]) abort();
            kube_list_free(&list);
        }
    }
    if (cache.npods > KUBE_CACHE_MAX_OBJECTS || cache.nnamespaces > KUBE_CACHE_MAX_OBJECTS) abort();
    return 0;
}
