/* libFuzzer: the positions reader must survive any file (a crash mid-write,
 * a disk error, a human edit) and what it accepts must write and read back
 * the same. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "collector/positions.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz", MFD_CLOEXEC);
    if (fd < 0) return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64], err[1024];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    struct positions ps;
    if (positions_read(path, &ps, err, sizeof err) == 0) {
        char tmpl[] = "/tmp/fuzz-positions-XXXXXX";
        char *dir = mkdtemp(tmpl);
        if (dir) {
            char file[128];
            snprintf(file, sizeof file, "%s/positions.yaml", dir);
            struct positions back;
            if (positions_write(file, &ps, err, sizeof err) == 0 && positions_read(file, &back, err, sizeof err) == 0) {
                if (back.count != ps.count) abort();
                for (size_t i = 0; i < ps.count; i++)
                    if (back.items[i].offset != ps.items[i].offset || back.items[i].ino != ps.items[i].ino ||
                        strcmp(back.items[i].path, ps.items[i].path) != 0)
                        abort();
                positions_free(&back);
            }
            unlink(file);
            rmdir(dir);
        }
        positions_free(&ps);
    }
    close(fd);
    return 0;
}
