"""Issue 3's bad and unusual input, with the real binary: malformed lines,
partial lines, a 1 MB line, invalid UTF-8, NUL bytes, empty files, dangling
symlinks, unreadable files, docker json-file, lines without a newline,
exclusions and line filters, 2,000 files, container restarts and the inotify
watch limit."""
import json
import os
import subprocess
import time
import unittest

from harness import AgentTestCase, base_config, cri_line, http_get, rss_kib

TS = 1795341600_000000000


def metric(port, name):
    for line in http_get(port, "/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def json_cfg(tree, workdir, extra=""):
    return base_config(tree, workdir, "  read_from: beginning\n" + extra + "output:\n  stdout:\n    format: json\n")


class BadInputTest(AgentTestCase):
    def test_malformed_partial_long_utf8_nul_empty_and_dangling(self):
        web = self.tree.container("shop", "web-0", "app")
        web.write_raw(b"not a CRI line at all\n")
        web.write("first ", partial=True, ts_ns=TS + 1)
        web.write("second ", partial=True, ts_ns=TS + 2)
        web.write("third", ts_ns=TS + 3)
        big = ("0123456789abcdef" * 1024)  # 16 KiB, as containerd splits
        pieces = 64  # 1 MiB logical line
        for i in range(pieces):
            web.write(big, partial=i < pieces - 1, ts_ns=TS + 10)
        web.write_raw(b"2026-11-22T10:00:00.000000020Z stdout F bad \xff\xfe utf8 \xe2\x82\n")
        web.write_raw(b"2026-11-22T10:00:00.000000021Z stdout F nul\x00inside\n")
        self.tree.container("shop", "empty-0", "app")  # an empty file
        os.symlink("/nonexistent/0.log", os.path.join(self.tree.root, "containers", "gone_shop_app-" + "c" * 64 + ".log"))
        web.write("last", ts_ns=TS + 30)
        a = self.agent(json_cfg(self.tree, self.workdir)).start()
        lines = [json.loads(l) for l in a.wait_lines(9)]
        time.sleep(0.3)
        self.assertEqual(len(a.lines()), 9)
        self.assertEqual(lines[0]["line"], "not a CRI line at all")
        self.assertEqual(lines[0]["stream"], "unknown")
        self.assertEqual(lines[1]["line"], "first second third")
        self.assertEqual(lines[1]["time"], "2026-11-22T10:00:00.000000001Z")  # the first piece's time
        long_parts = [l["line"] for l in lines[2:6]]
        self.assertEqual([len(p) for p in long_parts], [262144] * 4)  # max_line_bytes pieces, none dropped
        self.assertEqual("".join(long_parts), big * pieces)
        self.assertEqual(lines[6]["line"], "bad \ufffd\ufffd utf8 \ufffd")
        self.assertEqual(lines[7]["line"], "nul\x00inside")
        self.assertEqual(lines[8]["line"], "last")
        self.assertEqual(metric(a.port, "loglet_lines_malformed_total"), 1)
        self.assertEqual(metric(a.port, "loglet_lines_split_total"), 4)
        self.assertEqual(metric(a.port, "loglet_lines_utf8_fixed_total"), 1)
        self.assertEqual(a.stop(), 0)
        log = a.stderr_text()
        self.assertEqual(log.count("gone_shop_app"), 1, log)  # said once
        self.assertIn("dangling symlink", log)

    def test_partial_timestamp_last(self):
        web = self.tree.container("shop", "web-0", "app")
        web.write("a", partial=True, ts_ns=TS + 1)
        web.write("b", ts_ns=TS + 2)
        a = self.agent(json_cfg(self.tree, self.workdir, "  partial_timestamp: last\n")).start()
        line = json.loads(a.wait_lines(1)[0])
        self.assertEqual((line["line"], line["time"]), ("ab", "2026-11-22T10:00:00.000000002Z"))
        self.assertEqual(a.stop(), 0)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to run the agent as another user")
    def test_unreadable_file_is_reported_and_others_unaffected(self):
        ok = self.tree.container("shop", "web-0", "app")
        ok.write("readable")
        locked = self.tree.container("shop", "locked-0", "app")
        locked.write("secret")
        for d, _, files in os.walk(self.workdir):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        os.chmod(locked.log_path, 0o000)
        posdir = os.path.join(self.workdir, "pos")
        os.mkdir(posdir)
        os.chown(posdir, 65534, 65534)
        cfg = base_config(self.tree, self.workdir, "  read_from: beginning\n").replace(
            os.path.join(self.workdir, "positions.yaml"), os.path.join(posdir, "positions.yaml"))
        a = self.agent(cfg)
        a.config_path_owner = os.chmod(a.config_path, 0o644)
        import harness
        real_bin = harness.LOGLET_BIN
        a.proc = None
        orig_popen = subprocess.Popen

        def as_nobody(args, **kw):
            return orig_popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + args, **kw)

        subprocess.Popen = as_nobody
        try:
            a.start()
        finally:
            subprocess.Popen = orig_popen
        self.assertEqual([l.split(" ", 3)[3] for l in a.wait_lines(1)], ["readable"])
        ok.write("still flowing")
        a.wait_lines(2)
        self.assertEqual(a.stop(), 0)
        log = a.stderr_text()
        self.assertIn(locked.link_path, log)
        self.assertIn("Permission denied", log)
        self.assertNotIn("secret", "\n".join(a.lines()))
        self.assertTrue(real_bin)


