/*
 * loglet — tails the kubelet's container logs and ships them to Loki (or
 * prints them). This file only parses flags, wires the modules together and
 * turns signals into an orderly shutdown.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "api/api.h"
#include "archive/archive.h"
#include "api/status_page.h"
#include "api/tail_cli.h"
#include "pipeline/pipeline.h"
#include "collector/collector.h"
#include "config/config.h"
#include "httpd/httpd.h"
#include "log/log.h"
#include "loki/loki.h"
#include "metadata/metadata.h"
#include "metrics/metrics.h"
#include "output/livetail.h"
#include "output/output.h"
#include "ring/ring.h"

/* A thread silent for this long fails /healthz (each beats at least every 500 ms). */
#define LIVENESS_MAX_SILENCE_MS 15000

struct options {
    const char *config_path;
    bool check_config;
    const char *pipeline_test; /* a file to read through the pipeline */
    struct pipeline_meta meta;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: loglet [-config FILE] [-check-config] [-version] [-help]\n"
            "       loglet tail [flags]   (the node's container logs from the agent's API; tail -h)\n"
            "\n"
            "Tails Kubernetes container logs (/var/log/containers/*.log) and ships each line,\n"
            "labelled with namespace, pod and container, to Grafana Loki; prints them to\n"
            "stdout when no Loki URL is configured.\n"
            "\n"
            "  -config FILE     YAML configuration (also --config FILE, -config=FILE)\n"
            "  -check-config    validate the configuration, print the effective one, exit 0 or 1\n"
            "  -config-reference  print every setting with its default as a Markdown table\n"
            "  -pipeline-test FILE [-namespace NS] [-pod POD] [-container C]\n"
            "                   read FILE through the pipeline stages that metadata selects and\n"
            "                   print what would be sent\n"
            "  -version         print the version and exit\n"
            "  -help            this text\n");
}

/* Returns -1 to exit 2 (usage error), 1 to exit 0 (help/version), 0 to run. */
static int parse_flags(int argc, char **argv, struct options *opts)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (arg[0] == '-' && arg[1] == '-') arg++; /* --flag == -flag */
        if (strcmp(arg, "-config") == 0) {
            if (++i >= argc) {
                fprintf(stderr, "loglet: -config needs a file name\n");
                return -1;
            }
            opts->config_path = argv[i];
        } else if (strncmp(arg, "-config=", 8) == 0) {
            opts->config_path = arg + 8;
        } else if (strcmp(arg, "-check-config") == 0) {
            opts->check_config = true;
        } else if (strcmp(arg, "-pipeline-test") == 0 || strcmp(arg, "-namespace") == 0 ||
                   strcmp(arg, "-pod") == 0 || strcmp(arg, "-container") == 0) {
            if (++i >= argc) {
                fprintf(stderr, "loglet: %s needs a value\n", argv[i - 1]);
                return -1;
            }
            const char **slot = strcmp(arg, "-pipeline-test") == 0 ? &opts->pipeline_test
                                : strcmp(arg, "-namespace") == 0     ? &opts->meta.namespace_
                                : strcmp(arg, "-pod") == 0           ? &opts->meta.pod
                                                                     : &opts->meta.container;
            *slot = argv[i];
        } else if (strcmp(arg, "-config-reference") == 0) {
            config_print_reference(stdout);
            return 1;
        } else if (strcmp(arg, "-version") == 0) {
            printf("loglet %s\n", LOGLET_VERSION);
            return 1;
        } else if (strcmp(arg, "-help") == 0 || strcmp(arg, "-h") == 0) {
            usage(stdout);
            return 1;
        } else {
            fprintf(stderr, "loglet: unknown flag %s\n", argv[i]);
            usage(stderr);
            return -1;
        }
    }
    return 0;
}

struct agent {
    struct config cfg;
    struct ring *ring;
    struct collector *collector;
    struct output *output;
    struct httpd *httpd;
    struct metadata_provider *metadata;
    struct livetail *livetail;
    struct api *api;
    struct api_status_env status;
};

static int probe_healthy(void *ctx, char *reason, size_t len)
{
    (void)ctx;
    const char *stalled = metrics_stalled(LIVENESS_MAX_SILENCE_MS);
    if (!stalled) return 1;
    snprintf(reason, len, "%s thread made no progress for %d s", stalled, LIVENESS_MAX_SILENCE_MS / 1000);
    return 0;
}

/* Ready: the collector watches its paths, and the output is not failing
 * persistently (pushes failing without a break for output.loki.unready_after). */
