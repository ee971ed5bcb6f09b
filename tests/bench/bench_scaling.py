"""Scaling table: CPU seconds per GB, peak RSS and lines/s end to end, as files,
streams (label sets) and line sizes vary, for sizing requests and limits.

    /usr/bin/python3 tests/bench/bench_scaling.py [--mb 256] [--runs 3] [--axis files|streams|lines]

Each case is a kubelet-style tree on tmpfs (/dev/shm) of CRI lines padded with
random alphanumerics (the `--filler random` corpus of bench_e2e.py: snappy
finds little to compress), read from the beginning by the `loglet` binary at
its default settings into build/tests/bench_count_receiver, as bench_e2e.py
does. The axes, each with the others held at the middle:

  files    10, 100, 1,000, 10,000 files, 200-byte lines, one stream per file
  streams  1, 100, 10,000 streams over 10,000 files (files of one pod and
           container share a label set: 10,000 / streams files each)
  lines    50 B, 200 B, 2 KiB, 64 KiB lines (the whole line one CRI record),
           100 files

Every case runs --runs times on the same corpus (the positions file removed
between runs) and prints the median and the range; wall time is from start to
the last entry counted, so it includes the last batch's batch_wait (1 s), and
lines/s is taken before the last push to leave that tail out. The last lines,
`table: …`, are the Markdown rows of the README's table.

LOGLET_BUILD / LOGLET_BIN as for bench_e2e.py.
"""
import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e as e2e  # noqa: E402

PREFIX = b"2026-11-22T10:00:00.123456789Z stdout F "
POOL = random.Random(e2e.SEED).randbytes(16 << 20).translate(
    bytes(e2e.ALNUM[b % len(e2e.ALNUM)] for b in range(256)))


def block(line_bytes, k, nlines):
    """nlines CRI lines of line_bytes bytes (newline included), their filler
    from a place in the pool that depends on k, so nearby blocks differ."""
    numbered = line_bytes - len(PREFIX) - 1 >= 32  # a 50-byte line has room for 9 bytes of content only
    fill = line_bytes - len(PREFIX) - 1 - (12 if numbered else 0)
    base = (k * 2654435761) % (len(POOL) - nlines * fill - 1)
    return b"".join(PREFIX + (b"%011d " % (k * nlines + i) if numbered else b"")
                    + POOL[base + i * fill: base + (i + 1) * fill] + b"\n" for i in range(nlines))