class DockerFormatTest(AgentTestCase):
    def test_docker_json_file_lines_and_pieces(self):
        web = self.tree.container("shop", "web-0", "app")

        def d(log, stream="stdout", ns=1):
            web.write_raw(json.dumps({"log": log, "stream": stream,
                                      "time": f"2026-11-22T10:00:00.{ns:09d}Z"}) + "\n")

        d("hello\n")
        d("tab\tquote\" unicode é\n", stream="stderr", ns=2)
        piece = "y" * 16384
        d(piece, ns=3)
        d(piece, ns=4)
        d("end\n", ns=5)
        for fmt in ("docker", "auto"):
            with self.subTest(format=fmt):
                if os.path.exists(os.path.join(self.workdir, "positions.yaml")):
                    os.unlink(os.path.join(self.workdir, "positions.yaml"))
                a = self.agent(json_cfg(self.tree, self.workdir, f"  format: {fmt}\n"), name=f"{fmt}.yaml").start()
                lines = [json.loads(l) for l in a.wait_lines(3)]
                self.assertEqual(a.stop(), 0)
                self.assertEqual(lines[0]["line"], "hello")
                self.assertEqual(lines[0]["time"], "2026-11-22T10:00:00.000000001Z")
                self.assertEqual((lines[1]["line"], lines[1]["stream"]), ("tab\tquote\" unicode é", "stderr"))
                self.assertEqual(lines[2]["line"], piece + piece + "end")
                self.assertEqual(lines[2]["time"], "2026-11-22T10:00:00.000000003Z")


class FlushTest(AgentTestCase):
    def test_unterminated_line_and_lonely_partial_are_flushed_after_the_timeout(self):
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir, "  partial_flush_timeout: 500ms\n")).start()
        web.write_raw(cri_line("no newline yet", ts_ns=TS)[:-1])
        time.sleep(0.2)
        self.assertEqual(a.lines(), [])
        lines = a.wait_lines(1, timeout=5)
        self.assertTrue(lines[0].endswith(" no newline yet"), lines)
        web.write_raw("\n")
        web.write("waiting for its F", partial=True, ts_ns=TS + 1)
        time.sleep(0.2)
        self.assertEqual(len(a.lines()), 1)
        lines = a.wait_lines(2, timeout=5)
        self.assertTrue(lines[1].endswith(" waiting for its F"), lines)
        self.assertEqual(metric(a.port, "loglet_lines_flushed_incomplete_total"), 2)
        self.assertEqual(a.stop(), 0)


class SelectionTest(AgentTestCase):
    def test_excluded_files_are_never_opened_and_lines_filtered(self):
        keep = self.tree.container("shop", "web-0", "app")
        ns = self.tree.container("kube-system", "coredns-1", "coredns")
        pod = self.tree.container("shop", "noisy-abc", "app")
        ctr = self.tree.container("shop", "web-1", "istio-proxy")
        for c in (keep, ns, pod, ctr):
            c.write(f"hello from {c.pod}/{c.name}")
        keep.write("DEBUG chatter")
        keep.write("ERROR something broke")
        keep.write("INFO fine")
        cfg = base_config(self.tree, self.workdir,
                          "  read_from: beginning\n  exclude_namespaces: [\"kube-*\"]\n"
                          "  exclude_pods: [\"noisy-*\"]\n  exclude_containers: [\"istio-proxy\"]\n"
                          "  exclude_lines: \"^DEBUG\"\n  include_lines: \"hello|ERROR|INFO\"\n")
        a = self.agent(cfg).start()
        lines = a.wait_lines(3)
        time.sleep(0.3)
        self.assertEqual([l.split(" ", 3)[3] for l in a.lines()],
                         ["hello from web-0/app", "ERROR something broke", "INFO fine"])
        fds = [os.readlink(f"/proc/{a.proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{a.proc.pid}/fd")]
        for c in (ns, pod, ctr):
            self.assertNotIn(c.log_path, fds)
        self.assertIn(keep.log_path, fds)
        self.assertEqual(metric(a.port, "loglet_lines_excluded_total"), 1)
        self.assertEqual(metric(a.port, "loglet_files_excluded_total"), 3)
        self.assertEqual(a.stop(), 0)
        self.assertTrue(lines)


