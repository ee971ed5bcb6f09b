"""E2E scenarios C and D — Loki failing and away while the node keeps going.

C: Loki answers 30 % of pushes with 500 and is down (connection refused) for
   10 s once; the agent is SIGKILLed once, in the middle of that outage,
   after pods were deleted whose lines it had not delivered (their files
   survive the kill only through the agent's spool); the kubelet rotates
   every 512 KiB and keeps 5 files; a pod is deleted every 4 s and a new one
   created. Nothing lost, nothing mislabelled or corrupted.
D: Loki down for 60 s while files rotate past the kubelet's retention and
   pods come and go: afterwards everything arrives, and while Loki was down
   the agent's loglet_held_files / loglet_held_bytes gauges showed what it
   holds (non-zero), never above collection.max_held_bytes (1 GiB default),
   back to 0 once drained.

Pods are deleted 1 s after their containers stopped. The agent is restarted
at once after its kill: a file created and deleted while no agent runs is the
README's loss case 2, not asked for here.

    LOGLET_BIN=... LOGLET_SOURCE_DIR=... /usr/bin/python3 tests/integration/test_e2e_outage.py
    LOGLET_E2E_SCALE=0.5 shortens the phases."""
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.environ.get("LOGLET_SOURCE_DIR", os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))), "tests", "e2e"))

import checker as ck  # noqa: E402

OUTAGE_WRITER = dict(pods=8, containers=["app", "sidecar"], rate=8000, rotate_bytes=512 * 1024, max_files=5,
                     churn_every=4.0, delete_grace=1.0, deletes=True, restart_every=10.0, p_stderr=0.2,
                     p_partial=0.01, p_utf8=0.005, long_per_s=0.2, seed=5)


def run_outage(case, collection_extra="", name="C"):
    """Scenario C, for this file and for the poll-watcher variant (scenario E)."""
    case.use_loki(fail_ratio=0.3, fail_statuses=[500], seed=5)
    cfg = case.config(collection_extra)
    agent = case.start_agent(cfg)
    watcher_failures = ck.poll_watcher_failures(agent, collection_extra)
    t0 = time.time()
    writers = case.start_writers(OUTAGE_WRITER)
    # Loki goes away at 8 s, so lines delivered before it were saved and must not
    # come again; pods are deleted meanwhile with lines the agent has not
    # delivered, and the agent is killed 6 s into the outage while it holds them.
    ck.sleep_until(t0 + ck.scaled(8, 3))
    case.cut_receiver(True)
    before_kill = writers.stats()
    ck.sleep_until(t0 + ck.scaled(14, 5))
    deleted_before_kill = writers.stats()["pods_deleted"] - before_kill["pods_deleted"]
    agent.kill9()
    agent = case.start_agent(cfg)
    ck.sleep_until(t0 + ck.scaled(18, 6))
    case.cut_receiver(False)
    ck.sleep_until(t0 + ck.scaled(42, 15))
    stats = writers.stop()
    truth = ck.Truth.load(writers.journals)
    case.wait_drained(truth, timeout=150, settle=30)
    counters = agent.metrics() or {}
    rc = agent.term()
    report = case.checker_check(truth, name=name)
    rs = case.receiver.stats()
    report.notes.append(f"writer: {dict(stats)}")
    report.notes.append(f"receiver: {rs['requests']} pushes, by status {rs['by_status']}, "
                        f"{rs['dropped_down']} refused while down")
    extra = list(watcher_failures)
    if stats["pods_deleted"] < 4 or stats["rotations"] < 16:
        extra.append(f"scenario: only {stats['pods_deleted']} pods deleted, {stats['rotations']} rotations")
    if rs["failed_injected"] == 0:
        extra.append("scenario: no push failed")
    # The point of the kill: files deleted while held, read after it from the spool.
    report.notes.append(f"pods deleted during the outage before the kill: {deleted_before_kill}; after the "
                        f"restart: {counters.get('loglet_files_recovered_total', 0):.0f} files read from the spool, "
                        f"{counters.get('loglet_files_missed_total', 0):.0f} missed")
    if deleted_before_kill == 0:
        extra.append("scenario: no pod was deleted between the outage and the kill")
    elif not counters.get("loglet_files_recovered_total"):
        extra.append("scenario: the restarted agent read no file from the spool (did the kill land while deleted "
                     "files were held?)")
    if rc != 0:
        extra.append(f"agent exited {rc} on SIGTERM")
    stale = ck.spool_leftovers(os.path.join(os.path.dirname(case.positions), "spool"), case.root)
    if stale:
        extra.append(f"{len(stale)} spool links to files gone from the tree remain after everything was "
                     f"delivered: {stale[:5]}")
    case.verdict(report, allow=("duplicated",), extra_failures=extra)


