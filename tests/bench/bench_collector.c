/*
 * Collector + parser into a null output: how fast loglet turns files into
 * records, and what one more tailed file costs in memory.
 *
 *   build/tests/bench_collector [MB total, default 1024] [files, default 100]
 *
 * The corpus is a kubelet tree of 200-byte CRI lines on tmpfs (/dev/shm), so
 * the disk is not what is measured; it is removed afterwards. A consumer
 * thread plays the output: it takes chunks from the ring, counts records,
 * acknowledges and releases them. Prints MB/s, lines/s, CPU seconds per GB,
 * peak RSS, and bytes of memory per tailed file (2,000 idle files vs none).
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "collector/collector.h"
#include "config/config.h"
#include "ring/ring.h"
#include "source/source.h"

#define LINE_BYTES 200

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

static long status_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = 0;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0) v = atol(line + n + 1);
    if (f) fclose(f);
    return v;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_collector: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Builds root/{containers,pods}: `files` containers with `lines_each` lines. */
static void make_tree(const char *root, int files, long lines_each)
{
    char path[512], link[600], target[600];
    snprintf(path, sizeof path, "%s/containers", root);
    if (mkdir(path, 0755) != 0) die(path);
    snprintf(path, sizeof path, "%s/pods", root);
    if (mkdir(path, 0755) != 0) die(path);
    /* One block of lines, written repeatedly: "<ts> stdout F <content>\n", 200 bytes. */
    static char block[LINE_BYTES * 1000];
    const char *prefix = "2026-11-22T10:00:00.123456789Z stdout F ";
    size_t plen = strlen(prefix);
    for (int i = 0; i < 1000; i++) {
        char *l = block + i * LINE_BYTES;
        memcpy(l, prefix, plen);
        int n = snprintf(l + plen, LINE_BYTES - plen, "GET /api/v1/items/%d?session=abcdef0123456789 200 ", i);
        memset(l + plen + n, 'x', LINE_BYTES - plen - (size_t)n - 1);
        l[LINE_BYTES - 1] = '\n';
    }
    for (int f = 0; f < files; f++) {
        snprintf(path, sizeof path, "%s/pods/bench_pod-%d_0000-%04d/app", root, f, f);
        char dir[512];
        snprintf(dir, sizeof dir, "%s/pods/bench_pod-%d_0000-%04d", root, f, f);
        if (mkdir(dir, 0755) != 0 || mkdir(path, 0755) != 0) die(path);
        snprintf(target, sizeof target, "%s/0.log", path);
        int fd = open(target, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) die(target);
        for (long done = 0; done < lines_each;) {
            long n = lines_each - done < 1000 ? lines_each - done : 1000;
            if (write(fd, block, (size_t)n * LINE_BYTES) != n * LINE_BYTES) die("write");
            done += n;
        }
        close(fd);
        snprintf(link, sizeof link, "%s/containers/pod-%d_bench_app-%064d.log", root, f, f);
        if (symlink(target, link) != 0) die(link);
    }
}

struct consumer {
    struct ring *ring;
    atomic_long records;
    long target;
};

static void *consume(void *arg)
{
    struct consumer *c = arg;
    for (;;) {
        size_t size;
        bool closed;
        const struct source_chunk *chunk = ring_peek(c->ring, &size, 200, &closed);
        if (!chunk) {
            if (closed) return NULL;
            continue;
        }
        atomic_fetch_add(&c->records, chunk->records);
        atomic_store(&chunk->source->acked_offset, chunk->end_offset);
        source_unref(chunk->source);
        ring_release(c->ring);
    }
}

