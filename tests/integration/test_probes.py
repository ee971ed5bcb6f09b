"""Issue 5's probes and metrics with the real binary: /metrics is valid
Prometheus exposition (promtool), /ready follows the documented rule, and no
secret ever shows up in logs or on an endpoint."""
import os
import shutil
import subprocess
import time
import unittest

from harness import AgentTestCase, base_config, http_get

import loki_receiver as lr


class MetricsTest(AgentTestCase):
    def test_metrics_pass_promtool(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool missing: scripts/setup.sh installs Debian's prometheus")
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        web.write("a line")
        a.wait_lines(1)
        # The stdout sink counts a line as sent once its write(2) returned,
        # which may be just after the reader of the pipe has it.
        deadline = time.time() + 5
        while True:
            status, body = http_get(a.port, "/metrics")
            if "loglet_lines_sent_total 1" in body or time.time() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(status, 200)
        r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for name in ("loglet_lines_read_total 1", "loglet_lines_sent_total 1", "loglet_files_tailed 1",
                     "loglet_ring_capacity_bytes 3145728", "process_resident_memory_bytes",
                     "process_open_fds", "loglet_push_duration_seconds_bucket", 'loglet_build_info{version="'):
            self.assertIn(name, body)
        self.assertEqual(a.stop(), 0)


class ReadinessTest(AgentTestCase):
    def test_ready_turns_503_while_loki_fails_and_200_after(self):
        receiver = lr.Receiver().start()
        self.addCleanup(receiver.stop)
        receiver.set_faults(fail_ratio=1.0, fail_statuses=[503])
        web = self.tree.container("shop", "web-0", "app")
        cfg = base_config(self.tree, self.workdir,
                          f"output:\n  loki:\n    url: {receiver.url}\n    batch_wait: 50ms\n"
                          "    min_backoff: 50ms\n    max_backoff: 200ms\n    unready_after: 1s\n")
        a = self.agent(cfg).start()
        self.assertEqual(http_get(a.port, "/ready")[0], 200)
        web.write("while Loki fails")
        deadline = time.time() + 10
        while time.time() < deadline and http_get(a.port, "/ready")[0] == 200:
            time.sleep(0.1)
        status, body = http_get(a.port, "/ready")
        self.assertEqual(status, 503)
        self.assertIn("pushes to Loki have been failing", body)
        self.assertEqual(http_get(a.port, "/healthz")[0], 200)  # alive, only not ready
        receiver.reset_faults()
        self.assertTrue(receiver.wait_for(1, timeout=10))
        deadline = time.time() + 5  # the receiver records a push just before answering it
        while time.time() < deadline and http_get(a.port, "/ready")[0] != 200:
            time.sleep(0.05)
        self.assertEqual(http_get(a.port, "/ready")[0], 200)
        self.assertEqual(a.stop(), 0)


class LivenessTest(AgentTestCase):
    def test_a_wedged_output_thread_fails_healthz(self):
        """Nobody reads the agent's stdout: its output thread blocks in write()
        and stops beating; after 15 s /healthz says which thread is stuck."""
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir, "  read_from: beginning\n")).start(read_stdout=False)
        line = "x" * 4000
        for i in range(200):  # ~800 KB: far more than a pipe holds
            web.write(f"{i} {line}")
        self.assertEqual(http_get(a.port, "/healthz")[0], 200)
        deadline = time.time() + 30
        status, body = 200, ""
        while time.time() < deadline and status == 200:
            time.sleep(0.5)
            status, body = http_get(a.port, "/healthz")
        self.assertEqual(status, 503)
        self.assertIn("output thread made no progress", body)
        a.kill()


class SecretsTest(AgentTestCase):
    def test_password_never_in_logs_or_metrics(self):
        receiver = lr.Receiver().start()
        self.addCleanup(receiver.stop)
        secret = os.path.join(self.workdir, "password")
        with open(secret, "w") as f:
            f.write("hunter2-very-secret\n")
        web = self.tree.container("shop", "web-0", "app")
        cfg = base_config(self.tree, self.workdir,
                          f"log:\n  level: debug\noutput:\n  loki:\n    url: {receiver.url}\n    batch_wait: 50ms\n"
                          f"    basic_auth:\n      username: loglet\n      password_file: {secret}\n")
        a = self.agent(cfg).start()
        web.write("x")
        self.assertTrue(receiver.wait_for(1))
        self.assertTrue(receiver.requests()[0]["headers"]["Authorization"].startswith("Basic "))
        for path in ("/metrics", "/ready", "/healthz", "/nope"):
            self.assertNotIn("hunter2", http_get(a.port, path)[1])
        r = subprocess.run([os.environ.get("LOGLET_BIN", "loglet"), "-check-config", "-config", a.config_path],
                           capture_output=True, text=True)
        self.assertNotIn("hunter2", r.stdout + r.stderr)
        self.assertEqual(a.stop(), 0)
        self.assertNotIn("hunter2", a.stderr_text())


if __name__ == "__main__":
    unittest.main(verbosity=2)
