"""The archive output to file:// and beside Loki: the real binary, real files,
every object decompressed and compared line by line with what was written.

What each test would catch:
- KeysAndContent: a wrong key layout (placeholders, date of the first line),
  lines lost, duplicated, reordered, mislabelled (a line in another
  container's object) or altered, a temporary file left behind, gzip that
  gzip cannot read.
- Splitting: max_object_bytes not honoured, or an {index} reused (two objects
  of one container under one key would leave one of them).
- Kill9: an open object's lines lost at kill -9, duplicates beyond the objects
  stored but not yet acknowledged, a key written twice after the restart.
- TwoOutputs: a position that advances with only one output, an output that
  stalls because the other is down, lines lost in Loki or in the archive
  after the failing one recovers.
"""
import os
import re
import shutil
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import AgentTestCase, base_config, yaml_quote  # noqa: E402

import archive_objects as ao  # noqa: E402  (tests/tools, put on the path by harness)
import loki_receiver as lr  # noqa: E402


def positions(workdir):
    """{real_path: offset} from the positions file."""
    out = {}
    try:
        text = open(os.path.join(workdir, "positions.yaml")).read()
    except FileNotFoundError:
        return out
    for m in re.finditer(r'real_path: "([^"]+)".*?offset: (\d+)', text):
        out[m.group(1)] = int(m.group(2))
    return out


