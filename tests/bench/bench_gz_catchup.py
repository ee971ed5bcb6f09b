"""Catch-up of a compressed rotated file: how long loglet takes, and how much
CPU, to deliver a 50 MB (uncompressed) `0.log.20261201-000000.gz` that it
finds on start, next to the same data as a plain rotated file.

    /usr/bin/python3 tests/bench/bench_gz_catchup.py [--mb 50] [--filler x|random]
        [--scenario new|restart|auto] [--runs 1]

One container of a kubelet-style tree on tmpfs (/dev/shm) holds a rotated
sibling of MB megabytes (1,000,000 bytes each) and a small current `0.log`
(1,000 lines); the agent runs at its defaults (read_from: beginning) against
build/tests/bench_count_receiver. Measured, for each variant (gz, plain): the
agent's wall time from its start until the receiver counted every line of the
rotated file and of the current one, and its CPU seconds then; printed as
MB/s and CPU-seconds per GB of delivered lines.

Scenarios (how the agent comes to read the rotated file from its beginning):
  new      a positions file exists (from a first run on another container)
           but does not list this container: the agent treats it as new and
           reads it from its beginning, rotated siblings first.
  restart  the agent reads the first 100 lines of 0.log, is stopped with
           SIGTERM (positions saved), the file grows to MB while it is down,
           the kubelet rotates it (and compresses it: `.tmp`, then `.gz`, the
           plain file removed) and a new 0.log starts; the agent restarts and
           resumes inside the .gz at its saved offset.
  auto     (default) `new`; when the agent does not log "catching up … from
           rotated …" for it, says so and uses `restart`.
Each run checks the agent's "catching up … from rotated …" line, and the
count: fewer lines than expected (nothing more for 60 s) or more (duplicates)
is printed. Nothing asserts on speed.

LOGLET_BUILD=dir takes the agent and the helpers from that build directory
(default build/); LOGLET_BIN=path overrides the agent binary alone. The last
lines, `summary: …`, repeat the figures as key=value.
"""
import argparse
import gzip
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e  # noqa: E402  (corpus, receiver and /proc helpers)
from bench_e2e import LINE, LOGLET, cpu_seconds, loadavg, peak_rss_kib, stats  # noqa: E402

ROTATED = "0.log.20261201-000000"
CURRENT_LINES = 1000
HEAD_LINES = 100  # restart scenario: read before the stop (> the 256-byte fingerprint)
STALL_S = 60.0
GZIP_LEVEL = 6  # the kubelet's (Go compress/gzip's default)


class Tree:
    def __init__(self, root):
        self.root = root
        self.log = os.path.join(root, "log")
        self.containers = os.path.join(self.log, "containers")
        os.makedirs(self.containers)
        self.positions = os.path.join(root, "positions.yaml")

    def container(self, n):
        """The container directory and its 0.log symlink path (created)."""
        d = os.path.join(self.log, "pods", f"bench_pod-{n}_0000-{n:04d}", "app")
        os.makedirs(d, exist_ok=True)
        link = os.path.join(self.containers, f"pod-{n}_bench_app-{n:064d}.log")
        if not os.path.islink(link):
            os.symlink(os.path.relpath(os.path.join(d, "0.log"), self.containers), link)
        return d, link

    batch_wait = None  # output.loki.batch_wait, when not the agent's default

    def config(self, port):
        path = os.path.join(self.root, "loglet.yaml")
        extra = f"\n    batch_wait: {self.batch_wait}" if self.batch_wait else ""
        with open(path, "w") as f:
            f.write(f"""server:
  http_listen_address: 127.0.0.1
  http_listen_port: 0
collection:
  paths: ["{self.containers}/*.log"]
  read_from: beginning
  positions_file: {self.positions}
output:
  loki:
    url: http://127.0.0.1:{port}/loki/api/v1/push{extra}
""")
        return path


