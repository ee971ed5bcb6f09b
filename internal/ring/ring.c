#include "ring.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* Every block starts with this header; sizes are multiples of 8 so the
 * space left at the end of the buffer is either 0 or can hold a header,
 * which is how the producer tells the consumer to wrap to offset 0. */
struct block_header {
    uint32_t len;  /* payload bytes */
    uint32_t kind; /* BLOCK_DATA or BLOCK_WRAP */
};

enum { BLOCK_DATA = 0x44415441, BLOCK_WRAP = 0x57524150 };

#define HEADER_SIZE ((size_t)sizeof(struct block_header))

struct ring {
    unsigned char *buf;
    size_t capacity;
    size_t head; /* next reservation starts here (producer) */
    size_t tail; /* oldest block starts here (consumer) */
    size_t used; /* bytes between tail and head, wrap padding included */
    size_t reserved_at; /* offset of the pending reservation */
    size_t peeked_len;  /* payload length of the block being consumed */
    bool closed;
    /* A producer that does not block waits on room_fd for want_room bytes. */
    int room_fd;
    size_t want_room;
    pthread_mutex_t lock;
    pthread_cond_t not_full;
    pthread_cond_t not_empty;
};

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

struct ring *ring_create(size_t capacity)
{
    capacity &= ~(size_t)7;
    if (capacity < 4096) return NULL;
    struct ring *ring = calloc(1, sizeof *ring);
    if (!ring) return NULL;
    ring->buf = malloc(capacity);
    if (!ring->buf) {
        free(ring);
        return NULL;
    }
    ring->capacity = capacity;
    ring->room_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ring->room_fd < 0) {
        free(ring->buf);
        free(ring);
        return NULL;
    }
    pthread_condattr_t attr;
    /* CLOCK_MONOTONIC so a wall-clock jump cannot stretch a timeout. */
    if (pthread_condattr_init(&attr) != 0 || pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
        pthread_mutex_init(&ring->lock, NULL) != 0 || pthread_cond_init(&ring->not_full, &attr) != 0 ||
        pthread_cond_init(&ring->not_empty, &attr) != 0) {
        close(ring->room_fd);
        free(ring->buf);
        free(ring);
        return NULL;
    }
    pthread_condattr_destroy(&attr);
    return ring;
}

void ring_destroy(struct ring *ring)
{
    if (!ring) return;
    pthread_mutex_destroy(&ring->lock);
    pthread_cond_destroy(&ring->not_full);
    pthread_cond_destroy(&ring->not_empty);
    close(ring->room_fd);
    free(ring->buf);
    free(ring);
}

size_t ring_max_block(const struct ring *ring) { return ring->capacity / 2 - HEADER_SIZE; }

size_t ring_max_block_for(size_t capacity) { return (capacity & ~(size_t)7) / 2 - HEADER_SIZE; }

