/*
 * path — Kubernetes metadata from the kubelet's log file names.
 *
 *   link:   .../<pod>_<namespace>_<container>-<64 lowercase hex id>.log
 *   target: .../<namespace>_<pod>_<uid>/<container>/<restart>.log[.<rotation>]
 *           rotation: digits and '-' (kubelet: 20261122-100000), then an
 *           optional ".gz".
 *
 * Kubernetes names (pods, namespaces, containers) never contain '_', which
 * is what makes the split unambiguous; a component with the wrong number of
 * '_' is not read. Container names may contain '-': the id is what follows
 * the last '-', and if that is not 64 lowercase hex digits the whole rest is
 * taken as the container name and the id stays unknown. Values that are
 * empty or do not fit their array are left unknown (empty); nothing is ever
 * truncated or overflowed. Called once per file, not per line.
 */
#include "parser.h"

#include <string.h>

/* Copies s[0..n) into a field of size cap when it is non-empty and fits. */
static void set_field(char *field, size_t cap, const char *s, size_t n)
{
    if (n == 0 || n >= cap)
        return;
    memcpy(field, s, n);
    field[n] = '\0';
}

#define SET(field, s, n) set_field((field), sizeof(field), (s), (n))

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

static bool ends_with(const char *s, size_t n, const char *suffix)
{
    const size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* Counts c in s[0..n). */
static size_t count_char(const char *s, size_t n, char c)
{
    size_t k = 0;
    for (const char *p = s; (p = memchr(p, c, n - (size_t)(p - s))) != NULL; p++)
        k++;
    return k;
}

static void parse_link(const char *path, struct parser_path_meta *meta)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t n = strlen(base);
    if (!ends_with(base, n, ".log"))
        return;
    n -= 4;
    if (count_char(base, n, '_') != 2)
        return;
    const char *u1 = memchr(base, '_', n);
    const char *u2 = memchr(u1 + 1, '_', n - (size_t)(u1 + 1 - base));
    const char *rest = u2 + 1;
    size_t rest_len = n - (size_t)(rest - base);

    SET(meta->pod, base, (size_t)(u1 - base));
    SET(meta->namespace_, u1 + 1, (size_t)(u2 - u1 - 1));
    const char *dash = memrchr(rest, '-', rest_len);
    if (dash) {
        const char *id = dash + 1;
        const size_t id_len = rest_len - (size_t)(id - rest);
        if (id_len == 64 && is_lower_hex(id, id_len)) {
            SET(meta->container_id, id, id_len);
            rest_len = (size_t)(dash - rest);
        }
    }
    SET(meta->container, rest, rest_len);
}

/* `<digits>.log`, optionally `.<digits and '-'>` and then `.gz`. */
static bool is_log_name(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    if (i == 0 || n - i < 4 || memcmp(s + i, ".log", 4) != 0)
        return false;
    i += 4;
    if (i == n)
        return true;
    if (s[i] != '.')
        return false;
    const size_t start = ++i;
    while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
        i++;
    if (i == start)
        return false;
    return i == n || (n - i == 3 && memcmp(s + i, ".gz", 3) == 0);
}

static int parse_target(const char *path, struct parser_path_meta *meta)
{
    /* The last three components: dir/container/file. */
    const size_t n = strlen(path);
    const char *file_sl = memrchr(path, '/', n);
    if (!file_sl || file_sl == path)
        return -1;
    const char *cont_sl = memrchr(path, '/', (size_t)(file_sl - path));
    if (!cont_sl || cont_sl == path)
        return -1;
    const char *dir_sl = memrchr(path, '/', (size_t)(cont_sl - path));
    const char *dir = dir_sl ? dir_sl + 1 : path;
    const size_t dir_len = (size_t)(cont_sl - dir);
    const char *cont = cont_sl + 1;
    const size_t cont_len = (size_t)(file_sl - cont);
    const char *file = file_sl + 1;

    if (!is_log_name(file, n - (size_t)(file - path)) || cont_len == 0 || count_char(dir, dir_len, '_') != 2)
        return -1;
    const char *u1 = memchr(dir, '_', dir_len);
    const char *u2 = memrchr(dir, '_', dir_len);

    /* The target wins where it has a value; the link's stays otherwise. */
    SET(meta->namespace_, dir, (size_t)(u1 - dir));
    SET(meta->pod, u1 + 1, (size_t)(u2 - u1 - 1));
    SET(meta->pod_uid, u2 + 1, dir_len - (size_t)(u2 + 1 - dir));
    SET(meta->container, cont, cont_len);
    return 0;
}

int parser_path_meta(const char *link_path, const char *target_path, struct parser_path_meta *meta)
{
    memset(meta, 0, sizeof *meta);
    if (link_path)
        parse_link(link_path, meta);
    if (target_path)
        (void)parse_target(target_path, meta);
    return meta->namespace_[0] && meta->pod[0] && meta->container[0] ? 0 : -1;
}