class Agent:
    """loglet + a fresh counting receiver; stderr kept in a file."""

    def __init__(self, tree, name):
        self.tree = tree
        self.receiver, self.port = bench_e2e.start_receiver(tree.root, name)
        self.log_path = os.path.join(tree.root, f"{name}.log")
        self.log_file = open(self.log_path, "wb")
        self.t0 = time.time()
        self.proc = subprocess.Popen([LOGLET, "-config", tree.config(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=self.log_file)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def catching_up(self):
        return [l for l in self.log().splitlines() if "catching up" in l and "from rotated" in l]

    def wait(self, total, stall_s=STALL_S, give_up=None):
        """bench_e2e.wait_for_entries for this agent and receiver."""
        try:
            return bench_e2e.wait_for_entries(self.proc, self.port, total, stall_s, give_up)
        except SystemExit:
            raise SystemExit(f"agent exited early with {self.proc.returncode}:\n{self.log()[-2000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                print("  (agent did not exit within 30 s of SIGTERM; killed)")
                self.proc.kill()
                self.proc.wait()
        final = stats(self.port)["entries"]
        self.receiver.kill()
        self.receiver.wait()
        self.log_file.close()
        return final

    def kill(self):
        for p in (self.proc, self.receiver):
            if p.poll() is None:
                p.kill()
                p.wait()


def write_corpus(path, blocks, lines, first_block=0, mode="wb"):
    with open(path, mode) as out:
        return bench_e2e.write_lines(out, blocks, lines, first_block)


def compress_like_kubelet(d):
    """0.log.<ts> -> 0.log.<ts>.tmp (gzip) -> rename to .gz -> remove the plain file."""
    src = os.path.join(d, ROTATED)
    tmp = src + ".tmp"
    with open(src, "rb") as fin, gzip.open(tmp, "wb", compresslevel=GZIP_LEVEL) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    os.rename(tmp, src + ".gz")
    os.unlink(src)
    return os.path.getsize(src + ".gz")


def first_run(tree, total):
    """Runs the agent until it delivered `total` lines, then SIGTERM: a positions file."""
    a = Agent(tree, "first")
    try:
        w = a.wait(total, stall_s=20)
        if not w.complete:
            raise SystemExit(f"first run delivered {w.entries} of {total} lines:\n{a.log()[-2000:]}")
    finally:
        a.stop()
    if not os.path.exists(tree.positions):
        raise SystemExit("the first run left no positions file")


def run(variant, scenario, rotated_lines, blocks):
    """One measurement. Returns a dict of figures, or None when `scenario`
    was `new` and the agent did not catch the rotated file up."""
    root = tempfile.mkdtemp(prefix=f"loglet-gzcatch-{variant}-", dir="/dev/shm")
    tree = Tree(root)
    a = None
    try:
        if scenario == "new":
            od, _ = tree.container(1)  # another container, so that a positions file exists (and lists it)
            write_corpus(os.path.join(od, "0.log"), blocks, CURRENT_LINES, 10**6)
            first_run(tree, CURRENT_LINES)
            d, _ = tree.container(0)  # created while the agent is down
            k = write_corpus(os.path.join(d, ROTATED), blocks, rotated_lines)
            expected = rotated_lines + CURRENT_LINES
        else:
            d, _ = tree.container(0)
            path = os.path.join(d, "0.log")
            k = write_corpus(path, blocks, HEAD_LINES)
            first_run(tree, HEAD_LINES)
            k = write_corpus(path, blocks, rotated_lines - HEAD_LINES, k, "ab")  # while it is down
            os.rename(path, os.path.join(d, ROTATED))
            expected = rotated_lines - HEAD_LINES + CURRENT_LINES
        write_corpus(os.path.join(d, "0.log"), blocks, CURRENT_LINES, k)
        gz_bytes = compress_like_kubelet(d) if variant == "gz" else 0
        siblings = sorted(os.listdir(d))

        load_before = loadavg()
        a = Agent(tree, "measured")
        give_up = None
        if scenario == "new":
            # Its catch-up line comes at the start-up scan; without it the rotated file is not read.
            deadline = a.t0 + 5.0
            give_up = lambda: time.time() > deadline and not a.catching_up()  # noqa: E731
        w = a.wait(expected, give_up=give_up)
        n, complete = w.entries, w.complete
        wall = w.t_end - a.t0
        wall_prev = w.t_prev - a.t0
        mb_prev = w.n_prev * LINE / 1e6
        cpu = cpu_seconds(a.proc.pid)
        peak = max(w.peak_kib, peak_rss_kib(a.proc.pid))
        load_after = loadavg()
        lines = a.catching_up()
        if scenario == "new" and not lines:
            a.stop()
            print(f"  [{variant}, new] the agent did not log \"catching up … from rotated …\" within 5 s; "
                  f"it counted {n} of {expected} lines (it read 0.log alone)")
            return None
        time.sleep(0.3)  # anything more (duplicates) arrives now or not at all
        final = a.stop()
        delivered_mb = expected * LINE / 1e6
        r = dict(variant=variant, scenario=scenario, expected=expected, got=n, final=final, complete=complete,
                 wall=wall, wall_prev=wall_prev, mb_prev=mb_prev, cpu=cpu, peak=peak, mb=delivered_mb,
                 gz_bytes=gz_bytes,
                 load_before=load_before, load_after=load_after, catching_up=lines, siblings=siblings)
        return r
    finally:
        if a:
            a.kill()
        shutil.rmtree(root, ignore_errors=True)


def report(r):
    mb, wall, cpu = r["mb"], r["wall"], r["cpu"]
    size = f", {r['gz_bytes'] / 1e6:.1f} MB compressed" if r["gz_bytes"] else ""
    print(f"  {r['variant']:5} ({r['scenario']}): {mb:.1f} MB of lines{size}: wall {wall:.2f} s = {mb / wall:.0f} MB/s "
          f"(before the last push: {r['mb_prev'] / r['wall_prev']:.0f} MB/s, {r['mb_prev']:.1f} MB by "
          f"{r['wall_prev']:.2f} s); "
          f"agent CPU {cpu:.2f} s = {cpu / (mb / 1000):.2f} CPU-seconds per GB; peak RSS {r['peak'] / 1024:.1f} MiB; "
          f"{r['load_before']} before, {r['load_after']} after")
    for line in r["catching_up"]:
        m = re.search(r"catching up (\S+) from rotated (\S+) at offset (\d+)", line)
        print(f"      agent: catching up …/{os.path.basename(m[1])[:24]}… from rotated …/{os.path.basename(m[2])} "
              f"at offset {m[3]}" if m else f"      agent: {line.strip()[:200]}")
    if not r["complete"]:
        print(f"      NOT DELIVERED: the receiver counted {r['got']} of {r['expected']} lines, nothing more for "
              f"{STALL_S:.0f} s (wall is up to the last line that arrived)")
    elif r["final"] > r["expected"]:
        print(f"      DUPLICATES: the receiver counted {r['final']} lines, {r['expected']} expected")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=50, help="rotated file, uncompressed, in MB (10^6 bytes)")
    ap.add_argument("--filler", choices=("x", "random"), default="x")
    ap.add_argument("--scenario", choices=("new", "restart", "auto"), default="auto")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--batch-wait", help="output.loki.batch_wait (default: the agent's, 1s, which is also the floor "
                    "of every wall time here: the last, partial batch waits that long)")
    args = ap.parse_args()
    Tree.batch_wait = args.batch_wait
    blocks = bench_e2e.Blocks(args.filler)
    rotated_lines = args.mb * 1000 * 1000 // LINE
    print(f"catch-up of a rotated file: {rotated_lines} lines of {LINE} bytes = {rotated_lines * LINE / 1e6:.0f} MB "
          f"+ {CURRENT_LINES} in the current 0.log, filler {args.filler}, {args.runs} run(s) per variant")
    print(f"agent: {LOGLET}; batch_wait {args.batch_wait or 'default (1s)'}")
    scenario = "new" if args.scenario == "auto" else args.scenario
    results = {"gz": [], "plain": []}
    for i in range(args.runs):
        for variant in ("gz", "plain"):
            r = run(variant, scenario, rotated_lines, blocks)
            if r is None and args.scenario == "auto":
                scenario = "restart"
                print("  -> using the restart scenario (stopped, rotated and compressed while down, restarted)")
                r = run(variant, scenario, rotated_lines, blocks)
            if r is None:
                continue
            if i == 0:
                print(f"  [{variant}] files in the container directory: {', '.join(r['siblings'])}")
            report(r)
            results[variant].append(r)
    for variant, rs in results.items():
        if not rs:
            continue
        wall = statistics.median(r["wall"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        mb_s_prev = statistics.median(r["mb_prev"] / r["wall_prev"] for r in rs)
        mb = rs[0]["mb"]
        print(f"summary: variant={variant} scenario={rs[0]['scenario']} filler={args.filler} runs={len(rs)} "
              f"batch_wait={args.batch_wait or 'default'} "
              f"mb={mb:.1f} complete={int(all(r['complete'] for r in rs))} "
              f"duplicates={int(any(r['final'] > r['expected'] for r in rs))} median_wall_s={wall:.2f} "
              f"mb_s={mb / wall:.1f} mb_s_before_last_push={mb_s_prev:.1f} median_cpu_s={cpu:.2f} "
              f"cpu_s_per_gb={cpu / (mb / 1000):.2f} "
              f"peak_rss_mib={max(r['peak'] for r in rs) / 1024:.1f}")


if __name__ == "__main__":
    main()
