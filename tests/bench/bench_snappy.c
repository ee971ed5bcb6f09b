/*
 * Snappy alone on the benchmark's data: the ceiling for an agent that must
 * compress every byte it ships. `bench_snappy FILE...` compresses each file
 * in 1 MiB blocks and prints MB/s and the ratio.
 */
#include <fcntl.h>
#include <snappy-c.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    size_t block = 1 << 20, out_cap = snappy_max_compressed_length(block);
    char *in = malloc(block), *out = malloc(out_cap);
    double seconds = 0, bytes = 0, compressed = 0;
    for (int i = 1; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY);
        if (fd < 0) {
            perror(argv[i]);
            return 1;
        }
        ssize_t n;
        while ((n = read(fd, in, block)) > 0) {
            struct timespec a, b;
            size_t out_len = out_cap;
            clock_gettime(CLOCK_MONOTONIC, &a);
            snappy_compress(in, (size_t)n, out, &out_len);
            clock_gettime(CLOCK_MONOTONIC, &b);
            seconds += (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
            bytes += (double)n;
            compressed += (double)out_len;
        }
        close(fd);
    }
    printf("snappy alone: %.0f MB/s on one core (%.0f MB -> %.0f MB, ratio %.2f)\n", bytes / seconds / 1e6, bytes / 1e6,
           compressed / 1e6, bytes / compressed);
    free(in);
    free(out);
    return 0;
}
