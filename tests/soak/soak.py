"""Soak under faults (issue 6). Runs the real agent, at its default settings
(only the paths, the positions file, port 0 and the Loki URL are configured),
against 200 pods written at a steady rate with kubelet-style rotation and
gzip, pods created and deleted continuously, a Loki receiver that fails 20 %
of pushes and goes down (connection refused) for 30 s twice, the agent
SIGKILLed and restarted twice and once stopped by SIGTERM and restarted.
Required: RSS and open descriptors flat (the series is printed), no sanitizer
report, exit 0 on every SIGTERM — and the verdict on the lines comes from the
end-to-end checker (tests/e2e/checker.py): its writer plays the runtime and
the kubelet and journals every line, and every line is checked by id against
what arrived at the receiver (content, timestamp, namespace/pod/container/
stream, per-stream order). Nothing may be lost — except a line that never
arrived and whose file the kubelet deleted while no agent ran
(E2ECase.gone_while_down's rule, README loss case 2; the agent must then have
said so) — nothing wrong-labelled, corrupted or unknown, and a duplicate only
where the checker justifies it (sent again by the run after a SIGKILL, within
its in-flight window, or across a receiver cut). Everything must have arrived
before the final SIGTERM. The checker's summary line and details are printed;
any problem exits 1. The checker must have checked every line the writer
wrote and every entry the receiver holds.

    /usr/bin/python3 tests/soak/soak.py                 # short form, 150 s (CI)
    /usr/bin/python3 tests/soak/soak.py --duration 3600 # the long form

LOGLET_BIN selects the binary (CI uses the ASan+UBSan build); its stderr is
searched for SANITIZER_MARKERS. Only 127.0.0.1 is used.

Schedule (D = --duration, the writing time; an outage lasts 30 s, or D/5 when
D is under 150 s), each step after the one before:
  0.10 D  Loki down; the first run must hold everything, rotations included;
  +30 s   Loki up, and 1 s later the agent SIGKILLed with (most of) the backlog
          unsent: the next run must resume from the saved positions, in files
          rotated meanwhile — and a copy is justified only within the checker's
          in-flight window before the kill;
  0.40 D  the agent SIGKILLed in steady state, once it has caught up;
  0.50 D  Loki down for 30 s; this run must come back by itself, at the
          default back-off (full jitter up to max_backoff, 5 min: its first
          retry may come minutes later — slow, not lost);
  0.80 D  once it has, and has caught up: SIGTERM (exit 0), and a new run —
          a clean stop saved its positions, so nothing it delivered may come
          again;
  D       the writing stops; everything must arrive before the final SIGTERM
          (waited for up to max(--drain-timeout, 5.5 min after Loki came back)).
Pod lifetimes respect what a node guarantees: a terminated pod's files stay
for `--delete-grace` seconds (the kubelet keeps them until garbage
collection), longer than an outage, and no kill comes while the agent may
still owe lines of a deleted file, so README loss case 3 cannot arise.
"""
import argparse
import collections
import itertools
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "e2e"))

import checker as ck  # noqa: E402

LOGLET_BIN = ck.LOGLET_BIN
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "SUMMARY: UndefinedBehavior")
MAX_BACKOFF = 300                # output.loki.max_backoff default
COUNTERS = ("loglet_lines_lost_total", "loglet_lines_dropped_total", "loglet_files_missed_total",
            "loglet_lines_malformed_total", "loglet_push_retries_total", "loglet_rotations_total")


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


def metric_sum(metrics, name):
    """A counter summed over its label sets (None if not exported)."""
    vals = [v for k, v in (metrics or {}).items() if k == name or k.startswith(name + "{")]
    return sum(vals) if vals else None


def is_asan(binary):
    """An AddressSanitizer build (its quarantine holds freed memory: RSS grows by design)."""
    try:
        with open(binary, "rb") as f:
            return b"__asan_" in f.read()
    except OSError:
        return False


