/*
 * kubernetes — the provider that labels a file with its pod's metadata from
 * the API server: the configured pod (and namespace) label copies, the
 * workload that owns the pod, the Job, and what the loglet.io/ annotations
 * ask for. internal/kube keeps the node's pods current; this file decides
 * what they mean for a file.
 *
 * Workloads are resolved from the pod alone, without asking the API server
 * for its owners:
 *  - ReplicaSet `web-7d4b9c8f5` owning a pod labelled
 *    pod-template-hash=7d4b9c8f5 is Deployment `web` (the Deployment
 *    controller names its ReplicaSets so);
 *  - Job `report-29412345`, whose suffix read as minutes since the epoch is
 *    a plausible schedule time (after 2013, before next year), is CronJob
 *    `report` (the CronJob controller names its Jobs so); a Job named
 *    otherwise stays a Job;
 *  - other owners (StatefulSet, DaemonSet, ReplicationController, custom
 *    controllers) are taken as they are; a pod without a controller has no
 *    workload labels.
 *
 * Annotations (on the pod; exclude also on its namespace when namespaces
 * are watched), read when a file is opened:
 *    loglet.io/exclude: "true"             its files are not collected;
 *    loglet.io/exclude-containers: "a,b"   nor those of these containers;
 *    loglet.io/labels: "team=payments,tier=1"  static labels for the pod.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kube/kube.h"
#include "log/log.h"
#include "metadata.h"
#include "metrics/metrics.h"

#define EXCLUDE_ANNOTATION "loglet.io/exclude"
#define EXCLUDE_CONTAINERS_ANNOTATION "loglet.io/exclude-containers"
#define LABELS_ANNOTATION "loglet.io/labels"
/* Minutes since the epoch of 2013-09: no CronJob schedule is older. */
#define CRONJOB_MINUTES_MIN 23000000LL

struct copy_rule {
    char *key;  /* the Kubernetes label */
    char *name; /* the Loki label */
};

/* Reserved label names pods asked for, said once each; past this many
 * distinct names, the rest are said at debug level. */
#define RESERVED_SAID_MAX 32

struct kube_provider {
    struct metadata_provider base;
    pthread_mutex_t said_lock;
    char *reserved_said[RESERVED_SAID_MAX];
    size_t nreserved_said;
    struct kube_auth auth;
    bool auth_set;
    struct kube_cache cache;
    bool cache_set;
    struct kube_watch *pods, *namespaces;
    struct copy_rule *pod_rules, *ns_rules;
    size_t npod_rules, nns_rules;
    bool workload_labels;
    bool structured;
    bool agent_ids; /* output.loki.structured_metadata: pod_uid and container_id are the agent's */
};

/* "key" -> {key, key}; "key=name" -> {key, name}. Loki sanitises the name. */
static int parse_rules(const struct config_strlist *list, struct copy_rule **out, size_t *n)
{
    *n = 0;
    if (!list->count) return 0;
    if (!(*out = calloc(list->count, sizeof **out))) return -1;
    for (size_t i = 0; i < list->count; i++) {
        const char *item = list->items[i];
        const char *eq = strchr(item, '=');
        struct copy_rule *r = &(*out)[(*n)++];
        r->key = eq ? strndup(item, (size_t)(eq - item)) : strdup(item);
        r->name = strdup(eq ? eq + 1 : item);
        if (!r->key || !r->name) return -1;
    }
    return 0;
}

static void free_rules(struct copy_rule *rules, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rules[i].key);
        free(rules[i].name);
    }
    free(rules);
}

/* Appends a copy of s[0..n) to the scratch arena; NULL when it is full. */
static const char *scratch_put(char *arena, size_t cap, size_t *used, const char *s, size_t n)
{
    if (*used + n + 1 > cap) return NULL;
    char *dst = arena + *used;
    memcpy(dst, s, n);
    dst[n] = '\0';
    *used += n + 1;
    return dst;
}

static bool all_digits(const char *s, size_t n)
{
    if (!n) return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return false;
    return true;
}

