"""The e2e oracle tested against itself, without the agent: the writer's files,
read back by a small reference reader, give exactly the journal's lines; and
every kind of broken delivery (a line dropped, mislabelled, corrupted, sent
twice, a long line split wrongly, a stranger) is reported as such. If the
checker could not see these, no e2e scenario could fail."""
import glob
import warnings
import gzip
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.environ.get("LOGLET_SOURCE_DIR", os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))), "tests", "e2e"))

import checker as ck  # noqa: E402


def reference_read(root, epoch=0):
    """Reads every CRI file under root/pods (rotated and gzipped ones too) as an ideal
    agent would: P pieces joined, invalid UTF-8 replaced, max_line_bytes pieces."""
    def rotation_order(path):
        d, name = os.path.split(path)
        restart, _, rest = name.partition(".log")
        return d, int(restart), rest == "", rest.replace(".gz", "")

    out = []
    for path in sorted(glob.glob(os.path.join(root, "pods", "*", "*", "*.log*")), key=rotation_order):
        if path.endswith(".tmp"):
            continue
        data = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
        pod_dir, cname = path.split(os.sep)[-3], path.split(os.sep)[-2]
        ns, pod, _ = pod_dir.split("_")
        pending = b""
        for line in data.split(b"\n")[:-1]:
            ts, stream, tag, content = line.split(b" ", 3)
            pending += content
            if tag == b"P":
                continue
            text = pending.decode("utf-8", "replace").encode()
            pending = b""
            labels = {"namespace": ns, "pod": pod, "container": cname, "stream": stream.decode()}
            for unit in ck.expected_units(text, "n"):
                out.append(ck.Entry(labels, unit, ck.parse_rfc3339_ns(ts.decode()), time.time(), epoch))
    return out


class CheckerSelfTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        warnings.simplefilter("ignore", ResourceWarning)
        cls.case = ck.E2ECase()
        cls.case.setUp()
        w = cls.case.start_writers(dict(pods=3, rate=3000, rotate_bytes=128 * 1024, p_partial=0.05, p_utf8=0.05,
                                        long_per_s=3, late_ticks=[1, 3], restart_every=1.2))
        time.sleep(3.5)
        cls.stats = w.stop()
        cls.truth = ck.Truth.load(w.journals)
        cls.entries = reference_read(cls.case.root)

    @classmethod
    def tearDownClass(cls):
        cls.case.tearDown()

    def check(self, entries, **kw):
        # The reference reader reads the files left at the end; lines in files the
        # kubelet removed (container GC, retention) cannot be in them.
        kw.setdefault("exempt", lambda info: not self.truth.on_disk_at_end(info))
        return ck.Checker(self.truth).check(entries, **kw)

    def test_the_files_hold_exactly_the_journal(self):
        s = self.stats
        self.assertGreater(s["rotations"], 3, s)
        self.assertGreater(s["gzips"], 0, s)
        self.assertGreater(s["late_lines"], 0, "the runtime never wrote into a renamed file")
        self.assertGreater(s["restarts"], 0, s)
        kinds = {self.truth.line(*k).kind.lower() for k in self.truth.keys()}
        self.assertEqual(kinds, set("npusb"), "every kind of line was written")
        rep = self.check(self.entries, order=True)
        print(rep.summary())
        self.assertEqual(rep.problems(), [], rep.details())
        self.assertEqual(rep.delivered + rep.exempt, self.truth.count())
        self.assertLess(rep.exempt, rep.written / 3, "most lines must still be on disk to be compared")

    def test_every_broken_delivery_is_seen(self):
        good = self.entries
        plain = [i for i, e in enumerate(good) if b" k=n " in e.raw[:120]]
        longs = [i for i, e in enumerate(good) if b" k=s " in e.raw[:120] or b" k=b " in e.raw[:120]]
        bad = list(good)
        dropped = bad[plain[0]]
        bad[plain[0]] = None
        wrong = bad[plain[1]]
        other = next(e for e in good if e.labels["pod"] != wrong.labels["pod"])
        bad[plain[1]] = ck.Entry(dict(other.labels), wrong.raw, wrong.ts_ns, wrong.t)
        c = bad[plain[2]]
        bad[plain[2]] = ck.Entry(c.labels, c.raw[:-1] + b"#", c.ts_ns, c.t)
        t = bad[plain[3]]
        bad[plain[3]] = ck.Entry(t.labels, t.raw, t.ts_ns + 1, t.t)
        d = bad[plain[4]]
        bad.append(ck.Entry(d.labels, d.raw, d.ts_ns, d.t + 5))                # same run: unjustified
        j = bad[plain[5]]
        bad.append(ck.Entry(j.labels, j.raw, j.ts_ns, j.t + 5, epoch=1))       # after a restart: justified
        lp = bad[longs[0]]
        bad[longs[0]] = ck.Entry(lp.labels, lp.raw[:-100], lp.ts_ns, lp.t)       # a piece cut short
        bad.append(ck.Entry(lp.labels, lp.raw[-100:], lp.ts_ns, lp.t))
        bad.append(ck.Entry(other.labels, b"hello from nowhere", 0, time.time()))
        rep = self.check([e for e in bad if e is not None])
        print(rep.details())
        self.assertEqual(rep.counts["lost"], 5, "dropped, mislabelled, corrupted, wrong timestamp, long piece")
        self.assertEqual(rep.counts["wrong_labels"], 1)
        self.assertEqual(rep.counts["corrupted"], 4)
        self.assertEqual(rep.counts["duplicated"], 2)
        self.assertEqual(rep.counts["unjustified_duplicates"], 1)
        self.assertEqual(rep.counts["unknown"], 1)
        self.assertIn(f"id={dropped.raw.split()[0][3:].decode()}", rep.details())
        self.assertIn("seen only wrong-labelled", rep.details())
        self.assertIn("incomplete", rep.details())
        # A later run may send again only what arrived within the in-flight window before its kill.
        runs = [(j.t + 3, True), (None, False)]
        self.assertEqual(self.check([e for e in bad if e is not None], runs=runs).counts["unjustified_duplicates"], 1)
        runs = [(j.t + 60, True), (None, False)]
        self.assertEqual(self.check([e for e in bad if e is not None], runs=runs).counts["unjustified_duplicates"], 2)
        runs = [(j.t + 3, False), (None, False)]                 # after a clean stop: never
        self.assertEqual(self.check([e for e in bad if e is not None], runs=runs).counts["unjustified_duplicates"], 2)
        # A copy sent again after a receiver cut is justified.
        rep = self.check([e for e in bad if e is not None], faults=[d.t + 2])
        self.assertEqual(rep.counts["unjustified_duplicates"], 0)

    def test_a_wrong_labelled_copy_never_counts_as_delivered(self):
        e = self.entries[0]
        other = next(x for x in self.entries if x.labels["pod"] != e.labels["pod"])
        mislabelled = ck.Entry(dict(other.labels), e.raw, e.ts_ns, e.t)
        rep = self.check([mislabelled] + self.entries[1:])
        self.assertEqual((rep.lost, rep.counts["wrong_labels"]), (1, 1))
        rep = self.check([mislabelled] + self.entries)          # and a right copy: delivered, still reported
        self.assertEqual((rep.lost, rep.counts["wrong_labels"], rep.counts["duplicated"]), (0, 1, 0))

    def test_order(self):
        rep = self.check(list(reversed(self.entries)), order=True)
        self.assertGreater(rep.counts["out_of_order"], 0)

    def test_stdout_formats_parse(self):
        t = ck.parse_stdout_line(b"2024-05-01T10:00:00.000000001Z shop/web-0/app stderr id=0:1 x y\n", "text")
        self.assertEqual(t, ({"namespace": "shop", "pod": "web-0", "container": "app", "stream": "stderr"},
                             b"id=0:1 x y", 1714557600000000001))
        t = ck.parse_stdout_line(b"2024-05-01T10:00:00Z /var/lib/docker/x-json.log stdout hi\n", "text")
        self.assertEqual(t[0], {"filename": "/var/lib/docker/x-json.log", "stream": "stdout"})
        j = ck.parse_stdout_line(b'{"time":"2024-05-01T10:00:00.5Z","namespace":"","pod":"","container":"",'
                                 b'"stream":"stdout","line":"a\\u00e9","file":"/x.log"}\n', "json")
        self.assertEqual(j, ({"stream": "stdout", "filename": "/x.log"}, "aé".encode(), 1714557600500000000))


if __name__ == "__main__":
    unittest.main(verbosity=2)