def asan_quarantine_kib():
    """ASan keeps up to quarantine_size_mb (256 MiB by default) of freed memory."""
    for opt in os.environ.get("ASAN_OPTIONS", "").replace(",", ":").split(":"):
        k, _, v = opt.partition("=")
        if k.strip() == "quarantine_size_mb" and v.strip().lstrip("-").isdigit():
            return max(0, int(v)) * 1024
    return 256 * 1024


def writer_spec(args):
    """The node: `pods` pods of one container, `rate` lines/s over all of them, the
    kubelet rotating each at rotate_bytes (max 5 files, older ones gzipped), one pod
    terminated and one created every second, deleted delete_grace s after it stopped."""
    return dict(pods=args.pods, containers=["app"], namespaces=["soak-a", "soak-b", "soak-c"], pod_prefix="soak",
                rate=args.rate, rotate_bytes=args.rotate_bytes, max_files=5, compress=True,
                churn_every=1.0, delete_grace=args.delete_grace, deletes=True,
                p_stderr=0.2, p_partial=0.01, p_utf8=0.005, long_per_s=0.05, seed=args.seed)


def gone_while_down(case, truth):
    """E2ECase.gone_while_down (the same rule: a line whose file the kubelet deleted
    while no agent ran), with the deletion times indexed once: Truth.gone_at scans
    every event for every line, too slow for hundreds of thousands of lines."""
    windows = case.down_windows()
    inf = float("inf")
    gen_gone, pod_gone = {}, {}
    rotated = collections.defaultdict(list)
    for typ, cidx, arg, t in truth.events:
        if typ == "R":
            rotated[cidx].append(arg)
        elif typ == "X":
            base = arg[:-3] if arg.endswith(".gz") else arg
            if base in rotated[cidx]:
                key = (cidx, rotated[cidx].index(base))
                gen_gone[key] = min(gen_gone.get(key, inf), t)
        elif typ == "K":
            key = (cidx, len(rotated[cidx]))
            gen_gone[key] = min(gen_gone.get(key, inf), t)
        elif typ == "D":
            pod_gone[cidx] = min(pod_gone.get(cidx, inf), t)

    def gone_at(info):
        t = min(gen_gone.get((info.cidx, info.gen), inf), pod_gone.get(info.cidx, inf))
        return None if t == inf else t

    def exempt(info):
        t = gone_at(info)
        return t is not None and any(a <= t <= b for a, b in windows)
    return exempt, gone_at


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=150, help="seconds of writing (CI: 150; long form: 3600)")
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--rate", type=float, default=2000, help="lines per second, all pods together")
    ap.add_argument("--rotate-bytes", type=int, default=64 * 1024)
    ap.add_argument("--delete-grace", type=float, default=40)
    ap.add_argument("--drain-timeout", type=float, default=120,
                    help="after the writing, how long everything may take to arrive before the SIGTERM")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    D = args.duration
    if D < 20:
        ap.error("--duration must be at least 20 s")
    outage_len = min(30.0, D / 5)
    if args.delete_grace <= outage_len + 5:
        ap.error("--delete-grace must exceed the outage (30 s) by more than 5 s")

    case = ck.E2ECase()          # not run by unittest: its pieces (node, receiver, agents) only
    case.setUp()
    ok = False
    try:
        ok = run(case, args, D, outage_len)
    finally:
        if not ok:
            os.environ["LOGLET_E2E_KEEP"] = "1"
        case.tearDown()
    return 0 if ok else 1


