"""Issue 4: the real binary pushing to a real HTTP receiver on 127.0.0.1 that
decodes the snappy+protobuf bodies with its own decoder (tests/tools/
loki_receiver.py), through failures, outages, rejections and restarts."""
import os
import signal
import ssl
import subprocess
import time
import unittest

from harness import AgentTestCase, SOURCE_DIR, base_config, http_get, rss_kib

import loki_receiver as lr

FIXTURES = os.path.join(SOURCE_DIR, "tests", "fixtures", "loki-push")


class LokiTestCase(AgentTestCase):
    def setUp(self):
        super().setUp()
        self.receiver = lr.Receiver().start()

    def tearDown(self):
        self.receiver.stop()
        super().tearDown()

    def loki_config(self, loki_extra="", extra="", collection="  read_from: beginning\n  positions_sync_period: 200ms\n",
                    batch_wait="100ms"):
        return base_config(self.tree, self.workdir, collection +
                           f"output:\n  shutdown_grace: 5s\n  loki:\n    url: {self.receiver.url}\n"
                           f"    batch_wait: {batch_wait}\n    min_backoff: 50ms\n    max_backoff: 500ms\n" + loki_extra + extra)

    def ids(self):
        return [e["line"].split(" ", 1)[0] for e in self.receiver.all_entries()]

    def assert_all_once(self, expected, allow_dups=0):
        got = self.ids()
        seen = set(got)
        missing = [x for x in expected if x not in seen]
        self.assertEqual(missing[:10], [], f"{len(missing)} of {len(expected)} lines lost")
        self.assertLessEqual(len(got) - len(seen), allow_dups, "duplicates")
        self.assertFalse(seen - set(expected), "unexpected lines")


class WireFormatTest(LokiTestCase):
    def test_same_push_as_promtail_for_the_fixture(self):
        """Tailing Promtail's input with Promtail's labels gives the streams Promtail pushed."""
        expected = lr.decode_push(open(os.path.join(FIXTURES, "promtail-2.8.0-push.snappy"), "rb").read())
        web = self.tree.container("shop", "web-0", "app")
        web.write_raw(open(os.path.join(FIXTURES, "input-cri.log"), "rb").read())
        # Promtail stamps a joined P+F line with its last piece's time; loglet's
        # default is the first piece's (when the line began), so ask for Promtail's.
        cfg = self.loki_config(extra="labels:\n  static: {cluster: test}\n",
                               collection="  read_from: beginning\n  partial_timestamp: last\n")
        a = self.agent(cfg, env={"NODE_NAME": ""}).start()
        self.assertTrue(self.receiver.wait_for(4))
        self.assertEqual(a.stop(), 0)

        def shape(streams):
            out = {}
            for s in streams:
                out.setdefault(s["labels"], []).extend((e["ts_ns"], e["line"]) for e in s["entries"])
            return out

        self.assertEqual(shape(self.receiver.streams()), shape(expected))
        req = self.receiver.requests()[0]
        self.assertEqual(req["headers"].get("Content-Type"), "application/x-protobuf")
        self.assertNotIn("Content-Encoding", req["headers"])

    def test_labels_tenant_node_name_and_structured_metadata(self):
        web = self.tree.container("shop", "web-0", "app")
        web.write("hello", stream="stderr")
        cfg = self.loki_config(loki_extra="    tenant_id: team-a\n    structured_metadata: true\n",
                               extra="labels:\n  stream: false\n  static: {cluster: prod-eu, region: \"eu\\\"1\"}\n")
        a = self.agent(cfg, env={"NODE_NAME": "node-7"}).start()
        self.assertTrue(self.receiver.wait_for(1))
        self.assertEqual(a.stop(), 0)
        entry = self.receiver.all_entries()[0]
        self.assertEqual(entry["labels"], '{cluster="prod-eu", container="app", namespace="shop", '
                                          'node_name="node-7", pod="web-0", region="eu\\"1"}')
        self.assertEqual(entry["metadata"], {"pod_uid": web.uid, "container_id": web.container_id})
        self.assertEqual(self.receiver.requests()[0]["headers"].get("X-Scope-OrgID"), "team-a")

    def test_bearer_token_from_file(self):
        token = os.path.join(self.workdir, "token")
        with open(token, "w") as f:
            f.write("s3cr3t-token\n")
        self.tree.container("shop", "web-0", "app").write("x")
        a = self.agent(self.loki_config(loki_extra=f"    bearer_token_file: {token}\n")).start()
        self.assertTrue(self.receiver.wait_for(1))
        self.assertEqual(self.receiver.requests()[0]["headers"].get("Authorization"), "Bearer s3cr3t-token")
        status, body = http_get(a.port, "/metrics")
        self.assertNotIn("s3cr3t", body)
        self.assertEqual(a.stop(), 0)
        self.assertNotIn("s3cr3t", a.stderr_text())


