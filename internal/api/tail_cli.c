/*
 * tail_cli — `loglet tail` (see tail_cli.h).
 */
#include "api/tail_cli.h"

#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "api/request.h"

#define DEFAULT_SOCKET "/run/loglet/api.sock"

struct tail_opts {
    const char *socket, *address, *token_file, *output, *color;
    /* query parameter name -> value, in the order given */
    const char *names[16];
    const char *values[16];
    int n;
    bool follow, all_namespaces;
    const char *pod_query; /* the argument, as sent */
    char pod_substring[512];
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: loglet tail [POD] [flags]\n"
            "\n"
            "Prints the logs of the containers on this node from its files (current, rotated and\n"
            "gzipped), merged in time order across pods; with -f, goes on with new lines.\n"
            "Flags follow stern's and kubectl's: the pod is the argument, as with stern\n"
            "(-p is kubectl's --previous; earlier files are always read here).\n"
            "\n"
            "  POD, --pod GLOB          pods (globs, comma-separated); a plain word as POD matches pods\n"
            "                           containing it, as stern's query (web: *web*)\n"
            "  -n, --namespace GLOB     namespaces\n"
            "  -c, --container GLOB     containers\n"
            "      --exclude-pod GLOB   pods to leave out\n"
            "  -E, --exclude-container GLOB\n"
            "      --job NAME           a Job's pods (needs Kubernetes metadata)\n"
            "  -g, -i, --grep, --include REGEX  only lines matching this PCRE2 pattern\n"
            "      --stream stdout|stderr\n"
            "  -s, --since DURATION|TIME  e.g. 10m or 2026-01-02T15:04:05Z (also --since-time)\n"
            "      --until DURATION|TIME\n"
            "      --tail N             the last N lines of each container (-1: all, the default)\n"
            "      --max-lines N        stop after N lines in total\n"
            "  -f, --follow             go on with new lines (across rotations and restarts); --no-follow\n"
            "  -t, --timestamps, -A, --all-namespaces  accepted (the time is always shown; all\n"
            "                           namespaces are the default)\n"
            "  -o, --output text|json   text: TIME namespace/pod/container LINE; json: the API's NDJSON\n"
            "      --color auto|always|never\n"
            "      --socket PATH        the API's Unix socket (default %s)\n"
            "      --address HOST:PORT  the API on TCP instead (needs --token-file)\n"
            "      --token-file FILE    bearer token for --address\n",
            DEFAULT_SOCKET);
}

static int add_param(struct tail_opts *o, const char *name, const char *value)
{
    for (int i = 0; i < o->n; i++)
        if (strcmp(o->names[i], name) == 0) {
            o->values[i] = value; /* the last one given wins, as with kubectl */
            return 0;
        }
    if (o->n == 16) return -1;
    o->names[o->n] = name;
    o->values[o->n++] = value;
    return 0;
}

struct flag {
    const char *s, *l, *param; /* short, long, query parameter (NULL: handled below) */
};

/* Short flags are stern's (and kubectl's where they agree): -n, -c, -E,
 * -i, -s, -f, -o. No -p: kubectl's -p is --previous, so a user's habit
 * would silently select pods named like a flag's value. */
static const struct flag flags[] = {
    {"-n", "--namespace", "namespace"}, {NULL, "--pod", "pod"},       {"-c", "--container", "container"},
    {NULL, "--exclude-pod", "exclude_pod"}, {"-E", "--exclude-container", "exclude_container"},
    {NULL, "--job", "job"},             {"-g", "--grep", "grep"},     {"-i", "--include", "grep"},
    {NULL, "--stream", "stream"},
    {"-s", "--since", "since"},         {NULL, "--until", "until"},   {NULL, "--tail", "tail_lines"},
    {NULL, "--max-lines", "max_lines"}, {"-o", "--output", NULL},     {NULL, "--color", NULL},
    {NULL, "--since-time", "since"},
    {NULL, "--socket", NULL},           {NULL, "--address", NULL},    {NULL, "--token-file", NULL},
};

