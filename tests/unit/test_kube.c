/*
 * test_kube — the API server's answers as object.c reads them (events,
 * lists, the reductions it makes, and every kind of malformed input it
 * refuses with a reason), the cache's rules (deleted pods kept, uid checks,
 * relists), and the credentials auth.c finds (kubeconfig current context,
 * inline -data, relative paths, refused plugins; in cluster with a token
 * that rotates).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kube/kube.h"
#include "log/log.h"

static const char pod_event[] =
    "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"web-1\","
    "\"namespace\":\"shop\",\"uid\":\"u-1\",\"resourceVersion\":\"42\",\"labels\":{\"app\":\"web\","
    "\"pod-template-hash\":\"abc\"},\"annotations\":{\"loglet.io/exclude\":\"true\",\"kubectl.kubernetes.io/"
    "last-applied-configuration\":\"{...}\"},\"ownerReferences\":[{\"kind\":\"Node\",\"name\":\"n\"},"
    "{\"kind\":\"ReplicaSet\",\"name\":\"web-abc\",\"controller\":true}]},\"spec\":{\"nodeName\":\"node-a\"}}}";

static void test_event_is_reduced_to_what_labels_need(void **state)
{
    (void)state;
    struct kube_event ev;
    char err[256];
    assert_int_equal(kube_parse_event(pod_event, strlen(pod_event), KUBE_POD, &ev, err, sizeof err), 0);
    assert_int_equal(ev.type, KUBE_EVENT_ADDED);
    assert_string_equal(ev.resource_version, "42");
    assert_string_equal(ev.object.namespace_, "shop");
    assert_string_equal(ev.object.name, "web-1");
    assert_string_equal(ev.object.uid, "u-1");
    assert_string_equal(ev.object.node_name, "node-a");
    assert_string_equal(kube_object_label(&ev.object, "app"), "web");
    assert_int_equal(ev.object.nlabels, 2);
    assert_int_equal(ev.object.nannotations, 1); /* only loglet.io/ ones are kept */
    assert_string_equal(kube_object_annotation(&ev.object, "loglet.io/exclude"), "true");
    assert_null(kube_object_annotation(&ev.object, "kubectl.kubernetes.io/last-applied-configuration"));
    assert_string_equal(ev.object.owner_kind, "ReplicaSet"); /* the controller, not the first reference */
    assert_string_equal(ev.object.owner_name, "web-abc");
    kube_event_free(&ev);
}

static void test_bookmark_and_error_events(void **state)
{
    (void)state;
    struct kube_event ev;
    char err[256];
    const char *bm = "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":\"Pod\",\"metadata\":{\"resourceVersion\":\"77\"}}}";
    assert_int_equal(kube_parse_event(bm, strlen(bm), KUBE_POD, &ev, err, sizeof err), 0);
    assert_int_equal(ev.type, KUBE_EVENT_BOOKMARK);
    assert_string_equal(ev.resource_version, "77");
    kube_event_free(&ev);
    const char *gone = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410,\"message\":\"too old\"}}";
    assert_int_equal(kube_parse_event(gone, strlen(gone), KUBE_POD, &ev, err, sizeof err), 0);
    assert_int_equal(ev.type, KUBE_EVENT_ERROR);
    assert_int_equal(ev.code, 410);
    assert_string_equal(ev.message, "too old");
    kube_event_free(&ev);
}

static void expect_refused(const char *text, size_t len, const char *reason)
{
    struct kube_event ev;
    char err[256] = "";
    assert_int_equal(kube_parse_event(text, len, KUBE_POD, &ev, err, sizeof err), -1);
    if (!strstr(err, reason)) fail_msg("for %.80s: expected '%s' in '%s'", text, reason, err);
    assert_null(ev.object.name);
}

/* A well-formed event whose object cannot be read: skipped with a reason
 * naming it, its version kept so that the watch goes on past it. */
