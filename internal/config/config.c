/*
 * config — one table of keys (below, `keys[]`) drives everything: defaults,
 * the YAML walk, unknown-key and duplicate-key errors, value conversion and
 * range checks, `config_print` and `config_print_reference`. Adding a setting
 * is adding one row (plus the field in config.h).
 *
 * Loading is all-or-nothing: config_load() works on a deep copy of the
 * caller's struct and only replaces it when the whole file was accepted, so a
 * failed reload leaves the running configuration untouched.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "config.h"
#include "loki/loki.h"

#include <ctype.h>
#include <errno.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <yaml.h>

/* ------------------------------------------------------------------------ */
/* The table                                                                */

enum key_type {
    KEY_STRING,    /* char * */
    KEY_BOOL,      /* bool */
    KEY_INT,       /* int64_t, range-checked */
    KEY_SIZE,      /* int64_t bytes, "256KiB" */
    KEY_DURATION,  /* int64_t milliseconds, "1m30s" */
    KEY_ENUM,      /* a C enum, stored as int */
    KEY_ENUM_TEXT, /* char *, one of the allowed names (canonical spelling) */
    KEY_LIST,      /* struct config_strlist */
    KEY_MAP,       /* struct config_strmap */
    KEY_TREE,      /* struct config_tree *: a section another module interprets */
};

struct enum_value {
    const char *name;
    int value;
};

struct config_key;
/* A check of one key's final value; writes the reason (without the key). */
typedef int (*key_check_fn)(const struct config *cfg, const struct config_key *key, char *why, size_t whylen);

struct config_key {
    const char *path; /* dotted path in the YAML file */
    enum key_type type;
    size_t offset;                   /* into struct config */
    const char *def;                 /* default, written as in the file ("" = empty list/map) */
    const char *doc;                 /* one line for the reference table */
    int64_t min, max;                /* KEY_INT, KEY_SIZE, KEY_DURATION */
    const struct enum_value *values; /* KEY_ENUM, KEY_ENUM_TEXT; ends with a NULL name */
    const char *alias_of;            /* this row is another spelling of that key */
    key_check_fn check;              /* optional, run on the final value */
    bool renames;                    /* KEY_LIST: items may also be {from: key, to: name} */
};

/* offsetof plus a compile-time check that the field has the type the row says. */
#define FIELD(f, T) (offsetof(struct config, f) + 0 * sizeof(_Generic(((struct config *)0)->f, T: 1)))
#define ENUM_FIELD(f) \
    (offsetof(struct config, f) + 0 * sizeof(char[sizeof(((struct config *)0)->f) == sizeof(int) ? 1 : -1]))

#define K_STRING(P, F, D, H, ...) \
    { .path = P, .type = KEY_STRING, .offset = FIELD(F, char *), .def = D, .doc = H, __VA_ARGS__ }
#define K_BOOL(P, F, D, H) { .path = P, .type = KEY_BOOL, .offset = FIELD(F, bool), .def = D, .doc = H }
#define K_INT(P, F, D, LO, HI, H) \
    { .path = P, .type = KEY_INT, .offset = FIELD(F, int64_t), .def = D, .doc = H, .min = LO, .max = HI }
#define K_SIZE(P, F, D, LO, H) \
    { .path = P, .type = KEY_SIZE, .offset = FIELD(F, int64_t), .def = D, .doc = H, .min = LO, .max = INT64_MAX }
#define K_DURATION(P, F, D, LO, H)                                                                      \
    { .path = P, .type = KEY_DURATION, .offset = FIELD(F, int64_t), .def = D, .doc = H, .min = LO, \
      .max = INT64_MAX }
#define K_ENUM(P, F, D, V, H) { .path = P, .type = KEY_ENUM, .offset = ENUM_FIELD(F), .def = D, .doc = H, .values = V }
#define K_ENUM_TEXT(P, F, D, V, H) \
    { .path = P, .type = KEY_ENUM_TEXT, .offset = FIELD(F, char *), .def = D, .doc = H, .values = V }
#define K_LIST(P, F, D, H) \
    { .path = P, .type = KEY_LIST, .offset = FIELD(F, struct config_strlist), .def = D, .doc = H }
#define K_MAP(P, F, H, ...) \
    { .path = P, .type = KEY_MAP, .offset = FIELD(F, struct config_strmap), .def = "", .doc = H, __VA_ARGS__ }
/* A list of "key" or "key=name" items; YAML {from: key, to: name} items are
 * stored as "key=name" (keys of Kubernetes labels never contain '='). */
#define K_RENAMES(P, F, D, H)                                                                             \
    { .path = P, .type = KEY_LIST, .offset = FIELD(F, struct config_strlist), .def = D, .doc = H, .renames = true, \
      .check = check_label_names }
#define K_TREE(P, F, H) \
    { .path = P, .type = KEY_TREE, .offset = FIELD(F, struct config_tree *), .def = "", .doc = H }
#define K_ALIAS_LIST(P, TARGET, F) \
    { .path = P, .type = KEY_LIST, .offset = FIELD(F, struct config_strlist), .alias_of = TARGET }

static const struct enum_value format_values[] = {
    {"cri", CONFIG_FORMAT_CRI}, {"docker", CONFIG_FORMAT_DOCKER}, {"auto", CONFIG_FORMAT_AUTO}, {NULL, 0}};
static const struct enum_value read_from_values[] = {
    {"end", CONFIG_READ_FROM_END}, {"beginning", CONFIG_READ_FROM_BEGINNING}, {NULL, 0}};
static const struct enum_value watcher_values[] = {
    {"inotify", CONFIG_WATCHER_INOTIFY}, {"poll", CONFIG_WATCHER_POLL}, {NULL, 0}};
static const struct enum_value partial_ts_values[] = {
    {"first", CONFIG_PARTIAL_TS_FIRST}, {"last", CONFIG_PARTIAL_TS_LAST}, {NULL, 0}};
static const struct enum_value stdout_format_values[] = {
    {"text", CONFIG_STDOUT_TEXT}, {"json", CONFIG_STDOUT_JSON}, {NULL, 0}};
static const struct enum_value log_level_values[] = {
    {"debug", 0}, {"info", 0}, {"warn", 0}, {"error", 0}, {NULL, 0}};
static const struct enum_value log_format_values[] = {{"logfmt", 0}, {"json", 0}, {NULL, 0}};
static const struct enum_value kubernetes_values[] = {
    {"auto", CONFIG_KUBERNETES_AUTO}, {"true", CONFIG_KUBERNETES_ON}, {"false", CONFIG_KUBERNETES_OFF}, {NULL, 0}};

static int check_regex(const struct config *cfg, const struct config_key *key, char *why, size_t whylen);
static int check_url(const struct config *cfg, const struct config_key *key, char *why, size_t whylen);
static int check_label_names(const struct config *cfg, const struct config_key *key, char *why, size_t whylen);
static int check_archive_url(const struct config *cfg, const struct config_key *key, char *why, size_t whylen);
static int check_key_format(const struct config *cfg, const struct config_key *key, char *why, size_t whylen);
static const struct enum_value archive_format_values[] = {
    {"cri", CONFIG_ARCHIVE_CRI}, {"json", CONFIG_ARCHIVE_JSON}, {NULL, 0}};
static const struct enum_value addressing_values[] = {
    {"auto", CONFIG_ADDRESSING_AUTO}, {"path", CONFIG_ADDRESSING_PATH}, {"virtual", CONFIG_ADDRESSING_VIRTUAL},
    {NULL, 0}};

#define KIB 1024LL

