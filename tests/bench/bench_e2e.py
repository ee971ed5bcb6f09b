"""End to end: files -> loglet -> Loki receiver on 127.0.0.1 that only counts.

    /usr/bin/python3 tests/bench/bench_e2e.py [--mb 1024] [--files 100] [--filler x|random] [--kubernetes]

200-byte CRI lines across 100 files of a kubelet tree on tmpfs (/dev/shm),
the agent at its default settings (except the paths, read_from: beginning and
the URL), and build/tests/bench_count_receiver as Loki. Prints MB/s of log
input, lines/s, the agent's CPU seconds per GB, its peak RSS, the receiver's
CPU, the load average before and after, and snappy alone on the same data for
comparison; the last line, `summary: …`, repeats the figures as key=value.

--filler x (the default) pads every line with 'x': the corpus compresses about
14:1, so the figures partly measure how little there is to compress and send.
--filler random pads with random alphanumeric characters (fixed seed, so the
corpus is the same every run): closer to real logs for snappy, which finds
almost nothing to repeat in it.

--kubernetes runs the same with Kubernetes metadata on: a test API server
(tests/tools/kube_apiserver.py, TLS, on 127.0.0.1) knows every file's pod,
labelled (app, app.kubernetes.io/name) and owned by a ReplicaSet, and the
agent reads it through a kubeconfig: the figures then include listing,
watching and labelling. Compare with a run without it.

LOGLET_BUILD=dir takes the agent and the helpers from that build directory
(default build/); LOGLET_BIN=path overrides the agent binary alone.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("LOGLET_BUILD", os.path.join(SOURCE_DIR, "build"))
LOGLET = os.environ.get("LOGLET_BIN", os.path.join(BUILD, "loglet"))
LINE = 200
BLOCK_LINES = 1000
PREFIX = "2026-11-22T10:00:00.123456789Z stdout F "
SEED = 20261122
ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
POOL_BYTES = 16 << 20  # random filler drawn from here; far more than snappy's 64 KiB window



def agent_config(root, port):
    """The benchmarks' agent: the corpus tree, read from its beginning, into the receiver on `port`."""
    return f"""server:
  http_listen_address: 127.0.0.1
  http_listen_port: 0
collection:
  paths: ["{root}/log/containers/*.log"]
  read_from: beginning
  positions_file: {root}/positions.yaml
output:
  loki:
    url: http://127.0.0.1:{port}/loki/api/v1/push
"""

def _heads():
    return [f"{PREFIX}GET /api/v1/items/{i}?session=abcdef0123456789 200 ".encode() for i in range(BLOCK_LINES)]


class Blocks:
    """Blocks of BLOCK_LINES 200-byte CRI lines. block(k) is the k-th block
    of the corpus: with filler "x" always the same one; with "random" each k
    takes its fillers from its own place in a pool of random alphanumerics
    (generated once from SEED), so no two nearby blocks repeat each other."""

    def __init__(self, filler, json_lines=False):
        if filler not in ("x", "random"):
            raise ValueError(filler)
        self.filler = filler
        heads = _heads()
        if json_lines:
            # JSON content, as the pipeline benchmark's json stage wants: the
            # same request head as a "message", a level, a trace id, x padding.
            self.filler = "x"
            levels = ["info", "info", "info", "debug", "warn", "error", "trace"]
            js = [(PREFIX + '{"level":"%s","message":"GET /api/v1/items/%d 200","trace_id":"%016x","pad":"'
                   % (levels[i % 7], i, i * 2654435761)).encode() for i in range(BLOCK_LINES)]
            self.fixed = b"".join(h + b"x" * (LINE - len(h) - 3) + b'"}\n' for h in js)
            return
        if filler == "x":
            self.fixed = b"".join(h + b"x" * (LINE - len(h) - 1) + b"\n" for h in heads)
            return
        self.heads = heads
        self.lens = [LINE - len(h) - 1 for h in heads]
        self.starts = [0]
        for n in self.lens:
            self.starts.append(self.starts[-1] + n)
        table = bytes(ALNUM[b % len(ALNUM)] for b in range(256))
        self.pool = random.Random(SEED).randbytes(POOL_BYTES).translate(table)
        self.span = len(self.pool) - self.starts[-1]

    def block(self, k):
        if self.filler == "x":
            return self.fixed
        base = (k * 2654435761) % self.span  # Knuth's multiplicative hash: consecutive blocks land far apart
        parts = []
        for head, start, n in zip(self.heads, self.starts, self.lens):
            o = base + start
            parts += (head, self.pool[o:o + n], b"\n")
        return b"".join(parts)


