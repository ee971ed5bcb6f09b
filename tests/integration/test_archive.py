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
import base64
import gzip
import hashlib
import json
import os
import random
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
import s3_emulator  # noqa: E402

S3_PREFIX = "logs/node-a/"


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
    """file:// by default; S3Mixin makes the same tests run against the emulator."""

    def setUp(self):
        super().setUp()
        self.out = os.path.join(self.workdir, "archive")

    def target(self):
        return f"    url: {yaml_quote('file://' + self.out)}\n"

    def config(self, archive_extra="", extra="", collection="  read_from: beginning\n"):
        return base_config(self.tree, self.workdir, collection +
                           "output:\n  archive:\n" + self.target() + archive_extra + extra)

    def objects(self):
        return ao.file_objects(self.out) if os.path.isdir(self.out) else {}

    def write(self, c, prefix, n, start=0):
        lines = [f"{prefix}-{i:06d} {c.namespace}/{c.pod}/{c.name} " + "x" * (i % 97) for i in range(start, start + n)]
        c._file.write("".join(ao_line(l, "stderr" if i % 5 == 0 else "stdout")
                              for i, l in enumerate(lines, start)).encode())
        return lines

    def break_archive(self):
        """Every store fails from now on: the directory replaced by a file (ENOTDIR)."""
        shutil.move(self.out, self.out + ".saved")
        open(self.out, "w").close()

    def heal_archive(self):
        os.unlink(self.out)
        shutil.move(self.out + ".saved", self.out)


class S3Mixin:
    """The same tests against @20minutes/s3rver (SigV4 checked), s3://archive/logs/node-a."""

    def setUp(self):
        super().setUp()
        why = s3_emulator.available()
        if why:
            raise AssertionError(why)
        self.s3 = s3_emulator.S3Emulator(self.workdir, keys={"AKIDLOGLET": "loglet-secret-1"}).start()
        self.key_file = os.path.join(self.workdir, "access_key_id")
        self.secret_file = os.path.join(self.workdir, "secret_access_key")
        self.set_credential_files("AKIDLOGLET", "loglet-secret-1")

    def tearDown(self):
        super().tearDown()
        self.s3.stop()

    def set_credential_files(self, key_id, secret):
        for path, value in ((self.key_file, key_id), (self.secret_file, secret)):
            with open(path + ".tmp", "w") as f:
                f.write(value + "\n")
            os.replace(path + ".tmp", path)

    def target(self):
        return (f"    url: s3://archive/{S3_PREFIX}\n    endpoint: {self.s3.endpoint}\n"
                f"    access_key_id_file: {yaml_quote(self.key_file)}\n"
                f"    secret_access_key_file: {yaml_quote(self.secret_file)}\n")

    def objects(self):
        got = self.s3.objects()
        stray = [k for k in got if not k.startswith(S3_PREFIX)]
        assert not stray, f"objects outside the prefix: {stray[:5]}"
        return {k[len(S3_PREFIX):]: v for k, v in got.items()}

    def break_archive(self):
        self.s3.stop()

    def heal_archive(self):
        self.s3.start()


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
        if not hasattr(self, "s3"):
            hidden = [k for k in ao.file_objects(self.out, include_hidden=True) if os.path.basename(k)[0] == "."]
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


