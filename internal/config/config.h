/*
 * config — the agent's settings: one table of keys drives the YAML walk,
 * defaults, validation, `-check-config` printing and the README's table.
 *
 * Contract:
 *  - config_defaults() fills every field with its documented default.
 *  - config_load() reads a YAML file (libyaml) over those defaults. Every
 *    scalar first gets `${VAR}` / `${VAR:-default}` environment expansion,
 *    then is converted by the key's type. It fails — returning -1 and writing
 *    one message "FILE:LINE: key a.b.c: what is wrong" into `err` — on a
 *    missing/unreadable file, YAML syntax error, unknown key, wrong type
 *    (mapping where a scalar is expected…), unparseable size/duration/bool/
 *    int, a value outside its enum, an invalid regular expression, or values
 *    that contradict each other. It never exits and never crashes.
 *  - Sizes accept B/KiB/MiB/GiB (and KB/MB/GB as powers of 1000); durations
 *    ms/s/m/h (a bare 0 is allowed).
 *  - config_print() writes the effective configuration as YAML that
 *    config_load() accepts again; secrets are never in the struct (only the
 *    paths of files holding them), so nothing needs masking.
 *  - config_free() releases everything config_load()/config_defaults() made.
 *  - Aliases: collection.logPaths == collection.paths.
 */
#ifndef LOGLET_CONFIG_H
#define LOGLET_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct config_strlist {
    char **items;
    size_t count;
};

struct config_strmap {
    char **keys;
    char **values;
    size_t count;
};

/* A YAML subtree kept as written (tree.c), for a section another module
 * interprets (pipeline:). Scalars are ${VAR}-expanded; `line` is 1-based. */
enum config_tree_kind { CONFIG_TREE_SCALAR, CONFIG_TREE_LIST, CONFIG_TREE_MAP };
struct config_tree {
    enum config_tree_kind kind;
    size_t line;
    char *text; /* SCALAR only; "" for null */
    size_t count;
    char **keys; /* MAP only: item names, in file order */
    struct config_tree **items;
};

enum config_format { CONFIG_FORMAT_AUTO, CONFIG_FORMAT_CRI, CONFIG_FORMAT_DOCKER };
enum config_read_from { CONFIG_READ_FROM_END, CONFIG_READ_FROM_BEGINNING };
enum config_stdout_format { CONFIG_STDOUT_TEXT, CONFIG_STDOUT_JSON };
enum config_partial_ts { CONFIG_PARTIAL_TS_FIRST, CONFIG_PARTIAL_TS_LAST };
enum config_watcher { CONFIG_WATCHER_INOTIFY, CONFIG_WATCHER_POLL };
enum config_kubernetes { CONFIG_KUBERNETES_AUTO, CONFIG_KUBERNETES_ON, CONFIG_KUBERNETES_OFF };
enum config_archive_format { CONFIG_ARCHIVE_CRI, CONFIG_ARCHIVE_JSON };
enum config_archive_addressing { CONFIG_ADDRESSING_AUTO, CONFIG_ADDRESSING_PATH, CONFIG_ADDRESSING_VIRTUAL };

struct config {
    char *source_path; /* the file it was loaded from, or "" for defaults */

    struct {
        char *http_listen_address;
        int64_t http_listen_port;
        int64_t max_connections;
        int64_t request_timeout_ms;
        struct {
            char *socket;            /* "": no Unix socket */
            char *listen_address;    /* "": no TCP listener */
            int64_t listen_port;
            char *bearer_token_file; /* required with TCP */
            int64_t max_subscribers;
            int64_t subscriber_buffer_bytes;
            int64_t max_history_bytes;
            int64_t max_history_requests;
            int64_t max_history_files;
            int64_t client_timeout_ms;
        } api;
    } server;

    struct {
        struct config_strlist paths;
        enum config_format format;
        enum config_read_from read_from;
        char *positions_file;
        char *spool_dir; /* "": beside the positions file */
        int64_t positions_sync_period_ms;
        int64_t max_line_bytes;
        int64_t read_buffer_bytes;
        int64_t partial_flush_timeout_ms;
        enum config_partial_ts partial_timestamp;
        int64_t poll_interval_ms;
        enum config_watcher watcher;
        int64_t max_held_bytes;
        int64_t max_held_files;
        struct config_strlist exclude_namespaces;
        struct config_strlist exclude_pods;
        struct config_strlist exclude_containers;
        struct config_strlist symlink_roots; /* empty: derived from the globs */
        char *include_lines; /* PCRE2 pattern or "" */
        char *exclude_lines; /* PCRE2 pattern or "" */
    } collection;

