"""Issue 6's attack surface, with the real binary: the probe server survives
malformed, oversized and slow requests and too many clients, and echoes
nothing back."""
import os
import socket
import subprocess
import threading
import time
import unittest

from harness import LOGLET_BIN, AgentTestCase, base_config, http_get


def raw_request(port, data, timeout=5, read=True):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        return out


class ProbeServerTest(AgentTestCase):
    def start(self, extra=""):
        cfg = base_config(self.tree, self.workdir, "").replace(
            "server:\n", "server:\n  request_timeout: 1s\n  max_connections: 8\n" + extra, 1)
        return self.agent(cfg).start()

    def test_malformed_and_oversized_requests(self):
        a = self.start()
        cases = [
            (b"GARBAGE\r\n\r\n", b" 400 "),
            (b"GET /healthz HTTP/9.9\r\n\r\n", b" 400 "),
            (b"GET /healthz HTTP/1.1\r\nNo-Colon-Here\r\n\r\n", b" 400 "),
            (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b" 431 "),
            (b"POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b" 413 "),  # no bodies accepted
            (b"DELETE /healthz HTTP/1.1\r\n\r\n", b" 405 "),
            (b"GET /\x00etc/passwd HTTP/1.1\r\n\r\n", b" 400 "),
            (b"GET /<script>alert(1)</script> HTTP/1.1\r\n\r\n", b" 404 "),
        ]
        for request, status in cases:
            with self.subTest(request=request[:40]):
                answer = raw_request(a.port, request)
                self.assertIn(status, answer.split(b"\r\n", 1)[0])
                self.assertNotIn(b"<script>", answer)  # nothing from the request comes back
        self.assertEqual(http_get(a.port, "/healthz")[0], 200)
        self.assertEqual(a.stop(), 0)

    def test_slow_clients_and_too_many_connections(self):
        a = self.start()
        # Slowloris: connections that never finish their request head.
        slow = []
        for _ in range(6):
            s = socket.create_connection(("127.0.0.1", a.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            slow.append(s)
        # Beyond max_connections: refused with 503 or closed, never hanging.
        extra = [socket.create_connection(("127.0.0.1", a.port), timeout=5) for _ in range(8)]
        for s in extra:
            s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        answers = []
        for s in extra:
            try:
                answers.append(s.recv(4096).split(b"\r\n", 1)[0])
            except OSError:
                answers.append(b"")
            s.close()
        self.assertTrue(all(x in (b"", b"HTTP/1.1 200 OK", b"HTTP/1.1 503 Service Unavailable") for x in answers), answers)
        # The slow ones are cut off after request_timeout (1 s) ...
        time.sleep(1.5)
        for s in slow:
            s.settimeout(2)
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            self.assertNotIn(b"200 OK", data)
            s.close()
        # ... and the probes answer again.
        self.assertEqual(http_get(a.port, "/healthz")[0], 200)
        self.assertEqual(http_get(a.port, "/ready")[0], 200)
        self.assertEqual(a.stop(), 0)

    def test_many_concurrent_probe_clients(self):
        a = self.start()
        results = []

        def hit():
            for _ in range(20):
                results.append(http_get(a.port, "/metrics")[0])

        threads = [threading.Thread(target=hit) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(results), 120)
        # Over max_connections a client is refused: a 503, or a reset when the
        # server closes first (0 here). Never a hang, never another status.
        self.assertTrue(all(r in (200, 503, 0) for r in results), set(results))
        self.assertGreater(results.count(200), 60)
        self.assertEqual(http_get(a.port, "/healthz")[0], 200)
        self.assertEqual(a.stop(), 0)


class FileHandlingTest(AgentTestCase):
    def test_symlink_outside_the_roots_is_refused_once_and_never_read(self):
        web = self.tree.container("shop", "web-0", "app")
        web.write("legit")
        secret = os.path.join(self.workdir, "secret.txt")
        with open(secret, "w") as f:
            f.write("root:SECRET-HASH:19000:0:99999:7:::\n")
        planted = os.path.join(self.tree.root, "containers", "evil_default_x-" + "a" * 64 + ".log")
        os.symlink(secret, planted)
        a = self.agent(base_config(self.tree, self.workdir, "  read_from: beginning\n")).start()
        a.wait_lines(1)
        web.write("still working")
        a.wait_lines(2)
        # A new planted link while running is refused too.
        os.symlink("/etc/passwd", os.path.join(self.tree.root, "containers", "evil2_default_x-" + "b" * 64 + ".log"))
        time.sleep(0.5)
        self.assertEqual(a.stop(), 0)
        out = "\n".join(a.lines())
        self.assertNotIn("SECRET-HASH", out)
        self.assertNotIn("root:", out)
        log = a.stderr_text()
        self.assertEqual(log.count(f"refusing {planted}"), 1, log)
        self.assertIn("outside collection.symlink_roots", log)
        self.assertIn("evil2_default", log)
        fds = a.lines()
        self.assertEqual(len(fds), 2)

    def test_world_writable_positions_directory_is_refused(self):
        shared = os.path.join(self.workdir, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        cfg = base_config(self.tree, self.workdir).replace(
            os.path.join(self.workdir, "positions.yaml"), os.path.join(shared, "positions.yaml"))
        a = self.agent(cfg)
        a.proc = subprocess.Popen([LOGLET_BIN, "-config", a.config_path], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        out, err = a.proc.communicate(timeout=20)
        self.assertEqual(a.proc.returncode, 1)
        self.assertIn("world-writable", err)
        self.assertIn(shared, err)

    def test_positions_file_is_private(self):
        self.tree.container("shop", "web-0", "app").write("x")
        a = self.agent(base_config(self.tree, self.workdir, "  read_from: beginning\n")).start()
        a.wait_lines(1)
        self.assertEqual(a.stop(), 0)
        mode = os.stat(os.path.join(self.workdir, "positions.yaml")).st_mode & 0o777
        self.assertEqual(mode, 0o600)


if __name__ == "__main__":
    unittest.main(verbosity=2)