def write_lines(out, blocks, lines, first_block=0):
    """Writes `lines` lines of blocks starting at block `first_block`; returns the next block number."""
    k = first_block
    while lines:
        n = min(lines, BLOCK_LINES)
        out.write(blocks.block(k)[: n * LINE])
        lines -= n
        k += 1
    return k


def make_corpus(root, mb, files, filler="x", json_lines=False):
    blocks = Blocks(filler, json_lines)
    lines_each = mb * 1024 * 1024 // LINE // files
    paths = []
    os.makedirs(os.path.join(root, "containers"))
    k = 0
    for f in range(files):
        d = os.path.join(root, "pods", f"bench_pod-{f}_0000-{f:04d}", "app")
        os.makedirs(d)
        path = os.path.join(d, "0.log")
        with open(path, "wb") as out:
            k = write_lines(out, blocks, lines_each, k)
        os.symlink(os.path.relpath(path, os.path.join(root, "containers")),
                   os.path.join(root, "containers", f"pod-{f}_bench_app-{f:064d}.log"))
        paths.append(path)
    return lines_each * files, paths


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
        return json.loads(r.read())


def loadavg():
    return "load %.2f %.2f %.2f" % os.getloadavg()


def start_receiver(root, name="receiver"):
    """build/tests/bench_count_receiver on an ephemeral port; returns (process, port)."""
    port_file = os.path.join(root, f"{name}.port")
    receiver = subprocess.Popen([os.path.join(BUILD, "tests", "bench_count_receiver"), port_file])
    while not (os.path.exists(port_file) and open(port_file).read().strip()):
        if receiver.poll() is not None:
            raise SystemExit(f"receiver exited with {receiver.returncode}")
        time.sleep(0.01)
    return receiver, int(open(port_file).read())


def wait_for_entries(agent, port, total, stall_s=60.0, give_up=None):
    """Polls the receiver until it counted `total` entries, or nothing more
    arrived for stall_s, or give_up() is true. Returns a namespace: entries,
    peak_kib (the agent's VmHWM), t_end (when the last entries were seen),
    complete, and t_prev/n_prev: the arrival before the last one and the
    count then. Those leave out the tail (the last, partial batch waits
    output.loki.batch_wait, 1 s by default, before it is sent)."""
    r = types.SimpleNamespace(entries=-1, peak_kib=0, t_end=time.time(), complete=False, t_prev=None, n_prev=0)
    while True:
        n = stats(port)["entries"]
        now = time.time()
        r.peak_kib = max(r.peak_kib, peak_rss_kib(agent.pid))
        if n != r.entries:
            if r.entries > 0:
                r.t_prev, r.n_prev = r.t_end, r.entries
            r.entries, r.t_end = n, now
        if n >= total:
            r.complete = True
            break
        if now - r.t_end > stall_s or (give_up and give_up()):
            break
        if agent.poll() is not None:
            raise SystemExit(f"agent exited early with {agent.returncode}")
        time.sleep(0.01)
    if r.t_prev is None:
        r.t_prev, r.n_prev = r.t_end, r.entries
    return r