class MetricsSampler(threading.Thread):
    """Scrapes the agent's /metrics every second into (t, {name: value})."""

    def __init__(self, agent):
        super().__init__(daemon=True)
        self.agent, self.samples, self.stop_ev = agent, [], threading.Event()

    def run(self):
        while not self.stop_ev.wait(1.0):
            m = self.agent.metrics()
            if m is not None:
                self.samples.append((time.time(), m))

    def stop(self):
        self.stop_ev.set()
        self.join(5)
        return self.samples


class Outage(ck.E2ECase):
    def test_C_failing_pushes_outage_kill_rotation_and_pod_churn(self):
        run_outage(self, name="C outage")

    def test_D_loki_down_60s_everything_drains_and_held_files_are_reported(self):
        self.use_loki()
        agent = self.start_agent()
        writers = self.start_writers(dict(pods=6, containers=["app", "sidecar"], rate=3000, hot_pods=1, hot_factor=8.0,
                                          rotate_bytes=512 * 1024, max_files=5, churn_every=4.0, delete_grace=1.0,
                                          restart_every=15.0, p_stderr=0.2, p_partial=0.01, p_utf8=0.005,
                                          long_per_s=0.1, seed=9))
        time.sleep(ck.scaled(8, 3))
        sampler = MetricsSampler(agent)
        sampler.start()
        before = writers.stats()
        down_at = time.time()
        self.cut_receiver(True)
        time.sleep(ck.scaled(60, 10))
        during = writers.stats()
        self.cut_receiver(False)
        up_at = time.time()
        time.sleep(ck.scaled(5, 2))
        stats = writers.stop()
        truth = ck.Truth.load(writers.journals)
        # Default back-off is full jitter up to max_backoff (5m): after 60 s of refused
        # pushes the next retry may be a minute or two away. That is slow, not lost.
        self.wait_drained(truth, timeout=330, settle=150)
        drained_at = time.time()
        # A rotated file may wait a little for late writes before it is closed: give
        # the gauges up to 15 s to come back to 0 (no wait if they are not exported).
        deadline = drained_at + 15
        while time.time() < deadline:
            m = agent.metrics() or {}
            if m.get("loglet_held_files", 0) == 0 and m.get("loglet_held_bytes", 0) == 0:
                break
            time.sleep(1)
        time.sleep(6)
        samples = sampler.stop()
        rc = agent.term()
        report = self.checker_check(truth, name="D 60s outage")
        deleted = during["deleted_rotated"] - before["deleted_rotated"]
        accepted = sorted(r["time"] for r in self.receiver.requests() if r.get("status") == 204 and r["time"] > up_at)
        report.notes.append("first push accepted after Loki came back: "
                            + (f"{accepted[0] - up_at:.1f}s later" if accepted else "none"))
        report.notes.append(f"writer: {dict(stats)}; while Loki was down: "
                            f"{during['rotations'] - before['rotations']} rotations, {deleted} rotated files deleted "
                            f"by the kubelet, {during['pods_deleted'] - before['pods_deleted']} pods deleted")
        extra = []
        if deleted == 0:
            extra.append("scenario: the kubelet deleted no rotated file while Loki was down")
        names = ("loglet_held_files", "loglet_held_bytes")
        present = [n for n in names if any(n in m for _, m in samples)]
        if not samples:
            extra.append("no /metrics sample could be taken")
        for n in names:
            if n not in present:
                extra.append(f"metric {n} is not exported")
                continue
            down = [m[n] for t, m in samples if down_at + 5 <= t <= up_at and n in m]
            report.notes.append(f"{n} while Loki was down: max {max(down, default=0):.0f}, "
                                f"series {[int(x) for x in down[::5]]}")
            if not down or max(down) <= 0:
                extra.append(f"{n} stayed 0 while Loki was down")
            if n == "loglet_held_bytes" and max((m[n] for _, m in samples if n in m), default=0) > ck.MAX_HELD_BYTES:
                extra.append(f"{n} exceeded collection.max_held_bytes (1 GiB)")
            after = [m[n] for t, m in samples if t >= drained_at and n in m]
            if after and after[-1] != 0:
                extra.append(f"{n} is {after[-1]:.0f}, not 0, after everything was delivered")
        if rc != 0:
            extra.append(f"agent exited {rc} on SIGTERM")
        stale = ck.spool_leftovers(os.path.join(os.path.dirname(self.positions), "spool"), self.root)
        if stale:
            extra.append(f"{len(stale)} spool links to files gone from the tree remain after everything was "
                         f"delivered: {stale[:5]}")
        self.verdict(report, allow=("duplicated",), extra_failures=extra)


if __name__ == "__main__":
    unittest.main(verbosity=2)