static int parse(int argc, char **argv, struct tail_opts *o)
{
    for (int i = 1; i < argc; i++) {
        char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            return 1;
        }
        if (strcmp(arg, "-f") == 0 || strcmp(arg, "--follow") == 0 || strcmp(arg, "--follow=true") == 0) {
            o->follow = true;
            continue;
        }
        if (strcmp(arg, "--follow=false") == 0 || strcmp(arg, "--no-follow") == 0) {
            o->follow = false;
            continue;
        }
        /* stern's -t prefixes the time, which the text output always does;
         * -A: every namespace, which is the default here. */
        if (strcmp(arg, "-t") == 0 || strcmp(arg, "--timestamps") == 0 || strcmp(arg, "--timestamps=true") == 0)
            continue;
        if (strcmp(arg, "-A") == 0 || strcmp(arg, "--all-namespaces") == 0 ||
            strcmp(arg, "--all-namespaces=true") == 0) {
            o->all_namespaces = true;
            continue;
        }
        if (strcmp(arg, "-e") == 0 || (strncmp(arg, "--exclude", 9) == 0 && (arg[9] == '\0' || arg[9] == '='))) {
            fprintf(stderr, "loglet tail: %s (stern's line exclusion) is not supported: select lines with -i/--grep "
                            "and a PCRE2 pattern, e.g. -i '^(?!.*health)'\n", arg);
            return -1;
        }
        if (strcmp(arg, "-l") == 0 || strncmp(arg, "--selector", 10) == 0 || strncmp(arg, "--limit-bytes", 13) == 0 ||
            strncmp(arg, "--all-containers", 16) == 0 || strncmp(arg, "--prefix", 8) == 0) {
            fprintf(stderr,
                    "loglet tail: %s is not supported here: select pods by name (the argument or --pod, globs), "
                    "containers with -c (every container is shown by default), see loglet tail --help\n",
                    arg);
            return -1;
        }
        if (strcmp(arg, "-p") == 0 || strncmp(arg, "--previous", 10) == 0) {
            fprintf(stderr,
                    "loglet tail: %s is kubectl's --previous: earlier files (restarts, rotations, .gz) are always "
                    "read here; give the pod as the argument (loglet tail web-*) or with --pod\n",
                    arg);
            return -1;
        }
        if (arg[0] != '-') {
            /* stern's pod query: the one argument that is not a flag */
            bool given = false;
            for (int k = 0; k < o->n; k++) given |= strcmp(o->names[k], "pod") == 0;
            if (given) {
                fprintf(stderr, "loglet tail: more than one pod given ('%s'): use a glob or a comma-separated list\n",
                        arg);
                return -1;
            }
            /* A plain word matches pods containing it, as stern's query
             * does (`loglet tail web` finds web-7d9f-abc); a glob (with
             * * ? [ or a comma list) is taken as it is. Not a regex. */
            if (!strpbrk(arg, "*?[,")) {
                if (snprintf(o->pod_substring, sizeof o->pod_substring, "*%s*", arg) >=
                    (int)sizeof o->pod_substring) {
                    fprintf(stderr, "loglet tail: pod query too long: %s\n", arg);
                    return -1;
                }
                arg = o->pod_substring;
            }
            o->pod_query = arg;
            if (add_param(o, "pod", arg) != 0) return -1;
            continue;
        }
        const struct flag *f = NULL;
        const char *value = NULL;
        for (size_t k = 0; k < sizeof flags / sizeof flags[0] && !f; k++) {
            size_t ll = strlen(flags[k].l);
            if ((flags[k].s && strcmp(arg, flags[k].s) == 0) || strcmp(arg, flags[k].l) == 0) f = &flags[k];
            else if (strncmp(arg, flags[k].l, ll) == 0 && arg[ll] == '=') f = &flags[k], value = arg + ll + 1;
            else if (flags[k].s && strncmp(arg, flags[k].s, 2) == 0 && arg[2] != '\0' && arg[1] != '-')
                f = &flags[k], value = arg[2] == '=' ? arg + 3 : arg + 2;
        }
        if (!f) {
            fprintf(stderr, "loglet tail: unknown flag %s\n", arg);
            usage(stderr);
            return -1;
        }
        if (!value) {
            if (++i >= argc) {
                fprintf(stderr, "loglet tail: %s needs a value\n", f->l);
                return -1;
            }
            value = argv[i];
        }
        if (f->param) {
            if (add_param(o, f->param, value) != 0) return -1;
        } else if (strcmp(f->l, "--output") == 0) {
            if (strcmp(value, "text") != 0 && strcmp(value, "json") != 0) {
                fprintf(stderr, "loglet tail: -o must be text or json, not '%s'\n", value);
                return -1;
            }
            o->output = value;
        } else if (strcmp(f->l, "--color") == 0) {
            if (strcmp(value, "auto") != 0 && strcmp(value, "always") != 0 && strcmp(value, "never") != 0) {
                fprintf(stderr, "loglet tail: --color must be auto, always or never, not '%s'\n", value);
                return -1;
            }
            o->color = value;
        } else if (strcmp(f->l, "--socket") == 0) {
            o->socket = value;
        } else if (strcmp(f->l, "--address") == 0) {
            o->address = value;
        } else {
            o->token_file = value;
        }
    }
    if (o->all_namespaces)
        for (int k = 0; k < o->n; k++)
            if (strcmp(o->names[k], "namespace") == 0) {
                fprintf(stderr, "loglet tail: -A/--all-namespaces and -n/--namespace contradict each other\n");
                return -1;
            }
    if (o->address && !o->token_file) {
        fprintf(stderr, "loglet tail: --address needs --token-file (the API on TCP requires a bearer token)\n");
        return -1;
    }
    return 0;
}

