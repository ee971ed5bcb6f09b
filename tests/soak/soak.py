"""Soak under faults (issue 6). Runs the real agent against 200 pods written
at a steady rate with kubelet-style rotation and gzip, pods created and
deleted continuously, a Loki receiver that fails 20 % of pushes and goes down
for 30 s twice, and the agent SIGKILLed and restarted twice. At the end: no
line lost, duplicates within the documented bound, RSS and open descriptors
flat (the series is printed), no sanitizer report, exit 0 on SIGTERM.

    /usr/bin/python3 tests/soak/soak.py                 # short form, 180 s (CI)
    /usr/bin/python3 tests/soak/soak.py --duration 3600 # the long form

LOGLET_BIN selects the binary (CI uses the ASan+UBSan build).

Pod lifetimes respect what a node guarantees: a terminated pod's files stay
for `--delete-grace` seconds (the kubelet keeps them until garbage
collection), longer than an outage, so the agent can always read them.
"""
import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "tools"))

import loki_receiver as lr  # noqa: E402
from kubelet import KubeletTree  # noqa: E402

LOGLET_BIN = os.environ.get("LOGLET_BIN", os.path.join(SOURCE_DIR, "build", "loglet"))
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "SUMMARY: UndefinedBehavior")


class Pod:
    def __init__(self, tree, n):
        self.name = f"soak-{n}"
        self.c = tree.container("soak", self.name, "app")
        self.seq = 0
        self.size = 0
        self.ended_at = None

    def write(self, rotate_bytes):
        line = f"{self.name}:{self.seq} " + "x" * 60
        self.c.write(line)
        self.seq += 1
        self.size += len(line) + 45
        if self.size >= rotate_bytes:
            self.c.rotate(compress=True)
            self.size = 0


