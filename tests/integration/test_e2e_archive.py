"""E2E scenario I — Loki and the archive (file://) at once, at default settings,
under the crash loop's load: 8 pods x 2 containers at 8 000 lines/s, the
kubelet rotating every 1 MiB with gzip, container restarts; Loki cut for 6 s
with a kill -9 in the middle of the cut, another kill -9 after it, then a
clean SIGTERM (which stores the archive's open objects: flush_interval is
1 m, so until then the archive holds every position back).

Both outputs are checked by the e2e checker against the writers' journals:
nothing lost, corrupted or mislabelled in Loki or in the archive; duplicates
only from a killed run. The archive's entries are its objects decompressed
(CRI records), labelled from their keys (namespace, pod, container), and
their container id checked against the container that wrote each line. A
copy is justified if it arrived within the in-flight window before a kill:
with two outputs a file's position waits for the slower one (here the
archive's 1 m objects), so the window is flush_interval plus the positions
period, not the positions period alone.

    LOGLET_BIN=... /usr/bin/python3 tests/integration/test_e2e_archive.py
"""
import bisect
import gzip
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.environ.get("LOGLET_SOURCE_DIR", os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))), "tests", "e2e"))

import checker as ck  # noqa: E402

WRITER = dict(pods=8, containers=["app", "sidecar"], rate=8000, rotate_bytes=1 << 20, max_files=5,
              p_stderr=0.2, p_partial=0.01, p_utf8=0.005, long_per_s=0.5, restart_every=6.0, seed=11)
KEY = re.compile(r"^kube\.var\.log\.containers\.(?P<pod>[^_/]+)_(?P<ns>[^_/]+)_(?P<c>[^/]+)-(?P<cid>[0-9a-f]{64})/"
                 r"\d{4}-\d{2}-\d{2}_(?P<index>\d+)\.gz$")
ID = re.compile(rb"id=(\d+):(\d+) ")


class ArchiveBesideLoki(ck.E2ECase):
    def archive_entries(self, out, truth, problems):
        """The archive's records as checker entries: t is the object's mtime,
        epoch the agent run that stored it."""
        starts = sorted(a.start_time for a in self.agents)
        entries = []
        for d, _, files in os.walk(out):
            for f in files:
                path = os.path.join(d, f)
                key = os.path.relpath(path, out)
                m = KEY.match(key)
                if not m:
                    problems.append(f"object {key} is not in the default key layout")
                    continue
                t = os.path.getmtime(path)
                epoch = max(0, bisect.bisect_right(starts, t) - 1)
                for n, line in enumerate(gzip.decompress(open(path, "rb").read()).split(b"\n")[:-1], 1):
                    parts = line.split(b" ", 3)
                    if len(parts) != 4 or parts[2] != b"F":
                        problems.append(f"{key}:{n}: not a CRI record: {line[:100]!r}")
                        continue
                    labels = {"namespace": m["ns"], "pod": m["pod"], "container": m["c"],
                              "stream": parts[1].decode()}
                    entries.append(ck.Entry(labels, parts[3], ck.parse_rfc3339_ns(parts[0].decode()), t, epoch))
                    i = ID.search(parts[3])
                    if i:
                        try:
                            info = truth.line(int(i.group(1)), int(i.group(2)))
                        except (KeyError, IndexError):
                            continue
                        c = truth.containers[info.cidx]
                        if c.cid != m["cid"] and len(problems) < 20:
                            problems.append(f"{key}: line {i.group(0)!r} of {c} (container id {c.cid[:12]}) in "
                                            f"an object of container id {m['cid'][:12]}")
        entries.sort(key=lambda e: e.t)
        return entries

    def test_loki_and_archive_under_crashes_and_an_outage(self):
        out = os.path.join(self.workdir, "archive")
        self.use_loki()
        cfg = self.config(extra=f"  archive:\n    url: file://{out}\n")
        agent = self.start_agent(cfg)
        writers = self.start_writers(WRITER)
        time.sleep(3)
        self.cut_receiver(True)
        time.sleep(3)
        agent.kill9()
        agent = self.start_agent(cfg)
        time.sleep(3)
        self.cut_receiver(False)
        time.sleep(2)
        agent.kill9()
        agent = self.start_agent(cfg)
        time.sleep(4)
        writers.stop()
        truth = ck.Truth.load(writers.journals)
        exempt = self.gone_while_down(truth)
        drained = self.wait_drained(truth, timeout=90, settle=20, exempt=exempt)
        rc = agent.term()
        window = 60 + 1 + 3  # flush_interval + positions_sync_period + slack
        loki = ck.Checker(truth, inflight=window).check(self.entries(), name="I: Loki", faults=self.cuts,
                                                         runs=self.runs(), exempt=exempt)
        problems = []
        arch_entries = self.archive_entries(out, truth, problems)
        archive = ck.Checker(truth, inflight=window).check(arch_entries, name="I: archive", runs=self.runs(),
                                                            exempt=exempt)
        if not drained:
            problems.append("Loki never had every line")
        if rc != 0:
            problems.append(f"agent exited {rc} on SIGTERM")
        hidden = [f for _, _, fs in os.walk(out) for f in fs if f.startswith(".")]
        if hidden:
            problems.append(f"temporary files left in the archive: {hidden[:3]}")
        sys.stderr.write("\n" + archive.details() + "\n")
        self.verdict(loki, allow=("duplicated",),
                     extra_failures=problems + [f"archive: {p}" for p in archive.problems(("duplicated",))])


if __name__ == "__main__":
    unittest.main()
