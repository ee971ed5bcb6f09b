"""Live tail cost: Loki shipping at a fixed offered load with 0 and with N
concurrent followers of the logs API.

    /usr/bin/python3 tests/bench/bench_livetail.py [--followers 50] [--rate 10000] [--seconds 10]

A kubelet-style tree of 10 containers gets --rate lines/s (200-byte CRI
lines, written in 10 ms steps) for --seconds; the agent (default settings
except paths, read_from and the URL) ships them to tests/tools/loki_receiver
(a real Loki receiver). Runs twice: without followers, then with --followers
clients on the Unix socket, each following every container (`follow=true`,
`tail_lines=0`) and counting the lines it receives and the lines it is told
it missed. Prints, per run: lines delivered to Loki, the delivery rate over
the write window plus the time until the last line arrived, the agent's CPU
seconds, and per follower lines received and missed. Nothing is asserted on
time; the run fails only if Loki did not get every line.

LOGLET_BUILD=dir takes the agent from that build directory (default build/);
LOGLET_BIN=path overrides it.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "tools"))
import loki_receiver as lr  # noqa: E402
from kubelet import KubeletTree, cri_timestamp  # noqa: E402

LOGLET = os.environ.get("LOGLET_BIN", os.path.join(os.environ.get("LOGLET_BUILD", os.path.join(SOURCE_DIR, "build")), "loglet"))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Follower(threading.Thread):
    def __init__(self, sock):
        super().__init__(daemon=True)
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(sock)
        self.s.sendall(b"GET /api/v1/logs?follow=true&tail_lines=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.lines = self.missed = 0
        self.stop = False

    def run(self):
        buf = b""
        while not self.stop:
            try:
                chunk = self.s.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for l in lines:
                if b'"status":"streaming"' in l:
                    self.lines += 1
                elif b"lines missed" in l:
                    self.missed += int(l.split(b'"message":"', 1)[1].split(b" ", 1)[0])


def run(followers, rate, seconds, workdir):
    tree = KubeletTree(os.path.join(workdir, f"log{followers}"))
    containers = [tree.container("bench", f"pod-{i}", "app") for i in range(10)]
    receiver = lr.Receiver().start()
    sock = os.path.join(workdir, f"api{followers}.sock")
    cfg = os.path.join(workdir, f"loglet{followers}.yaml")
    with open(cfg, "w") as f:
        f.write("server:\n  http_listen_address: 127.0.0.1\n  http_listen_port: 0\n"
                f"  api:\n    socket: {sock}\n    max_subscribers: {max(followers, 1) + 4}\n"
                f"collection:\n  paths: [\"{tree.glob}\"]\n  read_from: beginning\n"
                f"  positions_file: {os.path.join(workdir, f'pos{followers}.yaml')}\n"
                f"output:\n  loki:\n    url: {receiver.url}\n")
    agent = subprocess.Popen([LOGLET, "-config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not os.path.exists(sock) and time.time() < deadline:
        time.sleep(0.05)
    fs = [Follower(sock) for _ in range(followers)]
    for f in fs:
        f.start()
    time.sleep(0.5)
    cpu0 = cpu_seconds(agent.pid)
    step, written, t0 = 0.01, 0, time.time()
    per_step = max(1, int(rate * step))
    while time.time() - t0 < seconds:
        ts = cri_timestamp()
        for k in range(per_step):
            c = containers[k % len(containers)]
            body = f"line {written} " + "x" * 150
            c.write_raw(f"{ts} stdout F {body}\n")
            written += 1
        sleep = t0 + (written / rate) - time.time()
        if sleep > 0:
            time.sleep(sleep)
    t_written = time.time()
    ok = receiver.wait_for(written, timeout=120)
    t_done = time.time()
    cpu = cpu_seconds(agent.pid) - cpu0
    delivered = receiver.entry_count()
    time.sleep(0.5)
    for f in fs:
        f.stop = True
        f.s.close()
    agent.terminate()
    agent.wait(30)
    receiver.stop()
    return {
        "followers": followers, "written": written, "delivered": delivered, "ok": ok,
        "write_s": t_written - t0, "done_s": t_done - t0, "rate": delivered / (t_done - t0),
        "tail_s": t_done - t_written, "cpu_s": cpu,
        "f_lines": [f.lines for f in fs], "f_missed": [f.missed for f in fs],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--followers", type=int, default=50)
    ap.add_argument("--rate", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-livetail-", dir="/dev/shm") as wd:
        results = [run(0, args.rate, args.seconds, wd), run(args.followers, args.rate, args.seconds, wd)]
    for r in results:
        fl = r["f_lines"]
        print(f"followers={r['followers']:3d}: {r['delivered']}/{r['written']} lines to Loki, "
              f"{r['rate']:.0f} lines/s over {r['done_s']:.2f} s (write window {r['write_s']:.2f} s, "
              f"last line {r['tail_s']:.2f} s after the last write), agent CPU {r['cpu_s']:.2f} s"
              + (f"; per follower received min {min(fl)} max {max(fl)}, missed min {min(r['f_missed'])} "
                 f"max {max(r['f_missed'])}" if fl else ""))
    base, loaded = results
    print(f"load average after: {os.getloadavg()}")
    print(f"summary: rate_none={base['rate']:.0f} rate_followers={loaded['rate']:.0f} "
          f"ratio={loaded['rate'] / base['rate']:.3f} cpu_none={base['cpu_s']:.2f} cpu_followers={loaded['cpu_s']:.2f} "
          f"followers={args.followers}")
    if not all(r["ok"] and r["delivered"] == r["written"] for r in results):
        print("FAILED: Loki did not receive every line", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
