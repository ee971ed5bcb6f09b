"""Kubernetes metadata end to end: the real agent, real files, a real Loki push receiver,
and a test API server of our own (tests/tools/kube_apiserver.py) speaking the real wire
format over TLS with a CA made at test time: list then watch as chunked JSON lines,
bookmarks, watches the server closes, 410 Gone, a bearer token it checks and rotates, a
client certificate, a kubeconfig for the out-of-cluster path and the in-cluster path
(KUBERNETES_SERVICE_HOST/PORT and a service-account directory).

The agent runs at its default settings but for the paths, ports and URLs a test needs.
Every check is on every line: its exact label set (no label missing, none extra) and its
content, against what the test wrote; nothing lost, nothing duplicated.
"""
import base64
import os
import re
import socket
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import AgentTestCase, base_config, http_get, yaml_quote  # noqa: E402
import kube_apiserver as kas  # noqa: E402
import loki_receiver as lr  # noqa: E402

NODE = "node-a"
_TLS_DIR = tempfile.TemporaryDirectory(prefix="loglet-kube-tls-")
TLS = kas.make_tls(_TLS_DIR.name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pod:
    """A pod on this node: its API object and its containers' log files."""

    def __init__(self, test, namespace, name, containers=("app",), **kw):
        self.test, self.namespace, self.name = test, namespace, name
        self.obj = kas.pod(namespace, name, node=NODE, **kw)
        self.uid = self.obj["metadata"]["uid"]
        self.containers = list(containers)
        self.files = {}
        self.written = {}  # container -> [(stream, content)]

    def create_files(self):
        for c in self.containers:
            self.files[c] = self.test.tree.container(self.namespace, self.name, c, uid=self.uid)
            self.written[c] = []
        return self

    def write(self, n, tag="", container=None):
        for c in ([container] if container else self.containers):
            for i in range(n):
                stream = "stderr" if i % 3 == 2 else "stdout"
                content = f"{self.namespace}/{self.name}/{c} {tag}line {len(self.written[c])} é"
                self.files[c].write(content, stream=stream)
                self.written[c].append((stream, content))


class KubeTestCase(AgentTestCase):
    def setUp(self):
        super().setUp()
        self.receiver = lr.Receiver().start()
        self.addCleanup(self.receiver.stop)
        self.api = kas.APIServer(TLS)
        self.api.port = free_port()  # known before it listens: kubeconfigs name it
        self.addCleanup(self.api.stop)

    # -- configuration ------------------------------------------------------------------------
    def kubeconfig(self, server=None, user=None, ca_inline=False):
        server = server or self.api.url
        cluster = (f"    certificate-authority-data: {base64.b64encode(open(TLS['ca.crt'], 'rb').read()).decode()}\n"
                   if ca_inline else f"    certificate-authority: {TLS['ca.crt']}\n")
        user = user if user is not None else f"    token: {self.api.token}\n"
        path = os.path.join(self.workdir, "kubeconfig")
        with open(path, "w") as f:
            f.write("apiVersion: v1\nkind: Config\ncurrent-context: test\n"
                    "contexts:\n- name: other\n  context: {cluster: nowhere, user: nobody}\n"
                    "- name: test\n  context:\n    cluster: kind-test\n    user: loglet\n"
                    f"clusters:\n- name: kind-test\n  cluster:\n    server: {server}\n{cluster}"
                    f"users:\n- name: loglet\n  user:\n{user}")
        return path

    config_extra = ""  # more configuration (a pipeline)
    loki_extra = ""  # more output.loki settings

    def config(self, kube=""):
        return base_config(self.tree, self.workdir,
                           f"output:\n  loki:\n    url: {self.receiver.url}\n{self.loki_extra}"
                           + (f"kubernetes:\n{kube}" if kube else "") + self.config_extra)

    def start_agent(self, kube="", env=None, wait_list=True, api_up=True):
        if api_up and not self.api.httpd:
            self.api.start()
        env = dict({"NODE_NAME": NODE, "KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": "",
                    "KUBECONFIG": "", "HOME": self.workdir}, **(env or {}))
        a = self.agent(self.config(kube), env=env).start()
        if wait_list:
            a.wait_stderr(r"kubernetes: listed \d+ pods", timeout=15)
        return a

    # -- checks -------------------------------------------------------------------------------
    @staticmethod
    def path_labels(p, container, stream):
        return {"namespace": p.namespace, "pod": p.name, "container": container, "node_name": NODE, "stream": stream}

    def wait_all(self, pods, timeout=20):
        want = sum(len(v) for p in pods for v in p.written.values())
        ok = self.receiver.wait_for(lambda: self.receiver.entry_count() >= want, timeout=timeout)
        self.assertTrue(ok, f"{self.receiver.entry_count()} of {want} lines arrived; "
                        f"stderr:\n{self.agents[-1].stderr_text()[-3000:]}")
        time.sleep(0.2)  # anything extra (a duplicate) would arrive by now

    def check_lines(self, pods, expected_labels):
        """expected_labels(pod, container, stream, content) -> the exact label set of each line."""
        got = {}
        for e in self.receiver.all_entries():
            got.setdefault(e["line"], []).append(e["label_map"])
        written = 0
        for p in pods:
            for c, lines in p.written.items():
                for stream, content in lines:
                    written += 1
                    self.assertIn(content, got, f"lost: {content}")
                    self.assertEqual(len(got[content]), 1, f"duplicated: {content}")
                    self.assertEqual(got[content][0], expected_labels(p, c, stream, content), content)
        self.assertEqual(self.receiver.entry_count(), written, "lines nobody wrote")

    def metric(self, agent, name):
        status, body = http_get(agent.port, "/metrics")
        self.assertEqual(status, 200)
        m = re.search(r"^" + re.escape(name) + r" (\S+)$", body, re.M)
        self.assertIsNotNone(m, f"{name} not in /metrics")
        return float(m.group(1))


class LabelsTest(KubeTestCase):
    def test_pod_labels_workloads_and_jobs_on_the_right_streams(self):
        """Out of cluster: a kubeconfig (its current context; CA, client certificate and key
        inline as -data) with no token, the server accepting the client certificate."""
        self.api.token = "only-for-others"
        self.api.page_size = 2  # the list comes in pages joined by continue tokens
        pods = [
            Pod(self, "shop", "web-7d4b9c8f5-x2x9z", owner=("ReplicaSet", "web-7d4b9c8f5"),
                labels={"app": "checkout", "pod-template-hash": "7d4b9c8f5", "app.kubernetes.io/name": "checkout-web",
                        "app.kubernetes.io/component": "frontend", "app.kubernetes.io/instance": "prod",
                        "unlisted": "not-copied"}),
            Pod(self, "batch", "report-29412345-k2l4m", owner=("Job", "report-29412345"),
                labels={"job-name": "report-29412345", "batch.kubernetes.io/job-name": "report-29412345"}),
            Pod(self, "batch", "migrate-7kq2p", owner=("Job", "migrate"), labels={"job-name": "migrate"}),
            Pod(self, "db", "pg-0", containers=("postgres", "exporter"), owner=("StatefulSet", "pg"),
                labels={"app.kubernetes.io/name": "postgres"}),
            Pod(self, "kube-system", "bare", annotations={"loglet.io/labels": "team=payments, tier=1"}),
            # Another ReplicaSet whose name does not end in the pod's hash stays a ReplicaSet.
            Pod(self, "shop", "odd-abcde", owner=("ReplicaSet", "odd"), labels={"pod-template-hash": "zzz"}),
        ]
        # A pod of another node (its file here is stale): only this node's pods may label files.
        elsewhere = Pod(self, "shop", "elsewhere", labels={"app": "wrong-node"})
        elsewhere.obj["spec"]["nodeName"] = "node-b"
        self.api.put_pod(elsewhere.obj)
        for p in pods:
            self.api.put_pod(p.obj)
        kc = self.kubeconfig(ca_inline=True, user=(
            f"    client-certificate-data: {base64.b64encode(open(TLS['client.crt'], 'rb').read()).decode()}\n"
            f"    client-key-data: {base64.b64encode(open(TLS['client.key'], 'rb').read()).decode()}\n"))
        a = self.start_agent(f"  kubeconfig: {yaml_quote(kc)}\n")
        for p in pods + [elsewhere]:
            p.create_files().write(30)
        self.wait_all(pods + [elsewhere])
        self.assertEqual(a.stop(), 0)
        extra = {
            "web-7d4b9c8f5-x2x9z": {"app": "checkout", "name": "checkout-web", "component": "frontend",
                                    "instance": "prod", "workload": "web", "workload_kind": "Deployment"},
            "report-29412345-k2l4m": {"workload": "report", "workload_kind": "CronJob", "job": "report-29412345"},
            "migrate-7kq2p": {"workload": "migrate", "workload_kind": "Job", "job": "migrate"},
            "pg-0": {"name": "postgres", "workload": "pg", "workload_kind": "StatefulSet"},
            "bare": {"team": "payments", "tier": "1"},
            "odd-abcde": {"workload": "odd", "workload_kind": "ReplicaSet"},
            "elsewhere": {},
        }
        self.check_lines(pods + [elsewhere], lambda p, c, s, *_: dict(self.path_labels(p, c, s), **extra[p.name]))
        self.assertEqual(self.api.unauthorized, 0)
        self.assertTrue(all(t is None for t in self.api.tokens_seen), "no token was configured")
        self.assertGreaterEqual(self.api.lists, 3, "the 6 pods of this node come in pages of 2")


class NulValueTest(KubeTestCase):
    def test_a_nul_in_one_pods_values_spoils_neither_the_list_nor_the_watch(self):
        """The API server accepts any annotation value, "\\u0000" included. Such a value is left
        out, said once; a pod whose name holds one (from a hostile server) is left out, said
        once; every other pod keeps its labels and its exclusion, in the list and in the watch
        (which goes on: no relist)."""
        good = Pod(self, "shop", "web-0", labels={"app": "web"})
        secret = Pod(self, "shop", "secret-0", annotations={"loglet.io/exclude": "true"})
        odd = Pod(self, "other", "odd-0", labels={"app": "odd", "tier": "a\u0000b"},
                  annotations={"example.com/note": "a\u0000b", "loglet.io/labels": "team=pay\u0000ments"})
        evil = kas.pod("other", "evil\u0000-0", node=NODE)
        for p in (good, secret, odd):
            self.api.put_pod(p.obj)
        self.api.put_pod(evil)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n")
        a.wait_stderr(r"kubernetes: listed 3 pods", timeout=1)
        lists = self.api.lists
        for p in (good, secret, odd):
            p.create_files().write(10)
        # Through the watch: the same again, then a pod that must still be labelled.
        self.api.put_pod(dict(kas.pod("other", "evil\u0000-1", node=NODE)))
        secret2 = Pod(self, "shop", "secret-1", annotations={"loglet.io/exclude": "true", "x": "\u0000"})
        after = Pod(self, "shop", "after-0", labels={"app": "after"}, annotations={"example.com/n": "\u0000"})
        self.api.put_pod(secret2.obj)
        self.api.put_pod(after.obj)
        for p in (secret2, after):
            p.create_files().write(10)
        self.wait_all([good, odd, after])
        time.sleep(2.2)  # past wait_for_metadata: an excluded pod's lines would be here by now
        self.assertEqual(a.stop(), 0)
        secret.written = {c: [] for c in secret.written}
        secret2.written = {c: [] for c in secret2.written}
        apps = {"web-0": {"app": "web"}, "odd-0": {"app": "odd"}, "after-0": {"app": "after"}}
        self.check_lines([good, odd, after, secret, secret2],
                         lambda p, c, s, *_: dict(self.path_labels(p, c, s), **apps[p.name]))
        err = a.stderr_text()
        self.assertEqual(len(re.findall(r"holds a NUL character: that value is left out", err)), 1, err[-3000:])
        self.assertEqual(len(re.findall(r"left out of the pods: .*other/evil", err)), 1, err[-3000:])
        self.assertEqual(self.api.lists, lists, "the watch was abandoned and the pods listed again")


class PipelinePodLabelsTest(KubeTestCase):
    def test_match_pod_labels_chooses_stages_and_follows_label_changes(self):
        """A pipeline block matching `pod_labels: {tier: front}` applies to the
        files of pods labelled so, and is chosen again when a pod's labels
        change (tier is not a copied label: the streams stay the same)."""
        web = Pod(self, "shop", "web-0", labels={"tier": "front"})
        db = Pod(self, "shop", "db-0", labels={"tier": "back"})
        self.api.put_pod(web.obj)
        self.api.put_pod(db.obj)
        pipeline = ("pipeline:\n  - match: {pod_labels: {tier: [front, edge]}}\n    stages:\n"
                    "      - logfmt: {fields: [msg]}\n      - output: {source: msg}\n")
        self.config_extra = pipeline
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n")
        web.create_files()
        db.create_files()
        want = []  # (pod, content as sent)

        def write(p, tag, rewritten):
            for i in range(5):
                p.files["app"].write(f"msg={tag}{i}")
                want.append((p, f"{tag}{i}" if rewritten else f"msg={tag}{i}"))
        write(web, "w", True)
        write(db, "d", False)
        self.assertTrue(self.receiver.wait_for(10, timeout=20), a.stderr_text()[-2000:])
        db.obj["metadata"]["labels"] = {"tier": "edge"}
        web.obj["metadata"]["labels"] = {"tier": "back"}
        self.api.put_pod(db.obj)
        self.api.put_pod(web.obj)
        a.wait_stderr(r"db-0.*the pod's metadata changed, its lines now go through pipeline match block 0")
        a.wait_stderr(r"web-0.*the pod's metadata changed, no pipeline match block applies any more")
        write(web, "W", False)
        write(db, "D", True)
        self.assertTrue(self.receiver.wait_for(20, timeout=20), a.stderr_text()[-2000:])
        time.sleep(0.5)
        self.assertEqual(a.stop(), 0)
        got = sorted(((e["label_map"]["pod"], e["line"], tuple(sorted(e["label_map"].items())))
                      for e in self.receiver.all_entries()))
        expected = sorted((p.name, line, tuple(sorted(self.path_labels(p, "app", "stdout").items())))
                          for p, line in want)
        self.assertEqual(got, expected)


class StaticPodTest(KubeTestCase):
    def test_a_static_pods_files_named_by_its_config_hash_get_the_mirror_pods_metadata_at_once(self):
        """The kubelet names a static pod's log directory with the config hash of its manifest;
        the mirror pod the API server shows has a uid of its own and carries the hash as
        kubernetes.io/config.mirror (and config.hash)."""
        config_hash = "6a3f1c2b9d8e7f60a1b2c3d4e5f60718"
        p = Pod(self, "kube-system", f"kube-apiserver-{NODE}", containers=("kube-apiserver",), owner=("Node", NODE),
                labels={"app": "kube-apiserver", "component": "kube-apiserver"},
                annotations={"kubernetes.io/config.mirror": config_hash, "kubernetes.io/config.hash": config_hash,
                             "kubernetes.io/config.source": "file"})
        self.assertNotEqual(p.uid, config_hash)
        p.uid = config_hash  # what the kubelet names the directory with
        self.api.put_pod(p.obj)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n")
        t0 = time.monotonic()
        p.create_files().write(10)
        self.wait_all([p])
        self.assertLess(time.monotonic() - t0, 1.5, "the static pod's file waited for metadata it had")
        self.assertEqual(self.metric(a, "loglet_files_without_metadata_total"), 0)
        self.assertEqual(a.stop(), 0)
        self.check_lines([p], lambda q, c, s, *_: dict(self.path_labels(q, c, s), app="kube-apiserver",
                                                       workload=NODE, workload_kind="Node"))


class KubeconfigListTest(KubeTestCase):
    def test_kubeconfig_list_is_merged_first_definition_wins(self):
        """$KUBECONFIG as client-go reads it: empty and missing entries skipped, the first
        file setting current-context names it, the first definition of a name wins."""
        creds = os.path.join(self.workdir, "creds.yaml")
        with open(creds, "w") as f:
            f.write(f"clusters:\n- name: kind-test\n  cluster:\n    server: {self.api.url}\n"
                    f"    certificate-authority: {TLS['ca.crt']}\n"
                    f"users:\n- name: loglet\n  user:\n    token: {self.api.token}\n")
        later = os.path.join(self.workdir, "later.yaml")
        with open(later, "w") as f:
            f.write("apiVersion: v1\nkind: Config\ncurrent-context: test\n"
                    "contexts:\n- name: test\n  context: {cluster: kind-test, user: loglet}\n"
                    "clusters:\n- name: kind-test\n  cluster: {server: 'https://127.0.0.1:1'}\n"
                    "users:\n- name: loglet\n  user: {token: not-this-one}\n")
        last = os.path.join(self.workdir, "last.yaml")
        with open(last, "w") as f:
            f.write("current-context: ignored\n")
        kubeconfig = ":".join(["", os.path.join(self.workdir, "missing"), creds, "", later, last])
        p = Pod(self, "shop", "web-0", labels={"app": "web"})
        self.api.put_pod(p.obj)
        a = self.start_agent(env={"KUBECONFIG": kubeconfig})
        self.assertIn("context test", a.stderr_text())
        p.create_files().write(10)
        self.wait_all([p])
        self.assertEqual(a.stop(), 0)
        self.check_lines([p], lambda q, c, s, *_: dict(self.path_labels(q, c, s), app="web"))
        self.assertEqual(self.api.unauthorized, 0, "a token other than the first definition's was sent")

    def test_a_broken_file_in_the_list_is_named(self):
        broken = os.path.join(self.workdir, "broken.yaml")
        with open(broken, "w") as f:
            f.write("{{{\n")
        a = self.start_agent(env={"KUBECONFIG": self.kubeconfig() + ":" + broken}, wait_list=False, api_up=False)
        a.wait_stderr(r"kubernetes metadata off: kubeconfig " + re.escape(broken) + r" \(of .*\): YAML error", timeout=10)
        p = Pod(self, "shop", "plain").create_files()
        p.write(5)
        self.wait_all([p])
        self.assertEqual(a.stop(), 0)


class LabelNamesTest(KubeTestCase):
    """Names from pod_labels and loglet.io/labels that Loki would not take as they are: the same
    sanitised names whether sent as stream labels or structured metadata, and names Loki
    reserves (starting with "__" once sanitised) not sent, said once."""
    ANNOTATION = "app.kubernetes.io/x=1, 1abc=2, h\u00e9llo=3, __reserved=4, _.hidden=5, tab=x\ty"

    def names_sent(self, structured):
        p = Pod(self, "shop", "n-0", labels={"app.kubernetes.io/part-of": "shop", "x-y": "z"},
                annotations={"loglet.io/labels": self.ANNOTATION})
        self.api.put_pod(p.obj)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n  pod_labels: [app.kubernetes.io/part-of, x-y]\n"
                             + ("  structured_metadata: true\n" if structured else ""))
        p.create_files().write(3)
        p.files["app"].rotate(compress=False)  # a second open of the pod's files: not said again
        p.write(3, "rotated ")
        self.wait_all([p])
        self.assertEqual(a.stop(), 0)
        said = re.findall(r'the name \\?"(__reserved|_.hidden)\\?" \(from loglet.io/labels', a.stderr_text())
        self.assertEqual(sorted(said), ["_.hidden", "__reserved"], a.stderr_text()[-2000:])
        e = self.receiver.all_entries()[0]
        return (set(e["label_map"]) - set(self.path_labels(p, "app", "stdout"))) | set(e.get("metadata") or {})

    def test_stream_labels_and_structured_metadata_get_the_same_names(self):
        want = {"app_kubernetes_io_part_of", "x_y", "app_kubernetes_io_x", "_1abc", "h_llo", "tab"}
        self.assertEqual(self.names_sent(structured=False), want)

    def test_structured_metadata_names(self):
        want = {"app_kubernetes_io_part_of", "x_y", "app_kubernetes_io_x", "_1abc", "h_llo", "tab"}
        self.assertEqual(self.names_sent(structured=True), want)