static const struct config_key keys[] = {
    K_STRING("server.http_listen_address", server.http_listen_address, "0.0.0.0",
             "Address of the HTTP server (metrics, health)."),
    K_INT("server.http_listen_port", server.http_listen_port, "3101", 0, 65535,
          "Port of the HTTP server; 0 picks a free port."),
    K_INT("server.max_connections", server.max_connections, "32", 1, 4096,
          "Most HTTP connections at once; when all are taken, the oldest that has not finished its request is closed for a newcomer (slowloris)."),
    K_DURATION("server.request_timeout", server.request_timeout_ms, "5s", 1,
               "Time allowed to read one request and write its response."),
    K_STRING("server.api.socket", server.api.socket, "/run/loglet/api.sock",
             "Unix socket (mode 0600) of the read-only logs API used by `loglet tail`; empty: none. If it cannot be created the agent runs on without it."),
    K_STRING("server.api.listen_address", server.api.listen_address, "",
             "Also serve the logs API on TCP at this address; empty: no TCP. Needs bearer_token_file."),
    K_INT("server.api.listen_port", server.api.listen_port, "3102", 0, 65535,
          "TCP port of the logs API (with listen_address); 0 picks a free port."),
    K_STRING("server.api.bearer_token_file", server.api.bearer_token_file, "",
             "File holding the bearer token every TCP request must send (Authorization: Bearer …)."),
    K_INT("server.api.max_subscribers", server.api.max_subscribers, "16", 1, 4096,
          "Most logs API requests served at once (history and followers); more are answered 503. With subscriber_buffer, bounds the followers' memory (16 x 1MiB by default, within the chart's 64Mi)."),
    K_SIZE("server.api.subscriber_buffer", server.api.subscriber_buffer_bytes, "1MiB", 128 * KIB,
           "Queue of new lines per follower; what a follower falls further behind by is read from the file, and only when that is gone is it told how many lines it missed."),
    K_SIZE("server.api.max_history_bytes", server.api.max_history_bytes, "1GiB", 1,
           "Most file bytes one logs API request may read for its history (narrow it with since or a selection)."),
    K_INT("server.api.max_history_requests", server.api.max_history_requests, "4", 1, 256,
          "Most logs API requests reading history at once (each holds open files and read buffers); one more waits up to server.request_timeout for a slot, then is answered 503."),
    K_INT("server.api.max_history_files", server.api.max_history_files, "256", 1, 65536,
          "Most log files one request's history may hold open (every file of every selected container); more is an error asking to narrow the selection."),
    K_DURATION("server.api.client_timeout", server.api.client_timeout_ms, "30s", 1,
               "A logs API client that reads nothing for this long is dropped, with the files and memory its request holds."),

    K_LIST("collection.paths", collection.paths, "/var/log/containers/*.log",
           "Glob patterns of the container log files to tail."),
    K_ALIAS_LIST("collection.logPaths", "collection.paths", collection.paths),
    K_ENUM("collection.format", collection.format, "auto", format_values,
           "Log file format: cri (containerd, CRI-O), docker (json-file) or auto (detected per file)."),
    K_ENUM("collection.read_from", collection.read_from, "end", read_from_values,
           "Where a first start (no positions file yet) begins the files present; later starts read new files from their beginning."),
    K_STRING("collection.positions_file", collection.positions_file, "/var/lib/loglet/positions.yaml",
             "File recording how far each log file has been read."),
    K_STRING("collection.spool_dir", collection.spool_dir, "",
             "Directory of hard links to the open log files, so lines of files the kubelet deletes while loglet holds them survive a crash; empty: spool/ beside the positions file. Must be on the logs' filesystem (and mount)."),
    K_DURATION("collection.positions_sync_period", collection.positions_sync_period_ms, "1s", 1,
               "How often the positions file is written when an acknowledged offset moved (never when idle); also within 250ms of a file being opened, rotated or closed."),
    K_SIZE("collection.max_line_bytes", collection.max_line_bytes, "256KiB", 1,
           "Longest log line sent as one entry; longer lines are split into pieces of this size (none is dropped)."),
    K_SIZE("collection.read_buffer_bytes", collection.read_buffer_bytes, "256KiB", 64 * KIB,
           "Bytes read from a file at a time (at least 64KiB: a runtime writes physical lines of up to 16KiB)."),
    K_DURATION("collection.partial_flush_timeout", collection.partial_flush_timeout_ms, "5s", 0,
               "How long a partial line waits for its continuation before it is sent as it is."),
    K_ENUM("collection.partial_timestamp", collection.partial_timestamp, "first", partial_ts_values,
           "Which part's timestamp a joined partial line keeps."),
    K_DURATION("collection.poll_interval", collection.poll_interval_ms, "1s", 1,
               "How often polled directories and files are checked (all of them with watcher: poll)."),
    K_ENUM("collection.watcher", collection.watcher, "inotify", watcher_values,
           "Change detection: inotify (falls back to polling where a watch cannot be had) or poll (stat only)."),
    K_SIZE("collection.max_held_bytes", collection.max_held_bytes, "1GiB", 0,
           "Unread bytes of files the kubelet deleted that only loglet still keeps (open, or linked in the spool) while the output lags; beyond it the oldest is released (lost, counted). Rotated files still on disk do not count."),
    K_INT("collection.max_held_files", collection.max_held_files, "1024", 1, 1000000,
          "Most files the kubelet deleted that only loglet still keeps while the output lags; beyond it the oldest is released (lost, counted)."),
    K_LIST("collection.exclude_namespaces", collection.exclude_namespaces, "",
           "Kubernetes namespaces whose logs are not collected."),
    K_LIST("collection.exclude_pods", collection.exclude_pods, "", "Pods whose logs are not collected."),
    K_LIST("collection.exclude_containers", collection.exclude_containers, "",
           "Containers whose logs are not collected."),
    K_LIST("collection.symlink_roots", collection.symlink_roots, "",
           "Directories a matched file may resolve into; empty: each glob's directory and the pods directory beside it."),
    K_STRING("collection.include_lines", collection.include_lines, "",
             "If set, only lines matching this PCRE2 pattern are sent.", .check = check_regex),
    K_STRING("collection.exclude_lines", collection.exclude_lines, "",
             "Lines matching this PCRE2 pattern are dropped.", .check = check_regex),

    K_SIZE("buffer.max_bytes", buffer.max_bytes, "3MiB", 1,
           "Memory for lines waiting to be sent (at least 8 * max_line_bytes + 64KiB); when full, reading pauses."),

    K_STRING("output.loki.url", output.loki.url, "",
             "Loki push URL (http:// or https://…/loki/api/v1/push); empty disables the Loki output.",
             .check = check_url),
    K_STRING("output.loki.tenant_id", output.loki.tenant_id, "", "Tenant sent as X-Scope-OrgID, if set."),
    K_SIZE("output.loki.batch_bytes", output.loki.batch_bytes, "1MiB", 1,
           "A batch is sent when it holds this many bytes (lines plus 16 bytes per entry)…"),
    K_DURATION("output.loki.batch_wait", output.loki.batch_wait_ms, "1s", 0,
               "…or when its oldest line has waited this long."),
    K_DURATION("output.loki.timeout", output.loki.timeout_ms, "10s", 1, "Timeout of one push request."),
    K_DURATION("output.loki.min_backoff", output.loki.min_backoff_ms, "500ms", 0,
               "Delay before the first retry of a failed push; it doubles up to max_backoff."),
    K_DURATION("output.loki.max_backoff", output.loki.max_backoff_ms, "5m", 0, "Longest delay between retries."),
    K_INT("output.loki.max_retries", output.loki.max_retries, "0", 0, INT32_MAX,
          "Retries of one batch before it is dropped; 0 retries forever."),
    K_STRING("output.loki.basic_auth.username", output.loki.basic_auth_username, "",
             "HTTP basic auth user; needs password_file."),
    K_STRING("output.loki.basic_auth.password_file", output.loki.basic_auth_password_file, "",
             "File holding the HTTP basic auth password."),
    K_STRING("output.loki.bearer_token_file", output.loki.bearer_token_file, "",
             "File holding a bearer token for the Authorization header."),
    K_STRING("output.loki.tls.ca_file", output.loki.tls_ca_file, "",
             "CA certificates (PEM) to verify Loki with; empty uses the system's."),
    K_STRING("output.loki.tls.cert_file", output.loki.tls_cert_file, "",
             "Client certificate (PEM) for mutual TLS; needs key_file."),
    K_STRING("output.loki.tls.key_file", output.loki.tls_key_file, "",
             "Client private key (PEM) for mutual TLS; needs cert_file."),
    K_BOOL("output.loki.tls.insecure_skip_verify", output.loki.tls_insecure_skip_verify, "false",
           "Do not verify Loki's certificate (for tests only)."),
    K_MAP("output.loki.headers", output.loki.headers, "Extra HTTP headers sent with every push."),
    K_BOOL("output.loki.structured_metadata", output.loki.structured_metadata, "false",
           "Send per-line metadata as Loki structured metadata."),
    K_DURATION("output.loki.unready_after", output.loki.unready_after_ms, "2m", 0,
               "/ready answers 503 once pushes (or archive uploads) have failed without a break for this long (0: never)."),
    K_STRING("output.archive.url", output.archive.url, "",
             "Archive of gzip objects per container: s3://bucket/prefix or file:///dir; empty disables it. With output.loki.url too, a line counts as delivered once both have it.",
             .check = check_archive_url),
    K_STRING("output.archive.endpoint", output.archive.endpoint, "",
             "S3-compatible endpoint (http(s)://host:port of MinIO, Ceph RGW…); empty: AWS's for the region."),
    K_STRING("output.archive.region", output.archive.region, "us-east-1", "Region the requests are signed for (SigV4)."),
    K_ENUM("output.archive.addressing", output.archive.addressing, "auto", addressing_values,
           "path (endpoint/bucket/key), virtual (bucket.endpoint/key) or auto (virtual on AWS, path with an endpoint)."),
    K_STRING("output.archive.access_key_id_file", output.archive.access_key_id_file, "",
             "File holding the access key id; empty: $AWS_ACCESS_KEY_ID. Re-read after a 403."),
    K_STRING("output.archive.secret_access_key_file", output.archive.secret_access_key_file, "",
             "File holding the secret key; empty: $AWS_SECRET_ACCESS_KEY. Re-read after a 403."),
    K_STRING("output.archive.session_token_file", output.archive.session_token_file, "",
             "File holding a session token (x-amz-security-token); empty: $AWS_SESSION_TOKEN, if set."),
    K_STRING("output.archive.tls_ca_file", output.archive.tls_ca_file, "",
             "CA certificates (PEM) to verify the endpoint with; empty uses the system's."),
    K_DURATION("output.archive.flush_interval", output.archive.flush_interval_ms, "1m", 1,
               "An object is written when its first line has waited this long…"),
    K_SIZE("output.archive.max_object_bytes", output.archive.max_object_bytes, "16MiB", 4096,
           "…or when it holds this many bytes of records, before gzip."),
    K_ENUM("output.archive.format", output.archive.format, "cri", archive_format_values,
           "Records in the objects: cri (the kubelet's line format) or json (the stdout JSON shape)."),
    K_STRING("output.archive.key_format", output.archive.key_format,
             "kube.var.log.containers.{pod}_{namespace}_{container}-{container_id}/{date}_{index}.gz",
             "Object key below the URL's prefix; {namespace} {pod} {container} {container_id} {pod_uid} {node} {date} {hour} {time} {index}.",
             .check = check_key_format),
    K_SIZE("output.archive.multipart_threshold", output.archive.multipart_threshold, "64MiB", 5 * 1024 * KIB,
           "Objects larger than this (gzipped) go up as a multipart upload."),
    K_STRING("output.archive.spool_dir", output.archive.spool_dir, "",
             "Where objects are built (files); empty: archive-spool/ beside the positions file."),
    K_SIZE("output.archive.spool_max_bytes", output.archive.spool_max_bytes, "256MiB", 1,
           "Bytes of objects being built or waiting to go up; when full, reading pauses."),
    K_INT("output.archive.max_open_objects", output.archive.max_open_objects, "256", 1, 65536,
          "Objects being built at once (one per container writing, 32 KiB of memory and a file descriptor each); past "
          "it the least recently written is sealed early."),
    K_INT("output.archive.max_sealed_objects", output.archive.max_sealed_objects, "1024", 1, 1048576,
          "Sealed objects waiting for the uploader (no descriptor, under 1 KiB of memory each); when that many wait, "
          "reading pauses."),
    K_INT("output.archive.gzip_level", output.archive.gzip_level, "6", 1, 9, "zlib level of the objects."),
    K_DURATION("output.archive.timeout", output.archive.timeout_ms, "60s", 1, "Timeout of one upload request."),
    K_DURATION("output.archive.min_backoff", output.archive.min_backoff_ms, "500ms", 0,
               "Delay before the first retry of a failed upload; it doubles up to max_backoff."),
    K_DURATION("output.archive.max_backoff", output.archive.max_backoff_ms, "5m", 0,
               "Longest delay between upload retries."),
    K_ENUM("output.stdout.format", output.stdout_.format, "text", stdout_format_values,
           "Format of lines written to stdout."),
    K_DURATION("output.shutdown_grace", output.shutdown_grace_ms, "10s", 0,
               "On shutdown, how long buffered lines may still be sent."),

    K_MAP("labels.static", labels.static_labels, "Labels added to every stream.", .check = check_label_names),
    K_BOOL("labels.stream", labels.stream, "true", "Add the stream (stdout or stderr) as a label."),
    K_INT("labels.max_pipeline_streams", labels.max_pipeline_streams, "2000", 0, 1000000,
          "Most streams pipeline `labels` stages may add on this node (label sets used in the last 30 minutes, beyond each file's own); entries that would make more keep their file's own labels (counted, never dropped). 0: no bound."),

    K_ENUM("kubernetes.enabled", kubernetes.enabled, "auto", kubernetes_values,
           "Pod metadata from the API server: auto (in a cluster, or with kubernetes.kubeconfig or $KUBECONFIG), true (also ~/.kube/config; an error if none) or false."),
    K_STRING("kubernetes.kubeconfig", kubernetes.kubeconfig, "",
             "Kubeconfig used outside a cluster; empty: $KUBECONFIG, then ~/.kube/config."),
    K_STRING("kubernetes.service_account_dir", kubernetes.service_account_dir,
             "/var/run/secrets/kubernetes.io/serviceaccount",
             "Where the in-cluster token and ca.crt are (with KUBERNETES_SERVICE_HOST/_PORT set)."),
    K_STRING("kubernetes.node_name", kubernetes.node_name, "",
             "Node whose pods are watched; empty: $NODE_NAME (set by the DaemonSet from the downward API)."),
    K_RENAMES("kubernetes.pod_labels", kubernetes.pod_labels,
              "app app.kubernetes.io/name=name app.kubernetes.io/component=component app.kubernetes.io/instance=instance",
              "Pod labels copied onto streams: `key` (name sanitised, `a.b/c` -> `a_b_c`), `key=name` or `{from: key, to: name}`; those a pod has."),
    K_RENAMES("kubernetes.namespace_labels", kubernetes.namespace_labels, "",
              "Namespace labels copied onto streams, as pod_labels; set, namespaces are watched too."),
    K_BOOL("kubernetes.namespaces", kubernetes.namespaces, "false",
           "Watch namespaces too, for loglet.io/exclude on a namespace (implied by namespace_labels; needs RBAC on namespaces)."),
    K_BOOL("kubernetes.workload_labels", kubernetes.workload_labels, "true",
           "Add `workload` and `workload_kind` (Deployment, StatefulSet, DaemonSet, Job, CronJob…) and `job` for a Job's pods."),
    K_BOOL("kubernetes.structured_metadata", kubernetes.structured_metadata, "false",
           "Send the pod_labels/namespace_labels copies and loglet.io/labels as Loki structured metadata instead of stream labels."),
    K_DURATION("kubernetes.wait_for_metadata", kubernetes.wait_for_metadata_ms, "2s", 0,
               "How long a new file whose pod (or, when namespaces are watched, whose namespace) is not known yet waits for it before it is sent with what is known; other files never wait."),
    K_TREE("pipeline", pipeline,
           "Processing stages (multiline, json, logfmt, regex, labels, structured_metadata, drop, limit, output, timestamp) per namespace, pod or container: see Pipeline stages."),

    K_ENUM_TEXT("log.level", log.level, "info", log_level_values, "Level of the agent's own log."),
    K_ENUM_TEXT("log.format", log.format, "logfmt", log_format_values, "Format of the agent's own log."),
};