def run(case, args, D, outage_len):
    started = time.time()
    asan = is_asan(LOGLET_BIN)
    receiver = case.use_loki(fail_ratio=0.2, seed=args.seed)
    cfg = case.config()          # default settings: paths, positions file, port 0, the Loki URL
    agent = case.start_agent(cfg)
    writers = case.start_writers(writer_spec(args))
    t0 = time.time()
    # In order, each step after the one before (see the module docstring).
    L = outage_len
    plan = [(0.10 * D, "down", 0, None), (0.10 * D + L, "up", 0, None),
            (0.10 * D + L + 1, "kill", "with the outage's backlog", None),
            (0.40 * D, "kill", "in steady state", "caught up"),
            (0.50 * D, "down", 1, None), (0.50 * D + L, "up", 1, None),
            (0.80 * D, "term", "in steady state", "recovered")]
    print(f"soak: {args.pods} pods, {args.rate:.0f} lines/s, rotate at {args.rotate_bytes} B (gzip, 5 files), "
          f"a pod ends and one starts every second (deleted {args.delete_grace:.0f} s later), 20 % of pushes "
          f"failing; {D:.0f} s of writing; binary {LOGLET_BIN}{' (ASan)' if asan else ''}; plan: "
          + ", ".join(f"{t:.0f}s {w}" + (f" {i}" if w in ("kill", "term") else "") for t, w, i, _ in plan),
          flush=True)

    failures = []
    series = []                  # (t, run, rss KiB, fds, lines written, entries received)
    run_metrics = {}             # run -> its last /metrics sample
    outage_times = []            # wall-clock [down, up]
    stop_times = []
    term_rcs = []
    died = None
    gate = None                  # (since, lines written then): a stop waiting for the agent
    next_sample = 0.0
    sample_every = max(5.0, D / 36)

    def sample(now, written=None):
        rss, fds = proc_stats(agent.proc.pid)
        if written is None:
            written = writers.stats()["lines"]
        series.append((round(now), agent.epoch, rss, fds, written, receiver.entry_count()))
        m = agent.metrics()
        if m is not None:
            run_metrics[agent.epoch] = m

    def recovered():
        """An accepted push since Loki last came back (the agent's own retry)."""
        up = outage_times[-1][1]
        return any(r["time"] > up and r.get("status") == 204 for r in receiver.requests()[-200:])

    while True:
        now = time.time() - t0
        if now >= D and not plan:
            break
        if not agent.alive():
            died = f"agent run {agent.epoch} exited by itself (status {agent.proc.poll()}) at {now:.1f}s"
            break
        if plan and plan[0][0] <= now:
            _, what, why, wait_for = plan[0]
            if what == "down":
                plan.pop(0)
                case.cut_receiver(True)
                outage_times.append([time.time(), None])
                print(f"[{now:6.1f}s] receiver down (connection refused)", flush=True)
            elif what == "up":
                plan.pop(0)
                case.cut_receiver(False)
                outage_times[why][1] = time.time()
                print(f"[{now:6.1f}s] receiver up", flush=True)
            else:
                # No stop while a deleted file may still hold unsent lines (README loss
                # case 3): wait until what was written when the step came due arrived. A
                # run that must first recover from an outage at default back-off may take
                # up to max_backoff (5 min) for its next retry.
                if wait_for and gate is None:
                    gate = (time.time(), writers.stats()["lines"])
                waited = time.time() - gate[0] if gate else 0.0
                if wait_for == "recovered":
                    limit = outage_times[-1][1] + MAX_BACKOFF + 30 - gate[0] if gate else 0
                else:
                    limit = 60
                ready = gate is None or (receiver.entry_count() >= gate[1]
                                         and (wait_for != "recovered" or recovered()))
                if ready or waited > limit:
                    plan.pop(0)
                    if not ready:
                        failures.append(f"run {agent.epoch} had not delivered the {gate[1]} lines written "
                                        f"{waited:.0f}s before ({wait_for} awaited, Loki up): stopped anyway")
                    gate = None
                    m = agent.metrics()
                    if m is not None:
                        run_metrics[agent.epoch] = m
                    if what == "kill":
                        agent.kill9()
                    else:
                        rc = agent.term(timeout=60)
                        term_rcs.append((agent.epoch, rc))
                        if rc != 0:
                            failures.append(f"agent run {agent.epoch} exited {rc} on SIGTERM")
                    stop_times.append(agent.end_time)
                    agent = case.start_agent(cfg)
                    print(f"[{now:6.1f}s] agent run {agent.epoch - 1} "
                          f"{'SIGKILLed' if what == 'kill' else 'stopped by SIGTERM (exit %s)' % rc} {why}"
                          + (f" ({waited:.1f}s wait)" if waited else "")
                          + f", run {agent.epoch} ready {time.time() - stop_times[-1]:.1f}s later", flush=True)
        if now >= next_sample:
            sample(now)
            next_sample += sample_every
        time.sleep(0.1)

    stats = writers.stop()
    wrote_for = time.time() - t0
    rss_after_writing = proc_stats(os.getpid())[0]
    truth = ck.Truth.load(writers.journals)
    need = truth.units_count()
    excusable, gone_at = gone_while_down(case, truth)

    def entries():
        return ck.iter_receiver_entries(receiver, [a.start_time for a in case.agents])

    def check(**kw):
        """Checker.check; a line is exempt only if it was lost and the rule excuses it."""
        t = time.time()
        rep = ck.Checker(truth).check(entries(), name="soak", **kw)
        excused = {k for k in rep.lost_keys if excusable(truth.line(*k))}
        if excused:
            rep = ck.Checker(truth).check(entries(), name="soak", exempt=lambda i: (i.wid, i.seq) in excused, **kw)
        check_times.append(time.time() - t)
        return rep
    check_times = []
    # The indexed rule must say what the checker's own Truth.gone_at says (spot check).
    deleted = {c for typ, c, _, _ in truth.events if typ in ("D", "X", "K")}
    step = max(1, stats["lines"] // 200)
    probe = [k for i, k in enumerate(truth.keys()) if i % step == 0]
    probe += list(itertools.islice((k for k in truth.keys() if truth.line(*k).cidx in deleted), 0, None, 97))[:200]
    bad = [k for k in probe if gone_at(truth.line(*k)) != truth.gone_at(truth.line(*k))]
    if bad or not probe:
        failures.append(f"soak bug: its deletion index disagrees with Truth.gone_at for {len(bad)} lines")
    drained = False
    if died is None and agent.alive():
        sample(time.time() - t0, stats["lines"])
        # Everything must arrive before the SIGTERM: the checker is asked (not a count,
        # which duplicates would fool) once enough entries are in.
        # At default settings a retry may come minutes after Loki is back (full
        # jitter up to max_backoff, 5 min): slow, not lost. The last outage's run is
        # given that long, and --drain-timeout in any case.
        last_up = max((up for _, up in outage_times if up), default=t0)
        deadline = max(time.time() + args.drain_timeout, last_up + MAX_BACKOFF + 30)
        checked_at = -1
        while time.time() < deadline and agent.alive():
            n = receiver.entry_count()
            if n >= need and n != checked_at:
                checked_at = n
                if check().lost == 0:
                    drained = True
                    break
            time.sleep(2)
        drain_s = time.time() - t0 - wrote_for
        sample(time.time() - t0, stats["lines"])
        print(f"[{time.time() - t0:6.1f}s] writing stopped at {wrote_for:.0f}s; "
              + (f"everything arrived {drain_s:.1f}s later" if drained else
                 f"NOT everything arrived {drain_s:.0f}s later"), flush=True)
        if not drained:
            failures.append(f"not everything arrived within {drain_s:.0f}s after the writing stopped "
                            f"({receiver.entry_count()} entries for {need} expected)")
        if not agent.alive():
            died = f"agent run {agent.epoch} exited by itself (status {agent.proc.poll()}) while draining"
    if died:
        failures.append(died)
    if agent.alive():
        rc = agent.term(timeout=60)
        term_rcs.append((agent.epoch, rc))
    else:
        rc = agent.proc.poll()

    # -- the verdict on every line --
    report = check(faults=case.cuts, runs=case.runs(), order=True)
    rs = receiver.stats()
    per_run = collections.Counter(e.epoch for e in entries())
    n_entries = sum(per_run.values())
    requests = receiver.requests()
    report.notes.append(f"writer: {dict(stats)}")
    report.notes.append(f"receiver: {rs['requests']} pushes, by status {rs['by_status']}, {rs['entries']} entries, "
                        f"{rs['invalid']} invalid, {rs['utf8_errors']} with invalid UTF-8")
    report.notes.append("checker passes took " + ", ".join(f"{x:.1f}s" for x in check_times)
                        + f"; this process: RSS {proc_stats(os.getpid())[0] // 1024} MiB, "
                        f"{rss_after_writing // 1024} MiB when the writing stopped")
    report.notes.append("entries per agent run: " + ", ".join(f"run {k}: {per_run[k]}" for k in sorted(per_run)))
    for epoch in sorted(run_metrics):
        m = run_metrics[epoch]
        report.notes.append(f"run {epoch} counters (last sample): "
                            + ", ".join(f"{n[7:]}={metric_sum(m, n):.0f}" for n in COUNTERS
                                        if metric_sum(m, n) is not None))

    # -- did the checker see the soak's lines, and did the soak happen? --
    total = truth.count()
    if total != stats["lines"]:
        failures.append(f"the journals hold {total} lines, the writer says it wrote {stats['lines']}")
    if report.written + report.exempt != total:
        failures.append(f"the checker checked {report.written} + {report.exempt} exempt lines of {total} written")
    if report.entries != n_entries or n_entries != rs["entries"]:
        failures.append(f"the checker read {report.entries} entries, the receiver holds {rs['entries']}")
    if report.written and report.delivered != report.written:
        failures.append(f"{report.delivered} of {report.written} lines delivered")
    if report.written < 0.5 * args.rate * D:
        failures.append(f"only {report.written} lines written in {D:.0f}s at {args.rate:.0f}/s")
    if len(case.agents) != 4 or not all(a.killed for a in case.agents[:2]) or len(term_rcs) != 2:
        failures.append(f"scenario: {len(case.agents)} agent runs, not 4 (two SIGKILLed, two stopped by SIGTERM)")
    for k in range(len(case.agents)):
        if per_run[k] == 0:
            failures.append(f"agent run {k} delivered nothing")
    for i, (down, up) in enumerate(outage_times):
        during = [r for r in requests if down + 0.5 < r["time"] < (up or down) - 0.5]
        if up is None or during:
            failures.append(f"outage {i}: {len(during)} pushes arrived while the receiver was down")
        elif not any(r["time"] > up and r.get("status") == 204 for r in requests):
            failures.append(f"outage {i}: no push accepted after it")
    if len(outage_times) != 2:
        failures.append(f"scenario: {len(outage_times)} outages, not 2")
    else:
        up = outage_times[1][1]
        back = sorted(r["time"] for r in requests if r["time"] > up and r.get("status") == 204)
        report.notes.append("after the last outage the agent's first accepted push came "
                            + (f"{back[0] - up:.1f}s after Loki was back (its own back-off)" if back else "never"))
    if rs["failed_injected"] == 0:
        failures.append("scenario: no push failed")
    # A gzip comes with a container's second rotation: ~90 s of writing at the defaults.
    if (stats["rotations"] < 0.25 * stats["bytes"] / args.rotate_bytes or stats["pods_deleted"] == 0
            or (stats["gzips"] == 0 and D >= 120)):
        failures.append(f"scenario: only {stats['rotations']} rotations, {stats['gzips']} gzips, "
                        f"{stats['pods_deleted']} pods deleted")
    if rs["invalid"]:
        failures.append(f"{rs['invalid']} pushes the receiver (as Loki) rejected as invalid")
    for epoch, m in sorted(run_metrics.items()):
        for n in ("loglet_lines_lost_total", "loglet_lines_dropped_total", "loglet_lines_malformed_total"):
            if metric_sum(m, n):
                failures.append(f"run {epoch}: {n} = {metric_sum(m, n):.0f}")
    if report.exempt:
        said = [l for a in case.agents for l in a.stderr_lines if "deleted while loglet was down" in l]
        report.notes.append(f"{report.exempt} lines exempt: their files were deleted while no agent ran "
                            f"(said {len(said)} times)")
        if not said:
            failures.append(f"{report.exempt} lines lost to files deleted while no agent ran, and no run said so")
    if report.lost:
        windows = case.down_windows()
        report.notes.append(f"agent down windows: {[(round(a - t0, 1), round(b - t0, 1)) for a, b in windows]}")

    stale = ck.spool_leftovers(os.path.join(os.path.dirname(case.positions), "spool"), case.root)
    if stale:
        failures.append(f"{len(stale)} spool links to files gone from the log tree remain after everything was "
                        f"delivered (disk never freed): {stale[:5]}")

    # -- the process: exit status, sanitizers, RSS and descriptors --
    if rc != 0:
        failures.append(f"agent run {agent.epoch} exited {rc} on SIGTERM")
    reports = []
    for a in case.agents:
        text = a.stderr_text()
        with open(os.path.join(case.workdir, f"agent-{a.epoch}.stderr"), "w") as f:
            f.write(text + "\n")
        reports += [f"run {a.epoch}: {m}" for m in SANITIZER_MARKERS if m in text]
        noisy = [l for l in a.stderr_lines if "level=error" in l or "level=warn" in l]
        if noisy:
            report.notes.append(f"agent run {a.epoch}: {len(noisy)} warnings/errors, e.g. " + " | ".join(noisy[:3]))
    if reports:
        failures.append(f"sanitizer reported: {reports}")
    print("\n  t(s) run   RSS(KiB)  fds   written  received")
    for t, epoch, r, fd, w, g in series:
        print(f"{t:6d} {epoch:3d} {r:10d} {fd:5d} {w:9d} {g:9d}")
    rss_values = [r for _, _, r, _, _, _ in series if r]
    half = len(rss_values) // 2
    # Flat: the second half's peak within 1.5 x the first half's + 8 MiB. An ASan
    # build's quarantine keeps freed memory (RSS grows ~1 MiB/s here until it is
    # full): its size is allowed on top, leaks being LeakSanitizer's to report at
    # each SIGTERM exit.
    slack = 8 * 1024 + (asan_quarantine_kib() if asan else 0)
    if half >= 2 and max(rss_values[half:]) > 1.5 * max(rss_values[:half]) + slack:
        failures.append(f"RSS grew over the run: {max(rss_values[:half])} KiB in the first half, "
                        f"{max(rss_values[half:])} KiB in the second (allowed: 1.5 x + {slack} KiB)")
    max_fds = max((fd for _, _, _, fd, _, _ in series), default=0)
    if max_fds > 3 * (args.pods + args.delete_grace) + 50:
        failures.append(f"open descriptors reached {max_fds}")
    if not series:
        failures.append("no RSS / descriptor sample was taken")

    print()
    print(report.details())
    problems = report.problems(allow=("duplicated",)) + failures
    print(f"\nsoak: {report.written} lines written ({need} entries expected), {n_entries} entries received, "
          f"{report.lost} lost, {report.counts['duplicated']} duplicated (+{report.dup_copies} copies, "
          f"{report.counts['unjustified_duplicates']} unjustified), {report.counts['wrong_labels']} wrong-labelled, "
          f"{report.counts['corrupted']} corrupted, {report.counts['unknown']} unknown, exempt {report.exempt}, "
          f"exit {rc}, sanitizer reports {reports or 'none'}, max RSS {max(rss_values, default=0)} KiB, "
          f"max fds {max_fds}, {time.time() - started:.0f}s in all")
    if problems:
        print("SOAK FAILED: " + "; ".join(problems))
        print("kept: " + case.workdir + " (journals, agent-N.stderr, positions)")
        return False
    print("soak: 1 passed, 0 failed")
    return True


if __name__ == "__main__":
    sys.exit(main())
