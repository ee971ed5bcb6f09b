"""E2E scenario F — inotify overflow while the agent is paused. As root, the
agent's inotify instance is created with fs.inotify.max_queued_events = 64
(the limit is taken when an instance is created, so the machine's value is
restored as soon as the agent is up — and in a finally). Loki goes down, the
node writes fast until the agent's buffer is full and it stops reading, then,
while it is paused, every container is rotated twice, pods are created and
containers restarted, amid bursts of thousands of create/unlink events (names
no glob matches) in every watched directory, so the queue overflows even for
an agent that keeps reading events while its output is blocked. Loki comes back;
the node keeps writing a little, with no more rotations. Nothing may be lost.

    sudo LOGLET_BIN=... LOGLET_SOURCE_DIR=... /usr/bin/python3 tests/integration/test_e2e_inotify.py"""
import glob
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.environ.get("LOGLET_SOURCE_DIR", os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))), "tests", "e2e"))

import checker as ck  # noqa: E402

QUEUE_LIMIT = "/proc/sys/fs/inotify/max_queued_events"


def wait_paused(agent, timeout):
    """True once loglet_lines_read_total stood still for 1.5 s; None if it is not exported."""
    deadline = time.time() + timeout
    last, since = None, None
    while time.time() < deadline:
        m = agent.metrics() or {}
        v = m.get("loglet_lines_read_total")
        if v is None:
            return None
        if v != last:
            last, since = v, time.time()
        elif time.time() - since >= 1.5:
            return True
        time.sleep(0.3)
    return False


def event_burst(dirs, n):
    """n create+unlink pairs of a name no glob matches, round-robin over dirs: far more
    events than a 64-event queue holds, faster than any reader drains them."""
    for i in range(n):
        path = os.path.join(dirs[i % len(dirs)], f".e2e-burst-{i}")
        try:
            open(path, "w").close()
            os.unlink(path)
        except OSError:          # a directory removed meanwhile
            pass


class InotifyOverflow(ck.E2ECase):
    def test_F_overflow_while_paused_then_recovery_loses_nothing(self):
        if os.geteuid() != 0:
            self.skipTest("needs root: it lowers /proc/sys/fs/inotify/max_queued_events for the agent")
        self.use_loki()
        with open(QUEUE_LIMIT) as f:
            old = f.read().strip()
        try:
            with open(QUEUE_LIMIT, "w") as f:
                f.write("64\n")
            agent = self.start_agent()
        finally:
            with open(QUEUE_LIMIT, "w") as f:
                f.write(old + "\n")
        writers = self.start_writers(dict(pods=10, containers=["app", "sidecar"], rate=2000, filler=[200, 400],
                                          rotate=False, p_stderr=0.2, p_partial=0.01, p_utf8=0.005, seed=13))
        time.sleep(ck.scaled(3, 2))
        self.cut_receiver(True)
        writers.send(cmd="set", rate=20000)
        paused = wait_paused(agent, timeout=25)
        writers.send(cmd="set", rate=500)
        before = writers.stats()
        watched = [os.path.join(self.root, "containers")] + [
            os.path.join(p, c) for p in glob.glob(os.path.join(self.root, "pods", "*")) for c in os.listdir(p)]
        for _ in range(2):
            event_burst(watched, 4000)
            writers.send(cmd="rotate_all")
            writers.send(cmd="create_pods", n=5)
            writers.send(cmd="restart", n=3)
            time.sleep(0.3)
            event_burst(watched, 4000)
            time.sleep(1.2)
        time.sleep(2)
        during = writers.stats()
        self.cut_receiver(False)
        up_at = time.time()
        time.sleep(ck.scaled(8, 4))
        stats = writers.stop()
        truth = ck.Truth.load(writers.journals)
        self.wait_drained(truth, timeout=150, settle=45)   # back-off after ~15 s refused may be ~30 s
        rc = agent.term()
        report = self.checker_check(truth, name="F inotify overflow")
        accepted = sorted(r["time"] for r in self.receiver.requests() if r.get("status") == 204 and r["time"] > up_at)
        report.notes.append("first push accepted after Loki came back: "
                            + (f"{accepted[0] - up_at:.1f}s later" if accepted else "none"))
        overflowed = "overflow" in agent.stderr_text().lower()
        report.notes.append(f"writer: {dict(stats)}; while paused: {during['rotations'] - before['rotations']} "
                            f"rotations, {during['pods_created'] - before['pods_created']} pods created, "
                            f"{during['restarts'] - before['restarts']} restarts")
        report.notes.append(f"agent paused: {paused}; agent logged an inotify overflow: {overflowed}")
        extra = []
        if paused is False:
            extra.append("scenario: the agent never stopped reading while Loki was down")
        if during["rotations"] - before["rotations"] < 30:
            extra.append("scenario: too few rotations while the agent was paused")
        if rc != 0:
            extra.append(f"agent exited {rc} on SIGTERM")
        self.verdict(report, allow=("duplicated",), extra_failures=extra)


if __name__ == "__main__":
    unittest.main(verbosity=2)
