"""Issue 9, item 6: a push Loki refuses for who sends it or where it goes
(401/403, 404, 405, 3xx) must not drop data, a push refused for its size (413)
is split until it fits, and only content Loki judged (400) or a single entry
too large for the server is dropped, counted.

The real binary at default settings (only paths, ports, the Loki URL and the
credential file are set; unready_after only in the readiness test) tails a
kubelet-style tree whose pods write lines with unique ids, and pushes to a
receiver that decodes every body independently (tests/tools/loki_receiver.py)
behind a gate written here: a bearer-token check like an authenticating
gateway's, and a body-size limit like a proxy's. The oracle is the writers'
ground truth: every line, with its pod's labels, exactly once, in order."""
import collections
import os
import re
import secrets
import shutil
import threading
import time
import unittest

from harness import AgentTestCase, base_config, http_get, yaml_quote

import loki_receiver as lr


class GatedReceiver(lr.Receiver):
    """The fake Loki behind a gateway that checks the bearer token (any token
    not in `tokens` gets `auth_status`) and a proxy that refuses bodies above
    `max_body` bytes with 413. Nothing that is refused is stored."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._gate = threading.Lock()
        self._tokens = None
        self._auth_status = 401
        self._max_body = None

    def set_gate(self, tokens=None, auth_status=None, max_body=None, keep_max_body=True):
        with self._gate:
            self._tokens = set(tokens) if tokens is not None else None
            if auth_status is not None:
                self._auth_status = auth_status
            if not keep_max_body or max_body is not None:
                self._max_body = max_body

    def _decode_validate(self, h, body, rec):
        with self._gate:
            tokens, status, max_body = self._tokens, self._auth_status, self._max_body
        if tokens is not None:
            auth = h.headers.get("Authorization") or ""
            if not auth.startswith("Bearer ") or auth[len("Bearer "):] not in tokens:
                return status, "unauthorized", "invalid or expired token", None, None
        if max_body is not None and len(body) > max_body:
            return 413, "too_large", "body of %d bytes is above the limit of %d" % (len(body), max_body), None, None
        return super()._decode_validate(h, body, rec)

    def tokens_sent(self):
        """The bearer token of every request, in order."""
        return [(r["headers"].get("Authorization") or "").replace("Bearer ", "", 1) for r in self.requests()]

    def statuses(self):
        return [r["status"] for r in self.requests()]


class SecretVolume:
    """A Kubernetes secret (or projected token) volume: <root>/<key> is a
    symlink to ..data/<key>, ..data a symlink to a timestamped directory, and
    an update writes a new directory and renames a new ..data over the old
    one (the kubelet's AtomicWriter), then removes the old directory."""

    def __init__(self, root, key="token"):
        self.root, self.key, self.gen, self.current = root, key, 0, None
        os.makedirs(root)

    @property
    def path(self):
        return os.path.join(self.root, self.key)

    def write(self, value):
        self.gen += 1
        name = "..%s.%d" % (time.strftime("%Y_%m_%d_%H_%M_%S"), self.gen)
        d = os.path.join(self.root, name)
        os.mkdir(d)
        with open(os.path.join(d, self.key), "w") as f:
            f.write(value + "\n")
        tmp = os.path.join(self.root, "..data_tmp")
        os.symlink(name, tmp)
        os.rename(tmp, os.path.join(self.root, "..data"))
        if not os.path.lexists(self.path):
            os.symlink(os.path.join("..data", self.key), self.path)
        if self.current:
            shutil.rmtree(os.path.join(self.root, self.current))
        self.current = name

    def rewrite_in_place(self, value):
        """What an operator's `echo new > file` does: truncate, then write, in place."""
        with open(os.path.join(self.root, self.current, self.key), "w") as f:
            f.write(value + "\n")


class Writers:
    """Pods writing `id=<pod>-<n> <payload>` lines until stopped. ground_truth
    maps each id to (namespace, pod, container, the whole line)."""

    def __init__(self, tree, pods, every=0.02, payload=lambda n: "payload"):
        self.containers = [tree.container(ns, pod, c) for ns, pod, c in pods]
        self.every, self.payload = every, payload
        self.ground_truth = collections.OrderedDict()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        n = 0
        while not self.stop_event.is_set():
            for c in self.containers:
                self.write_one(c, n)
            n += 1
            time.sleep(self.every)

    def write_one(self, c, n, payload=None):
        line_id = f"{c.pod}-{n}"
        line = f"id={line_id} {payload if payload is not None else self.payload(n)}"
        c.write(line)
        with self.lock:
            self.ground_truth[line_id] = (c.namespace, c.pod, c.name, line)
        return line_id

    def burst(self, start, count, payload):
        """count lines per pod at once, numbered from start."""
        for n in range(start, start + count):
            for c in self.containers:
                self.write_one(c, n, payload(n))

    def stop(self):
        self.stop_event.set()
        if self.thread:
            self.thread.join()
        return dict(self.ground_truth)


def metric_values(port, text=None):
    """/metrics (or its text) as {'name{labels}': float}."""
    out = {}
    for line in (text if text is not None else http_get(port, "/metrics")[1]).splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def dropped_total(m):
    return sum(v for k, v in m.items() if k.startswith("loglet_lines_dropped_total"))


class GateTestCase(AgentTestCase):
    PODS = [("shop", "web-0", "app"), ("shop", "db-0", "postgres"), ("billing", "api-7f9c", "server")]

    def setUp(self):
        super().setUp()
        self.receiver = GatedReceiver().start()
        self.addCleanup(self.receiver.stop)

    def default_config(self, loki_extra=""):
        """Defaults but for paths, ports, the URL and loki_extra."""
        return base_config(self.tree, self.workdir, f"output:\n  loki:\n    url: {self.receiver.url}\n" + loki_extra)

    def start_agent(self, loki_extra="", name="loglet.yaml"):
        a = self.agent(self.default_config(loki_extra), name=name).start()
        self.addCleanup(self.assert_secrets_not_leaked, a)
        return a

    def assert_secrets_not_leaked(self, agent):
        for token in getattr(self, "tokens", ()):
            self.assertNotIn(token, agent.stderr_text())

    def wait_all_delivered(self, expected, timeout):
        ok = self.receiver.wait_for(lambda: set(expected) <= self.delivered_ids(), timeout=timeout)
        self.assertTrue(ok, "not everything arrived: %d of %d missing; receiver %s" % (
            len(set(expected) - self.delivered_ids()), len(expected), self.receiver.stats()))

    def delivered_ids(self):
        return {e["line"].split(" ", 1)[0][3:] for e in self.receiver.all_entries()}

    def assert_exactly_once_with_labels(self, truth, absent=()):
        """Every line of `truth` arrived exactly once, with its own pod's
        labels and its whole content, each stream in the order written."""
        entries = self.receiver.all_entries()
        counts = collections.Counter()
        last_seq = {}
        for e in entries:
            m = re.match(r"id=(\S+)-(\d+) ", e["line"])
            self.assertIsNotNone(m, "a line nobody wrote: %r" % e["line"][:100])
            line_id = f"{m.group(1)}-{m.group(2)}"
            counts[line_id] += 1
            self.assertIn(line_id, truth, "a line nobody wrote (or one that should have been dropped): %s" % line_id)
            ns, pod, container, line = truth[line_id]
            lm = e["label_map"]
            self.assertEqual((lm.get("namespace"), lm.get("pod"), lm.get("container"), lm.get("stream")),
                             (ns, pod, container, "stdout"), "labels of %s" % line_id)
            seq = int(m.group(2))
            self.assertGreater(seq, last_seq.get(pod, -1), "%s arrived out of its stream's order" % line_id)
            last_seq[pod] = seq
            self.assertEqual(e["line"], line, "content of %s" % line_id)
        missing = [i for i in truth if i not in counts and i not in absent]
        self.assertEqual(missing[:10], [], "%d of %d lines lost" % (len(missing), len(truth)))
        dups = {i: n for i, n in counts.items() if n > 1}
        self.assertEqual(dups, {}, "duplicated lines")
        for i in absent:
            self.assertNotIn(i, counts, "%s should have been dropped" % i)


class CredentialRotationTest(GateTestCase):
    """Scenario G: the token Loki accepts changes before the file the agent
    reads does (a Secret rotated in the API reaches the node's volume up to a
    minute later; a projected token expires before the kubelet refreshes it).
    For 20 s every push answers 401/403; then the file changes and pushes
    succeed. Nothing may be lost, duplicated or dropped."""

    def run_scenario(self, rotate, auth_status=401):
        old, new = "old-" + secrets.token_hex(16), "new-" + secrets.token_hex(16)
        self.tokens = (old, new)
        vol = SecretVolume(os.path.join(self.workdir, "secret"))
        vol.write(old)
        self.receiver.set_gate(tokens=[old], auth_status=auth_status)
        writers = Writers(self.tree, self.PODS)
        a = self.start_agent(f"    bearer_token_file: {yaml_quote(vol.path)}\n")
        writers.start()

        time.sleep(5)
        self.receiver.set_gate(tokens=[new])  # the server side rotated; the file has not yet
        t_fail = time.time()
        n_before = len(self.receiver.requests())
        ready = []
        while time.time() - t_fail < 20:
            ready.append(http_get(a.port, "/ready")[0])
            time.sleep(0.5)
        # The failing window was real: pushes went on, and every one was refused.
        window = self.receiver.requests()[n_before:]
        self.assertGreaterEqual(len(window), 4, "the agent stopped pushing while refused")
        self.assertTrue(all(r["status"] == auth_status for r in window), [r["status"] for r in window])
        m = metric_values(a.port)
        self.assertEqual(dropped_total(m), 0, "lines dropped while refused")
        self.assertEqual(m["loglet_lines_sent_total"] + 0, float(self.receiver.entry_count()))
        # 20 s < unready_after (2 m by default): still ready.
        self.assertEqual(set(ready), {200}, ready)

        rotate(vol, new)
        time.sleep(3)
        truth = writers.stop()
        # At defaults the back-off may have grown to 16..32 s by now.
        self.wait_all_delivered(truth, timeout=90)
        metrics_text = http_get(a.port, "/metrics")[1]
        m = metric_values(a.port, metrics_text)
        self.assertEqual(a.stop(), 0)
        self.assert_exactly_once_with_labels(truth)

        m_reqs = self.receiver.requests()
        refused = sum(1 for r in m_reqs if r["status"] == auth_status)
        self.assertGreater(refused, 0)
        # Every refused push was counted as such, and nothing was dropped.
        self.assertEqual(m["loglet_push_auth_failures_total"], refused)
        self.assertEqual(m['loglet_push_requests_total{status="%d"}' % auth_status], refused)
        self.assertEqual(dropped_total(m), 0)
        self.assertGreaterEqual(m["loglet_push_retries_total"], refused)
        for token in (old, new):
            self.assertNotIn(token, metrics_text)
        # Refused pushes carried the old token, accepted ones after the
        # rotation the new one; nothing was stored from a refused push.
        for r, token in zip(m_reqs, self.receiver.tokens_sent()):
            self.assertIn(token, (old, new))
            self.assertEqual(r["status"] == auth_status, token == old and r["id"] >= n_before, r)
        log = a.stderr_text()
        self.assertEqual(len(re.findall(r"HTTP %d" % auth_status, log)), 1,
                         "a refused episode is said once, not at every retry:\n" + log)
        self.assertEqual(log.count("pushes use the new credential"), 1, log)
        self.assertEqual(log.count("accepts pushes again"), 1, log)

    def test_401_then_secret_volume_swapped(self):
        self.run_scenario(lambda vol, token: vol.write(token))

    def test_401_then_token_file_rewritten_in_place(self):
        self.run_scenario(lambda vol, token: vol.rewrite_in_place(token))

    def test_403_then_secret_volume_swapped(self):
        self.run_scenario(lambda vol, token: vol.write(token), auth_status=403)

    def test_refused_lines_stay_unacknowledged_through_sigterm_and_kill(self):
        """Lines refused with 401 are not acknowledged: neither a SIGTERM (its
        grace period spent retrying) nor a kill -9 during the episode moves
        their saved offsets, so the agent started after the token is fixed
        sends every one of them."""
        old, new = "old-" + secrets.token_hex(16), "new-" + secrets.token_hex(16)
        self.tokens = (old, new)
        vol = SecretVolume(os.path.join(self.workdir, "secret"))
        vol.write(old)
        self.receiver.set_gate(tokens=[old])
        extra = f"    bearer_token_file: {yaml_quote(vol.path)}\n"
        writers = Writers(self.tree, self.PODS)
        a1 = self.start_agent(extra, name="a1.yaml")
        writers.start()
        time.sleep(3)
        self.receiver.set_gate(tokens=[new])
        n_req = len(self.receiver.requests())
        self.assertTrue(self.receiver.wait_for(lambda: self.receiver.statuses()[n_req:].count(401) >= 2, timeout=10))
        accepted_before = self.receiver.entry_count()
        self.assertEqual(a1.stop(), 0)
        a2 = self.start_agent(extra, name="a2.yaml")
        n_req = len(self.receiver.requests())
        self.assertTrue(self.receiver.wait_for(lambda: self.receiver.statuses()[n_req:].count(401) >= 2, timeout=10))
        a2.kill()
        self.assertEqual(self.receiver.entry_count(), accepted_before, "something was accepted while refused")
        vol.write(new)
        a3 = self.start_agent(extra, name="a3.yaml")
        time.sleep(3)
        truth = writers.stop()
        self.wait_all_delivered(truth, timeout=60)
        m = metric_values(a3.port)
        self.assertEqual(a3.stop(), 0)
        self.assert_exactly_once_with_labels(truth)
        self.assertEqual(dropped_total(m), 0)


class CredentialFileTest(GateTestCase):
    def test_broken_file_keeps_the_last_token_and_a_new_one_is_used_before_any_401(self):
        """The file is emptied (as a non-atomic rewrite leaves it for a moment),
        then removed: pushes go on with the last good token, said once. A new
        token written while Loki still takes both is used from the next push
        on, without a 401 first (the file's stat is checked before each push),
        so when Loki stops taking the old one nothing is refused."""
        old, new = "old-" + secrets.token_hex(16), "new-" + secrets.token_hex(16)
        self.tokens = (old, new)
        path = os.path.join(self.workdir, "token")
        with open(path, "w") as f:
            f.write(old + "\n")
        self.receiver.set_gate(tokens=[old])
        writers = Writers(self.tree, self.PODS)
        a = self.start_agent(f"    bearer_token_file: {yaml_quote(path)}\n")
        writers.start()
        time.sleep(2)
        for step in ("empty", "removed"):
            if step == "empty":
                open(path, "w").close()
            else:
                os.unlink(path)
            n = self.receiver.entry_count()
            n_req = len(self.receiver.requests())
            time.sleep(3)
            self.assertGreater(self.receiver.entry_count(), n, "pushes stopped with the file %s" % step)
            later = self.receiver.requests()[n_req:]
            self.assertGreaterEqual(len(later), 2)
            self.assertEqual({r["status"] for r in later}, {204}, step)
        log = a.stderr_text()
        self.assertEqual(log.count("pushing with the last credential"), 1, log)
        self.assertIn("is empty", log)

        self.receiver.set_gate(tokens=[old, new])
        n_req = len(self.receiver.requests())
        with open(path + ".tmp", "w") as f:
            f.write(new + "\n")
        os.rename(path + ".tmp", path)
        self.assertTrue(self.receiver.wait_for(lambda: new in self.receiver.tokens_sent()[n_req:], timeout=5),
                        "the new token was not used while the old one still worked")
        first_new = self.receiver.tokens_sent().index(new, n_req)
        self.assertLessEqual(first_new - n_req, 1, "pushes went on with the old token after the file changed")
        self.receiver.set_gate(tokens=[new])
        time.sleep(3)
        truth = writers.stop()
        self.wait_all_delivered(truth, timeout=30)
        m = metric_values(a.port)
        self.assertEqual(a.stop(), 0)
        self.assert_exactly_once_with_labels(truth)
        self.assertNotIn(401, self.receiver.statuses())
        self.assertEqual(m["loglet_push_auth_failures_total"], 0)
        self.assertEqual(set(self.receiver.tokens_sent()[first_new:]), {new})
        log = a.stderr_text()
        self.assertEqual(log.count("pushing with the last credential"), 1, log)
        self.assertEqual(log.count("pushes use the new credential"), 1, log)


class ReadinessTest(GateTestCase):
    def test_ready_follows_unready_after_through_401s(self):
        """With output.loki.unready_after: 3s (the only setting changed), /ready
        turns 503 about 3 s after pushes started failing with 401, and 200
        again once the token is fixed and a push succeeds."""
        old, new = "old-" + secrets.token_hex(16), "new-" + secrets.token_hex(16)
        self.tokens = (old, new)
        vol = SecretVolume(os.path.join(self.workdir, "secret"))
        vol.write(old)
        self.receiver.set_gate(tokens=[new])  # refused from the first push on
        writers = Writers(self.tree, self.PODS)
        a = self.start_agent(f"    bearer_token_file: {yaml_quote(vol.path)}\n    unready_after: 3s\n")
        writers.start()
        self.assertTrue(self.receiver.wait_for(lambda: 401 in self.receiver.statuses(), timeout=10))
        t_first = self.receiver.requests()[0]["time"]
        samples = []
        while time.time() - t_first < 6:
            status, body = http_get(a.port, "/ready")
            samples.append((time.time() - t_first, status, body))
            time.sleep(0.1)
        early = [st for t, st, _ in samples if t < 2.5]
        late = [(st, body) for t, st, body in samples if t > 4.0]
        self.assertTrue(early and set(early) == {200}, samples[:20])
        self.assertTrue(late and all(st == 503 for st, _ in late), samples[-20:])
        self.assertIn("pushes to Loki have been failing", late[-1][1])
        turned = min(t for t, st, _ in samples if st == 503)
        self.assertGreaterEqual(turned, 2.5)

        vol.write(new)
        deadline = time.time() + 60
        while time.time() < deadline and http_get(a.port, "/ready")[0] != 200:
            time.sleep(0.2)
        self.assertEqual(http_get(a.port, "/ready")[0], 200, "not ready again after the token was fixed")
        truth = writers.stop()
        self.wait_all_delivered(truth, timeout=60)
        m = metric_values(a.port)
        self.assertEqual(a.stop(), 0)
        self.assert_exactly_once_with_labels(truth)
        self.assertEqual(dropped_total(m), 0)
        self.assertEqual(m["loglet_push_failing_seconds"], 0)


class MisconfigurationTest(GateTestCase):
    def test_404_then_405_retried_until_fixed_nothing_lost(self):
        """A wrong path (404), then a wrong method or a proxy in the way (405):
        retried with back-off, each said once, nothing dropped."""
        writers = Writers(self.tree, self.PODS)
        a = self.start_agent()
        writers.start()
        time.sleep(2)
        n_req = len(self.receiver.requests())
        # By answers, not by time: at the default back-off a retry may come
        # several seconds after the last.
        for code, times in ((404, 4), (405, 2)):
            self.receiver.set_faults(force_status=code)
            self.assertTrue(self.receiver.wait_for(
                lambda: self.receiver.statuses()[n_req:].count(code) >= times, timeout=30), code)
        mid = metric_values(a.port)
        self.assertEqual(dropped_total(mid), 0)
        self.receiver.reset_faults()
        time.sleep(1)
        truth = writers.stop()
        self.wait_all_delivered(truth, timeout=60)
        m = metric_values(a.port)
        self.assertEqual(a.stop(), 0)
        self.assert_exactly_once_with_labels(truth)
        statuses = self.receiver.statuses()[n_req:]
        for code in (404, 405):
            self.assertIn(code, statuses)
            self.assertEqual(m['loglet_push_requests_total{status="%d"}' % code], statuses.count(code))
        self.assertGreaterEqual(statuses.count(404), 4, "404 was not retried")
        self.assertEqual(dropped_total(m), 0)
        self.assertEqual(m["loglet_push_auth_failures_total"], 0)
        log = a.stderr_text()
        self.assertEqual(len(re.findall(r"HTTP 404", log)), 1, log)
        self.assertEqual(len(re.findall(r"HTTP 405", log)), 1, log)
        self.assertIn("check output.loki.url", log)


class RejectionTest(GateTestCase):
    def test_400_is_dropped_counted_and_not_retried(self):
        """400 is Loki's verdict on the content (it has stored the valid entries):
        the batch is dropped, counted exactly, said once, not retried."""
        writers = Writers(self.tree, self.PODS)
        a = self.start_agent()
        self.receiver.set_faults(force_status=400)
        writers.burst(0, 10, lambda n: "refused")
        bad = set(writers.ground_truth)
        deadline = time.time() + 15
        while time.time() < deadline and metric_values(a.port).get('loglet_lines_dropped_total{reason="rejected"}') != 30:
            time.sleep(0.1)
        m = metric_values(a.port)
        self.assertEqual(m['loglet_lines_dropped_total{reason="rejected"}'], 30)
        n400 = self.receiver.statuses().count(400)
        time.sleep(3)
        self.assertEqual(self.receiver.statuses().count(400), n400, "a 400 was retried")
        self.receiver.reset_faults()
        writers.burst(10, 10, lambda n: "fine")
        truth = {k: v for k, v in writers.stop().items() if k not in bad}
        self.wait_all_delivered(truth, timeout=20)
        m = metric_values(a.port)
        self.assertEqual(a.stop(), 0)
        self.assert_exactly_once_with_labels(dict(truth, **{k: writers.ground_truth[k] for k in bad}), absent=bad)
        self.assertEqual(m['loglet_lines_dropped_total{reason="rejected"}'], 30)
        self.assertEqual(m["loglet_push_retries_total"], 0)
        self.assertEqual(m['loglet_push_requests_total{status="400"}'], n400)
        self.assertEqual(a.stderr_text().count("timestamp too old"), 1, a.stderr_text())


class TooLargeTest(GateTestCase):
    LIMIT = 32 * 1024

    def test_413_bodies_are_split_until_they_fit(self):
        """A proxy in front of Loki takes at most 32 KiB per request; batches
        (1 MiB of lines by default) are split in halves until every piece
        fits, first half first: every line arrives once, in order."""
        self.receiver.set_gate(max_body=self.LIMIT)
        writers = Writers(self.tree, self.PODS)
        a = self.start_agent()
        # Random hex barely compresses with snappy: bodies stay large.
        writers.burst(0, 4000, lambda n: secrets.token_hex(60))
        truth = writers.stop()
        self.wait_all_delivered(truth, timeout=60)
        deadline = time.time() + 10  # counted once the agent has read the last answer
        while time.time() < deadline and metric_values(a.port).get("loglet_lines_sent_total", 0) < len(truth):
            time.sleep(0.1)
        m = metric_values(a.port)
        self.assertEqual(a.stop(), 0)
        self.assert_exactly_once_with_labels(truth)
        reqs = self.receiver.requests()
        n413 = sum(1 for r in reqs if r["status"] == 413)
        self.assertGreater(n413, 0)
        self.assertTrue(all(r["bytes_compressed"] <= self.LIMIT for r in reqs if r["status"] == 204))
        self.assertEqual(m['loglet_push_requests_total{status="413"}'], n413)
        self.assertEqual(m["loglet_push_splits_total"], n413)
        self.assertEqual(dropped_total(m), 0)
        self.assertEqual(m["loglet_lines_sent_total"], len(truth))
        self.assertEqual(m["loglet_push_retries_total"], 0)  # a 413 is acted on at once, not retried
        self.assertEqual(a.stderr_text().count("splitting it"), 1, a.stderr_text())

    def test_413_single_entry_too_large_is_dropped_others_arrive(self):
        """One line whose body alone is above the limit is dropped and counted
        (reason too_large); the lines batched with it, before and after, all
        arrive."""
        self.receiver.set_gate(max_body=self.LIMIT)
        writers = Writers(self.tree, self.PODS)
        a = self.start_agent()
        writers.burst(0, 100, lambda n: "small %d" % n)
        big = writers.write_one(writers.containers[1], 100, secrets.token_hex(30 * 1024))  # 60 KiB
        writers.burst(101, 100, lambda n: "small %d" % n)
        truth = writers.stop()
        expected = {k: v for k, v in truth.items() if k != big}
        self.wait_all_delivered(expected, timeout=30)
        # The receiver has every line before the agent has read its answer
        # and counted the push: wait for the counters, then compare.
        deadline = time.time() + 10
        while time.time() < deadline:
            m = metric_values(a.port)
            if dropped_total(m) >= 1 and m.get("loglet_lines_sent_total", 0) >= len(expected):
                break
            time.sleep(0.1)
        m = metric_values(a.port)
        self.assertEqual(a.stop(), 0)
        self.assert_exactly_once_with_labels(truth, absent={big})
        self.assertEqual(m['loglet_lines_dropped_total{reason="too_large"}'], 1)
        self.assertEqual(dropped_total(m), 1)
        self.assertEqual(m["loglet_lines_sent_total"], len(expected))
        self.assertIn("too large a single entry", a.stderr_text())


if __name__ == "__main__":
    unittest.main(verbosity=2)
