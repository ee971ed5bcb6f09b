/* libFuzzer: the YAML config loader must reject or accept any bytes without
 * crashing or leaking, and what it accepts must print and load again. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config/config.h"

/* The loader reads a path: hand it an in-memory file. */
static int write_memfd(const uint8_t *data, size_t size, char *path, size_t len)
{
    int fd = memfd_create("fuzz", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return -1;
    }
    snprintf(path, len, "/proc/self/fd/%d", fd);
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[1024];
    int fd = write_memfd(data, size, path, sizeof path);
    if (fd < 0) return 0;
    struct config cfg;
    config_defaults(&cfg);
    if (config_load(&cfg, path, err, sizeof err) == 0) {
        /* Round trip: the effective config must load again. */
        char *text = NULL;
        size_t text_len = 0;
        FILE *out = open_memstream(&text, &text_len);
        if (out) {
            config_print(&cfg, out);
            fclose(out);
            int fd2 = write_memfd((const uint8_t *)text, text_len, path, sizeof path);
            if (fd2 >= 0) {
                struct config again;
                config_defaults(&again);
                if (config_load(&again, path, err, sizeof err) != 0) {
                    fprintf(stderr, "printed config does not load again: %s\n%s", err, text);
                    abort();
                }
                config_free(&again);
                close(fd2);
            }
            free(text);
        }
    }
    config_free(&cfg);
    close(fd);
    return 0;
}