static void expect_unreadable(const char *text, const char *reason)
{
    struct kube_event ev;
    char err[256] = "";
    assert_int_equal(kube_parse_event(text, strlen(text), KUBE_POD, &ev, err, sizeof err), 0);
    assert_int_equal(ev.type, KUBE_EVENT_UNREADABLE);
    if (!strstr(ev.message, reason)) fail_msg("for %.80s: expected '%s' in '%s'", text, reason, ev.message);
    assert_null(ev.object.name);
    kube_event_free(&ev);
}

static void test_malformed_events_are_refused_with_a_reason(void **state)
{
    (void)state;
#define REFUSED(t, r) expect_refused(t, strlen(t), r)
#define UNREADABLE(t, r) expect_unreadable(t, r)
    REFUSED("", "not valid JSON");
    REFUSED("{\"type\":\"ADDED\",\"object\":{\"metadata\": nonsense", "not valid JSON");
    REFUSED("[1,2]", "must be an object");
    REFUSED("{\"type\":\"ADDED\"}", "must be an object");
    REFUSED("{\"type\":\"RENAMED\",\"object\":{}}", "unknown watch event type");
    UNREADABLE("{\"type\":\"ADDED\",\"object\":{}}", "pod.metadata is missing");
    UNREADABLE("{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":7,\"namespace\":\"a\"}}}", "pod.metadata.name is not a string");
    UNREADABLE("{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"p\"}}}", "pod.metadata.namespace is missing");
    UNREADABLE("{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"\",\"namespace\":\"a\"}}}", "name is empty");
    UNREADABLE("{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"p\",\"namespace\":\"a\",\"labels\":[]}}}",
            "labels is not an object");
    UNREADABLE("{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"p\",\"namespace\":\"a\",\"labels\":{\"x\":1}}}}",
            "is not a string");
    UNREADABLE("{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"p\",\"namespace\":\"a\",\"ownerReferences\":"
            "[{\"kind\":\"Job\",\"controller\":true}]}}}", "ownerReferences[0].name is missing");
    UNREADABLE("{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"p\",\"namespace\":\"a\"},\"spec\":\"x\"}}",
            "pod.spec is not an object");
    REFUSED("{\"type\":\"ADDED\",\"type\":\"DELETED\",\"object\":{}}", "not valid JSON"); /* duplicate key */
    REFUSED("{\"type\":\"BOOKMARK\",\"object\":{}}", "BOOKMARK");
    /* A NUL inside a string, and bytes after the value. */
    expect_refused("{\"type\":\"ADD\0ED\",\"object\":{}}", 28, "not valid JSON");
    REFUSED("{\"type\":\"ADDED\",\"object\":{}} trailing", "not valid JSON");
    /* Too many labels. */
    char *many = malloc(64 * 1024);
    int n = sprintf(many, "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"p\",\"namespace\":\"a\",\"labels\":{");
    for (int i = 0; i <= KUBE_MAX_PAIRS; i++) n += sprintf(many + n, "%s\"k%d\":\"v\"", i ? "," : "", i);
    sprintf(many + n, "}}}}");
    /* Too many labels: the pod is kept with the first KUBE_MAX_PAIRS (one
     * such pod must not make every pod of the node unreadable). */
    struct kube_event ev;
    char err[256] = "";
    assert_int_equal(kube_parse_event(many, strlen(many), KUBE_POD, &ev, err, sizeof err), 0);
    assert_string_equal(ev.object.name, "p");
    assert_int_equal(ev.object.nlabels, KUBE_MAX_PAIRS);
    kube_event_free(&ev);
    free(many);
    /* Oversized as a whole: refused before parsing. */
    size_t big = KUBE_MAX_EVENT_BYTES + 1;
    char *huge = malloc(big);
    memset(huge, ' ', big);
    expect_refused(huge, big, "larger than");
    free(huge);
#undef REFUSED
#undef UNREADABLE
}

