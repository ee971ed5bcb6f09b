/*
 * test_source — a source's lifetime (reference counting across threads, its
 * own copies of what it was built from) and the label sets it renders once:
 * exact text per stream kind, the origin labels that static labels never
 * override, NODE_NAME, the filename fallback, and the 8 KiB / label-count
 * bounds whose error names the file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "log/log.h"
#include "source/source.h"


static struct parser_path_meta meta_of(const char *ns, const char *pod, const char *container)
{
    struct parser_path_meta m;
    memset(&m, 0, sizeof m);
    snprintf(m.namespace_, sizeof m.namespace_, "%s", ns);
    snprintf(m.pod, sizeof m.pod, "%s", pod);
    snprintf(m.container, sizeof m.container, "%s", container);
    snprintf(m.pod_uid, sizeof m.pod_uid, "uid-%s", pod);
    snprintf(m.container_id, sizeof m.container_id, "cid-%s", container);
    return m;
}

/* A strmap owned by the test (the layout config uses). */
struct map {
    char *keys[64];
    char *values[64];
    struct config_strmap m;
};

static void map_init(struct map *mp) { memset(mp, 0, sizeof *mp); mp->m.keys = mp->keys; mp->m.values = mp->values; }
static void map_put(struct map *mp, const char *k, const char *v)
{
    mp->keys[mp->m.count] = (char *)k;
    mp->values[mp->m.count] = (char *)v;
    mp->m.count++;
}

static struct source *rendered(const char *path, struct parser_path_meta m, const struct source_label_policy *pol)
{
    struct source *s = source_new(path, path, &m, 1, 2);
    assert_non_null(s);
    char err[512] = "";
    if (source_render_labels(s, pol, err, sizeof err) != 0) fail_msg("render %s: %s", path, err);
    return s;
}

/* ---------------------------------------------------------------------------
 * Lifetime.
 */

static void test_new_copies_its_inputs_and_starts_with_one_reference(void **state)
{
    (void)state;
    char path[64] = "/var/log/containers/a.log", real[64] = "/var/log/pods/a/0.log";
    struct parser_path_meta m = meta_of("ns", "pod", "c");
    struct source *s = source_new(path, real, &m, 7, 9);
    assert_non_null(s);
    /* The caller's buffers are scratch: scribbling on them changes nothing. */
    memset(path, 'X', sizeof path - 1);
    memset(real, 'Y', sizeof real - 1);
    memset(&m, 'Z', sizeof m);
    assert_string_equal(s->path, "/var/log/containers/a.log");
    assert_string_equal(s->real_path, "/var/log/pods/a/0.log");
    assert_string_equal(s->meta.namespace_, "ns");
    assert_string_equal(s->meta.pod_uid, "uid-pod");
    assert_int_equal(s->dev, 7);
    assert_int_equal(s->ino, 9);
    assert_int_equal(atomic_load(&s->refs), 1);
    assert_int_equal(atomic_load(&s->acked_offset), 0);
    assert_null(s->labels_buf);
    source_unref(s); /* the sanitizer build reports a leak if this did not free */
    source_unref(NULL);
}

static void test_ids_are_unique_and_increasing(void **state)
{
    (void)state;
    struct parser_path_meta m = meta_of("ns", "pod", "c");
    struct source *prev = source_new("/a", "/a", &m, 0, 0);
    for (int i = 0; i < 100; i++) {
        struct source *s = source_new("/a", "/a", &m, 0, 0);
        assert_true(s->id > prev->id);
        source_unref(prev);
        prev = s; /* the freed one's memory is likely reused: ids must not be */
    }
    source_unref(prev);
}

static void test_last_unref_frees_not_before(void **state)
{
    (void)state;
    struct parser_path_meta m = meta_of("ns", "pod", "c");
    struct source_label_policy pol = {.node_name = NULL, .stream = true, .static_labels = NULL};
    struct source *s = rendered("/x", m, &pol);
    for (int i = 0; i < 10; i++) source_ref(s);
    assert_int_equal(atomic_load(&s->refs), 11);
    for (int i = 0; i < 10; i++) {
        source_unref(s);
        /* Still alive and intact (ASan flags any use after a premature free). */
        assert_string_equal(s->path, "/x");
        assert_non_null(strstr(s->labels[PARSER_STREAM_STDERR], "stderr"));
    }
    assert_int_equal(atomic_load(&s->refs), 1);
    source_unref(s);
}