/* The workload owning the pod; kind and name point into the cache or arena. */
static void resolve_workload(const struct kube_object *pod, char *arena, size_t cap, size_t *used, const char **kind,
                             const char **name)
{
    *kind = pod->owner_kind;
    *name = pod->owner_name;
    if (!*kind || !*name) return;
    size_t len = strlen(*name);
    if (strcmp(*kind, "ReplicaSet") == 0) {
        const char *hash = kube_object_label(pod, "pod-template-hash");
        size_t hl = hash ? strlen(hash) : 0;
        if (hl && len > hl + 1 && (*name)[len - hl - 1] == '-' && strcmp(*name + len - hl, hash) == 0) {
            const char *dep = scratch_put(arena, cap, used, *name, len - hl - 1);
            if (dep) {
                *kind = "Deployment";
                *name = dep;
            }
        }
    } else if (strcmp(*kind, "Job") == 0) {
        const char *dash = strrchr(*name, '-');
        if (dash && dash > *name && all_digits(dash + 1, strlen(dash + 1)) && strlen(dash + 1) <= 12) {
            long long minutes = atoll(dash + 1);
            long long now_minutes = (long long)time(NULL) / 60;
            if (minutes >= CRONJOB_MINUTES_MIN && minutes <= now_minutes + 366LL * 24 * 60) {
                const char *cron = scratch_put(arena, cap, used, *name, (size_t)(dash - *name));
                if (cron) {
                    *kind = "CronJob";
                    *name = cron;
                }
            }
        }
    }
}

static bool list_has(const char *csv, const char *item)
{
    size_t n = strlen(item);
    for (const char *p = csv; *p;) {
        p += strspn(p, " ,");
        size_t len = strcspn(p, ",");
        size_t trimmed = len;
        while (trimmed && p[trimmed - 1] == ' ') trimmed--;
        if (trimmed == n && n && strncmp(p, item, n) == 0) return true;
        p += len;
    }
    return false;
}

/* "team=payments, tier=1" -> labels. Malformed pieces are skipped (said
 * at debug level: it is the pod owner's text, read at every file open). */
static void annotation_labels(struct metadata_builder *b, bool structured, const char *text, char *arena, size_t cap,
                              size_t *used)
{
    for (const char *p = text; *p;) {
        p += strspn(p, " ,");
        size_t len = strcspn(p, ",");
        const char *eq = memchr(p, '=', len);
        if (eq && eq > p) {
            size_t kl = (size_t)(eq - p), vl = len - kl - 1;
            while (kl && p[kl - 1] == ' ') kl--;
            const char *v = eq + 1;
            while (vl && *v == ' ') v++, vl--;
            while (vl && v[vl - 1] == ' ') vl--;
            const char *k = scratch_put(arena, cap, used, p, kl);
            const char *val = scratch_put(arena, cap, used, v, vl);
            if (k && val && kl) metadata_builder_add(b, structured, k, val);
        } else if (len) {
            log_debug("kubernetes: ignoring '%.*s' in %s: not name=value", (int)len, p, LABELS_ANNOTATION);
        }
        p += len;
    }
}

/* A pod's loglet.io/labels (or a copy rule) named a label Loki reserves,
 * or structured metadata the agent sends itself: said once per name
 * (describe runs at every file open; a pod's annotation should not flood
 * the log), then at debug level. */
static void say_reserved(struct kube_provider *k, const struct parser_path_meta *path, const char *name,
                         const char *why)
{
    pthread_mutex_lock(&k->said_lock);
    bool said = false;
    for (size_t i = 0; i < k->nreserved_said && !said; i++) said = strcmp(k->reserved_said[i], name) == 0;
    bool remember = !said && k->nreserved_said < RESERVED_SAID_MAX;
    char *copy = remember ? strdup(name) : NULL;
    if (copy) k->reserved_said[k->nreserved_said++] = copy;
    pthread_mutex_unlock(&k->said_lock);
    if (copy)
        log_warn("kubernetes: pod %s/%s: the name \"%.128s\" (from %s or kubernetes.pod_labels) is not sent: %s "
                 "(said once per name)", path->namespace_, path->pod, name, LABELS_ANNOTATION, why);
    else
        log_debug("kubernetes: pod %s/%s: the name \"%.128s\" is not sent: %s", path->namespace_, path->pod, name,
                  why);
}

