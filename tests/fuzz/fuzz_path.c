/*
 * libFuzzer harness for parser_path_meta.
 * The input is split at its first NUL: link path, then target path (an
 * input without NUL is tried as each). Invariants: every field is
 * NUL-terminated inside its array, holds no '/', and the return value is 0
 * exactly when namespace, pod and container are all known.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parser/parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const struct parser_path_meta *m, int rc)
{
    const char *f[] = {m->namespace_, m->pod, m->container, m->pod_uid, m->container_id};
    const size_t cap[] = {sizeof m->namespace_, sizeof m->pod, sizeof m->container, sizeof m->pod_uid,
                          sizeof m->container_id};
    for (size_t i = 0; i < 5; i++) {
        const size_t n = strnlen(f[i], cap[i]);
        if (n >= cap[i] || memchr(f[i], '/', n))
            abort();
    }
    const size_t id = strlen(m->container_id);
    if (id != 0 && id != 64)
        abort();
    if ((rc == 0) != (m->namespace_[0] && m->pod[0] && m->container[0]))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (!buf)
        abort();
    if (size)
        memcpy(buf, data, size);
    buf[size] = '\0';

    struct parser_path_meta m;
    const char *nul = memchr(buf, '\0', size);
    if (nul) {
        check(&m, parser_path_meta(buf, nul + 1, &m));
    } else {
        check(&m, parser_path_meta(buf, NULL, &m));
        check(&m, parser_path_meta(NULL, buf, &m));
    }
    free(buf);
    return 0;
}
