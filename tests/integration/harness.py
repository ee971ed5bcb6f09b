"""Shared pieces of the integration tests: run the real loglet binary as a
process against a real kubelet-style tree, collect what it prints, probe its
HTTP port.

Each test gets its own temporary directory; the agent's probe port is 0 (the
kernel picks one) and is read from the agent's own log line.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("LOGLET_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "tools"))

from kubelet import KubeletTree, cri_line  # noqa: E402

__all__ = ["Agent", "AgentTestCase", "KubeletTree", "LOGLET_BIN", "SOURCE_DIR", "base_config", "cri_line",
           "http_get", "rss_kib", "run_loglet", "yaml_quote"]

LOGLET_BIN = os.environ.get("LOGLET_BIN", os.path.join(SOURCE_DIR, "build", "loglet"))


def yaml_quote(s):
    return json.dumps(s)  # JSON strings are YAML double-quoted scalars


class Agent:
    """The agent as a child process, its stdout and stderr gathered by threads."""

    def __init__(self, workdir, config_text, name="loglet.yaml", env=None):
        self.config_path = os.path.join(workdir, name)
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.stdout_lines = []
        self.stderr_lines = []
        self.cond = threading.Condition()
        self.port = None

    def start(self, wait_ready=True, read_stdout=True):
        """read_stdout=False leaves stdout unread (a stalled consumer): use proc.stdout directly."""
        self.proc = subprocess.Popen([LOGLET_BIN, "-config", self.config_path], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=self.env)
        if read_stdout:
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines), daemon=True).start()
        self.wait_stderr(r"probes and metrics on http://[^:]+:(\d+)", timeout=20)
        m = None
        with self.cond:
            for line in self.stderr_lines:
                m = re.search(r"probes and metrics on http://[^ ]*:(\d+)", line) or m
        self.port = int(m.group(1))
        if wait_ready:
            deadline = time.time() + 20
            while time.time() < deadline:
                if http_get(self.port, "/ready")[0] == 200:
                    return self
                time.sleep(0.05)
            raise AssertionError("agent never became ready:\n" + self.stderr_text())
        return self

    def _pump(self, stream, sink):
        for raw in stream:
            with self.cond:
                sink.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()

    def wait_stderr(self, pattern, timeout=10):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self.cond:
            while True:
                if any(rx.search(l) for l in self.stderr_lines):
                    return
                left = deadline - time.time()
                if left <= 0 or (self.proc.poll() is not None and not self.cond.wait(0.2)):
                    raise AssertionError(f"agent never logged /{pattern}/:\n" + "\n".join(self.stderr_lines))
                self.cond.wait(min(left, 0.2))

    def wait_lines(self, count, timeout=10):
        """Waits until stdout has at least `count` lines; returns a copy of them."""
        deadline = time.time() + timeout
        with self.cond:
            while len(self.stdout_lines) < count:
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(f"expected {count} lines, got {len(self.stdout_lines)}:\n"
                                         + "\n".join(self.stdout_lines[-20:]) + "\n--- stderr:\n" + self.stderr_text())
                self.cond.wait(min(left, 0.2))
            return list(self.stdout_lines)

    def lines(self):
        with self.cond:
            return list(self.stdout_lines)

    def stderr_text(self):
        with self.cond:
            return "\n".join(self.stderr_lines)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("agent did not exit within %ss of %s" % (timeout, sig))
        time.sleep(0.1)  # let the pump threads take the last lines
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc:
            for stream in (self.proc.stdout, self.proc.stderr):
                try:
                    stream.close()
                except OSError:
                    pass


def rss_kib(pid):
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def http_get(port, path, timeout=5):
    """A plain HTTP/1.1 GET over a socket: (status, body)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return 0, ""
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
    return status, body.decode("utf-8", "replace")


def run_loglet(args, timeout=20):
    return subprocess.run([LOGLET_BIN] + args, capture_output=True, text=True, timeout=timeout)


def base_config(tree, workdir, extra=""):
    """A config tailing the tree, probes on an ephemeral loopback port."""
    return (
        "server:\n  http_listen_address: 127.0.0.1\n  http_listen_port: 0\n"
        # The logs API socket is a path like the others: one per test, so
        # agents of tests running side by side do not meet at /run/loglet.
        f"  api:\n    socket: {yaml_quote(os.path.join(workdir, 'api.sock'))}\n"
        f"collection:\n  paths: [{yaml_quote(tree.glob)}]\n"
        f"  positions_file: {yaml_quote(os.path.join(workdir, 'positions.yaml'))}\n" + extra)


class AgentTestCase(unittest.TestCase):
    """Gives each test a temp dir, a kubelet tree in it, and kills leftover agents."""

    def setUp(self):
        warnings.simplefilter("ignore", ResourceWarning)  # files the simulated runtime leaves open
        self._tmp = tempfile.TemporaryDirectory(prefix="loglet-test-")
        self.workdir = self._tmp.name
        self.tree = KubeletTree(os.path.join(self.workdir, "log"))
        self.agents = []

    def tearDown(self):
        for a in self.agents:
            a.kill()
        self._tmp.cleanup()

    def agent(self, config_text, **kw):
        a = Agent(self.workdir, config_text, **kw)
        self.agents.append(a)
        return a
