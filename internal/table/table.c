#include "table.h"

#include <stdlib.h>
#include <string.h>

enum { SLOT_EMPTY = 0, SLOT_DELETED = 1 };

/* Hashes are forced >= 2 so the two marker values stay free. */
static uint64_t fix_hash(uint64_t h) { return h < 2 ? h + 2 : h; }

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return fix_hash(h);
}

static uint64_t hash_int(int64_t k)
{
    uint64_t x = (uint64_t)k * 0x9E3779B97F4A7C15ULL;
    return fix_hash(x ^ (x >> 29));
}

static int same_key(const struct table_slot *s, uint64_t hash, const char *str_key, int64_t int_key)
{
    if (s->hash != hash) return 0;
    return str_key ? (s->str_key && strcmp(s->str_key, str_key) == 0) : (!s->str_key && s->int_key == int_key);
}

static struct table_slot *find(const struct table *t, uint64_t hash, const char *str_key, int64_t int_key)
{
    if (!t->capacity) return NULL;
    size_t mask = t->capacity - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        struct table_slot *s = &t->slots[i];
        if (s->hash == SLOT_EMPTY) return NULL;
        if (same_key(s, hash, str_key, int_key)) return s;
    }
}

static int grow(struct table *t)
{
    size_t capacity = t->capacity ? t->capacity * 2 : 64;
    /* Rehash in place of the same size when tombstones, not entries, fill it. */
    if (t->live * 4 < t->capacity) capacity = t->capacity;
    struct table_slot *slots = calloc(capacity, sizeof *slots);
    if (!slots) return -1;
    for (size_t i = 0; i < t->capacity; i++) {
        struct table_slot *s = &t->slots[i];
        if (s->hash < 2) continue;
        size_t j = s->hash & (capacity - 1);
        while (slots[j].hash != SLOT_EMPTY) j = (j + 1) & (capacity - 1);
        slots[j] = *s;
    }
    free(t->slots);
    t->slots = slots;
    t->capacity = capacity;
    t->used = t->live;
    return 0;
}

static int put(struct table *t, uint64_t hash, const char *str_key, int64_t int_key, void *value)
{
    struct table_slot *s = find(t, hash, str_key, int_key);
    if (s) {
        s->str_key = str_key;
        s->value = value;
        return 0;
    }
    if ((t->used + 1) * 2 > t->capacity && grow(t) != 0) return -1;
    size_t mask = t->capacity - 1;
    size_t i = hash & mask;
    while (t->slots[i].hash >= 2) i = (i + 1) & mask;
    if (t->slots[i].hash == SLOT_EMPTY) t->used++;
    t->slots[i] = (struct table_slot){hash, str_key, int_key, value};
    t->live++;
    return 0;
}

static void del(struct table *t, uint64_t hash, const char *str_key, int64_t int_key)
{
    struct table_slot *s = find(t, hash, str_key, int_key);
    if (!s) return;
    s->hash = SLOT_DELETED;
    s->str_key = NULL;
    s->value = NULL;
    t->live--;
}

void table_free(struct table *t)
{
    free(t->slots);
    memset(t, 0, sizeof *t);
}

void *table_get_str(const struct table *t, const char *key)
{
    struct table_slot *s = find(t, hash_str(key), key, 0);
    return s ? s->value : NULL;
}

void *table_get_int(const struct table *t, int64_t key)
{
    struct table_slot *s = find(t, hash_int(key), NULL, key);
    return s ? s->value : NULL;
}

int table_put_str(struct table *t, const char *key, void *value) { return put(t, hash_str(key), key, 0, value); }
int table_put_int(struct table *t, int64_t key, void *value) { return put(t, hash_int(key), NULL, key, value); }
void table_del_str(struct table *t, const char *key) { del(t, hash_str(key), key, 0); }
void table_del_int(struct table *t, int64_t key) { del(t, hash_int(key), NULL, key); }

void *table_next(const struct table *t, size_t *cursor)
{
    while (*cursor < t->capacity) {
        const struct table_slot *s = &t->slots[(*cursor)++];
        if (s->hash >= 2) return s->value;
    }
    return NULL;
}
