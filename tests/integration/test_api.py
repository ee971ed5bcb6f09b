"""Issue 12: the logs API and `loglet tail` against the real agent, real
files (rotated, gzipped, restarted pods) and real sockets. Every check is on
the lines' content and metadata as the test wrote them, not on counts."""
import json
import re
import os
import socket
import stat
import subprocess
import threading
import time
import unittest

from harness import LOGLET_BIN, AgentTestCase, run_loglet, yaml_quote

import loki_receiver as lr
from kubelet import cri_line

T0 = 1_700_000_000_000_000_000  # a fixed past time, so since/until have exact answers


def api_config(test, extra_api="", extra=""):
    return (
        "server:\n  http_listen_address: 127.0.0.1\n  http_listen_port: 0\n"
        f"  api:\n    socket: {yaml_quote(test.sock)}\n{extra_api}"
        f"collection:\n  paths: [{yaml_quote(test.tree.glob)}]\n"
        f"  positions_file: {yaml_quote(os.path.join(test.workdir, 'positions.yaml'))}\n"
        "  read_from: beginning\n" + extra)


def request(path, sock=None, tcp=None, headers=""):
    """One GET; returns (status, raw head, [objects])."""
    s = socket.socket(socket.AF_UNIX) if sock else socket.create_connection(tcp)
    if sock:
        s.connect(sock)
    s.settimeout(20)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"application/x-ndjson" not in head and body.strip():
        return status, head.decode(), [json.loads(body)]
    return status, head.decode(), [json.loads(l) for l in body.decode().splitlines() if l]


