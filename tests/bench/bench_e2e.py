"""End to end: files -> loglet -> Loki receiver on 127.0.0.1 that only counts.

    /usr/bin/python3 tests/bench/bench_e2e.py [--mb 1024] [--files 100]

200-byte CRI lines across 100 files of a kubelet tree on tmpfs (/dev/shm),
the agent at its default settings (except the paths, read_from: beginning and
the URL), and build/tests/bench_count_receiver as Loki. Prints MB/s of log
input, lines/s, the agent's CPU seconds per GB, its peak RSS, the receiver's
CPU, and snappy alone on the same data for comparison.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("LOGLET_BUILD", os.path.join(SOURCE_DIR, "build"))
LINE = 200


def make_corpus(root, mb, files):
    lines_each = mb * 1024 * 1024 // LINE // files
    prefix = "2026-11-22T10:00:00.123456789Z stdout F "
    block = []
    for i in range(1000):
        head = f"{prefix}GET /api/v1/items/{i}?session=abcdef0123456789 200 "
        block.append(head + "x" * (LINE - len(head) - 1) + "\n")
    block = "".join(block).encode()
    paths = []
    os.makedirs(os.path.join(root, "containers"))
    for f in range(files):
        d = os.path.join(root, "pods", f"bench_pod-{f}_0000-{f:04d}", "app")
        os.makedirs(d)
        path = os.path.join(d, "0.log")
        with open(path, "wb") as out:
            left = lines_each
            while left:
                n = min(left, 1000)
                out.write(block[: n * LINE])
                left -= n
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=100)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="loglet-e2e-", dir="/dev/shm")
    receiver = agent = None
    try:
        total, paths = make_corpus(os.path.join(root, "log"), args.mb, args.files)
        mb = total * LINE / 1e6
        print(f"corpus: {args.files} files, {total} lines of {LINE} bytes = {mb:.0f} MB on {root}")
        port_file = os.path.join(root, "port")
        receiver = subprocess.Popen([os.path.join(BUILD, "tests", "bench_count_receiver"), port_file])
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            time.sleep(0.01)
        port = int(open(port_file).read())
        config = os.path.join(root, "loglet.yaml")
        with open(config, "w") as f:
            f.write(f"""server:
  http_listen_address: 127.0.0.1
  http_listen_port: 0
collection:
  paths: ["{root}/log/containers/*.log"]
  read_from: beginning
  positions_file: {root}/positions.yaml
output:
  loki:
    url: http://127.0.0.1:{port}/loki/api/v1/push
""")
        t0 = time.time()
        agent = subprocess.Popen([os.path.join(BUILD, "loglet"), "-config", config],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = 0
        while True:
            s = stats(port)
            peak = max(peak, peak_rss_kib(agent.pid))
            if s["entries"] >= total:
                break
            if agent.poll() is not None:
                raise SystemExit(f"agent exited early with {agent.returncode}")
            time.sleep(0.02)
        wall = time.time() - t0
        cpu = cpu_seconds(agent.pid)
        peak = max(peak, peak_rss_kib(agent.pid))
        rcpu = cpu_seconds(receiver.pid)
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        s = stats(port)
        print(f"end to end, files -> loglet -> receiver (defaults, {args.files} files):")
        print(f"  {mb / wall:.0f} MB/s of log input, {total / wall / 1e6:.2f} M lines/s, wall {wall:.2f} s")
        print(f"  agent CPU {cpu:.2f} s = {cpu / (mb / 1000):.2f} CPU-seconds per GB ({mb / cpu:.0f} MB per CPU-second)")
        print(f"  agent peak RSS {peak / 1024:.1f} MiB")
        print(f"  receiver CPU {rcpu:.2f} s; {s['requests']} pushes, {s['compressed_bytes'] / 1e6:.0f} MB compressed "
              f"(ratio {s['line_bytes'] / max(1, s['compressed_bytes']):.1f} on line bytes)")
        subprocess.run([os.path.join(BUILD, "tests", "bench_snappy")] + paths[:10], check=True)
    finally:
        for p in (agent, receiver):
            if p and p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
