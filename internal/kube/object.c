/*
 * object — the API server's JSON, reduced to struct kube_object.
 *
 * jansson rather than json-c: it parses from a buffer with a length (the
 * watch stream's lines are not NUL-terminated), keeps a string's length when
 * it holds a NUL (JSON_ALLOW_NUL), bounds nesting depth, rejects duplicate keys on request
 * (JSON_REJECT_DUPLICATES) and reports the byte position of an error, all of
 * which an input we do not trust needs; its API is small and it is packaged
 * by Debian as libjansson-dev.
 *
 * Everything is checked: a field of the wrong type is an error naming it,
 * not a NULL dereference; strings are copied out (the JSON tree is freed
 * before returning).
 *
 * One object is never allowed to spoil the others: the API server accepts
 * any annotation value, "\u0000" included, so a document is read with
 * JSON_ALLOW_NUL and a value holding a NUL is refused where it is kept (it
 * cannot be a C string); a list item or a watch event's object that cannot
 * be read is skipped (KUBE_EVENT_UNREADABLE, kube_list.nskipped) and the
 * rest of the answer is used.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kube.h"
#include "log/log.h"

#define ANNOTATION_PREFIX "loglet.io/"
/* The kubelet's static pods: their mirror pod carries the config hash the
 * kubelet uses in place of a uid (in the log directory's name). */
#define MIRROR_ANNOTATION "kubernetes.io/config.mirror"
#define CONFIG_HASH_ANNOTATION "kubernetes.io/config.hash"
#define CONFIG_HASH_MAX_BYTES 128

void kube_setf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *kind_name(enum kube_kind kind) { return kind == KUBE_POD ? "pod" : "namespace"; }

void kube_object_free(struct kube_object *obj)
{
    if (!obj) return;
    free(obj->namespace_);
    free(obj->name);
    free(obj->uid);
    free(obj->node_name);
    free(obj->resource_version);
    for (size_t i = 0; i < obj->nlabels; i++) {
        free(obj->labels[i].key);
        free(obj->labels[i].value);
    }
    free(obj->labels);
    for (size_t i = 0; i < obj->nannotations; i++) {
        free(obj->annotations[i].key);
        free(obj->annotations[i].value);
    }
    free(obj->annotations);
    free(obj->owner_kind);
    free(obj->owner_name);
    free(obj->config_hash);
    memset(obj, 0, sizeof *obj);
}

void kube_event_free(struct kube_event *ev)
{
    kube_object_free(&ev->object);
    free(ev->resource_version);
    ev->resource_version = NULL;
}

void kube_list_free(struct kube_list *list)
{
    for (size_t i = 0; i < list->count; i++) kube_object_free(&list->items[i]);
    free(list->items);
    free(list->resource_version);
    free(list->continue_token);
    memset(list, 0, sizeof *list);
}

static const char *find_pair(const struct kube_pair *pairs, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(pairs[i].key, key) == 0) return pairs[i].value;
    return NULL;
}

const char *kube_object_label(const struct kube_object *obj, const char *key)
{
    return find_pair(obj->labels, obj->nlabels, key);
}

const char *kube_object_annotation(const struct kube_object *obj, const char *key)
{
    return find_pair(obj->annotations, obj->nannotations, key);
}