#define THREADS 4
#define ROUNDS 200000

static void *ref_churn(void *arg)
{
    struct source *s = arg;
    for (int i = 0; i < ROUNDS; i++) {
        source_ref(s);
        source_ref(s);
        source_unref(s);
        source_unref(s);
    }
    return NULL;
}

static void test_references_are_atomic_across_threads(void **state)
{
    (void)state;
    struct parser_path_meta m = meta_of("ns", "pod", "c");
    struct source *s = source_new("/x", "/x", &m, 0, 0);
    /* The collector and the output take and drop references concurrently. */
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) assert_int_equal(pthread_create(&t[i], NULL, ref_churn, s), 0);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&s->refs), 1);
    source_unref(s);
}

/* ---------------------------------------------------------------------------
 * Labels.
 */

static void test_labels_exact_text_per_stream(void **state)
{
    (void)state;
    struct map st;
    map_init(&st);
    map_put(&st, "cluster", "prod");
    struct source_label_policy pol = {.node_name = "node-1", .stream = true, .static_labels = &st.m};
    struct source *s = rendered("/var/log/containers/web-0_shop_app-abc.log", meta_of("shop", "web-0", "app"), &pol);
    assert_string_equal(s->labels[PARSER_STREAM_STDOUT],
                        "{cluster=\"prod\", container=\"app\", namespace=\"shop\", node_name=\"node-1\", "
                        "pod=\"web-0\", stream=\"stdout\"}");
    assert_string_equal(s->labels[PARSER_STREAM_STDERR],
                        "{cluster=\"prod\", container=\"app\", namespace=\"shop\", node_name=\"node-1\", "
                        "pod=\"web-0\", stream=\"stderr\"}");
    assert_string_equal(s->labels[PARSER_STREAM_UNKNOWN],
                        "{cluster=\"prod\", container=\"app\", namespace=\"shop\", node_name=\"node-1\", "
                        "pod=\"web-0\", stream=\"unknown\"}");
    /* Out-of-range stream kinds fall back to "unknown", never index past the array. */
    assert_ptr_equal(source_stream_labels(s, 3), s->labels[PARSER_STREAM_UNKNOWN]);
    assert_ptr_equal(source_stream_labels(s, 255), s->labels[PARSER_STREAM_UNKNOWN]);
    /* Pod uid and container id are never labels. */
    for (int k = 0; k < SOURCE_STREAM_KINDS; k++) {
        assert_null(strstr(s->labels[k], "uid"));
        assert_null(strstr(s->labels[k], "cid-"));
    }
    source_unref(s);
}

static void test_labels_without_stream_are_one_set(void **state)
{
    (void)state;
    struct source_label_policy pol = {.node_name = NULL, .stream = false, .static_labels = NULL};
    struct source *s = rendered("/p", meta_of("ns", "pod", "c"), &pol);
    assert_string_equal(s->labels[0], "{container=\"c\", namespace=\"ns\", pod=\"pod\"}");
    assert_ptr_equal(s->labels[1], s->labels[0]);
    assert_ptr_equal(s->labels[2], s->labels[0]);
    assert_null(strstr(s->labels[0], "stream"));
    assert_null(strstr(s->labels[0], "node_name"));
    source_unref(s);
}

static void test_static_labels_never_override_the_origin(void **state)
{
    (void)state;
    struct map st;
    map_init(&st);
    /* Every label that says where a line comes from, claimed by a static label. */
    map_put(&st, "namespace", "EVIL");
    map_put(&st, "pod", "EVIL");
    map_put(&st, "container", "EVIL");
    map_put(&st, "node_name", "EVIL");
    map_put(&st, "stream", "EVIL");
    map_put(&st, "team", "a");
    map_put(&st, "team", "b"); /* a duplicate static key: the first one wins, rendered once */
    struct source_label_policy pol = {.node_name = "n1", .stream = true, .static_labels = &st.m};
    struct source *s = rendered("/p", meta_of("ns", "pod", "c"), &pol);
    assert_string_equal(s->labels[PARSER_STREAM_STDERR],
                        "{container=\"c\", namespace=\"ns\", node_name=\"n1\", pod=\"pod\", stream=\"stderr\", "
                        "team=\"a\"}");
    for (int k = 0; k < SOURCE_STREAM_KINDS; k++) assert_null(strstr(s->labels[k], "EVIL"));
    source_unref(s);

    /* The path fallback is an origin label too. */
    struct map fn;
    map_init(&fn);
    map_put(&fn, "filename", "EVIL");
    pol.static_labels = &fn.m;
    struct source *f = rendered("/var/log/odd name.log", meta_of("", "", ""), &pol);
    assert_string_equal(f->labels[0], "{filename=\"/var/log/odd name.log\", node_name=\"n1\", stream=\"stdout\"}");
    source_unref(f);
}