class FailureTest(LokiTestCase):
    def write_ids(self, container, prefix, start, n):
        for i in range(start, start + n):
            container.write(f"{prefix}-{i} payload")
        return [f"{prefix}-{i}" for i in range(start, start + n)]

    def test_30_percent_failing_pushes_lose_nothing(self):
        self.receiver.set_faults(fail_ratio=0.3, seed=7)
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(self.loki_config()).start()
        expected = []
        for k in range(20):
            expected += self.write_ids(web, "f", k * 500, 500)
            time.sleep(0.05)
        self.assertTrue(self.receiver.wait_for(len(expected), timeout=30), self.receiver.stats())
        self.assertEqual(a.stop(), 0)
        self.assert_all_once(expected)
        self.assertGreater(self.receiver.stats()["failed_injected"], 0)

    def test_receiver_down_30s_while_writing_and_rotating(self):
        web = self.tree.container("shop", "web-0", "app")
        cfg = self.loki_config(extra="buffer:\n  max_bytes: 4MiB\n",
                               collection="  read_from: beginning\n  max_line_bytes: 64KiB\n  positions_sync_period: 200ms\n")
        a = self.agent(cfg).start()
        expected = self.write_ids(web, "u", 0, 100)
        self.assertTrue(self.receiver.wait_for(100))
        # Cut only once the agent has its 204: the receiver records a push just
        # before answering, and a push cut in between is (rightly) sent again.
        deadline = time.time() + 10
        while time.time() < deadline and "loglet_lines_sent_total 100\n" not in http_get(a.port, "/metrics")[1]:
            time.sleep(0.05)
        self.receiver.set_faults(down_hard=True)
        peak = 0
        t0 = time.time()
        n = 100
        while time.time() - t0 < 30:
            expected += self.write_ids(web, "u", n, 2000)
            n += 2000
            # Every ~5 MB: with the kubelet's 5 files kept, nothing written
            # during the outage is deleted before it can be read (as on a
            # node with the default 10 MiB x 5 retention).
            if n % 80000 < 2000:
                web.rotate(compress=True)
            peak = max(peak, rss_kib(a.proc.pid))
            time.sleep(0.2)
        self.receiver.set_faults(down_hard=False)
        self.assertTrue(self.receiver.wait_for(len(expected), timeout=60),
                        f"{self.receiver.stats()}\n{a.stderr_text()[-3000:]}")
        self.assertEqual(a.stop(), 0)
        self.assert_all_once(expected, allow_dups=0)
        print(f"outage: {len(expected)} lines, peak RSS {peak} KiB")
        self.assertLess(peak, 48 * 1024, "RSS must stay bounded while Loki is down")

    def test_rejected_batch_is_counted_and_the_agent_goes_on(self):
        web = self.tree.container("shop", "web-0", "app")
        self.receiver.set_faults(force_status=400)
        a = self.agent(self.loki_config()).start()
        self.write_ids(web, "bad", 0, 10)
        deadline = time.time() + 10
        while time.time() < deadline and "loglet_lines_dropped_total{reason=\"rejected\"} 10" not in http_get(a.port, "/metrics")[1]:
            time.sleep(0.1)
        self.assertIn('loglet_lines_dropped_total{reason="rejected"} 10', http_get(a.port, "/metrics")[1])
        self.assertIn("timestamp too old", a.stderr_text())
        self.receiver.reset_faults()
        good = self.write_ids(web, "good", 0, 10)
        self.assertTrue(self.receiver.wait_for(10))
        self.assertEqual(a.stop(), 0)
        self.assertEqual(self.ids(), good)

    def test_sigterm_flushes_pending_batches(self):
        web = self.tree.container("shop", "web-0", "app")
        cfg = self.loki_config(batch_wait="1h")
        a = self.agent(cfg).start()
        expected = self.write_ids(web, "t", 0, 300)
        time.sleep(0.5)
        self.assertEqual(self.receiver.stats()["entries"], 0)  # batch_wait holds them
        self.assertEqual(a.stop(), 0)
        self.assert_all_once(expected)

    def test_sigkill_and_restart_while_failing_loses_nothing(self):
        self.receiver.set_faults(fail_ratio=0.5, seed=3)
        web = self.tree.container("shop", "web-0", "app")
        expected = []
        for round_ in range(3):
            a = self.agent(self.loki_config(), name=f"k{round_}.yaml").start()
            expected += self.write_ids(web, "k", round_ * 1000, 1000)
            time.sleep(1.0)
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait()
        self.receiver.reset_faults()
        last = self.agent(self.loki_config(), name="last.yaml").start()
        deadline = time.time() + 30
        while time.time() < deadline and not set(expected) <= set(self.ids()):
            time.sleep(0.2)
        self.assertEqual(last.stop(), 0)
        self.assert_all_once(expected, allow_dups=len(expected))
        print(f"sigkill+failing: {len(expected)} lines, {len(self.ids()) - len(set(self.ids()))} duplicates")


