"""Latency: the time from a line's write to its acknowledgement, at a steady
offered load.

    /usr/bin/python3 tests/bench/bench_latency.py [--rate 10000] [--files 100] [--seconds 20] [--runs 3]

A writer process appends 200-byte CRI lines to --files files of a kubelet-style
tree on tmpfs (/dev/shm), --rate lines per second in all, round robin, each
line carrying its write time; the agent runs at default settings (batch_wait
1 s, batch_bytes 1 MiB) with read_from: end; the receiver is
tests/tools/loki_receiver.py in this process (it decodes every push), and a
line's acknowledgement time is when the push holding it arrived (the 204
follows at once). The first 2 s are left out (start-up), and so are the last
2 s: once the writer stops, the last batch is not full and waits its whole
batch_wait, which a steady load never sees. Prints p50, p90,
p99 and the maximum per run and the medians over --runs; the target is
p99 <= batch_wait + 100 ms.

LOGLET_BUILD / LOGLET_BIN as for bench_e2e.py.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools"))
import bench_e2e as e2e  # noqa: E402

WARMUP_S = 2.0


def writer(paths, rate, seconds):
    """Runs in its own process (no GIL shared with the receiver): `rate`
    lines per second over `paths`, on a schedule by absolute time."""
    fds = [os.open(p, os.O_WRONLY | os.O_APPEND) for p in paths]
    start = time.time()
    n = 0
    while True:
        now = time.time()
        if now - start >= seconds:
            break
        due = int((now - start) * rate)
        while n < due:
            t = time.time()
            head = b"2026-11-22T10:00:00.123456789Z stdout F seq=%010d t=%.6f " % (n, t)
            os.write(fds[n % len(fds)], head + b"x" * (e2e.LINE - len(head) - 1) + b"\n")
            n += 1
        time.sleep(0.002)
    for fd in fds:
        os.close(fd)
    print(n, flush=True)


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def run(root, paths, rate, seconds):
    import loki_receiver
    rcv = loki_receiver.Receiver()
    rcv.start()
    try:
        config = os.path.join(root, "loglet.yaml")
        with open(config, "w") as f:
            f.write(f"""server:
  http_listen_address: 127.0.0.1
  http_listen_port: 0
collection:
  paths: ["{root}/log/containers/*.log"]
  read_from: end
  positions_file: {root}/positions.yaml
output:
  loki:
    url: {rcv.url}
""")
        try:
            os.unlink(os.path.join(root, "positions.yaml"))
        except FileNotFoundError:
            pass
        agent = subprocess.Popen([e2e.LOGLET, "-config", config], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        try:
            for line in agent.stderr:  # read_from: end takes the files' ends when it starts watching
                if "watching files with" in line:
                    break
            time.sleep(0.5)
            load = e2e.loadavg()
            w = subprocess.run([sys.executable, os.path.abspath(__file__), "--writer", str(rate), str(seconds)]
                               + paths, capture_output=True, text=True, check=True)
            written = int(w.stdout.strip())
            rcv.wait_for(written, timeout=30)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        times = {r["id"]: r["time"] for r in rcv.requests()}
        lat, first, last = [], None, None
        for e in rcv.all_entries():
            m = re.search(r"seq=(\d+) t=([0-9.]+) ", e["line"])
            if not m:
                continue
            t = float(m.group(2))
            first = t if first is None else min(first, t)
            last = t if last is None else max(last, t)
            lat.append((t, times[e["request"]] - t))
        lat = sorted(x for t, x in lat if t - first >= WARMUP_S and last - t >= WARMUP_S)
        return dict(written=written, got=rcv.entry_count(), lat=lat, load=load)
    finally:
        rcv.stop()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        writer(sys.argv[4:], int(sys.argv[2]), float(sys.argv[3]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=10000, help="lines per second, over all files")
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="loglet-latency-", dir="/dev/shm")
    try:
        _, paths = e2e.make_corpus(os.path.join(root, "log"), 0, args.files)
        print(f"agent: {e2e.LOGLET}; {args.rate} lines/s of {e2e.LINE} B over {args.files} files for "
              f"{args.seconds:.0f} s (first and last {WARMUP_S:.0f} s left out), defaults (batch_wait 1s); "
              f"{os.cpu_count()} cores")
        p50s, p99s = [], []
        for _ in range(args.runs):
            r = run(root, paths, args.rate, args.seconds)
            lat = r["lat"]
            p50, p90, p99 = (percentile(lat, p) for p in (50, 90, 99))
            p50s.append(p50)
            p99s.append(p99)
            lost = "" if r["got"] >= r["written"] else f" NOT DELIVERED: {r['got']} of {r['written']}"
            print(f"  {len(lat)} lines measured: p50 {p50 * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms, max {(lat[-1] if lat else float('nan')) * 1000:.0f} ms "
                  f"({r['load']}){lost}", flush=True)
        print(f"latency write -> acknowledgement at {args.rate} lines/s over {args.files} files: median of "
              f"{args.runs}: p50 {statistics.median(p50s) * 1000:.0f} ms, p99 {statistics.median(p99s) * 1000:.0f} ms "
              f"(target p99 <= 1100 ms); {e2e.loadavg()}")
        print(f"summary: rate={args.rate} files={args.files} p50_ms={statistics.median(p50s) * 1000:.0f} "
              f"p99_ms={statistics.median(p99s) * 1000:.0f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
