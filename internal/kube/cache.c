/*
 * cache — this node's pods (and, when watched, the namespaces) as last
 * heard from the API server, shared between the watch threads (writers) and
 * the collector (reader, when a file is opened).
 *
 * Invariants (under `lock`):
 *  - pods/namespaces map the entry's own key ("ns/name" or "name") to it;
 *    npods/nnamespaces count their entries, deleted ones included.
 *  - deleted_ms != 0: the API server said the object is gone (or a relist
 *    no longer had it) at that time. A deleted pod is kept while `holds`
 *    says a file of it is open, so that its files keep their metadata to
 *    their last line (and a file rotated after the deletion gets it too),
 *    then KUBE_DELETED_GRACE_MS more; a deleted namespace for the grace.
 *  - holds maps "ns/name" to a count > 0 of open files; no entry: none.
 *  - generation grows with every change a reader could see.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kube.h"
#include "log/log.h"
#include "metrics/metrics.h"

void kube_cache_init(struct kube_cache *cache)
{
    memset(cache, 0, sizeof *cache);
    pthread_mutex_init(&cache->lock, NULL);
    atomic_init(&cache->generation, 1);
    atomic_init(&cache->pods_synced, false);
    atomic_init(&cache->unavailable, false);
    atomic_init(&cache->namespaces_synced, false);
    atomic_init(&cache->namespaces_unavailable, false);
    atomic_init(&cache->last_update_ms, 0);
}

static void entry_free(struct kube_entry *e)
{
    kube_object_free(&e->object);
    free(e->key);
    free(e);
}

static void free_table(struct table *t)
{
    size_t cursor = 0;
    for (struct kube_entry *e; (e = table_next(t, &cursor));) entry_free(e);
    table_free(t);
}

void kube_cache_free(struct kube_cache *cache)
{
    free_table(&cache->pods);
    free_table(&cache->namespaces);
    size_t cursor = 0;
    for (struct kube_hold *h; (h = table_next(&cache->holds, &cursor));) {
        free(h->key);
        free(h);
    }
    table_free(&cache->holds);
    pthread_mutex_destroy(&cache->lock);
}

static char *key_of(const struct kube_object *obj)
{
    size_t n = strlen(obj->name) + (obj->namespace_ ? strlen(obj->namespace_) + 1 : 0) + 1;
    char *key = malloc(n);
    if (!key) return NULL;
    if (obj->kind == KUBE_POD) snprintf(key, n, "%s/%s", obj->namespace_, obj->name);
    else snprintf(key, n, "%s", obj->name);
    return key;
}

static struct table *table_of(struct kube_cache *cache, enum kube_kind kind, size_t **count)
{
    *count = kind == KUBE_POD ? &cache->npods : &cache->nnamespaces;
    return kind == KUBE_POD ? &cache->pods : &cache->namespaces;
}

static bool held(struct kube_cache *cache, const struct kube_entry *e)
{
    return e->object.kind == KUBE_POD && table_get_str(&cache->holds, e->key) != NULL;
}

/* Drops deleted entries no file holds, past their grace (locked). Entries
 * are few (a node's pods), so a sweep per change costs little. */
static void expire(struct kube_cache *cache, struct table *t, size_t *count, int64_t now)
{
    struct kube_entry *gone[64];
    size_t n;
    do {
        n = 0;
        size_t cursor = 0;
        for (struct kube_entry *e; n < 64 && (e = table_next(t, &cursor));) {
            if (!e->deleted_ms || held(cache, e)) continue;
            int64_t since = e->released_ms > e->deleted_ms ? e->released_ms : e->deleted_ms;
            if (now - since >= KUBE_DELETED_GRACE_MS) gone[n++] = e;
        }
        for (size_t i = 0; i < n; i++) {
            table_del_str(t, gone[i]->key);
            entry_free(gone[i]);
            (*count)--;
        }
    } while (n == 64);
}

void kube_cache_expire(struct kube_cache *cache, int64_t now_ms)
{
    pthread_mutex_lock(&cache->lock);
    expire(cache, &cache->pods, &cache->npods, now_ms);
    expire(cache, &cache->namespaces, &cache->nnamespaces, now_ms);
    metrics_set(kube_pods_cached, (int64_t)cache->npods);
    pthread_mutex_unlock(&cache->lock);
}