class StructuredMetadataTest(KubeTestCase):
    def test_copied_labels_go_to_structured_metadata_and_workload_stays_a_label(self):
        p = Pod(self, "shop", "api-0", owner=("StatefulSet", "api"),
                labels={"app": "api", "app.kubernetes.io/instance": "blue", "team.example.com/owner": "payments"},
                annotations={"loglet.io/labels": "tier=1"})
        plain = Pod(self, "shop", "plain-0")
        self.api.put_pod(p.obj)
        self.api.put_pod(plain.obj)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n  structured_metadata: true\n"
                             "  pod_labels: [app, app.kubernetes.io/instance, {from: team.example.com/owner, to: team}]\n")
        p.create_files().write(20)
        plain.create_files().write(5)
        self.wait_all([p, plain])
        self.assertEqual(a.stop(), 0)
        self.check_lines([p, plain], lambda q, c, s, *_: dict(
            self.path_labels(q, c, s), **({"workload": "api", "workload_kind": "StatefulSet"} if q is p else {})))
        for e in self.receiver.all_entries():
            want = ({"app": "api", "app_kubernetes_io_instance": "blue", "team": "payments", "tier": "1"}
                    if e["label_map"]["pod"] == "api-0" else {})
            self.assertEqual(e["metadata"], want, e["line"])