#define N_KEYS (sizeof keys / sizeof keys[0])

/* Rules between keys, checked on the final configuration. `check` returns 0
 * when the rule holds, else -1 with the reason; the error names whichever of
 * the two keys the file set last. */
struct config_relation {
    const char *a, *b;
    int (*check)(const struct config *cfg, char *why, size_t whylen);
};

static int rel_buffer(const struct config *cfg, char *why, size_t whylen);
static int rel_backoff(const struct config *cfg, char *why, size_t whylen);
static int rel_basic_auth(const struct config *cfg, char *why, size_t whylen);
static int rel_auth_exclusive(const struct config *cfg, char *why, size_t whylen);
static int rel_client_cert(const struct config *cfg, char *why, size_t whylen);
static int rel_api_token(const struct config *cfg, char *why, size_t whylen);

static const struct config_relation relations[] = {
    {"buffer.max_bytes", "collection.max_line_bytes", rel_buffer},
    {"output.loki.min_backoff", "output.loki.max_backoff", rel_backoff},
    {"output.loki.basic_auth.username", "output.loki.basic_auth.password_file", rel_basic_auth},
    {"output.loki.basic_auth.username", "output.loki.bearer_token_file", rel_auth_exclusive},
    {"output.loki.tls.cert_file", "output.loki.tls.key_file", rel_client_cert},
    {"server.api.listen_address", "server.api.bearer_token_file", rel_api_token},
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */

static void *field_ptr(struct config *cfg, const struct config_key *k) { return (char *)cfg + k->offset; }
static const void *cfield_ptr(const struct config *cfg, const struct config_key *k)
{
    return (const char *)cfg + k->offset;
}

static int find_key(const char *path)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(keys[i].path, path) == 0) return (int)i;
    return -1;
}

/* The row a value really belongs to (an alias's target). */
static size_t canonical(size_t i)
{
    if (!keys[i].alias_of) return i;
    int t = find_key(keys[i].alias_of);
    return t >= 0 ? (size_t)t : i;
}

/* True if some key lives below `path` (so `path` is a section like "output.loki"). */
static bool is_section(const char *path)
{
    size_t n = strlen(path);
    for (size_t i = 0; i < N_KEYS; i++)
        if (strncmp(keys[i].path, path, n) == 0 && keys[i].path[n] == '.') return true;
    return false;
}

