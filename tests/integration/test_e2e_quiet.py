"""E2E scenario A — a quiet node: 50 pods x 2 containers, each writing one line
every 0.2-2 s (random) for 60 s, at default agent settings, to the Loki
receiver. Every line must arrive once, under the labels of the pod that wrote
it, within 10 s of being written. (Quiet matters: the agent's ring empties between lines, which is what
catches state cached across chunks.)

    LOGLET_BIN=... LOGLET_SOURCE_DIR=... /usr/bin/python3 tests/integration/test_e2e_quiet.py
    LOGLET_E2E_SCALE=0.25 shortens it for a local run."""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.environ.get("LOGLET_SOURCE_DIR", os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))), "tests", "e2e"))

import checker as ck  # noqa: E402


class QuietNode(ck.E2ECase):
    def test_quiet_node_every_line_under_its_own_labels(self):
        self.use_loki()
        agent = self.start_agent()          # before any pod exists: nothing is skipped by read_from: end
        writers = self.start_writers(dict(mode="quiet", pods=50, containers=["app", "sidecar"],
                                          quiet_interval=[0.2, 2.0], p_stderr=0.25, p_partial=0.03,
                                          p_utf8=0.03, long_per_s=0.05, seed=11))
        time.sleep(ck.scaled(60))
        stats = writers.stop()
        truth = ck.Truth.load(writers.journals)
        self.wait_drained(truth, timeout=60, settle=15)
        rc = agent.term()
        report = self.checker_check(truth, name="A quiet node")
        report.notes.append(f"writer: {dict(stats)}")
        containers = {truth.line(*k).cidx for k in truth.keys()}
        extra = []
        if len(containers) < 100:
            extra.append(f"scenario: only {len(containers)} containers wrote")
        if report.latency and report.latency[2] > 10:
            extra.append("a line took %.1fs to arrive on a quiet node (batch_wait is 1s)" % report.latency[2])
        if rc != 0:
            extra.append(f"agent exited {rc} on SIGTERM")
        self.verdict(report, extra_failures=extra)


if __name__ == "__main__":
    unittest.main(verbosity=2)
