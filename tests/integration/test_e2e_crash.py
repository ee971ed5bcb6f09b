"""E2E scenario B — a crash loop under load: 20 000 lines/s over 16 containers,
the kubelet rotating every 1 MiB with gzip, container restarts; the agent is
SIGKILLed 1 s, 3 s and 2 s after successive starts, then stays down 10 s while
files rotate and gzip, then runs to the end. Default settings. Nothing may be
lost, mislabelled or corrupted; duplicates are allowed (and counted) only as
lines re-sent by a later run (in flight at a kill: delivered at most
positions_sync_period + slack before it). A container restarted while the agent
is down writes a new file the agent has no position for; it is not the agent's
first start, so it must be read from its beginning. Two outputs: the Loki
receiver, and the agent's stdout (its default text format).

    LOGLET_BIN=... LOGLET_SOURCE_DIR=... /usr/bin/python3 tests/integration/test_e2e_crash.py
    LOGLET_E2E_SCALE=0.5 shortens the final run and the downtime."""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.environ.get("LOGLET_SOURCE_DIR", os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))), "tests", "e2e"))

import checker as ck  # noqa: E402

CRASH_WRITER = dict(pods=8, containers=["app", "sidecar"], rate=20000, rotate_bytes=1 << 20, max_files=5,
                    p_stderr=0.2, p_partial=0.01, p_utf8=0.005, long_per_s=0.5, restart_every=6.0, seed=3)


def run_crash_loop(case, output, collection_extra="", name="B"):
    """The crash loop, for this file and for the poll-watcher variant (scenario E)."""
    if output == "loki":
        case.use_loki()
    else:
        case.use_stdout("text")
    cfg = case.config(collection_extra)
    agent = case.start_agent(cfg)
    watcher_failures = ck.poll_watcher_failures(agent, collection_extra)
    writers = case.start_writers(CRASH_WRITER)
    for life in (1, 3, 2):
        ck.sleep_until(agent.start_time + life)
        agent.kill9()
        if life != 2:
            agent = case.start_agent(cfg)
    down_from = time.time()
    before = writers.stats()
    time.sleep(ck.scaled(10, 3))
    during = writers.stats()
    up_at = time.time()
    agent = case.start_agent(cfg)
    time.sleep(ck.scaled(8, 3))
    stats = writers.stop()
    truth = ck.Truth.load(writers.journals)
    exempt = case.gone_while_down(truth)
    case.wait_drained(truth, timeout=120, settle=20, exempt=exempt)
    final_metrics = agent.metrics() or {}
    rc = agent.term()
    report = case.checker_check(truth, name=name, exempt=exempt)
    rotated = during["rotations"] - before["rotations"]
    gzipped = during["gzips"] - before["gzips"]
    report.notes.append(f"writer: {dict(stats)}; while the agent was down "
                        f"({time.time() - down_from:.0f}s ago): {rotated} rotations, {gzipped} gzips")
    report.notes.append(f"rate {stats['lines'] / max(1e-9, truth.batches[-1][2] - truth.t0):.0f} lines/s")
    born = [str(c) for c in truth.containers.values() if down_from < c.t < up_at]
    report.notes.append(f"containers started while the agent was down (a restart makes a new log file "
                        f"and link; no saved position, yet not the agent's first start): {born}")
    extra = list(watcher_failures)
    if rotated < 8 or gzipped < 4:
        extra.append(f"scenario: only {rotated} rotations / {gzipped} gzips while the agent was down")
    if rc != 0:
        extra.append(f"agent exited {rc} on SIGTERM")
    if report.exempt:
        # Exempt lines are a loss the agent cannot undo, but must say and count.
        said = [l for a in case.agents for l in a.stderr_lines if "deleted while loglet was down" in l]
        missed = final_metrics.get("loglet_files_missed_total", 0)
        report.notes.append(f"{report.exempt} lines exempt: their files were deleted while no agent ran "
                            f"(said {len(said)} times; loglet_files_missed_total of the last run: {missed})")
        if not said:
            extra.append(f"{report.exempt} lines lost to files deleted while the agent was down, "
                         "and no run said so")
    case.verdict(report, allow=("duplicated",), extra_failures=extra)


class CrashLoop(ck.E2ECase):
    def test_crash_loop_to_loki(self):
        run_crash_loop(self, "loki", name="B crash loop, Loki")

    def test_crash_loop_to_stdout(self):
        run_crash_loop(self, "stdout", name="B crash loop, stdout")


if __name__ == "__main__":
    unittest.main(verbosity=2)