static void setf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void setf(char *buf, size_t len, const char *fmt, ...)
{
    if (!buf || len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

struct sbuf {
    char *p;
    size_t len, cap;
};

static int sbuf_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Lists and maps                                                           */

static void strlist_free(struct config_strlist *l)
{
    for (size_t i = 0; i < l->count; i++) free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

/* Takes ownership of `s` (frees it on failure). */
static int strlist_push(struct config_strlist *l, char *s)
{
    char **items = realloc(l->items, (l->count + 1) * sizeof *items);
    if (!items) {
        free(s);
        return -1;
    }
    l->items = items;
    l->items[l->count++] = s;
    return 0;
}

static int strlist_dup(struct config_strlist *dst, const struct config_strlist *src)
{
    dst->items = NULL;
    dst->count = 0;
    for (size_t i = 0; i < src->count; i++) {
        char *s = strdup(src->items[i] ? src->items[i] : "");
        if (!s || strlist_push(dst, s) < 0) {
            strlist_free(dst);
            return -1;
        }
    }
    return 0;
}

static void strmap_free(struct config_strmap *m)
{
    for (size_t i = 0; i < m->count; i++) {
        free(m->keys[i]);
        free(m->values[i]);
    }
    free(m->keys);
    free(m->values);
    m->keys = m->values = NULL;
    m->count = 0;
}

/* Takes ownership of `k` and `v` (frees them on failure). */
static int strmap_push(struct config_strmap *m, char *k, char *v)
{
    char **keys_ = realloc(m->keys, (m->count + 1) * sizeof *keys_);
    if (keys_) m->keys = keys_;
    char **values = keys_ ? realloc(m->values, (m->count + 1) * sizeof *values) : NULL;
    if (!keys_ || !values) {
        free(k);
        free(v);
        return -1;
    }
    m->values = values;
    m->keys[m->count] = k;
    m->values[m->count] = v;
    m->count++;
    return 0;
}

static int strmap_dup(struct config_strmap *dst, const struct config_strmap *src)
{
    dst->keys = dst->values = NULL;
    dst->count = 0;
    for (size_t i = 0; i < src->count; i++) {
        char *k = strdup(src->keys[i] ? src->keys[i] : "");
        char *v = strdup(src->values[i] ? src->values[i] : "");
        if (!k || !v) {
            free(k);
            free(v);
            strmap_free(dst);
            return -1;
        }
        if (strmap_push(dst, k, v) < 0) {
            strmap_free(dst);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Human units                                                              */

struct unit {
    const char *name;
    int64_t mult;
};

static const struct unit size_units[] = {
    {"", 1},
    {"B", 1},
    {"K", 1LL << 10},
    {"Ki", 1LL << 10},
    {"KiB", 1LL << 10},
    {"KB", 1000LL},
    {"M", 1LL << 20},
    {"Mi", 1LL << 20},
    {"MiB", 1LL << 20},
    {"MB", 1000LL * 1000},
    {"G", 1LL << 30},
    {"Gi", 1LL << 30},
    {"GiB", 1LL << 30},
    {"GB", 1000LL * 1000 * 1000},
    {"T", 1LL << 40},
    {"Ti", 1LL << 40},
    {"TiB", 1LL << 40},
    {"TB", 1000LL * 1000 * 1000 * 1000},
};

/* Reads decimal digits; NULL on success, else why. */
static const char *parse_digits(const char **pp, int64_t *out)
{
    const char *p = *pp;
    int64_t v = 0;
    if (!isdigit((unsigned char)*p)) return "not a number";
    for (; isdigit((unsigned char)*p); p++) {
        int d = *p - '0';
        if (v > (INT64_MAX - d) / 10) return "is too large";
        v = v * 10 + d;
    }
    *pp = p;
    *out = v;
    return NULL;
}

/* NULL on success, else the reason ("is not a size …") to follow the quoted text. */
static const char *parse_size(const char *text, int64_t *out)
{
    static const char bad[] = "is not a size (use a number with an optional unit: B, KiB, MiB, GiB, KB, MB, GB)";
    const char *p = text;
    if (*p == '-') return isdigit((unsigned char)p[1]) ? "is negative" : bad;
    int64_t v;
    const char *why = parse_digits(&p, &v);
    if (why) return why[0] == 'n' ? bad : why;
    while (*p == ' ') p++;
    for (size_t i = 0; i < sizeof size_units / sizeof size_units[0]; i++) {
        if (strcasecmp(p, size_units[i].name) != 0) continue;
        if (v > INT64_MAX / size_units[i].mult) return "is too large";
        *out = v * size_units[i].mult;
        return NULL;
    }
    return bad;
}

int config_parse_size(const char *text, int64_t *out)
{
    int64_t v;
    if (!text || parse_size(text, &v)) return -1;
    *out = v;
    return 0;
}

static const char *parse_duration(const char *text, int64_t *out)
{
    static const char bad[] = "is not a duration (use a number with a unit: ms, s, m, h, e.g. 500ms, 1m30s)";
    const char *p = text;
    if (strcmp(p, "0") == 0) {
        *out = 0;
        return NULL;
    }
    if (*p == '-') return isdigit((unsigned char)p[1]) ? "is negative" : bad;
    if (!*p) return bad;
    int64_t total = 0;
    while (*p) {
        int64_t whole = 0, frac = 0, scale = 1;
        if (isdigit((unsigned char)*p)) {
            const char *why = parse_digits(&p, &whole);
            if (why) return why;
        } else if (!(*p == '.' && isdigit((unsigned char)p[1]))) {
            return bad;
        }
        if (*p == '.') {
            p++;
            if (!isdigit((unsigned char)*p)) return bad;
            for (; isdigit((unsigned char)*p); p++) {
                if (scale >= 1000000000) return "has too many decimals";
                frac = frac * 10 + (*p - '0');
                scale *= 10;
            }
        }
        int64_t unit;
        if (strncmp(p, "ms", 2) == 0) {
            unit = 1;
            p += 2;
        } else if (*p == 's') {
            unit = 1000;
            p++;
        } else if (*p == 'm') {
            unit = 60 * 1000;
            p++;
        } else if (*p == 'h') {
            unit = 3600 * 1000;
            p++;
        } else {
            return bad;
        }
        if (whole > INT64_MAX / unit) return "is too large";
        int64_t ms = whole * unit;
        int64_t fms = frac * unit; /* frac < 1e9, unit <= 3.6e6: fits */
        if (fms % scale != 0) return "is not a whole number of milliseconds";
        fms /= scale;
        if (ms > INT64_MAX - fms || total > INT64_MAX - ms - fms) return "is too large";
        total += ms + fms;
    }
    *out = total;
    return NULL;
}

int config_parse_duration_ms(const char *text, int64_t *out)
{
    int64_t v;
    if (!text || parse_duration(text, &v)) return -1;
    *out = v;
    return 0;
}

static const char *parse_int(const char *text, int64_t *out)
{
    const char *p = text;
    bool neg = *p == '-';
    if (neg) p++;
    int64_t v;
    const char *why = parse_digits(&p, &v);
    if (why) return why[0] == 'n' ? "is not an integer" : why;
    if (*p) return "is not an integer";
    *out = neg ? -v : v;
    return NULL;
}

static const char *parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = true;
            return NULL;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = false;
            return NULL;
        }
    }
    return "is not a boolean (use true or false)";
}

/* Shortest exact spelling: 262144 -> "256KiB", 90000 ms -> "90s". */
static void format_size(int64_t v, char *buf, size_t len)
{
    static const struct unit units[] = {{"TiB", 1LL << 40}, {"GiB", 1LL << 30}, {"MiB", 1LL << 20}, {"KiB", 1LL << 10}};
    for (size_t i = 0; v != 0 && i < sizeof units / sizeof units[0]; i++) {
        if (v % units[i].mult == 0) {
            snprintf(buf, len, "%lld%s", (long long)(v / units[i].mult), units[i].name);
            return;
        }
    }
    snprintf(buf, len, "%lldB", (long long)v);
}

static void format_duration(int64_t ms, char *buf, size_t len)
{
    static const struct unit units[] = {{"h", 3600 * 1000}, {"m", 60 * 1000}, {"s", 1000}};
    for (size_t i = 0; ms != 0 && i < sizeof units / sizeof units[0]; i++) {
        if (ms % units[i].mult == 0) {
            snprintf(buf, len, "%lld%s", (long long)(ms / units[i].mult), units[i].name);
            return;
        }
    }
    if (ms == 0)
        snprintf(buf, len, "0s");
    else
        snprintf(buf, len, "%lldms", (long long)ms);
}

static void format_number(const struct config_key *k, int64_t v, char *buf, size_t len)
{
    if (k->type == KEY_SIZE)
        format_size(v, buf, len);
    else if (k->type == KEY_DURATION)
        format_duration(v, buf, len);
    else
        snprintf(buf, len, "%lld", (long long)v);
}

/* "cri, docker, auto" */
static void enum_names(const struct config_key *k, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    for (const struct enum_value *e = k->values; e->name && n < len; e++) {
        int w = snprintf(buf + n, len - n, "%s%s", e == k->values ? "" : ", ", e->name);
        if (w < 0) break;
        n += (size_t)w;
    }
}

/* ------------------------------------------------------------------------ */
/* Environment expansion                                                    */

static bool valid_var_name(const char *s, size_t n)
{
    if (n == 0 || isdigit((unsigned char)s[0])) return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_') return false;
    return true;
}

char *config_expand_env(const char *text, char *err, size_t errlen)
{
    struct sbuf out = {0};
    const char *p = text ? text : "";
    if (sbuf_add(&out, "", 0) < 0) goto oom;
    while (*p) {
        const char *dollar = strchr(p, '$');
        if (!dollar) {
            if (sbuf_add(&out, p, strlen(p)) < 0) goto oom;
            break;
        }
        if (sbuf_add(&out, p, (size_t)(dollar - p)) < 0) goto oom;
        if (dollar[1] == '$') {
            if (sbuf_add(&out, "$", 1) < 0) goto oom;
            p = dollar + 2;
            continue;
        }
        if (dollar[1] != '{') {
            if (sbuf_add(&out, "$", 1) < 0) goto oom;
            p = dollar + 1;
            continue;
        }
        const char *name = dollar + 2;
        const char *close = strchr(name, '}');
        if (!close) {
            setf(err, errlen, "unterminated ${ in value");
            free(out.p);
            return NULL;
        }
        const char *sep = strstr(name, ":-");
        bool has_default = sep && sep < close;
        size_t name_len = (size_t)((has_default ? sep : close) - name);
        if (!valid_var_name(name, name_len)) {
            setf(err, errlen, "invalid variable name in '%.*s'", (int)(close + 1 - dollar), dollar);
            free(out.p);
            return NULL;
        }
        char var[256];
        const char *value = NULL;
        if (name_len < sizeof var) {
            memcpy(var, name, name_len);
            var[name_len] = '\0';
            value = getenv(var);
        }
        if (has_default && (!value || !*value)) {
            const char *def = sep + 2;
            if (sbuf_add(&out, def, (size_t)(close - def)) < 0) goto oom;
        } else if (value) {
            if (sbuf_add(&out, value, strlen(value)) < 0) goto oom;
        }
        p = close + 1;
    }
    return out.p;
oom:
    free(out.p);
    setf(err, errlen, "out of memory");
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Setting one value                                                        */

/* Converts `text` by the key's type into the field. -1 with `why` (the full
 * reason, without the key) on a bad value or allocation failure. */
static int set_scalar(struct config *cfg, const struct config_key *k, const char *text, char *why, size_t whylen)
{
    void *field = field_ptr(cfg, k);
    const char *reason = NULL;
    int64_t v = 0;

    switch (k->type) {
    case KEY_STRING: {
        char *s = strdup(text);
        if (!s) goto oom;
        free(*(char **)field);
        *(char **)field = s;
        return 0;
    }
    case KEY_BOOL: {
        bool b;
        if ((reason = parse_bool(text, &b))) break;
        *(bool *)field = b;
        return 0;
    }
    case KEY_INT:
    case KEY_SIZE:
    case KEY_DURATION:
        reason = k->type == KEY_INT ? parse_int(text, &v)
                 : k->type == KEY_SIZE ? parse_size(text, &v)
                                       : parse_duration(text, &v);
        if (reason) break;
        if (v < k->min || v > k->max) {
            char bound[32];
            format_number(k, v < k->min ? k->min : k->max, bound, sizeof bound);
            setf(why, whylen, "'%s' is %s %s", text, v < k->min ? "less than the minimum" : "more than the maximum",
                 bound);
            return -1;
        }
        *(int64_t *)field = v;
        return 0;
    case KEY_ENUM:
    case KEY_ENUM_TEXT:
        for (const struct enum_value *e = k->values; e->name; e++) {
            if (strcasecmp(text, e->name) != 0) continue;
            if (k->type == KEY_ENUM) {
                *(int *)field = e->value;
            } else {
                char *s = strdup(e->name);
                if (!s) goto oom;
                free(*(char **)field);
                *(char **)field = s;
            }
            return 0;
        }
        char names[256];
        enum_names(k, names, sizeof names);
        setf(why, whylen, "'%s' is not one of %s", text, names);
        return -1;
    case KEY_LIST: {
        /* A scalar for a list is a one-item list; an empty one is an empty list. */
        struct config_strlist l = {0};
        if (*text) {
            char *s = strdup(text);
            if (!s || strlist_push(&l, s) < 0) goto oom;
        }
        strlist_free(field);
        *(struct config_strlist *)field = l;
        return 0;
    }
    case KEY_MAP:
        if (*text) {
            setf(why, whylen, "expected a mapping, got a scalar");
            return -1;
        }
        strmap_free(field);
        return 0;
    case KEY_TREE:
        if (*text) {
            setf(why, whylen, "expected a list, got a scalar");
            return -1;
        }
        config_tree_free(*(struct config_tree **)field);
        *(struct config_tree **)field = NULL;
        return 0;
    }
    setf(why, whylen, "'%s' %s", text, reason ? reason : "is invalid");
    return -1;
oom:
    setf(why, whylen, "out of memory");
    return -1;
}

/* A list's default names its items separated by spaces (no default item has one). */
static int set_list_default(struct config *cfg, const struct config_key *k, char *why, size_t whylen)
{
    struct config_strlist l = {0};
    for (const char *p = k->def; *p;) {
        size_t n = strcspn(p, " ");
        char *item = n ? strndup(p, n) : NULL;
        if (n && (!item || strlist_push(&l, item) < 0)) {
            strlist_free(&l);
            setf(why, whylen, "default of %s: out of memory", k->path);
            return -1;
        }
        p += n;
        p += strspn(p, " ");
    }
    strlist_free(field_ptr(cfg, k));
    *(struct config_strlist *)field_ptr(cfg, k) = l;
    return 0;
}

static int set_default(struct config *cfg, const struct config_key *k, char *why, size_t whylen)
{
    char inner[512];
    if (k->type == KEY_LIST) return set_list_default(cfg, k, why, whylen);
    if (set_scalar(cfg, k, k->def, inner, sizeof inner) == 0) return 0;
    setf(why, whylen, "default of %s: %s", k->path, inner);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Defaults, copy, free                                                     */

static void free_field(struct config *cfg, const struct config_key *k)
{
    void *field = field_ptr(cfg, k);
    switch (k->type) {
    case KEY_STRING:
    case KEY_ENUM_TEXT:
        free(*(char **)field);
        *(char **)field = NULL;
        break;
    case KEY_LIST:
        strlist_free(field);
        break;
    case KEY_MAP:
        strmap_free(field);
        break;
    case KEY_TREE:
        config_tree_free(*(struct config_tree **)field);
        *(struct config_tree **)field = NULL;
        break;
    default:
        break;
    }
}

void config_free(struct config *cfg)
{
    if (!cfg) return;
    for (size_t i = 0; i < N_KEYS; i++)
        if (!keys[i].alias_of) free_field(cfg, &keys[i]);
    free(cfg->source_path);
    memset(cfg, 0, sizeof *cfg);
}

int config_init(struct config *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->source_path = strdup("");
    int rc = cfg->source_path ? 0 : -1;
    if (rc < 0) setf(err, errlen, "out of memory");
    /* Keep going after a failure so that every field that needs no memory
     * still gets its default; report the first failure. */
    for (size_t i = 0; i < N_KEYS; i++) {
        if (keys[i].alias_of) continue;
        if (set_default(cfg, &keys[i], rc == 0 ? err : NULL, rc == 0 ? errlen : 0) < 0) rc = -1;
    }
    return rc;
}

void config_defaults(struct config *cfg)
{
    /* Only allocation can fail here; the fields it could not fill stay NULL,
     * which config_load() repairs and config_print()/config_free() accept.
     * Callers that must know use config_init(). */
    char err[256];
    (void)config_init(cfg, err, sizeof err);
}

/* Deep copy; on failure dst is freeable and -1 is returned. A string field
 * that is NULL in src (left so by a failed config_defaults) gets its default. */
static int config_copy(struct config *dst, const struct config *src, char *why, size_t whylen)
{
    *dst = *src;
    dst->source_path = NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct config_key *k = &keys[i];
        void *field = field_ptr(dst, k);
        if (k->type == KEY_STRING || k->type == KEY_ENUM_TEXT)
            *(char **)field = NULL;
        else if (k->type == KEY_LIST)
            memset(field, 0, sizeof(struct config_strlist));
        else if (k->type == KEY_MAP)
            memset(field, 0, sizeof(struct config_strmap));
        else if (k->type == KEY_TREE)
            *(struct config_tree **)field = NULL;
    }
    dst->source_path = strdup(src->source_path ? src->source_path : "");
    if (!dst->source_path) goto oom;
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct config_key *k = &keys[i];
        if (k->alias_of) continue;
        const void *from = cfield_ptr(src, k);
        void *to = field_ptr(dst, k);
        if (k->type == KEY_STRING || k->type == KEY_ENUM_TEXT) {
            const char *s = *(char *const *)from;
            if (!s) {
                if (set_default(dst, k, why, whylen) < 0) goto fail;
                continue;
            }
            if (!(*(char **)to = strdup(s))) goto oom;
        } else if (k->type == KEY_LIST) {
            if (strlist_dup(to, from) < 0) goto oom;
        } else if (k->type == KEY_MAP) {
            if (strmap_dup(to, from) < 0) goto oom;
        } else if (k->type == KEY_TREE) {
            const struct config_tree *t = *(struct config_tree *const *)from;
            if (t && !(*(struct config_tree **)to = config_tree_dup(t))) goto oom;
        }
    }
    return 0;
oom:
    setf(why, whylen, "out of memory");
fail:
    config_free(dst);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Checks                                                                   */

static int check_regex(const struct config *cfg, const struct config_key *key, char *why, size_t whylen)
{
    const char *pattern = *(char *const *)cfield_ptr(cfg, key);
    if (!pattern || !*pattern) return 0;
    int code;
    PCRE2_SIZE offset;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, 0, &code, &offset, NULL);
    if (re) {
        pcre2_code_free(re);
        return 0;
    }
    PCRE2_UCHAR msg[256];
    if (pcre2_get_error_message(code, msg, sizeof msg) < 0) snprintf((char *)msg, sizeof msg, "error %d", code);
    setf(why, whylen, "invalid regular expression at offset %zu: %s", (size_t)offset, (const char *)msg);
    return -1;
}

/* Label names (labels.static keys, the names pod and namespace labels are
 * copied to): one Loki reserves would be refused or dropped downstream, so
 * it is refused here, where the operator can fix it. */
static int check_label_names(const struct config *cfg, const struct config_key *key, char *why, size_t whylen)
{
    const void *field = cfield_ptr(cfg, key);
    size_t n = key->type == KEY_MAP ? ((const struct config_strmap *)field)->count
                                    : ((const struct config_strlist *)field)->count;
    for (size_t i = 0; i < n; i++) {
        const char *item = key->type == KEY_MAP ? ((const struct config_strmap *)field)->keys[i]
                                                : ((const struct config_strlist *)field)->items[i];
        const char *eq = key->type == KEY_MAP ? NULL : strchr(item, '=');
        const char *name = eq ? eq + 1 : item;
        if (!loki_label_name_reserved(name)) continue;
        char sanitised[256];
        loki_sanitise_label_name(name, sanitised, sizeof sanitised);
        if (key->type == KEY_MAP)
            setf(why, whylen, "the label name \"%.128s\" (sent as \"%.128s\") starts with \"__\", which Loki reserves: "
                 "choose another", name, sanitised);
        else
            setf(why, whylen, "item \"%.128s\" would be sent as the label \"%.128s\", which starts with \"__\": Loki "
                 "reserves such names; rename it with {from: %.*s, to: <name>}", item, sanitised,
                 (int)(eq ? (size_t)(eq - item) : strlen(item)), item);
        return -1;
    }
    return 0;
}

static int check_url(const struct config *cfg, const struct config_key *key, char *why, size_t whylen)
{
    const char *url = *(char *const *)cfield_ptr(cfg, key);
    if (!url || !*url) return 0;
    if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) return 0;
    setf(why, whylen, "'%s' must start with http:// or https://", url);
    return -1;
}

static int check_archive_url(const struct config *cfg, const struct config_key *key, char *why, size_t whylen)
{
    const char *url = *(char *const *)cfield_ptr(cfg, key);
    if (!url || !*url) return 0;
    if (strncmp(url, "file:///", 8) == 0) return 0;
    if (strncmp(url, "s3://", 5) == 0 && url[5] && url[5] != '/') return 0;
    setf(why, whylen, "'%s' must be s3://bucket[/prefix] or file:///absolute/dir", url);
    return -1;
}

static int check_key_format(const struct config *cfg, const struct config_key *key, char *why, size_t whylen)
{
    static const char *const known[] = {"namespace", "pod", "container", "container_id", "pod_uid",
                                        "node",      "date", "hour",     "time",         "index"};
    const char *fmt = *(char *const *)cfield_ptr(cfg, key);
    if (!fmt || !*fmt) {
        setf(why, whylen, "must not be empty");
        return -1;
    }
    bool has_index = false;
    for (const char *p = fmt; (p = strchr(p, '{'));) {
        const char *end = strchr(p, '}');
        if (!end) {
            setf(why, whylen, "'{' without '}' in '%s'", fmt);
            return -1;
        }
        size_t n = (size_t)(end - p - 1), i;
        for (i = 0; i < sizeof known / sizeof known[0]; i++)
            if (strlen(known[i]) == n && strncmp(p + 1, known[i], n) == 0) break;
        if (i == sizeof known / sizeof known[0]) {
            setf(why, whylen, "unknown placeholder '%.*s' in '%s'", (int)(end - p + 1), p, fmt);
            return -1;
        }
        if (strcmp(known[i], "index") == 0) has_index = true;
        p = end + 1;
    }
    /* Without it two objects of one container in one flush_interval, or
     * after a restart, would have the same key: the second overwrites. */
    if (!has_index) {
        setf(why, whylen, "'%s' must contain {index}, or objects would overwrite each other", fmt);
        return -1;
    }
    /* {index} counts per agent: agents of two nodes use the same numbers,
     * so a key must also say whose container (or which node) it is. */
    if (!strstr(fmt, "{container_id}") && !strstr(fmt, "{node}")) {
        setf(why, whylen,
             "'%s' must contain {container_id} or {node} besides {index}: the index counts per agent, so the "
             "agents of two nodes would write the same keys", fmt);
        return -1;
    }
    /* Compaction owns data/ and metadata/: the reader takes what is there
     * for merged objects and indexes, not raw ones. */
    if (strncmp(fmt, "data/", 5) == 0 || strncmp(fmt, "metadata/", 9) == 0) {
        setf(why, whylen, "'%s' must not start with data/ or metadata/, where compaction keeps its objects", fmt);
        return -1;
    }
    if (fmt[0] == '/' || fmt[strlen(fmt) - 1] == '/') {
        setf(why, whylen, "'%s' must not start or end with '/': a key is a path of names below the prefix", fmt);
        return -1;
    }
    for (const char *seg = fmt; seg; seg = strchr(seg, '/') ? strchr(seg, '/') + 1 : NULL) {
        size_t n = strcspn(seg, "/");
        if ((n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.') || n == 0) {
            setf(why, whylen, "'%s' has an empty, '.' or '..' segment: a key must stay below the prefix", fmt);
            return -1;
        }
    }
    return 0;
}

static bool nonempty(const char *s) { return s && *s; }

static int rel_buffer(const struct config *cfg, char *why, size_t whylen)
{
    int64_t line = cfg->collection.max_line_bytes, need;
    /* The ring hands out blocks of at most half its size, and one block must
     * hold a whole line even after UTF-8 repair (3x): 8x leaves room. */
    if (line > (INT64_MAX - 64 * KIB) / 8)
        need = INT64_MAX;
    else
        need = 8 * line + 64 * KIB;
    if (cfg->buffer.max_bytes >= need) return 0;
    char have[32], want[32], l[32];
    format_size(cfg->buffer.max_bytes, have, sizeof have);
    format_size(need, want, sizeof want);
    format_size(line, l, sizeof l);
    setf(why, whylen,
         "buffer.max_bytes (%s) must be at least 8 * collection.max_line_bytes (%s) + 64KiB = %s", have, l, want);
    return -1;
}

static int rel_backoff(const struct config *cfg, char *why, size_t whylen)
{
    if (cfg->output.loki.min_backoff_ms <= cfg->output.loki.max_backoff_ms) return 0;
    char lo[32], hi[32];
    format_duration(cfg->output.loki.min_backoff_ms, lo, sizeof lo);
    format_duration(cfg->output.loki.max_backoff_ms, hi, sizeof hi);
    setf(why, whylen, "output.loki.min_backoff (%s) must not be greater than output.loki.max_backoff (%s)", lo, hi);
    return -1;
}

static int rel_basic_auth(const struct config *cfg, char *why, size_t whylen)
{
    if (nonempty(cfg->output.loki.basic_auth_username) == nonempty(cfg->output.loki.basic_auth_password_file)) return 0;
    setf(why, whylen, "output.loki.basic_auth.username and output.loki.basic_auth.password_file must be set together");
    return -1;
}

static int rel_auth_exclusive(const struct config *cfg, char *why, size_t whylen)
{
    if (!nonempty(cfg->output.loki.basic_auth_username) || !nonempty(cfg->output.loki.bearer_token_file)) return 0;
    setf(why, whylen, "output.loki.basic_auth and output.loki.bearer_token_file cannot both be set");
    return -1;
}

static int rel_client_cert(const struct config *cfg, char *why, size_t whylen)
{
    if (nonempty(cfg->output.loki.tls_cert_file) == nonempty(cfg->output.loki.tls_key_file)) return 0;
    setf(why, whylen, "output.loki.tls.cert_file and output.loki.tls.key_file must be set together");
    return -1;
}

/* Every container's logs on a network port without authentication must not
 * be one forgotten line away. */
static int rel_api_token(const struct config *cfg, char *why, size_t whylen)
{
    if (!nonempty(cfg->server.api.listen_address) || nonempty(cfg->server.api.bearer_token_file)) return 0;
    setf(why, whylen, "the logs API on TCP (server.api.listen_address) needs server.api.bearer_token_file: "
                      "it would serve every container's logs unauthenticated");
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */

struct load {
    const char *file;
    yaml_document_t *doc;
    struct config *cfg;
    size_t lines[N_KEYS]; /* 1-based line where the file set each key, 0 = not set */
    char *err;
    size_t errlen;
};

/* Writes "FILE:LINE: message" (or "FILE: message" when line is 0); returns -1. */
static int fail(struct load *ld, size_t line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct load *ld, size_t line, const char *fmt, ...)
{
    if (!ld->err || ld->errlen == 0) return -1;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line)
        setf(ld->err, ld->errlen, "%s:%zu: %s", ld->file, line, msg);
    else
        setf(ld->err, ld->errlen, "%s: %s", ld->file, msg);
    return -1;
}

static size_t line_of(const yaml_node_t *n) { return n->start_mark.line + 1; }

static const char *node_kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE: return "a mapping";
    case YAML_SEQUENCE_NODE: return "a list";
    default: return "a scalar";
    }
}

/* An unquoted empty, "~" or "null" value. */
static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    const char *s = (const char *)n->data.scalar.value;
    return n->data.scalar.length == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}

