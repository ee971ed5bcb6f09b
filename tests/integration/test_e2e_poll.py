"""E2E scenario E — scenarios B (crash loop, Loki) and C (failing pushes,
outage, kill, churn) again with `collection.watcher: poll`: the polling
watcher must keep every promise the inotify one keeps.

    LOGLET_BIN=... LOGLET_SOURCE_DIR=... /usr/bin/python3 tests/integration/test_e2e_poll.py"""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.environ.get("LOGLET_SOURCE_DIR", os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))), "tests", "e2e"))

import checker as ck  # noqa: E402
import test_e2e_crash as crash  # noqa: E402
import test_e2e_outage as outage  # noqa: E402

POLL = "  watcher: poll\n"


class PollWatcher(ck.E2ECase):
    def test_E_crash_loop_with_the_poll_watcher(self):
        crash.run_crash_loop(self, "loki", POLL, name="E crash loop, poll watcher")

    def test_E_outage_with_the_poll_watcher(self):
        outage.run_outage(self, POLL, name="E outage, poll watcher")


if __name__ == "__main__":
    unittest.main(verbosity=2)
