/*
 * Discovery: which files to tail. The configured globs name the kubelet's
 * links (/var/log/containers/NAME.log); a match is tailed when its target
 * resolves inside the symlink roots, its namespace/pod/container are not
 * excluded, and it can be opened. A file that cannot be tailed is said once
 * (per reason), not at every rescan.
 *
 * Globs are expanded at start, when their directory reports a new entry,
 * and every RESCAN_INTERVAL_MS (every poll_interval when polled) as a
 * safety net for events the kernel could not deliver.
 */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <glob.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "collector_internal.h"
#include "log/log.h"
#include "metrics/metrics.h"

struct reported_path {
    char *path;
    int reason;
    /* DISCOVERY_EXCLUDED_BY_ANNOTATION only, else NULL: where its file was
     * when the exclusion stopped it (or where the positions file had it at
     * start), kept in the positions file (discovery_save_excluded) so that a
     * restart resumes there unless it is still excluded. NULL: never read.
     * Owns its strings. */
    struct position *excluded_at;
};

static void free_excluded_at(struct reported_path *r)
{
    if (!r->excluded_at) return;
    free(r->excluded_at->path);
    free(r->excluded_at->real_path);
    free(r->excluded_at);
    r->excluded_at = NULL;
}

void discovery_report_once(struct collector *c, const char *path, int reason, const char *fmt, ...)
{
    struct reported_path *r = table_get_str(&c->reported, path);
    if (r && r->reason == reason) return;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (r && !(r->path = strdup(path))) {
            free(r);
            r = NULL;
        }
        if (r && table_put_str(&c->reported, r->path, r) != 0) {
            free(r->path);
            free(r);
            r = NULL;
        }
    }
    if (r && reason != DISCOVERY_EXCLUDED_BY_ANNOTATION) free_excluded_at(r);
    if (r) r->reason = reason;
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(LOG_LEVEL_WARN, fmt, ap);
    va_end(ap);
}

void discovery_forget_report(struct collector *c, const char *path)
{
    struct reported_path *r = table_get_str(&c->reported, path);
    if (!r) return;
    table_del_str(&c->reported, path);
    free_excluded_at(r);
    free(r->path);
    free(r);
}

void discovery_note_excluded_at(struct collector *c, const char *path, const struct position *at)
{
    struct reported_path *r = table_get_str(&c->reported, path);
    if (!r || r->reason != DISCOVERY_EXCLUDED_BY_ANNOTATION) return;
    free_excluded_at(r);
    struct position *copy = malloc(sizeof *copy);
    if (copy) {
        *copy = *at;
        copy->excluded = true;
        copy->done = copy->renamed = false;
        copy->path = strdup(at->path);
        copy->real_path = strdup(at->real_path);
    }
    if (!copy || !copy->path || !copy->real_path) {
        if (copy) {
            free(copy->path);
            free(copy->real_path);
        }
        free(copy);
        log_error("out of memory keeping where %s was excluded: a restart with the API server down reads it from "
                  "its beginning", path);
        return;
    }
    r->excluded_at = copy;
}

int discovery_save_excluded(struct collector *c, struct positions *ps)
{
    size_t cursor = 0;
    for (struct reported_path *r; (r = table_next(&c->reported, &cursor));) {
        if (!r->excluded_at) continue;
        /* The pod is gone with its link: nothing to resume. */
        struct stat st;
        if (lstat(r->path, &st) != 0) continue;
        /* Its last lines are still in flight: the retired source's entry,
         * at the acknowledged offset, is the one a restart must resume
         * from (the two would name one file). */
        bool in_flight = false;
        for (size_t i = 0; i < c->nretired && !in_flight; i++)
            in_flight = (uint64_t)c->retired[i]->dev == r->excluded_at->dev &&
                        (uint64_t)c->retired[i]->ino == r->excluded_at->ino;
        if (!in_flight && positions_add(ps, r->excluded_at) != 0) return -1;
    }
    return 0;
}

bool discovery_excluded_by_annotation(struct collector *c, const char *path)
{
    const struct reported_path *r = table_get_str(&c->reported, path);
    return r && r->reason == DISCOVERY_EXCLUDED_BY_ANNOTATION;
}