static void test_static_labels_fill_in_where_the_origin_is_silent(void **state)
{
    (void)state;
    /* No NODE_NAME and no stream label: a static label of that name is not
     * overriding anything, so it is kept. */
    struct map st;
    map_init(&st);
    map_put(&st, "node_name", "static-node");
    struct source_label_policy pol = {.node_name = NULL, .stream = false, .static_labels = &st.m};
    struct source *s = rendered("/p", meta_of("ns", "pod", "c"), &pol);
    assert_string_equal(s->labels[0], "{container=\"c\", namespace=\"ns\", node_name=\"static-node\", pod=\"pod\"}");
    source_unref(s);
}

/* Label names are sanitised when rendered ("node-name" becomes node_name),
 * so a static label spelled differently can still render as an origin
 * label: the set then has node_name twice and Loki refuses every push of it
 * (400 "duplicate label name"). */
static void test_static_label_sanitised_into_an_origin_name_is_not_duplicated(void **state)
{
    (void)state;
    /* Was a known bug (sanitised duplicate names); fixed, so it always runs. */
    struct map st;
    map_init(&st);
    map_put(&st, "node-name", "EVIL");
    struct source_label_policy pol = {.node_name = "n1", .stream = false, .static_labels = &st.m};
    struct source *s = rendered("/p", meta_of("ns", "pod", "c"), &pol);
    const char *first = strstr(s->labels[0], "node_name=");
    assert_non_null(first);
    assert_null(strstr(first + 1, "node_name="));
    assert_null(strstr(s->labels[0], "EVIL"));
    source_unref(s);
}

static void test_filename_when_the_path_tells_too_little(void **state)
{
    (void)state;
    struct source_label_policy pol = {.node_name = NULL, .stream = false, .static_labels = NULL};
    /* Any of namespace, pod, container unknown: the path says where it is from. */
    struct source *a = rendered("/logs/a\"b\\c.log", meta_of("ns", "", "c"), &pol);
    assert_string_equal(a->labels[0], "{container=\"c\", filename=\"/logs/a\\\"b\\\\c.log\", namespace=\"ns\"}");
    source_unref(a);
    struct source *b = rendered("/logs/b.log", meta_of("", "", ""), &pol);
    assert_string_equal(b->labels[0], "{filename=\"/logs/b.log\"}");
    source_unref(b);
    struct source *c = rendered("/logs/c.log", meta_of("ns", "pod", "c"), &pol);
    assert_null(strstr(c->labels[0], "filename"));
    source_unref(c);
}

static void test_policy_takes_node_name_from_the_environment(void **state)
{
    (void)state;
    struct config cfg;
    config_defaults(&cfg);
    struct source_label_policy pol;

    setenv("NODE_NAME", "worker-7", 1);
    cfg.labels.stream = false;
    source_label_policy_init(&pol, &cfg);
    assert_string_equal(pol.node_name, "worker-7");
    assert_false(pol.stream);
    assert_ptr_equal(pol.static_labels, &cfg.labels.static_labels);
    struct source *s = rendered("/p", meta_of("ns", "pod", "c"), &pol);
    assert_string_equal(s->labels[0], "{container=\"c\", namespace=\"ns\", node_name=\"worker-7\", pod=\"pod\"}");
    source_unref(s);

    setenv("NODE_NAME", "", 1); /* set but empty: no label rather than node_name="" */
    cfg.labels.stream = true;
    source_label_policy_init(&pol, &cfg);
    assert_null(pol.node_name);
    assert_true(pol.stream);

    unsetenv("NODE_NAME");
    source_label_policy_init(&pol, &cfg);
    assert_null(pol.node_name);
    s = rendered("/p", meta_of("ns", "pod", "c"), &pol);
    assert_null(strstr(s->labels[0], "node_name"));
    source_unref(s);
    config_free(&cfg);
}

