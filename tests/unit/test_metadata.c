/*
 * test_metadata — the provider interface as a source sees it: a provider's
 * labels are added to the path's without overriding them, static labels do
 * not override the provider's, the provider is asked once per source (and
 * its answer kept, immutable, with the source), names that Loki would
 * sanitise to the same label count once; the builder's snapshot owns its
 * strings; the path provider adds nothing; and pod_labels accepts
 * {from, to} items and defaults to the four documented copies.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "log/log.h"
#include "loki/loki.h"
#include "metadata/metadata.h"
#include "source/source.h"

/* A provider answering from a fixed builder, counting its calls. */
struct fake {
    struct metadata_provider base;
    struct metadata_builder answer;
    enum metadata_status status;
    int calls;
};

static enum metadata_status fake_describe(struct metadata_provider *p, const struct parser_path_meta *path,
                                          struct metadata_labels **out)
{
    (void)path;
    struct fake *f = (struct fake *)p;
    f->calls++;
    *out = metadata_builder_finish(&f->answer);
    return f->status;
}
static uint64_t fake_generation(struct metadata_provider *p) { return (uint64_t)((struct fake *)p)->calls; }
static bool fake_changed_since(struct metadata_provider *p, const struct parser_path_meta *path, uint64_t gen)
{
    (void)p, (void)path, (void)gen;
    return true;
}
static void fake_destroy(struct metadata_provider *p) { (void)p; }
static const struct metadata_provider_ops fake_ops = {"fake", fake_describe, fake_generation, fake_changed_since,
                                                      fake_destroy, NULL};

static struct source *render(struct fake *f, const struct config_strmap *static_labels)
{
    struct parser_path_meta m;
    memset(&m, 0, sizeof m);
    strcpy(m.namespace_, "shop");
    strcpy(m.pod, "web-1");
    strcpy(m.container, "app");
    struct source_label_policy policy = {.node_name = "node-a", .stream = true, .static_labels = static_labels,
                                         .metadata = &f->base};
    struct source *s = source_new("/l/web.log", "/p/0.log", &m, 1, 2);
    assert_non_null(s);
    char err[256];
    assert_int_equal(source_render_labels(s, &policy, err, sizeof err), 0);
    return s;
}

static void test_provider_labels_join_the_path_labels_without_overriding_them(void **state)
{
    (void)state;
    struct fake f = {.base = {&fake_ops}, .status = METADATA_FOUND};
    metadata_builder_add(&f.answer, false, "app", "checkout");     /* the operator's static app wins */
    metadata_builder_add(&f.answer, false, "pod", "forged");       /* origin labels win */
    metadata_builder_add(&f.answer, false, "workload", "web");
    metadata_builder_add(&f.answer, false, "tier-x", "one");
    metadata_builder_add(&f.answer, false, "tier_x", "two");       /* the same label once sanitised */
    metadata_builder_add(&f.answer, true, "team", "payments");     /* structured: not a stream label */
    char *keys[] = {"app", "cluster"}, *values[] = {"static-app", "prod"};
    struct config_strmap st = {keys, values, 2};
    struct source *s = render(&f, &st);
    assert_string_equal(source_stream_labels(s, PARSER_STREAM_STDOUT),
                        "{app=\"static-app\", cluster=\"prod\", container=\"app\", namespace=\"shop\", "
                        "node_name=\"node-a\", pod=\"web-1\", stream=\"stdout\", tier_x=\"one\", workload=\"web\"}");
    assert_string_equal(source_stream_labels(s, PARSER_STREAM_STDERR),
                        "{app=\"static-app\", cluster=\"prod\", container=\"app\", namespace=\"shop\", "
                        "node_name=\"node-a\", pod=\"web-1\", stream=\"stderr\", tier_x=\"one\", workload=\"web\"}");
    assert_int_equal(f.calls, 1); /* once per source, not per stream kind */
    assert_int_equal(s->extra_status, METADATA_FOUND);
    assert_int_equal(s->extra->nstructured, 1);
    assert_string_equal(s->extra->structured[0].name, "team");
    /* Rendering again (the same source) does not ask again. */
    struct source_label_policy policy = {.node_name = "node-a", .stream = true, .metadata = &f.base};
    char err[256];
    assert_int_equal(source_render_labels(s, &policy, err, sizeof err), 0);
    assert_int_equal(f.calls, 1);
    source_unref(s);
}