static enum metadata_status kube_describe(struct metadata_provider *base, const struct parser_path_meta *path,
                                          struct metadata_labels **out)
{
    struct kube_provider *k = (struct kube_provider *)base;
    *out = NULL;
    if (!path->namespace_[0] || !path->pod[0]) return METADATA_FOUND; /* not a pod's file: nothing to add */
    bool unavailable = atomic_load(&k->cache.unavailable);
    struct metadata_builder b;
    memset(&b, 0, sizeof b);
    b.agent_ids = k->agent_ids;
    char arena[16384];
    size_t used = 0;

    pthread_mutex_lock(&k->cache.lock);
    const struct kube_entry *pe = kube_cache_pod_locked(&k->cache, path->namespace_, path->pod, path->pod_uid);
    if (!pe) {
        pthread_mutex_unlock(&k->cache.lock);
        return unavailable ? METADATA_UNAVAILABLE : METADATA_PENDING;
    }
    const struct kube_object *pod = &pe->object;
    const struct kube_entry *ne = k->namespaces ? kube_cache_namespace_locked(&k->cache, path->namespace_) : NULL;
    const struct kube_object *ns = ne ? &ne->object : NULL;

    const char *ex = kube_object_annotation(pod, EXCLUDE_ANNOTATION);
    const char *ns_ex = ns ? kube_object_annotation(ns, EXCLUDE_ANNOTATION) : NULL;
    const char *ex_containers = kube_object_annotation(pod, EXCLUDE_CONTAINERS_ANNOTATION);
    if (ex && strcmp(ex, "true") == 0) {
        b.excluded = true;
        b.why_excluded = "the pod is annotated " EXCLUDE_ANNOTATION "=true";
    } else if (ns_ex && strcmp(ns_ex, "true") == 0) {
        b.excluded = true;
        b.why_excluded = "its namespace is annotated " EXCLUDE_ANNOTATION "=true";
    } else if (ex_containers && path->container[0] && list_has(ex_containers, path->container)) {
        b.excluded = true;
        b.why_excluded = "the pod's " EXCLUDE_CONTAINERS_ANNOTATION " names the container";
    }
    /* Namespaces watched but this one not known (not listed yet, or its
     * event behind the pod's): its exclusion may be on the way, so the file
     * waits (wait_for_metadata) rather than be read. Unless its pod says
     * enough, or the namespaces cannot be had: then waiting will not help. */
    bool ns_pending = k->namespaces && !ns && !b.excluded && !atomic_load(&k->cache.namespaces_unavailable);
    if (ns_pending)
        b.why_incomplete = atomic_load(&k->cache.namespaces_synced) ? "its namespace is not known yet"
                                                                     : "the namespaces are not listed yet";
    if (k->workload_labels) {
        const char *kind, *name;
        resolve_workload(pod, arena, sizeof arena, &used, &kind, &name);
        if (kind && name) {
            metadata_builder_add(&b, false, "workload", name);
            metadata_builder_add(&b, false, "workload_kind", kind);
        }
        const char *job = kube_object_label(pod, "batch.kubernetes.io/job-name");
        if (!job) job = kube_object_label(pod, "job-name");
        if (!job && pod->owner_kind && strcmp(pod->owner_kind, "Job") == 0) job = pod->owner_name;
        metadata_builder_add(&b, false, "job", job);
    }
    for (size_t i = 0; i < k->npod_rules; i++)
        metadata_builder_add(&b, k->structured, k->pod_rules[i].name, kube_object_label(pod, k->pod_rules[i].key));
    for (size_t i = 0; ns && i < k->nns_rules; i++)
        metadata_builder_add(&b, k->structured, k->ns_rules[i].name, kube_object_label(ns, k->ns_rules[i].key));
    /* For the pipeline's match.pod_labels: the pod's labels, unrenamed. */
    for (size_t i = 0; i < pod->nlabels && b.npod_labels < sizeof b.pod_labels / sizeof b.pod_labels[0]; i++)
        b.pod_labels[b.npod_labels++] = (struct loki_label){pod->labels[i].key, pod->labels[i].value};
    const char *static_labels = kube_object_annotation(pod, LABELS_ANNOTATION);
    if (static_labels) annotation_labels(&b, k->structured, static_labels, arena, sizeof arena, &used);
    if (b.overflow) log_debug("kubernetes: pod %s/%s has more labels than are kept (64)", path->namespace_, path->pod);
    *out = metadata_builder_finish(&b);
    /* Copied out of the cache before the lock goes: they may point into it. */
    enum { SAY_MAX = sizeof b.reserved / sizeof b.reserved[0] };
    char reserved[SAY_MAX][160];
    size_t nsay = b.nreserved < SAY_MAX ? b.nreserved : SAY_MAX;
    for (size_t i = 0; i < nsay; i++) snprintf(reserved[i], sizeof reserved[i], "%s", b.reserved[i]);
    const char *why_reserved[SAY_MAX]; /* static text */
    for (size_t i = 0; i < nsay; i++) why_reserved[i] = b.why_reserved[i];
    pthread_mutex_unlock(&k->cache.lock);
    for (size_t i = 0; i < nsay; i++) say_reserved(k, path, reserved[i], why_reserved[i]);
    if (!*out) log_error("kubernetes: out of memory describing %s/%s", path->namespace_, path->pod);
    if (!*out) return METADATA_UNAVAILABLE;
    return ns_pending ? METADATA_PENDING : METADATA_FOUND;
}