def make_certs(d):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=loglet test CA")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=loglet {name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", *ext)
    return {n: os.path.join(d, n) for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


class TLSTest(AgentTestCase):
    def receiver_tls(self, certs, require_client_cert=False):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs["server.pem"], certs["server.key"])
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(certs["ca.pem"])
        r = lr.Receiver(ssl_context=ctx).start()
        self.addCleanup(r.stop)
        return r

    def push_one(self, receiver, tls_yaml, name):
        self.tree.container("shop", name, "app").write(f"over tls {name}")
        cfg = base_config(self.tree, self.workdir,
                          "  read_from: beginning\n"
                          f"output:\n  shutdown_grace: 1s\n  loki:\n    url: {receiver.url}\n    batch_wait: 50ms\n"
                          "    min_backoff: 50ms\n    max_backoff: 200ms\n    tls:\n" + tls_yaml)
        return self.agent(cfg, name=f"{name}.yaml").start()

    def test_ca_file_insecure_skip_verify_and_mutual_tls(self):
        certs = make_certs(self.workdir)
        r = self.receiver_tls(certs)
        # Verified against the configured CA.
        a = self.push_one(r, f"      ca_file: {certs['ca.pem']}\n", "web-0")
        self.assertTrue(r.wait_for(1), a.stderr_text())
        self.assertEqual(a.stop(), 0)
        # Without the CA the certificate is refused: nothing arrives, the agent retries.
        r.clear()
        b = self.push_one(r, "      insecure_skip_verify: false\n", "web-1")
        time.sleep(1.5)
        self.assertEqual(r.entry_count(), 0)
        self.assertIn("certificate", b.stderr_text().lower())
        b.stop()
        # insecure_skip_verify is an explicit, logged opt-out.
        r.clear()
        os.unlink(os.path.join(self.workdir, "positions.yaml"))
        c = self.push_one(r, "      insecure_skip_verify: true\n", "web-2")
        self.assertTrue(r.wait_for(1), c.stderr_text())
        self.assertIn("insecure", c.stderr_text().lower())
        self.assertEqual(c.stop(), 0)
        # Mutual TLS: the receiver demands a client certificate.
        m = self.receiver_tls(certs, require_client_cert=True)
        os.unlink(os.path.join(self.workdir, "positions.yaml"))
        d = self.push_one(m, f"      ca_file: {certs['ca.pem']}\n      cert_file: {certs['client.pem']}\n"
                             f"      key_file: {certs['client.key']}\n", "web-3")
        self.assertTrue(m.wait_for(1), d.stderr_text())
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