/* A string member, copied; absent is "" when `optional`, else an error. */
static int get_string(const json_t *parent, const char *member, const char *where, bool optional, char **out,
                      char *err, size_t errlen)
{
    const json_t *v = json_object_get(parent, member);
    if (!v || json_is_null(v)) {
        if (!optional) {
            kube_setf(err, errlen, "%s.%s is missing", where, member);
            return -1;
        }
        *out = strdup("");
    } else if (!json_is_string(v)) {
        kube_setf(err, errlen, "%s.%s is not a string", where, member);
        return -1;
    } else if (json_string_length(v) > KUBE_MAX_VALUE_BYTES) {
        kube_setf(err, errlen, "%s.%s is longer than %d bytes", where, member, KUBE_MAX_VALUE_BYTES);
        return -1;
    } else if (memchr(json_string_value(v), '\0', json_string_length(v))) {
        kube_setf(err, errlen, "%s.%s holds a NUL character", where, member);
        return -1;
    } else {
        *out = strndup(json_string_value(v), json_string_length(v));
    }
    if (!*out) {
        kube_setf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static atomic_bool oversized_said, nul_said;

static bool has_nul(const json_t *string) { return memchr(json_string_value(string), '\0', json_string_length(string)); }

static bool oversized(const char *key, const json_t *value)
{
    return json_string_length(value) > KUBE_MAX_VALUE_BYTES || strlen(key) > KUBE_MAX_VALUE_BYTES;
}
/* A map of strings (labels, annotations); with `prefix`, only keys under it. */
static int get_pairs(const json_t *meta, const char *member, const char *prefix, struct kube_pair **out,
                     size_t *n, const char *where, char *err, size_t errlen)
{
    const json_t *map = json_object_get(meta, member);
    if (!map || json_is_null(map)) return 0;
    if (!json_is_object(map)) {
        kube_setf(err, errlen, "%s.metadata.%s is not an object", where, member);
        return -1;
    }
    const char *key;
    const json_t *value;
    size_t wanted = 0;
    json_object_foreach((json_t *)map, key, value) {
        if (prefix && strncmp(key, prefix, strlen(prefix)) != 0) continue;
        if (!json_is_string(value)) {
            kube_setf(err, errlen, "%s.metadata.%s[\"%.64s\"] is not a string", where, member, key);
            return -1;
        }
        /* One pod's odd value must not make it, or the whole list,
         * unreadable (every pod of the node would lose its metadata): a
         * value holding a NUL (no C string can) is left out, said once. */
        if (has_nul(value)) {
            if (!atomic_exchange(&nul_said, true))
                log_warn("%s.metadata.%s[\"%.64s\"] holds a NUL character: that value is left out (said once for "
                         "all objects)", where, member, key);
            continue;
        }
        /* Likewise its oversized entries are left out, said once. */
        if (oversized(key, value) || wanted >= KUBE_MAX_PAIRS) {
            if (!atomic_exchange(&oversized_said, true))
                log_warn("%s.metadata.%s: entries over %d bytes or past the first %d are left out (said once)",
                         where, member, KUBE_MAX_VALUE_BYTES, KUBE_MAX_PAIRS);
            continue;
        }
        wanted++;
    }
    if (!wanted) return 0;
    *out = calloc(wanted, sizeof **out);
    if (!*out) goto oom;
    json_object_foreach((json_t *)map, key, value) {
        if (prefix && strncmp(key, prefix, strlen(prefix)) != 0) continue;
        if (has_nul(value) || oversized(key, value)) continue;
        if (*n == wanted) break;
        struct kube_pair *p = &(*out)[*n];
        p->key = strdup(key);
        p->value = strndup(json_string_value(value), json_string_length(value));
        (*n)++;
        if (!p->key || !p->value) goto oom;
    }
    return 0;
oom:
    kube_setf(err, errlen, "out of memory");
    return -1;
}

/* A static pod's config hash, from its mirror pod's annotations (already
 * checked to be an object, or absent). Anything else there is not ours to
 * judge: a missing, non-string or oversized value just means no hash. */
static int get_config_hash(const json_t *meta, struct kube_object *obj, char *err, size_t errlen)
{
    const json_t *annotations = json_object_get(meta, "annotations");
    if (!json_is_object(annotations)) return 0;
    const char *keys[] = {MIRROR_ANNOTATION, CONFIG_HASH_ANNOTATION};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const json_t *v = json_object_get(annotations, keys[i]);
        if (!json_is_string(v) || !json_string_length(v) || json_string_length(v) > CONFIG_HASH_MAX_BYTES ||
            has_nul(v))
            continue;
        if (!(obj->config_hash = strndup(json_string_value(v), json_string_length(v)))) {
            kube_setf(err, errlen, "out of memory");
            return -1;
        }
        return 0;
    }
    return 0;
}

/* The ownerReference with controller: true (at most one may say so). */
static int get_owner(const json_t *meta, struct kube_object *obj, const char *where, char *err, size_t errlen)
{
    const json_t *refs = json_object_get(meta, "ownerReferences");
    if (!refs || json_is_null(refs)) return 0;
    if (!json_is_array(refs)) {
        kube_setf(err, errlen, "%s.metadata.ownerReferences is not a list", where);
        return -1;
    }
    size_t i;
    const json_t *ref;
    json_array_foreach(refs, i, ref) {
        if (!json_is_object(ref)) {
            kube_setf(err, errlen, "%s.metadata.ownerReferences[%zu] is not an object", where, i);
            return -1;
        }
        const json_t *controller = json_object_get(ref, "controller");
        if (controller && !json_is_boolean(controller) && !json_is_null(controller)) {
            kube_setf(err, errlen, "%s.metadata.ownerReferences[%zu].controller is not a boolean", where, i);
            return -1;
        }
        if (!json_is_true(controller) || obj->owner_kind) continue;
        char ctx[96];
        snprintf(ctx, sizeof ctx, "%s.metadata.ownerReferences[%zu]", where, i);
        if (get_string(ref, "kind", ctx, false, &obj->owner_kind, err, errlen) != 0 ||
            get_string(ref, "name", ctx, false, &obj->owner_name, err, errlen) != 0)
            return -1;
    }
    return 0;
}

static int parse_object(const json_t *root, enum kube_kind kind, struct kube_object *obj, char *err, size_t errlen)
{
    memset(obj, 0, sizeof *obj);
    obj->kind = kind;
    const char *where = kind_name(kind);
    if (!json_is_object(root)) {
        kube_setf(err, errlen, "the %s is not an object", where);
        return -1;
    }
    const json_t *meta = json_object_get(root, "metadata");
    if (!json_is_object(meta)) {
        kube_setf(err, errlen, "%s.metadata is %s", where, meta ? "not an object" : "missing");
        return -1;
    }
    char ctx[32];
    snprintf(ctx, sizeof ctx, "%s.metadata", where);
    if (get_string(meta, "name", ctx, false, &obj->name, err, errlen) != 0 ||
        get_string(meta, "uid", ctx, true, &obj->uid, err, errlen) != 0 ||
        get_string(meta, "resourceVersion", ctx, true, &obj->resource_version, err, errlen) != 0)
        goto fail;
    if (kind == KUBE_POD) {
        if (get_string(meta, "namespace", ctx, false, &obj->namespace_, err, errlen) != 0) goto fail;
        const json_t *spec = json_object_get(root, "spec");
        if (spec && !json_is_object(spec)) {
            kube_setf(err, errlen, "pod.spec is not an object");
            goto fail;
        }
        if (spec) {
            if (get_string(spec, "nodeName", "pod.spec", true, &obj->node_name, err, errlen) != 0) goto fail;
        } else if (!(obj->node_name = strdup(""))) {
            kube_setf(err, errlen, "out of memory");
            goto fail;
        }
        if (get_owner(meta, obj, where, err, errlen) != 0) goto fail;
    }
    if (!obj->name[0]) {
        kube_setf(err, errlen, "%s.metadata.name is empty", where);
        goto fail;
    }
    if (get_pairs(meta, "labels", NULL, &obj->labels, &obj->nlabels, where, err, errlen) != 0 ||
        get_pairs(meta, "annotations", ANNOTATION_PREFIX, &obj->annotations, &obj->nannotations, where, err,
                  errlen) != 0)
        goto fail;
    if (kind == KUBE_POD && get_config_hash(meta, obj, err, errlen) != 0) goto fail;
    return 0;
fail:
    kube_object_free(obj);
    return -1;
}

/* "pod shop/web-0: <why>", with what of the name could be read. */
static void name_unreadable(const json_t *root, enum kube_kind kind, const char *why, char *dst, size_t cap)
{
    const json_t *meta = json_is_object(root) ? json_object_get(root, "metadata") : NULL;
    const json_t *ns = json_is_object(meta) ? json_object_get(meta, "namespace") : NULL;
    const json_t *name = json_is_object(meta) ? json_object_get(meta, "name") : NULL;
    /* %.*s: a name holding a NUL is printed up to it. */
    if (json_is_string(name))
        snprintf(dst, cap, "%s %s%s%.128s: %s", kind_name(kind), json_is_string(ns) ? json_string_value(ns) : "",
                 json_is_string(ns) ? "/" : "", json_string_value(name), why);
    else
        snprintf(dst, cap, "a %s without a readable name: %s", kind_name(kind), why);
}

static json_t *load(const char *text, size_t len, size_t max, const char *what, char *err, size_t errlen)
{
    if (len > max) {
        kube_setf(err, errlen, "%s of %zu bytes is larger than the %zu bytes accepted", what, len, max);
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root) kube_setf(err, errlen, "%s is not valid JSON: %s at byte %d", what, jerr.text, jerr.position);
    return root;
}

int kube_parse_event(const char *text, size_t len, enum kube_kind kind, struct kube_event *ev, char *err,
                     size_t errlen)
{
    memset(ev, 0, sizeof *ev);
    json_t *root = load(text, len, KUBE_MAX_EVENT_BYTES, "a watch event", err, errlen);
    if (!root) return -1;
    int rc = -1;
    const json_t *type = json_object_get(root, "type");
    const json_t *object = json_object_get(root, "object");
    if (!json_is_object(root) || !json_is_string(type) || !json_is_object(object)) {
        kube_setf(err, errlen, "a watch event must be an object with a string \"type\" and an object \"object\"");
        goto out;
    }
    const char *t = json_string_value(type);
    if (strcmp(t, "ERROR") == 0) {
        /* The object is a Status: {"kind":"Status","code":410,"message":…}. */
        ev->type = KUBE_EVENT_ERROR;
        const json_t *code = json_object_get(object, "code");
        const json_t *message = json_object_get(object, "message");
        ev->code = json_is_integer(code) ? (long)json_integer_value(code) : 0;
        snprintf(ev->message, sizeof ev->message, "%s", json_is_string(message) ? json_string_value(message) : "");
        rc = 0;
        goto out;
    }
    if (strcmp(t, "ADDED") == 0) ev->type = KUBE_EVENT_ADDED;
    else if (strcmp(t, "MODIFIED") == 0) ev->type = KUBE_EVENT_MODIFIED;
    else if (strcmp(t, "DELETED") == 0) ev->type = KUBE_EVENT_DELETED;
    else if (strcmp(t, "BOOKMARK") == 0) ev->type = KUBE_EVENT_BOOKMARK;
    else {
        kube_setf(err, errlen, "unknown watch event type \"%.32s\"", t);
        goto out;
    }
    if (ev->type == KUBE_EVENT_BOOKMARK) {
        /* A bookmark carries only metadata.resourceVersion. */
        const json_t *meta = json_object_get(object, "metadata");
        if (!json_is_object(meta) ||
            get_string(meta, "resourceVersion", "bookmark.metadata", false, &ev->resource_version, err, errlen) != 0) {
            if (!json_is_object(meta)) kube_setf(err, errlen, "a BOOKMARK event has no metadata");
            goto out;
        }
        rc = 0;
        goto out;
    }
    char why[256];
    if (parse_object(object, kind, &ev->object, why, sizeof why) != 0) {
        ev->type = KUBE_EVENT_UNREADABLE;
        name_unreadable(object, kind, why, ev->message, sizeof ev->message);
        /* Its version still moves the watch on past it. */
        const json_t *meta = json_object_get(object, "metadata");
        const json_t *version = json_is_object(meta) ? json_object_get(meta, "resourceVersion") : NULL;
        if (json_is_string(version) && json_string_length(version) && !has_nul(version) &&
            !(ev->resource_version = strdup(json_string_value(version)))) {
            kube_setf(err, errlen, "out of memory");
            goto out;
        }
        rc = 0;
        goto out;
    }
    if (!(ev->resource_version = strdup(ev->object.resource_version))) {
        kube_setf(err, errlen, "out of memory");
        kube_object_free(&ev->object);
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    if (rc != 0) kube_event_free(ev);
    return rc;
}

int kube_parse_list(const char *text, size_t len, enum kube_kind kind, struct kube_list *list, char *err,
                    size_t errlen)
{
    memset(list, 0, sizeof *list);
    json_t *root = load(text, len, KUBE_MAX_LIST_BYTES, "a list answer", err, errlen);
    if (!root) return -1;
    int rc = -1;
    const json_t *meta = json_object_get(root, "metadata");
    const json_t *items = json_object_get(root, "items");
    if (!json_is_object(root) || !json_is_object(meta) || !(json_is_array(items) || json_is_null(items))) {
        kube_setf(err, errlen, "a list answer must be an object with \"metadata\" and a list \"items\"");
        goto out;
    }
    if (get_string(meta, "resourceVersion", "list.metadata", false, &list->resource_version, err, errlen) != 0)
        goto out;
    const json_t *cont = json_object_get(meta, "continue");
    if (cont && json_is_string(cont) && json_string_length(cont)) {
        if (!(list->continue_token = strdup(json_string_value(cont)))) {
            kube_setf(err, errlen, "out of memory");
            goto out;
        }
    } else if (cont && !json_is_string(cont) && !json_is_null(cont)) {
        kube_setf(err, errlen, "list.metadata.continue is not a string");
        goto out;
    }
    size_t n = json_is_array(items) ? json_array_size(items) : 0;
    if (n > KUBE_CACHE_MAX_OBJECTS) {
        kube_setf(err, errlen, "the list has %zu items, more than the %d accepted", n, KUBE_CACHE_MAX_OBJECTS);
        goto out;
    }
    if (n && !(list->items = calloc(n, sizeof *list->items))) {
        kube_setf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        char inner[256];
        const json_t *item = json_array_get(items, i);
        if (parse_object(item, kind, &list->items[list->count], inner, sizeof inner) != 0) {
            if (!list->nskipped++) {
                char named[288];
                name_unreadable(item, kind, inner, named, sizeof named);
                snprintf(list->skipped, sizeof list->skipped, "list item %zu, %s", i, named);
            }
            continue;
        }
        list->count++;
    }
    rc = 0;
out:
    json_decref(root);
    if (rc != 0) kube_list_free(list);
    return rc;
}