static void test_list_with_continue_and_a_bad_item(void **state)
{
    (void)state;
    struct kube_list list;
    char err[256];
    const char *ok = "{\"kind\":\"PodList\",\"metadata\":{\"resourceVersion\":\"9\",\"continue\":\"tok\"},\"items\":["
                     "{\"metadata\":{\"name\":\"a\",\"namespace\":\"n\"}},{\"metadata\":{\"name\":\"b\",\"namespace\":\"n\"}}]}";
    assert_int_equal(kube_parse_list(ok, strlen(ok), KUBE_POD, &list, err, sizeof err), 0);
    assert_int_equal(list.count, 2);
    assert_string_equal(list.items[1].name, "b");
    assert_string_equal(list.resource_version, "9");
    assert_string_equal(list.continue_token, "tok");
    kube_list_free(&list);
    const char *last = "{\"metadata\":{\"resourceVersion\":\"9\",\"continue\":\"\"},\"items\":null}";
    assert_int_equal(kube_parse_list(last, strlen(last), KUBE_POD, &list, err, sizeof err), 0);
    assert_null(list.continue_token);
    assert_int_equal(list.count, 0);
    kube_list_free(&list);
    const char *bad = "{\"metadata\":{\"resourceVersion\":\"9\"},\"items\":[{\"metadata\":{\"name\":\"a\",\"namespace\":\"n\"}},7]}";
    /* One item that cannot be read is left out, not the list. */
    assert_int_equal(kube_parse_list(bad, strlen(bad), KUBE_POD, &list, err, sizeof err), 0);
    assert_int_equal(list.count, 1);
    assert_string_equal(list.items[0].name, "a");
    assert_int_equal(list.nskipped, 1);
    assert_non_null(strstr(list.skipped, "list item 1"));
    kube_list_free(&list);
    const char *ns = "{\"metadata\":{\"resourceVersion\":\"3\"},\"items\":[{\"metadata\":{\"name\":\"quiet\","
                     "\"annotations\":{\"loglet.io/exclude\":\"true\"}}}]}";
    assert_int_equal(kube_parse_list(ns, strlen(ns), KUBE_NAMESPACE, &list, err, sizeof err), 0);
    assert_string_equal(kube_object_annotation(&list.items[0], "loglet.io/exclude"), "true");
    assert_null(list.items[0].namespace_);
    kube_list_free(&list);
}

/* The API server accepts any annotation value, "\u0000" included: such a
 * value is left out where it would be kept, the pod and every other pod
 * stay readable; a name holding a NUL makes that one item (or event)
 * unreadable, named, and nothing else. */
static void test_a_nul_in_a_value_spoils_only_that_value_or_that_object(void **state)
{
    (void)state;
    struct kube_list list;
    char err[256] = "";
    const char *text =
        "{\"metadata\":{\"resourceVersion\":\"5\"},\"items\":["
        "{\"metadata\":{\"name\":\"bad-0\",\"namespace\":\"other\",\"labels\":{\"app\":\"x\\u0000y\",\"tier\":\"1\"},"
        "\"annotations\":{\"example.com/note\":\"a\\u0000b\",\"loglet.io/labels\":\"t=\\u0000\","
        "\"loglet.io/exclude-containers\":\"side\",\"kubernetes.io/config.hash\":\"h\\u0000\"}}},"
        "{\"metadata\":{\"name\":\"evil\\u0000-0\",\"namespace\":\"other\"}},"
        "{\"metadata\":{\"name\":\"web-0\",\"namespace\":\"shop\",\"labels\":{\"app\":\"web\"}}}]}";
    assert_int_equal(kube_parse_list(text, strlen(text), KUBE_POD, &list, err, sizeof err), 0);
    assert_int_equal(list.count, 2);
    assert_string_equal(list.items[0].name, "bad-0");
    assert_int_equal(list.items[0].nlabels, 1);
    assert_null(kube_object_label(&list.items[0], "app"));
    assert_string_equal(kube_object_label(&list.items[0], "tier"), "1");
    assert_int_equal(list.items[0].nannotations, 1);
    assert_null(kube_object_annotation(&list.items[0], "loglet.io/labels"));
    assert_string_equal(kube_object_annotation(&list.items[0], "loglet.io/exclude-containers"), "side");
    assert_null(list.items[0].config_hash);
    assert_string_equal(list.items[1].name, "web-0");
    assert_string_equal(kube_object_label(&list.items[1], "app"), "web");
    assert_int_equal(list.nskipped, 1);
    if (!strstr(list.skipped, "list item 1, pod other/evil") || !strstr(list.skipped, "NUL"))
        fail_msg("skipped: %s", list.skipped);
    kube_list_free(&list);

    struct kube_event ev;
    const char *event = "{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"name\":\"p\",\"namespace\":\"a\\u0000\","
                        "\"resourceVersion\":\"12\"}}}";
    assert_int_equal(kube_parse_event(event, strlen(event), KUBE_POD, &ev, err, sizeof err), 0);
    assert_int_equal(ev.type, KUBE_EVENT_UNREADABLE);
    assert_string_equal(ev.resource_version, "12");
    if (!strstr(ev.message, "pod a/p") || !strstr(ev.message, "pod.metadata.namespace holds a NUL"))
        fail_msg("message: %s", ev.message);
    kube_event_free(&ev);
}

