/*
 * fuzz_http — libFuzzer harness for httpd_parse_request().
 *
 * The input is copied into an exact-size heap block so AddressSanitizer
 * catches any read past len. Beyond "no crash", it checks what the parser
 * promises: an OK head is NUL-free, within the window and re-parses the same
 * on its own; the outputs are always terminated and in range.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "httpd/httpd.h"

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

static void check_ok(const char *buf, const struct httpd_request *req)
{
    CHECK(req->head_len >= 4 && req->head_len <= HTTPD_MAX_REQUEST);
    CHECK(buf[req->head_len - 1] == '\n');
    CHECK(memchr(buf, '\0', req->head_len) == NULL);
    size_t mlen = strnlen(req->method, sizeof req->method);
    CHECK(mlen >= 1 && mlen < sizeof req->method);
    for (size_t i = 0; i < mlen; i++) CHECK(req->method[i] >= 'A' && req->method[i] <= 'Z');
    size_t plen = strnlen(req->path, sizeof req->path);
    CHECK(plen >= 1 && plen < sizeof req->path && req->path[0] == '/');
    for (size_t i = 0; i < plen; i++)
        CHECK((unsigned char)req->path[i] > 0x20 && (unsigned char)req->path[i] < 0x7f && req->path[i] != '?');
    CHECK(req->version_minor == 0 || req->version_minor == 1);
    CHECK(req->content_length >= -1);

    /* The head alone parses to the same request. */
    char *head = malloc(req->head_len);
    CHECK(head != NULL);
    memcpy(head, buf, req->head_len);
    struct httpd_request again;
    CHECK(httpd_parse_request(head, req->head_len, &again) == HTTPD_PARSE_OK);
    CHECK(again.head_len == req->head_len && again.content_length == req->content_length);
    CHECK(strcmp(again.method, req->method) == 0 && strcmp(again.path, req->path) == 0);
    free(head);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (buf == NULL) return 0;
    if (size > 0) memcpy(buf, data, size);
    struct httpd_request req;
    enum httpd_parse_status st = httpd_parse_request(buf, size, &req);
    switch (st) {
    case HTTPD_PARSE_OK: check_ok(buf, &req); break;
    case HTTPD_PARSE_INCOMPLETE: CHECK(size < HTTPD_MAX_REQUEST); break;
    case HTTPD_PARSE_TOO_LARGE: CHECK(size >= HTTPD_MAX_REQUEST); break;
    case HTTPD_PARSE_BAD: break;
    default: CHECK(0);
    }
    free(buf);
    return 0;
}
