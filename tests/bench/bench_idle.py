"""Idle and start: an agent tailing 2,000 files that nobody writes to, and a
restart of it with their positions file.

    /usr/bin/python3 tests/bench/bench_idle.py [--files 2000] [--seconds 30] [--runs 3]

A kubelet-style tree of --files files on tmpfs (/dev/shm), 20 lines each, is
read from the beginning into build/tests/bench_count_receiver at default
settings (inotify). Once every line is counted and 3 s have passed:

  idle   the agent's CPU over --seconds (from /proc/PID/stat: ticks of 10 ms,
         so below 0.03 % over 30 s reads as 0 or one tick), and every syscall
         of every thread for 10 s under `strace -f -c` (per second, by name,
         and per file per second);
  start  SIGTERM (the positions file now lists every file), then the agent is
         started again --runs times: the time from exec to the first 200 of
         /ready (polled every 5 ms), and to the log line saying it watches.

The machine is usually shared: the load average is printed with each figure.
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
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e as e2e  # noqa: E402


def write_config(root, port):
    path = os.path.join(root, "loglet.yaml")
    with open(path, "w") as f:
        f.write(e2e.agent_config(root, port))
    return path


class Agent:
    """The agent with its stderr read by a thread, so the probe port and the
    time of each log line are known."""

    def __init__(self, config):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([e2e.LOGLET, "-config", config], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.port = None
        self.watching_s = None
        self.lines = []
        self.seen_port = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"probes and metrics on http://[^ ]*:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self.seen_port.set()
            if self.watching_s is None and "watching files with" in line:
                self.watching_s = time.monotonic() - self.t0

    def ready_after(self, timeout=30.0):
        """Seconds from exec to the first 200 of /ready."""
        if not self.seen_port.wait(timeout):
            raise SystemExit("the agent never said its probe port:\n" + "".join(self.lines))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - self.t0
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.005)
        raise SystemExit("/ready never answered 200 within %.0f s" % timeout)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def strace_summary(pid, seconds, out):
    """`strace -f -c` attached for `seconds`; returns {syscall: calls}."""
    st = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    st.send_signal(signal.SIGINT)
    st.wait(10)
    calls = {}
    with open(out) as f:
        for line in f:
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                calls[fields[-1]] = int(fields[3])
    return calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0, help="idle CPU measured over this long")
    ap.add_argument("--runs", type=int, default=3, help="restarts measured")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="loglet-idle-", dir="/dev/shm")
    receiver = None
    try:
        lines = 20
        mb_lines = args.files * lines * e2e.LINE
        total, _ = e2e.make_corpus(os.path.join(root, "log"), max(1, -(-mb_lines // (1024 * 1024))), args.files, "x")
        receiver, port = e2e.start_receiver(root)
        config = write_config(root, port)
        print(f"agent: {e2e.LOGLET}; {args.files} files, {total} lines; {os.cpu_count()} cores")
        a = Agent(config)
        w = e2e.wait_for_entries(a.proc, port, total)
        if not w.complete:
            print(f"NOT DELIVERED: {w.entries} of {total}")
        time.sleep(3)
        load = e2e.loadavg()
        c0, t0 = e2e.cpu_seconds(a.proc.pid), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = e2e.cpu_seconds(a.proc.pid), time.monotonic()
        pct = 100 * (c1 - c0) / (t1 - t0)
        print(f"idle: {args.files} files, CPU {c1 - c0:.2f} s over {t1 - t0:.0f} s = {pct:.3f} % ({load})")
        if not shutil.which("strace"):
            raise SystemExit("strace missing: scripts/setup.sh bench installs it")
        calls = strace_summary(a.proc.pid, 10, os.path.join(root, "strace.txt"))
        per_s = {k: v / 10 for k, v in calls.items()}
        total_s = sum(per_s.values())
        top = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_s.items(), key=lambda kv: -kv[1])[:8])
        print(f"idle syscalls: {total_s:.1f} per second in all ({total_s / args.files:.4f} per file per second): {top}")
        print(f"summary: idle_files={args.files} idle_cpu_pct={pct:.3f} idle_syscalls_per_s={total_s:.1f} "
              f"idle_syscalls_per_file_s={total_s / args.files:.4f}")
        a.stop()

        ready, watching = [], []
        for _ in range(args.runs):
            load = e2e.loadavg()
            a = Agent(config)
            r = a.ready_after()
            ready.append(r)
            watching.append(a.watching_s or float("nan"))
            print(f"  start with {args.files} files in the positions file: /ready 200 after {r * 1000:.0f} ms "
                  f"(said it was watching after {(a.watching_s or float('nan')) * 1000:.0f} ms; {load})")
            a.stop()
        print(f"start: /ready 200 after {statistics.median(ready) * 1000:.0f} ms, median of {args.runs} "
              f"({min(ready) * 1000:.0f}–{max(ready) * 1000:.0f})")
        print(f"summary: start_files={args.files} ready_ms={statistics.median(ready) * 1000:.0f} "
              f"load={e2e.loadavg().split()[1]}")
    finally:
        if receiver and receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