static struct kube_event event_for(enum kube_event_type type, const char *name, const char *uid, const char *app)
{
    char text[512];
    snprintf(text, sizeof text,
             "{\"type\":\"%s\",\"object\":{\"metadata\":{\"name\":\"%s\",\"namespace\":\"ns\",\"uid\":\"%s\","
             "\"resourceVersion\":\"1\",\"labels\":{\"app\":\"%s\"}}}}",
             type == KUBE_EVENT_ADDED ? "ADDED" : type == KUBE_EVENT_MODIFIED ? "MODIFIED" : "DELETED", name, uid, app);
    struct kube_event ev;
    char err[256];
    if (kube_parse_event(text, strlen(text), KUBE_POD, &ev, err, sizeof err) != 0) fail_msg("%s", err);
    return ev;
}

static const char *app_of(struct kube_cache *cache, const char *name, const char *uid)
{
    static char out[64];
    pthread_mutex_lock(&cache->lock);
    const struct kube_entry *e = kube_cache_pod_locked(cache, "ns", name, uid);
    snprintf(out, sizeof out, "%s%s", e ? kube_object_label(&e->object, "app") : "(none)",
             e && e->deleted_ms ? " deleted" : "");
    pthread_mutex_unlock(&cache->lock);
    return out;
}

static void test_cache_keeps_deleted_pods_checks_uids_and_relists(void **state)
{
    (void)state;
    struct kube_cache cache;
    kube_cache_init(&cache);
    uint64_t g0 = kube_cache_generation(&cache);
    struct kube_event ev = event_for(KUBE_EVENT_ADDED, "a", "u1", "one");
    kube_cache_apply(&cache, &ev);
    kube_event_free(&ev);
    assert_true(kube_cache_generation(&cache) > g0);
    assert_string_equal(app_of(&cache, "a", "u1"), "one");
    assert_string_equal(app_of(&cache, "a", ""), "one");
    assert_string_equal(app_of(&cache, "a", "u2"), "(none)"); /* same name, another pod */
    uint64_t before = kube_cache_generation(&cache);
    ev = event_for(KUBE_EVENT_MODIFIED, "a", "u1", "two");
    kube_cache_apply(&cache, &ev);
    kube_event_free(&ev);
    assert_string_equal(app_of(&cache, "a", "u1"), "two");
    /* The entry says when it changed: after `before`, and as of the generation now. */
    pthread_mutex_lock(&cache.lock);
    const struct kube_entry *changed = kube_cache_pod_locked(&cache, "ns", "a", "u1");
    assert_true(changed->changed_gen > before);
    assert_int_equal(changed->changed_gen, kube_cache_generation(&cache));
    pthread_mutex_unlock(&cache.lock);
    ev = event_for(KUBE_EVENT_DELETED, "a", "u1", "two");
    kube_cache_apply(&cache, &ev);
    kube_event_free(&ev);
    assert_string_equal(app_of(&cache, "a", "u1"), "two deleted"); /* kept while its files drain */
    ev = event_for(KUBE_EVENT_DELETED, "never-seen", "u9", "x");
    kube_cache_apply(&cache, &ev);
    kube_event_free(&ev);
    assert_string_equal(app_of(&cache, "never-seen", ""), "(none)");

    ev = event_for(KUBE_EVENT_ADDED, "b", "ub", "bee");
    kube_cache_apply(&cache, &ev);
    kube_event_free(&ev);
    /* A relist without b: b was deleted while we were not watching. */
    struct kube_list list;
    char err[256];
    const char *text = "{\"metadata\":{\"resourceVersion\":\"5\"},\"items\":[{\"metadata\":{\"name\":\"c\","
                       "\"namespace\":\"ns\",\"labels\":{\"app\":\"sea\"}}}]}";
    assert_int_equal(kube_parse_list(text, strlen(text), KUBE_POD, &list, err, sizeof err), 0);
    assert_false(atomic_load(&cache.pods_synced));
    kube_cache_replace(&cache, KUBE_POD, &list);
    kube_list_free(&list);
    assert_true(atomic_load(&cache.pods_synced));
    assert_string_equal(app_of(&cache, "b", ""), "bee deleted");
    assert_string_equal(app_of(&cache, "c", ""), "sea");
    assert_int_equal(cache.npods, 3);
    kube_cache_free(&cache);
}

