/*
 * kube — what the agent knows of the Kubernetes API server: who to ask and
 * how (auth.c), what its answers mean (object.c), the node's pods kept in
 * memory (cache.c), and the list-then-watch loops that keep them fresh
 * (watch.c, one thread per resource).
 *
 * Contract:
 *  - Only this node's pods are listed and watched
 *    (`fieldSelector=spec.nodeName=NODE`), and namespaces only when asked.
 *    The cache holds those objects and nothing else: it is bounded by what
 *    the node runs, plus deleted pods that still have files open (held by
 *    the collector, kube_cache_hold: kept so the files a pod left behind are
 *    labelled to their last line, rotations included) or whose last file
 *    closed less than KUBE_DELETED_GRACE_MS ago (discovery may still find
 *    one late), and by KUBE_CACHE_MAX_OBJECTS against a server that sends
 *    too much.
 *  - Objects are reduced when parsed to the fields labels and collection
 *    need (name, uid, labels, the loglet.io/ annotations, the controlling
 *    owner, a mirror pod's config hash); the JSON text is never kept.
 *  - Parsing (object.c) is pure but for warnings said once: every input —
 *    malformed JSON, wrong types, missing fields, oversized values, NULs —
 *    gives -1 and a one-line reason, never a crash; within a well-formed
 *    answer, one object that cannot be read is skipped with its reason
 *    (the others are used), and one value that cannot be kept (a NUL in
 *    it, oversized) is left out of its object. JSON is read with jansson.
 *  - The watch loops never block the collector or the output: they run on
 *    their own threads and publish into the cache under its mutex; readers
 *    copy what they need out under the same mutex. kube_cache_generation()
 *    moves whenever an object changed, so a reader can tell cheaply that
 *    nothing did.
 *  - The API server being down, slow, or talking garbage only delays
 *    metadata: the loops back off, relist and say so, never exit.
 */
#ifndef LOGLET_KUBE_H
#define LOGLET_KUBE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "table/table.h"

/* One watch event line, and one list page, beyond which the answer is
 * refused (etcd stores objects of at most 1.5 MiB). */
#define KUBE_MAX_EVENT_BYTES (4u << 20)
#define KUBE_MAX_LIST_BYTES (64u << 20)
/* Per object: more labels (or loglet.io/ annotations) than this, or a
 * longer value, and the object is refused as malformed. */
#define KUBE_MAX_PAIRS 256
#define KUBE_MAX_VALUE_BYTES 65536
#define KUBE_CACHE_MAX_OBJECTS 20000
#define KUBE_TOKEN_MAX_BYTES 65536
/* A deleted pod none of whose files is open is dropped this long after its
 * deletion or its last file's closing, whichever came last: longer than the
 * collector's 10 s rescan, which may find a file of it late. */
#define KUBE_DELETED_GRACE_MS (15 * 1000)

/* ------------------------------------------------------------------------ */
/* Objects (object.c)                                                       */

struct kube_pair {
    char *key;
    char *value;
};

enum kube_kind { KUBE_POD, KUBE_NAMESPACE };

struct kube_object {
    enum kube_kind kind;
    char *namespace_; /* pods only */
    char *name;
    char *uid;
    char *node_name; /* pods only; "" when unscheduled */
    char *resource_version;
    struct kube_pair *labels;
    size_t nlabels;
    struct kube_pair *annotations; /* only those under loglet.io/ */
    size_t nannotations;
    char *owner_kind; /* the controlling ownerReference, or NULL */
    char *owner_name;
    /* A mirror pod's config hash (annotation kubernetes.io/config.mirror, or
     * kubernetes.io/config.hash), or NULL: the kubelet names a static pod's
     * log directory with it, not with the mirror pod's uid. */
    char *config_hash;
};

/* UNREADABLE: a well-formed event whose object could not be read (a field
 * of the wrong type, a name holding a NUL): skipped, so that one odd object
 * does not stop the watch of every other. */
enum kube_event_type {
    KUBE_EVENT_ADDED,
    KUBE_EVENT_MODIFIED,
    KUBE_EVENT_DELETED,
    KUBE_EVENT_BOOKMARK,
    KUBE_EVENT_ERROR,
    KUBE_EVENT_UNREADABLE
};

struct kube_event {
    enum kube_event_type type;
    struct kube_object object;  /* ADDED, MODIFIED, DELETED */
    char *resource_version;     /* every type but ERROR; UNREADABLE: NULL when unreadable too */
    long code;                  /* ERROR: the Status code (410: the version is too old) */
    char message[320];          /* ERROR: the Status message; UNREADABLE: what is wrong, naming the object */
};

struct kube_list {
    struct kube_object *items;
    size_t count;
    char *resource_version;
    char *continue_token; /* NULL on the last page */
    /* Items that could not be read and are left out; why for the first. */
    size_t nskipped;
    char skipped[320];
};

/* Parses one watch event (`{"type":…,"object":…}`, one line of the stream). */
int kube_parse_event(const char *text, size_t len, enum kube_kind kind, struct kube_event *ev, char *err,
                     size_t errlen);
/* Parses a list answer (`{"kind":"PodList","metadata":{…},"items":[…]}`). */
int kube_parse_list(const char *text, size_t len, enum kube_kind kind, struct kube_list *list, char *err,
                    size_t errlen);
void kube_object_free(struct kube_object *obj);
void kube_event_free(struct kube_event *ev);
void kube_list_free(struct kube_list *list);
const char *kube_object_label(const struct kube_object *obj, const char *key);
const char *kube_object_annotation(const struct kube_object *obj, const char *key);

