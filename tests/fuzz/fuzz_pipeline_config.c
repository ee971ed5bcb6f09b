/* libFuzzer: any configuration through config_load and pipeline_create
 * (the pipeline section's tree walk, every stage's compile, regexes, globs,
 * sizes, durations). Rejected or accepted, never a crash or a leak; and
 * what is accepted prints (pipeline_print) as a pipeline that compiles
 * again to the same print. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config/config.h"
#include "pipeline/pipeline.h"

static int memfile(const void *data, size_t size, char *path, size_t len)
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

static char *printed(const struct pipeline *p)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (!out) abort();
    pipeline_print(p, out, "");
    fclose(out);
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[1024];
    int fd = memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    struct config cfg;
    config_defaults(&cfg);
    if (config_load(&cfg, path, err, sizeof err) == 0) {
        struct pipeline *p = pipeline_create(&cfg, err, sizeof err);
        if (p) {
            char *text = printed(p);
            int fd2 = memfile(text, strlen(text), path, sizeof path);
            struct config again;
            config_defaults(&again);
            struct pipeline *q = NULL;
            if (fd2 < 0 || config_load(&again, path, err, sizeof err) != 0 ||
                !(q = pipeline_create(&again, err, sizeof err))) {
                fprintf(stderr, "the printed pipeline does not compile again: %s\n%s", err, text);
                abort();
            }
            char *text2 = printed(q);
            if (strcmp(text, text2) != 0) {
                fprintf(stderr, "printed differently the second time:\n%s---\n%s", text, text2);
                abort();
            }
            free(text2);
            pipeline_destroy(q);
            config_free(&again);
            close(fd2);
            free(text);
            pipeline_destroy(p);
        }
    }
    config_free(&cfg);
    close(fd);
    return 0;
}