static void test_deleted_pod_is_kept_while_its_files_are_open_then_dropped(void **state)
{
    (void)state;
    struct kube_cache cache;
    kube_cache_init(&cache);
    struct kube_event ev = event_for(KUBE_EVENT_ADDED, "held", "u1", "one");
    kube_cache_apply(&cache, &ev);
    kube_event_free(&ev);
    ev = event_for(KUBE_EVENT_ADDED, "idle", "u2", "two");
    kube_cache_apply(&cache, &ev);
    kube_event_free(&ev);
    /* Two files of `held` open (the current one and a rotated one). */
    assert_int_equal(kube_cache_hold(&cache, "ns", "held"), 0);
    assert_int_equal(kube_cache_hold(&cache, "ns", "held"), 0);
    /* A file of a pod not known yet is held too: it is kept once it comes. */
    assert_int_equal(kube_cache_hold(&cache, "ns", "later"), 0);
    int64_t t0 = 1000000;
    ev = event_for(KUBE_EVENT_DELETED, "held", "u1", "one");
    kube_cache_apply(&cache, &ev);
    kube_event_free(&ev);
    ev = event_for(KUBE_EVENT_DELETED, "idle", "u2", "two");
    kube_cache_apply(&cache, &ev);
    kube_event_free(&ev);
    pthread_mutex_lock(&cache.lock);
    t0 = kube_cache_pod_locked(&cache, "ns", "idle", "")->deleted_ms;
    pthread_mutex_unlock(&cache.lock);
    /* Within the grace both stay; past it the one with no file open goes. */
    kube_cache_expire(&cache, t0 + KUBE_DELETED_GRACE_MS - 1);
    assert_string_equal(app_of(&cache, "idle", ""), "two deleted");
    kube_cache_expire(&cache, t0 + KUBE_DELETED_GRACE_MS);
    assert_string_equal(app_of(&cache, "idle", ""), "(none)");
    /* Open files keep it however long they drain (an hour behind, say). */
    int64_t hour = 3600 * 1000;
    kube_cache_expire(&cache, t0 + hour);
    assert_string_equal(app_of(&cache, "held", ""), "one deleted");
    kube_cache_release(&cache, "ns", "held", t0 + hour);
    kube_cache_expire(&cache, t0 + hour + KUBE_DELETED_GRACE_MS);
    assert_string_equal(app_of(&cache, "held", ""), "one deleted"); /* one file still open */
    kube_cache_release(&cache, "ns", "held", t0 + 2 * hour);
    kube_cache_expire(&cache, t0 + 2 * hour + KUBE_DELETED_GRACE_MS - 1); /* the grace counts from the last close */
    assert_string_equal(app_of(&cache, "held", ""), "one deleted");
    kube_cache_expire(&cache, t0 + 2 * hour + KUBE_DELETED_GRACE_MS);
    assert_string_equal(app_of(&cache, "held", ""), "(none)");
    assert_int_equal(cache.npods, 0);
    kube_cache_release(&cache, "ns", "never-held", t0); /* harmless */
    kube_cache_free(&cache);                             /* the hold of `later` is freed with it */
}