class Follower:
    """A streaming GET whose objects are gathered by a thread (or not read at all)."""

    def __init__(self, sock, query, read=True):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(sock)
        self.s.sendall(f"GET /api/v1/logs?follow=true&{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.objects, self.buf, self.head = [], b"", None
        self.lock = threading.Lock()
        if read:
            threading.Thread(target=self.pump, daemon=True).start()

    def pump(self):
        while True:
            try:
                chunk = self.s.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.buf += chunk
                if self.head is None and b"\r\n\r\n" in self.buf:
                    self.head, _, self.buf = self.buf.partition(b"\r\n\r\n")
                if self.head is not None:
                    *lines, self.buf = self.buf.split(b"\n")
                    self.objects += [json.loads(l) for l in lines if l]

    def lines(self):
        with self.lock:
            return [o for o in self.objects if o["status"] == "streaming"]

    def wait(self, n, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.lines()) >= n:
                return self.lines()
            time.sleep(0.05)
        raise AssertionError(f"follower got {len(self.lines())} of {n} lines: {self.lines()[-5:]}")

    def close(self):
        self.s.close()


def rfc3339(ns):
    import datetime
    sec, frac = divmod(ns, 1_000_000_000)
    return datetime.datetime.fromtimestamp(sec, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + ".%09dZ" % frac


class ApiTestCase(AgentTestCase):
    def setUp(self):
        super().setUp()
        self.sock = os.path.join(self.workdir, "run", "api.sock")

    def start(self, **kw):
        a = self.agent(api_config(self, **kw)).start()
        a.wait_stderr("logs API on unix:")
        return a

    def logs(self, query):
        status, head, objs = request("/api/v1/logs?" + query, sock=self.sock)
        self.assertEqual(status, 200, objs)
        self.assertEqual(objs[-1]["status"], "completed", objs[-3:])
        return [o for o in objs[:-1]], objs[-1]


def key(o):
    return (o["namespace"], o["pod_name"], o["container"], o["log_line"], o["line_number"], o["time"], o["stream"])


class HistoryTest(ApiTestCase):
    def setUp(self):
        super().setUp()
        # web: 0.log.<1>.gz (lines 1-4), 0.log.<2> (5-7), 0.log (8-10); db: 0.log, interleaved in time.
        self.expected = []
        web = self.tree.container("shop", "web-0", "app")
        db = self.tree.container("shop", "db-0", "pg")
        n = {"web": 0, "db": 0}

        def put(c, name, i, stream="stdout"):
            ts = T0 + i * 1000
            c.write(f"{name} line {i} \"quoted\" \\ é", stream=stream, ts_ns=ts)
            n[name] += 1
            meta = ("shop", "web-0", "app") if name == "web" else ("shop", "db-0", "pg")
            self.expected.append(meta + (f"{name} line {i} \"quoted\" \\ é", n[name], rfc3339(ts), stream))

        for i in range(0, 8, 2):
            put(web, "web", i)
            put(db, "db", i + 1, "stderr" if i == 4 else "stdout")
        web.rotate()  # 0.log.<1>, later gzipped
        for i in range(8, 14, 2):
            put(web, "web", i)
        time.sleep(1.1)  # the kubelet's stamp has seconds
        web.rotate()  # now <1>.gz and <2>
        for i in range(14, 20, 2):
            put(web, "web", i)
            put(db, "db", i + 1)
        files = sorted(os.listdir(web.dir))
        self.assertTrue(any(f.endswith(".gz") for f in files) and len(files) == 3, files)
        self.expected.sort(key=lambda e: e[5])

    def test_history_across_rotation_and_gz_merged_in_time_order(self):
        self.start()
        lines, done = self.logs("")
        self.assertEqual([key(o) for o in lines], self.expected)
        self.assertEqual(done["message"], "%d lines from 2 containers" % len(self.expected))
        for o in lines:
            self.assertEqual(o["timestamp"], float("%d.%09d" % divmod(
                [T0 + i * 1000 for i in range(40) if rfc3339(T0 + i * 1000) == o["time"]][0], 1_000_000_000)))

    def test_tail_lines_max_lines_grep_since_until_stream(self):
        self.start()
        exp = self.expected
        lines, _ = self.logs("tail_lines=3")
        want = [e for e in exp if e[0:3] == ("shop", "web-0", "app")][-3:] + \
               [e for e in exp if e[0:3] == ("shop", "db-0", "pg")][-3:]
        self.assertEqual([key(o) for o in lines], sorted(want, key=lambda e: e[5]))
        lines, done = self.logs("max_lines=5")
        self.assertEqual([key(o) for o in lines], exp[:5])
        self.assertIn("max_lines reached", done["message"])
        lines, _ = self.logs("tail_lines=2&max_lines=3&pod=web-*")
        self.assertEqual([key(o) for o in lines], [e for e in exp if e[1] == "web-0"][-2:])
        lines, _ = self.logs("grep=" + "line%20(1[0-5]|3)%20")
        self.assertEqual([key(o) for o in lines],
                         [e for e in exp if e[3].split()[2] in ("3", "10", "11", "12", "13", "14", "15")])
        since, until = rfc3339(T0 + 5 * 1000), rfc3339(T0 + 12 * 1000)
        lines, _ = self.logs(f"since={since}&until={until}")
        self.assertEqual([key(o) for o in lines], [e for e in exp if since <= e[5] <= until])
        lines, _ = self.logs("stream=stderr")
        self.assertEqual([key(o) for o in lines], [e for e in exp if e[6] == "stderr"])
        self.assertEqual(len(lines), 1)
        lines, _ = self.logs("container=pg&exclude_pod=web*")
        self.assertEqual([key(o) for o in lines], [e for e in exp if e[1] == "db-0"])
        lines, _ = self.logs("namespace=other,x*")
        self.assertEqual(lines, [])
        # The CLI: kubectl's flags, text output TIME ns/pod/container LINE.
        out = subprocess.run([LOGLET_BIN, "tail", "--socket", self.sock, "db-0", "--tail", "2"],
                             capture_output=True, text=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(),
                         [f"{e[5]} shop/db-0/pg {e[3]}" for e in exp if e[1] == "db-0"][-2:])
        out = subprocess.run([LOGLET_BIN, "tail", "--socket", self.sock, "-o", "json", "-g", "web line 1[68]",
                              "--color", "always"], capture_output=True, text=True, timeout=20)
        got = [json.loads(l) for l in out.stdout.splitlines()]
        self.assertEqual([key(o) for o in got[:-1]], [e for e in exp if e[3].startswith(("web line 16", "web line 18"))])
        out = subprocess.run([LOGLET_BIN, "tail", "--socket", self.sock, "--pod", "web-0", "--tail=1", "--color", "always"],
                             capture_output=True, text=True, timeout=20)
        e = [e for e in exp if e[1] == "web-0"][-1]
        self.assertRegex(out.stdout, "^" + re.escape(e[5]) + r" \x1b\[\d+mshop/web-0\x1b\[0m/\x1b\[\d+mapp\x1b\[0m "
                         + re.escape(e[3]) + "\n$")

    def test_docker_format_partial_lines_and_invalid_utf8(self):
        dock = self.tree.container("shop", "dock-0", "app")
        t = rfc3339(T0 + 500)
        dock.write_raw(json.dumps({"log": "joined ", "stream": "stdout", "time": t}) + "\n")
        dock.write_raw(json.dumps({"log": "from two \"pieces\"\n", "stream": "stdout", "time": t}) + "\n")
        dock.write_raw(json.dumps({"log": "on stderr\n", "stream": "stderr", "time": t}) + "\n")
        with open(dock.log_path, "ab") as f:
            f.write(b"2023-11-14T22:13:20.000000002Z stdout F raw \xff\xfe bytes\n")
        self.start()
        lines, _ = self.logs("pod=dock-0")
        got = [(o["log_line"], o["stream"], o["line_number"]) for o in lines]
        # docker's pieces joined; a CRI line with invalid UTF-8 gets U+FFFD, as the collector ships it.
        self.assertEqual(got, [('joined from two "pieces"', "stdout", 1), ("on stderr", "stderr", 2),
                               ("raw \ufffd\ufffd bytes", "stdout", 3)])

    def test_bad_queries_get_specific_errors(self):
        self.start()
        for query, message in [
            ("since=yesterday", "since: 'yesterday' is neither a duration"),
            ("tail_lines=-5", "tail_lines: '-5' is not a non-negative integer"),
            ("max_lines=99999999999999999999", "max_lines: 99999999999999999999 is over the limit"),
            ("grep=(unclosed", "grep: invalid regular expression at offset 9"),
            ("pod=web-[0", "pod: unbalanced '[' in glob"),
            ("follow=maybe", "follow: 'maybe' is not true or false"),
            ("colour=red", "unknown parameter 'colour'"),
            ("pod=a&pod=b", "pod: given more than once"),
            ("pod=%zz", "pod: bad percent-encoding"),
            ("pod=%00", "pod: NUL byte not allowed"),
            ("stream=both", "stream: 'both' is not stdout, stderr or all"),
            ("job=migrate", "job: selecting a Job's pods needs Kubernetes metadata"),
            ("since=2025-01-02T00:00:00Z&until=2024-01-01T00:00:00Z", "since is after until"),
        ]:
            status, _, objs = request("/api/v1/logs?" + query, sock=self.sock)
            self.assertEqual((status, objs[0]["status"]), (400, "error"), query)
            self.assertIn(message, objs[0]["message"], query)
        status, _, objs = request("/api/v1/nothing", sock=self.sock)
        self.assertEqual(status, 404)
        out = subprocess.run([LOGLET_BIN, "tail", "--socket", self.sock, "--since", "soon"],
                             capture_output=True, text=True, timeout=20)
        self.assertEqual(out.returncode, 1)
        self.assertIn("since: 'soon' is neither a duration", out.stderr)


class FollowTest(ApiTestCase):
    def test_follow_across_rotation_and_restart_without_gap_or_duplicate(self):
        web = self.tree.container("shop", "web-0", "app")
        written = []  # (pod, container, line) in the order written

        def put(c, text):
            c.write(text)
            written.append((c.pod, c.name, text))

        for i in range(50):
            put(web, f"before {i}")
        self.start()
        f = Follower(self.sock, "namespace=shop&tail_lines=10")
        f.wait(10)
        for i in range(200):
            put(web, f"live {i}")
            if i == 60:
                web.rotate()
            if i == 120:
                web.rotate()
        web.close()
        restarted = self.tree.container("shop", "web-0", "app", uid=web.uid, restart=1)
        for i in range(100):
            put(restarted, f"restarted {i}")
        late = self.tree.container("shop", "api-7", "srv")
        for i in range(30):
            put(late, f"new pod {i}")
        self.tree.container("other", "x", "y").write("not selected")
        want = written[40:]
        got = f.wait(len(want), timeout=30)
        time.sleep(0.5)
        got = f.lines()
        f.close()
        self.assertEqual(sorted((o["pod_name"], o["container"], o["log_line"]) for o in got), sorted(want))
        # Per file in the written order (the collector reads a restarted container's new file
        # beside its predecessor's rotated ones, so across files only the set is fixed), and the
        # container's lines numbered on from its history without a gap or a repeat.
        for prefix in ("before", "live", "restarted", "new pod"):
            self.assertEqual([o["log_line"] for o in got if o["log_line"].startswith(prefix)],
                             [w[2] for w in want if w[2].startswith(prefix)])
        web_lines = [o for o in got if o["pod_name"] == "web-0"]
        self.assertEqual(sorted(o["line_number"] for o in web_lines), list(range(41, 41 + len(web_lines))))
        self.assertEqual([o["line_number"] for o in got if o["pod_name"] == "api-7"], list(range(1, 31)))
        self.assertFalse([o for o in f.objects if o["status"] != "streaming"])


class SlowFollowerTest(ApiTestCase):
    def test_a_stalled_follower_gets_its_gaps_from_the_file_and_loki_gets_everything(self):
        receiver = lr.Receiver().start()
        self.addCleanup(receiver.stop)
        a = self.start(extra_api="    subscriber_buffer: 128KiB\n",
                       extra=f"output:\n  loki:\n    url: {receiver.url}\n    batch_wait: 100ms\n")
        stalled = Follower(self.sock, "tail_lines=0", read=False)
        stalled.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader = Follower(self.sock, "tail_lines=0")
        time.sleep(0.3)
        web = self.tree.container("shop", "web-0", "app")
        total = 20000
        pad = "x" * 150
        for i in range(total):
            web.write(f"{i} {pad}")
        self.assertTrue(receiver.wait_for(total, timeout=60), "Loki did not get every line")
        entries = receiver.all_entries()
        self.assertEqual(sorted(int(e["line"].split()[0]) for e in entries), list(range(total)))
        # A follower that reads (slower than the agent writes, in Python) may also miss some:
        # what it got plus what it was told it missed is everything, in order.
        deadline = time.time() + 30
        while time.time() < deadline and not any(o.get("log_line") == f"{total - 1} {pad}" for o in reader.objects):
            time.sleep(0.1)
        r_got = reader.lines()
        r_missed = sum(int(o["message"].split()[0]) for o in reader.objects if o["status"] == "error")
        self.assertEqual(len(r_got) + r_missed, total)
        self.assertEqual([o["log_line"] for o in r_got], [f"{o['line_number'] - 1} {pad}" for o in r_got])
        # Now read the stalled one: what its queue had no room for is read from the file it
        # still can open (the collector still tails it), so it gets every line, numbered.
        stalled.pump_thread = threading.Thread(target=stalled.pump, daemon=True)
        stalled.pump_thread.start()
        web.write("last")
        deadline = time.time() + 60
        while time.time() < deadline and not any(o.get("log_line") == "last" for o in stalled.objects):
            time.sleep(0.1)
        got = [o for o in stalled.objects if o["status"] == "streaming"]
        self.assertEqual([o for o in stalled.objects if o["status"] != "streaming"], [])
        self.assertEqual([(o["log_line"], o["line_number"]) for o in got],
                         [(f"{i} {pad}", i + 1) for i in range(total)] + [("last", total + 1)])
        stalled.close()
        reader.close()
        self.assertEqual(a.stop(), 0)


class AccessTest(ApiTestCase):
    def test_socket_mode_tcp_needs_a_token_and_checks_it(self):
        cfg_path = os.path.join(self.workdir, "tcp.yaml")
        with open(cfg_path, "w") as f:
            f.write(api_config(self, extra_api="    listen_address: 127.0.0.1\n"))
        out = run_loglet(["-check-config", "-config", cfg_path])
        self.assertEqual(out.returncode, 1)
        self.assertIn("server.api.listen_address", out.stderr)
        self.assertIn("needs server.api.bearer_token_file", out.stderr)
        p = subprocess.run([LOGLET_BIN, "-config", cfg_path], capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 1)  # refused at start, not served
        token = os.path.join(self.workdir, "token")
        with open(token, "w") as f:
            f.write("s3cret-token\n")
        self.tree.container("shop", "web-0", "app").write("hello")
        a = self.start(extra_api=f"    listen_address: 127.0.0.1\n    listen_port: 0\n"
                                 f"    bearer_token_file: {yaml_quote(token)}\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.sock).st_mode), 0o600)
        self.assertTrue(stat.S_ISSOCK(os.stat(self.sock).st_mode))
        a.wait_stderr(r"logs API on tcp 127.0.0.1:(\d+)")
        import re
        port = int([re.search(r"logs API on tcp 127.0.0.1:(\d+)", l).group(1) for l in a.stderr_lines
                    if "logs API on tcp" in l][0])
        for hdr in ["", "Authorization: Bearer wrong\r\n", "Authorization: Bearer s3cret-tokenX\r\n",
                    "Authorization: Basic s3cret-token\r\n", "Authorization: Bearer s3cret-toke\r\n"]:
            status, head, objs = request("/api/v1/logs", tcp=("127.0.0.1", port), headers=hdr)
            self.assertEqual(status, 401, hdr)
            self.assertIn("WWW-Authenticate: Bearer", head)
            self.assertFalse([o for o in objs if o["status"] == "streaming"])
        status, _, objs = request("/api/v1/logs", tcp=("127.0.0.1", port),
                                  headers="Authorization: Bearer s3cret-token\r\n")
        self.assertEqual(status, 200)
        self.assertEqual(objs[0]["log_line"], "hello")
        out = subprocess.run([LOGLET_BIN, "tail", "--address", f"127.0.0.1:{port}", "--token-file", token],
                             capture_output=True, text=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(out.stdout.endswith(" shop/web-0/app hello\n"), out.stdout)
        self.assertEqual(a.stop(), 0)
        self.assertFalse(os.path.exists(self.sock), "the socket is removed at stop")

    def test_hostile_clients_and_the_history_limit(self):
        web = self.tree.container("shop", "web-0", "app")
        for i in range(100):
            web.write(f"line {i} " + "y" * 100)
        self.start(extra_api="    max_history_bytes: 4KiB\n", extra="")
        status, _, objs = request("/api/v1/logs", sock=self.sock)
        self.assertEqual(status, 200)  # the head went out before the limit was met
        self.assertEqual(objs[-1]["status"], "error")
        self.assertIn("history is over server.api.max_history_bytes (4096 bytes read)", objs[-1]["message"])
        self.assertEqual([o["log_line"] for o in objs[:-1]], [f"line {i} " + "y" * 100 for i in range(len(objs) - 1)])
        # A head that never ends is closed after request_timeout (5 s by default), others are served meanwhile.
        slow = socket.socket(socket.AF_UNIX)
        slow.connect(self.sock)
        slow.sendall(b"GET /api/v1/logs HTTP/1.1\r\n")
        big = socket.socket(socket.AF_UNIX)
        big.connect(self.sock)
        big.sendall(b"GET /api/v1/logs?" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
        self.assertIn(b" 431 ", big.recv(4096))
        status, _, objs = request("/api/v1/logs?max_lines=1", sock=self.sock)
        self.assertEqual(status, 200)
        slow.settimeout(10)
        t0 = time.time()
        self.assertEqual(slow.recv(100), b"")
        self.assertLess(time.time() - t0, 9)
        # A follower that vanishes mid-stream frees its slot.
        for _ in range(3):
            f = Follower(self.sock, "")
            time.sleep(0.2)
            f.close()

    def test_serves_only_what_the_collector_tails(self):
        """Excluded namespaces and links leading outside the symlink roots stay out of the API too."""
        self.tree.container("shop", "web-0", "app").write("shown")
        self.tree.container("secret", "vault-0", "vault").write("hidden: excluded namespace")
        outside = os.path.join(self.workdir, "elsewhere", "default_evil_1234", "c")
        os.makedirs(outside)
        with open(os.path.join(outside, "0.log"), "w") as f:
            f.write("2023-11-14T22:13:20.000000000Z stdout F hidden: outside the roots\n")
        os.symlink(os.path.join(outside, "0.log"),
                   os.path.join(self.tree.root, "containers", "evil_default_c-" + "0" * 64 + ".log"))
        a = self.start(extra='  exclude_namespaces: ["secret"]\n')
        a.wait_stderr("outside|symlink root|not under", timeout=10)
        lines, _ = self.logs("")
        self.assertEqual([o["log_line"] for o in lines], ["shown"])
        lines, _ = self.logs("namespace=secret,default")
        self.assertEqual(lines, [])

    def test_max_subscribers_answered_with_a_clear_error(self):
        self.start(extra_api="    max_subscribers: 2\n")
        f1, f2 = Follower(self.sock, ""), Follower(self.sock, "")
        time.sleep(0.3)
        status, _, objs = request("/api/v1/logs", sock=self.sock)
        self.assertEqual(status, 503)
        self.assertIn("server.api.max_subscribers (2)", objs[0]["message"])
        # Stopping the agent with followers attached is prompt and clean.
        t0 = time.time()
        self.assertEqual(self.agents[-1].stop(), 0)
        self.assertLess(time.time() - t0, 5)
        f1.close()
        f2.close()




class TargetsAndStatusPageTest(ApiTestCase):
    """/api/v1/targets, and /status loaded in a real headless browser (Debian's chromium)."""

    def wait_delivered(self, want_paths):
        deadline = time.time() + 20
        while time.time() < deadline:
            status, _, objs = request("/api/v1/targets", sock=self.sock)
            self.assertEqual(status, 200)
            targets = {t["real_path"]: t for t in objs[0]["targets"]} if objs else {}
            if all(p in targets and targets[p]["acked_offset"] == os.path.getsize(p) for p in want_paths):
                return targets
            time.sleep(0.1)
        raise AssertionError(f"targets never caught up: {objs}")

    def test_targets_and_status_page_show_the_files_with_their_offsets(self):
        web = self.tree.container("shop", "web-0", "app")
        odd = self.tree.container("shop", "a-b&c", "x<y>")  # escaped everywhere it is shown
        for i in range(30):
            web.write(f"web {i}")
        odd.write("odd one")
        a = self.start()
        paths = [os.path.realpath(web.log_path), os.path.realpath(odd.log_path)]
        targets = self.wait_delivered(paths)
        t = targets[paths[0]]
        self.assertEqual((t["namespace"], t["pod_name"], t["container"]), ("shop", "web-0", "app"))
        self.assertEqual(t["path"], web.link_path)
        size = os.path.getsize(paths[0])
        self.assertEqual((t["size"], t["read_offset"], t["acked_offset"], t["lag_bytes"], t["lag_seconds"]),
                         (size, size, size, 0, 0))
        self.assertEqual((t["format"], t["watcher"], t["state"], t["last_error"]), ("cri", "inotify", "active", ""))
        self.assertEqual(targets[paths[1]]["container"], "x<y>")

        import shutil
        import urllib.request
        html = urllib.request.urlopen(f"http://127.0.0.1:{a.port}/status", timeout=10).read().decode()
        self.assertNotIn("<y>", html)
        self.assertIn("a-b&amp;c/x&lt;y&gt;", html)
        self.assertNotIn("<script", html.lower())
        self.assertNotIn("http://", html.replace(f"http://127.0.0.1", ""), "no external assets")
        self.assertIn('http-equiv=refresh', html)
        browser = shutil.which("chromium")
        if not browser:
            self.skipTest("chromium is not installed (scripts/setup.sh installs it)")
        art_dir = os.environ.get("LOGLET_ARTIFACTS", os.path.join(os.path.dirname(os.path.abspath(LOGLET_BIN)),
                                                                  "artifacts"))
        os.makedirs(art_dir, exist_ok=True)
        shot = os.path.join(art_dir, "status-page.png")
        common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  f"--user-data-dir={os.path.join(self.workdir, 'chromium')}", "--window-size=1400,900"]
        url = f"http://127.0.0.1:{a.port}/status"
        dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=90)
        self.assertEqual(dom.returncode, 0, dom.stderr[-2000:])
        # The browser's DOM: the targets table, one row per file, with the offsets the file has.
        import html.parser

        class Rows(html.parser.HTMLParser):
            def __init__(self):
                super().__init__()
                self.rows, self.cell, self.in_targets = [], None, False

            def handle_starttag(self, tag, attrs):
                if tag == "table" and ("id", "targets") in attrs:
                    self.in_targets = True
                elif tag == "tr" and self.in_targets:
                    self.rows.append([])
                elif tag in ("td", "th") and self.in_targets:
                    self.cell = ""

            def handle_endtag(self, tag):
                if tag == "table":
                    self.in_targets = False
                elif tag in ("td", "th") and self.cell is not None:
                    self.rows[-1].append(self.cell)
                    self.cell = None

            def handle_data(self, data):
                if self.cell is not None:
                    self.cell += data

        parser = Rows()
        parser.feed(dom.stdout)
        header, body = parser.rows[0], parser.rows[1:]
        self.assertEqual(header[:7], ["namespace/pod/container", "path", "size", "read offset",
                                      "acknowledged offset", "lag bytes", "lag s"])
        by_name = {r[0]: r for r in body}
        self.assertEqual(set(by_name), {"shop/web-0/app", "shop/a-b&c/x<y>"})
        for name, p in (("shop/web-0/app", paths[0]), ("shop/a-b&c/x<y>", paths[1])):
            n = str(os.path.getsize(p))
            self.assertEqual(by_name[name][1:7], [p, n, n, n, "0", "0"])
        self.assertIn("loglet status", dom.stdout)
        shotrun = subprocess.run(common + [f"--screenshot={shot}", url], capture_output=True, text=True, timeout=90)
        self.assertEqual(shotrun.returncode, 0, shotrun.stderr[-2000:])
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        print(f"\nstatus page screenshot: {shot}")
        self.assertEqual(a.stop(), 0)


def read_all(s, timeout=15):
    """Everything a connection sends until it closes (or goes quiet for `timeout`)."""
    data = b""
    s.settimeout(timeout)
    try:
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return [json.loads(l) for l in data.partition(b"\r\n\r\n")[2].decode().splitlines() if l.strip()]


class ReviewTest(ApiTestCase):
    """The findings of issue 12's review, each against the real agent."""

    def test_anonymous_tcp_connections_hold_no_request_slot(self):
        token = os.path.join(self.workdir, "token")
        with open(token, "w") as f:
            f.write("s3cret-token\n")
        self.tree.container("shop", "web-0", "app").write("hello")
        a = self.start(extra_api=f"    listen_address: 127.0.0.1\n    listen_port: 0\n"
                                 f"    bearer_token_file: {yaml_quote(token)}\n    max_subscribers: 2\n")
        a.wait_lines(1)
        a.wait_stderr(r"logs API on tcp 127.0.0.1:(\d+)")
        port = int([re.search(r"logs API on tcp 127.0.0.1:(\d+)", l).group(1) for l in a.stderr_lines
                    if "logs API on tcp" in l][0])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        wrong = []
        for _ in range(5):
            w = socket.create_connection(("127.0.0.1", port))
            w.sendall(b"GET /api/v1/logs?follow=true HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n")
            wrong.append(w)
        time.sleep(0.5)
        # Local users and token holders are served, with every slot they are owed.
        f1 = Follower(self.sock, "namespace=shop")
        f1.wait(1)
        status, _, objs = request("/api/v1/logs?namespace=shop", sock=self.sock)
        self.assertEqual((status, objs[0]["log_line"]), (200, "hello"))
        status, _, objs = request("/api/v1/logs?namespace=shop", tcp=("127.0.0.1", port),
                                  headers="Authorization: Bearer s3cret-token\r\n")
        self.assertEqual((status, objs[0]["log_line"]), (200, "hello"))
        for w in wrong:
            w.settimeout(5)
            self.assertIn(b" 401 ", w.recv(4096))
        # Connections that send nothing are closed after the header timeout.
        time.sleep(2.5)
        for s_ in idle:
            s_.settimeout(5)
            self.assertEqual(s_.recv(100), b"")
        f1.close()

    def test_rotation_and_compression_during_a_history_read_skip_nothing(self):
        a = self.start()
        c = self.tree.container("shop", "web-0", "app")
        for gen in ("gen1", "gen2"):
            c.write_raw("".join(cri_line(f"{gen} {i} " + "x" * 200) for i in range(8000)))
            c.rotate(compress=False)
            time.sleep(1.1)  # the kubelet's stamp has seconds
        for i in range(100):
            c.write(f"gen3 {i}")
        a.wait_lines(16100, timeout=60)
        s_ = socket.socket(socket.AF_UNIX)
        s_.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s_.connect(self.sock)
        s_.sendall(b"GET /api/v1/logs?namespace=shop HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1.0)  # the history waits for the client, in gen1
        c.rotate(compress=True)  # gen3 renamed, gen1 and gen2 gzipped and their plain files unlinked
        objs = read_all(s_)
        got = [o["log_line"].split()[0] + " " + o["log_line"].split()[1] for o in objs if o["status"] == "streaming"]
        want = [f"gen1 {i}" for i in range(8000)] + [f"gen2 {i}" for i in range(8000)] + [f"gen3 {i}" for i in range(100)]
        self.assertEqual(got, want)
        self.assertEqual(objs[-1]["status"], "completed")

    def test_a_new_pods_first_lines_reach_a_follower(self):
        a = self.start()
        for k in range(4):
            c = self.tree.container("race", f"pod-{k}", "app")
            n0 = len(a.lines())
            for i in range(3):
                c.write(f"pod-{k} early-{i}")
            a.wait_lines(n0 + 3)  # read and shipped, less than a snapshot period ago
            f = Follower(self.sock, f"namespace=race&pod=pod-{k}")
            time.sleep(0.2)
            c.write(f"pod-{k} late")
            got = f.wait(4)
            f.close()
            self.assertEqual([(o["log_line"], o["line_number"]) for o in got],
                             [(f"pod-{k} early-{i}", i + 1) for i in range(3)] + [(f"pod-{k} late", 4)])

    def test_tail_lines_with_follow_while_the_collector_lags_sends_no_duplicate(self):
        receiver = lr.Receiver().start()
        self.addCleanup(receiver.stop)
        receiver.set_faults(fail_ratio=1.0)
        self.start(extra=f"  max_line_bytes: 16KiB\nbuffer:\n  max_bytes: 192KiB\n"
                         f"output:\n  loki:\n    url: {receiver.url}\n    batch_wait: 100ms\n    batch_bytes: 64KiB\n"
                         "    min_backoff: 100ms\n    max_backoff: 200ms\n")
        c = self.tree.container("shop", "web-0", "app")
        for i in range(4000):
            c.write(f"old {i} " + "x" * 200)
        c.rotate(compress=False)  # the current file is empty; the collector is far behind (Loki down)
        time.sleep(2.0)
        f = Follower(self.sock, "namespace=shop&tail_lines=2")
        f.wait(2)
        receiver.reset_faults()
        self.assertTrue(receiver.wait_for(4000, timeout=60))
        c.write("new 0")
        got = f.wait(3)
        time.sleep(1.0)
        self.assertEqual([(o["log_line"][:8], o["line_number"]) for o in f.lines()],
                         [("old 3998", 3999), ("old 3999", 4000), ("new 0", 4001)])

    def test_followers_get_lines_while_loki_is_down(self):
        receiver = lr.Receiver().start()
        self.addCleanup(receiver.stop)
        self.start(extra=f"output:\n  loki:\n    url: {receiver.url}\n    batch_wait: 100ms\n"
                         "    batch_bytes: 64KiB\n    min_backoff: 100ms\n")
        c = self.tree.container("shop", "web-0", "app")
        c.write("before")
        self.assertTrue(receiver.wait_for(1, timeout=10))
        f = Follower(self.sock, "tail_lines=0")
        time.sleep(0.3)
        receiver.set_faults(fail_ratio=1.0)  # every push answered 5xx from now on
        time.sleep(0.5)
        for i in range(2000):
            c.write(f"during-outage-{i} " + "z" * 300)
        got = f.wait(2000, timeout=8)
        self.assertEqual([o["log_line"].split()[0] for o in got], [f"during-outage-{i}" for i in range(2000)])

    def test_follow_and_history_number_the_same_lines_identically(self):
        a = self.start(extra="  max_line_bytes: 1KiB\n  exclude_lines: '^skip'\n")
        c = self.tree.container("shop", "web-0", "app")
        c.write("a")
        c.write("skip-1")
        a.wait_lines(1)
        time.sleep(0.5)
        f = Follower(self.sock, "namespace=shop&tail_lines=0")
        time.sleep(0.3)
        long_line = "".join(chr(0x41 + i % 26) for i in range(2500))
        for line in ("b", long_line, "skip-2", "é" * 700, "c"):
            c.write(line)
        live = f.wait(7)
        time.sleep(0.5)
        hist, _ = self.logs("namespace=shop")
        hist = [(o["line_number"], o["log_line"]) for o in hist][2:]
        self.assertEqual([(o["line_number"], o["log_line"]) for o in live], hist)
        self.assertEqual([n for n, _ in hist], [3, 4, 4, 4, 5, 6, 6, 7])
        self.assertEqual("".join(l for n, l in hist if n == 4), long_line)  # pieces, nothing lost
        self.assertEqual("".join(l for n, l in hist if n == 6), "é" * 700)  # cut between characters

    def test_no_spurious_missed_and_tail_lines_counts_the_byte_limit_once(self):
        a = self.start(extra_api="    subscriber_buffer: 128KiB\n")
        c = self.tree.container("shop", "web-0", "app")
        c.write_raw("".join(cri_line(f"old {i} " + "x" * 200) for i in range(10000)))
        a.wait_lines(10000, timeout=60)
        time.sleep(0.5)
        s_ = socket.socket(socket.AF_UNIX)
        s_.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s_.connect(self.sock)
        s_.sendall(b"GET /api/v1/logs?follow=true&namespace=shop HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1.0)  # not read yet: the history waits, the live queue overflows
        for i in range(3000):
            c.write(f"new {i} " + "y" * 200)
        time.sleep(1.5)
        objs = read_all(s_, timeout=3)
        lines = [" ".join(o["log_line"].split()[:2]) for o in objs if o["status"] == "streaming"]
        self.assertEqual(lines, [f"old {i}" for i in range(10000)] + [f"new {i}" for i in range(3000)])
        self.assertEqual([o for o in objs if o["status"] == "error"], [])
        # The byte limit: what fits without tail_lines fits with it.
        other = self.tree.container("budget", "b-0", "app")
        for i in range(60):
            other.write(f"{i:03d} " + "x" * 60)
        a.wait_lines(13060, timeout=20)
        time.sleep(0.6)
        a.stop()
        self.start(extra_api="    max_history_bytes: 8KiB\n")
        _, done = self.logs("namespace=budget")
        lines, done = self.logs("namespace=budget&tail_lines=1")
        self.assertEqual([o["log_line"][:3] for o in lines], ["059"])

    def test_a_follower_lets_go_of_a_deleted_pods_files(self):
        a = self.start()
        pods = []
        for k in range(3):
            c = self.tree.container("pin", f"pod-{k}", "app")
            c.write_raw("".join(cri_line("y" * 1000) for _ in range(300)))
            pods.append(c)
        a.wait_lines(900, timeout=20)
        time.sleep(1.0)
        f = Follower(self.sock, "namespace=pin&tail_lines=0")
        time.sleep(1.0)

        def deleted():
            found = []
            for x in os.listdir(f"/proc/{a.proc.pid}/fd"):
                try:
                    d = os.readlink(f"/proc/{a.proc.pid}/fd/{x}")
                except FileNotFoundError:
                    continue  # closed since the listing
                if "(deleted)" in d:
                    found.append(d)
            return found

        for c in pods:
            c.remove()
        deadline = time.time() + 8
        while time.time() < deadline and deleted():
            time.sleep(0.2)
        self.assertEqual(deleted(), [])
        f.close()

    def test_fifty_followers_each_get_every_line_while_loki_ships(self):
        receiver = lr.Receiver().start()
        self.addCleanup(receiver.stop)
        self.start(extra_api="    max_subscribers: 64\n",
                   extra=f"output:\n  loki:\n    url: {receiver.url}\n    batch_wait: 100ms\n")
        pods = [self.tree.container("load", f"p-{k}", "app") for k in range(5)]
        followers = [Follower(self.sock, "namespace=load&tail_lines=0") for _ in range(50)]
        time.sleep(1.0)
        total = 2000
        for i in range(total):
            pods[i % 5].write(f"{i} p-{i % 5}")
        self.assertTrue(receiver.wait_for(total, timeout=60), "Loki did not get every line")
        self.assertEqual(sorted(int(e["line"].split()[0]) for e in receiver.all_entries()), list(range(total)))
        for n, f in enumerate(followers):
            got = f.wait(total, timeout=30)
            per_pod = {}
            for o in got:
                per_pod.setdefault(o["pod_name"], []).append((o["log_line"], o["line_number"]))
            self.assertEqual(len(got), total, f"follower {n}")
            for k in range(5):
                self.assertEqual(per_pod[f"p-{k}"], [(f"{i} p-{k}", j + 1) for j, i in enumerate(range(k, total, 5))],
                                 f"follower {n}, pod p-{k}")
            self.assertEqual([o for o in f.objects if o["status"] == "error"], [])
            f.close()

    def test_tail_cli_takes_sterns_flags(self):
        a = self.start()
        self.tree.container("shop", "web-0", "app").write("from web")
        self.tree.container("shop", "db-0", "app").write("from db")
        a.wait_lines(2)
        time.sleep(0.6)

        def run(*args):
            return subprocess.run([LOGLET_BIN, "tail", "--socket", self.sock, *args], capture_output=True,
                                  text=True, timeout=20)

        out = run("-n", "shop", "web-*", "-s", "1h", "-E", "nothing", "-i", "from")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual([l.split(" ", 2)[1:] for l in out.stdout.splitlines()], [["shop/web-0/app", "from web"]])
        for flag in ("-p", "--previous"):
            out = run("-n", "shop", flag, "web-0")
            self.assertEqual(out.returncode, 2)
            self.assertIn("kubectl's --previous", out.stderr)


def assert_same_lines(test, got, want):
    """got == want, reporting the first difference (difflib is far too slow on thousands of long lines)."""
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            test.fail(f"line {i} of {len(want)}: got {str(g)[:200]!r}, want {str(w)[:200]!r}; then got {[str(x)[:40] for x in got[i + 1:i + 4]]}, {len(got)} in all")
    test.assertEqual(len(got), len(want), f"extra or missing at the end: {str(got[len(want):][:3])[:300]}")


class Review12bTest(ApiTestCase):
    """The second re-review of issue 12: a follower that keeps up never misses a line."""

    def test_a_fast_follower_gets_every_line_of_bursts_rotations_and_long_lines(self):
        import kubelet
        self.start(extra_api="    subscriber_buffer: 128KiB\n")
        self.tree.container("shop", "old-0", "app").write("x")
        time.sleep(0.5)
        f = Follower(self.sock, "namespace=shop&pod=burst-0&tail_lines=0")
        time.sleep(0.5)
        # A new pod's file full before its link appears: the collector's first reads are whole buffers.
        c = kubelet.Container(self.tree, "shop", "burst-0", "app", "uid-burst")
        want = []
        for i in range(8000):
            want.append(f"burst {i} " + "y" * 100)
            c.write(want[-1])
        c.link()
        # Rotations with compression right behind, and lines longer than the queue's largest block.
        for k in range(4):
            for i in range(2500):
                want.append(f"rot {k} {i} " + "r" * 40)
                c.write(want[-1])
            want.append(f"long {k} " + "L" * (90 * 1024))
            c.write(want[-1])
            c.rotate(compress=True, keep=3)
            time.sleep(0.3)  # the collector opens the new file before the next rotation deletes it unseen
        want.append("the end")
        c.write(want[-1])
        got = f.wait(len(want), timeout=60)
        time.sleep(0.5)
        f.close()
        with f.lock:
            errors = [o for o in f.objects if o["status"] != "streaming"]
        self.assertEqual([o["message"] for o in errors], [])
        assert_same_lines(self, [(o["log_line"], o["line_number"]) for o in f.lines()],
                          [(line, n + 1) for n, line in enumerate(want)])

    def test_history_reads_lines_up_to_max_line_bytes_as_the_collector_does(self):
        c = self.tree.container("shop", "web-0", "app")
        long_ascii = "".join(chr(0x41 + i % 26) for i in range(100_000))
        longer = "é" * 150_000  # 300,000 bytes: over max_line_bytes (256KiB), cut between characters
        lines = ["before", long_ascii, longer, "after"]
        for i, line in enumerate(lines):
            c.write(line, stream="stderr" if i == 1 else "stdout", ts_ns=T0 + i)
        self.start()
        hist, _ = self.logs("namespace=shop")
        f = Follower(self.sock, "namespace=shop&tail_lines=0")
        time.sleep(0.5)
        for i, line in enumerate(lines):
            c.write(line, stream="stderr" if i == 1 else "stdout", ts_ns=T0 + 10 + i)
        live = f.wait(5)
        time.sleep(0.5)
        f.close()
        cut = 256 * 1024 - (256 * 1024) % 2  # the collector's piece: whole characters of 2 bytes
        want = [("before", "stdout", 1), (long_ascii, "stderr", 2),
                (longer.encode()[:cut].decode(), "stdout", 3), (longer.encode()[cut:].decode(), "stdout", 3),
                ("after", "stdout", 4)]
        self.assertEqual([(o["log_line"], o["stream"], o["line_number"]) for o in hist], want)
        self.assertEqual([(o["log_line"], o["stream"], o["line_number"] - 4) for o in live], want)
        again, _ = self.logs("namespace=shop")
        self.assertEqual([(o["log_line"], o["stream"], o["line_number"]) for o in again],
                         want + [(l, s, n + 4) for l, s, n in want])

    def test_history_requests_are_bounded_and_stalled_clients_dropped(self):
        # A newcomer waits request_timeout for a history slot; stalled clients hold theirs until client_timeout.
        self.start(extra_api="    max_history_requests: 2\n    max_history_files: 3\n    client_timeout: 3s\n"
                             "  request_timeout: 500ms\n")
        c = self.tree.container("shop", "web-0", "app")
        pad = "p" * 200
        for i in range(6000):  # far more than the socket buffers hold: a client that does not read stalls
            c.write(f"{i} {pad}")
        c.rotate(compress=False)
        c.write("current")
        time.sleep(1.0)
        stalled = []
        for _ in range(2):
            s = socket.socket(socket.AF_UNIX)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(self.sock)
            s.sendall(b"GET /api/v1/logs HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.append(s)
        time.sleep(0.5)
        status, _, objs = request("/api/v1/logs", sock=self.sock)
        self.assertEqual((status, objs[-1]["status"]), (503, "error"))
        self.assertEqual(objs[-1]["message"],
                         "too many history requests: server.api.max_history_requests (2) are reading history")
        time.sleep(3.0)  # the stalled clients are dropped after client_timeout, with what they held
        hist, _ = self.logs("namespace=shop")
        self.assertEqual([o["log_line"] for o in hist], [f"{i} {pad}" for i in range(6000)] + ["current"])
        for s in stalled:
            s.close()
        # Over max_history_files: a clear error, never a history short of a file said `completed`.
        c.rotate(compress=False)
        c.rotate(compress=False)
        c.write("newest")
        time.sleep(0.5)
        status, _, objs = request("/api/v1/logs?namespace=shop", sock=self.sock)
        self.assertEqual(status, 503)
        self.assertRegex(objs[-1]["message"], r"^history needs more than server\.api\.max_history_files \(3\) "
                         r"open files \(.*/shop_web-0_.*/app has 4\): narrow the selection")

    def test_gone_clients_free_their_slot_and_a_half_close_keeps_the_follow(self):
        c = self.tree.container("shop", "web-0", "app")
        c.write("x")
        self.start(extra_api="    max_subscribers: 1\n")
        # Bytes after the head, then a close: the slot is freed although those bytes were never read.
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.sock)
        s.sendall(b"GET /api/v1/logs?follow=true&tail_lines=0&grep=nomatch HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        s.sendall(b"\r\n")
        time.sleep(0.2)
        s.close()
        c.write("busy")  # entries the filter skips: only the gone check notices the client left
        time.sleep(1.0)
        hist, _ = self.logs("namespace=shop")
        self.assertEqual([o["log_line"] for o in hist], ["x", "busy"])
        # A client that half-closes after its request (shutdown(SHUT_WR), as `nc -N`) still follows.
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.sock)
        s.sendall(b"GET /api/v1/logs?follow=true&tail_lines=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        time.sleep(1.0)
        c.write("live line after half-close")
        s.settimeout(5)
        data = b""
        while b"live line after half-close" not in data:
            chunk = s.recv(65536)
            self.assertTrue(chunk, f"the server ended the follow: {data!r}")
            data += chunk
        body = data.partition(b"\r\n\r\n")[2]
        self.assertEqual([json.loads(l)["log_line"] for l in body.splitlines() if l], ["live line after half-close"])
        s.close()

    def test_invalid_utf8_in_names_is_replaced_so_the_json_stays_valid(self):
        import kubelet
        c = kubelet.Container(self.tree, "shop", "we\udcffb\"x", "app", "uid1", container_id="ab" * 32)
        c.link()
        c.write("hello", ts_ns=T0)
        self.start()
        time.sleep(1.0)
        _, _, objs = request("/api/v1/logs", sock=self.sock)  # request() parses strictly as UTF-8 JSON
        self.assertEqual([(o["pod_name"], o["namespace"], o["container"], o["log_line"]) for o in objs[:-1]],
                         [("we\ufffdb\"x", "shop", "app", "hello")])
        _, _, targets = request("/api/v1/targets", sock=self.sock)
        self.assertEqual([t["pod_name"] for t in targets[0]["targets"]], ["we\ufffdb\"x"])
        self.assertTrue(all("\ufffd" in t["path"] for t in targets[0]["targets"]))

    def test_grep_over_pcre2s_match_limit_is_said_and_max_lines_0_refused(self):
        c = self.tree.container("shop", "web-0", "app")
        for i in range(5):
            c.write("a" * 3000 + "!", ts_ns=T0 + i)
        c.write("aa", ts_ns=T0 + 10)
        self.start()
        import urllib.parse
        hist, done = self.logs("grep=" + urllib.parse.quote("^(a|aa)+$"))
        self.assertEqual([o["log_line"] for o in hist], ["aa"])
        self.assertEqual(done["message"], "1 lines from 1 containers; 5 lines not sent: grep hit PCRE2's match "
                                          "limit on them (simplify the pattern)")
        status, _, objs = request("/api/v1/logs?max_lines=0", sock=self.sock)
        self.assertEqual((status, objs), (400, [{"status": "error", "message": "max_lines: 0 lines would send "
                                                 "nothing; leave max_lines out for no limit"}]))

    def test_tail_cli_matches_a_plain_pod_word_like_stern_and_says_when_nothing_matches(self):
        a = self.start()
        c = self.tree.container("shop", "web-7d9f-abc", "app")
        c.write("hello 0")
        c.write("hello 1", stream="stderr")
        a.wait_lines(2)
        time.sleep(0.6)

        def run(*args):
            return subprocess.run([LOGLET_BIN, "tail", "--socket", self.sock, *args], capture_output=True,
                                  text=True, timeout=20)

        for args in (["web"], ["-t", "web"], ["-A", "--no-follow", "7d9f"], ["--since-time", "2024-01-01T00:00:00Z"]):
            out = run(*args)
            self.assertEqual((out.returncode, out.stderr), (0, ""), args)
            self.assertEqual([l.split(" ", 2)[1:] for l in out.stdout.splitlines()],
                             [["shop/web-7d9f-abc/app", "hello 0"], ["shop/web-7d9f-abc/app", "hello 1"]], args)
        out = run("-n", "nomatch")
        self.assertEqual((out.returncode, out.stdout, out.stderr),
                         (0, "", "loglet tail: no container on this node matches the selection\n"))
        out = run("-e", "hello 1")
        self.assertEqual(out.returncode, 2)
        self.assertIn("-e (stern's line exclusion) is not supported", out.stderr)
        out = run("-A", "-n", "shop")
        self.assertEqual((out.returncode, out.stderr),
                         (2, "loglet tail: -A/--all-namespaces and -n/--namespace contradict each other\n"))


if __name__ == "__main__":
    unittest.main()