class StructuredSpoofTest(KubeTestCase):
    loki_extra = "    structured_metadata: true\n"

    def test_a_pod_cannot_claim_the_agents_own_structured_metadata(self):
        """With output.loki.structured_metadata the agent sends pod_uid and container_id itself,
        from the file's path: a pod's loglet.io/labels (or a copy rule) naming them, as Loki sees
        the name, is refused, said once per name; the name is sent once, with the agent's value."""
        evil = Pod(self, "shop", "evil-0", labels={"app": "evil", "victim": "11111111-victim"},
                   annotations={"loglet.io/labels": "pod_uid=11111111-victim, container.id=deadbeef, team=red"})
        plain = Pod(self, "shop", "plain-0", labels={"app": "plain"})
        for p in (evil, plain):
            self.api.put_pod(p.obj)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n  structured_metadata: true\n"
                             "  pod_labels: [app, {from: victim, to: pod_uid}]\n")
        for p in (evil, plain):
            p.create_files().write(10)
        self.wait_all([evil, plain])
        self.assertEqual(a.stop(), 0)
        self.check_lines([evil, plain], lambda p, c, s, *_: self.path_labels(p, c, s))
        pods = {"evil-0": evil, "plain-0": plain}
        for e in self.receiver.all_entries():
            p = pods[e["label_map"]["pod"]]
            want = {"pod_uid": p.uid, "container_id": p.files["app"].container_id, "app": p.name.split("-")[0]}
            if p is evil:
                want["team"] = "red"
            self.assertEqual(e["metadata"], want, e["line"])
        err = a.stderr_text()
        said = re.findall(r'pod shop/evil-0: the name \\?"(pod_uid|container.id)\\?" .*the agent sends that '
                          r'structured metadata itself', err)
        self.assertEqual(sorted(said), ["container.id", "pod_uid"], err[-2000:])