/* The scalar's text with ${VAR} expanded (malloc'd), or NULL after fail(). */
static char *scalar_value(struct load *ld, const yaml_node_t *n, const char *path)
{
    const char *raw = (const char *)n->data.scalar.value;
    if (strlen(raw) != n->data.scalar.length)
        return fail(ld, line_of(n), "key %s: value contains a NUL character", path), NULL;
    if (is_null(n)) raw = "";
    char why[256];
    char *text = config_expand_env(raw, why, sizeof why);
    if (!text) fail(ld, line_of(n), "key %s: %s", path, why);
    return text;
}

/* {from: key, to: name} as "key=name" (malloc'd), or NULL after fail(). */
static char *rename_item(struct load *ld, const struct config_key *k, const yaml_node_t *item)
{
    char *from = NULL, *to = NULL;
    for (yaml_node_pair_t *pair = item->data.mapping.pairs.start; pair < item->data.mapping.pairs.top; pair++) {
        yaml_node_t *kn = yaml_document_get_node(ld->doc, pair->key);
        yaml_node_t *vn = yaml_document_get_node(ld->doc, pair->value);
        if (!kn || !vn) continue;
        const char *name = kn->type == YAML_SCALAR_NODE ? (const char *)kn->data.scalar.value : "";
        char **slot = strcmp(name, "from") == 0 ? &from : strcmp(name, "to") == 0 ? &to : NULL;
        if (!slot || vn->type != YAML_SCALAR_NODE || *slot) {
            fail(ld, line_of(kn), "key %s: an item that is a mapping takes exactly `from: <key>` and `to: <name>`%s",
                 k->path, slot && *slot ? " (given twice)" : "");
            goto bad;
        }
        if (!(*slot = scalar_value(ld, vn, k->path))) goto bad;
    }
    if (!from || !*from || !to || !*to || strchr(from, '=')) {
        fail(ld, line_of(item), "key %s: an item that is a mapping needs a non-empty `from` (without '=') and `to`",
             k->path);
        goto bad;
    }
    char *joined = malloc(strlen(from) + strlen(to) + 2);
    if (joined) sprintf(joined, "%s=%s", from, to);
    else fail(ld, line_of(item), "key %s: out of memory", k->path);
    free(from);
    free(to);
    return joined;
bad:
    free(from);
    free(to);
    return NULL;
}