def make_tree(root, mb, files, streams, line_bytes):
    """files files under `streams` pods (files / streams container restarts
    each, all of container `app`): returns the number of lines."""
    per_file = max(1, mb * 1000 * 1000 // line_bytes // files)
    per_pod = files // streams
    os.makedirs(os.path.join(root, "containers"))
    nblock = max(1, min(per_file, (1 << 20) // line_bytes))
    k = 0
    for f in range(files):
        pod = f // per_pod
        d = os.path.join(root, "pods", f"bench_pod-{pod}_0000-{pod:05d}", "app")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{f % per_pod}.log")
        with open(path, "wb") as out:
            left = per_file
            while left:
                n = min(left, nblock)
                out.write(block(line_bytes, k, n))
                k += 1
                left -= n
        os.symlink(os.path.relpath(path, os.path.join(root, "containers")),
                   os.path.join(root, "containers", f"pod-{pod}_bench_app-{f:064d}.log"))
    return per_file * files


def run_once(root, port, total):
    for name in ("positions.yaml",):
        try:
            os.unlink(os.path.join(root, name))
        except FileNotFoundError:
            pass
    config = os.path.join(root, "loglet.yaml")
    with open(config, "w") as f:
        f.write(e2e.agent_config(root, port))
    before = e2e.stats(port)["entries"]
    t0 = time.time()
    agent = subprocess.Popen([e2e.LOGLET, "-config", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        w = e2e.wait_for_entries(agent, port, before + total)
        cpu = e2e.cpu_seconds(agent.pid)
        peak = max(w.peak_kib, e2e.peak_rss_kib(agent.pid))
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    got = w.entries - before
    prev_lines, prev_s = w.n_prev - before, w.t_prev - t0
    return dict(complete=w.complete, got=got, wall=w.t_end - t0, cpu=cpu, peak_mib=peak / 1024,
                lines_s=prev_lines / prev_s if prev_s > 0 and prev_lines > 0 else got / (w.t_end - t0))


def case(label, mb, files, streams, line_bytes, runs):
    root = tempfile.mkdtemp(prefix="loglet-scaling-", dir="/dev/shm")
    receiver = None
    try:
        g0 = time.time()
        total = make_tree(os.path.join(root, "log"), mb, files, streams, line_bytes)
        gb = total * line_bytes / 1e9
        receiver, port = e2e.start_receiver(root)
        results = []
        for _ in range(runs):
            load = e2e.loadavg()
            r = run_once(root, port, total)
            results.append(r)
            print(f"  {label}: {'' if r['complete'] else 'NOT DELIVERED (%d of %d) ' % (r['got'], total)}"
                  f"wall {r['wall']:.2f} s, {r['cpu'] / gb:.2f} CPU-s/GB, peak RSS {r['peak_mib']:.1f} MiB, "
                  f"{r['lines_s'] / 1e6:.3f} M lines/s ({load})", flush=True)
        med = {k: statistics.median(r[k] for r in results) for k in ("wall", "cpu", "peak_mib", "lines_s")}
        rng = {k: (min(r[k] for r in results), max(r[k] for r in results)) for k in ("cpu", "peak_mib", "lines_s")}
        print(f"{label}: {total} lines of {line_bytes} B = {gb * 1000:.0f} MB in {files} files, {streams} streams "
              f"(corpus made in {time.time() - g0:.1f} s); median of {runs}: {med['cpu'] / gb:.2f} CPU-s/GB "
              f"({rng['cpu'][0] / gb:.2f}–{rng['cpu'][1] / gb:.2f}), peak RSS {med['peak_mib']:.1f} MiB "
              f"({rng['peak_mib'][0]:.1f}–{rng['peak_mib'][1]:.1f}), {med['lines_s'] / 1e6:.3f} M lines/s, "
              f"{med['lines_s'] * line_bytes / 1e6:.0f} MB/s, wall {med['wall']:.2f} s", flush=True)
        return (label, files, streams, line_bytes, med["cpu"] / gb, med["peak_mib"], med["lines_s"],
                all(r["complete"] for r in results))
    finally:
        if receiver and receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        shutil.rmtree(root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256, help="corpus size of each case (MB of lines)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--axis", choices=("files", "streams", "lines"), action="append",
                    help="only these axes (repeatable); default all")
    args = ap.parse_args()
    axes = args.axis or ["files", "streams", "lines"]
    print(f"agent: {e2e.LOGLET}; {os.cpu_count()} cores; {e2e.loadavg()}; {args.mb} MB per case, "
          f"{args.runs} runs each, random filler")
    rows = []
    if "files" in axes:
        for files in (10, 100, 1000, 10000):
            rows.append(case(f"files={files}", args.mb, files, files, 200, args.runs))
    if "streams" in axes:
        for streams in (1, 100, 10000):
            rows.append(case(f"streams={streams}", args.mb, 10000, streams, 200, args.runs))
    if "lines" in axes:
        for line in (50, 200, 2048, 65536):
            rows.append(case(f"line={line}B", args.mb, 100, 100, line, args.runs))
    print(f"done; {e2e.loadavg()}")
    print("table: | case | files | streams | line | CPU-s per GB | peak RSS | lines/s |")
    print("table: |---|---|---|---|---|---|---|")
    for label, files, streams, line, cpu_gb, peak, lines_s, complete in rows:
        size = f"{line // 1024} KiB" if line >= 1024 else f"{line} B"
        print(f"table: | {label} | {files:,} | {streams:,} | {size} | {cpu_gb:.2f} | {peak:.1f} MiB | "
              f"{lines_s:,.0f}{'' if complete else ' (NOT DELIVERED)'} |")


if __name__ == "__main__":
    main()