/* ------------------------------------------------------------------------ */
/* Authentication (auth.c)                                                  */

/* Where the API server is and how to prove who we are. Either file or data
 * for each of CA, client certificate and key (data from kubeconfig's
 * `-data` fields, already base64-decoded). The token is read from
 * token_file when set (in cluster: re-read when the file changes and after
 * a 401), else it is the kubeconfig's static token. */
struct kube_auth {
    char *server; /* https://host:port, no trailing '/' */
    char *origin; /* "in-cluster (DIR)" or "kubeconfig PATH, context NAME", for logs */
    char *ca_file, *cert_file, *key_file;
    unsigned char *ca_data, *cert_data, *key_data;
    size_t ca_len, cert_len, key_len;
    bool insecure_skip_verify;
    char *token_file;
    pthread_mutex_t token_lock;
    char *token; /* NULL: none; under token_lock */
    struct stat token_stat;
    bool token_error_said;
};

/* In cluster: KUBERNETES_SERVICE_HOST and _PORT set, with token and ca.crt
 * in sa_dir. Returns 1 when not in a cluster (the variables unset), 0 when
 * `auth` is filled, -1 with `err` (a variable set but the files unusable). */
int kube_auth_in_cluster(const char *sa_dir, struct kube_auth *auth, char *err, size_t errlen);
/* The current context of a kubeconfig: server, CA, client certificate and
 * key or token. `paths` is one file, or with `is_list` a colon-separated
 * list ($KUBECONFIG) merged as client-go does (see auth.c). Returns 0, or -1
 * with `err` naming the file and what is wrong. */
int kube_auth_kubeconfig(const char *paths, bool is_list, struct kube_auth *auth, char *err, size_t errlen);
/* Re-reads the token file if it changed (or always, when forced after a
 * 401). A file that became unreadable or empty keeps the last token. */
void kube_auth_refresh_token(struct kube_auth *auth, bool force);
/* Writes "Authorization: Bearer …" into dst (or "" when there is no token). */
void kube_auth_header(struct kube_auth *auth, char *dst, size_t cap);
void kube_auth_free(struct kube_auth *auth);

/* ------------------------------------------------------------------------ */
/* The cache (cache.c)                                                      */

struct kube_cache {
    pthread_mutex_t lock;
    struct table pods;       /* "namespace/name" -> struct kube_entry */
    struct table holds;      /* "namespace/name" -> struct kube_hold: pods with files open */
    struct table namespaces; /* name -> struct kube_entry */
    size_t npods, nnamespaces;
    _Atomic uint64_t generation;
    /* The pod list has been received at least once. */
    atomic_bool pods_synced;
    /* The last attempt to reach the API server failed, and no watch is up. */
    atomic_bool unavailable;
    /* The same two for namespaces (when watched): until they are listed, a
     * namespace's exclusion is not known yet; when they cannot be had
     * (refused by RBAC, unreachable), waiting for them will not help. */
    atomic_bool namespaces_synced;
    atomic_bool namespaces_unavailable;
    _Atomic int64_t last_update_ms;
};

struct kube_entry {
    char *key;
    struct kube_object object;
    int64_t deleted_ms;   /* 0: live */
    int64_t released_ms;  /* when the last of its pod's open files closed; 0: never */
    uint64_t changed_gen; /* the cache generation its object was last replaced in */
};

/* How many open files name a pod (by namespace and name: a file is held
 * before its pod is known, and a new pod of the same name is kept as long). */
struct kube_hold {
    char *key;
    size_t files;
};

void kube_cache_init(struct kube_cache *cache);
void kube_cache_free(struct kube_cache *cache);
/* Applies one event (takes the event's object). */
void kube_cache_apply(struct kube_cache *cache, struct kube_event *ev);
/* Replaces every object of the kind by the list's (takes its items); those
 * missing from it are deleted (kept as a DELETED event's pod is). */
void kube_cache_replace(struct kube_cache *cache, enum kube_kind kind, struct kube_list *list);
/* A file of pod ns/name was opened (hold) or closed (release): a deleted
 * pod is kept while any is open. Returns -1 only when out of memory (then
 * the pod may be dropped while the file is open: it keeps its labels, a
 * rotation after that gets path labels). */
int kube_cache_hold(struct kube_cache *cache, const char *ns, const char *name);
void kube_cache_release(struct kube_cache *cache, const char *ns, const char *name, int64_t now_ms);
/* Drops the deleted pods (and namespaces) no file holds, past their grace.
 * Run at every change and bookmark, and when a pod's last file closes. */
void kube_cache_expire(struct kube_cache *cache, int64_t now_ms);
/* Under cache->lock: the pod, or NULL. A uid given must match the pod's uid
 * or, for a static pod, its config hash (a pod name reused by a new pod is
 * another pod). */
const struct kube_entry *kube_cache_pod_locked(struct kube_cache *cache, const char *ns, const char *name,
                                               const char *uid);
const struct kube_entry *kube_cache_namespace_locked(struct kube_cache *cache, const char *name);
uint64_t kube_cache_generation(const struct kube_cache *cache);

/* ------------------------------------------------------------------------ */
/* The watch loops (watch.c)                                                */

struct kube_watch;

/* Starts a thread that lists and watches `kind` (pods of `node`, or every
 * namespace) into `cache`. `auth` is shared and must outlive it. */
struct kube_watch *kube_watch_start(struct kube_auth *auth, struct kube_cache *cache, enum kube_kind kind,
                                    const char *node, char *err, size_t errlen);
void kube_watch_stop(struct kube_watch *w);

/* Formats an error into err (NULL or 0 length: nothing), for the module's files. */
void kube_setf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
