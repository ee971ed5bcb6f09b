"""Issue 3: never miss and never duplicate a line through rotation, restarts,
pod churn and bad input — the real binary against a writer that imitates the
kubelet (rename + create + gzip + delete), checking every line by its id."""
import collections
import ctypes
import os
import shutil
import tempfile
import signal
import threading
import time
import unittest

from harness import AgentTestCase, base_config, cri_line, http_get, yaml_quote

FAST_SYNC = "  positions_sync_period: 200ms\n"


def ids_of(lines):
    """Ids of `id=<name>-<n>` markers in text-format output lines."""
    out = []
    for line in lines:
        i = line.find("id=")
        if i >= 0:
            out.append(line[i + 3:].split(" ", 1)[0])
    return out


def assert_exactly_once(test, got, expected, allow_dups=0):
    counts = collections.Counter(got)
    missing = [x for x in expected if counts[x] == 0]
    dups = sum(c - 1 for c in counts.values() if c > 1)
    unexpected = set(counts) - set(expected)
    test.assertEqual(missing[:10], [], f"{len(missing)} lines lost")
    test.assertFalse(unexpected, f"unexpected ids {sorted(unexpected)[:10]}")
    test.assertLessEqual(dups, allow_dups, f"{dups} duplicated lines")
    return dups


def fd_targets(pid):
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


