"""Issue 2's end-to-end behaviour, with the real binary: tailing a kubelet
tree (existing files, appended lines, a pod created while running), both
stdout formats, malformed lines, probes, -check-config, SIGTERM, back-pressure."""
import json
import os
import signal
import time
import unittest

import subprocess

from harness import LOGLET_BIN, AgentTestCase, base_config, cri_line, http_get, rss_kib, run_loglet

TS = 1795341600_000000001  # 2026-11-22T10:00:00.000000001Z
TS_TEXT = "2026-11-22T10:00:00.000000001Z"


class TailingTest(AgentTestCase):
    def test_existing_appended_and_new_pod_lines_in_text(self):
        web = self.tree.container("shop", "web-0", "app")
        web.write("before start", ts_ns=TS)
        a = self.agent(base_config(self.tree, self.workdir, "  read_from: beginning\n")).start()
        self.assertEqual(a.wait_lines(1), [f"{TS_TEXT} shop/web-0/app stdout before start"])

        # Appended lines arrive within a second: inotify, not polling.
        t0 = time.time()
        web.write("appended", stream="stderr", ts_ns=TS + 1)
        lines = a.wait_lines(2, timeout=5)
        self.assertLess(time.time() - t0, 1.0)
        self.assertEqual(lines[1], "2026-11-22T10:00:00.000000002Z shop/web-0/app stderr appended")

        # A pod created while running is read from its first line.
        late = self.tree.container("monitoring", "exporter-abc12", "exporter", link=False)
        late.write("first line of a new pod", ts_ns=TS + 2)
        late.link()
        late.write("second line", ts_ns=TS + 3)
        lines = a.wait_lines(4, timeout=5)
        self.assertEqual(lines[2:], [
            "2026-11-22T10:00:00.000000003Z monitoring/exporter-abc12/exporter stdout first line of a new pod",
            "2026-11-22T10:00:00.000000004Z monitoring/exporter-abc12/exporter stdout second line",
        ])
        self.assertEqual(a.stop(), 0)

    def test_read_from_end_skips_history_of_files_present_at_start(self):
        web = self.tree.container("shop", "web-0", "app")
        web.write("old history")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        web.write("new line", ts_ns=TS)
        self.assertEqual(a.wait_lines(1), [f"{TS_TEXT} shop/web-0/app stdout new line"])
        time.sleep(0.3)
        self.assertEqual(len(a.lines()), 1)
        self.assertEqual(a.stop(), 0)

    def test_json_output_has_exact_keys_and_escaping(self):
        web = self.tree.container("shop", "web-0", "app")
        tricky = 'quote " backslash \\ tab \t ctrl \x01 unicode héllo ✓ 日本'
        web.write(tricky, ts_ns=TS)
        web.write("second", stream="stderr", ts_ns=TS + 5)
        cfg = base_config(self.tree, self.workdir, "  read_from: beginning\noutput:\n  stdout:\n    format: json\n")
        a = self.agent(cfg).start()
        lines = a.wait_lines(2)
        first, second = (json.loads(l) for l in lines)
        self.assertEqual(first, {"time": TS_TEXT, "namespace": "shop", "pod": "web-0", "container": "app",
                                 "stream": "stdout", "line": tricky})
        self.assertEqual(second["stream"], "stderr")
        self.assertEqual(second["time"], "2026-11-22T10:00:00.000000006Z")
        self.assertEqual(a.stop(), 0)

    def test_malformed_lines_are_shipped_as_is_with_read_time(self):
        web = self.tree.container("shop", "web-0", "app")
        web.write_raw("this is not a CRI line\n")
        web.write("valid", ts_ns=TS)
        cfg = base_config(self.tree, self.workdir, "  read_from: beginning\noutput:\n  stdout:\n    format: json\n")
        a = self.agent(cfg).start()
        before = time.time()
        lines = [json.loads(l) for l in a.wait_lines(2)]
        self.assertEqual(lines[0]["line"], "this is not a CRI line")
        self.assertEqual(lines[0]["stream"], "unknown")
        read_year = int(lines[0]["time"][:4])
        self.assertEqual(read_year, time.gmtime(before).tm_year)  # the read time, not a parsed one
        self.assertEqual(lines[1]["line"], "valid")
        status, body = http_get(a.port, "/metrics")
        self.assertEqual(status, 200)
        self.assertIn("loglet_lines_malformed_total 1\n", body)
        self.assertEqual(a.stop(), 0)

    def test_unterminated_last_line_waits_for_its_newline(self):
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir, "  partial_flush_timeout: 1h\n")).start()
        line = cri_line("complete me", ts_ns=TS)
        web.write_raw(line[:20])
        time.sleep(0.5)
        self.assertEqual(a.lines(), [])
        web.write_raw(line[20:])
        self.assertEqual(a.wait_lines(1), [f"{TS_TEXT} shop/web-0/app stdout complete me"])
        self.assertEqual(a.stop(), 0)

    def test_sigterm_flushes_everything_and_exits_zero(self):
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(5000):
            web.write(f"line {i}", ts_ns=TS + i)
        a.wait_lines(1)
        # Give inotify a moment to see the last writes, then stop at once.
        time.sleep(0.5)
        t0 = time.time()
        self.assertEqual(a.stop(signal.SIGTERM), 0)
        self.assertLess(time.time() - t0, 10)
        got = [l.rsplit(" ", 1)[-1] for l in a.lines()]
        self.assertEqual(got, [str(i) for i in range(5000)])

    def test_back_pressure_bounds_memory_and_loses_nothing(self):
        """A consumer that stops reading: the agent waits instead of buffering."""
        web = self.tree.container("shop", "web-0", "app")
        cfg = base_config(self.tree, self.workdir,
                          "  read_from: beginning\n  max_line_bytes: 16KiB\nbuffer:\n  max_bytes: 1MiB\n")
        payload = "x" * 180
        n = 200_000  # ~45 MB of log
        with open(web.log_path, "ab") as f:
            f.write("".join(cri_line(f"{i} {payload}", ts_ns=TS + i) for i in range(n)).encode())
        a = self.agent(cfg).start(read_stdout=False)  # nobody reads stdout for now
        time.sleep(2)
        rss = rss_kib(a.proc.pid)
        self.assertLess(rss, 64 * 1024, "RSS grew while the consumer was stalled")
        # Now read everything: all lines, in order.
        count, expect = 0, 0
        for raw in a.proc.stdout:
            num = int(raw.split(b" ", 4)[3])
            self.assertEqual(num, expect)
            expect += 1
            count += 1
            if count == n:
                break
        self.assertEqual(count, n)
        a.proc.send_signal(signal.SIGTERM)
        self.assertEqual(a.proc.wait(20), 0)


