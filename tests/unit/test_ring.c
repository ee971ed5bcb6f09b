/* ring: blocks in order, wrap-around, the capacity bound, timeouts and close. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <poll.h>

#include "ring/ring.h"

static void put_block(struct ring *r, size_t size, unsigned char fill)
{
    unsigned char *p = ring_reserve(r, size, 1000);
    assert_non_null(p);
    memset(p, fill, size);
    ring_commit(r, size);
}

static void expect_block(struct ring *r, size_t size, unsigned char fill)
{
    size_t got = 0;
    bool closed;
    const unsigned char *p = ring_peek(r, &got, 1000, &closed);
    assert_non_null(p);
    assert_int_equal(got, size);
    for (size_t i = 0; i < size; i++) assert_int_equal(p[i], fill);
    ring_release(r);
}

static void test_blocks_come_out_in_order(void **state)
{
    (void)state;
    struct ring *r = ring_create(4096);
    assert_non_null(r);
    put_block(r, 10, 1);
    put_block(r, 100, 2);
    put_block(r, 1, 3);
    expect_block(r, 10, 1);
    expect_block(r, 100, 2);
    expect_block(r, 1, 3);
    assert_int_equal(ring_used(r), 0);
    ring_destroy(r);
}

static void test_wraps_around_without_splitting_a_block(void **state)
{
    (void)state;
    struct ring *r = ring_create(4096);
    for (int round = 0; round < 100; round++) {
        put_block(r, 1500, (unsigned char)round);
        put_block(r, 900, (unsigned char)(round + 1));
        expect_block(r, 1500, (unsigned char)round);
        expect_block(r, 900, (unsigned char)(round + 1));
    }
    ring_destroy(r);
}

static void test_full_ring_times_out_instead_of_growing(void **state)
{
    (void)state;
    struct ring *r = ring_create(4096);
    assert_int_equal(ring_max_block(r), 2040);
    put_block(r, 2000, 1);
    put_block(r, 2000, 2);
    assert_true(ring_used(r) <= ring_capacity(r));
    assert_null(ring_reserve(r, 2000, 50)); /* no room: waits, then gives up */
    assert_null(ring_reserve(r, 3000, 0));  /* larger than any block can be */
    expect_block(r, 2000, 1);
    put_block(r, 2000, 3); /* room again */
    expect_block(r, 2000, 2);
    expect_block(r, 2000, 3);
    ring_destroy(r);
}

static void test_uncommitted_reservation_publishes_nothing(void **state)
{
    (void)state;
    struct ring *r = ring_create(4096);
    assert_non_null(ring_reserve(r, 100, 0));
    ring_commit(r, 0);
    size_t size;
    bool closed;
    assert_null(ring_peek(r, &size, 10, &closed));
    assert_false(closed);
    ring_destroy(r);
}

static void test_close_drains_then_reports_closed(void **state)
{
    (void)state;
    struct ring *r = ring_create(4096);
    put_block(r, 8, 7);
    ring_close(r);
    assert_null(ring_reserve(r, 8, 0));
    expect_block(r, 8, 7);
    size_t size;
    bool closed = false;
    assert_null(ring_peek(r, &size, 1000, &closed));
    assert_true(closed);
    ring_destroy(r);
}

static void test_rejects_tiny_capacity(void **state)
{
    (void)state;
    assert_null(ring_create(100));
}

/* A producer and a consumer thread: every byte arrives, in order, and the
 * ring never holds more than its capacity. */
#define STRESS_BLOCKS 20000

static bool readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

/* A producer that must not block asks for room, then sleeps on the room
 * descriptor; it must wake exactly when enough was freed, and not before. */
static void test_room_descriptor_wakes_when_enough_is_free(void **state)
{
    (void)state;
    struct ring *r = ring_create(4096);
    assert_non_null(r);
    int fd = ring_room_fd(r);
    assert_true(ring_has_room(r, 1000));
    assert_false(readable(fd));
    put_block(r, 1000, 'a');
    put_block(r, 1000, 'b');
    put_block(r, 1000, 'c');
    assert_false(ring_has_room(r, 2000)); /* arms the descriptor for 2000 bytes */
    assert_false(readable(fd));
    expect_block(r, 1000, 'a'); /* ~1 KiB free at the front, ~1 KiB at the end: not 2000 contiguous */
    assert_false(readable(fd));
    expect_block(r, 1000, 'b');
    assert_true(readable(fd));
    assert_true(ring_has_room(r, 2000)); /* and asking clears it */
    assert_false(readable(fd));
    assert_false(ring_has_room(r, ring_max_block(r) + 1));
    ring_close(r);
    assert_false(ring_has_room(r, 8));
    ring_destroy(r);
}

static void *producer(void *arg)
{
    struct ring *r = arg;
    for (uint32_t i = 0; i < STRESS_BLOCKS; i++) {
        size_t size = 8 + (i * 7919) % 1500;
        unsigned char *p;
        while (!(p = ring_reserve(r, size, 100))) {
        }
        memcpy(p, &i, sizeof i);
        for (size_t k = sizeof i; k < size; k++) p[k] = (unsigned char)(i + k);
        ring_commit(r, size);
    }
    ring_close(r);
    return NULL;
}

static void test_two_threads_deliver_everything_in_order(void **state)
{
    (void)state;
    struct ring *r = ring_create(8192);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, producer, r), 0);
    uint32_t expect = 0;
    for (;;) {
        size_t size;
        bool closed;
        const unsigned char *p = ring_peek(r, &size, 100, &closed);
        assert_true(ring_used(r) <= ring_capacity(r));
        if (!p) {
            if (closed) break;
            continue;
        }
        uint32_t i;
        memcpy(&i, p, sizeof i);
        assert_int_equal(i, expect);
        assert_int_equal(size, 8 + (i * 7919) % 1500);
        for (size_t k = sizeof i; k < size; k++) assert_int_equal(p[k], (unsigned char)(i + k));
        ring_release(r);
        expect++;
    }
    assert_int_equal(expect, STRESS_BLOCKS);
    pthread_join(t, NULL);
    ring_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocks_come_out_in_order),
        cmocka_unit_test(test_wraps_around_without_splitting_a_block),
        cmocka_unit_test(test_full_ring_times_out_instead_of_growing),
        cmocka_unit_test(test_uncommitted_reservation_publishes_nothing),
        cmocka_unit_test(test_close_drains_then_reports_closed),
        cmocka_unit_test(test_rejects_tiny_capacity),
        cmocka_unit_test(test_two_threads_deliver_everything_in_order),
        cmocka_unit_test(test_room_descriptor_wakes_when_enough_is_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