static void test_static_pod_is_found_by_its_config_hash(void **state)
{
    (void)state;
    /* The kubelet writes a static pod's logs under <ns>_<name>_<config hash>;
     * its mirror pod has another uid and carries the hash as an annotation. */
    const char *mirror = "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"etcd-n\",\"namespace\":\"ns\","
                         "\"uid\":\"mirror-uid\",\"labels\":{\"app\":\"etcd\"},\"annotations\":{"
                         "\"kubernetes.io/config.hash\":\"h-ignored\",\"kubernetes.io/config.mirror\":\"5f0c1e\"}}}}";
    const char *hash_only = "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"proxy-n\",\"namespace\":"
                            "\"ns\",\"uid\":\"u-p\",\"labels\":{\"app\":\"proxy\"},\"annotations\":{"
                            "\"kubernetes.io/config.hash\":\"77aa\",\"kubernetes.io/config.mirror\":7}}}}";
    struct kube_cache cache;
    kube_cache_init(&cache);
    const char *texts[] = {mirror, hash_only};
    for (size_t i = 0; i < 2; i++) {
        struct kube_event ev;
        char err[256];
        assert_int_equal(kube_parse_event(texts[i], strlen(texts[i]), KUBE_POD, &ev, err, sizeof err), 0);
        kube_cache_apply(&cache, &ev);
        kube_event_free(&ev);
    }
    assert_string_equal(app_of(&cache, "etcd-n", "5f0c1e"), "etcd");     /* the mirror annotation first */
    assert_string_equal(app_of(&cache, "etcd-n", "mirror-uid"), "etcd"); /* its own uid still matches */
    assert_string_equal(app_of(&cache, "etcd-n", "h-ignored"), "(none)");
    assert_string_equal(app_of(&cache, "proxy-n", "77aa"), "proxy"); /* a mirror value not a string: the hash */
    assert_string_equal(app_of(&cache, "proxy-n", "other"), "(none)");
    kube_cache_free(&cache);
}

/* ------------------------------------------------------------------------ */
/* Credentials                                                              */

static char dir[64];