    struct {
        int64_t max_bytes;
    } buffer;

    struct {
        struct {
            char *url;
            char *tenant_id;
            int64_t batch_bytes;
            int64_t batch_wait_ms;
            int64_t timeout_ms;
            int64_t min_backoff_ms;
            int64_t max_backoff_ms;
            int64_t max_retries;
            char *basic_auth_username;
            char *basic_auth_password_file;
            char *bearer_token_file;
            char *tls_ca_file;
            char *tls_cert_file;
            char *tls_key_file;
            bool tls_insecure_skip_verify;
            struct config_strmap headers;
            bool structured_metadata;
            int64_t unready_after_ms;
        } loki;
        struct {
            char *url; /* file:///dir or s3://bucket/prefix; "": no archive */
            char *endpoint; /* s3: "" is AWS's for the region */
            char *region;
            enum config_archive_addressing addressing;
            char *access_key_id_file;
            char *secret_access_key_file;
            char *session_token_file;
            char *tls_ca_file;
            int64_t flush_interval_ms;
            int64_t max_object_bytes;
            enum config_archive_format format;
            char *key_format;
            int64_t multipart_threshold;
            char *spool_dir; /* "": archive-spool/ beside the positions file */
            int64_t spool_max_bytes;
            int64_t max_open_objects;
            int64_t max_sealed_objects;
            int64_t gzip_level;
            int64_t timeout_ms;
            int64_t min_backoff_ms;
            int64_t max_backoff_ms;
        } archive;
        struct {
            enum config_stdout_format format;
        } stdout_;
        int64_t shutdown_grace_ms;
    } output;

    struct {
        struct config_strmap static_labels;
        bool stream;
        int64_t max_pipeline_streams;
    } labels;

    /* pipeline: match blocks and their stages, compiled by internal/pipeline;
     * NULL when not set. */
    struct config_tree *pipeline;

    struct {
        enum config_kubernetes enabled;
        char *kubeconfig;          /* "" : $KUBECONFIG, then ~/.kube/config */
        char *service_account_dir; /* in-cluster token and ca.crt */
        char *node_name;           /* "" : $NODE_NAME */
        /* Label copies, each "key" or "key=name" (a {from, to} item). */
        struct config_strlist pod_labels;
        struct config_strlist namespace_labels;
        bool namespaces; /* watch namespaces (implied by namespace_labels) */
        bool workload_labels;
        bool structured_metadata;
        int64_t wait_for_metadata_ms;
    } kubernetes;

    struct {
        char *level;  /* debug | info | warn | error */
        char *format; /* logfmt | json */
    } log;
};

void config_defaults(struct config *cfg);
/* Same as config_defaults() but reports failure (only allocation can fail):
 * returns -1 with "out of memory" in `err`; `cfg` can then still be freed. */
int config_init(struct config *cfg, char *err, size_t errlen);
int config_load(struct config *cfg, const char *path, char *err, size_t errlen);
void config_print(const struct config *cfg, FILE *out);
void config_free(struct config *cfg);

/* Parsers shared with tests (and with anything else reading human units). */
int config_parse_size(const char *text, int64_t *out);
int config_parse_duration_ms(const char *text, int64_t *out);
/* Expands ${VAR} and ${VAR:-default}; returns a malloc'd string or NULL with
 * `err` set (unterminated "${", allocation failure). "$$" is a literal "$". */
char *config_expand_env(const char *text, char *err, size_t errlen);

struct config_tree *config_tree_new(enum config_tree_kind kind, size_t line);
/* Appends an item (and, to a map, its name); takes ownership of both on success. */
int config_tree_push(struct config_tree *t, char *key, struct config_tree *item);
struct config_tree *config_tree_dup(const struct config_tree *src); /* NULL on OOM (or NULL src) */
void config_tree_free(struct config_tree *t);
const struct config_tree *config_tree_get(const struct config_tree *map, const char *key);
void config_tree_print(const struct config_tree *t, FILE *out);

/* Prints the table of settings as Markdown (used to keep README in sync). */
void config_print_reference(FILE *out);

#endif