void discovery_recheck_excluded(struct collector *c)
{
    /* Copied first: opening a path takes it out of the table. Few paths
     * (the files of excluded pods), looked at when metadata changed. */
    size_t n = 0, cap = 0;
    char **paths = NULL;
    size_t cursor = 0;
    for (struct reported_path *r; (r = table_next(&c->reported, &cursor));) {
        if (r->reason != DISCOVERY_EXCLUDED_BY_ANNOTATION) continue;
        if (n == cap) {
            size_t grown_cap = cap ? cap * 2 : 16;
            char **grown = realloc(paths, grown_cap * sizeof *grown);
            if (!grown) {
                log_error("out of memory looking at excluded files again: the others wait for the next rescan");
                break;
            }
            paths = grown;
            cap = grown_cap;
        }
        if (!(paths[n] = strdup(r->path))) {
            log_error("out of memory looking at excluded files again: the others wait for the next rescan");
            break;
        }
        n++;
    }
    for (size_t i = 0; i < n; i++) {
        discovery_open(c, paths[i], false, NULL);
        free(paths[i]);
    }
    free(paths);
}

/* A planted symlink (to /etc/shadow, say) must not make the agent read and
 * ship a file outside the log directories. */
static bool inside_roots(const struct collector *c, const char *real)
{
    for (size_t i = 0; i < c->nroots; i++) {
        size_t len = strlen(c->roots[i]);
        if (len == 1 && c->roots[i][0] == '/') return true;
        if (strncmp(real, c->roots[i], len) == 0 && (real[len] == '/' || real[len] == '\0')) return true;
    }
    return false;
}

static int add_root(struct collector *c, const char *dir)
{
    char resolved[PATH_MAX];
    const char *use = realpath(dir, resolved) ? resolved : dir; /* may not exist yet */
    for (size_t i = 0; i < c->nroots; i++)
        if (strcmp(c->roots[i], use) == 0) return 0;
    char **grown = realloc(c->roots, (c->nroots + 1) * sizeof *grown);
    if (!grown) return -1;
    c->roots = grown;
    if (!(c->roots[c->nroots] = strdup(use))) return -1;
    c->nroots++;
    return 0;
}

/* Default roots: each glob's directory (up to its first wildcard) and the
 * `pods` directory beside it, where the kubelet's symlinks point. */
static int setup_roots(struct collector *c, char *err, size_t errlen)
{
    const struct config_strlist *roots = &c->cfg->collection.symlink_roots;
    for (size_t i = 0; i < roots->count; i++) {
        if (roots->items[i][0] != '/') {
            snprintf(err, errlen, "collection.symlink_roots: '%s' is not an absolute path", roots->items[i]);
            return -1;
        }
        if (add_root(c, roots->items[i]) != 0) goto oom;
    }
    if (roots->count) return 0;
    for (size_t i = 0; i < c->nglobs; i++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", c->globs[i].dir);
        char *wild = strpbrk(dir, "*?[");
        if (wild) {
            *wild = '\0';
            char *slash = strrchr(dir, '/');
            if (slash) *(slash == dir ? slash + 1 : slash) = '\0';
        }
        if (add_root(c, dir) != 0) goto oom;
        char pods[PATH_MAX + 8];
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            snprintf(pods, sizeof pods, "%s/pods", dir);
            if (add_root(c, pods) != 0) goto oom;
        }
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

int discovery_setup(struct collector *c, char *err, size_t errlen)
{
    const struct config_strlist *paths = &c->cfg->collection.paths;
    c->globs = calloc(paths->count ? paths->count : 1, sizeof *c->globs);
    if (!c->globs) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < paths->count; i++) {
        const char *pattern = paths->items[i];
        const char *slash = strrchr(pattern, '/');
        if (pattern[0] != '/' || !slash) {
            snprintf(err, errlen, "collection.paths: '%s' is not an absolute path", pattern);
            return -1;
        }
        struct glob_spec *g = &c->globs[c->nglobs++];
        g->pattern = strdup(pattern);
        g->dir = slash == pattern ? strdup("/") : strndup(pattern, (size_t)(slash - pattern));
        g->base = strdup(slash + 1);
        if (!g->pattern || !g->dir || !g->base) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        g->dir_has_wildcards = strpbrk(g->dir, "*?[") != NULL;
    }
    return setup_roots(c, err, errlen);
}