static struct collector *start(struct config *cfg, struct ring *ring, const char *root)
{
    static char glob[600], positions[600];
    snprintf(glob, sizeof glob, "%s/containers/*.log", root);
    snprintf(positions, sizeof positions, "%s/positions.yaml", root);
    free(cfg->collection.paths.items[0]);
    cfg->collection.paths.items[0] = strdup(glob);
    free(cfg->collection.positions_file);
    cfg->collection.positions_file = strdup(positions);
    cfg->collection.read_from = CONFIG_READ_FROM_BEGINNING;
    char err[512];
    struct collector *col = collector_create(cfg, ring, err, sizeof err);
    if (!col || collector_start(col, err, sizeof err) != 0) {
        fprintf(stderr, "bench_collector: %s\n", err);
        exit(1);
    }
    return col;
}

static void remove_tree(const char *root)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "bench_collector: could not remove %s\n", root);
}

/* Memory that `files` idle tailed files add, by the allocator's own count. */
static long bytes_per_file(int files)
{
    char root[] = "/dev/shm/loglet-bench-mem-XXXXXX";
    if (!mkdtemp(root)) die("mkdtemp");
    make_tree(root, files, 1);
    struct config cfg;
    config_defaults(&cfg);
    struct ring *ring = ring_create(16 << 20);
    struct consumer cons = {.ring = ring};
    pthread_t t;
    pthread_create(&t, NULL, consume, &cons);
    malloc_trim(0);
    size_t before = mallinfo2().uordblks;
    struct collector *col = start(&cfg, ring, root);
    while (atomic_load(&cons.records) < files) usleep(1000);
    size_t after = mallinfo2().uordblks;
    collector_stop(col);
    ring_close(ring);
    pthread_join(t, NULL);
    collector_destroy(col);
    ring_destroy(ring);
    config_free(&cfg);
    remove_tree(root);
    return (long)(after - before);
}

int main(int argc, char **argv)
{
    long total_mb = argc > 1 ? atol(argv[1]) : 1024;
    int files = argc > 2 ? atoi(argv[2]) : 100;
    long lines_each = total_mb * 1024 * 1024 / LINE_BYTES / files;
    long total_lines = lines_each * files;

    char root[] = "/dev/shm/loglet-bench-XXXXXX";
    if (!mkdtemp(root)) die("mkdtemp");
    printf("corpus: %d files x %ld lines of %d bytes = %.0f MB on %s\n", files, lines_each, LINE_BYTES,
           (double)total_lines * LINE_BYTES / 1e6, root);
    make_tree(root, files, lines_each);

    struct config cfg;
    config_defaults(&cfg);
    struct ring *ring = ring_create((size_t)cfg.buffer.max_bytes);
    struct consumer cons = {.ring = ring, .target = total_lines};
    pthread_t t;
    pthread_create(&t, NULL, consume, &cons);
    double cpu0 = cpu_s(), t0 = now_s();
    struct collector *col = start(&cfg, ring, root);
    while (atomic_load(&cons.records) < total_lines) usleep(1000);
    double wall = now_s() - t0, cpu = cpu_s() - cpu0;
    collector_stop(col);
    ring_close(ring);
    pthread_join(t, NULL);
    collector_destroy(col);
    ring_destroy(ring);
    config_free(&cfg);
    remove_tree(root);

    double mb = (double)total_lines * LINE_BYTES / 1e6;
    printf("collector+parser -> null output (%d files):\n", files);
    printf("  %.0f MB/s  %.2f M lines/s  wall %.2f s\n", mb / wall, (double)total_lines / wall / 1e6, wall);
    printf("  CPU %.2f s (both threads) = %.2f CPU-seconds per GB, %.0f MB per CPU-second\n", cpu, cpu / (mb / 1000),
           mb / cpu);
    printf("  peak RSS %ld KiB\n", status_kib("VmHWM:"));
    long b100 = bytes_per_file(100), b2000 = bytes_per_file(2000);
    printf("memory per tailed file: %ld bytes (100 files: %ld KiB, 2000 files: %ld KiB of heap)\n",
           (b2000 - b100) / 1900, b100 / 1024, b2000 / 1024);
    return 0;
}