static uint64_t kube_generation(struct metadata_provider *base)
{
    struct kube_provider *k = (struct kube_provider *)base;
    /* Becoming unavailable or available again changes answers too: the
     * two low bits are those of the pods and of the namespaces. */
    return kube_cache_generation(&k->cache) * 4 + (atomic_load(&k->cache.unavailable) ? 1 : 0) +
           (atomic_load(&k->cache.namespaces_unavailable) ? 2 : 0);
}

static bool kube_changed_since(struct metadata_provider *base, const struct parser_path_meta *path, uint64_t generation)
{
    struct kube_provider *k = (struct kube_provider *)base;
    uint64_t since = generation / 4; /* the cache's generation, see kube_generation */
    pthread_mutex_lock(&k->cache.lock);
    const struct kube_entry *pe = kube_cache_pod_locked(&k->cache, path->namespace_, path->pod, path->pod_uid);
    const struct kube_entry *ne = k->namespaces ? kube_cache_namespace_locked(&k->cache, path->namespace_) : NULL;
    bool changed = (pe && pe->changed_gen > since) || (ne && ne->changed_gen > since);
    pthread_mutex_unlock(&k->cache.lock);
    return changed;
}

static void kube_file_opened_or_closed(struct metadata_provider *base, const struct parser_path_meta *path, bool open)
{
    struct kube_provider *k = (struct kube_provider *)base;
    if (!path->namespace_[0] || !path->pod[0]) return; /* not a pod's file */
    if (!open) {
        kube_cache_release(&k->cache, path->namespace_, path->pod, metrics_now_ms());
        return;
    }
    if (kube_cache_hold(&k->cache, path->namespace_, path->pod) != 0)
        log_error("kubernetes: out of memory noting a file of pod %s/%s: if the pod is deleted, its files opened "
                  "after that may lose its metadata", path->namespace_, path->pod);
}

static void kube_destroy(struct metadata_provider *base)
{
    struct kube_provider *k = (struct kube_provider *)base;
    kube_watch_stop(k->pods);
    kube_watch_stop(k->namespaces);
    if (k->cache_set) kube_cache_free(&k->cache);
    if (k->auth_set) kube_auth_free(&k->auth);
    free_rules(k->pod_rules, k->npod_rules);
    free_rules(k->ns_rules, k->nns_rules);
    for (size_t i = 0; i < k->nreserved_said; i++) free(k->reserved_said[i]);
    pthread_mutex_destroy(&k->said_lock);
    free(k);
}