bool discovery_matches(const struct collector *c, const char *path)
{
    for (size_t i = 0; i < c->nglobs; i++)
        if (fnmatch(c->globs[i].pattern, path, FNM_PATHNAME) == 0) return true;
    return false;
}

static bool name_excluded(const struct config_strlist *patterns, const char *name)
{
    for (size_t i = 0; i < patterns->count; i++)
        if (fnmatch(patterns->items[i], name, 0) == 0) return true;
    return false;
}

static bool file_excluded(const struct collector *c, const struct parser_path_meta *meta)
{
    const struct config *cfg = c->cfg;
    return name_excluded(&cfg->collection.exclude_namespaces, meta->namespace_) ||
           name_excluded(&cfg->collection.exclude_pods, meta->pod) ||
           name_excluded(&cfg->collection.exclude_containers, meta->container);
}

/* Opens the file a glob match names. Files seen at start-up resume at their
 * saved position (positions_policy); later ones at their start, since all
 * of them is new; a file whose pod's exclusion was lifted at its end. */
void discovery_open(struct collector *c, const char *link_path, bool at_startup, struct tailed_file *predecessor)
{
    if (table_get_str(&c->files_by_path, link_path)) return;

    char real[PATH_MAX];
    if (!realpath(link_path, real)) {
        if (errno == ENOENT)
            discovery_report_once(c, link_path, ENOENT, "skipping %s: it is a dangling symlink or vanished", link_path);
        else
            discovery_report_once(c, link_path, errno, "skipping %s: %s", link_path, strerror(errno));
        return;
    }
    if (!inside_roots(c, real)) {
        metrics_add(file_errors, 1);
        discovery_report_once(c, link_path, EPERM,
                              "refusing %s: it resolves to %s, outside collection.symlink_roots (%s%s)", link_path,
                              real, c->nroots ? c->roots[0] : "", c->nroots > 1 ? ", …" : "");
        return;
    }
    struct parser_path_meta meta;
    parser_path_meta(link_path, real, &meta);
    const char *why_excluded;
    bool was_excluded = discovery_excluded_by_annotation(c, link_path);
    if (metadata_excluded(c, &meta, was_excluded, &why_excluded)) {
        if (!table_get_str(&c->reported, link_path)) metrics_add(files_excluded, 1);
        discovery_report_once(c, link_path, DISCOVERY_EXCLUDED_BY_ANNOTATION, "not tailing %s: %s", link_path,
                              why_excluded);
        /* Excluded while loglet was down, or still: where it was is kept
         * for the next start, as if it had been excluded while read. */
        const struct position *saved = at_startup ? positions_policy_saved_entry(c, link_path) : NULL;
        if (saved) discovery_note_excluded_at(c, link_path, saved);
        return;
    }
    if (file_excluded(c, &meta)) {
        if (!table_get_str(&c->reported, link_path)) metrics_add(files_excluded, 1);
        discovery_report_once(c, link_path, DISCOVERY_EXCLUDED_BY_PATTERN,
                              "not tailing %s: excluded by namespace/pod/container pattern",
                              link_path);
        return;
    }
    int fd = open(real, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        metrics_add(file_errors, 1);
        discovery_report_once(c, link_path, errno, "cannot open %s (%s): %s", link_path, real, strerror(errno));
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        discovery_report_once(c, link_path, EINVAL, "skipping %s (%s): not a regular file", link_path, real);
        close(fd);
        return;
    }
    uint64_t offset = 0;
    /* Its pod was excluded and no longer is: what the file holds, and the
     * files it rotated meanwhile, were written while it was excluded and
     * are not wanted. It is read from where it is now, like a file that was
     * being tailed all along and skipped those lines. */
    bool exclusion_lifted = !predecessor && was_excluded;
    if (exclusion_lifted) {
        rotation_forget_awaited(c, link_path);
        offset = (uint64_t)st.st_size;
    } else if (at_startup) {
        offset = positions_policy_resume(c, link_path, real, fd, &st, &predecessor);
    } else if (!predecessor && (predecessor = rotation_awaited(c, link_path, real))) {
        /* Its file was renamed away and read before this one appeared: the
         * files rotated in between come first. */
    } else if (!predecessor && !positions_policy_known(c, link_path)) {
        /* Found late (a polled directory, a link made after the pod started
         * writing): it may have rotated already, and all of it is new. A
         * path the positions listed had its rotated files taken care of at
         * start (positions_policy_resume_orphans): this file is just new. */
        predecessor = catchup_open(c, link_path, real, NULL, 0, false, NULL, NULL);
    }
    struct tailed_file *f = rotation_track(c, link_path, real, fd, NULL, &st, offset);
    if (!f) {
        close(fd);
        return;
    }
    if (table_put_str(&c->files_by_path, f->src->path, f) != 0) {
        log_error("out of memory indexing %s", link_path);
        rotation_begin_draining(c, f, "out of memory");
    } else {
        f->in_path_index = true;
    }
    discovery_forget_report(c, link_path);
    log_info("tailing %s (%s) from offset %llu%s%s", link_path, real, (unsigned long long)f->offset,
             f->dir && f->dir->wd >= 0 ? "" : ", polled",
             exclusion_lifted ? ": its pod is no longer excluded; what it wrote while excluded is skipped" : "");
    if (predecessor) {
        predecessor->successor = f;
        f->waiting = true;
    } else {
        collector_mark_pending(c, f);
    }
    positions_policy_dirty(c);
}

