"""A stand-in for the kubelet and the container runtime, for tests and the demo.

It lays out log files exactly as a node does:
    <root>/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log      (the runtime writes here)
    <root>/containers/<pod>_<namespace>_<container>-<id>.log -> that file   (the kubelet's symlink)
writes CRI lines (`<RFC3339Nano> <stream> <P|F> <content>`), and rotates as the kubelet
does: rename `0.log` to `0.log.<YYYYMMDD-HHMMSS>`, create a new `0.log`, gzip older
rotated files and delete the oldest.

Usable as a library (tests) and as `python3 kubelet.py demo ROOT` (the demo's writer).
"""
import datetime
import gzip
import hashlib
import os
import shutil
import sys
import time
import uuid


def cri_timestamp(t=None):
    t = time.time_ns() if t is None else t
    sec, ns = divmod(t, 1_000_000_000)
    return datetime.datetime.fromtimestamp(sec, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + ".%09dZ" % ns


def cri_line(content, stream="stdout", partial=False, ts_ns=None):
    return "%s %s %s %s\n" % (cri_timestamp(ts_ns), stream, "P" if partial else "F", content)


class Container:
    def __init__(self, tree, namespace, pod, container, uid, restart=0, container_id=None):
        self.tree, self.namespace, self.pod, self.name, self.uid = tree, namespace, pod, container, uid
        self.restart = restart
        self.container_id = container_id or hashlib.sha256(f"{namespace}/{pod}/{container}/{uid}/{restart}".encode()).hexdigest()
        self.pod_dir = os.path.join(tree.root, "pods", f"{namespace}_{pod}_{uid}")
        self.dir = os.path.join(self.pod_dir, container)
        self.log_path = os.path.join(self.dir, f"{restart}.log")
        self.link_path = os.path.join(tree.root, "containers", f"{pod}_{namespace}_{container}-{self.container_id}.log")
        os.makedirs(self.dir, exist_ok=True)
        self._file = open(self.log_path, "ab", buffering=0)
        self.rotations = []

    def write_raw(self, data):
        if isinstance(data, str):
            data = data.encode()
        self._file.write(data)

    def write(self, content, stream="stdout", partial=False, ts_ns=None):
        self.write_raw(cri_line(content, stream, partial, ts_ns))

    def link(self):
        """Creates the kubelet's symlink (what the agent's glob matches). The kubelet's
        points at /var/log/pods/...; a relative target resolves the same way on the
        host and wherever the tree is mounted (a container's /var/log)."""
        os.symlink(os.path.relpath(self.log_path, os.path.dirname(self.link_path)), self.link_path)
        return self

    def rotate(self, compress=True, keep=5):
        """The kubelet's rotation: rename, reopen, gzip older files, delete the oldest."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        rotated = f"{self.log_path}.{stamp}"
        n = 0
        while os.path.exists(rotated) or os.path.exists(rotated + ".gz"):
            n += 1
            rotated = f"{self.log_path}.{stamp}-{n}"
        os.rename(self.log_path, rotated)
        self._file.close()
        self._file = open(self.log_path, "ab", buffering=0)
        if compress:
            # As the kubelet's compressLog: write <name>.tmp, rename it to
            # <name>.gz, then remove the uncompressed file.
            for older in self.rotations:
                if os.path.exists(older) and not older.endswith(".gz"):
                    with open(older, "rb") as src, gzip.open(older + ".tmp", "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.rename(older + ".tmp", older + ".gz")
                    os.unlink(older)
            self.rotations = [r + ".gz" if not r.endswith(".gz") else r for r in self.rotations]
        self.rotations.append(rotated)
        while len(self.rotations) > keep - 1:
            oldest = self.rotations.pop(0)
            if os.path.exists(oldest):
                os.unlink(oldest)
        return rotated

    def close(self):
        self._file.close()

    def remove(self):
        """The pod is deleted: symlink and log directory go."""
        self.close()
        if os.path.lexists(self.link_path):
            os.unlink(self.link_path)
        shutil.rmtree(self.pod_dir, ignore_errors=True)


class KubeletTree:
    def __init__(self, root):
        self.root = root
        os.makedirs(os.path.join(root, "containers"), exist_ok=True)
        os.makedirs(os.path.join(root, "pods"), exist_ok=True)

    @property
    def glob(self):
        return os.path.join(self.root, "containers", "*.log")

    def container(self, namespace, pod, container, uid=None, restart=0, link=True):
        c = Container(self, namespace, pod, container, uid or str(uuid.uuid4()), restart)
        return c.link() if link else c


def demo(root, seconds):
    """Writes a few pods' worth of lines until stopped: what the README's first command shows."""
    tree = KubeletTree(root)
    web = tree.container("shop", "web-0", "app")
    db = tree.container("shop", "db-0", "postgres")
    web.write("GET /api/cart 200 12ms")
    db.write("database system is ready to accept connections", stream="stderr")
    start, n, late = time.time(), 0, None
    while seconds <= 0 or time.time() - start < seconds:
        n += 1
        web.write(f"GET /api/items/{n} 200 {n % 40 + 3}ms")
        if n % 3 == 0:
            db.write(f"checkpoint complete: wrote {n * 7} buffers", stream="stderr")
        if n == 6:
            late = tree.container("monitoring", "node-exporter-x7k2p", "exporter")
            late.write("listening on :9100 (a pod created while the agent runs)")
        if late and n % 4 == 0:
            late.write(f"scrape {n // 4} served in 3ms")
        time.sleep(0.5)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "demo":
        try:
            demo(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0)
        except KeyboardInterrupt:
            pass
    else:
        print("usage: kubelet.py demo ROOT [SECONDS]", file=sys.stderr)
        sys.exit(2)