class WaitTest(KubeTestCase):
    def test_a_pod_known_after_its_file_waits_alone_and_an_unknown_one_is_sent_after_2s(self):
        known = Pod(self, "shop", "known-1", labels={"app": "known"})
        late = Pod(self, "shop", "late-1", labels={"app": "late"})
        never = Pod(self, "shop", "never-1", labels={"app": "never"})
        self.api.put_pod(known.obj)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n")
        late.create_files().write(20)
        never.create_files().write(20)
        t0 = time.monotonic()
        known.create_files().write(20)
        # The known pod's lines are not held by the files that wait.
        self.assertTrue(self.receiver.wait_for(lambda: len(self.receiver.lines({"pod": "known-1"})) == 20, timeout=10))
        self.assertLess(time.monotonic() - t0, 1.9, "the known pod's lines waited with the unknown ones")
        self.assertEqual(self.receiver.lines({"pod": "late-1"}) + self.receiver.lines({"pod": "never-1"}), [])
        time.sleep(max(0, 0.8 - (time.monotonic() - t0)))
        self.api.put_pod(late.obj)
        self.assertTrue(self.receiver.wait_for(lambda: len(self.receiver.lines({"pod": "never-1"})) == 20, timeout=6))
        waited = time.monotonic() - t0
        self.assertGreaterEqual(waited, 1.9, "the unknown pod's file did not wait for wait_for_metadata")
        self.assertLess(waited, 2.0 + 2.5, "the unknown pod's file waited far longer than wait_for_metadata")
        self.wait_all([known, late, never])
        self.assertGreaterEqual(self.metric(a, "loglet_files_without_metadata_total"), 1)
        self.assertEqual(a.stop(), 0)
        apps = {"known-1": {"app": "known"}, "late-1": {"app": "late"}, "never-1": {}}
        self.check_lines([known, late, never], lambda p, c, s, *_: dict(self.path_labels(p, c, s), **apps[p.name]))