void discovery_link_event(struct collector *c, struct watch_dir *dir, const char *name, bool created)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir->path, name) >= sizeof path) return;
    if (created) {
        for (size_t i = 0; i < c->nglobs; i++) {
            const struct glob_spec *g = &c->globs[i];
            if (!g->dir_has_wildcards && strcmp(g->dir, dir->path) == 0 && fnmatch(g->base, name, 0) == 0) {
                discovery_open(c, path, false, NULL);
                break;
            }
        }
        return;
    }
    discovery_forget_report(c, path);
    rotation_forget_awaited(c, path);
    struct tailed_file *f = table_get_str(&c->files_by_path, path);
    if (f) rotation_begin_draining(c, f, "its path was removed");
}

static void scan_glob(struct collector *c, struct glob_spec *g, bool at_startup)
{
    if (!g->dir_has_wildcards) rotation_dir(c, g->dir, true);
    glob_t matches;
    int rc = glob(g->pattern, GLOB_NOSORT, NULL, &matches);
    if (rc == GLOB_NOMATCH) return;
    if (rc != 0) {
        discovery_report_once(c, g->pattern, rc, "cannot expand %s: %s", g->pattern,
                              rc == GLOB_NOSPACE ? "out of memory" : "read error");
        return;
    }
    for (size_t i = 0; i < matches.gl_pathc; i++) discovery_open(c, matches.gl_pathv[i], at_startup, NULL);
    globfree(&matches);
}

void discovery_scan(struct collector *c, bool at_startup)
{
    for (size_t i = 0; i < c->nglobs; i++) scan_glob(c, &c->globs[i], at_startup);
    c->rescan_needed = false;
    c->last_rescan_ms = metrics_now_ms();
}

void discovery_teardown(struct collector *c)
{
    size_t cursor = 0;
    for (struct reported_path *r; (r = table_next(&c->reported, &cursor));) {
        free_excluded_at(r);
        free(r->path);
        free(r);
    }
    table_free(&c->reported);
    for (size_t i = 0; i < c->nglobs; i++) {
        free(c->globs[i].pattern);
        free(c->globs[i].dir);
        free(c->globs[i].base);
    }
    free(c->globs);
    for (size_t i = 0; i < c->nroots; i++) free(c->roots[i]);
    free(c->roots);
}