def proc_stats(pid):
    rss = fds = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return rss, fds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=180)
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--rate", type=float, default=2000, help="lines per second, all pods together")
    ap.add_argument("--rotate-bytes", type=int, default=64 * 1024)
    ap.add_argument("--delete-grace", type=float, default=40)
    ap.add_argument("--sync", default="1s", help="positions_sync_period")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="loglet-soak-")
    tree = KubeletTree(os.path.join(work, "log"))
    receiver = lr.Receiver(keep_requests=100).start()
    receiver.set_faults(fail_ratio=0.2, seed=11)
    config = os.path.join(work, "loglet.yaml")
    with open(config, "w") as f:
        f.write(f"""server:
  http_listen_address: 127.0.0.1
  http_listen_port: 0
collection:
  paths: ["{tree.glob}"]
  read_from: beginning
  positions_file: {work}/positions.yaml
  positions_sync_period: {args.sync}
buffer:
  max_bytes: 4MiB
output:
  shutdown_grace: 20s
  loki:
    url: {receiver.url}
    batch_wait: 200ms
    min_backoff: 100ms
    max_backoff: 2s
""")
    stderr_log = open(os.path.join(work, "agent.stderr"), "wb")

    def start_agent():
        return subprocess.Popen([LOGLET_BIN, "-config", config], stdout=subprocess.DEVNULL, stderr=stderr_log)

    written = collections.Counter()  # pod name -> lines written
    pods, next_id = [], 0
    ending = []  # pods that stopped writing, deleted after the grace
    for _ in range(args.pods):
        pods.append(Pod(tree, next_id))
        next_id += 1

    agent = start_agent()
    t0 = time.time()
    D = args.duration
    outages = [(0.15 * D, 0.15 * D + 30), (0.55 * D, 0.55 * D + 30)]
    kills = [0.35 * D, 0.75 * D]
    down = False
    series = []
    kills_done = 0
    next_sample = 0
    rng = random.Random(5)
    interval = 0.05
    lines_per_tick = max(1, int(args.rate * interval))
    try:
        while True:
            now = time.time() - t0
            if now >= D:
                break
            # Faults on schedule.
            in_outage = any(a <= now < b for a, b in outages)
            if in_outage != down:
                receiver.set_faults(down_hard=in_outage)
                down = in_outage
                print(f"[{now:6.1f}s] receiver {'down' if down else 'up'}", flush=True)
            if kills_done < len(kills) and now >= kills[kills_done]:
                agent.send_signal(signal.SIGKILL)
                agent.wait()
                agent = start_agent()
                kills_done += 1
                print(f"[{now:6.1f}s] agent SIGKILLed and restarted", flush=True)
            # Steady writes, spread over the pods.
            for _ in range(lines_per_tick):
                p = pods[rng.randrange(len(pods))]
                p.write(args.rotate_bytes)
                written[p.name] += 1
            # Churn: about one pod ends and one starts every second.
            if rng.random() < interval:
                old = pods.pop(rng.randrange(len(pods)))
                old.ended_at = time.time()
                ending.append(old)
                pods.append(Pod(tree, next_id))
                next_id += 1
            while ending and time.time() - ending[0].ended_at > args.delete_grace:
                ending.pop(0).c.remove()
            if now >= next_sample:
                rss, fds = proc_stats(agent.pid)
                series.append((round(now), rss, fds, sum(written.values()), receiver.entry_count()))
                next_sample += max(5, D / 36)
            time.sleep(interval)
        receiver.set_faults(down_hard=False, fail_ratio=0.2)
        total = sum(written.values())
        deadline = time.time() + 120
        while time.time() < deadline and len({e["line"].split(" ", 1)[0] for e in receiver.all_entries()}) < total:
            time.sleep(1)
        rss, fds = proc_stats(agent.pid)
        series.append((round(time.time() - t0), rss, fds, total, receiver.entry_count()))
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(60)
    finally:
        if agent.poll() is None:
            agent.kill()
        receiver.stop()
        stderr_log.close()

    got = collections.Counter(e["line"].split(" ", 1)[0] for e in receiver.all_entries())
    expected = {f"{name}:{i}" for name, n in written.items() for i in range(n)}
    missing = expected - set(got)
    unexpected = set(got) - expected
    dups = sum(c - 1 for c in got.values())
    # A SIGKILL re-sends what was delivered since the last positions save plus
    # what was in flight: at most ~ (sync period + batch_wait + one push) of lines.
    dup_bound = len(kills) * int(args.rate * 4)
    with open(os.path.join(work, "agent.stderr"), errors="replace") as f:
        agent_log = f.read()
    reports = [m for m in SANITIZER_MARKERS if m in agent_log]

    print("\n  t(s)   RSS(KiB)  fds   written  received")
    for t, r, fd, w, g in series:
        print(f"{t:6d} {r:10d} {fd:5d} {w:9d} {g:9d}")
    rss_values = [r for _, r, _, _, _ in series if r]
    half = len(rss_values) // 2
    print(f"\nlines written {len(expected)}, received {sum(got.values())}, missing {len(missing)}, "
          f"duplicates {dups} (bound {dup_bound}), unexpected {len(unexpected)}, exit {rc}, "
          f"sanitizer reports {reports or 'none'}")
    failures = []
    if missing:
        failures.append(f"{len(missing)} lines lost, e.g. {sorted(missing)[:5]}")
    if unexpected:
        failures.append(f"unexpected lines {sorted(unexpected)[:5]}")
    if dups > dup_bound:
        failures.append(f"{dups} duplicates > bound {dup_bound}")
    if rc != 0:
        failures.append(f"agent exited {rc} on SIGTERM")
    if reports:
        failures.append(f"sanitizer reported: {reports}")
    if half >= 2 and max(rss_values[half:]) > 1.5 * max(rss_values[:half]) + 8 * 1024:
        failures.append("RSS grew over the run")
    max_fds = max(fd for _, _, fd, _, _ in series)
    if max_fds > 3 * (args.pods + 40) + 50:
        failures.append(f"open descriptors reached {max_fds}")
    if failures:
        print("SOAK FAILED: " + "; ".join(failures))
        print("agent log: " + os.path.join(work, "agent.stderr"))
        return 1
    print("soak: 1 passed, 0 failed")
    subprocess.run(["rm", "-rf", work])
    return 0


if __name__ == "__main__":
    sys.exit(main())