class ExclusionTest(KubeTestCase):
    def test_pod_namespace_and_container_annotations_and_namespace_labels(self):
        # namespace_labels implies the namespace watch (namespaces: true alone: the RBAC test below)
        self.exclusions("  namespace_labels: [team, {from: cost.example.com/center, to: cost_center}]\n",
                        {"team": "payments", "cost_center": "c42"})

    def test_namespaces_forbidden_by_rbac_is_said_and_pods_still_labelled(self):
        self.api.allow_namespaces = False
        p = Pod(self, "shop", "web-0", labels={"app": "web"})
        self.api.put_pod(p.obj)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n  namespaces: true\n")
        a.wait_stderr(r"answered 403 \(the service account needs get, list and watch", timeout=10)
        p.create_files().write(10)
        self.wait_all([p])
        self.assertEqual(a.stop(), 0)
        self.check_lines([p], lambda q, c, s, *_: dict(self.path_labels(q, c, s), app="web"))

    def exclusions(self, kube_extra, ns_labels):
        self.api.put_namespace(kas.namespace("quiet", annotations={"loglet.io/exclude": "true"}))
        self.api.put_namespace(kas.namespace("shop", labels={"team": "payments", "cost.example.com/center": "c42"}))
        kept = Pod(self, "shop", "kept", containers=("app", "sidecar"), labels={"app": "kept"},
                   annotations={"loglet.io/exclude-containers": "istio-proxy, sidecar"})
        gone = Pod(self, "shop", "gone", annotations={"loglet.io/exclude": "true"})
        in_quiet = Pod(self, "quiet", "any")
        late_gone = Pod(self, "shop", "late-gone", annotations={"loglet.io/exclude": "true"})
        for p in (kept, gone, in_quiet):
            self.api.put_pod(p.obj)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n" + kube_extra)
        a.wait_stderr(r"kubernetes: listed \d+ namespaces", timeout=10)
        for p in (kept, gone, in_quiet, late_gone):
            p.create_files().write(15)
        time.sleep(0.5)
        self.api.put_pod(late_gone.obj)  # known only while its file waits: excluded then
        self.assertTrue(self.receiver.wait_for(15, timeout=10))
        time.sleep(2.0)  # with the 1 s above, past wait_for_metadata: anything excluded would be here by now
        kept.written["sidecar"] = []
        self.assertEqual(a.stop(), 0)
        self.check_lines([kept], lambda p, c, s, *_: dict(self.path_labels(p, c, s), app="kept", **ns_labels))
        self.assertIn("not tailing", a.stderr_text())


class NamespaceWaitTest(KubeTestCase):
    def test_files_wait_for_their_namespace_so_its_exclusion_and_labels_apply_from_the_first_line(self):
        """Namespaces watched: a file whose pod is known but whose namespace is not (the namespace
        list is slower than the pods', or the namespace's event is behind its pod's) waits for it,
        up to wait_for_metadata, then goes with what is known, said."""
        self.api.list_delay = {"namespaces": 1.5}
        self.api.put_namespace(kas.namespace("quiet", annotations={"loglet.io/exclude": "true"}))
        self.api.put_namespace(kas.namespace("shop", labels={"team": "payments"}))
        secret = Pod(self, "quiet", "secret-0")
        web = Pod(self, "shop", "web-0", labels={"app": "web"})
        fresh = Pod(self, "fresh", "new-0")  # its namespace is created after it
        ghost = Pod(self, "ghost", "g-0", labels={"app": "ghost"})  # its namespace never comes
        for p in (secret, web, fresh, ghost):
            self.api.put_pod(p.obj)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n  namespace_labels: [team]\n")
        self.assertNotIn("listed 1 namespaces", a.stderr_text())
        t0 = time.monotonic()
        for p in (secret, web):
            p.create_files().write(20)
        a.wait_stderr(r"kubernetes: listed 2 namespaces", timeout=10)
        fresh.create_files().write(20)
        ghost.create_files().write(20)
        time.sleep(0.5)
        self.api.put_namespace(kas.namespace("fresh", annotations={"loglet.io/exclude": "true"}))
        self.wait_all([web, ghost])
        self.assertLess(time.monotonic() - t0, 1.5 + 2.0 + 2.5, "a file waited far longer than wait_for_metadata")
        time.sleep(1.0)  # anything excluded would be here by now
        self.assertEqual(a.stop(), 0)
        secret.written = {c: [] for c in secret.written}
        fresh.written = {c: [] for c in fresh.written}
        extra = {"web-0": {"app": "web", "team": "payments"}, "g-0": {"app": "ghost"}}
        self.check_lines([web, ghost, secret, fresh],
                         lambda p, c, s, *_: dict(self.path_labels(p, c, s), **extra[p.name]))
        err = a.stderr_text()
        self.assertRegex(err, r"metadata of pod ghost/g-0 is still incomplete after 2000 ms \(its namespace is not "
                         r"known yet\)")
        self.assertRegex(err, r"not tailing \S+secret-0_quiet_app\S+ \(\S+\) from offset 0 on: its namespace is "
                         r"annotated loglet.io/exclude=true")
        self.assertRegex(err, r"not tailing \S+new-0_fresh_app\S+ \(\S+\) from offset 0 on: its namespace is "
                         r"annotated loglet.io/exclude=true")


