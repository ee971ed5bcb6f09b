/*
 * config tree — a YAML subtree kept as the file wrote it, for a section
 * whose shape belongs to another module (`pipeline:`, a list of match blocks
 * whose stages each have their own keys). The config table holds it as one
 * row; the owning module walks it and reports errors with the lines kept
 * here, so they read like every other config error.
 *
 * Contract: scalars are ${VAR}-expanded like every other value; a NULL tree
 * means the key was not set (or set to null / []); trees are deep-copied
 * with the configuration and printed back as YAML that loads again.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

void config_tree_free(struct config_tree *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->count; i++) {
        if (t->keys) free(t->keys[i]);
        config_tree_free(t->items[i]);
    }
    free(t->keys);
    free(t->items);
    free(t->text);
    free(t);
}

struct config_tree *config_tree_new(enum config_tree_kind kind, size_t line)
{
    struct config_tree *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->kind = kind;
    t->line = line;
    return t;
}

int config_tree_push(struct config_tree *t, char *key, struct config_tree *item)
{
    struct config_tree **items = realloc(t->items, (t->count + 1) * sizeof *items);
    if (!items) return -1;
    t->items = items;
    if (t->kind == CONFIG_TREE_MAP) {
        char **keys = realloc(t->keys, (t->count + 1) * sizeof *keys);
        if (!keys) return -1;
        t->keys = keys;
        t->keys[t->count] = key;
    }
    t->items[t->count++] = item;
    return 0;
}

struct config_tree *config_tree_dup(const struct config_tree *src)
{
    if (!src) return NULL;
    struct config_tree *t = config_tree_new(src->kind, src->line);
    if (!t) return NULL;
    if (src->text && !(t->text = strdup(src->text))) goto oom;
    for (size_t i = 0; i < src->count; i++) {
        char *key = NULL;
        if (src->kind == CONFIG_TREE_MAP && !(key = strdup(src->keys[i]))) goto oom;
        struct config_tree *item = config_tree_dup(src->items[i]);
        if (!item || config_tree_push(t, key, item) < 0) {
            free(key);
            config_tree_free(item);
            goto oom;
        }
    }
    return t;
oom:
    config_tree_free(t);
    return NULL;
}

const struct config_tree *config_tree_get(const struct config_tree *map, const char *key)
{
    if (!map || map->kind != CONFIG_TREE_MAP) return NULL;
    for (size_t i = 0; i < map->count; i++)
        if (strcmp(map->keys[i], key) == 0) return map->items[i];
    return NULL;
}

/* Values are ${VAR}-expanded when loaded, so "$" prints as "$$"; keys are not. */
static void print_scalar(FILE *out, const char *s, bool dollar)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(out, "\\%c", *p);
        else if (*p == '$' && dollar) fputs("$$", out);
        else if (*p < 0x20 || *p == 0x7f) fprintf(out, "\\x%02x", *p);
        else fputc(*p, out);
    }
    fputc('"', out);
}

/* Flow style: one line per tree, valid wherever a YAML value may stand. */
void config_tree_print(const struct config_tree *t, FILE *out)
{
    if (!t) {
        fputs("[]", out);
        return;
    }
    switch (t->kind) {
    case CONFIG_TREE_SCALAR:
        print_scalar(out, t->text, true);
        break;
    case CONFIG_TREE_LIST:
        fputc('[', out);
        for (size_t i = 0; i < t->count; i++) {
            if (i) fputs(", ", out);
            config_tree_print(t->items[i], out);
        }
        fputc(']', out);
        break;
    case CONFIG_TREE_MAP:
        fputc('{', out);
        for (size_t i = 0; i < t->count; i++) {
            if (i) fputs(", ", out);
            print_scalar(out, t->keys[i], false);
            fputs(": ", out);
            config_tree_print(t->items[i], out);
        }
        fputc('}', out);
        break;
    }
}