static int connect_to(const struct tail_opts *o, char *err, size_t errlen)
{
    if (!o->address) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(o->socket) >= sizeof sa.sun_path) {
            snprintf(err, errlen, "socket path too long: %s", o->socket);
            return -1;
        }
        strcpy(sa.sun_path, o->socket);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            snprintf(err, errlen, "cannot connect to %s: %s (is loglet running, with server.api.socket there?)",
                     o->socket, strerror(errno));
            if (fd >= 0) close(fd);
            return -1;
        }
        return fd;
    }
    char host[256];
    const char *colon = strrchr(o->address, ':');
    if (!colon || (size_t)(colon - o->address) >= sizeof host) {
        snprintf(err, errlen, "--address must be HOST:PORT, not '%s'", o->address);
        return -1;
    }
    memcpy(host, o->address, (size_t)(colon - o->address));
    host[colon - o->address] = '\0';
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') h[strlen(h) - 1] = '\0', h++;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(h, colon + 1, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", o->address, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) snprintf(err, errlen, "cannot connect to %s: %s", o->address, strerror(errno));
    return fd;
}

static void append_encoded(char *dst, size_t cap, size_t *len, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s && *len + 4 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-_.~*", c)) {
            dst[(*len)++] = (char)c;
        } else {
            dst[(*len)++] = '%';
            dst[(*len)++] = hex[c >> 4];
            dst[(*len)++] = hex[c & 15];
        }
    }
    dst[*len] = '\0';
}

/* A flat JSON object of strings and numbers, as the API writes them: the
 * string values we print, unescaped in place. */
struct obj {
    const char *log_line, *time, *ns, *pod, *container, *status, *message;
};

static char *json_string(char *p, char **out)
{
    /* p is after the opening quote; unescapes in place */
    char *w = p;
    *out = p;
    while (*p && *p != '"') {
        if (*p != '\\') {
            *w++ = *p++;
            continue;
        }
        p++;
        switch (*p) {
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = ' '; break; /* a carriage return would let a line overwrite the terminal */
        case 't': *w++ = '\t'; break;
        case 'u': {
            unsigned v = 0;
            for (int i = 1; i <= 4 && p[i]; i++) {
                char c = p[i];
                v = v * 16 + (unsigned)(c >= 'a' ? c - 'a' + 10 : c >= 'A' ? c - 'A' + 10 : c - '0');
            }
            *w++ = v < 0x20 ? ' ' : (char)v; /* the API escapes only control characters this way */
            p += 4;
            break;
        }
        case '\0': *w = '\0'; return p;
        default: *w++ = *p;
        }
        p++;
    }
    if (*p == '"') p++;
    *w = '\0';
    return p;
}

static int parse_obj(char *line, struct obj *o)
{
    memset(o, 0, sizeof *o);
    char *p = strchr(line, '{');
    if (!p) return -1;
    p++;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        if (*p == '}' || !*p) break;
        if (*p != '"') return -1;
        char *key;
        p = json_string(p + 1, &key);
        if (*p++ != ':') return -1;
        char *val = NULL;
        if (*p == '"') {
            p = json_string(p + 1, &val);
        } else {
            while (*p && *p != ',' && *p != '}') p++;
        }
        if (!val) continue;
        if (strcmp(key, "log_line") == 0) o->log_line = val;
        else if (strcmp(key, "time") == 0) o->time = val;
        else if (strcmp(key, "namespace") == 0) o->ns = val;
        else if (strcmp(key, "pod_name") == 0) o->pod = val;
        else if (strcmp(key, "container") == 0) o->container = val;
        else if (strcmp(key, "status") == 0) o->status = val;
        else if (strcmp(key, "message") == 0) o->message = val;
    }
    return 0;
}

/* stern colours each pod and each container by a hash of its name. */
static const char *const palette[] = {"\033[31m", "\033[32m", "\033[33m", "\033[34m", "\033[35m", "\033[36m",
                                      "\033[91m", "\033[92m", "\033[93m", "\033[94m", "\033[95m", "\033[96m"};