static int probe_ready(void *ctx, char *reason, size_t len)
{
    struct agent *agent = ctx;
    if (!agent->collector || !collector_is_watching(agent->collector)) {
        snprintf(reason, len, "collector is not watching yet");
        return 0;
    }
    int64_t since = atomic_load(&metrics.push_failing_since_ms);
    int64_t limit = agent->cfg.output.loki.unready_after_ms;
    if (since && limit && metrics_now_ms() - since >= limit) {
        snprintf(reason, len, "pushes to Loki have been failing for %lld s", (long long)(metrics_now_ms() - since) / 1000);
        return 0;
    }
    /* The archive's uploads, by the same limit: a store that refuses every
     * object holds every file's position as surely as a failing Loki. */
    since = atomic_load(&metrics.archive_failing_since_ms);
    if (since && limit && metrics_now_ms() - since >= limit) {
        snprintf(reason, len, "uploads to the archive have been failing for %lld s",
                 (long long)(metrics_now_ms() - since) / 1000);
        return 0;
    }
    return 1;
}

static size_t probe_metrics(void *ctx, char *buf, size_t cap)
{
    (void)ctx;
    return metrics_render(buf, cap);
}

static size_t probe_status(void *ctx, char *buf, size_t cap)
{
    struct agent *agent = ctx;
    return api_status_render(&agent->status, buf, cap);
}

static int setup_logging(const struct config *cfg)
{
    enum log_level level;
    if (log_level_parse(cfg->log.level, &level) != 0) {
        fprintf(stderr, "loglet: log.level: unknown level '%s'\n", cfg->log.level);
        return -1;
    }
    log_setup(level, strcmp(cfg->log.format, "json") == 0 ? LOG_FORMAT_JSON : LOG_FORMAT_LOGFMT);
    return 0;
}

static int start(struct agent *agent, char *err, size_t errlen)
{
    const struct config *cfg = &agent->cfg;
    agent->ring = ring_create((size_t)cfg->buffer.max_bytes);
    if (!agent->ring) {
        snprintf(err, errlen, "cannot allocate the %lld-byte ring buffer", (long long)cfg->buffer.max_bytes);
        return -1;
    }
    metrics_set(ring_capacity_bytes, (int64_t)ring_capacity(agent->ring));
    agent->output = output_create(cfg, agent->ring, err, errlen);
    if (!agent->output) return -1;
    agent->collector = collector_create(cfg, agent->ring, err, errlen);
    if (!agent->collector) return -1;
    /* Before the first scan, so files found at start are labelled too; its
     * watch runs on its own threads and never holds up the start. */
    agent->metadata = metadata_create(cfg, err, errlen);
    if (!agent->metadata) return -1;
    collector_use_metadata(agent->collector, agent->metadata);
    if (cfg->server.api.socket[0] || cfg->server.api.listen_address[0]) {
        agent->livetail = livetail_create((size_t)cfg->server.api.max_subscribers,
                                          (size_t)cfg->server.api.subscriber_buffer_bytes);
        if (!agent->livetail) {
            snprintf(err, errlen, "cannot allocate the live tail");
            return -1;
        }
        agent->api = api_start(cfg, agent->livetail, agent->collector, err, errlen);
        if (!agent->api && err[0]) return -1;
        if (agent->api) collector_set_livetail(agent->collector, agent->livetail);
        if (agent->api && strcmp(agent->metadata->ops->name, "kubernetes") == 0)
            api_set_job_label(agent->api, metadata_job_name, agent->metadata);
    }

    struct httpd_options http = {
        .address = cfg->server.http_listen_address,
        .port = (int)cfg->server.http_listen_port,
        .max_connections = (int)cfg->server.max_connections,
        .request_timeout_ms = (int)cfg->server.request_timeout_ms,
    };
    agent->status = (struct api_status_env){cfg, agent->collector, agent->api ? agent->livetail : NULL,
                                            metrics_now_ms()};
    struct httpd_handlers handlers = {agent, probe_healthy, probe_ready, probe_metrics, probe_status};
    agent->httpd = httpd_start(&http, &handlers, err, errlen);
    if (!agent->httpd) return -1;
    log_info("probes and metrics on http://%s:%d", cfg->server.http_listen_address, httpd_port(agent->httpd));

    if (output_start(agent->output, err, errlen) != 0) return -1;
    if (collector_start(agent->collector, err, errlen) != 0) return -1;
    return 0;
}

/* Stop reading, let the output deliver what the ring holds, then close. */
static int stop(struct agent *agent)
{
    int rc = 0;
    api_stop(agent->api); /* followers end first: they only read */
    agent->api = NULL;
    if (agent->collector) collector_stop(agent->collector);
    if (agent->ring) ring_close(agent->ring);
    if (agent->output && output_finish(agent->output, agent->cfg.output.shutdown_grace_ms) != 0) {
        log_warn("shutdown grace period (%lld ms) ended before every line was delivered; the rest is sent "
                 "after the next start",
                 (long long)agent->cfg.output.shutdown_grace_ms);
        rc = 0; /* not an error of ours: the unacknowledged lines are still on disk */
    }
    if (agent->collector) collector_save_positions(agent->collector);
    if (agent->httpd) httpd_stop(agent->httpd);
    collector_destroy(agent->collector);
    output_destroy(agent->output);
    metadata_destroy(agent->metadata); /* after every source that describes from it */
    livetail_destroy(agent->livetail);
    ring_destroy(agent->ring);
    return rc;
}