static int pod_key(char *key, size_t cap, const char *ns, const char *name)
{
    int n = snprintf(key, cap, "%s/%s", ns, name);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int kube_cache_hold(struct kube_cache *cache, const char *ns, const char *name)
{
    char key[512];
    if (pod_key(key, sizeof key, ns, name) != 0) return 0; /* no such pod can be cached */
    pthread_mutex_lock(&cache->lock);
    struct kube_hold *h = table_get_str(&cache->holds, key);
    if (!h) {
        h = calloc(1, sizeof *h);
        if (!h || !(h->key = strdup(key)) || table_put_str(&cache->holds, h->key, h) != 0) {
            if (h) free(h->key);
            free(h);
            pthread_mutex_unlock(&cache->lock);
            return -1;
        }
    }
    h->files++;
    pthread_mutex_unlock(&cache->lock);
    return 0;
}

void kube_cache_release(struct kube_cache *cache, const char *ns, const char *name, int64_t now_ms)
{
    char key[512];
    if (pod_key(key, sizeof key, ns, name) != 0) return;
    pthread_mutex_lock(&cache->lock);
    struct kube_hold *h = table_get_str(&cache->holds, key);
    if (h && --h->files == 0) {
        table_del_str(&cache->holds, key);
        free(h->key);
        free(h);
        struct kube_entry *e = table_get_str(&cache->pods, key);
        if (e) e->released_ms = now_ms;
    }
    pthread_mutex_unlock(&cache->lock);
}

static void publish(struct kube_cache *cache)
{
    atomic_fetch_add(&cache->generation, 1);
    atomic_store(&cache->last_update_ms, metrics_now_ms());
    metrics_set(kube_pods_cached, (int64_t)cache->npods);
}

/* Takes obj. Locked. */
static void put(struct kube_cache *cache, struct kube_object *obj, bool deleted, int64_t now)
{
    size_t *count;
    struct table *t = table_of(cache, obj->kind, &count);
    char *key = key_of(obj);
    if (!key) {
        log_error("kubernetes: out of memory caching %s", obj->name);
        kube_object_free(obj);
        return;
    }
    /* publish() moves the generation to this value once the change is in. */
    uint64_t gen = atomic_load(&cache->generation) + 1;
    struct kube_entry *e = table_get_str(t, key);
    if (e) {
        free(key);
        kube_object_free(&e->object);
        e->object = *obj;
        e->deleted_ms = deleted ? now : 0;
        e->changed_gen = gen;
        memset(obj, 0, sizeof *obj);
        return;
    }
    if (deleted) { /* never seen: nothing to keep */
        free(key);
        kube_object_free(obj);
        return;
    }
    if (*count >= KUBE_CACHE_MAX_OBJECTS) {
        log_error("kubernetes: more than %d objects cached; %s is not (the node cannot run that many pods: is "
                  "the field selector honoured?)", KUBE_CACHE_MAX_OBJECTS, key);
        free(key);
        kube_object_free(obj);
        return;
    }
    e = calloc(1, sizeof *e);
    if (!e || table_put_str(t, key, e) != 0) {
        log_error("kubernetes: out of memory caching %s", key);
        free(e);
        free(key);
        kube_object_free(obj);
        return;
    }
    e->key = key;
    e->object = *obj;
    e->changed_gen = gen;
    memset(obj, 0, sizeof *obj);
    (*count)++;
}

void kube_cache_apply(struct kube_cache *cache, struct kube_event *ev)
{
    if (ev->type != KUBE_EVENT_ADDED && ev->type != KUBE_EVENT_MODIFIED && ev->type != KUBE_EVENT_DELETED) return;
    int64_t now = metrics_now_ms();
    pthread_mutex_lock(&cache->lock);
    size_t *count;
    struct table *t = table_of(cache, ev->object.kind, &count);
    expire(cache, t, count, now);
    put(cache, &ev->object, ev->type == KUBE_EVENT_DELETED, now);
    publish(cache);
    pthread_mutex_unlock(&cache->lock);
}

void kube_cache_replace(struct kube_cache *cache, enum kube_kind kind, struct kube_list *list)
{
    int64_t now = metrics_now_ms();
    pthread_mutex_lock(&cache->lock);
    size_t *count;
    struct table *t = table_of(cache, kind, &count);
    /* Everything not in the new list was deleted while we were not watching. */
    size_t cursor = 0;
    for (struct kube_entry *e; (e = table_next(t, &cursor));)
        if (!e->deleted_ms) e->deleted_ms = now;
    for (size_t i = 0; i < list->count; i++) put(cache, &list->items[i], false, now);
    expire(cache, t, count, now);
    if (kind == KUBE_POD) atomic_store(&cache->pods_synced, true);
    else atomic_store(&cache->namespaces_synced, true);
    publish(cache);
    pthread_mutex_unlock(&cache->lock);
}

const struct kube_entry *kube_cache_pod_locked(struct kube_cache *cache, const char *ns, const char *name,
                                               const char *uid)
{
    char key[512];
    if ((size_t)snprintf(key, sizeof key, "%s/%s", ns, name) >= sizeof key) return NULL;
    const struct kube_entry *e = table_get_str(&cache->pods, key);
    if (!e || !uid || !*uid || !e->object.uid[0] || strcmp(e->object.uid, uid) == 0) return e;
    /* A static pod's files are under its config hash; the mirror pod the
     * API server shows has a uid of its own. */
    if (e->object.config_hash && strcmp(e->object.config_hash, uid) == 0) return e;
    return NULL;
}

const struct kube_entry *kube_cache_namespace_locked(struct kube_cache *cache, const char *name)
{
    return table_get_str(&cache->namespaces, name);
}

uint64_t kube_cache_generation(const struct kube_cache *cache)
{
    return atomic_load_explicit(&cache->generation, memory_order_acquire);
}