class ExclusionChangeTest(KubeTestCase):
    def test_exclusion_added_stops_a_file_and_lifted_resumes_it_at_its_end(self):
        """loglet.io/exclude added to a pod whose file is being read stops it where it is; lifted
        (from a pod excluded from the start, or from that one), its file is read from where it is
        then: nothing written while excluded is sent, rotated files included, and a restart
        afterwards re-reads nothing."""
        a_pod = Pod(self, "shop", "a-0", labels={"app": "a"})
        b_pod = Pod(self, "shop", "b-0", labels={"app": "b"}, annotations={"loglet.io/exclude": "true"})
        self.api.put_pod(a_pod.obj)
        self.api.put_pod(b_pod.obj)
        agent = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n")
        a_pod.create_files().write(5, "before ")
        b_pod.create_files().write(5, "secret ")
        self.assertTrue(self.receiver.wait_for(lambda: len(self.receiver.lines({"pod": "a-0"})) == 5, timeout=10))
        # a-0 excluded while its file is open: it stops.
        a_pod.obj["metadata"]["annotations"]["loglet.io/exclude"] = "true"
        self.api.put_pod(a_pod.obj)
        agent.wait_stderr(r"not tailing \S*a-0_shop_app\S* \(\S+\) from offset \d+ on: the pod is annotated", timeout=5)
        a_pod.write(5, "excluded ")
        b_pod.files["app"].rotate(compress=False)  # b-0 rotates while excluded: not wanted either
        b_pod.write(5, "secret-rotated ")
        time.sleep(0.5)
        # b-0's exclusion lifted: read from where its file is now.
        del b_pod.obj["metadata"]["annotations"]["loglet.io/exclude"]
        self.api.put_pod(b_pod.obj)
        agent.wait_stderr(r"tailing \S*b-0_shop_app\S* .* from offset \d+: its pod is no longer excluded", timeout=5)
        b_pod.write(5, "wanted ")
        # a-0's lifted again.
        del a_pod.obj["metadata"]["annotations"]["loglet.io/exclude"]
        self.api.put_pod(a_pod.obj)
        agent.wait_stderr(r"tailing \S*a-0_shop_app\S* .* from offset \d+: its pod is no longer excluded", timeout=5)
        a_pod.write(5, "back ")
        wanted = lambda: [content for p in (a_pod, b_pod) for stream, content in p.written["app"]  # noqa: E731
                          if " before " in content or " wanted " in content or " back " in content]
        self.assertTrue(self.receiver.wait_for(lambda: self.receiver.entry_count() >= len(wanted()), timeout=10))
        time.sleep(1.5)  # past a rescan's worth of events: anything excluded would be here by now
        self.assertEqual(agent.stop(), 0)
        # Restarted: each resumes where it was; nothing is read twice.
        agent = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n")
        a_pod.write(3, "after-restart ")
        b_pod.write(3, "after-restart ")
        want = wanted() + [c for p in (a_pod, b_pod) for _, c in p.written["app"] if "after-restart" in c]
        self.assertTrue(self.receiver.wait_for(lambda: self.receiver.entry_count() >= len(want), timeout=10))
        time.sleep(1.0)
        self.assertEqual(agent.stop(), 0)
        got = sorted(e["line"] for e in self.receiver.all_entries())
        self.assertEqual(got, sorted(want))
        for e in self.receiver.all_entries():
            p = a_pod if e["label_map"]["pod"] == "a-0" else b_pod
            self.assertEqual(e["label_map"], dict(self.path_labels(p, "app", e["label_map"]["stream"]),
                                                  app=p.obj["metadata"]["labels"]["app"]))


class ExclusionRestartTest(KubeTestCase):
    def test_an_excluded_file_resumes_where_it_was_excluded_after_a_restart_with_the_api_down(self):
        """An exclusion added to a live file keeps where it stopped in the positions file
        (excluded: 1). Restarted with the pod still excluded: nothing is sent and the entry stays.
        Restarted with the API server down: the file resumes there (lines flow without metadata),
        it is not taken for a new file and sent from its beginning again."""
        p = Pod(self, "shop", "chatty-0", labels={"app": "chatty"})
        self.api.put_pod(p.obj)
        kc = yaml_quote(self.kubeconfig())
        positions = os.path.join(self.workdir, "positions.yaml")
        a = self.start_agent(f"  kubeconfig: {kc}\n")
        p.create_files().write(5, "before ")
        self.wait_all([p])
        stopped_at = os.path.getsize(p.files["app"].log_path)
        p.obj["metadata"]["annotations"]["loglet.io/exclude"] = "true"
        self.api.put_pod(p.obj)
        a.wait_stderr(r"not tailing .*chatty-0", timeout=5)
        p.write(5, "excluded ")
        time.sleep(0.5)
        self.assertEqual(a.stop(), 0)
        entry = re.compile(r"chatty-0.*offset: %d, excluded: 1\}" % stopped_at)
        self.assertRegex(open(positions).read(), entry)

        a = self.start_agent(f"  kubeconfig: {kc}\n")
        time.sleep(2.5)  # past wait_for_metadata
        self.assertEqual(a.stop(), 0)
        self.assertEqual(self.receiver.entry_count(), 5, "an excluded file was read after a restart")
        self.assertRegex(open(positions).read(), entry)

        self.api.stop()
        p.write(5, "while-down ")
        a = self.start_agent(f"  kubeconfig: {kc}\n", wait_list=False, api_up=False)
        self.wait_all([p])
        self.assertEqual(a.stop(), 0)
        self.check_lines([p], lambda q, c, s, content: dict(self.path_labels(q, c, s),
                                                             **({"app": "chatty"} if " before " in content else {})))