static int load_list(struct load *ld, const struct config_key *k, const yaml_node_t *vn)
{
    struct config_strlist l = {0};
    if (vn->type == YAML_MAPPING_NODE) return fail(ld, line_of(vn), "key %s: expected a list, got a mapping", k->path);
    if (vn->type == YAML_SCALAR_NODE) {
        char *text = scalar_value(ld, vn, k->path);
        if (!text) return -1;
        if (!*text)
            free(text);
        else if (strlist_push(&l, text) < 0)
            return fail(ld, line_of(vn), "key %s: out of memory", k->path);
    } else {
        for (yaml_node_item_t *it = vn->data.sequence.items.start; it < vn->data.sequence.items.top; it++) {
            yaml_node_t *item = yaml_document_get_node(ld->doc, *it);
            if (!item) continue;
            if (item->type == YAML_MAPPING_NODE && k->renames) {
                char *pair = rename_item(ld, k, item);
                if (!pair || strlist_push(&l, pair) < 0) {
                    strlist_free(&l);
                    return pair ? fail(ld, line_of(item), "key %s: out of memory", k->path) : -1;
                }
                continue;
            }
            if (item->type != YAML_SCALAR_NODE) {
                strlist_free(&l);
                return fail(ld, line_of(item), "key %s: list items must be scalars, got %s", k->path,
                            node_kind(item));
            }
            char *text = scalar_value(ld, item, k->path);
            if (!text) {
                strlist_free(&l);
                return -1;
            }
            if (strlist_push(&l, text) < 0) {
                strlist_free(&l);
                return fail(ld, line_of(item), "key %s: out of memory", k->path);
            }
        }
    }
    struct config_strlist *field = field_ptr(ld->cfg, k);
    strlist_free(field);
    *field = l;
    return 0;
}