class ScaleTest(AgentTestCase):
    def test_two_thousand_files_and_a_container_restart(self):
        containers = [self.tree.container("scale", f"pod-{i}", "app") for i in range(2000)]
        for c in containers:
            c.write(f"before {c.pod}")
        a = self.agent(base_config(self.tree, self.workdir, "  read_from: beginning\n")).start()
        a.wait_lines(2000, timeout=60)
        for c in containers:
            c.write(f"after {c.pod}")
            c.close()
        lines = a.wait_lines(4000, timeout=60)
        got = sorted(l.split(" ", 3)[3] for l in lines)
        self.assertEqual(got, sorted([f"before pod-{i}" for i in range(2000)] + [f"after pod-{i}" for i in range(2000)]))
        rss, fds = rss_kib(a.proc.pid), len(os.listdir(f"/proc/{a.proc.pid}/fd"))
        print(f"2000 files: RSS {rss} KiB, {fds} open descriptors")
        self.assertLess(rss, 200 * 1024)
        # A container restart: the runtime writes 1.log, the kubelet links it with a new id.
        restarted = self.tree.container("scale", "pod-0", "app", uid=containers[0].uid, restart=1)
        t0 = time.time()
        restarted.write("after restart")
        a.wait_lines(4001, timeout=5)
        self.assertLess(time.time() - t0, 1.0)
        self.assertEqual(a.stop(), 0)


class InotifyLimitTest(AgentTestCase):
    LIMIT = "/proc/sys/fs/inotify/max_user_watches"

    @unittest.skipUnless(os.geteuid() == 0 and os.access("/proc/sys/fs/inotify/max_user_watches", os.W_OK),
                         "needs root to lower fs.inotify.max_user_watches")
    def test_watch_limit_falls_back_to_polling(self):
        containers = [self.tree.container("lim", f"pod-{i}", "app") for i in range(100)]
        with open(self.LIMIT) as f:
            original = f.read().strip()
        try:
            with open(self.LIMIT, "w") as f:
                f.write("30")
            a = self.agent(base_config(self.tree, self.workdir, "  poll_interval: 200ms\n")).start()
            a.wait_stderr("inotify watch limit reached", timeout=10)
        finally:
            with open(self.LIMIT, "w") as f:
                f.write(original)
        for c in containers:
            c.write(f"line from {c.pod}")
        lines = a.wait_lines(100, timeout=10)
        self.assertEqual(sorted(l.split(" ", 3)[3] for l in lines), sorted(f"line from pod-{i}" for i in range(100)))
        self.assertEqual(a.stderr_text().count("inotify watch limit reached"), 1)
        self.assertEqual(metric(a.port, "loglet_inotify_fallbacks_total"), 1)
        self.assertEqual(a.stop(), 0)


class NoInotifyTest(AgentTestCase):
    LIMIT = "/proc/sys/fs/inotify/max_user_instances"

    @unittest.skipUnless(os.geteuid() == 0 and os.access("/proc/sys/fs/inotify/max_user_instances", os.W_OK),
                         "needs root to lower fs.inotify.max_user_instances")
    def test_no_inotify_instance_left_means_polling(self):
        web = self.tree.container("shop", "web-0", "app")
        with open(self.LIMIT) as f:
            original = f.read().strip()
        try:
            with open(self.LIMIT, "w") as f:
                f.write("0")
            a = self.agent(base_config(self.tree, self.workdir, "  poll_interval: 200ms\n")).start()
            a.wait_stderr("inotify unavailable", timeout=10)
        finally:
            with open(self.LIMIT, "w") as f:
                f.write(original)
        web.write("found by polling")
        new = self.tree.container("shop", "web-1", "app")
        new.write("a new pod, found by a rescan")
        lines = a.wait_lines(2, timeout=10)
        self.assertEqual(sorted(l.split(" ", 3)[3] for l in lines),
                         ["a new pod, found by a rescan", "found by polling"])
        self.assertEqual(a.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
