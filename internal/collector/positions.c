#include "positions.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

uint64_t positions_fingerprint(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

int positions_add(struct positions *ps, const struct position *p)
{
    if (ps->count == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 64;
        struct position *items = realloc(ps->items, cap * sizeof *items);
        if (!items) return -1;
        ps->items = items;
        ps->cap = cap;
    }
    struct position copy = *p;
    copy.path = strdup(p->path ? p->path : "");
    copy.real_path = strdup(p->real_path ? p->real_path : "");
    if (!copy.path || !copy.real_path) {
        free(copy.path);
        free(copy.real_path);
        return -1;
    }
    ps->items[ps->count++] = copy;
    return 0;
}

void positions_free(struct positions *ps)
{
    for (size_t i = 0; i < ps->count; i++) {
        free(ps->items[i].path);
        free(ps->items[i].real_path);
    }
    free(ps->items);
    memset(ps, 0, sizeof *ps);
}

static int parse_u64(const char *text, int base, uint64_t *out)
{
    if (!*text || *text == '-') return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, base);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

static const char *scalar(yaml_document_t *doc, yaml_node_t *node)
{
    (void)doc;
    return node && node->type == YAML_SCALAR_NODE ? (const char *)node->data.scalar.value : NULL;
}

/* A path that is not plain printable ASCII is written as hex (`path_hex`):
 * YAML cannot carry arbitrary bytes (invalid UTF-8, C1 controls, U+FFFE),
 * and one such file name must not make the whole positions file unreadable. */
static bool plain_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f) return false;
    return true;
}

static char *from_hex(const char *hex)
{
    size_t len = strlen(hex);
    if (len % 2) return NULL;
    char *out = malloc(len / 2 + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v = 0;
        for (int k = 0; k < 2; k++) {
            char ch = hex[2 * i + (size_t)k];
            unsigned d = ch >= '0' && ch <= '9' ? (unsigned)(ch - '0') : ch >= 'a' && ch <= 'f' ? (unsigned)(ch - 'a' + 10) : 16;
            if (d == 16) {
                free(out);
                return NULL;
            }
            v = v * 16 + d;
        }
        if (v == 0) {
            free(out);
            return NULL;
        }
        out[i] = (char)v;
    }
    out[len / 2] = '\0';
    return out;
}

/* Fills one position from a mapping node; returns the name of the bad field
 * or NULL. Paths given as hex are decoded into *decoded (the caller frees). */
static const char *parse_entry(yaml_document_t *doc, yaml_node_t *map, struct position *p, char *decoded[2])
{
    if (map->type != YAML_MAPPING_NODE) return "entry (not a mapping)";
    unsigned seen = 0;
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top; pair++) {
        const char *key = scalar(doc, yaml_document_get_node(doc, pair->key));
        const char *value = scalar(doc, yaml_document_get_node(doc, pair->value));
        if (!key || !value) return "entry (nested value)";
        uint64_t n = 0;
        if (strcmp(key, "path") == 0) p->path = (char *)value, seen |= 1;
        else if (strcmp(key, "real_path") == 0) p->real_path = (char *)value, seen |= 2;
        else if (strcmp(key, "path_hex") == 0 || strcmp(key, "real_path_hex") == 0) {
            int which = key[0] == 'r';
            free(decoded[which]);
            if (!(decoded[which] = from_hex(value))) return key;
            if (which) p->real_path = decoded[1], seen |= 2;
            else p->path = decoded[0], seen |= 1;
        }
        else if (strcmp(key, "dev") == 0) { if (parse_u64(value, 10, &p->dev)) return key; seen |= 4; }
        else if (strcmp(key, "ino") == 0) { if (parse_u64(value, 10, &p->ino)) return key; seen |= 8; }
        else if (strcmp(key, "fp") == 0) { if (strlen(value) != 16 || parse_u64(value, 16, &p->fp)) return key; seen |= 16; }
        else if (strcmp(key, "fp_len") == 0) {
            if (parse_u64(value, 10, &n) || n > POSITIONS_FP_MAX) return key;
            p->fp_len = (uint32_t)n;
            seen |= 32;
        } else if (strcmp(key, "offset") == 0) { if (parse_u64(value, 10, &p->offset)) return key; seen |= 64; }
        else if (strcmp(key, "done") == 0) p->done = strcmp(value, "1") == 0;
        else if (strcmp(key, "renamed") == 0) p->renamed = strcmp(value, "1") == 0;
        else if (strcmp(key, "excluded") == 0) p->excluded = strcmp(value, "1") == 0;
        /* Unknown keys are ignored: a newer agent may have added some. */
    }
    if (seen != 127) return "entry (a field is missing)";
    if (p->offset > (uint64_t)INT64_MAX) return "offset";
    return NULL;
}

