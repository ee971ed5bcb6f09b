"""The deployment files: Dockerfile, deployments/kubernetes/ and the Helm chart.

Without helm or a cluster, this checks what can be checked here:
  - every YAML file under deployments/ and helm/ passes `yamllint -d relaxed`
    (the chart's templates, which are Go templates, get a template check
    instead: balanced actions and blocks, every .Values path they use exists
    in values.yaml, every include names a defined template);
  - the configurations they ship pass `loglet -check-config`: the one in
    deployments/kubernetes/configmap.yaml (with the environment the DaemonSet
    gives it), the Dockerfile's default one, and the chart's rendered for
    several value sets (see ChartConfigTest for how it is rendered without helm);
  - the files agree with each other (Dockerfile build packages and
    scripts/setup.sh, chart defaults and plain manifests, mounts and paths);
  - with LOGLET_IMAGE_TEST=1 (as root): the image is built with podman and run
    against a kubelet-style tree, as a user would run it and as Kubernetes does.
"""
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import warnings

import yaml

from harness import LOGLET_BIN, SOURCE_DIR, KubeletTree

CHART = os.path.join(SOURCE_DIR, "helm", "loglet")
TEMPLATES = os.path.join(CHART, "templates")
K8S = os.path.join(SOURCE_DIR, "deployments", "kubernetes")
DOCKERFILE = os.path.join(SOURCE_DIR, "Dockerfile")

# The environment the DaemonSet gives the agent (deployments/kubernetes/daemonset.yaml).
POD_ENV = {"NODE_NAME": "node-1", "POD_NAME": "loglet-x7k2p"}


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def project_version():
    m = re.search(r"project\(loglet VERSION ([0-9.]+)", read(os.path.join(SOURCE_DIR, "CMakeLists.txt")))
    return m.group(1)


def check_config(test, text, env=None):
    """Runs `loglet -check-config` on the text; returns the effective configuration (parsed)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="loglet-deploy-", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        run_env = {k: v for k, v in os.environ.items() if k not in ("LOKI_URL", "NODE_NAME", "POD_NAME")}
        run_env.update(env or {})
        r = subprocess.run([LOGLET_BIN, "-check-config", "-config", path], capture_output=True, text=True,
                           env=run_env, timeout=20)
    finally:
        os.unlink(path)
    test.assertEqual(r.returncode, 0, f"-check-config failed: {r.stderr}\n--- config:\n{text}")
    return yaml.safe_load(r.stdout)


def yaml_files():
    """YAML files under deployments/ and helm/, except the chart's templates."""
    found = []
    for top in ("deployments", "helm"):
        for root, dirs, files in os.walk(os.path.join(SOURCE_DIR, top)):
            dirs[:] = sorted(d for d in dirs if os.path.join(root, d) != TEMPLATES)
            found += [os.path.join(root, f) for f in sorted(files) if f.endswith((".yaml", ".yml"))]
    return found


# --------------------------------------------------------------------------
# Go templates, as far as the tests need them

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
BLOCK_OPENERS = ("if", "with", "range", "define", "block")


def template_tokens(text):
    """Splits a template into ("text", s) and ("action", body) tokens, applying
    the {{- and -}} whitespace trimming. Comments are dropped. Raises
    ValueError on an unclosed action or a stray }}."""
    tokens, pos = [], 0
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if "}}" in chunk:
            raise ValueError("stray }} at offset %d" % (pos + chunk.index("}}")))
        tokens.append(["text", chunk])
        if start < 0:
            break
        end = _action_end(text, start)  # a "}}" inside a quoted string does not close an action
        if end < 0:
            raise ValueError("unclosed {{ at offset %d" % start)
        m = ACTION.fullmatch(text, start, end)
        if not m:
            raise ValueError("malformed action at offset %d" % start)
        body = m.group(2).strip()
        if m.group(1):
            tokens[-1][1] = tokens[-1][1].rstrip(" \t\r\n")
        if not (body.startswith("/*") and body.endswith("*/")):
            tokens.append(["action", body])
        pos = end
        if m.group(3):
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
    return tokens


def _action_end(text, start):
    i, quote = start + 2, None
    if text.startswith("/*", i) or text.startswith("- /*", i):
        close = text.find("*/", i)
        if close < 0:
            return -1
        i = close + 2
    while i < len(text) - 1:
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"`":
            quote = c
        elif text.startswith("}}", i):
            return i + 2
        i += 1
    return -1


def block_keyword(body):
    word = body.split(None, 1)[0] if body else ""
    return word


def check_blocks(tokens):
    """Every if/with/range/define has its end, and else sits inside one."""
    depth = 0
    for kind, body in tokens:
        if kind != "action":
            continue
        word = block_keyword(body)
        if word in BLOCK_OPENERS:
            depth += 1
        elif word == "end":
            depth -= 1
            if depth < 0:
                raise ValueError("{{ end }} without a block")
        elif word == "else" and depth == 0:
            raise ValueError("{{ else }} outside a block")
    if depth:
        raise ValueError("%d block(s) without {{ end }}" % depth)