def wait_until(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


class ArchiveCase(AgentTestCase):
    def setUp(self):
        super().setUp()
        self.out = os.path.join(self.workdir, "archive")

    def config(self, archive_extra="", extra="", collection="  read_from: beginning\n"):
        return base_config(self.tree, self.workdir, collection +
                           f"output:\n  archive:\n    url: {yaml_quote('file://' + self.out)}\n" + archive_extra +
                           extra)

    def objects(self):
        return ao.file_objects(self.out) if os.path.isdir(self.out) else {}

    def write(self, c, prefix, n, start=0):
        lines = [f"{prefix}-{i:06d} {c.namespace}/{c.pod}/{c.name} " + "x" * (i % 97) for i in range(start, start + n)]
        c._file.write("".join(ao_line(l, "stderr" if i % 5 == 0 else "stdout")
                              for i, l in enumerate(lines, start)).encode())
        return lines


def ao_line(content, stream):
    from kubelet import cri_line
    return cri_line(content, stream)


class KeysAndContent(ArchiveCase):
    def test_every_line_once_in_its_containers_objects_at_default_settings(self):
        cs = [self.tree.container("shop", "web-0", "app"), self.tree.container("shop", "web-0", "sidecar"),
              self.tree.container("batch", "job-x-7f2k", "main")]
        written = {c: self.write(c, c.name, 3000) for c in cs}
        a = self.agent(self.config()).start()
        # Default flush_interval is 1m: SIGTERM must store the open objects.
        time.sleep(1.5)
        more = {c: self.write(c, c.name, 500, 3000) for c in cs}
        time.sleep(0.5)
        self.assertEqual(a.stop(), 0)
        objs = self.objects()
        hidden = [k for k in objs if os.path.basename(k).startswith(".")]
        self.assertEqual(hidden, [], "temporary files left in the archive")
        got = ao.by_container(objs)
        self.assertEqual(set(got), {(c.namespace, c.pod, c.name, c.container_id) for c in cs})
        today = time.strftime("%Y-%m-%d", time.gmtime())
        for c in cs:
            entries = got[(c.namespace, c.pod, c.name, c.container_id)]
            for _, key, recs in entries:
                self.assertIn(f"/{today}_", key)
                for ts, stream, content in recs:
                    i = int(content.split(" ", 1)[0].rsplit("-", 1)[1])
                    self.assertEqual(stream, "stderr" if i % 5 == 0 else "stdout", f"{key}: {content[:40]}")
            self.assertEqual(ao.contents_in_order(entries), written[c] + more[c], f"{c.pod}/{c.name}")
        # Acknowledged: positions at each file's end.
        pos = positions(self.workdir)
        for c in cs:
            self.assertEqual(pos.get(c.log_path), os.path.getsize(c.log_path), c.log_path)

    def test_flush_interval_stores_objects_while_running_and_moves_positions(self):
        c = self.tree.container("shop", "web-0", "app")
        first = self.write(c, "a", 200)
        a = self.agent(self.config("    flush_interval: 1s\n",
                                   collection="  read_from: beginning\n  positions_sync_period: 200ms\n")).start()
        wait_until(lambda: len(self.objects()) >= 1, 10, "the first object")
        second = self.write(c, "b", 200)
        wait_until(lambda: positions(self.workdir).get(c.log_path) == os.path.getsize(c.log_path), 10,
                   "positions at the end of the file")
        objs = self.objects()
        self.assertGreaterEqual(len(objs), 2, "one object per flush_interval")
        entries = ao.by_container(objs)[(c.namespace, c.pod, c.name, c.container_id)]
        self.assertEqual(ao.contents_in_order(entries), first + second)
        a.kill()


class Splitting(ArchiveCase):
    def test_max_object_bytes_splits_with_distinct_indexes_in_order(self):
        c = self.tree.container("shop", "web-0", "app")
        lines = self.write(c, "s", 30000)  # about 3.4 MB of records
        a = self.agent(self.config("    max_object_bytes: 256KiB\n")).start()
        wait_until(lambda: len(self.objects()) >= 6, 20, "objects split by size")
        self.assertEqual(a.stop(), 0)
        entries = ao.by_container(self.objects())[(c.namespace, c.pod, c.name, c.container_id)]
        indexes = [i for i, _, _ in entries]
        self.assertEqual(len(set(indexes)), len(indexes))
        for _, key, recs in entries:
            raw = sum(len(ao_line(r[2], r[1])) for r in recs)
            # Sealed after the chunk that crossed the bound: at most one ring block more.
            self.assertLess(raw, 256 * 1024 + 300 * 1024, key)
        self.assertEqual(ao.contents_in_order(entries), lines)


class Kill9(ArchiveCase):
    def test_kill9_mid_object_loses_nothing_and_overwrites_no_key(self):
        cs = [self.tree.container("shop", f"web-{k}", "app") for k in range(3)]
        cfg = self.config("    flush_interval: 1s\n")
        a = self.agent(cfg).start()
        written = {c: [] for c in cs}
        n = 0
        deadline = time.time() + 3.3  # several objects stored, one open for each container
        while time.time() < deadline:
            for c in cs:
                written[c] += self.write(c, "k", 50, n)
            n += 50
            time.sleep(0.05)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        before = self.objects()
        self.assertTrue(before, "nothing was stored before the kill")
        for c in cs:
            written[c] += self.write(c, "k", 300, n)
        n += 300
        b = self.agent(cfg).start()
        for c in cs:
            written[c] += self.write(c, "k", 300, n)
        time.sleep(1.5)
        self.assertEqual(b.stop(), 0)
        after = self.objects()
        for key, data in before.items():
            self.assertEqual(after.get(key), data, f"{key} was overwritten or removed after the restart")
        got = ao.by_container(after)
        for c in cs:
            entries = got[(c.namespace, c.pod, c.name, c.container_id)]
            old = [r[2] for _, k, recs in entries if k in before for r in recs]
            new = [r[2] for _, k, recs in entries if k not in before for r in recs]
            self.assertEqual(len(set(old)), len(old), "duplicates before the kill")
            self.assertEqual(len(set(new)), len(new), "duplicates after the restart")
            self.assertEqual(set(old) | set(new), set(written[c]), f"{c.pod}: lines lost")
            # Duplicates only for what was stored but not yet acknowledged in
            # the saved positions: a run at the end of the old objects, read
            # again from the saved offset at the start of the new ones.
            dups = set(old) & set(new)
            if dups:
                self.assertEqual(old[-len(dups):], new[:len(dups)], "duplicates other than the in-flight tail")
            for i, key, _ in entries:
                if key not in before:
                    self.assertGreaterEqual(i, 1000, f"{key}: index from before the restart's reserved block")


class TwoOutputs(ArchiveCase):
    def setUp(self):
        super().setUp()
        self.receiver = lr.Receiver().start()

    def tearDown(self):
        self.receiver.stop()
        super().tearDown()

    def both(self):
        return self.config("    flush_interval: 1s\n",
                           extra=f"  loki:\n    url: {self.receiver.url}\n",
                           collection="  read_from: beginning\n  positions_sync_period: 200ms\n")

    def loki_ids(self):
        return [e["line"] for e in self.receiver.all_entries()]

    def archived(self, c):
        got = ao.by_container(self.objects())
        return ao.contents_in_order(got.get((c.namespace, c.pod, c.name, c.container_id), []))

    def test_loki_down_archive_goes_on_positions_hold_loki_gets_all_after(self):
        c = self.tree.container("shop", "web-0", "app")
        a_lines = self.write(c, "a", 300)
        agent = self.agent(self.both()).start()
        wait_until(lambda: len(self.loki_ids()) == 300 and self.archived(c) == a_lines, 15, "both outputs")
        held = os.path.getsize(c.log_path)
        wait_until(lambda: positions(self.workdir).get(c.log_path) == held, 5, "position after the first lines")
        self.receiver.set_faults(fail_ratio=1.0)
        b_lines = self.write(c, "b", 300)
        wait_until(lambda: self.archived(c) == a_lines + b_lines, 15, "the archive while Loki fails")
        time.sleep(1.0)  # several positions_sync_periods
        self.assertEqual(positions(self.workdir).get(c.log_path), held, "position moved with Loki failing")
        self.assertEqual(len(self.loki_ids()), 300)
        self.receiver.reset_faults()
        wait_until(lambda: positions(self.workdir).get(c.log_path) == os.path.getsize(c.log_path), 20,
                   "position after Loki recovered")
        self.assertEqual(agent.stop(), 0)
        self.assertEqual(sorted(self.loki_ids()), sorted(a_lines + b_lines))
        self.assertEqual(self.archived(c), a_lines + b_lines)

    def test_archive_failing_loki_goes_on_positions_hold_archive_gets_all_after(self):
        c = self.tree.container("shop", "web-0", "app")
        a_lines = self.write(c, "a", 300)
        agent = self.agent(self.both()).start()
        wait_until(lambda: len(self.loki_ids()) == 300 and self.archived(c) == a_lines, 15, "both outputs")
        held = os.path.getsize(c.log_path)
        wait_until(lambda: positions(self.workdir).get(c.log_path) == held, 5, "position after the first lines")
        # The archive directory replaced by a file: every store fails (ENOTDIR).
        shutil.move(self.out, self.out + ".saved")
        open(self.out, "w").close()
        b_lines = self.write(c, "b", 300)
        wait_until(lambda: len(self.loki_ids()) == 600, 15, "Loki while the archive fails")
        agent.wait_stderr(r"cannot store archive object", timeout=10)
        time.sleep(1.0)
        self.assertEqual(positions(self.workdir).get(c.log_path), held, "position moved with the archive failing")
        os.unlink(self.out)
        shutil.move(self.out + ".saved", self.out)
        wait_until(lambda: positions(self.workdir).get(c.log_path) == os.path.getsize(c.log_path), 20,
                   "position after the archive recovered")
        agent.wait_stderr(r"stores objects again", timeout=5)
        self.assertEqual(agent.stop(), 0)
        self.assertEqual(self.archived(c), a_lines + b_lines)
        self.assertEqual(sorted(self.loki_ids()), sorted(a_lines + b_lines))


if __name__ == "__main__":
    unittest.main()