static int load_map(struct load *ld, const struct config_key *k, const yaml_node_t *vn)
{
    struct config_strmap m = {0};
    if (vn->type != YAML_MAPPING_NODE && !is_null(vn))
        return fail(ld, line_of(vn), "key %s: expected a mapping, got %s", k->path, node_kind(vn));
    if (vn->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *pair = vn->data.mapping.pairs.start; pair < vn->data.mapping.pairs.top; pair++) {
            yaml_node_t *kn = yaml_document_get_node(ld->doc, pair->key);
            yaml_node_t *val = yaml_document_get_node(ld->doc, pair->value);
            if (!kn || !val) continue;
            const char *name = (const char *)kn->data.scalar.value;
            int rc = 0;
            if (kn->type != YAML_SCALAR_NODE)
                rc = fail(ld, line_of(kn), "key %s: names must be scalars, got %s", k->path, node_kind(kn));
            else if (strlen(name) != kn->data.scalar.length || !*name)
                rc = fail(ld, line_of(kn), "key %s: names must be non-empty text", k->path);
            else if (val->type != YAML_SCALAR_NODE)
                rc = fail(ld, line_of(val), "key %s: value of '%s' must be a scalar, got %s", k->path, name,
                          node_kind(val));
            for (size_t i = 0; rc == 0 && i < m.count; i++)
                if (strcmp(m.keys[i], name) == 0)
                    rc = fail(ld, line_of(kn), "key %s: '%s' is given twice", k->path, name);
            if (rc < 0) {
                strmap_free(&m);
                return -1;
            }
            char *value = scalar_value(ld, val, k->path);
            if (!value) {
                strmap_free(&m);
                return -1;
            }
            char *dup = strdup(name);
            if (!dup) {
                free(value);
                strmap_free(&m);
                return fail(ld, line_of(kn), "key %s: out of memory", k->path);
            }
            if (strmap_push(&m, dup, value) < 0) {
                strmap_free(&m);
                return fail(ld, line_of(kn), "key %s: out of memory", k->path);
            }
        }
    }
    struct config_strmap *field = field_ptr(ld->cfg, k);
    strmap_free(field);
    *field = m;
    return 0;
}

/* A copy of the YAML subtree, scalars expanded; NULL after fail(). */
static struct config_tree *load_tree(struct load *ld, const yaml_node_t *n, const char *path, int depth)
{
    if (depth > 32) return fail(ld, line_of(n), "key %s: nested too deeply", path), NULL;
    enum config_tree_kind kind = n->type == YAML_MAPPING_NODE    ? CONFIG_TREE_MAP
                                 : n->type == YAML_SEQUENCE_NODE ? CONFIG_TREE_LIST
                                                                 : CONFIG_TREE_SCALAR;
    struct config_tree *t = config_tree_new(kind, line_of(n));
    if (!t) return fail(ld, line_of(n), "key %s: out of memory", path), NULL;
    if (kind == CONFIG_TREE_SCALAR) {
        if (!(t->text = scalar_value(ld, n, path))) goto fail;
        return t;
    }
    if (kind == CONFIG_TREE_LIST) {
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
            yaml_node_t *item = yaml_document_get_node(ld->doc, *it);
            if (!item) continue;
            struct config_tree *sub = load_tree(ld, item, path, depth + 1);
            if (!sub) goto fail;
            if (config_tree_push(t, NULL, sub) < 0) {
                config_tree_free(sub);
                fail(ld, line_of(item), "key %s: out of memory", path);
                goto fail;
            }
        }
        return t;
    }
    for (yaml_node_pair_t *pair = n->data.mapping.pairs.start; pair < n->data.mapping.pairs.top; pair++) {
        yaml_node_t *kn = yaml_document_get_node(ld->doc, pair->key);
        yaml_node_t *vn = yaml_document_get_node(ld->doc, pair->value);
        if (!kn || !vn) continue;
        if (kn->type != YAML_SCALAR_NODE || strlen((const char *)kn->data.scalar.value) != kn->data.scalar.length) {
            fail(ld, line_of(kn), "key %s: names must be text", path);
            goto fail;
        }
        const char *name = (const char *)kn->data.scalar.value;
        if (config_tree_get(t, name)) {
            fail(ld, line_of(kn), "key %s: '%s' is given twice", path, name);
            goto fail;
        }
        char *key = strdup(name);
        struct config_tree *sub = key ? load_tree(ld, vn, path, depth + 1) : NULL;
        if (!key) fail(ld, line_of(kn), "key %s: out of memory", path);
        if (!sub || config_tree_push(t, key, sub) < 0) {
            if (sub) fail(ld, line_of(kn), "key %s: out of memory", path);
            free(key);
            config_tree_free(sub);
            goto fail;
        }
    }
    return t;
fail:
    config_tree_free(t);
    return NULL;
}

static int load_key(struct load *ld, size_t idx, const yaml_node_t *vn, size_t key_line)
{
    const struct config_key *k = &keys[idx];
    size_t c = canonical(idx);
    if (ld->lines[c]) {
        if (k->alias_of)
            return fail(ld, key_line, "key %s: same setting as %s, already set at line %zu", k->path, k->alias_of,
                        ld->lines[c]);
        return fail(ld, key_line, "key %s: already set at line %zu", k->path, ld->lines[c]);
    }
    ld->lines[c] = key_line;

    if (k->type == KEY_LIST) return load_list(ld, k, vn);
    if (k->type == KEY_MAP) return load_map(ld, k, vn);
    if (k->type == KEY_TREE) {
        struct config_tree **field = field_ptr(ld->cfg, k);
        config_tree_free(*field);
        *field = NULL;
        if (is_null(vn)) return 0;
        if (vn->type != YAML_SEQUENCE_NODE)
            return fail(ld, line_of(vn), "key %s: expected a list, got %s", k->path, node_kind(vn));
        if (!(*field = load_tree(ld, vn, k->path, 0))) return -1;
        if ((*field)->count == 0) {
            config_tree_free(*field);
            *field = NULL;
        }
        return 0;
    }
    if (vn->type != YAML_SCALAR_NODE)
        return fail(ld, line_of(vn), "key %s: expected a scalar, got %s", k->path, node_kind(vn));
    char *text = scalar_value(ld, vn, k->path);
    if (!text) return -1;
    char why[768];
    int rc = set_scalar(ld->cfg, k, text, why, sizeof why);
    free(text);
    if (rc < 0) return fail(ld, line_of(vn), "key %s: %s", k->path, why);
    return 0;
}

static int walk_mapping(struct load *ld, const yaml_node_t *map, const char *prefix)
{
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *kn = yaml_document_get_node(ld->doc, pair->key);
        yaml_node_t *vn = yaml_document_get_node(ld->doc, pair->value);
        if (!kn || !vn) continue;
        size_t line = line_of(kn);
        if (kn->type != YAML_SCALAR_NODE)
            return fail(ld, line, "%s%s: keys must be scalars, got %s", *prefix ? "key " : "top level",
                        prefix, node_kind(kn));
        const char *name = (const char *)kn->data.scalar.value;
        const char *dot = *prefix ? "." : "";
        if (strlen(name) != kn->data.scalar.length)
            return fail(ld, line, "unknown key '%s%s%s'", prefix, dot, name);
        char path[256];
        int n = snprintf(path, sizeof path, "%s%s%s", prefix, dot, name);
        if (n < 0 || (size_t)n >= sizeof path) return fail(ld, line, "unknown key '%s%s%s'", prefix, dot, name);

        int idx = find_key(path);
        if (idx >= 0) {
            if (load_key(ld, (size_t)idx, vn, line) < 0) return -1;
        } else if (is_section(path)) {
            if (vn->type == YAML_MAPPING_NODE) {
                if (walk_mapping(ld, vn, path) < 0) return -1;
            } else if (!is_null(vn)) {
                return fail(ld, line_of(vn), "key %s: expected a mapping, got %s", path, node_kind(vn));
            }
        } else {
            return fail(ld, line, "unknown key '%s'", path);
        }
    }
    return 0;
}

static int validate(struct load *ld)
{
    char why[768];
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct config_key *k = &keys[i];
        if (k->alias_of || !k->check) continue;
        if (k->check(ld->cfg, k, why, sizeof why) < 0) return fail(ld, ld->lines[i], "key %s: %s", k->path, why);
    }
    for (size_t i = 0; i < sizeof relations / sizeof relations[0]; i++) {
        const struct config_relation *r = &relations[i];
        if (r->check(ld->cfg, why, sizeof why) == 0) continue;
        int a = find_key(r->a), b = find_key(r->b);
        size_t la = a >= 0 ? ld->lines[a] : 0, lb = b >= 0 ? ld->lines[b] : 0;
        bool blame_b = lb > la;
        return fail(ld, blame_b ? lb : la, "key %s: %s", blame_b ? r->b : r->a, why);
    }
    return 0;
}