static void test_pending_answer_is_kept_with_the_source(void **state)
{
    (void)state;
    struct fake f = {.base = {&fake_ops}, .status = METADATA_PENDING};
    struct source *s = render(&f, NULL);
    assert_int_equal(s->extra_status, METADATA_PENDING);
    assert_string_equal(source_stream_labels(s, 0), "{container=\"app\", namespace=\"shop\", node_name=\"node-a\", "
                                                     "pod=\"web-1\", stream=\"stdout\"}");
    source_unref(s);
}

static void test_too_many_provider_labels_fall_back_to_path_labels(void **state)
{
    (void)state;
    struct fake f = {.base = {&fake_ops}, .status = METADATA_FOUND};
    static char names[60][8];
    for (int i = 0; i < 60; i++) {
        snprintf(names[i], sizeof names[i], "l%d", i);
        metadata_builder_add(&f.answer, false, names[i], "v");
    }
    struct source *s = render(&f, NULL); /* the file is still tailed */
    assert_null(s->extra);
    assert_int_equal(s->extra_status, METADATA_UNAVAILABLE);
    assert_string_equal(source_stream_labels(s, 0), "{container=\"app\", namespace=\"shop\", node_name=\"node-a\", "
                                                     "pod=\"web-1\", stream=\"stdout\"}");
    source_unref(s);
}

static void test_builder_snapshot_owns_its_strings(void **state)
{
    (void)state;
    struct metadata_builder b;
    memset(&b, 0, sizeof b);
    char name[16] = "app", value[16] = "web";
    metadata_builder_add(&b, false, name, value);
    metadata_builder_add(&b, false, "", "ignored");
    metadata_builder_add(&b, false, "nil", NULL);
    b.excluded = true;
    b.why_excluded = "because";
    struct metadata_labels *m = metadata_builder_finish(&b);
    assert_non_null(m);
    strcpy(name, "XXX");
    strcpy(value, "YYY");
    assert_int_equal(m->nlabels, 1);
    assert_string_equal(m->labels[0].name, "app");
    assert_string_equal(m->labels[0].value, "web");
    assert_true(m->excluded);
    assert_string_equal(m->why_excluded, "because");
    free(m);
    static char names[70][8];
    for (int i = 0; i < 70; i++) {
        snprintf(names[i], sizeof names[i], "l%d", i);
        metadata_builder_add(&b, false, names[i], "v");
    }
    assert_true(b.overflow);
    assert_int_equal(b.nlabels, 64);
}

static void test_label_names_are_sanitised_alike_and_reserved_ones_refused(void **state)
{
    (void)state;
    /* The same names as stream labels and as structured metadata: one rule. */
    const char *names[] = {"app.kubernetes.io/x", "1abc", "h\xc3\xa9llo", "x-y", "__reserved", "_.hidden", "__name__"};
    const char *want[] = {"app_kubernetes_io_x", "_1abc", "h_llo", "x_y"};
    struct metadata_builder b;
    memset(&b, 0, sizeof b);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        metadata_builder_add(&b, false, names[i], "v");
        metadata_builder_add(&b, true, names[i], "v");
    }
    metadata_builder_add(&b, false, "x_y", "duplicate once sanitised");
    assert_int_equal(b.nreserved, 6); /* three names, in both sets */
    assert_string_equal(b.reserved[0], "__reserved");
    assert_string_equal(b.reserved[3], "_.hidden");
    struct metadata_labels *m = metadata_builder_finish(&b);
    assert_non_null(m);
    assert_int_equal(m->nlabels, 4);
    assert_int_equal(m->nstructured, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(m->labels[i].name, want[i]);
        assert_string_equal(m->structured[i].name, want[i]);
    }
    free(m);
    /* The encoder renders stream labels with that very rule. */
    char rendered[128];
    assert_true(loki_render_labels(&(struct loki_label){"h\xc3\xa9llo", "v"}, 1, rendered, sizeof rendered) > 0);
    assert_string_equal(rendered, "{h_llo=\"v\"}");
    assert_false(loki_label_name_reserved("_x"));
    assert_false(loki_label_name_reserved("1_"));
    assert_true(loki_label_name_reserved("-_"));
}

