/*
 * fuzz_query — libFuzzer harness for api_query_parse().
 *
 * Beyond "no crash": a query that parses has every value NUL-terminated
 * inside the struct's store, counts in range, since <= until; a query that
 * fails says why.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/query.h"

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

static void check_value(const struct api_query *q, const char *v)
{
    if (!v) return;
    CHECK(v >= q->store && v < q->store + sizeof q->store);
    CHECK(memchr(v, '\0', (size_t)(q->store + sizeof q->store - v)) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    static struct api_query q;
    char err[256] = "";
    int rc = api_query_parse(copy, size, 1700000000000000000LL, &q, err, sizeof err);
    if (rc == 0) {
        const char *vals[] = {q.namespace_, q.pod, q.container, q.exclude_pod, q.exclude_container, q.job, q.grep};
        for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) check_value(&q, vals[i]);
        CHECK(q.used <= sizeof q.store);
        CHECK(q.since_ns <= q.until_ns);
        CHECK(q.tail_lines >= -1 && q.max_lines >= 0);
        CHECK(q.stream >= -1 && q.stream <= 1);
        struct parser_path_meta m = {0};
        (void)api_query_selects(&q, &m);
    } else {
        CHECK(rc == -1 && err[0] != '\0');
    }
    free(copy);
    return 0;
}