static int wait_for_signal(const sigset_t *signals)
{
    for (;;) {
        struct timespec tick = {1, 0};
        siginfo_t info;
        int sig = sigtimedwait(signals, &info, &tick);
        if (sig == SIGTERM || sig == SIGINT) return sig;
        if (sig < 0 && errno != EAGAIN && errno != EINTR) {
            log_error("waiting for signals: %s", strerror(errno));
            return -1;
        }
    }
}

/* Every file tailed or held is a descriptor: a node with thousands of
 * containers, or a catch-up after downtime, must not meet the soft limit of
 * 1024 while the hard limit allows more. */
static void raise_descriptor_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        log_warn("cannot raise the open files limit from %llu: %s", (unsigned long long)was, strerror(errno));
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "tail") == 0) {
        signal(SIGPIPE, SIG_IGN);
        return api_tail_main(argc - 1, argv + 1);
    }
    if (argc >= 2 && strcmp(argv[1], "archive") == 0) {
        signal(SIGPIPE, SIG_IGN);
        return archive_cli_main(argc - 1, argv + 1);
    }
    struct options opts = {0};
    int flags = parse_flags(argc, argv, &opts);
    if (flags != 0) return flags < 0 ? 2 : 0;

    struct agent agent = {0};
    char err[1024];
    config_defaults(&agent.cfg);
    if (opts.config_path && config_load(&agent.cfg, opts.config_path, err, sizeof err) != 0) {
        fprintf(stderr, "loglet: invalid configuration: %s\n", err);
        config_free(&agent.cfg);
        return 1;
    }
    if (setup_logging(&agent.cfg) != 0) {
        config_free(&agent.cfg);
        return 1;
    }
    if (opts.pipeline_test) {
        if (!opts.meta.namespace_) opts.meta.namespace_ = "";
        if (!opts.meta.pod) opts.meta.pod = "";
        if (!opts.meta.container) opts.meta.container = "";
        int rc = pipeline_dry_run(&agent.cfg, opts.pipeline_test, &opts.meta, stdout, err, sizeof err);
        if (rc != 0) fprintf(stderr, "loglet: %s\n", err);
        config_free(&agent.cfg);
        return rc != 0;
    }
    if (opts.check_config) {
        struct pipeline *p = pipeline_create(&agent.cfg, err, sizeof err);
        if (!p) {
            fprintf(stderr, "loglet: invalid configuration: %s\n", err);
            config_free(&agent.cfg);
            return 1;
        }
        printf("# configuration is valid; effective values:\n");
        config_print(&agent.cfg, stdout);
        printf("# the pipeline as compiled, every default filled in:\n");
        pipeline_print(p, stdout, "# ");
        pipeline_destroy(p);
        config_free(&agent.cfg);
        return 0;
    }

    /* Every thread inherits this mask; only the main thread takes the
     * signals, synchronously, so no handler runs in the middle of a write. */
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGHUP);
    if (pthread_sigmask(SIG_BLOCK, &signals, NULL) != 0 || signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        fprintf(stderr, "loglet: cannot set up signal handling\n");
        config_free(&agent.cfg);
        return 1;
    }

    raise_descriptor_limit();
    char shown_url[1024];
    loki_url_redacted(agent.cfg.output.loki.url, shown_url, sizeof shown_url);
    char outputs[2200];
    snprintf(outputs, sizeof outputs, "%s%s%s", agent.cfg.output.loki.url[0] ? shown_url : "",
             agent.cfg.output.loki.url[0] && agent.cfg.output.archive.url[0] ? " and archive " : "",
             agent.cfg.output.archive.url[0] ? agent.cfg.output.archive.url : "");
    log_info("loglet %s starting, config %s, output %s", LOGLET_VERSION,
             opts.config_path ? opts.config_path : "(defaults)", outputs[0] ? outputs : "stdout");
    int rc = 0;
    if (start(&agent, err, sizeof err) != 0) {
        log_error("cannot start: %s", err);
        rc = 1;
    } else {
        int sig = wait_for_signal(&signals);
        log_info("received %s, shutting down", sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "error");
    }
    if (stop(&agent) != 0) rc = 1;
    config_free(&agent.cfg);
    log_info("stopped");
    return rc;
}
