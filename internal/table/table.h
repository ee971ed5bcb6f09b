/*
 * table — a small open-addressing hash table for the agent's indexes
 * (watch descriptor → directory, path → file, label set → stream). Keys are owned by the values.
 * Lookups, inserts and deletes are O(1) on average; it grows by doubling and
 * never shrinks, so its size follows the peak number of entries, not churn.
 */
#ifndef LOGLET_TABLE_H
#define LOGLET_TABLE_H

#include <stddef.h>
#include <stdint.h>

struct table_slot {
    uint64_t hash; /* 0: empty, 1: deleted */
    const char *str_key; /* NULL for integer keys */
    int64_t int_key;
    void *value;
};

struct table {
    struct table_slot *slots;
    size_t capacity; /* power of two */
    size_t used;     /* live + deleted slots */
    size_t live;
};

void table_free(struct table *t);
void *table_get_str(const struct table *t, const char *key);
void *table_get_int(const struct table *t, int64_t key);
/* Inserts or replaces; returns -1 on allocation failure. */
int table_put_str(struct table *t, const char *key, void *value);
int table_put_int(struct table *t, int64_t key, void *value);
void table_del_str(struct table *t, const char *key);
void table_del_int(struct table *t, int64_t key);
/* Iteration in no particular order: start with *cursor = 0; returns each
 * live value once, then NULL. The table must not change meanwhile. */
void *table_next(const struct table *t, size_t *cursor);

#endif