class JsonFormat(ArchiveCase):
    def test_json_records_carry_labels_and_the_reader_orders_them(self):
        c = self.tree.container("shop", "web-0", "app")
        lines = self.write(c, "j", 500)
        a = self.agent(self.config("    format: json\n")).start()
        time.sleep(1.0)
        self.assertEqual(a.stop(), 0)
        objs = self.objects()
        self.assertEqual(len(objs), 1)
        recs = [json.loads(l) for l in gzip.decompress(next(iter(objs.values()))).decode().splitlines()]
        self.assertEqual([r["line"] for r in recs], lines)
        for i, r in enumerate(recs):
            self.assertEqual((r["namespace"], r["pod"], r["container"]), ("shop", "web-0", "app"))
            self.assertEqual(r["stream"], "stderr" if i % 5 == 0 else "stdout")
            self.assertRegex(r["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
        from harness import LOGLET_BIN
        import subprocess
        p = subprocess.run([LOGLET_BIN, "archive", "cat", "--url", "file://" + self.out], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual([json.loads(l)["line"] for l in p.stdout.splitlines()], lines)


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


class ManyContainers(ArchiveCase):
    """More containers than max_open_objects: the spool's descriptors and
    sealed objects stay bounded with the store failing (before, every sealed
    object kept its descriptor and nothing bounded their number: 2,000
    containers made the agent hit EMFILE), and with the store up a container
    that keeps writing keeps its one object (least recently written sealed
    first, not the oldest opened)."""

    def spool_fds(self, pid):
        spool = os.path.join(self.workdir, "archive-spool") + "/"
        n = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith(spool)
            except OSError:
                pass
        return n

    def test_a_failing_store_bounds_descriptors_and_sealed_objects_and_loses_nothing(self):
        cs = [self.tree.container("ns", f"p-{i}", "c") for i in range(120)]
        os.makedirs(self.out)
        self.break_archive()
        agent = self.agent(self.config("    flush_interval: 10m\n    max_open_objects: 8\n"
                                       "    max_sealed_objects: 16\n    min_backoff: 50ms\n    max_backoff: 200ms\n",
                                       )).start()
        written = {c: [] for c in cs}
        spool = os.path.join(self.workdir, "archive-spool")
        most_fds = most_files = 0
        for r in range(3):
            for c in cs:
                written[c] += self.write(c, f"r{r}", 2, start=r * 2)
                c._file.flush()
            for _ in range(10):
                time.sleep(0.1)
                most_fds = max(most_fds, self.spool_fds(agent.proc.pid))
                most_files = max(most_files, len([f for f in os.listdir(spool) if f.endswith(".raw")]))
        self.assertLessEqual(most_fds, 8 + 2, "spool descriptors: open objects and the one being gzipped")
        self.assertLessEqual(most_files, 8 + 16, "spool files: open and sealed objects")
        self.assertGreater(most_files, 8, "objects were sealed while the store failed")
        self.heal_archive()
        agent.wait_stderr(r"stores objects again", timeout=10)
        self.assertEqual(agent.stop(), 0)  # stores what is still open
        got = ao.by_container(self.objects())
        for c in cs:
            self.assertEqual(ao.contents_in_order(got[(c.namespace, c.pod, c.name, c.container_id)]), written[c],
                             c.pod)

    def test_containers_that_keep_writing_keep_their_object(self):
        hot = [self.tree.container("ns", "hot-0", "c"), self.tree.container("ns", "hot-1", "c")]
        cold = [self.tree.container("ns", f"cold-{i}", "c") for i in range(8)]
        agent = self.agent(self.config("    flush_interval: 10m\n    max_open_objects: 4\n")).start()
        written = {c: [] for c in hot + cold}
        for k, c in enumerate(cold):
            written[c] += self.write(c, "cold", 1)
            time.sleep(0.25)
            for h in hot:
                written[h] += self.write(h, f"hot{k}", 3, start=3 * k)
            time.sleep(0.25)
        self.assertEqual(agent.stop(), 0)
        got = ao.by_container(self.objects())
        for c in hot + cold:
            entries = got[(c.namespace, c.pod, c.name, c.container_id)]
            self.assertEqual(ao.contents_in_order(entries), written[c], c.pod)
            if c in hot:
                self.assertEqual(len(entries), 1, f"{c.pod} was sealed early while it kept writing")


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
        self.break_archive()
        b_lines = self.write(c, "b", 300)
        wait_until(lambda: len(self.loki_ids()) == 600, 15, "Loki while the archive fails")
        agent.wait_stderr(r"cannot store archive object", timeout=10)
        time.sleep(1.0)
        self.assertEqual(positions(self.workdir).get(c.log_path), held, "position moved with the archive failing")
        self.heal_archive()
        wait_until(lambda: positions(self.workdir).get(c.log_path) == os.path.getsize(c.log_path), 20,
                   "position after the archive recovered")
        agent.wait_stderr(r"stores objects again", timeout=5)
        self.assertEqual(agent.stop(), 0)
        self.assertEqual(self.archived(c), a_lines + b_lines)
        self.assertEqual(sorted(self.loki_ids()), sorted(a_lines + b_lines))


class S3Protocol(S3Mixin, ArchiveCase):
    """What only S3 has: signatures, digests, credentials, SlowDown, multipart."""

    def entries(self, c):
        return ao.by_container(self.objects()).get((c.namespace, c.pod, c.name, c.container_id), [])

    def test_a_lost_spool_directory_overwrites_no_key(self):
        """The {index} counter lives in the spool directory; without it the
        next run starts at 0 again. Before, its PUTs silently replaced the
        first run's objects (S3 replaces by default): their lines were gone."""
        c = self.tree.container("shop", "web-0", "app")
        first = self.write(c, "first", 300)
        a = self.agent(self.config()).start()
        time.sleep(1.0)
        self.assertEqual(a.stop(), 0)  # stores the open objects
        self.assertEqual(ao.contents_in_order(self.entries(c)), first)
        before = self.objects()
        shutil.rmtree(os.path.join(self.workdir, "archive-spool"))
        second = self.write(c, "second", 300, start=300)
        b = self.agent(self.config()).start()
        time.sleep(1.0)
        self.assertEqual(b.stop(), 0)
        after = self.objects()
        for key, data in before.items():
            self.assertEqual(after.get(key), data, f"{key} was replaced")
        self.assertEqual(ao.contents_in_order(self.entries(c)), first + second)
        puts = [r for r in self.s3.requests() if r["method"] == "PUT" and r["status"] == 200]
        self.assertEqual(len(puts), len(after), "a key was written twice")

    def test_each_put_carries_the_objects_md5_and_sha256(self):
        c = self.tree.container("shop", "web-0", "app")
        lines = self.write(c, "d", 2000)
        a = self.agent(self.config()).start()
        time.sleep(1.0)
        self.assertEqual(a.stop(), 0)
        stored = self.s3.objects()
        self.assertEqual(ao.contents_in_order(self.entries(c)), lines)
        puts = [r for r in self.s3.requests() if r["method"] == "PUT" and r["status"] == 200]
        self.assertEqual(len(puts), len(stored))
        for r in puts:
            key = r["url"].split("?")[0][len("/archive/"):]
            data = stored[key]
            self.assertEqual(r["md5"], base64.b64encode(hashlib.md5(data).digest()).decode(), key)
            self.assertEqual(r["sha256"], hashlib.sha256(data).hexdigest(), key)

    def test_wrong_secret_is_refused_and_rotated_credential_files_heal_it(self):
        c = self.tree.container("shop", "web-0", "app")
        first = self.write(c, "r", 500)
        self.set_credential_files("AKIDLOGLET", "not-the-secret")
        a = self.agent(self.config("    flush_interval: 1s\n",
                                   collection="  read_from: beginning\n  positions_sync_period: 200ms\n")).start()
        a.wait_stderr(r"refused the credentials.*SignatureDoesNotMatch", timeout=15)
        time.sleep(1.0)
        self.assertEqual(self.s3.objects(), {}, "stored with a wrong secret")
        self.assertIn(positions(self.workdir).get(c.log_path, 0), (0, None), "position moved without the archive")
        # The Secret is fixed: the files are re-read before the next retry.
        self.set_credential_files("AKIDLOGLET", "loglet-secret-1")
        wait_until(lambda: ao.contents_in_order(self.entries(c)) == first, 30, "objects after the fix")
        # Rotation: the emulator drops the old pair and takes a new one; the
        # agent's next upload is refused, it re-reads the files and goes on.
        self.s3.set_keys({"AKIDROTATED": "loglet-secret-2"})
        self.set_credential_files("AKIDROTATED", "loglet-secret-2")
        second = self.write(c, "r", 500, 500)
        wait_until(lambda: ao.contents_in_order(self.entries(c)) == first + second, 30, "objects after rotation")
        wait_until(lambda: positions(self.workdir).get(c.log_path) == os.path.getsize(c.log_path), 10,
                   "positions at the end")
        self.assertEqual(a.stop(), 0)
        refused = [r for r in self.s3.requests() if r["status"] == 403]
        self.assertTrue(refused, "the emulator never refused a signature")

    def test_slowdown_and_an_emulator_restart_lose_nothing(self):
        cs = [self.tree.container("shop", f"web-{k}", "app") for k in range(2)]
        a = self.agent(self.config("    flush_interval: 1s\n")).start()
        written = {c: self.write(c, "s", 400) for c in cs}
        self.s3.fail(slowdown=3)  # back-off 0.5 + 1 + 2 s at the default min_backoff
        wait_until(lambda: all(ao.contents_in_order(self.entries(c)) == written[c] for c in cs), 30,
                   "objects after SlowDown")
        self.assertGreaterEqual(sum(1 for r in self.s3.requests() if r["status"] == 503), 3)
        for c in cs:
            written[c] += self.write(c, "s", 400, 400)
        self.s3.restart(down_seconds=2.5)
        for c in cs:
            written[c] += self.write(c, "s", 400, 800)
        wait_until(lambda: all(ao.contents_in_order(self.entries(c)) == written[c] for c in cs), 40,
                   "objects after the restart")
        self.assertEqual(a.stop(), 0)
        for c in cs:
            self.assertEqual(ao.contents_in_order(self.entries(c)), written[c])
        a.wait_stderr(r"SlowDown", timeout=1)

    def test_a_stuck_server_times_out_and_is_retried(self):
        c = self.tree.container("shop", "web-0", "app")
        lines = self.write(c, "t", 300)
        self.s3.fail(hang_ms=8000, count=1)
        a = self.agent(self.config("    timeout: 2s\n")).start()
        time.sleep(0.5)
        # SIGTERM stores the open object: its first PUT gets no answer, times
        # out after 2 s, and the retry within the 10 s grace stores it.
        self.assertEqual(a.stop(), 0)
        a.wait_stderr(r"cannot store archive object .*(Timeout|timed out)", timeout=1)
        self.assertEqual(ao.contents_in_order(self.entries(c)), lines)
        self.assertEqual(positions(self.workdir).get(c.log_path), os.path.getsize(c.log_path))

    def test_shutdown_is_not_held_up_by_a_stuck_server(self):
        c = self.tree.container("shop", "web-0", "app")
        self.write(c, "h", 300)
        self.s3.fail(hang_ms=120000, count=100)
        a = self.agent(self.config(extra="  shutdown_grace: 2s\n")).start()
        time.sleep(1.0)
        t0 = time.time()
        self.assertEqual(a.stop(timeout=30), 0)
        # The grace, then the upload in progress is cancelled (its timeout is 60 s).
        self.assertLess(time.time() - t0, 8)
        a.wait_stderr(r"shutdown grace period \(2000 ms\) ended", timeout=1)
        self.assertIn(positions(self.workdir).get(c.log_path, 0), (0, None), "position moved without the archive")

    def test_objects_above_the_threshold_go_up_in_parts(self):
        c = self.tree.container("shop", "web-0", "app")
        rnd = random.Random(7)
        lines = []
        for i in range(12000):  # ~12 MiB of records that gzip leaves above 5 MiB
            lines.append(f"m-{i:06d} " + base64.b64encode(rnd.randbytes(750)).decode())
        from kubelet import cri_line
        c._file.write("".join(cri_line(l) for l in lines).encode())
        a = self.agent(self.config("    multipart_threshold: 5MiB\n    max_object_bytes: 64MiB\n")).start()
        time.sleep(1.5)
        self.assertEqual(a.stop(timeout=60), 0)
        entries = self.entries(c)
        self.assertEqual(len(entries), 1)
        self.assertGreater(len(self.s3.objects()[S3_PREFIX + entries[0][1]]), 5 * 1024 * 1024)
        self.assertEqual(ao.contents_in_order(entries), lines)
        reqs = [(r["method"], r["url"].split("?", 1)[1] if "?" in r["url"] else "") for r in self.s3.requests()]
        self.assertIn(("POST", "uploads="), reqs)
        parts = [q for m, q in reqs if m == "PUT" and q.startswith("partNumber=")]
        self.assertGreaterEqual(len(parts), 2, reqs)
        self.assertTrue(any(m == "POST" and q.startswith("uploadId=") for m, q in reqs))


class BrokenConfig(ArchiveCase):
    """A broken archive configuration stops the agent at start with one
    message naming the file, line and key (or what is missing)."""

    def check(self, archive_yaml, env=None):
        path = os.path.join(self.workdir, "bad.yaml")
        with open(path, "w") as f:
            f.write("output:\n  archive:\n" + archive_yaml)
        from harness import LOGLET_BIN
        import subprocess
        return subprocess.run([LOGLET_BIN, "-config", path], capture_output=True, text=True, timeout=20,
                              env=dict({k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                                       **(env or {})))

    def test_each_mistake_is_named(self):
        cases = [
            ("    url: s3:/bucket\n", r"bad\.yaml:3: key output\.archive\.url: 's3:/bucket' must be s3://bucket"),
            ("    url: file:///x\n    key_format: '{pod}/{date}.gz'\n", r":4: key output\.archive\.key_format: .*\{index\}"),
            ("    url: file:///x\n    key_format: '{pod}/{day}_{index}'\n", r"unknown placeholder '\{day\}'"),
            ("    url: file:///x\n    format: text\n", r":4: key output\.archive\.format"),
            ("    url: file:///x\n    key_format: '{pod}/{date}_{index}.gz'\n",
             r":4: key output\.archive\.key_format: .*must contain \{container_id\} or \{node\}"),
            ("    url: file:///x\n    key_format: 'data/{node}/{pod}/{index}.gz'\n", r"must not start with data/"),
            ("    url: file:///x\n    key_format: 'metadata/{node}_{index}.json'\n", r"must not start with data/ or metadata/"),
            ("    url: file:///x\n    key_format: '../{node}/{index}.gz'\n", r"'\.\.' segment"),
            ("    url: file:///x\n    key_format: '{node}//{index}.gz'\n", r"an empty, '\.' or '\.\.' segment"),
            ("    url: file:///x\n    key_format: '{node}/{index}/'\n", r"must not start or end with '/'"),
            ("    url: s3://b/p\n", r"no credentials: set output\.archive\.access_key_id_file"),
            ("    url: s3://b/p\n    endpoint: minio:9000\n",
             r"output\.archive\.endpoint 'minio:9000' must start with http:// or https://"),
        ]
        for yaml_text, message in cases:
            with self.subTest(yaml_text=yaml_text):
                p = self.check(yaml_text, env={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
                               if "endpoint" in yaml_text else None)
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertRegex(p.stderr, message)


class S3KeysAndContent(S3Mixin, KeysAndContent):
    pass


class S3Kill9(S3Mixin, Kill9):
    pass


class S3TwoOutputs(S3Mixin, TwoOutputs):
    pass


if __name__ == "__main__":
    unittest.main()