static int yaml_error(struct load *ld, const yaml_parser_t *parser)
{
    switch (parser->error) {
    case YAML_MEMORY_ERROR:
        return fail(ld, 0, "out of memory");
    case YAML_READER_ERROR:
        return fail(ld, 0, "YAML syntax error at byte %zu: %s", parser->problem_offset,
                    parser->problem ? parser->problem : "unreadable input");
    default:
        break;
    }
    const char *problem = parser->problem ? parser->problem : "invalid YAML";
    if (!ld->err || ld->errlen == 0) return -1;
    if (parser->context)
        setf(ld->err, ld->errlen, "%s:%zu:%zu: YAML syntax error: %s (%s at line %zu)", ld->file,
             parser->problem_mark.line + 1, parser->problem_mark.column + 1, problem, parser->context,
             parser->context_mark.line + 1);
    else
        setf(ld->err, ld->errlen, "%s:%zu:%zu: YAML syntax error: %s", ld->file, parser->problem_mark.line + 1,
             parser->problem_mark.column + 1, problem);
    return -1;
}

/* Parses the file and applies it to ld->cfg. */
static int load_file(struct load *ld, FILE *f)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) return fail(ld, 0, "out of memory");
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        int rc = yaml_error(ld, &parser);
        yaml_parser_delete(&parser);
        return rc;
    }
    ld->doc = &doc;
    int rc = 0;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && root->type == YAML_MAPPING_NODE)
        rc = walk_mapping(ld, root, "");
    else if (root && !is_null(root))
        rc = fail(ld, line_of(root), "the top level must be a mapping of keys, got %s", node_kind(root));

    if (rc == 0 && root) {
        /* Only one document: a second one would be silently ignored. */
        yaml_document_t next;
        if (!yaml_parser_load(&parser, &next)) {
            rc = yaml_error(ld, &parser);
        } else {
            yaml_node_t *extra = yaml_document_get_root_node(&next);
            if (extra) rc = fail(ld, line_of(extra), "only one YAML document is allowed");
            yaml_document_delete(&next);
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    ld->doc = NULL;
    return rc;
}

int config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
    struct config work;
    struct load ld = {.file = path ? path : "(null)", .cfg = &work, .err = err, .errlen = errlen};
    if (!path || !*path) return fail(&ld, 0, "cannot open: no file name given");

    FILE *f = fopen(path, "rb");
    if (!f) return fail(&ld, 0, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        return fail(&ld, 0, "cannot open: %s", strerror(EISDIR));
    }

    char why[256];
    if (config_copy(&work, cfg, why, sizeof why) < 0) {
        fclose(f);
        return fail(&ld, 0, "%s", why);
    }
    int rc = load_file(&ld, f);
    fclose(f);
    if (rc == 0) rc = validate(&ld);
    if (rc == 0) {
        char *source = strdup(path);
        if (!source) {
            rc = fail(&ld, 0, "out of memory");
        } else {
            free(work.source_path);
            work.source_path = source;
        }
    }
    if (rc < 0) {
        config_free(&work);
        return -1;
    }
    config_free(cfg);
    *cfg = work;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Printing                                                                 */

/* A YAML double-quoted scalar. `dollar` doubles "$" so that config_load's
 * ${VAR} expansion gives back the same text (values are expanded, keys not). */
static void print_quoted(FILE *out, const char *s, bool dollar)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\n': fputs("\\n", out); break;
        case '\t': fputs("\\t", out); break;
        case '\r': fputs("\\r", out); break;
        case '$': fputs(dollar ? "$$" : "$", out); break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                fprintf(out, "\\x%02x", *p);
            } else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) { /* C1 controls, NEL */
                fprintf(out, "\\x%02x", p[1]);
                p++;
            } else if (p[0] == 0xef && p[1] == 0xbf && (p[2] == 0xbe || p[2] == 0xbf)) { /* non-characters */
                fputs(p[2] == 0xbe ? "\\uFFFE" : "\\uFFFF", out);
                p += 2;
            } else if (p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9)) { /* LS, PS */
                fputs(p[2] == 0xa8 ? "\\L" : "\\P", out);
                p += 2;
            } else if (p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf) { /* BOM */
                fputs("\\uFEFF", out);
                p += 2;
            } else {
                fputc(*p, out);
            }
        }
    }
    fputc('"', out);
}

static void print_value(const struct config *cfg, const struct config_key *k, FILE *out, int indent)
{
    const void *field = cfield_ptr(cfg, k);
    char buf[64];
    if (k->type == KEY_TREE) {
        fputc(' ', out);
        config_tree_print(*(struct config_tree *const *)field, out);
        fputc('\n', out);
        return;
    }
    bool block = (k->type == KEY_LIST && ((const struct config_strlist *)field)->count) ||
                 (k->type == KEY_MAP && ((const struct config_strmap *)field)->count);
    if (!block) fputc(' ', out); /* "key: value"; a block list/map starts on the next line */
    switch (k->type) {
    case KEY_STRING:
        print_quoted(out, *(char *const *)field, true);
        fputc('\n', out);
        break;
    case KEY_BOOL:
        fputs(*(const bool *)field ? "true\n" : "false\n", out);
        break;
    case KEY_INT:
    case KEY_SIZE:
    case KEY_DURATION:
        format_number(k, *(const int64_t *)field, buf, sizeof buf);
        fprintf(out, "%s\n", buf);
        break;
    case KEY_ENUM: {
        int v = *(const int *)field;
        const char *name = NULL;
        for (const struct enum_value *e = k->values; e->name; e++)
            if (e->value == v) name = e->name;
        fprintf(out, "%s\n", name ? name : "~");
        break;
    }
    case KEY_ENUM_TEXT: {
        const char *s = *(char *const *)field; /* a name from the table: plain is safe */
        fprintf(out, "%s\n", s ? s : k->def);
        break;
    }
    case KEY_LIST: {
        const struct config_strlist *l = field;
        if (l->count == 0) {
            fputs("[]\n", out);
            break;
        }
        fputc('\n', out);
        for (size_t i = 0; i < l->count; i++) {
            fprintf(out, "%*s- ", indent + 2, "");
            print_quoted(out, l->items[i], true);
            fputc('\n', out);
        }
        break;
    }
    case KEY_TREE: /* printed above */
        break;
    case KEY_MAP: {
        const struct config_strmap *m = field;
        if (m->count == 0) {
            fputs("{}\n", out);
            break;
        }
        fputc('\n', out);
        for (size_t i = 0; i < m->count; i++) {
            fprintf(out, "%*s", indent + 2, "");
            print_quoted(out, m->keys[i], false);
            fputs(": ", out);
            print_quoted(out, m->values[i], true);
            fputc('\n', out);
        }
        break;
    }
    }
}

/* Prints every key under `prefix` (e.g. "output.loki."), grouping sections
 * where they first appear in the table, so the output is valid nested YAML
 * whatever the order of rows. */
static void print_section(const struct config *cfg, FILE *out, const char *prefix, int indent)
{
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct config_key *k = &keys[i];
        if (k->alias_of || strncmp(k->path, prefix, plen) != 0) continue;
        const char *rest = k->path + plen;
        const char *dot = strchr(rest, '.');
        if (!dot) {
            fprintf(out, "%*s%s:", indent, "", rest);
            print_value(cfg, k, out, indent);
            continue;
        }
        char sub[256];
        snprintf(sub, sizeof sub, "%.*s", (int)(dot + 1 - k->path), k->path);
        size_t slen = strlen(sub);
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = !keys[j].alias_of && strncmp(keys[j].path, sub, slen) == 0;
        if (seen) continue;
        fprintf(out, "%*s%.*s:\n", indent, "", (int)(dot - rest), rest);
        print_section(cfg, out, sub, indent + 2);
    }
}

void config_print(const struct config *cfg, FILE *out) { print_section(cfg, out, "", 0); }

static const char *type_name(const struct config_key *k)
{
    switch (k->type) {
    case KEY_STRING: return "string";
    case KEY_BOOL: return "bool";
    case KEY_INT: return "int";
    case KEY_SIZE: return "size";
    case KEY_DURATION: return "duration";
    case KEY_ENUM:
    case KEY_ENUM_TEXT: return "enum";
    case KEY_LIST: return "list of strings";
    case KEY_MAP: return "map of strings";
    case KEY_TREE: return "list of match blocks";
    }
    return "?";
}

void config_print_reference(FILE *out)
{
    fputs("| Key | Type | Default | Description |\n", out);
    fputs("|-----|------|---------|-------------|\n", out);
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct config_key *k = &keys[i];
        fprintf(out, "| `%s` | %s", k->path, type_name(k));
        if (k->type == KEY_ENUM || k->type == KEY_ENUM_TEXT) {
            char names[256];
            enum_names(k, names, sizeof names);
            fprintf(out, " (%s)", names);
        } else if (k->type == KEY_INT) {
            fprintf(out, " (%lld..%lld)", (long long)k->min, (long long)k->max);
        }
        fputs(" | ", out);
        if (k->alias_of) {
            fprintf(out, "| Same as `%s`. |\n", k->alias_of);
            continue;
        }
        if (k->type == KEY_STRING)
            fprintf(out, "`\"%s\"`", k->def);
        else if (k->type == KEY_LIST && *k->def) {
            fputs("`[", out);
            for (const char *p = k->def; *p;) {
                size_t n = strcspn(p, " ");
                fprintf(out, "%s\"%.*s\"", p == k->def ? "" : ", ", (int)n, p);
                p += n;
                p += strspn(p, " ");
            }
            fputs("]`", out);
        }
        else if (k->type == KEY_LIST)
            fputs("`[]`", out);
        else if (k->type == KEY_MAP)
            fputs("`{}`", out);
        else if (k->type == KEY_TREE)
            fputs("`[]`", out);
        else
            fprintf(out, "`%s`", k->def);
        fprintf(out, " | %s |\n", k->doc);
    }
}
