/*
 * A Loki push receiver that only counts, for the end-to-end benchmark: it
 * must cost far less than the agent, so that the agent is what is measured.
 *
 *   build/tests/bench_count_receiver PORT_FILE
 *
 * Listens on 127.0.0.1 (an ephemeral port, written to PORT_FILE), serves
 * each keep-alive connection on its own thread (the agent uses one), snappy-
 * decompresses each body and counts entries and line bytes by walking the
 * protobuf wire format, answers 204. GET /stats answers
 * {"requests":…,"entries":…,"line_bytes":…,"compressed_bytes":…}.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <netinet/in.h>
#include <signal.h>
#include <snappy-c.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* Per-connection threads add to these. */
static _Atomic unsigned long long requests, entries, line_bytes, compressed_bytes;

static int varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return 0;
    }
    return -1;
}

/* Walks one message; for field `want` (length-delimited) calls back. */
static int walk(const uint8_t *p, const uint8_t *end, int depth)
{
    while (p < end) {
        uint64_t key, len;
        if (varint(&p, end, &key)) return -1;
        unsigned field = (unsigned)(key >> 3), type = key & 7;
        if (type == 0) {
            if (varint(&p, end, &len)) return -1;
        } else if (type == 2) {
            if (varint(&p, end, &len) || len > (uint64_t)(end - p)) return -1;
            if (depth == 0 && field == 1) { /* StreamAdapter */
                if (walk(p, p + len, 1)) return -1;
            } else if (depth == 1 && field == 2) { /* EntryAdapter */
                entries++;
                if (walk(p, p + len, 2)) return -1;
            } else if (depth == 2 && field == 2) { /* line */
                line_bytes += len;
            }
            p += len;
        } else if (type == 1) {
            p += 8;
        } else if (type == 5) {
            p += 4;
        } else {
            return -1;
        }
    }
    return 0;
}

static int serve(int fd, char *buf, size_t cap, char *raw, size_t raw_cap)
{
    size_t have = 0;
    for (;;) {
        char *head_end;
        while (!(head_end = memmem(buf, have, "\r\n\r\n", 4))) {
            if (have == cap) return -1;
            ssize_t n = read(fd, buf + have, cap - have);
            if (n <= 0) return -1;
            have += (size_t)n;
        }
        size_t head = (size_t)(head_end - buf) + 4;
        size_t body = 0;
        for (char *h = buf; h < head_end; h = strstr(h, "\r\n") + 2)
            if (strncasecmp(h, "Content-Length:", 15) == 0) body = strtoul(h + 15, NULL, 10);
        if (head + body > cap) return -1;
        while (have < head + body) {
            ssize_t n = read(fd, buf + have, head + body - have);
            if (n <= 0) return -1;
            have += (size_t)n;
        }
        char reply[256];
        int rlen;
        if (strncmp(buf, "GET /stats", 10) == 0) {
            char json[200];
            int jl = snprintf(json, sizeof json,
                              "{\"requests\":%llu,\"entries\":%llu,\"line_bytes\":%llu,\"compressed_bytes\":%llu}",
                              requests, entries, line_bytes, compressed_bytes);
            rlen = snprintf(reply, sizeof reply, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", jl, json);
        } else {
            size_t raw_len = raw_cap;
            int bad = snappy_uncompress(buf + head, body, raw, &raw_len) != SNAPPY_OK ||
                      walk((const uint8_t *)raw, (const uint8_t *)raw + raw_len, 0) != 0;
            requests++;
            compressed_bytes += body;
            rlen = snprintf(reply, sizeof reply, bad ? "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
                                                     : "HTTP/1.1 204 No Content\r\n\r\n");
        }
        if (write(fd, reply, (size_t)rlen) != rlen) return -1;
        memmove(buf, buf + head + body, have - head - body);
        have -= head + body;
    }
}

static void *connection(void *arg)
{
    int fd = (int)(intptr_t)arg;
    size_t cap = 32 << 20, raw_cap = 128 << 20; /* untouched pages cost nothing */
    char *buf = malloc(cap), *raw = malloc(raw_cap);
    if (buf && raw) serve(fd, buf, cap, raw, raw_cap);
    free(buf);
    free(raw);
    close(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof addr;
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) || listen(ls, 16) ||
        getsockname(ls, (struct sockaddr *)&addr, &alen)) {
        perror("bench_count_receiver");
        return 1;
    }
    FILE *pf = argc > 1 ? fopen(argv[1], "w") : stdout;
    fprintf(pf, "%d\n", ntohs(addr.sin_port));
    if (pf != stdout) fclose(pf);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) continue;
        pthread_t t;
        if (pthread_create(&t, NULL, connection, (void *)(intptr_t)fd) != 0) {
            close(fd);
            continue;
        }
        pthread_detach(t);
    }
}