static void test_rendering_again_replaces_the_sets(void **state)
{
    (void)state;
    struct source_label_policy with = {.node_name = "n1", .stream = true, .static_labels = NULL};
    struct source_label_policy without = {.node_name = NULL, .stream = false, .static_labels = NULL};
    struct source *s = rendered("/p", meta_of("ns", "pod", "c"), &with);
    char err[256];
    /* The old buffer is freed (the sanitizer build checks for the leak). */
    assert_int_equal(source_render_labels(s, &without, err, sizeof err), 0);
    assert_string_equal(s->labels[2], "{container=\"c\", namespace=\"ns\", pod=\"pod\"}");
    assert_int_equal(source_render_labels(s, &with, err, sizeof err), 0);
    assert_string_equal(s->labels[1], "{container=\"c\", namespace=\"ns\", node_name=\"n1\", pod=\"pod\", stream=\"stderr\"}");
    source_unref(s);
}

/* Renders a source without metadata whose one static label has a value of
 * vlen bytes: {big="…", filename="…"[, stream="…"]}. */
static int render_with_value_len(size_t vlen, bool stream, char *err, size_t errlen, struct source **out)
{
    char *value = malloc(vlen + 1);
    memset(value, 'v', vlen);
    value[vlen] = '\0';
    struct map st;
    map_init(&st);
    map_put(&st, "big", value);
    struct source_label_policy pol = {.node_name = NULL, .stream = stream, .static_labels = &st.m};
    struct source *s = source_new("/var/log/containers/huge_ns_c-1.log", "/r", &(struct parser_path_meta){0}, 0, 0);
    assert_non_null(s);
    int rc = source_render_labels(s, &pol, err, errlen);
    free(value);
    *out = s;
    return rc;
}

static void test_labels_over_8KiB_are_refused_naming_the_file(void **state)
{
    (void)state;
    char err[512];
    struct source *s;
    const char *path = "/var/log/containers/huge_ns_c-1.log";
    /* {big="V", filename="PATH"} is 20 + len(V) + len(PATH) bytes. */
    const size_t fixed = strlen("{big=\"\", filename=\"\"}") + strlen(path);
    for (int stream = 0; stream < 2; stream++) {
        /* stream adds `, stream="stdout"` (18 bytes; "unknown" is 19, the longest). */
        size_t extra = stream ? strlen(", stream=\"unknown\"") : 0;
        /* Largest that fits: the set and its NUL in 8 KiB. */
        size_t fits = SOURCE_LABELS_MAX_BYTES - 1 - fixed - extra;
        err[0] = '\0';
        assert_int_equal(render_with_value_len(fits, stream, err, sizeof err, &s), 0);
        assert_int_equal(strlen(s->labels[PARSER_STREAM_UNKNOWN]), SOURCE_LABELS_MAX_BYTES - 1);
        source_unref(s);

        err[0] = '\0';
        assert_int_equal(render_with_value_len(fits + 1, stream, err, sizeof err, &s), -1);
        if (!strstr(err, path)) fail_msg("error does not name the file: %s", err);
        assert_null(s->labels_buf); /* nothing half-rendered is left behind */
        assert_null(s->labels[0]);
        source_unref(s);

        err[0] = '\0';
        assert_int_equal(render_with_value_len(100000, stream, err, sizeof err, &s), -1);
        if (!strstr(err, path)) fail_msg("error does not name the file: %s", err);
        source_unref(s);
    }
}