def start_api_server(root, files):
    """The test API server with one pod per corpus file; returns it and the config's kubernetes section."""
    sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "tools"))
    import kube_apiserver as kas
    tls_dir = os.path.join(root, "tls")
    os.makedirs(tls_dir)
    api = kas.APIServer(kas.make_tls(tls_dir), token="bench-token").start()
    for f in range(files):
        api.put_pod(kas.pod("bench", f"pod-{f}", node="node-a", uid=f"0000-{f:04d}", owner=("ReplicaSet", "pod-abc"),
                            labels={"app": f"bench-{f % 10}", "app.kubernetes.io/name": "bench",
                                    "pod-template-hash": "abc"}))
    kubeconfig = os.path.join(root, "kubeconfig")
    with open(kubeconfig, "w") as f:
        f.write(f"apiVersion: v1\ncurrent-context: bench\ncontexts:\n- name: bench\n  context: {{cluster: c, user: u}}\n"
                f"clusters:\n- name: c\n  cluster: {{server: '{api.url}', certificate-authority: '{tls_dir}/ca.crt'}}\n"
                f"users:\n- name: u\n  user: {{token: bench-token}}\n")
    return api, f"kubernetes:\n  kubeconfig: {kubeconfig}\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--filler", choices=("x", "random"), default="x",
                    help="x: every line padded with 'x' (compresses ~15:1); random: random alphanumerics, fixed seed")
    ap.add_argument("--kubernetes", action="store_true",
                    help="Kubernetes metadata on, from a test API server that knows every pod")
    ap.add_argument("--pipeline", help="a YAML file whose `pipeline:` section is added to the agent's configuration")
    ap.add_argument("--json", action="store_true", help="JSON line content (level, message, trace_id, padding)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="loglet-e2e-", dir="/dev/shm")
    receiver = agent = api = None
    kube_yaml, env = "", None
    try:
        g0 = time.time()
        total, paths = make_corpus(os.path.join(root, "log"), args.mb, args.files, args.filler, args.json)
        mb = total * LINE / 1e6
        print(f"corpus: {args.files} files, {total} lines of {LINE} bytes = {mb:.0f} MB, filler {args.filler}, "
              f"on {root} (generated in {time.time() - g0:.1f} s)")
        print(f"agent: {LOGLET}")
        receiver, port = start_receiver(root)
        if args.kubernetes:
            api, kube_yaml = start_api_server(root, args.files)
            env = dict(os.environ, NODE_NAME="node-a")
        config = os.path.join(root, "loglet.yaml")
        with open(config, "w") as f:
            f.write(agent_config(root, port) + kube_yaml)
            if args.pipeline:
                with open(args.pipeline) as p:
                    f.write(p.read())
        load_before = loadavg()
        t0 = time.time()
        agent = subprocess.Popen([LOGLET, "-config", config], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        w = wait_for_entries(agent, port, total)
        got, peak, complete = w.entries, w.peak_kib, w.complete
        wall = w.t_end - t0
        wall_prev = w.t_prev - t0
        mb_prev = w.n_prev * LINE / 1e6
        cpu = cpu_seconds(agent.pid)
        peak = max(peak, peak_rss_kib(agent.pid))
        rcpu = cpu_seconds(receiver.pid)
        load_after = loadavg()
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        s = stats(port)
        if not complete:
            print(f"NOT DELIVERED: the receiver counted {got} of {total} entries and nothing more arrived "
                  f"for 60 s; wall time below is up to the last entry that arrived")
        meta = "kubernetes metadata on" if args.kubernetes else "path labels only"
        print(f"end to end, files -> loglet -> receiver (defaults, {args.files} files, filler {args.filler}, {meta}"
              f"{', JSON lines' if args.json else ''}{', pipeline ' + args.pipeline if args.pipeline else ''}):")
        print(f"  {mb / wall:.0f} MB/s of log input, {total / wall / 1e6:.2f} M lines/s, wall {wall:.2f} s "
              f"(before the last push: {mb_prev / wall_prev:.0f} MB/s, {mb_prev:.0f} MB by {wall_prev:.2f} s)")
        print(f"  agent CPU {cpu:.2f} s = {cpu / (mb / 1000):.2f} CPU-seconds per GB ({mb / cpu:.0f} MB per CPU-second)")
        print(f"  agent peak RSS {peak / 1024:.1f} MiB")
        print(f"  receiver CPU {rcpu:.2f} s; {s['requests']} pushes, {s['compressed_bytes'] / 1e6:.0f} MB compressed "
              f"(ratio {s['line_bytes'] / max(1, s['compressed_bytes']):.1f} on line bytes)")
        print(f"  {load_before} before, {load_after} after ({os.cpu_count()} cores)")
        sys.stdout.flush()
        subprocess.run([os.path.join(BUILD, "tests", "bench_snappy")] + paths[:10], check=True)
        print(f"summary: filler={args.filler} kubernetes={int(args.kubernetes)} mb={mb:.0f} complete={int(complete)} mb_s={mb / wall:.1f} "
              f"cpu_s_per_gb={cpu / (mb / 1000):.3f} peak_rss_mib={peak / 1024:.1f} wall_s={wall:.2f} "
              f"mb_s_before_last_push={mb_prev / wall_prev:.1f} "
              f"cpu_s={cpu:.2f} ratio={s['line_bytes'] / max(1, s['compressed_bytes']):.2f} "
              f"load_before={load_before.split()[1]} "
              f"load_after={load_after.split()[1]}")
    finally:
        for p in (agent, receiver):
            if p and p.poll() is None:
                p.kill()
                p.wait()
        if api:
            api.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