class ProbesTest(AgentTestCase):
    def test_healthz_ready_metrics_and_404(self):
        a = self.agent(base_config(self.tree, self.workdir)).start()
        self.assertEqual(http_get(a.port, "/healthz"), (200, "ok\n"))
        self.assertEqual(http_get(a.port, "/ready"), (200, "ok\n"))
        self.assertEqual(http_get(a.port, "/nope")[0], 404)
        status, body = http_get(a.port, "/metrics")
        self.assertEqual(status, 200)
        self.assertIn("# TYPE loglet_lines_read_total counter", body)
        self.assertEqual(a.stop(), 0)


class CheckConfigTest(AgentTestCase):
    def write(self, name, text):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_valid_config_prints_effective_values(self):
        path = self.write("ok.yaml", "collection:\n  logPaths: [\"/x/*.log\"]\nbuffer:\n  max_bytes: 32MiB\n")
        r = run_loglet(["-check-config", "-config", path])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("/x/*.log", r.stdout)
        self.assertIn("33554432", r.stdout.replace("32MiB", "33554432"))

    def test_env_expansion(self):
        path = self.write("env.yaml", "output:\n  loki:\n    url: ${LOKI_URL:-http://default:3100/loki/api/v1/push}\n")
        r = run_loglet(["-check-config", "--config", path])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("http://default:3100/loki/api/v1/push", r.stdout)
        env = dict(os.environ, LOKI_URL="http://loki.example:3100/loki/api/v1/push")
        r = subprocess.run([LOGLET_BIN, "-check-config", "-config", path], capture_output=True, text=True, env=env)
        self.assertIn("http://loki.example:3100/loki/api/v1/push", r.stdout)

    def test_bad_configs_name_file_line_and_key(self):
        cases = {
            "unknown.yaml": ("server:\n  http_listen_port: 3101\n  http_listen_prot: 1\n", ":3:", "http_listen_prot"),
            "duration.yaml": ("output:\n  loki:\n    batch_wait: soon\n", ":3:", "batch_wait"),
            "size.yaml": ("buffer:\n  max_bytes: 12 parsecs\n", ":2:", "max_bytes"),
            "regex.yaml": ("collection:\n  exclude_lines: \"([a-z\"\n", ":2:", "exclude_lines"),
            "enum.yaml": ("collection:\n  format: xml\n", ":2:", "format"),
            "type.yaml": ("collection:\n  paths:\n    a: b\n", ":3:", "paths"),
        }
        for name, (text, line, key) in cases.items():
            with self.subTest(name=name):
                path = self.write(name, text)
                r = run_loglet(["-check-config", "-config", path])
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertIn(path + line, r.stderr)
                self.assertIn(key, r.stderr)
                self.assertNotIn("Segmentation", r.stderr)

    def test_missing_config_file(self):
        r = run_loglet(["-config", os.path.join(self.workdir, "nope.yaml")])
        self.assertEqual(r.returncode, 1)
        self.assertIn("nope.yaml", r.stderr)
        self.assertIn("No such file", r.stderr)

    def test_flags(self):
        r = run_loglet(["-version"])
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^loglet \d+\.\d+\.\d+\n$")
        r = run_loglet(["-help"])
        self.assertEqual(r.returncode, 0)
        self.assertIn("-check-config", r.stdout)
        r = run_loglet(["-bogus"])
        self.assertEqual(r.returncode, 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