def define_body(tokens, name):
    """The tokens of {{ define "name" }} … {{ end }}."""
    for i, (kind, body) in enumerate(tokens):
        if kind == "action" and re.fullmatch(r'define\s+"%s"' % re.escape(name), body):
            depth, j = 1, i + 1
            while j < len(tokens):
                if tokens[j][0] == "action":
                    word = block_keyword(tokens[j][1])
                    depth += word in BLOCK_OPENERS
                    depth -= word == "end"
                    if depth == 0:
                        return tokens[i + 1:j]
                j += 1
            raise ValueError("define %s has no end" % name)
    raise KeyError(name)


class MiniRenderer:
    """Renders the few constructs loglet.config may use (templates/_helpers.tpl
    says which): text, {{ .Values.a.b }}, {{ .Values.a.b | quote }}, and
    {{ if [not] .Values.a.b }} / {{ else }} / {{ end }}. Anything else raises,
    so the chart cannot outgrow the test silently."""

    def __init__(self, values):
        self.values = values

    def render(self, tokens):
        out, _ = self._render(tokens, 0, stop=())
        return out

    def _render(self, tokens, i, stop):
        out = []
        while i < len(tokens):
            kind, body = tokens[i]
            if kind == "text":
                out.append(body)
                i += 1
                continue
            word = block_keyword(body)
            if word in stop:
                return "".join(out), i
            if word == "if":
                cond = self._truthy(self._expr(body[2:].strip()))
                then, i = self._render(tokens, i + 1, stop=("else", "end"))
                other = ""
                if block_keyword(tokens[i][1]) == "else":
                    other, i = self._render(tokens, i + 1, stop=("end",))
                out.append(then if cond else other)
                i += 1
                continue
            out.append(self._pipeline(body))
            i += 1
        if stop:
            raise ValueError("unterminated block")
        return "".join(out), i

    def _expr(self, expr):
        if expr.startswith("not "):
            return not self._truthy(self._expr(expr[4:].strip()))
        m = re.fullmatch(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", expr)
        if not m:
            raise ValueError("unsupported expression in loglet.config: %r" % expr)
        value = self.values
        for key in m.group(1).split(".")[1:]:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    @staticmethod
    def _truthy(v):
        return not (v is None or v is False or v == 0 or v == "" or v == {} or v == [])

    def _pipeline(self, body):
        parts = [p.strip() for p in body.split("|")]
        value = self._expr(parts[0])
        text = go_string(value)
        for fn in parts[1:]:
            if fn != "quote":
                raise ValueError("unsupported function in loglet.config: %r" % fn)
            text = json.dumps(text, ensure_ascii=False)
        return text


def go_string(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def deep_merge(dst, src):
    """What the chart's "loglet.merge" does: maps key by key, anything else replaces."""
    for key, value in (src or {}).items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            deep_merge(dst[key], value)
        else:
            dst[key] = value
    return dst


def render_chart_config(values):
    """loglet.yaml as templates/configmap.yaml renders it: loglet.config, then
    loki.externalLabels into labels.static, then config.extra, then toYaml."""
    tokens = template_tokens(read(os.path.join(TEMPLATES, "_helpers.tpl")))
    body = MiniRenderer(values).render(define_body(tokens, "loglet.config"))
    config = yaml.safe_load(body)
    deep_merge(config, {"labels": {"static": values["loki"]["externalLabels"]}})
    deep_merge(config, {"kubernetes": {"pod_labels": values["kubernetes"]["podLabels"],
                                       "namespace_labels": values["kubernetes"]["namespaceLabels"]}})
    extra = values["config"]["extra"] or {}
    if isinstance(extra, str):
        extra = yaml.safe_load(extra) or {}
    deep_merge(config, extra)
    return yaml.safe_dump(config, default_flow_style=False, sort_keys=True)


def chart_values(**overrides):
    """values.yaml with overrides given as dotted paths: chart_values(**{"loki.url": "…"})."""
    values = load_yaml(os.path.join(CHART, "values.yaml"))
    for path, value in overrides.items():
        node = values
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        if keys[-1] not in node:
            raise KeyError("values.yaml has no %s" % path)
        node[keys[-1]] = value
    return values


# --------------------------------------------------------------------------
# Dockerfile

def dockerfile_instructions():
    """(instruction, argument text) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in read(DOCKERFILE).splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    result = []
    for line in lines:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def dockerfile_stages():
    stages = []
    for instr, arg in dockerfile_instructions():
        if instr == "FROM":
            stages.append([])
        stages[-1].append((instr, arg))
    return stages


def apt_packages(run_arg):
    words = shlex.split(run_arg)
    i = words.index("install")
    packages = []
    for w in words[i + 1:]:
        if w == "&&":
            break
        if not w.startswith("-"):
            packages.append(w)
    return packages


def dockerfile_default_config():
    """The text the runtime stage's printf writes to /etc/loglet/loglet.yaml."""
    for instr, arg in dockerfile_stages()[-1]:
        if instr == "RUN" and "/etc/loglet/loglet.yaml" in arg and "printf" in arg:
            words = shlex.split(arg)
            i = words.index("printf")
            assert words[i + 1] == "%s\\n", words[i + 1]
            j = words.index(">", i)
            assert words[j + 1] == "/etc/loglet/loglet.yaml"
            return "".join(w + "\n" for w in words[i + 2:j])
    raise AssertionError("the Dockerfile writes no /etc/loglet/loglet.yaml")


def setup_build_packages():
    text = read(os.path.join(SOURCE_DIR, "scripts", "setup.sh"))
    block = re.search(r"PACKAGES=\((.*?)\n\)", text, re.S).group(1)
    m = re.search(r"#\s*build\s*\n(.*?)\n\s*#", block, re.S)
    return m.group(1).split()


# --------------------------------------------------------------------------

class YamlTest(unittest.TestCase):
    def test_yaml_files_pass_yamllint_relaxed(self):
        yamllint = shutil.which("yamllint")
        self.assertIsNotNone(yamllint, "yamllint is missing: run scripts/setup.sh")
        files = yaml_files()
        self.assertGreaterEqual(len(files), 8, files)
        r = subprocess.run([yamllint, "-f", "parsable", "-d", "relaxed"] + files, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_kubernetes_manifests_are_objects_in_the_loglet_namespace(self):
        kinds = {}
        for name in sorted(os.listdir(K8S)):
            doc = load_yaml(os.path.join(K8S, name))
            self.assertIn("apiVersion", doc, name)
            self.assertIn(doc["kind"], ("Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Service",
                                        "ClusterRole", "ClusterRoleBinding"), name)
            if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):  # cluster-scoped
                self.assertEqual(doc["metadata"]["namespace"], "loglet", name)
            kinds[doc["kind"]] = doc
        self.assertEqual(len(kinds), 7, sorted(kinds))

    def test_dashboard_is_grafana_json_with_valid_promql(self):
        dash = json.loads(read(os.path.join(CHART, "dashboards", "loglet.json")))
        self.assertEqual(dash["title"], "loglet")
        self.assertTrue(dash["uid"])
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        self.assertGreaterEqual(len(exprs), 15)
        names = {"datasource", "job", "instance"}
        self.assertEqual({v["name"] for v in dash["templating"]["list"]}, names)
        promtool = shutil.which("promtool")
        if not promtool:
            return
        # Each expression, with the dashboard's variables filled in, as a
        # recording rule: promtool parses it.
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": "dashboard:expr%d" % i,
             "expr": e.replace("$__rate_interval", "5m").replace("$job", ".+").replace("$instance", ".+")}
            for i, e in enumerate(exprs)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(rules, f)
        try:
            r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_dashboard_reads_metrics_the_agent_exports(self):
        """Catches typos and renamed metrics: every loglet_* and process_* metric
        the dashboard reads is written by internal/metrics."""
        source = read(os.path.join(SOURCE_DIR, "internal", "metrics", "metrics.c"))
        used = set(re.findall(r"\b(?:loglet|process)_[a-z0-9_]+", read(os.path.join(CHART, "dashboards", "loglet.json"))))
        used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
        self.assertGreaterEqual(len(used), 20)
        self.assertEqual({m for m in used if not re.search(r"\b%s\b" % m, source)}, set())


class ChartTemplateTest(unittest.TestCase):
    """What can be checked of the templates without helm."""

    def setUp(self):
        self.values = load_yaml(os.path.join(CHART, "values.yaml"))
        self.templates = {n: read(os.path.join(TEMPLATES, n)) for n in sorted(os.listdir(TEMPLATES))}

    def test_chart_metadata(self):
        chart = load_yaml(os.path.join(CHART, "Chart.yaml"))
        self.assertEqual(chart["apiVersion"], "v2")
        self.assertEqual(chart["name"], "loglet")
        self.assertEqual(chart["appVersion"], project_version())
        self.assertEqual(set(self.templates), {
            "_helpers.tpl", "configmap.yaml", "daemonset.yaml", "serviceaccount.yaml", "service.yaml",
            "servicemonitor.yaml", "dashboard-configmap.yaml", "NOTES.txt", "rbac.yaml", "archive-cronjob.yaml"})

    def test_actions_and_blocks_are_balanced(self):
        for name, text in self.templates.items():
            with self.subTest(template=name):
                check_blocks(template_tokens(text))

    def test_values_paths_exist_in_values_yaml(self):
        for name, text in self.templates.items():
            for m in re.finditer(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
                node = self.values
                for key in m.group(1).split(".")[1:]:
                    with self.subTest(template=name, path=m.group(0)):
                        self.assertIsInstance(node, dict)
                        self.assertIn(key, node)
                    node = node.get(key) if isinstance(node, dict) else None

    def test_includes_name_defined_templates(self):
        defined = set()
        for text in self.templates.values():
            defined |= set(re.findall(r'define\s+"([^"]+)"', text))
        for name, text in self.templates.items():
            for used in re.findall(r'(?:include|template)\s+"([^"]+)"', text):
                with self.subTest(template=name, include=used):
                    self.assertIn(used, defined)
        self.assertIn('"dashboards/loglet.json"', self.templates["dashboard-configmap.yaml"])

    def test_secret_mounts_match_the_config_paths(self):
        helpers, ds = self.templates["_helpers.tpl"], self.templates["daemonset.yaml"]
        for path in re.findall(r'"(/etc/loglet-secrets/[^"]+)"', helpers):
            self.assertIn("mountPath: " + os.path.dirname(path), ds)
            self.assertIn("path: " + os.path.basename(path), ds)
        self.assertIn("checksum/config", ds)

    def test_defaults_match_the_plain_manifests(self):
        ds = load_yaml(os.path.join(K8S, "daemonset.yaml"))
        pod = ds["spec"]["template"]["spec"]
        c = pod["containers"][0]
        self.assertEqual(self.values["securityContext"], c["securityContext"])
        self.assertEqual(self.values["podSecurityContext"], pod["securityContext"])
        self.assertEqual(self.values["resources"], c["resources"])
        self.assertEqual(self.values["tolerations"], pod["tolerations"])
        self.assertEqual(self.values["priorityClassName"], pod["priorityClassName"])
        self.assertEqual(self.values["updateStrategy"], ds["spec"]["updateStrategy"])
        self.assertEqual(self.values["livenessProbe"], c["livenessProbe"])
        self.assertEqual(self.values["readinessProbe"], c["readinessProbe"])
        self.assertEqual(self.values["service"]["port"], c["ports"][0]["containerPort"])
        self.assertEqual(c["image"], "loglet:" + project_version())


class KubernetesConfigTest(unittest.TestCase):
    def setUp(self):
        self.cm = load_yaml(os.path.join(K8S, "configmap.yaml"))
        self.ds = load_yaml(os.path.join(K8S, "daemonset.yaml"))
        self.config_text = self.cm["data"]["loglet.yaml"]

    def test_every_variable_the_config_uses_is_set_by_the_daemonset(self):
        env = {e["name"]: e for e in self.ds["spec"]["template"]["spec"]["containers"][0]["env"]}
        used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", self.config_text))
        self.assertEqual(used, {"LOKI_URL", "NODE_NAME", "POD_NAME"})
        self.assertLessEqual(used, set(env))
        self.assertEqual(env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName")
        self.assertEqual(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name")

    def test_config_is_valid_in_stdout_mode(self):
        eff = check_config(self, self.config_text, dict(POD_ENV, LOKI_URL=""))
        self.assertEqual(eff["output"]["loki"]["url"], "")
        self.assertEqual(eff["collection"]["exclude_pods"], [POD_ENV["POD_NAME"]])
        self.assertEqual(eff["collection"]["paths"], ["/var/log/containers/*.log"])
        self.assertEqual(eff["labels"]["static"], {"node_name": "node-1"})

    def test_config_is_valid_with_loki(self):
        url = "http://loki-gateway.loki.svc/loki/api/v1/push"
        eff = check_config(self, self.config_text, dict(POD_ENV, LOKI_URL=url))
        self.assertEqual(eff["output"]["loki"]["url"], url)

    def test_daemonset_mounts_what_the_config_reads_and_writes(self):
        pod = self.ds["spec"]["template"]["spec"]
        c = pod["containers"][0]
        eff = check_config(self, self.config_text, POD_ENV)
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(c["args"], ["-config", "/etc/loglet/loglet.yaml"])
        self.assertEqual(volumes[mounts["/etc/loglet"]["name"]]["configMap"]["name"], self.cm["metadata"]["name"])
        positions_dir = os.path.dirname(eff["collection"]["positions_file"])
        self.assertNotIn("readOnly", mounts[positions_dir])
        self.assertEqual(volumes[mounts[positions_dir]["name"]]["hostPath"]["type"], "DirectoryOrCreate")
        # One mount for the logs and the spool: a hard link cannot cross mounts.
        self.assertNotIn("readOnly", mounts["/var/log"])
        self.assertEqual(volumes[mounts["/var/log"]["name"]]["hostPath"]["path"], "/var/log")
        self.assertFalse([m for m in mounts if m.startswith("/var/log/")], "a mount below /var/log splits the spool off")
        self.assertTrue(eff["collection"]["spool_dir"].startswith("/var/log/"), eff["collection"]["spool_dir"])
        for pattern in eff["collection"]["paths"]:
            self.assertTrue(pattern.startswith("/var/log/"), pattern)
        self.assertEqual(c["ports"][0]["containerPort"], eff["server"]["http_listen_port"])
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/ready")
        sc = c["securityContext"]
        self.assertEqual(sc["capabilities"], {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]})
        self.assertIs(sc["readOnlyRootFilesystem"], True)
        self.assertIs(sc["allowPrivilegeEscalation"], False)


class ChartConfigTest(unittest.TestCase):
    """The chart's loglet.yaml, rendered without helm.

    templates/configmap.yaml builds it in three steps: the "loglet.config"
    template (in _helpers.tpl) renders a plain YAML body from a few values;
    fromYaml parses it; "loglet.merge" deep-merges loki.externalLabels and
    config.extra into it; toYaml writes it. The body is kept to a handful of
    template constructs that MiniRenderer implements (and refuses anything
    else), and the merge is a few lines mirrored by deep_merge(), so the test
    renders what helm would for any value set and runs -check-config on it.
    Key order and quoting may differ from helm's toYaml; the content does not.
    """

    def render_and_check(self, values, env=None):
        text = render_chart_config(values)
        return check_config(self, text, dict(POD_ENV, **(env or {})))

    def test_default_values_give_stdout_mode(self):
        eff = self.render_and_check(chart_values())
        self.assertEqual(eff["output"]["loki"]["url"], "")
        self.assertEqual(eff["collection"]["exclude_pods"], [POD_ENV["POD_NAME"]])
        self.assertEqual(eff["collection"]["positions_file"], "/var/lib/loglet/positions.yaml")
        self.assertEqual(eff["collection"]["spool_dir"], "/var/log/loglet-spool")
        self.assertEqual(eff["server"]["http_listen_port"], 3101)
        self.assertEqual(eff["labels"]["static"], {"node_name": "node-1"})
        self.assertEqual(eff["log"], {"level": "info", "format": "logfmt"})

    def test_archive_beside_loki_with_its_secret(self):
        values = chart_values(**{"loki.url": "http://loki:3100/loki/api/v1/push", "archive.url": "s3://logs/prod",
                                 "archive.endpoint": "https://minio.example:9000", "archive.existingSecret": "s3"})
        eff = self.render_and_check(values)
        arch = eff["output"]["archive"]
        self.assertEqual(arch["url"], "s3://logs/prod")
        self.assertEqual(arch["endpoint"], "https://minio.example:9000")
        self.assertEqual(arch["access_key_id_file"], "/etc/loglet-secrets/archive/access_key_id")
        self.assertEqual(arch["secret_access_key_file"], "/etc/loglet-secrets/archive/secret_access_key")
        self.assertEqual(eff["output"]["loki"]["url"], "http://loki:3100/loki/api/v1/push")
        # Without the archive the section is left out (the agent's defaults apply).
        self.assertEqual(self.render_and_check(chart_values())["output"]["archive"]["url"], "")

    def test_spool_off_leaves_it_beside_the_positions(self):
        eff = self.render_and_check(chart_values(**{"spool.enabled": False}))
        self.assertEqual(eff["collection"]["spool_dir"], "")

    def test_loki_url_tenant_basic_auth_labels_and_extra(self):
        url = "http://loki:3100/loki/api/v1/push"
        values = chart_values(**{
            "loki.url": url, "loki.tenantId": "team-a",
            "loki.basicAuth.username": "agent", "loki.basicAuth.existingSecret": "loki-auth",
            "loki.externalLabels": {"cluster": "${CLUSTER_NAME:-dev}", "env": "prod"},
            "config.logLevel": "debug",
            "config.extra": "collection:\n  exclude_namespaces: [kube-system]\nbuffer:\n  max_bytes: 32MiB\n",
        })
        eff = self.render_and_check(values)
        loki = eff["output"]["loki"]
        self.assertEqual(loki["url"], url)
        self.assertEqual(loki["tenant_id"], "team-a")
        self.assertEqual(loki["basic_auth"], {"username": "agent",
                                              "password_file": "/etc/loglet-secrets/basic-auth/password"})
        self.assertEqual(eff["labels"]["static"], {"node_name": "node-1", "cluster": "dev", "env": "prod"})
        self.assertEqual(eff["collection"]["exclude_namespaces"], ["kube-system"])
        self.assertEqual(eff["collection"]["exclude_pods"], [])  # Loki mode: the agent's own log is shipped
        self.assertEqual(eff["buffer"]["max_bytes"], "32MiB")
        self.assertEqual(eff["log"]["level"], "debug")

    def test_bearer_token_and_extra_as_a_map_overriding_chart_keys(self):
        values = chart_values(**{
            "loki.url": "https://logs.example.com/loki/api/v1/push",
            "loki.bearerToken.existingSecret": "loki-token",
            "config.extra": {"output": {"loki": {"batch_wait": "2s"}}, "log": {"format": "json"}},
        })
        eff = self.render_and_check(values)
        self.assertEqual(eff["output"]["loki"]["bearer_token_file"], "/etc/loglet-secrets/bearer-token/token")
        self.assertEqual(eff["output"]["loki"]["batch_wait"], "2s")
        self.assertEqual(eff["output"]["loki"]["url"], "https://logs.example.com/loki/api/v1/push")
        self.assertEqual(eff["log"]["format"], "json")

    def test_mini_renderer_refuses_what_it_does_not_implement(self):
        for body in ('{{ include "x" . }}', "{{ .Values.a | upper }}", "{{ range .Values.a }}x{{ end }}"):
            with self.assertRaises(ValueError):
                MiniRenderer({"a": "b"}).render(template_tokens(body))


class DockerfileTest(unittest.TestCase):
    def test_builder_installs_setup_sh_build_packages(self):
        builder = dockerfile_stages()[0]
        self.assertEqual(builder[0], ("FROM", "debian:bookworm AS builder"))
        runs = [arg for instr, arg in builder if instr == "RUN" and "apt-get install" in arg]
        self.assertEqual(len(runs), 1)
        packages = apt_packages(runs[0])
        # libcmocka-dev: CMake configures the unit tests unconditionally.
        self.assertEqual([p for p in packages if p != "libcmocka-dev"], setup_build_packages())
        build = " ".join(arg for instr, arg in builder if instr == "RUN")
        self.assertIn("-DCMAKE_BUILD_TYPE=Release", build)

    def test_runtime_stage(self):
        runtime = dict((instr, arg) for instr, arg in dockerfile_stages()[-1] if instr != "RUN")
        self.assertEqual(runtime["FROM"], "debian:bookworm-slim")
        self.assertEqual(json.loads(runtime["ENTRYPOINT"]), ["/usr/bin/loglet"])
        self.assertEqual(json.loads(runtime["CMD"]), ["-config", "/etc/loglet/loglet.yaml"])
        self.assertEqual(runtime["EXPOSE"], "3101")
        self.assertEqual(runtime["USER"], "65534:65534")

    def test_runtime_packages_cover_the_binary_libraries(self):
        """The libraries the binary links directly come from the runtime stage's packages."""
        if not (shutil.which("readelf") and shutil.which("dpkg") and shutil.which("ldd")):
            self.skipTest("readelf, ldd or dpkg missing")
        runs = [arg for instr, arg in dockerfile_stages()[-1] if instr == "RUN" and "apt-get install" in arg]
        runtime = set(apt_packages(runs[0]))
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                            subprocess.run(["readelf", "-d", LOGLET_BIN], capture_output=True, text=True).stdout)
        where = dict(re.findall(r"^\s*(\S+) => (\S+)", subprocess.run(["ldd", LOGLET_BIN], capture_output=True,
                                                                       text=True).stdout, re.M))
        base = re.compile(r"^(libc6|libgcc-s1|libstdc\+\+6|libasan\d*|libubsan\d*|liblsan\d*)$")
        for soname in needed:
            path = os.path.realpath(where[soname])
            owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
            if owner.returncode != 0:  # /lib vs /usr/lib (merged /usr)
                owner = subprocess.run(["dpkg", "-S", re.sub(r"^/usr", "", path)], capture_output=True, text=True)
            package = owner.stdout.split(":")[0]
            with self.subTest(library=soname, package=package):
                self.assertTrue(base.match(package) or package in runtime, owner.stdout + owner.stderr)

    def test_default_config_is_valid_and_prints_to_stdout(self):
        text = dockerfile_default_config()
        eff = check_config(self, text)
        self.assertEqual(eff["output"]["loki"]["url"], "")
        self.assertEqual(eff["collection"]["paths"], ["/var/log/containers/*.log"])
        self.assertEqual(eff["collection"]["positions_file"], "/var/lib/loglet/positions.yaml")
        self.assertEqual(eff["server"]["http_listen_port"], 3101)
        url = "http://loki:3100/loki/api/v1/push"
        self.assertEqual(check_config(self, text, {"LOKI_URL": url})["output"]["loki"]["url"], url)

    def test_dockerignore_keeps_build_trees_and_git_out(self):
        entries = read(os.path.join(SOURCE_DIR, ".dockerignore")).split()
        for e in ("build/", "build-*/", ".git"):
            self.assertIn(e, entries)


# --------------------------------------------------------------------------
# The image itself (opt-in)

IMAGE = "localhost/loglet:test"
BASE_TAGS = ("docker.io/library/debian:bookworm-slim", "docker.io/library/debian:bookworm")
CACHE = "/var/tmp/loglet-image-cache"


def debian_mirror():
    paths = ["/etc/apt/sources.list"]
    d = "/etc/apt/sources.list.d"
    if os.path.isdir(d):
        paths += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith((".sources", ".list"))]
    for p in paths:
        try:
            text = read(p)
        except OSError:
            continue
        for m in re.finditer(r"^URIs:\s*(\S+)|^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\b", text, re.M):
            uri = m.group(1) or m.group(2)
            if "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


class ImageTest(unittest.TestCase):
    """Builds the image with podman as /work/shared/CONTAINER-BUILD.md says and
    runs it against a kubelet-style tree. Opt-in (LOGLET_IMAGE_TEST=1, root):
    it installs podman and friends and takes a minute or two."""

    @classmethod
    def setUpClass(cls):
        if os.environ.get("LOGLET_IMAGE_TEST") != "1":
            raise unittest.SkipTest("image test skipped: set LOGLET_IMAGE_TEST=1")
        if os.geteuid() != 0:
            raise unittest.SkipTest("image test skipped: needs root (podman, debootstrap)")
        cls.timings = {}
        missing = [t for t in ("podman", "buildah", "runc", "debootstrap") if not shutil.which(t)]
        if missing:
            t0 = time.time()
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "-qq", "podman", "buildah", "runc", "debootstrap"],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            cls.timings["install"] = time.time() - t0
        cls.podman = ["podman"]
        cls.ensure_base_image()
        t0 = time.time()
        r = subprocess.run(cls.podman + ["build", "--pull=never", "--runtime", "runc", "-t", IMAGE, SOURCE_DIR],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise AssertionError("podman build failed:\n" + r.stdout[-4000:] + r.stderr[-4000:])
        cls.timings["build"] = time.time() - t0
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
        cls.run_flags = ["--runtime", "runc", "--ulimit", f"nofile={nofile}:{nofile}",
                         "--ulimit", "nproc=32768:32768"]

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "timings", None):
            print("\nimage test timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in cls.timings.items()))

    @classmethod
    def ensure_base_image(cls):
        """debian:bookworm(-slim) made with debootstrap, the rootfs tarball cached under /var/tmp."""
        if all(subprocess.run(cls.podman + ["image", "exists", t]).returncode == 0 for t in BASE_TAGS):
            return
        os.makedirs(CACHE, exist_ok=True)
        tarball = os.path.join(CACHE, "debian-bookworm-minbase.tar")
        if not os.path.exists(tarball):
            t0 = time.time()
            rootfs = tempfile.mkdtemp(prefix="rootfs-", dir=CACHE)
            try:
                subprocess.run(["debootstrap", "--variant=minbase", "bookworm", rootfs, debian_mirror()],
                               check=True, capture_output=True, timeout=1800)
                for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
                    for entry in os.listdir(os.path.join(rootfs, d)):
                        p = os.path.join(rootfs, d, entry)
                        if os.path.isfile(p) or os.path.islink(p):
                            os.unlink(p)
                if os.path.lexists(os.path.join(rootfs, "etc/resolv.conf")):
                    os.unlink(os.path.join(rootfs, "etc/resolv.conf"))
                subprocess.run(["tar", "--numeric-owner", "-C", rootfs, "-cf", tarball + ".tmp", "."], check=True)
                os.rename(tarball + ".tmp", tarball)
            finally:
                shutil.rmtree(rootfs, ignore_errors=True)
            cls.timings["debootstrap"] = time.time() - t0
        t0 = time.time()
        subprocess.run(cls.podman + ["import", "--change", 'CMD ["bash"]', tarball, BASE_TAGS[0]], check=True,
                       capture_output=True)
        subprocess.run(cls.podman + ["tag", BASE_TAGS[0], BASE_TAGS[1]], check=True)
        cls.timings["import"] = time.time() - t0

    def setUp(self):
        warnings.simplefilter("ignore", ResourceWarning)  # files the simulated runtime leaves open
        self._tmp = tempfile.TemporaryDirectory(prefix="loglet-image-")
        self.root = os.path.join(self._tmp.name, "log")
        self.tree = KubeletTree(self.root)
        self.names, self.procs = [], []

    def tearDown(self):
        for name in self.names:
            subprocess.run(self.podman + ["rm", "-f", "-t", "0", name], capture_output=True)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        self._tmp.cleanup()

    def run_image(self, extra_flags, args=()):
        """Starts the container in the background; returns (process, stdout lines, stderr lines)."""
        name = f"loglet-image-test-{os.getpid()}-{len(self.names)}"
        self.names.append(name)
        cmd = (self.podman + ["run", "--rm", "--name", name] + self.run_flags + extra_flags
               # The kubelet's symlinks are absolute: mount the tree where they point, too.
               + ["-v", f"{self.root}:/var/log:ro", "-v", f"{self.root}:{self.root}:ro", IMAGE] + list(args))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        out, err = [], []
        for stream, sink in ((proc.stdout, out), (proc.stderr, err)):
            threading.Thread(target=lambda s=stream, k=sink: [k.append(l.rstrip("\n")) for l in s],
                             daemon=True).start()
        return proc, out, err

    def wait_for_line(self, proc, out, err, container, text, timeout=60):
        """Appends a line every 0.3 s (the default config reads from the end) until it is printed."""
        deadline = time.time() + timeout
        n = 0
        while time.time() < deadline:
            n += 1
            container.write(f"{text} {n}")
            time.sleep(0.3)
            if any(text in line for line in out):
                return [line for line in out if text in line]
            if proc.poll() is not None:
                break
        raise AssertionError(f"no '{text}' line from the container:\n" + "\n".join(out[-20:] + err[-40:]))

    def stop(self, proc, err):
        proc.send_signal(signal.SIGTERM)  # podman passes it on to the agent
        rc = proc.wait(30)
        time.sleep(0.2)
        self.assertEqual(rc, 0, "\n".join(err))
        self.assertTrue(any('msg="stopped"' in l for l in err), "\n".join(err))

    def test_version_and_default_config(self):
        r = subprocess.run(self.podman + ["run", "--rm"] + self.run_flags + [IMAGE, "-version"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.stdout.strip(), "loglet " + project_version(), r.stderr)
        r = subprocess.run(self.podman + ["run", "--rm"] + self.run_flags
                           + [IMAGE, "-check-config", "-config", "/etc/loglet/loglet.yaml"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(yaml.safe_load(r.stdout)["output"]["loki"]["url"], "")

    def test_default_user_prints_a_mounted_tree(self):
        """`podman run --rm -v TREE:/var/log:ro loglet`, as deployments/docker/README.md shows."""
        web = self.tree.container("shop", "web-0", "app")
        t0 = time.time()
        proc, out, err = self.run_image([])
        lines = self.wait_for_line(proc, out, err, web, "hello from the image")
        self.timings["run (default user)"] = time.time() - t0
        self.assertRegex(lines[0], r"^\S+Z shop/web-0/app stdout hello from the image \d+$")
        self.stop(proc, err)

    def test_loki_url_pushes_to_loki(self):
        """`-e LOKI_URL=…` switches the default configuration to Loki (host network: the
        receiver listens on the host's loopback)."""
        import loki_receiver  # tests/tools, on the path through harness
        receiver = loki_receiver.Receiver().start()
        self.addCleanup(receiver.stop)
        web = self.tree.container("shop", "web-0", "app")
        proc, out, err = self.run_image(["--network", "host", "-e", f"LOKI_URL={receiver.url}"])
        deadline, n = time.time() + 60, 0
        while time.time() < deadline and not receiver.wait_for(1, timeout=0.3):
            n += 1
            web.write(f"to loki {n}")
            self.assertIsNone(proc.poll(), "\n".join(err))
        self.assertTrue(receiver.wait_for(1, timeout=1), "\n".join(err))
        entry = receiver.all_entries()[0]
        self.assertRegex(entry["line"], r"^to loki \d+$")
        self.assertIn('namespace="shop"', entry["labels"])
        self.assertEqual(out, [])  # nothing on stdout in Loki mode
        self.stop(proc, err)

    def test_kubernetes_security_context(self):
        """As the DaemonSet runs it: uid 0, every capability dropped but
        DAC_READ_SEARCH, no new privileges, read-only root, positions on a
        writable mount, logs owned by another user with mode 0640."""
        positions = os.path.join(self._tmp.name, "positions")
        os.makedirs(positions)
        db = self.tree.container("shop", "db-0", "postgres")
        for path in (db.pod_dir, db.dir):
            os.chmod(path, 0o750)
            os.chown(path, 1234, 1234)
        os.chmod(db.log_path, 0o640)
        os.chown(db.log_path, 1234, 1234)
        proc, out, err = self.run_image(["--user", "0", "--read-only", "--cap-drop", "ALL",
                                         "--cap-add", "DAC_READ_SEARCH", "--security-opt", "no-new-privileges",
                                         "-e", "NODE_NAME=node-1", "-v", f"{positions}:/var/lib/loglet"])
        self.wait_for_line(proc, out, err, db, "checkpoint complete")
        self.stop(proc, err)
        self.assertIn("positions:", read(os.path.join(positions, "positions.yaml")))


if __name__ == "__main__":
    unittest.main()
