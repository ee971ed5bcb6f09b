"""The archive output's cost: MB of log input per CPU-second of the agent with
the archive only, Loki only, and both at once.

    /usr/bin/python3 tests/bench/bench_archive.py [--mb 512] [--files 50] [--filler x|random]
                                                  [--modes archive,loki,both] [--gzip-level 6]

The corpus and the Loki receiver are bench_e2e.py's (200-byte CRI lines on
tmpfs, build/tests/bench_count_receiver counting entries); the archive is
file:// on tmpfs too, so the figures are the agent's work, not a disk's. The
agent runs at its default settings (paths, read_from: beginning and the URLs
aside) until every line was read (and, with Loki, counted by the receiver),
then gets SIGTERM, which stores the open objects (flush_interval is 1m): its
CPU is taken from wait4() after it exited, so it includes that last flush.
Every run checks that the archive holds every line once (decompressed and
counted afterwards, outside the measurement).
"""
import argparse
import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_e2e as e2e  # noqa: E402


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def run(mode, root, total, gzip_level):
    out = os.path.join(root, f"archive-{mode}")
    receiver = port = None
    if mode in ("loki", "both"):
        receiver, port = e2e.start_receiver(root, f"receiver-{mode}")
    positions = os.path.join(root, f"positions-{mode}.yaml")
    config = os.path.join(root, f"loglet-{mode}.yaml")
    text = (f"server:\n  http_listen_address: 127.0.0.1\n  http_listen_port: 0\n"
            f"collection:\n  paths: [\"{root}/log/containers/*.log\"]\n  read_from: beginning\n"
            f"  positions_file: {positions}\noutput:\n")
    if port:
        text += f"  loki:\n    url: http://127.0.0.1:{port}/loki/api/v1/push\n"
    if mode in ("archive", "both"):
        text += f"  archive:\n    url: file://{out}\n    gzip_level: {gzip_level}\n"
    with open(config, "w") as f:
        f.write(text)
    t0 = time.time()
    agent = subprocess.Popen([e2e.LOGLET, "-config", config], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines = []
    threading.Thread(target=lambda: [lines.append(l.decode()) for l in agent.stderr], daemon=True).start()
    mport = None
    while mport is None:
        for l in list(lines):
            m = re.search(r"probes and metrics on http://[^ ]*:(\d+)", l)
            if m:
                mport = int(m.group(1))
        if agent.poll() is not None:
            raise SystemExit("agent exited early:\n" + "".join(lines))
        time.sleep(0.01)
    while True:
        read = metric(mport, "loglet_lines_read_total")
        sent = e2e.stats(port)["entries"] if port else total
        if read >= total and sent >= total:
            break
        if time.time() - t0 > 600:
            raise SystemExit(f"{mode}: stuck at {read} read, {sent} sent")
        time.sleep(0.02)
    peak = e2e.peak_rss_kib(agent.pid)
    agent.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(agent.pid, 0)
    wall = time.time() - t0
    agent.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    if receiver:
        receiver.terminate()
        receiver.wait()
    archived = stored = 0
    if mode in ("archive", "both"):
        for d, _, files in os.walk(out):
            for f in files:
                p = os.path.join(d, f)
                stored += os.path.getsize(p)
                archived += gzip.decompress(open(p, "rb").read()).count(b"\n")
        if archived != total:
            raise SystemExit(f"{mode}: the archive holds {archived} lines of {total}")
        shutil.rmtree(out)
    return cpu, wall, peak, stored, agent.returncode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--filler", choices=("x", "random"), default="random")
    ap.add_argument("--modes", default="archive,loki,both")
    ap.add_argument("--gzip-level", type=int, default=6)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="loglet-archive-bench-", dir="/dev/shm")
    try:
        total, _ = e2e.make_corpus(os.path.join(root, "log"), args.mb, args.files, args.filler)
        mb = total * e2e.LINE / 1e6
        print(f"corpus: {args.files} files, {total} lines = {mb:.0f} MB, filler {args.filler}; gzip level "
              f"{args.gzip_level}; agent {e2e.LOGLET}; {e2e.loadavg()}")
        summary = []
        for mode in args.modes.split(","):
            cpu, wall, peak, stored, rc = run(mode, root, total, args.gzip_level)
            ratio = f", archive {stored / 1e6:.0f} MB ({mb * 1e6 / max(stored, 1):.1f}:1)" if stored else ""
            print(f"{mode:8s} {mb / cpu:7.0f} MB per CPU-second ({cpu:.2f} CPU-s, {cpu / (mb / 1000):.2f} CPU-s per "
                  f"GB), wall {wall:.1f} s, peak RSS {peak / 1024:.1f} MiB{ratio}, exit {rc}")
            summary.append(f"{mode}_mb_per_cpu_s={mb / cpu:.0f}")
        print("summary: " + " ".join(summary) + f" gzip_level={args.gzip_level} {e2e.loadavg()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