class DegradationTest(KubeTestCase):
    def test_api_down_from_the_start_then_back(self):
        """Every line arrives with path labels while the API server is down; /ready does not
        depend on it; when it comes back, new files get their metadata."""
        first = Pod(self, "shop", "early", labels={"app": "early"})
        second = Pod(self, "shop", "after", labels={"app": "after"})
        self.api.put_pod(first.obj)
        self.api.put_pod(second.obj)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n", wait_list=False, api_up=False)
        a.wait_stderr(r"kubernetes: cannot reach .*; until it answers, lines are sent with path labels only", timeout=10)
        self.assertEqual(http_get(a.port, "/ready")[0], 200)
        first.create_files().write(40)
        self.wait_all([first], timeout=10)
        self.assertGreater(self.metric(a, 'loglet_kube_api_errors_total{code="none"}'), 0)
        third = Pod(self, "shop", "known-before-outage", labels={"app": "third"})
        self.api.put_pod(third.obj)
        self.api.start()
        a.wait_stderr(r"kubernetes: listed 3 pods", timeout=40)
        second.create_files().write(40)
        self.wait_all([first, second])
        # Down again: pods already known keep labelling new files; an unknown pod's file does
        # not wait for an API server that cannot answer.
        self.api.stop()
        # Said as it is: the cache still labels the pods it knows (checked below with `third`).
        a.wait_stderr(r"kubernetes: cannot reach .*; meanwhile files of pods already cached keep that metadata "
                      r"\(it may be stale\) and files of pods not cached are sent with path labels", timeout=10)
        unseen = Pod(self, "shop", "unseen", labels={"app": "unseen"})
        self.api.put_pod(unseen.obj)  # the server is down: nobody hears of it
        third.create_files().write(30)
        t0 = time.monotonic()
        unseen.create_files().write(30)
        self.assertTrue(self.receiver.wait_for(lambda: len(self.receiver.lines({"pod": "unseen"})) == 30, timeout=10))
        self.assertLess(time.monotonic() - t0, 1.9, "waited for metadata the API server could not send")
        self.wait_all([first, second, third, unseen])
        self.assertGreaterEqual(self.metric(a, "loglet_files_without_metadata_total"), 2)
        # Back: the pod added meanwhile is seen (a fresh list) and its file's next lines carry it.
        self.api.start()
        a.wait_stderr(r"unseen.*the pod's metadata changed, new lines are labelled .*app=\\?\"unseen", timeout=40)
        unseen.write(10, "back ")
        self.wait_all([first, second, third, unseen])
        self.assertEqual(a.stop(), 0)
        apps = {"after": {"app": "after"}, "known-before-outage": {"app": "third"}}
        self.check_lines([first, second, third, unseen], lambda p, c, s, content: dict(
            self.path_labels(p, c, s), **({"app": "unseen"} if " back " in content else apps.get(p.name, {}))))
        self.assertEqual(len(re.findall(r"kubernetes: cannot reach", a.stderr_text())), 2, "once per outage")

    def test_broken_kubeconfig_says_why_and_lines_flow(self):
        path = os.path.join(self.workdir, "kubeconfig")
        with open(path, "w") as f:
            f.write("apiVersion: v1\ncurrent-context: gone\ncontexts: []\n")
        a = self.start_agent(f"  kubeconfig: {yaml_quote(path)}\n", wait_list=False, api_up=False)
        a.wait_stderr(r'kubeconfig .*: current-context \\?"gone\\?" is not among its contexts', timeout=10)
        p = Pod(self, "shop", "plain").create_files()
        p.write(10)
        self.wait_all([p])
        self.assertEqual(a.stop(), 0)
        self.check_lines([p], lambda p, c, s, *_: self.path_labels(p, c, s))


class InClusterTest(KubeTestCase):
    def test_token_rotation_watch_restarts_bookmarks_410_and_garbage_lose_nothing(self):
        sa = os.path.join(self.workdir, "serviceaccount")
        os.makedirs(sa)
        with open(os.path.join(sa, "ca.crt"), "wb") as f:
            f.write(open(TLS["ca.crt"], "rb").read())
        token_file = os.path.join(sa, "token")

        def write_token(t):  # the kubelet's way: a new file swapped in by rename
            with open(token_file + ".new", "w") as f:
                f.write(t + "\n")
            os.rename(token_file + ".new", token_file)
        write_token("token-1")
        self.api.watch_close_after = 1.5
        self.api.bookmark_every = 0.5
        self.api.start()
        pods = [Pod(self, "shop", f"web-{i}", labels={"app": f"web{i}"}) for i in range(3)]
        self.api.put_pod(pods[0].obj)
        a = self.start_agent(f"  service_account_dir: {yaml_quote(sa)}\n",
                             env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.api.port)})
        self.assertIn("in-cluster", a.stderr_text())
        pods[0].create_files().write(20, "a ")
        time.sleep(2.0)  # at least one watch ended by the server and resumed
        # Rotation: the server takes the new token only; the agent must re-read its file.
        self.api.rotate_token("token-2")
        write_token("token-2")
        self.api.put_pod(pods[1].obj)
        pods[1].create_files().write(20, "b ")
        pods[0].write(20, "c ")
        self.wait_all(pods[:2])
        # A change whose event is lost, then the server forgets every version up to it: the
        # next watch gets 410, the agent lists again, sees the change and relabels the file.
        lists_before = self.api.lists
        changed = dict(pods[1].obj, metadata=dict(pods[1].obj["metadata"], labels={"app": "web1-v2"}))
        self.api.put_pod_silently(changed)
        self.api.compact()
        self.assertTrue(self.receiver.wait_for(lambda: self.api.lists > lists_before, timeout=10),
                        a.stderr_text()[-2000:])
        a.wait_stderr(r"the pod's metadata changed, new lines are labelled .*web1-v2", timeout=5)
        # Garbage on a watch: said, then a fresh list.
        lists_before = self.api.lists
        self.api.garbage_next_watch = True
        self.assertTrue(self.receiver.wait_for(lambda: self.api.lists > lists_before, timeout=15),
                        a.stderr_text()[-2000:])
        a.wait_stderr(r"unreadable: a watch event is not valid JSON", timeout=5)
        self.api.put_pod(pods[2].obj)
        pods[2].create_files().write(20, "d ")
        pods[1].write(10, "e ")
        self.wait_all(pods)
        self.assertEqual(a.stop(), 0)
        def labels(p, c, s, content):
            app = "web1-v2" if p is pods[1] and " e line" in content else p.obj["metadata"]["labels"]["app"]
            return dict(self.path_labels(p, c, s), app=app)
        self.check_lines(pods, labels)
        seen = self.api.tokens_seen
        self.assertIn("token-2", seen)
        self.assertNotIn("token-1", seen[seen.index("token-2"):], "the old token was used after the new one")
        self.assertGreaterEqual(self.api.bookmarks_sent, 1)
        pod_watches = [v for k, v in self.api.watch_versions if k == "pods"]
        self.assertGreaterEqual(len(pod_watches), 3)
        self.assertTrue(all(v > 0 for v in pod_watches), f"a watch without resourceVersion: {pod_watches}")
        self.assertEqual(pod_watches, sorted(pod_watches), "a re-watch went back in time")