int positions_read(const char *file, struct positions *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(file, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", file, strerror(errno));
        return -1;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    int rc = -1;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        snprintf(err, errlen, "%s: out of memory", file);
        return -1;
    }
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, errlen, "%s:%zu: not valid YAML: %s", file, parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "parse error");
        yaml_parser_delete(&parser);
        fclose(f);
        return -1;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    yaml_node_t *list = NULL;
    if (!root) {
        snprintf(err, errlen, "%s: empty (truncated?)", file);
        goto done;
    }
    if (root->type != YAML_MAPPING_NODE) {
        snprintf(err, errlen, "%s:%zu: expected a mapping with version and positions", file, root->start_mark.line + 1);
        goto done;
    }
    bool version_ok = false;
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start; pair < root->data.mapping.pairs.top; pair++) {
        const char *key = scalar(&doc, yaml_document_get_node(&doc, pair->key));
        yaml_node_t *value = yaml_document_get_node(&doc, pair->value);
        if (key && strcmp(key, "version") == 0) version_ok = scalar(&doc, value) && strcmp(scalar(&doc, value), "1") == 0;
        if (key && strcmp(key, "positions") == 0) list = value;
    }
    if (!version_ok) {
        snprintf(err, errlen, "%s: missing or unsupported version (expected 1)", file);
        goto done;
    }
    if (!list || (list->type != YAML_SEQUENCE_NODE && !(list->type == YAML_SCALAR_NODE && !*scalar(&doc, list)))) {
        snprintf(err, errlen, "%s: missing positions list", file);
        goto done;
    }
    if (list->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *item = list->data.sequence.items.start; item < list->data.sequence.items.top; item++) {
            yaml_node_t *node = yaml_document_get_node(&doc, *item);
            struct position p = {0};
            char *decoded[2] = {NULL, NULL};
            const char *bad = node ? parse_entry(&doc, node, &p, decoded) : "entry";
            if (bad) {
                snprintf(err, errlen, "%s:%zu: invalid %s", file, node ? node->start_mark.line + 1 : 0, bad);
                free(decoded[0]);
                free(decoded[1]);
                positions_free(out);
                goto done;
            }
            int added = positions_add(out, &p);
            free(decoded[0]);
            free(decoded[1]);
            if (added != 0) {
                snprintf(err, errlen, "%s: out of memory", file);
                positions_free(out);
                goto done;
            }
        }
    }
    rc = 0;
done:
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

static void write_path(FILE *f, const char *key, const char *s)
{
    if (!plain_ascii(s)) {
        fprintf(f, "%s_hex: \"", key);
        for (; *s; s++) fprintf(f, "%02x", (unsigned char)*s);
        fputc('"', f);
        return;
    }
    fprintf(f, "%s: ", key);
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f) fprintf(f, "\\x%02x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

int positions_write(const char *file, const struct positions *ps, char *err, size_t errlen)
{
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", file) >= sizeof tmp) {
        snprintf(err, errlen, "%s: path too long", file);
        return -1;
    }
    /* A leftover (or planted) temporary must not lend us its mode or its
     * link target: start from a new file of our own. */
    if (unlink(tmp) != 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove the stale %s: %s", tmp, strerror(errno));
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    fprintf(f, "# loglet positions: offsets acknowledged by the output, per file identity.\nversion: 1\npositions:%s\n",
            ps->count ? "" : " []");
    for (size_t i = 0; i < ps->count; i++) {
        const struct position *p = &ps->items[i];
        fputs("  - {", f);
        write_path(f, "path", p->path);
        fputs(", ", f);
        write_path(f, "real_path", p->real_path);
        fprintf(f, ", dev: %" PRIu64 ", ino: %" PRIu64 ", fp: \"%016" PRIx64 "\", fp_len: %u, offset: %" PRIu64 "%s%s%s}\n",
                p->dev, p->ino, p->fp, p->fp_len, p->offset, p->done ? ", done: 1" : "",
                p->renamed ? ", renamed: 1" : "", p->excluded ? ", excluded: 1" : "");
    }
    int failed = fflush(f) != 0 || ferror(f) || fsync(fd) != 0;
    int saved = errno;
    if (fclose(f) != 0 && !failed) {
        failed = 1;
        saved = errno;
    }
    if (failed) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(saved));
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, file) != 0) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, file, strerror(errno));
        unlink(tmp);
        return -1;
    }
    /* The rename itself is durable only once the directory is synced. */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", file);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}
