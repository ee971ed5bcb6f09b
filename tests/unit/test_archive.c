/*
 * test_archive — object keys: the default layout filled from a container's
 * metadata and its first line's time, values that could leave the prefix
 * made safe, keys too long refused, and parsing a key back (the reader and
 * compaction depend on it) even for containers whose name has a '-'; the
 * back-off stays within its bounds and honours Retry-After.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "archive/archive.h"

#define DEFAULT_FORMAT "kube.var.log.containers.{pod}_{namespace}_{container}-{container_id}/{date}_{index}.gz"
#define CID "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void test_default_layout(void **state)
{
    (void)state;
    /* 2026-03-04T05:06:07Z */
    struct archive_key_fields f = {"shop", "web-0", "my-app", CID, "uid-1", "node-a", 1772600767LL * 1000000000LL, 42};
    char key[ARCHIVE_KEY_MAX], err[256];
    size_t n = archive_key_render(DEFAULT_FORMAT, &f, key, sizeof key, err, sizeof err);
    assert_int_equal(n, strlen(key));
    assert_string_equal(key, "kube.var.log.containers.web-0_shop_my-app-" CID "/2026-03-04_42.gz");
    n = archive_key_render("{node}/{pod_uid}/{date}/{hour}/{time}-{index}", &f, key, sizeof key, err, sizeof err);
    assert_true(n > 0);
    assert_string_equal(key, "node-a/uid-1/2026-03-04/05/050607-42");
}

static void test_values_cannot_leave_the_prefix(void **state)
{
    (void)state;
    struct archive_key_fields f = {"..", "a/../../b", "", "x\ny", "", "n", 0, 1};
    char key[ARCHIVE_KEY_MAX], err[256];
    assert_true(archive_key_render("{namespace}/{pod}/{container}/{container_id}/{index}", &f, key, sizeof key, err,
                                   sizeof err) > 0);
    assert_string_equal(key, "_/a_.._.._b/unknown/x_y/1");
}

static void test_too_long_is_refused(void **state)
{
    (void)state;
    struct archive_key_fields f = {"ns", "pod", "c", CID, "", "n", 0, 1};
    char key[32], err[256];
    assert_int_equal(archive_key_render(DEFAULT_FORMAT, &f, key, sizeof key, err, sizeof err), 0);
    assert_non_null(strstr(err, "longer than 31 bytes"));
}

static void test_parse_round_trip(void **state)
{
    (void)state;
    struct archive_key_parsed k;
    assert_int_equal(archive_key_parse(DEFAULT_FORMAT,
                                       "kube.var.log.containers.web-0_shop_my-side-car-" CID "/2026-03-04_42.gz", &k),
                     0);
    assert_string_equal(k.pod, "web-0");
    assert_string_equal(k.namespace_, "shop");
    assert_string_equal(k.container, "my-side-car");
    assert_string_equal(k.container_id, CID);
    assert_string_equal(k.date, "2026-03-04");
    assert_int_equal(k.index, 42);
    /* Not of the layout: compacted objects, indexes, strays. */
    assert_int_equal(archive_key_parse(DEFAULT_FORMAT, "data/shop/web-0/" CID "/2026-03-04_05.gz", &k), -1);
    assert_int_equal(archive_key_parse(DEFAULT_FORMAT, "metadata/shop_web-0.json", &k), -1);
    assert_int_equal(
        archive_key_parse(DEFAULT_FORMAT, "kube.var.log.containers.web-0_shop_app-" CID "/2026-03-04_x.gz", &k), -1);
    assert_int_equal(
        archive_key_parse(DEFAULT_FORMAT, "kube.var.log.containers.web-0_shop_app-" CID "/2026-03-04_1.gz.tmp", &k),
        -1);
}

static void test_backoff_bounds(void **state)
{
    (void)state;
    for (int attempt = 0; attempt < 40; attempt++) {
        int64_t w = archive_backoff_ms(attempt, 500, 300000, 0);
        assert_true(w >= 375 && w <= 300000);
    }
    assert_true(archive_backoff_ms(0, 500, 300000, 0) <= 500);
    assert_true(archive_backoff_ms(10, 500, 300000, 0) >= 225000);
    assert_int_equal(archive_backoff_ms(0, 500, 300000, 7000), 7000);
    /* A Retry-After of a day is capped at max_backoff. */
    assert_int_equal(archive_backoff_ms(0, 500, 2000, 86400000), 2000);
}

static int put_text(struct archive_store *st, const char *key, const char *text, bool replace,
                    struct archive_outcome *o)
{
    FILE *f = tmpfile();
    assert_non_null(f);
    fputs(text, f);
    fflush(f);
    uint64_t size;
    unsigned char md5[16], sha[32];
    assert_int_equal(archive_digest_fd(fileno(f), &size, md5, sha), 0);
    archive_store_put_file(st, key, fileno(f), size, md5, sha, replace, o);
    fclose(f);
    return o->result == ARCHIVE_OK ? 0 : -1;
}

static int count_keys(void *ctx, const char *key, uint64_t size)
{
    (void)key;
    (void)size;
    (*(int *)ctx)++;
    return 0;
}

/* file://: a key is never replaced unless asked, listing finds keys by
 * prefix and skips temporary files, '..' in a key is refused. */
static void test_file_store(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_archive.XXXXXX", url[64], err[256];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "file://%s", dir);
    struct archive_store_options opt = {.url = url};
    struct archive_store *st = archive_store_open(&opt, err, sizeof err);
    assert_non_null(st);
    struct archive_outcome o;
    assert_int_equal(put_text(st, "a/b/one.gz", "first", false, &o), 0);
    assert_int_equal(put_text(st, "a/b/one.gz", "second", false, &o), -1);
    assert_int_equal(o.result, ARCHIVE_EXISTS);
    assert_int_equal(put_text(st, "a/c/two.gz", "x", false, &o), 0);
    assert_int_equal(put_text(st, "a/../escape", "x", false, &o), -1);
    assert_int_equal(o.result, ARCHIVE_REFUSED);
    char path[128];
    snprintf(path, sizeof path, "%s/a/b/.one.gz.tmp.1", dir);
    FILE *tmp = fopen(path, "w"); /* an upload cut short */
    assert_non_null(tmp);
    fclose(tmp);
    int n = 0;
    archive_store_list(st, "a/b/", count_keys, &n, &o);
    assert_int_equal(o.result, ARCHIVE_OK);
    assert_int_equal(n, 1);
    n = 0;
    archive_store_list(st, "", count_keys, &n, &o);
    assert_int_equal(n, 2);
    /* The first content stayed; replace changes it. */
    FILE *out = tmpfile();
    archive_store_get(st, "a/b/one.gz", fileno(out), &o);
    assert_int_equal(o.result, ARCHIVE_OK);
    char buf[16] = "";
    assert_int_equal(pread(fileno(out), buf, sizeof buf - 1, 0), 5);
    assert_string_equal(buf, "first");
    assert_int_equal(put_text(st, "a/b/one.gz", "second", true, &o), 0);
    archive_store_delete(st, "a/c/two.gz", &o);
    assert_int_equal(o.result, ARCHIVE_OK);
    archive_store_delete(st, "a/c/two.gz", &o);
    assert_int_equal(o.result, ARCHIVE_NOT_FOUND);
    fclose(out);
    archive_store_close(st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_layout),
        cmocka_unit_test(test_values_cannot_leave_the_prefix),
        cmocka_unit_test(test_too_long_is_refused),
        cmocka_unit_test(test_parse_round_trip),
        cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(test_file_store),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