static const char *colour_of(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return palette[h % (sizeof palette / sizeof palette[0])];
}

/* Returns 1 for an error object, 0 otherwise. */
static int print_line(char *line, bool json, bool colour)
{
    if (json) {
        fputs(line, stdout);
        fputc('\n', stdout);
        struct obj ob;
        return parse_obj(line, &ob) == 0 && ob.status && strcmp(ob.status, "error") == 0;
    }
    struct obj ob;
    if (parse_obj(line, &ob) != 0) {
        fprintf(stderr, "loglet tail: unexpected response line: %s\n", line);
        return 1;
    }
    if (ob.status && strcmp(ob.status, "streaming") != 0) {
        if (strcmp(ob.status, "error") == 0) {
            fflush(stdout);
            fprintf(stderr, "loglet tail: %s\n", ob.message ? ob.message : "error");
            return 1;
        }
        /* completed: nothing selected is said, not left to an empty screen */
        if (ob.message && strncmp(ob.message, "0 lines from 0 containers", 25) == 0)
            fprintf(stderr, "loglet tail: no container on this node matches the selection\n");
        return 0;
    }
    if (colour)
        printf("%s %s%s/%s\033[0m/%s%s\033[0m %s\n", ob.time ? ob.time : "", colour_of(ob.pod ? ob.pod : ""),
               ob.ns ? ob.ns : "", ob.pod ? ob.pod : "", colour_of(ob.container ? ob.container : ""),
               ob.container ? ob.container : "", ob.log_line ? ob.log_line : "");
    else
        printf("%s %s/%s/%s %s\n", ob.time ? ob.time : "", ob.ns ? ob.ns : "", ob.pod ? ob.pod : "",
               ob.container ? ob.container : "", ob.log_line ? ob.log_line : "");
    return 0;
}

int api_tail_main(int argc, char **argv)
{
    struct tail_opts o = {.socket = DEFAULT_SOCKET, .output = "text", .color = "auto"};
    int rc = parse(argc, argv, &o);
    if (rc != 0) return rc < 0 ? 2 : 0;
    char err[1024];
    char token[4097] = "";
    if (o.token_file && api_token_load(o.token_file, token, sizeof token, err, sizeof err) != 0) {
        fprintf(stderr, "loglet tail: --token-file: %s\n", err);
        return 2;
    }
    char req[8192];
    size_t len = (size_t)snprintf(req, sizeof req, "GET /api/v1/logs?follow=%s", o.follow ? "true" : "false");
    for (int i = 0; i < o.n; i++) {
        len += (size_t)snprintf(req + len, sizeof req - len, "&%s=", o.names[i]);
        append_encoded(req, sizeof req - 1024, &len, o.values[i]);
    }
    int n = snprintf(req + len, sizeof req - len, " HTTP/1.1\r\nHost: loglet\r\n%s%s%sConnection: close\r\n\r\n",
                     token[0] ? "Authorization: Bearer " : "", token, token[0] ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof req - len) {
        fprintf(stderr, "loglet tail: the flags make a request too long\n");
        return 2;
    }
    len += (size_t)n;
    int fd = connect_to(&o, err, sizeof err);
    if (fd < 0) {
        fprintf(stderr, "loglet tail: %s\n", err);
        return 1;
    }
    for (size_t sent = 0; sent < len;) {
        ssize_t w = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            fprintf(stderr, "loglet tail: sending the request: %s\n", strerror(errno));
            close(fd);
            return 1;
        }
        sent += (size_t)w;
    }
    FILE *in = fdopen(fd, "r");
    if (!in) {
        close(fd);
        fprintf(stderr, "loglet tail: %s\n", strerror(errno));
        return 1;
    }
    bool json = strcmp(o.output, "json") == 0;
    bool colour = strcmp(o.color, "always") == 0 || (strcmp(o.color, "auto") == 0 && isatty(STDOUT_FILENO));
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int status = 0;
    bool in_head = true;
    rc = 0;
    while ((got = getline(&line, &cap, in)) >= 0) {
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = '\0';
        if (in_head) {
            if (status == 0 && sscanf(line, "HTTP/1.%*d %d", &status) != 1) {
                fprintf(stderr, "loglet tail: not an HTTP response from the API\n");
                rc = 1;
                break;
            }
            if (got == 0) in_head = false;
            continue;
        }
        if (got == 0) continue;
        if (print_line(line, json, colour)) rc = 1;
        if (o.follow) fflush(stdout);
    }
    if (status != 200) rc = 1;
    free(line);
    fclose(in);
    return rc;
}