static void write_file(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int make_dir(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/test_kube.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int load(const char *kubeconfig, struct kube_auth *auth, char *err, size_t errlen)
{
    write_file("config", kubeconfig);
    char path[256];
    snprintf(path, sizeof path, "%s/config", dir);
    return kube_auth_kubeconfig(path, false, auth, err, errlen);
}

#define KC_HEAD                                                                                             \
    "apiVersion: v1\ncurrent-context: b\ncontexts:\n- name: a\n  context: {cluster: ca, user: ua}\n"        \
    "- name: b\n  context: {cluster: cb, user: ub}\nclusters:\n- name: ca\n  cluster: {server: https://a}\n" \
    "- name: cb\n  cluster:\n    server: https://10.0.0.1:6443/\n"

static void test_kubeconfig_current_context(void **state)
{
    (void)state;
    struct kube_auth auth;
    char err[512];
    write_file("ca.pem", "not really a CA\n");
    write_file("tok", "file-token\n");
    /* "aGVsbG8=" is base64 for "hello". */
    assert_int_equal(load(KC_HEAD "    certificate-authority: ca.pem\nusers:\n- name: ua\n  user: {token: wrong}\n"
                          "- name: ub\n  user:\n    client-certificate-data: aGVsbG8=\n    client-key-data: aGVsbG8\n"
                          "    tokenFile: tok\n",
                          &auth, err, sizeof err),
                     0);
    assert_string_equal(auth.server, "https://10.0.0.1:6443");
    char want[256];
    snprintf(want, sizeof want, "%s/ca.pem", dir);
    assert_string_equal(auth.ca_file, want);
    assert_int_equal(auth.cert_len, 5);
    assert_memory_equal(auth.cert_data, "hello", 5);
    assert_int_equal(auth.key_len, 5); /* padding is optional */
    char header[256];
    kube_auth_header(&auth, header, sizeof header);
    assert_string_equal(header, "Authorization: Bearer file-token");
    kube_auth_free(&auth);

    assert_int_equal(load(KC_HEAD "users:\n- name: ub\n  user: {token: static}\n", &auth, err, sizeof err), 0);
    kube_auth_header(&auth, header, sizeof header);
    assert_string_equal(header, "Authorization: Bearer static");
    assert_null(auth.ca_file);
    kube_auth_free(&auth);
}

static void expect_kubeconfig_error(const char *text, const char *reason)
{
    struct kube_auth auth;
    char err[512] = "";
    assert_int_equal(load(text, &auth, err, sizeof err), -1);
    if (!strstr(err, reason)) fail_msg("expected '%s' in '%s'", reason, err);
    assert_non_null(strstr(err, "kubeconfig "));
}

static void test_broken_kubeconfigs_say_what_is_wrong(void **state)
{
    (void)state;
    expect_kubeconfig_error("{{{", "YAML error");
    expect_kubeconfig_error("- a list\n", "not a mapping");
    expect_kubeconfig_error("apiVersion: v1\n", "no current-context");
    expect_kubeconfig_error("current-context: x\ncontexts: []\n", "current-context \"x\" is not among its contexts");
    expect_kubeconfig_error(KC_HEAD "users: []\n", "user \"ub\" not found");
    expect_kubeconfig_error("current-context: b\ncontexts:\n- name: b\n  context: {cluster: nope}\n", "cluster \"nope\" not found");
    expect_kubeconfig_error(KC_HEAD "users:\n- name: ub\n  user:\n    exec: {command: aws}\n", "credential plugin");
    expect_kubeconfig_error(KC_HEAD "    certificate-authority-data: '!!!'\nusers:\n- name: ub\n  user: {}\n", "not base64");
    expect_kubeconfig_error(KC_HEAD "    certificate-authority: /nonexistent/ca\nusers:\n- name: ub\n  user: {}\n",
                            "cannot be read");
    expect_kubeconfig_error(KC_HEAD "users:\n- name: ub\n  user: {client-certificate-data: aGVsbG8=}\n",
                            "must be given together");
    expect_kubeconfig_error("current-context: b\ncontexts:\n- name: b\n  context: {cluster: c}\nclusters:\n- name: c\n"
                            "  cluster: {server: ftp://x}\n",
                            "must be an http:// or https:// URL");
}

static void test_kubeconfig_list_is_merged_as_client_go_does(void **state)
{
    (void)state;
    char one[128], two[128];
    snprintf(one, sizeof one, "%s/one", dir);
    snprintf(two, sizeof two, "%s/two", dir);
    mkdir(one, 0700);
    mkdir(two, 0700);
    /* one: no current-context; the first definitions of cluster c and user u. */
    write_file("one/config", "clusters:\n- name: c\n  cluster: {server: 'https://first:6443', certificate-authority: ca.pem}\n"
                             "users:\n- name: u\n  user: {token: first}\n");
    write_file("one/ca.pem", "ca one\n");
    /* two: the first current-context, its context, later definitions of c and u (ignored). */
    write_file("two/config", "current-context: x\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n"
                             "clusters:\n- name: c\n  cluster: {server: 'https://second'}\nusers:\n- name: u\n"
                             "  user: {token: second}\n");
    write_file("three", "current-context: y\ncontexts:\n- name: y\n  context: {cluster: c}\n");
    write_file("empty", "");
    char list[1024];
    snprintf(list, sizeof list, ":%s/missing::%s/empty:%s/one/config:%s/two/config:%s/three:", dir, dir, dir, dir, dir);
    struct kube_auth auth;
    char err[512] = "";
    if (kube_auth_kubeconfig(list, true, &auth, err, sizeof err) != 0) fail_msg("%s", err);
    assert_string_equal(auth.server, "https://first:6443");
    char want[1200];
    snprintf(want, sizeof want, "%s/one/ca.pem", dir); /* relative to the file that defines the cluster */
    assert_string_equal(auth.ca_file, want);
    char header[256];
    kube_auth_header(&auth, header, sizeof header);
    assert_string_equal(header, "Authorization: Bearer first");
    assert_non_null(strstr(auth.origin, "context x"));
    kube_auth_free(&auth);

    /* Missing files only: said; one unreadable file: an error naming it (client-go refuses too). */
    snprintf(list, sizeof list, "%s/missing:%s/missing2", dir, dir);
    assert_int_equal(kube_auth_kubeconfig(list, true, &auth, err, sizeof err), -1);
    assert_non_null(strstr(err, "none of its files exist"));
    write_file("broken", "{{{");
    snprintf(list, sizeof list, "%s/one/config:%s/broken:%s/two/config", dir, dir, dir);
    assert_int_equal(kube_auth_kubeconfig(list, true, &auth, err, sizeof err), -1);
    snprintf(want, sizeof want, "kubeconfig %s/broken (of %s): YAML error", dir, list);
    if (!strstr(err, want)) fail_msg("expected '%s' in '%s'", want, err);
    /* A single explicit file must exist, and an empty one is not a kubeconfig. */
    snprintf(list, sizeof list, "%s/missing", dir);
    assert_int_equal(kube_auth_kubeconfig(list, false, &auth, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open"));
    snprintf(list, sizeof list, "%s/empty", dir);
    assert_int_equal(kube_auth_kubeconfig(list, false, &auth, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a mapping"));
}

static void test_in_cluster_token_rotates(void **state)
{
    (void)state;
    struct kube_auth auth;
    char err[512];
    unsetenv("KUBERNETES_SERVICE_HOST");
    assert_int_equal(kube_auth_in_cluster(dir, &auth, err, sizeof err), 1); /* not in a cluster */
    setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    char tok[256];
    snprintf(tok, sizeof tok, "%s/token", dir);
    unlink(tok);
    write_file("ca.crt", "ca\n");
    assert_int_equal(kube_auth_in_cluster(dir, &auth, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot read the token"));
    write_file("token", "\n");
    assert_int_equal(kube_auth_in_cluster(dir, &auth, err, sizeof err), -1);
    assert_non_null(strstr(err, "is empty"));
    write_file("token", "t-1\n");
    assert_int_equal(kube_auth_in_cluster(dir, &auth, err, sizeof err), 0);
    assert_string_equal(auth.server, "https://[fd00::1]:443");
    char header[256];
    kube_auth_header(&auth, header, sizeof header);
    assert_string_equal(header, "Authorization: Bearer t-1");
    /* The kubelet swaps in a new file: seen without a 401. */
    write_file("token.new", "t-2-longer\n");
    char from[256];
    snprintf(from, sizeof from, "%s/token.new", dir);
    assert_int_equal(rename(from, tok), 0);
    kube_auth_refresh_token(&auth, false);
    kube_auth_header(&auth, header, sizeof header);
    assert_string_equal(header, "Authorization: Bearer t-2-longer");
    /* Emptied: the last good token stays. */
    write_file("token", "");
    kube_auth_refresh_token(&auth, true);
    kube_auth_header(&auth, header, sizeof header);
    assert_string_equal(header, "Authorization: Bearer t-2-longer");
    kube_auth_free(&auth);
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
}

int main(void)
{
    log_setup(LOG_LEVEL_ERROR, LOG_FORMAT_LOGFMT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_is_reduced_to_what_labels_need),
        cmocka_unit_test(test_bookmark_and_error_events),
        cmocka_unit_test(test_malformed_events_are_refused_with_a_reason),
        cmocka_unit_test(test_list_with_continue_and_a_bad_item),
        cmocka_unit_test(test_a_nul_in_a_value_spoils_only_that_value_or_that_object),
        cmocka_unit_test(test_cache_keeps_deleted_pods_checks_uids_and_relists),
        cmocka_unit_test(test_static_pod_is_found_by_its_config_hash),
        cmocka_unit_test(test_deleted_pod_is_kept_while_its_files_are_open_then_dropped),
        cmocka_unit_test(test_kubeconfig_current_context),
        cmocka_unit_test(test_broken_kubeconfigs_say_what_is_wrong),
        cmocka_unit_test(test_kubeconfig_list_is_merged_as_client_go_does),
        cmocka_unit_test(test_in_cluster_token_rotates),
    };
    return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