static const struct metadata_provider_ops kube_ops = {"kubernetes", kube_describe, kube_generation, kube_changed_since,
                                                      kube_destroy, kube_file_opened_or_closed};

/* client-go's order: in cluster, then kubernetes.kubeconfig, $KUBECONFIG,
 * ~/.kube/config. The last only with enabled: true: under auto, an agent
 * started on a workstation should not start watching whatever cluster its
 * user happens to be logged into. */
static int find_credentials(const struct config *cfg, struct kube_auth *auth, bool *quiet, char *err, size_t errlen)
{
    int rc = kube_auth_in_cluster(cfg->kubernetes.service_account_dir, auth, err, errlen);
    if (rc <= 0) return rc;
    const char *path = cfg->kubernetes.kubeconfig;
    /* kubernetes.kubeconfig names one file; $KUBECONFIG may list several. */
    bool is_list = !(path && *path);
    if (is_list) path = getenv("KUBECONFIG");
    char home_config[4096];
    if (!path || !*path) {
        const char *home = getenv("HOME");
        snprintf(home_config, sizeof home_config, "%s/.kube/config", home ? home : "");
        path = home_config;
        is_list = false;
        bool auto_mode = cfg->kubernetes.enabled == CONFIG_KUBERNETES_AUTO;
        if (auto_mode || !home || access(path, R_OK) != 0) {
            *quiet = auto_mode;
            snprintf(err, errlen, "not in a cluster (KUBERNETES_SERVICE_HOST unset) and no kubeconfig "
                     "(kubernetes.kubeconfig, $KUBECONFIG%s)", auto_mode ? "; ~/.kube/config only with enabled: true"
                                                                          : ", ~/.kube/config");
            return -1;
        }
    }
    return kube_auth_kubeconfig(path, is_list, auth, err, errlen);
}

struct metadata_provider *metadata_kubernetes_create(const struct config *cfg, bool *quiet, char *err, size_t errlen)
{
    *quiet = false;
    struct kube_provider *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    k->base.ops = &kube_ops;
    pthread_mutex_init(&k->said_lock, NULL);
    k->workload_labels = cfg->kubernetes.workload_labels;
    k->structured = cfg->kubernetes.structured_metadata;
    k->agent_ids = cfg->output.loki.structured_metadata;
    if (parse_rules(&cfg->kubernetes.pod_labels, &k->pod_rules, &k->npod_rules) != 0 ||
        parse_rules(&cfg->kubernetes.namespace_labels, &k->ns_rules, &k->nns_rules) != 0) {
        snprintf(err, errlen, "out of memory");
        kube_destroy(&k->base);
        return NULL;
    }
    const char *node = cfg->kubernetes.node_name && *cfg->kubernetes.node_name ? cfg->kubernetes.node_name
                                                                                : getenv("NODE_NAME");
    if (find_credentials(cfg, &k->auth, quiet, err, errlen) != 0) {
        kube_destroy(&k->base);
        return NULL;
    }
    k->auth_set = true;
    if (!node || !*node) {
        snprintf(err, errlen, "no node name (kubernetes.node_name, or $NODE_NAME from the downward API): only this "
                 "node's pods are watched");
        kube_destroy(&k->base);
        return NULL;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    kube_cache_init(&k->cache);
    k->cache_set = true;
    if (!(k->pods = kube_watch_start(&k->auth, &k->cache, KUBE_POD, node, err, errlen))) {
        kube_destroy(&k->base);
        return NULL;
    }
    bool want_namespaces = cfg->kubernetes.namespace_labels.count > 0 || cfg->kubernetes.namespaces;
    if (want_namespaces && !(k->namespaces = kube_watch_start(&k->auth, &k->cache, KUBE_NAMESPACE, NULL, err, errlen))) {
        kube_destroy(&k->base);
        return NULL;
    }
    log_info("kubernetes metadata on: %s, server %s, pods of node %s%s", k->auth.origin, k->auth.server, node,
             want_namespaces ? ", and namespaces" : "");
    return &k->base;
}