class RestartTest(AgentTestCase):
    def config(self, extra=""):
        return base_config(self.tree, self.workdir, "  read_from: beginning\n" + FAST_SYNC + extra)

    def test_sigterm_restart_resumes_exactly(self):
        web = self.tree.container("shop", "web-0", "app")
        for i in range(100):
            web.write(f"id=a-{i}")
        a = self.agent(self.config()).start()
        a.wait_lines(100)
        self.assertEqual(a.stop(), 0)
        with open(os.path.join(self.workdir, "positions.yaml")) as f:
            positions = f.read()
        self.assertIn(web.link_path, positions)
        for i in range(100, 150):
            web.write(f"id=a-{i}")
        b = self.agent(self.config(), name="b.yaml").start()
        b.wait_lines(50)
        time.sleep(0.5)
        self.assertEqual(b.stop(), 0)
        assert_exactly_once(self, ids_of(a.lines() + b.lines()), [f"a-{i}" for i in range(150)])

    def test_sigkill_while_writing_and_rotating_loses_nothing(self):
        web = self.tree.container("shop", "web-0", "app")
        stop = threading.Event()
        written = []

        rotations = [0]

        def writer():
            i = 0
            while not stop.is_set():
                web.write(f"id=k-{i} " + "p" * 100)
                written.append(f"k-{i}")
                i += 1
                if i % 200 == 0:
                    time.sleep(0.01)
                if i % 3000 == 0:  # ~400 KB: several kubelet rotations (rename, gzip) per agent run
                    web.rotate(compress=True)
                    rotations[0] += 1

        t = threading.Thread(target=writer)
        t_start = time.time()
        t.start()
        seen = []
        try:
            for round_ in range(4):
                a = self.agent(self.config(), name=f"r{round_}.yaml").start()
                time.sleep(1.0)
                a.proc.send_signal(signal.SIGKILL)
                a.proc.wait()
                time.sleep(0.1)
                seen += a.lines()
        finally:
            stop.set()
            t.join()
        last = self.agent(self.config(), name="last.yaml").start()
        deadline = time.time() + 20
        while time.time() < deadline and len(set(ids_of(seen + last.lines()))) < len(written):
            time.sleep(0.2)
        self.assertEqual(last.stop(), 0)
        got = ids_of(seen + last.lines())
        # Duplicates: only what was delivered after the last positions save
        # (200 ms here) or in flight, per kill: bounded by ~1 s of writing each.
        rate = len(written) / (time.time() - t_start)
        dups = assert_exactly_once(self, got, written, allow_dups=int(4 * rate * 1.0))
        print(f"sigkill: {len(written)} lines, {rotations[0]} rotations, {dups} duplicates after 4 kills")
        self.assertGreater(rotations[0], 4)

    def test_rotated_and_compressed_while_stopped_is_caught_up(self):
        web = self.tree.container("shop", "web-0", "app")
        for i in range(50):
            web.write(f"id=r-{i}")
        a = self.agent(self.config()).start()
        a.wait_lines(50)
        self.assertEqual(a.stop(), 0)
        # While stopped: more lines, a rotation, more lines, another rotation (the
        # first rotated file is gzip-compressed then), and lines in the new file.
        n = 50
        for _ in range(2):
            for _ in range(30):
                web.write(f"id=r-{n}")
                n += 1
            web.rotate(compress=True)
        for _ in range(30):
            web.write(f"id=r-{n}")
            n += 1
        self.assertTrue(any(r.endswith(".gz") for r in os.listdir(web.dir)), os.listdir(web.dir))
        b = self.agent(self.config(), name="b.yaml").start()
        b.wait_lines(n - 50, timeout=15)
        time.sleep(0.5)
        self.assertEqual(b.stop(), 0)
        got = ids_of(a.lines() + b.lines())
        assert_exactly_once(self, got, [f"r-{i}" for i in range(n)])
        self.assertEqual(ids_of(b.lines()), [f"r-{i}" for i in range(50, n)], "out of order")

    def test_empty_current_file_does_not_resend_its_rotated_sibling(self):
        # The kubelet rotates, the runtime reopens an empty 0.log and the
        # container stops writing (it ended). Once the rotated file is
        # delivered its entry leaves the positions file, and the empty file's
        # entry (no fingerprint yet) must still answer for the path: a
        # restart that cannot identify it would catch up the rotated file
        # again from its start. Found by the soak (unjustified duplicates).
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(50):
            web.write(f"id=e-{i}")
        a.wait_lines(50)
        web.rotate(compress=False)
        time.sleep(2.5)  # rotated file read out, delivered, closed; positions rewritten
        a.proc.kill()
        a.proc.wait()
        b = self.agent(base_config(self.tree, self.workdir), name="b.yaml").start()
        time.sleep(1.5)
        self.assertEqual(ids_of(b.lines()), [], "a delivered rotated file was sent again")
        self.assertNotIn("is gone", b.stderr_text())
        for i in range(50, 55):
            web.write(f"id=e-{i}")
        b.wait_lines(5)
        self.assertEqual(b.stop(), 0)
        self.assertEqual(ids_of(a.lines() + b.lines()), [f"e-{i}" for i in range(55)])

    def test_pod_deleted_while_stopped_is_read_from_the_spool(self):
        # A clean stop, more lines, then the pod is deleted before the next
        # start: the spool's link kept the file, so its new lines arrive under
        # the deleted pod's labels, and its link goes once they are delivered.
        web = self.tree.container("shop", "web-0", "app")
        other = self.tree.container("shop", "api-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(20):
            web.write(f"id=s-{i}")
            other.write(f"id=o-{i}")
        a.wait_lines(40)
        self.assertEqual(a.stop(), 0)
        spool = os.path.join(self.workdir, "spool")
        self.assertEqual(len(os.listdir(spool)), 2, "one link per open file")
        for i in range(20, 30):
            web.write(f"id=s-{i}")
        web.remove()
        b = self.agent(base_config(self.tree, self.workdir), name="b.yaml").start()
        got = b.wait_lines(10)
        time.sleep(1.5)  # closed at its end, delivered: the link goes
        self.assertEqual(ids_of(b.lines()), [f"s-{i}" for i in range(20, 30)])
        self.assertTrue(all(" shop/web-0/app " in line for line in got), got[:3])
        self.assertIn("from the spool", b.stderr_text())
        self.assertNotIn("is gone", b.stderr_text())
        self.assertEqual(len(os.listdir(spool)), 1, f"left in the spool: {os.listdir(spool)}")
        self.assertEqual(b.stop(), 0)

    def test_stale_spool_links_are_removed_and_a_foreign_spool_is_said(self):
        web = self.tree.container("shop", "web-0", "app")
        spool = os.path.join(self.workdir, "spool")
        os.makedirs(spool)
        with open(os.path.join(spool, "ff-1234"), "w") as f:
            f.write("not a log file\n")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        web.write("id=f-0")
        a.wait_lines(1)
        self.assertEqual(a.stop(), 0)
        self.assertNotIn("ff-1234", os.listdir(spool))
        # On another filesystem a hard link cannot be made: said once, lines still flow.
        other = tempfile.mkdtemp(dir="/dev/shm")
        try:
            cfg = base_config(self.tree, self.workdir, f"  spool_dir: {other}/spool\n")
            b = self.agent(cfg, name="b.yaml").start()
            web.write("id=f-1")
            b.wait_lines(1)
            self.assertEqual(b.stop(), 0)
            self.assertEqual(b.stderr_text().count("cannot keep a link"), 1, b.stderr_text())
        finally:
            shutil.rmtree(other, ignore_errors=True)

    def test_start_between_the_kubelets_rename_and_reopen(self):
        # The kubelet renames 0.log, and the runtime reopens a new one a moment
        # later: an agent starting in between finds the link dangling. It must
        # read the rest of the renamed file and then the new one as soon as it
        # appears, without waiting for a periodic rescan. (Found by scenario B:
        # lines of the new file never read.)
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(20):
            web.write(f"id=g-{i}")
        a.wait_lines(20)
        self.assertEqual(a.stop(), 0)
        for i in range(20, 30):
            web.write(f"id=g-{i}")
        os.rename(web.log_path, web.log_path + ".20261201-000000")
        b = self.agent(base_config(self.tree, self.workdir), name="b.yaml").start()
        b.wait_lines(10)
        web._file.close()
        web._file = open(web.log_path, "ab", buffering=0)
        for i in range(30, 40):
            web.write(f"id=g-{i}")
        b.wait_lines(20, timeout=6)  # well before the 10 s rescan
        self.assertEqual(b.stop(), 0)
        self.assertEqual(ids_of(a.lines() + b.lines()), [f"g-{i}" for i in range(40)])

    def test_dangling_at_start_then_rotated_before_seen(self):
        # As above, but the runtime's new file comes late and is rotated again
        # before the agent sees it (only the periodic rescan finds the path):
        # the rotated file in between must be read, not skipped.
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(20):
            web.write(f"id=h-{i}")
        a.wait_lines(20)
        self.assertEqual(a.stop(), 0)
        os.rename(web.log_path, web.log_path + ".20261201-000000")
        b = self.agent(base_config(self.tree, self.workdir), name="b.yaml").start()
        time.sleep(2.5)  # past the rotated file's wait for a successor
        web._file.close()
        web._file = open(web.log_path, "ab", buffering=0)
        for i in range(20, 30):
            web.write(f"id=h-{i}")
        web.rotate(compress=False)
        for i in range(30, 40):
            web.write(f"id=h-{i}")
        b.wait_lines(20, timeout=15)
        self.assertEqual(b.stop(), 0)
        self.assertEqual(ids_of(a.lines() + b.lines()), [f"h-{i}" for i in range(40)])

    def test_reopen_during_the_start_scan(self):
        # The runtime reopens 0.log after the start-up scan found the link
        # dangling but before the scan's end. That new file must be resumed
        # as the scan would have, not left to a rescan that takes it for a
        # new path (after it rotated away unread: the crash loop lost a
        # whole file this way, in CI only). The test makes the moment
        # certain: it stops the agent as it opens the next pod's file, which
        # it reaches right after finding the first link dangling.
        a = self.agent(base_config(self.tree, self.workdir)).start()
        pods = [self.tree.container("shop", f"p-{i:03d}", "app") for i in range(200)]
        # The scan goes in directory order (glob without sorting): the racer
        # is the first link in that order, and the agent is stopped as it
        # opens the second one's file.
        order = os.listdir(os.path.dirname(pods[0].link_path))
        by_link = {os.path.basename(p.link_path): p for p in pods}
        racer, next_pod = by_link[order[0]], by_link[order[1]]
        for i in range(5):
            racer.write(f"id=q-{i}")
        for p in pods:
            if p is not racer:
                p.write("id=other-0")
        a.wait_lines(204)
        self.assertEqual(a.stop(), 0)
        rotated = racer.log_path + ".20261201-000000"
        os.rename(racer.log_path, rotated)
        racer.rotations.append(rotated)
        racer._file.close()

        libc = ctypes.CDLL(None, use_errno=True)
        ino = libc.inotify_init1(os.O_CLOEXEC)
        self.assertGreaterEqual(ino, 0)
        IN_OPEN = 0x20
        self.assertGreaterEqual(libc.inotify_add_watch(ino, next_pod.dir.encode(), IN_OPEN), 0)
        b = self.agent(base_config(self.tree, self.workdir), name="b.yaml")
        stopped = threading.Event()

        def stop_at_first_open():
            os.read(ino, 4096)
            while b.proc is None:
                time.sleep(0.0005)
            os.kill(b.proc.pid, signal.SIGSTOP)
            stopped.set()

        t = threading.Thread(target=stop_at_first_open, daemon=True)
        t.start()
        starter = threading.Thread(target=b.start, daemon=True)
        starter.start()
        self.assertTrue(stopped.wait(20), "the agent never opened the next pod's file")
        try:
            # The runtime reopens and the container writes, before the agent
            # goes on; the kubelet rotates that file a moment later.
            racer._file = open(racer.log_path, "ab", buffering=0)
            for i in range(5, 15):
                racer.write(f"id=q-{i}")
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
            os.close(ino)
        starter.join(20)
        time.sleep(1.0)
        racer.rotate(compress=True)
        for i in range(15, 20):
            racer.write(f"id=q-{i}")
        deadline = time.time() + 14  # past the 10 s rescan, which found only the newest file
        while time.time() < deadline and len([x for x in ids_of(b.lines()) if x.startswith("q-")]) < 15:
            time.sleep(0.1)
        self.assertEqual(b.stop(), 0)
        self.assertTrue(any(os.path.basename(racer.link_path) in l and "dangling" in l for l in b.stderr_lines),
                        "the scan did not find the link dangling: the test did not make its case\n" + b.stderr_text())
        got = [x for x in ids_of(a.lines() + b.lines()) if x.startswith("q-")]
        self.assertEqual(got, [f"q-{i}" for i in range(20)])

    def test_never_opened_successor_deleted_while_down_is_said(self):
        # Loss case 2 of the README: while loglet is down the kubelet rotates
        # 0.log, the runtime opens a new one, the container writes and ends,
        # and its restart after next removes that file and its link. loglet
        # cannot read it, but must say so and count it; the rest of the
        # rotated file is still read. (The poll-watcher crash loop lost 572
        # such lines with nothing said.)
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(10):
            web.write(f"id=s-{i}")
        a.wait_lines(10)
        self.assertEqual(a.stop(), 0)
        for i in range(10, 15):
            web.write(f"id=s-{i}")
        web.rotate(compress=False)
        for i in range(15, 20):
            web.write(f"id=s-{i}")  # into the new file, never read
        web.close()
        os.unlink(web.log_path)
        os.unlink(web.link_path)
        b = self.agent(base_config(self.tree, self.workdir), name="b.yaml").start()
        b.wait_lines(5)
        b.wait_stderr(r"rotated, and the file that followed it was deleted while loglet was down", timeout=5)
        self.assertTrue(any(web.link_path in l and "followed it" in l for l in b.stderr_lines), b.stderr_text())
        code, body = http_get(b.port, "/metrics")
        self.assertEqual(code, 200)
        self.assertRegex(body, r"(?m)^loglet_files_missed_total 1$")
        self.assertEqual(b.stop(), 0)
        self.assertEqual(ids_of(a.lines() + b.lines()), [f"s-{i}" for i in range(15)])

    def _paths(self, glob):
        return base_config(self.tree, self.workdir).replace(f"paths: [{yaml_quote(self.tree.glob)}]",
                                                            f"paths: [{yaml_quote(glob)}]")

    def test_a_path_no_glob_names_any_more_is_not_tailed_again(self):
        # collection.paths narrowed between runs: a saved path it no longer
        # names has the rest of its file read, and is then left alone (the
        # resume of a dangling-at-scan link once tailed it again, forever).
        web = self.tree.container("shop", "web-0", "app")
        db = self.tree.container("shop", "db-0", "pg")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        web.write("id=w-0")
        db.write("id=x-0")
        a.wait_lines(2)
        self.assertEqual(a.stop(), 0)
        only_web = os.path.join(self.tree.root, "containers", "web-*.log")
        for run in (1, 2):
            b = self.agent(self._paths(only_web), name=f"n{run}.yaml").start()
            web.write(f"id=w-{run}")
            db.write(f"id=x-{run}")
            b.wait_lines(1)
            db.rotate(compress=False)
            db.write(f"id=x-{run}-after-rotation")
            time.sleep(2.5)
            self.assertEqual(b.stop(), 0)
            self.assertEqual(ids_of(b.lines()), [f"w-{run}"], b.stderr_text())

    def test_glob_switched_to_the_pod_files_reads_each_line_once(self):
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        web.write("id=w-0")
        a.wait_lines(1)
        self.assertEqual(a.stop(), 0)
        b = self.agent(self._paths(os.path.join(self.tree.root, "pods", "*", "*", "*.log")), name="b.yaml").start()
        for i in range(1, 6):
            web.write(f"id=w-{i}")
        b.wait_lines(5)
        time.sleep(1.0)
        self.assertEqual(b.stop(), 0)
        got = [x for x in ids_of(b.lines()) if x != "w-0"]
        self.assertEqual(got, [f"w-{i}" for i in range(1, 6)])

    def test_slow_reopen_then_clean_restart_sends_nothing_twice(self):
        # Renamed, and the runtime slower to reopen than the rotated file's
        # wait: the file is closed and its path waits for a successor. That
        # wait is saved (done + renamed), so a restart does not take the
        # path for a new one and send the rotated file again.
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(10):
            web.write(f"id=r-{i}")
        a.wait_lines(10)
        rotated = web.log_path + ".20261201-000000"
        os.rename(web.log_path, rotated)
        web.close()
        web.rotations.append(rotated)
        time.sleep(3.5)
        self.assertEqual(a.stop(), 0)
        web._file = open(web.log_path, "ab", buffering=0)
        for i in range(10, 15):
            web.write(f"id=r-{i}")
        b = self.agent(base_config(self.tree, self.workdir), name="b.yaml").start()
        b.wait_lines(5)
        time.sleep(1.0)
        self.assertEqual(b.stop(), 0)
        self.assertEqual(ids_of(a.lines() + b.lines()), [f"r-{i}" for i in range(15)])

    def test_dangling_at_start_slow_reopen_then_restart_sends_nothing_twice(self):
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(10):
            web.write(f"id=d-{i}")
        a.wait_lines(10)
        self.assertEqual(a.stop(), 0)
        rotated = web.log_path + ".20261201-000000"
        os.rename(web.log_path, rotated)
        web.close()
        web.rotations.append(rotated)
        b = self.agent(base_config(self.tree, self.workdir), name="b.yaml").start()
        time.sleep(3.5)
        self.assertEqual(b.stop(), 0)
        web._file = open(web.log_path, "ab", buffering=0)
        for i in range(10, 15):
            web.write(f"id=d-{i}")
        c = self.agent(base_config(self.tree, self.workdir), name="c.yaml").start()
        c.wait_lines(5)
        time.sleep(1.0)
        self.assertEqual(c.stop(), 0)
        self.assertEqual(ids_of(a.lines() + b.lines() + c.lines()), [f"d-{i}" for i in range(15)])

    def test_a_rotated_entry_is_not_taken_for_the_current_file(self):
        # A renamed file keeps its old name (0.log) in its entry, as long as
        # the new current file's: with the rotated entry listed first and the
        # link removed while loglet was down, the current file must still be
        # read to its end (it was taken for gone, and its lines never read).
        web = self.tree.container("shop", "web-0", "app")
        pad = "x" * 1000
        a = self.agent(base_config(self.tree, self.workdir)).start(read_stdout=False)  # stdout stalls
        for i in range(300):
            web.write(f"id=t-{i} {pad}")
        time.sleep(0.5)
        web.rotate(compress=False)
        for i in range(300, 310):
            web.write(f"id=t-{i}")
        time.sleep(3.5)  # the rotated file is read to its end and closed, its lines not delivered
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        # What it wrote into the pipe before stdout stalled was delivered (and
        # may be acknowledged): still there to read after its death.
        in_pipe = a.proc.stdout.read().decode("utf-8", "replace").splitlines()
        os.unlink(web.link_path)
        b = self.agent(base_config(self.tree, self.workdir), name="b.yaml").start()
        deadline = time.time() + 10
        while time.time() < deadline and len(set(ids_of(in_pipe + b.lines()))) < 310:
            time.sleep(0.2)
        self.assertEqual(b.stop(), 0)
        assert_exactly_once(self, ids_of(in_pipe + b.lines()), [f"t-{i}" for i in range(310)],
                            allow_dups=len(in_pipe))
        self.assertIn("t-309", ids_of(b.lines()), "the current file was not read")

    def test_successor_of_a_file_saved_empty_deleted_while_down_is_said(self):
        # Saved before its first line (no fingerprint): a rename keeps its
        # inode, which is enough to know it rotated and that the file after
        # it went unread.
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        time.sleep(1)
        self.assertEqual(a.stop(), 0)
        for i in range(5):
            web.write(f"id=e-{i}")
        web.rotate(compress=False)
        for i in range(5, 10):
            web.write(f"id=e-{i}")
        web.close()
        os.unlink(web.log_path)
        os.unlink(web.link_path)
        b = self.agent(base_config(self.tree, self.workdir), name="b.yaml").start()
        b.wait_lines(5)
        b.wait_stderr(r"the file that followed it was deleted while loglet was down", timeout=5)
        code, body = http_get(b.port, "/metrics")
        self.assertRegex(body, r"(?m)^loglet_files_missed_total 1$")
        self.assertEqual(b.stop(), 0)
        self.assertEqual(ids_of(b.lines()), [f"e-{i}" for i in range(5)])

    def test_rename_seen_then_killed_and_the_pod_gone_is_said(self):
        # loglet saw 0.log renamed, the runtime had not reopened yet, and
        # loglet was killed. While it was down the new file was written and
        # the pod deleted: nothing of the new file can be read, and the
        # saved `renamed` mark lets the next start say so.
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(5):
            web.write(f"id=k-{i}")
        a.wait_lines(5)
        rotated = web.log_path + ".20261201-000000"
        os.rename(web.log_path, rotated)
        web.close()
        deadline = time.time() + 5
        positions = os.path.join(self.workdir, "positions.yaml")
        while time.time() < deadline and "renamed: 1" not in open(positions).read():
            time.sleep(0.1)
        self.assertIn("renamed: 1", open(positions).read())
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        web.remove()
        b = self.agent(base_config(self.tree, self.workdir), name="b.yaml").start()
        b.wait_stderr(r"the file that followed it was deleted while loglet was down", timeout=5)
        code, body = http_get(b.port, "/metrics")
        self.assertRegex(body, r"(?m)^loglet_files_missed_total 1$")
        self.assertEqual(b.stop(), 0)

    def test_corrupt_positions_file_is_reported_and_not_fatal(self):
        web = self.tree.container("shop", "web-0", "app")
        web.write("id=c-0")
        with open(os.path.join(self.workdir, "positions.yaml"), "w") as f:
            f.write("version: 1\npositions:\n  - {path: [unclosed\n")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        self.assertEqual(ids_of(a.wait_lines(1)), ["c-0"])  # read from the beginning despite read_from: end
        self.assertIn("positions file unusable", a.stderr_text())
        self.assertTrue(os.path.exists(os.path.join(self.workdir, "positions.yaml.corrupt")))
        self.assertEqual(a.stop(), 0)


class RotationTest(AgentTestCase):
    def test_rotation_every_megabyte_at_20k_lines_per_second(self):
        web = self.tree.container("shop", "web-0", "app")
        cfg = base_config(self.tree, self.workdir, FAST_SYNC)
        a = self.agent(cfg).start()
        pad = "p" * 120
        written, size, rotations = 0, 0, 0
        t0 = time.time()
        while time.time() - t0 < 10:
            batch = []
            for _ in range(200):
                batch.append(cri_line(f"id=x-{written} {pad}"))
                written += 1
            data = "".join(batch).encode()
            web.write_raw(data)
            size += len(data)
            if size >= 1 << 20:
                web.rotate(compress=True)
                size = 0
                rotations += 1
            # pace to ~25k lines/s
            ahead = written / 25000 - (time.time() - t0)
            if ahead > 0:
                time.sleep(ahead)
        rate = written / (time.time() - t0)
        self.assertGreaterEqual(rate, 20000)
        deadline = time.time() + 20
        while time.time() < deadline and len(a.lines()) < written:
            time.sleep(0.2)
        self.assertEqual(a.stop(), 0)
        assert_exactly_once(self, ids_of(a.lines()), [f"x-{i}" for i in range(written)])
        print(f"rotation: {written} lines at {rate:.0f}/s, {rotations} rotations")

    def test_slow_reopen_then_rotated_before_seen(self):
        # Live: 0.log renamed, the runtime's new file comes only after the
        # renamed one was read out and closed, and is itself rotated before
        # the agent sees it: the file in between must not be skipped.
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(10):
            web.write(f"id=v-{i}")
        a.wait_lines(10)
        os.rename(web.log_path, web.log_path + ".20261201-000000")
        time.sleep(3)  # past the renamed file's wait for a successor: closed
        web._file.close()
        web._file = open(web.log_path, "ab", buffering=0)
        for i in range(10, 20):
            web.write(f"id=v-{i}")
        web.rotate(compress=False)
        for i in range(20, 30):
            web.write(f"id=v-{i}")
        a.wait_lines(30, timeout=15)
        self.assertEqual(a.stop(), 0)
        assert_exactly_once(self, ids_of(a.lines()), [f"v-{i}" for i in range(30)])
        self.assertEqual(ids_of(a.lines()), [f"v-{i}" for i in range(30)])

    def test_copytruncate_is_detected(self):
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(20):
            web.write(f"id=t-{i}")
        a.wait_lines(20)
        os.truncate(web.log_path, 0)
        time.sleep(0.3)
        for i in range(20, 25):
            web.write(f"id=t-{i}")
        a.wait_lines(25)
        self.assertEqual(a.stop(), 0)
        assert_exactly_once(self, ids_of(a.lines()), [f"t-{i}" for i in range(25)])
        self.assertIn("truncated", a.stderr_text())

    def test_deleted_pod_is_drained_and_its_descriptor_closed(self):
        web = self.tree.container("shop", "web-0", "app")
        a = self.agent(base_config(self.tree, self.workdir)).start()
        for i in range(10):
            web.write(f"id=d-{i}")
        a.wait_lines(10)
        self.assertIn(web.log_path, fd_targets(a.proc.pid))
        web.remove()
        deadline = time.time() + 5
        while time.time() < deadline and any(web.log_path in t for t in fd_targets(a.proc.pid)):
            time.sleep(0.1)
        self.assertFalse([t for t in fd_targets(a.proc.pid) if web.log_path in t], "deleted file still open")
        # The same pod name again: a new file, read from its start.
        again = self.tree.container("shop", "web-0", "app")
        again.write("id=d-new")
        a.wait_lines(11)
        self.assertEqual(a.stop(), 0)
        assert_exactly_once(self, ids_of(a.lines()), [f"d-{i}" for i in range(10)] + ["d-new"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