class ChurnTest(KubeTestCase):
    def test_pods_coming_and_going_while_lines_flow_are_all_labelled(self):
        """24 pods over about 6 s, each known to the API server up to 0.8 s after its file
        appears (the watch behind the kubelet), writing while it runs, deleted from the API
        before its files go; watches end every second. Every line, labelled, once."""
        import random
        rnd = random.Random(11)
        self.api.watch_close_after = 1.0
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n")
        pods, live, events = [], [], []
        t0 = time.monotonic()
        for i in range(24):
            kind = ("ReplicaSet", f"svc{i % 4}-5d8f7") if i % 3 else ("Job", f"batch-{i}")
            labels = {"app": f"svc{i % 4}", "pod-template-hash": "5d8f7"} if i % 3 else {"job-name": f"batch-{i}"}
            p = Pod(self, "churn", f"p{i}-x{i:03d}", containers=("app", "side") if i % 2 else ("app",),
                    owner=kind, labels=labels)
            p.create_files().write(5, "start ")
            events.append((time.monotonic() + rnd.uniform(0, 0.8), "add", p))
            pods.append(p)
            live.append(p)
            deadline = time.monotonic() + 0.25
            while time.monotonic() < deadline:
                now = time.monotonic()
                for ev in [e for e in events if e[0] <= now]:
                    events.remove(ev)
                    if ev[1] == "add":
                        self.api.put_pod(ev[2].obj)
                    else:
                        self.api.delete_pod(ev[2].namespace, ev[2].name)
                for q in live:
                    q.write(1, "run ")
                if len(live) > 6 and rnd.random() < 0.2:
                    gone = live.pop(0)
                    if not any(e[2] is gone for e in events):
                        events.append((now + 0.05, "delete", gone))
                time.sleep(0.02)
        for when, what, p in sorted(events, key=lambda e: e[0]):
            time.sleep(max(0, when - time.monotonic()))
            (self.api.put_pod(p.obj) if what == "add" else self.api.delete_pod(p.namespace, p.name))
        for p in live:
            p.write(3, "end ")
        self.wait_all(pods, timeout=30)
        self.assertLess(time.monotonic() - t0, 40)
        self.assertEqual(a.stop(), 0)

        def labels(p, c, s, *_):
            i = int(p.name[1:].split("-")[0])
            extra = ({"app": f"svc{i % 4}", "workload": f"svc{i % 4}", "workload_kind": "Deployment"} if i % 3 else
                     {"job": f"batch-{i}", "workload": f"batch-{i}", "workload_kind": "Job"})
            return dict(self.path_labels(p, c, s), **extra)
        self.check_lines(pods, labels)


class DeletionTest(KubeTestCase):
    def test_a_pod_deleted_while_its_files_drain_keeps_its_labels_to_the_last_line(self):
        p = Pod(self, "shop", "leaving-1", owner=("ReplicaSet", "leaving-5f6d"),
                labels={"app": "leaving", "pod-template-hash": "5f6d"})
        other = Pod(self, "shop", "staying-1", labels={"app": "staying"})
        self.api.put_pod(p.obj)
        self.api.put_pod(other.obj)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n")
        p.create_files().write(50, "before ")
        other.create_files().write(10)
        self.wait_all([p, other])
        self.receiver.set_faults(down_hard=True)  # the output lags: lines wait in the files
        self.api.delete_pod("shop", "leaving-1")
        other.obj["metadata"]["labels"]["app"] = "staying-v2"
        self.api.put_pod(other.obj)  # a change elsewhere: every file is described again
        a.wait_stderr(r"staying-1.*the pod's metadata changed, new lines are labelled .*staying-v2", timeout=5)
        other.write(10, "relabelled ")
        p.write(50, "after-delete ")
        p.files["app"].rotate(compress=False)  # a new file after the pod is gone
        p.write(50, "rotated ")
        time.sleep(1.0)
        p.files["app"].remove()  # the kubelet removes the dead pod's logs
        self.receiver.set_faults(down_hard=False)
        self.wait_all([p, other], timeout=40)
        self.assertEqual(a.stop(), 0)
        def labels(q, c, s, content):
            extra = ({"app": "leaving", "workload": "leaving", "workload_kind": "Deployment"} if q is p else
                     {"app": "staying-v2" if "relabelled" in content else "staying"})
            return dict(self.path_labels(q, c, s), **extra)
        self.check_lines([p, other], labels)


    def test_a_deleted_pod_is_kept_while_a_file_of_it_is_open_and_dropped_once_they_are_closed(self):
        """Not a fixed time: while the output lags past the grace a deleted pod is kept for as
        long as its files are open (a rotation then still gets its labels), and once its last
        file is closed it leaves the cache within the grace (15 s) plus a bookmark."""
        p = Pod(self, "shop", "leaving-2", labels={"app": "leaving"})
        other = Pod(self, "shop", "staying-2", labels={"app": "staying"})
        self.api.put_pod(p.obj)
        self.api.put_pod(other.obj)
        a = self.start_agent(f"  kubeconfig: {yaml_quote(self.kubeconfig())}\n")
        p.create_files().write(20, "before ")
        other.create_files().write(5)
        self.wait_all([p, other])
        self.assertEqual(self.metric(a, "loglet_kube_pods_cached"), 2)
        self.receiver.set_faults(down_hard=True)  # the output lags: the file stays open, unread
        p.write(20, "after-delete ")
        self.api.delete_pod("shop", "leaving-2")
        time.sleep(15 + 3)  # past the grace: only the open file keeps the pod
        self.assertEqual(self.metric(a, "loglet_kube_pods_cached"), 2, "dropped while a file of it was open")
        p.files["app"].rotate(compress=False)  # the new file is described after the grace
        p.write(20, "rotated ")
        self.receiver.set_faults(down_hard=False)
        self.wait_all([p, other], timeout=30)
        self.check_lines([p, other], lambda q, c, s, *_: dict(self.path_labels(q, c, s), app=q.obj["metadata"]["labels"]["app"]))
        p.files["app"].remove()  # the kubelet removes the dead pod's logs: its files close
        closed = lambda: len(re.findall(r"msg=\"closed \S*leaving-2_shop_app", a.stderr_text()))  # noqa: E731
        self.assertTrue(self.receiver.wait_for(lambda: closed() == 2, timeout=15), a.stderr_text()[-2000:])
        t0 = time.monotonic()
        ok = self.receiver.wait_for(lambda: self.metric(a, "loglet_kube_pods_cached") == 1, timeout=15 + 5)
        self.assertTrue(ok, "the deleted pod stayed cached after its files were closed")
        self.assertGreater(time.monotonic() - t0, 5, "dropped before the grace")
        self.assertEqual(a.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
