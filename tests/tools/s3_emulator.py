"""A real S3 emulator for the archive tests: @20minutes/s3rver 4.x (it
recomputes SigV4 signatures and refuses a wrong secret), run by node from
tests/tools/s3rver/ (serve.js; `npm ci` there, done by scripts/setup.sh).

    s3 = S3Emulator(workdir, keys={"AKID": "secret"}).start()
    s3.endpoint                    # http://127.0.0.1:PORT
    s3.set_keys({"AKID2": "new"})  # rotation: the old pair stops working
    s3.fail(slowdown=3)            # the next 3 requests: 503 SlowDown
    s3.restart()                   # down, then up on the same port and data
    s3.objects()                   # {key: bytes}, read from its data directory
    s3.requests()                  # [{method, url, md5, sha256, status}]
"""
import json
import os
import re
import shutil
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
S3RVER_DIR = os.path.join(HERE, "s3rver")
SUFFIX = "._S3rver_object"


def available():
    """None when the emulator can run, else why not."""
    if not shutil.which("node"):
        return "node is not installed (scripts/setup.sh installs nodejs)"
    if not os.path.isdir(os.path.join(S3RVER_DIR, "node_modules", "@20minutes", "s3rver")):
        return "@20minutes/s3rver is not installed: run scripts/setup.sh (npm ci in tests/tools/s3rver)"
    return None


class S3Emulator:
    def __init__(self, workdir, keys=None, bucket="archive"):
        self.dir = os.path.join(workdir, "s3-data")
        self.keys_path = os.path.join(workdir, "s3-keys.json")
        self.faults_path = os.path.join(workdir, "s3-faults.json")
        self.log_path = os.path.join(workdir, "s3-requests.jsonl")
        self.bucket = bucket
        self.port = 0
        self.proc = None
        self._out = []
        self._cond = threading.Condition()
        self._write_keys(keys or {"AKIDLOGLETTEST": "loglet-test-secret"})

    def _write_keys(self, keys):
        tmp = self.keys_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(keys, f)
        os.replace(tmp, self.keys_path)

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        self._out = []
        self.proc = subprocess.Popen(
            ["node", os.path.join(S3RVER_DIR, "serve.js"), "--directory", self.dir, "--port", str(self.port),
             "--keys", self.keys_path, "--faults", self.faults_path, "--log", self.log_path,
             "--buckets", self.bucket],
            cwd=S3RVER_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._pump, daemon=True).start()
        m = self._wait(r"listening on [\d.]+:(\d+)", 30)
        self.port = int(m.group(1))
        return self

    def _pump(self):
        for raw in self.proc.stdout:
            with self._cond:
                self._out.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()

    def _wait(self, pattern, timeout, after=0):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self._cond:
            while True:
                for line in self._out[after:]:
                    m = rx.search(line)
                    if m:
                        return m
                if time.time() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"s3rver never said /{pattern}/:\n" + "\n".join(self._out))
                self._cond.wait(0.2)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, down_seconds=0.0):
        self.stop()
        time.sleep(down_seconds)
        return self.start()

    def set_keys(self, keys):
        self._write_keys(keys)
        with self._cond:
            n = len(self._out)
        self.proc.send_signal(1)  # SIGHUP
        self._wait(r"keys reloaded", 10, after=n)

    def fail(self, slowdown=None, status=None, count=None, after=0, hang_ms=None):
        """The next requests fail (after `after` that pass); fail(count=0) clears.
        hang_ms: they get no answer for that long first (a stuck server)."""
        spec = {"slowdown": slowdown} if slowdown is not None else {"status": status, "count": count}
        spec["after"] = after
        if hang_ms:
            spec["hang_ms"] = hang_ms
        tmp = self.faults_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(spec, f)
        os.replace(tmp, self.faults_path)

    def objects(self):
        root = os.path.join(self.dir, self.bucket)
        out = {}
        for d, _, files in os.walk(root):
            for f in files:
                if f.endswith(SUFFIX):
                    key = os.path.relpath(os.path.join(d, f[:-len(SUFFIX)]), root)
                    with open(os.path.join(d, f), "rb") as fh:
                        out[key] = fh.read()
        return out

    def requests(self):
        try:
            with open(self.log_path) as f:
                return [json.loads(l) for l in f if l.strip()]
        except FileNotFoundError:
            return []