static struct timespec deadline_after(int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* Returns the offset where `need` bytes fit contiguously, wrapping (and
 * accounting the padding as used) when only the front has room; or
 * SIZE_MAX when they do not fit now. Called with the lock held. */
static size_t find_room(struct ring *ring, size_t need)
{
    if (ring->used == 0) ring->head = ring->tail = 0;
    if (ring->used == ring->capacity) return SIZE_MAX;
    if (ring->head >= ring->tail) {
        size_t at_end = ring->capacity - ring->head;
        if (at_end >= need) return ring->head;
        if (ring->tail >= need) {
            struct block_header wrap = {0, BLOCK_WRAP};
            if (at_end >= HEADER_SIZE) memcpy(ring->buf + ring->head, &wrap, HEADER_SIZE);
            ring->used += at_end;
            ring->head = 0;
            return 0;
        }
        return SIZE_MAX;
    }
    return ring->tail - ring->head >= need ? ring->head : SIZE_MAX;
}

void *ring_reserve(struct ring *ring, size_t size, int timeout_ms)
{
    if (size > ring_max_block(ring)) return NULL;
    size_t need = HEADER_SIZE + align8(size);
    struct timespec deadline = deadline_after(timeout_ms);
    void *space = NULL;
    pthread_mutex_lock(&ring->lock);
    while (!ring->closed) {
        size_t at = find_room(ring, need);
        if (at != SIZE_MAX) {
            ring->reserved_at = at;
            space = ring->buf + at + HEADER_SIZE;
            break;
        }
        if (pthread_cond_timedwait(&ring->not_full, &ring->lock, &deadline) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&ring->lock);
    return space;
}

/* Called with the lock held. */
static bool room_for(const struct ring *ring, size_t need)
{
    if (ring->closed) return false;
    if (ring->used == 0) return true;
    if (ring->used == ring->capacity) return false;
    if (ring->head >= ring->tail) return ring->capacity - ring->head >= need || ring->tail >= need;
    return ring->tail - ring->head >= need;
}

bool ring_has_room(struct ring *ring, size_t size)
{
    if (size > ring_max_block(ring)) return false;
    size_t need = HEADER_SIZE + align8(size);
    pthread_mutex_lock(&ring->lock);
    bool room = room_for(ring, need);
    ring->want_room = room ? 0 : need;
    if (room) {
        uint64_t drained;
        if (read(ring->room_fd, &drained, sizeof drained) < 0) { /* EAGAIN: nothing was signalled */ }
    }
    pthread_mutex_unlock(&ring->lock);
    return room;
}

int ring_room_fd(const struct ring *ring) { return ring->room_fd; }

/* Called with the lock held, after the consumer freed space. */
static void signal_room(struct ring *ring)
{
    pthread_cond_signal(&ring->not_full);
    if (ring->want_room && room_for(ring, ring->want_room)) {
        ring->want_room = 0;
        uint64_t one = 1;
        if (write(ring->room_fd, &one, sizeof one) < 0) { /* EAGAIN: already signalled */ }
    }
}

void ring_commit(struct ring *ring, size_t used)
{
    if (used == 0) return;
    struct block_header header = {(uint32_t)used, BLOCK_DATA};
    pthread_mutex_lock(&ring->lock);
    memcpy(ring->buf + ring->reserved_at, &header, HEADER_SIZE);
    size_t total = HEADER_SIZE + align8(used);
    ring->head = ring->reserved_at + total;
    if (ring->head == ring->capacity) ring->head = 0;
    ring->used += total;
    pthread_cond_signal(&ring->not_empty);
    pthread_mutex_unlock(&ring->lock);
}

const void *ring_peek(struct ring *ring, size_t *size, int timeout_ms, bool *closed)
{
    struct timespec deadline = deadline_after(timeout_ms);
    const void *block = NULL;
    *closed = false;
    pthread_mutex_lock(&ring->lock);
    for (;;) {
        if (ring->used == 0) {
            if (ring->closed) {
                *closed = true;
                break;
            }
            if (pthread_cond_timedwait(&ring->not_empty, &ring->lock, &deadline) == ETIMEDOUT) break;
            continue;
        }
        size_t at_end = ring->capacity - ring->tail;
        struct block_header header;
        if (at_end >= HEADER_SIZE) memcpy(&header, ring->buf + ring->tail, HEADER_SIZE);
        if (at_end < HEADER_SIZE || header.kind == BLOCK_WRAP) {
            ring->used -= at_end;
            ring->tail = 0;
            signal_room(ring);
            continue;
        }
        ring->peeked_len = header.len;
        *size = header.len;
        block = ring->buf + ring->tail + HEADER_SIZE;
        break;
    }
    pthread_mutex_unlock(&ring->lock);
    return block;
}

void ring_release(struct ring *ring)
{
    pthread_mutex_lock(&ring->lock);
    size_t total = HEADER_SIZE + align8(ring->peeked_len);
    ring->tail += total;
    if (ring->tail == ring->capacity) ring->tail = 0;
    ring->used -= total;
    signal_room(ring);
    pthread_mutex_unlock(&ring->lock);
}

void ring_close(struct ring *ring)
{
    pthread_mutex_lock(&ring->lock);
    ring->closed = true;
    if (ring->want_room) {
        uint64_t one = 1;
        if (write(ring->room_fd, &one, sizeof one) < 0) { /* EAGAIN: already signalled */ }
    }
    pthread_cond_broadcast(&ring->not_full);
    pthread_cond_broadcast(&ring->not_empty);
    pthread_mutex_unlock(&ring->lock);
}

bool ring_is_closed(struct ring *ring)
{
    pthread_mutex_lock(&ring->lock);
    bool closed = ring->closed;
    pthread_mutex_unlock(&ring->lock);
    return closed;
}

size_t ring_used(struct ring *ring)
{
    pthread_mutex_lock(&ring->lock);
    size_t used = ring->used;
    pthread_mutex_unlock(&ring->lock);
    return used;
}

size_t ring_capacity(const struct ring *ring) { return ring->capacity; }