static void test_too_many_labels_are_refused_naming_the_file(void **state)
{
    (void)state;
    static char names[200][16];
    struct config_strmap big = {0};
    char *keys[200], *values[200];
    for (int i = 0; i < 200; i++) {
        snprintf(names[i], sizeof names[i], "k%03d", i);
        keys[i] = names[i];
        values[i] = "v";
    }
    big.keys = keys;
    big.values = values;
    big.count = 200;
    struct source_label_policy pol = {.node_name = "n", .stream = true, .static_labels = &big};
    struct source *s = source_new("/var/log/containers/many.log", "/r", &(struct parser_path_meta){0}, 0, 0);
    char err[512] = "";
    assert_int_equal(source_render_labels(s, &pol, err, sizeof err), -1);
    if (!strstr(err, "/var/log/containers/many.log")) fail_msg("error does not name the file: %s", err);
    source_unref(s);

    /* A handful fewer than the bound is fine, and every one is rendered. */
    big.count = 40;
    s = source_new("/var/log/containers/many.log", "/r", &(struct parser_path_meta){0}, 0, 0);
    assert_int_equal(source_render_labels(s, &pol, err, sizeof err), 0);
    for (int i = 0; i < 40; i++) {
        char want[32];
        snprintf(want, sizeof want, "k%03d=\"v\"", i);
        assert_non_null(strstr(s->labels[0], want));
    }
    source_unref(s);
}

/* Several outputs: the file's offset is the least of theirs, starts from
 * where the file was resumed, never moves back, and a copytruncate resets
 * every slot (else a stale slot would pass lines another output lacks). */
static void test_acked_offset_is_the_least_over_the_outputs(void **state)
{
    (void)state;
    struct parser_path_meta m = meta_of("ns", "p", "c");
    struct source *src = source_new("/x", "/x", &m, 1, 1);
    assert_non_null(src);
    source_set_sinks(2);
    atomic_store(&src->acked_offset, 40); /* resumed at 40 */
    source_ack(src, 0, 100);
    assert_int_equal(atomic_load(&src->acked_offset), 40); /* output 1 has nothing yet */
    source_ack(src, 1, 70);
    assert_int_equal(atomic_load(&src->acked_offset), 70);
    source_ack(src, 1, 250);
    assert_int_equal(atomic_load(&src->acked_offset), 100);
    source_ack(src, 0, 300);
    assert_int_equal(atomic_load(&src->acked_offset), 250);
    source_reset_acked(src, 0);
    assert_int_equal(atomic_load(&src->acked_offset), 0);
    source_ack(src, 0, 10);
    assert_int_equal(atomic_load(&src->acked_offset), 0); /* output 1's old 250 is gone */
    source_ack(src, 1, 10);
    assert_int_equal(atomic_load(&src->acked_offset), 10);
    source_set_sinks(1);
    source_unref(src);
}

static void test_acked_offset_with_one_output_follows_it(void **state)
{
    (void)state;
    struct parser_path_meta m = meta_of("ns", "p", "c");
    struct source *src = source_new("/x", "/x", &m, 1, 1);
    assert_non_null(src);
    source_set_sinks(1);
    source_ack(src, 0, 123);
    assert_int_equal(atomic_load(&src->acked_offset), 123);
    source_unref(src);
}

int main(void)
{
    log_setup(LOG_LEVEL_ERROR, LOG_FORMAT_LOGFMT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_copies_its_inputs_and_starts_with_one_reference),
        cmocka_unit_test(test_ids_are_unique_and_increasing),
        cmocka_unit_test(test_last_unref_frees_not_before),
        cmocka_unit_test(test_references_are_atomic_across_threads),
        cmocka_unit_test(test_labels_exact_text_per_stream),
        cmocka_unit_test(test_labels_without_stream_are_one_set),
        cmocka_unit_test(test_static_labels_never_override_the_origin),
        cmocka_unit_test(test_static_labels_fill_in_where_the_origin_is_silent),
        cmocka_unit_test(test_static_label_sanitised_into_an_origin_name_is_not_duplicated),
        cmocka_unit_test(test_filename_when_the_path_tells_too_little),
        cmocka_unit_test(test_policy_takes_node_name_from_the_environment),
        cmocka_unit_test(test_rendering_again_replaces_the_sets),
        cmocka_unit_test(test_labels_over_8KiB_are_refused_naming_the_file),
        cmocka_unit_test(test_too_many_labels_are_refused_naming_the_file),
        cmocka_unit_test(test_acked_offset_is_the_least_over_the_outputs),
        cmocka_unit_test(test_acked_offset_with_one_output_follows_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