static void test_path_provider_adds_nothing(void **state)
{
    (void)state;
    struct metadata_provider *p = metadata_path_create();
    assert_non_null(p);
    struct metadata_labels *m = (void *)1;
    struct parser_path_meta meta;
    memset(&meta, 0, sizeof meta);
    assert_int_equal(p->ops->describe(p, &meta, &m), METADATA_FOUND);
    assert_null(m);
    assert_string_equal(p->ops->name, "path");
    metadata_destroy(p);
}

static void test_pod_labels_config(void **state)
{
    (void)state;
    struct config cfg;
    config_defaults(&cfg);
    const struct config_strlist *l = &cfg.kubernetes.pod_labels;
    assert_int_equal(l->count, 4);
    assert_string_equal(l->items[0], "app");
    assert_string_equal(l->items[1], "app.kubernetes.io/name=name");
    assert_string_equal(l->items[3], "app.kubernetes.io/instance=instance");
    assert_int_equal(cfg.kubernetes.wait_for_metadata_ms, 2000);
    assert_int_equal(cfg.kubernetes.enabled, CONFIG_KUBERNETES_AUTO);
    char path[] = "/tmp/test_metadata.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *yaml = "kubernetes:\n  enabled: false\n  pod_labels:\n    - app\n    - {from: team.example.com/owner, to: team}\n"
                       "    - tier=level\n  namespace_labels: [env]\n";
    assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);
    char err[512];
    assert_int_equal(config_load(&cfg, path, err, sizeof err), 0);
    assert_int_equal(cfg.kubernetes.enabled, CONFIG_KUBERNETES_OFF);
    assert_int_equal(l->count, 3);
    assert_string_equal(l->items[1], "team.example.com/owner=team");
    assert_string_equal(l->items[2], "tier=level");
    assert_string_equal(cfg.kubernetes.namespace_labels.items[0], "env");
    /* A mapping item without `to`, or with another key, is refused with its line. */
    FILE *f = fopen(path, "w");
    fputs("kubernetes:\n  pod_labels:\n    - {from: a}\n", f);
    fclose(f);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), -1);
    assert_non_null(strstr(err, ":3: key kubernetes.pod_labels: an item that is a mapping needs"));
    f = fopen(path, "w");
    fputs("kubernetes:\n  pod_labels:\n    - {from: a, as: b}\n", f);
    fclose(f);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "takes exactly `from: <key>` and `to: <name>`"));
    /* A name Loki reserves is refused where the operator can fix it. */
    f = fopen(path, "w");
    fputs("kubernetes:\n  pod_labels:\n    - app\n    - {from: team.example.com/owner, to: __team}\n", f);
    fclose(f);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "key kubernetes.pod_labels: item \"team.example.com/owner=__team\" would be sent as the "
                                "label \"__team\", which starts with \"__\""));
    f = fopen(path, "w");
    fputs("kubernetes:\n  namespace_labels: [__meta]\n", f);
    fclose(f);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "kubernetes.namespace_labels"));
    f = fopen(path, "w");
    fputs("labels:\n  static:\n    .-cluster: a\n", f);
    fclose(f);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "key labels.static: the label name \".-cluster\" (sent as \"__cluster\")"));
    /* Lists of other keys still take scalars only. */
    f = fopen(path, "w");
    fputs("collection:\n  paths:\n    - {from: a, to: b}\n", f);
    fclose(f);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "list items must be scalars"));
    unlink(path);
    config_free(&cfg);
}

int main(void)
{
    log_setup(LOG_LEVEL_ERROR, LOG_FORMAT_LOGFMT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_provider_labels_join_the_path_labels_without_overriding_them),
        cmocka_unit_test(test_pending_answer_is_kept_with_the_source),
        cmocka_unit_test(test_too_many_provider_labels_fall_back_to_path_labels),
        cmocka_unit_test(test_builder_snapshot_owns_its_strings),
        cmocka_unit_test(test_label_names_are_sanitised_alike_and_reserved_ones_refused),
        cmocka_unit_test(test_path_provider_adds_nothing),
        cmocka_unit_test(test_pod_labels_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
