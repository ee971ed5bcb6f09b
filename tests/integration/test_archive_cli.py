"""`loglet archive cat` and `loglet archive compact` against what the agent
stored (file:// and the S3 emulator): the reader's output compared line by
line with the writer's ground truth, before, during (interrupted at every
step) and after compaction.

What each test would catch:
- a line missing, repeated or out of time order in `cat`; a selection
  (namespace, pod, container, job, since/until) that lets other lines in or
  leaves some out;
- compaction that loses or repeats lines, writes keys or index entries that
  do not add up (line counts), deletes raw objects in the run that merged
  them (a reader listing at that moment would see a gap), or changes
  anything when run again;
- an interruption at any request leaving the archive in a state the reader
  prints differently.
"""
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import LOGLET_BIN, AgentTestCase, base_config, yaml_quote  # noqa: E402

import s3_emulator  # noqa: E402
from kubelet import cri_line  # noqa: E402

HOUR_NS = 3600 * 10**9


class Reader(AgentTestCase):
    """file://; S3Reader runs the same against the emulator."""

    def setUp(self):
        super().setUp()
        self.out = os.path.join(self.workdir, "archive")
        self.url = "file://" + self.out

    def target(self):
        return f"    url: {yaml_quote(self.url)}\n"

    def store_flags(self):
        return ["--url", self.url]

    def keys(self):
        out = []
        for d, _, files in os.walk(self.out):
            out += [os.path.relpath(os.path.join(d, f), self.out) for f in files if not f.startswith(".")]
        return sorted(out)

    def read(self, key):
        return open(os.path.join(self.out, key), "rb").read()

    def archive(self, *args, check=True, env=None):
        p = subprocess.run([LOGLET_BIN, "archive", *args, *self.store_flags()], capture_output=True, text=True,
                           timeout=120, env=dict(os.environ, **(env or {})))
        if check:
            self.assertEqual(p.returncode, 0, p.stderr)
        return p

    def populate(self):
        """Three containers (one a Job's pod) with lines spread over the three
        hours before the last full one; unique timestamps, 1 ms apart per line
        and interleaved between containers. Returns the ground truth."""
        base = (time.time_ns() // HOUR_NS - 4) * HOUR_NS + 1234567
        cs = [self.tree.container("shop", "web-0", "app"), self.tree.container("shop", "web-0", "side-car"),
              self.tree.container("batch", "backup-28374650-x7k2p", "main")]
        truth = []
        n = 2400
        step = 3 * HOUR_NS // n
        for i in range(n):
            c = cs[i % 3]
            ts = base + i * step
            stream = "stderr" if i % 7 == 0 else "stdout"
            content = f"{c.pod}/{c.name} line {i:05d} " + "z" * (i % 50)
            c.write_raw(cri_line(content, stream, ts_ns=ts))
            truth.append((ts, c.namespace, c.pod, c.name, stream, content))
        cfg = base_config(self.tree, self.workdir, "  read_from: beginning\noutput:\n  archive:\n" + self.target() +
                          "    max_object_bytes: 8KiB\n")
        a = self.agent(cfg).start()
        time.sleep(1.5)
        self.assertEqual(a.stop(), 0)
        return truth

    @staticmethod
    def expected(truth, pred=lambda t: True):
        from datetime import datetime, timezone
        out = []
        for ts, ns, pod, ctr, stream, content in sorted(t for t in truth if pred(t)):
            stamp = datetime.fromtimestamp(ts // 10**9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
            out.append(f"{stamp}.{ts % 10**9:09d}Z {ns}/{pod}/{ctr} {stream} {content}")
        return out

    def cat(self, *args):
        return self.archive("cat", *args).stdout.splitlines()

    @staticmethod
    def grace():
        """compact's flags for deleting merged raw objects at the next run
        (the default waits 10 minutes after the merge)."""
        return ["--delete-after", "0s"]

    def raw_keys(self):
        return [k for k in self.keys() if k.startswith("kube.var.log.containers.")]

    def test_cat_selections_in_time_order(self):
        truth = self.populate()
        self.assertGreater(len(self.raw_keys()), 20, "max_object_bytes made many small objects")
        self.assertEqual(self.cat(), self.expected(truth))
        self.assertEqual(self.cat("--namespace", "shop"), self.expected(truth, lambda t: t[1] == "shop"))
        self.assertEqual(self.cat("--pod", "web-0", "--container", "side-car"),
                         self.expected(truth, lambda t: t[2] == "web-0" and t[3] == "side-car"))
        self.assertEqual(self.cat("--job", "backup-28374650"), self.expected(truth, lambda t: t[1] == "batch"))
        self.assertEqual(self.cat("--job", "backup"), [], "a job name must not match a prefix of another's")
        since, until = truth[700][0], truth[1500][0]
        stamp = lambda ns: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"
        self.assertEqual(self.cat("--since", stamp(since), "--until", stamp(until)),
                         self.expected(truth, lambda t: since <= t[0] < until))
        cri = self.archive("cat", "--cri", "--pod", "web-0", "--container", "app").stdout.splitlines()
        self.assertEqual([l.split(" ", 3)[3] for l in cri],
                         [t[5] for t in sorted(truth) if t[3] == "app"])

    def test_compaction_merges_hours_deletes_sources_a_cycle_later_and_is_idempotent(self):
        truth = self.populate()
        before = self.cat()
        self.assertEqual(before, self.expected(truth))
        raw = self.raw_keys()
        self.archive("compact", "--older-than", "1h", *self.grace())
        data = [k for k in self.keys() if k.startswith("data/")]
        self.assertTrue(data)
        for k in data:
            self.assertRegex(k, r"^data/(shop/web-0|batch/backup-28374650-x7k2p)/[0-9a-f]{64}/"
                                r"\d{4}-\d{2}-\d{2}_\d{2}\.gz$")
        self.assertEqual(self.raw_keys(), raw, "raw objects deleted in the run that merged them")
        self.assertEqual(self.cat(), before)
        index = json.loads(self.read("metadata/shop_web-0.json"))
        entries = index["objects"]
        self.assertEqual(sum(e["lines"] for e in entries), sum(1 for t in truth if t[1] == "shop"))
        for e in entries:
            self.assertEqual(len(gzip.decompress(self.read(e["key"])).splitlines()), e["lines"], e["key"])
        # Second run: the sources go; nothing else changes.
        self.archive("compact", "--older-than", "1h", *self.grace())
        self.assertEqual(self.raw_keys(), [], "raw objects left after the second run")
        self.assertEqual(self.cat(), before)
        snapshot = {k: self.read(k) for k in self.keys()}
        self.archive("compact", "--older-than", "1h", *self.grace())
        self.assertEqual({k: self.read(k) for k in self.keys()}, snapshot, "a third run changed the archive")
        self.assertEqual(self.cat(), before)

    def test_merged_raw_objects_stay_for_delete_after(self):
        """Two runs in a row (an interrupted one run again) must not delete
        what a reader that listed before the merge is about to fetch."""
        truth = self.populate()
        raw = self.raw_keys()
        self.archive("compact", "--older-than", "1h")
        self.archive("compact", "--older-than", "1h")
        self.assertEqual(self.raw_keys(), raw, "raw objects deleted before --delete-after (10m)")
        index = json.loads(self.read("metadata/shop_web-0.json"))
        for e in index["objects"]:
            self.assertEqual(e["delete_after"], e["run"] + 600000, e["key"])
        self.assertEqual(self.cat(), self.expected(truth))

    def test_compaction_younger_than_older_than_is_left_alone(self):
        self.populate()
        raw = self.raw_keys()
        self.archive("compact", "--older-than", "24h")
        self.assertEqual(self.raw_keys(), raw)
        self.assertEqual([k for k in self.keys() if not k.startswith("kube.")], [])

    def interrupt(self, attempt):
        """Runs a compaction cut short somewhere; True when one ran to its end."""
        p = subprocess.Popen([LOGLET_BIN, "archive", "compact", "--older-than", "1h", *self.grace(), *self.store_flags()],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.004 * attempt)
        p.send_signal(signal.SIGKILL)
        p.wait()
        return False

    def test_interrupted_compaction_never_changes_what_cat_prints(self):
        truth = self.populate()
        before = self.cat()
        self.assertEqual(before, self.expected(truth))
        states = set()
        for attempt in range(1, 40):
            self.interrupt(attempt)
            keys = self.keys()
            states.add((any(k.startswith("data/") for k in keys), bool(self.raw_keys())))
            self.assertEqual(self.cat(), before, f"after interruption {attempt}")
        # The kills fell before, between and after the merges.
        self.assertIn((True, True), states)
        for _ in range(2):  # to the end, twice: merged, then the sources deleted
            self.archive("compact", "--older-than", "1h", *self.grace())
            self.assertEqual(self.cat(), before)
        self.assertEqual(self.raw_keys(), [])

    def test_multiline_records_are_partial_pieces_read_back_as_one_record(self):
        """A record the multiline stage joined is stored as CRI partial pieces
        (P per line, then F), which cat prints as one record in its place and
        compaction counts once; before, its lines after the first were bare
        physical lines: cat sorted them first (no timestamp) without labels."""
        import archive_objects as ao
        base = (time.time_ns() // HOUR_NS - 3) * HOUR_NS
        c = self.tree.container("shop", "api-0", "api")
        events = []
        for i in range(40):
            ev = [f"Exception {i} in thread main java.lang.X: boom"] + [f"\tat com.example.F{i}.m{j}(F.java:{j})"
                                                                       for j in range(i % 4)]
            for j, line in enumerate(ev):
                c.write_raw(cri_line(line, ts_ns=base + i * 10**6 + j))
            events.append((base + i * 10**6, "\n".join(ev)))
        cfg = base_config(self.tree, self.workdir, "  read_from: beginning\npipeline:\n  - match: {namespaces: [shop]}\n"
                          "    stages:\n      - multiline: {mode: java, timeout: 300ms}\noutput:\n  archive:\n" +
                          self.target() + "    max_object_bytes: 4KiB\n")
        a = self.agent(cfg).start()
        time.sleep(1.5)
        self.assertEqual(a.stop(), 0)
        stored = []
        raw = sorted(self.raw_keys(), key=lambda k: int(k.rsplit("_", 1)[1].split(".")[0]))
        self.assertGreater(len(raw), 1)
        physical = b"".join(gzip.decompress(self.read(k)) for k in raw)
        self.assertIn(b" stdout P Exception 1 in thread", physical)
        for k in raw:
            stored += [r[2] for r in ao.records(self.read(k), k)]
        self.assertEqual(stored, [e[1] for e in events])
        truth = [(ts, "shop", "api-0", "api", "stdout", content) for ts, content in events]
        expected = "\n".join(self.expected(truth)).splitlines()
        self.assertEqual(self.cat(), expected)
        self.archive("compact", "--older-than", "1h", *self.grace())
        index = json.loads(self.read("metadata/shop_api-0.json"))
        self.assertEqual(sum(e["lines"] for e in index["objects"]), len(events))
        self.assertEqual(self.cat(), expected)

    def test_errors_are_clear(self):
        p = subprocess.run([LOGLET_BIN, "archive", "cat"], capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 2)
        self.assertIn("no archive", p.stderr)
        p = subprocess.run([LOGLET_BIN, "archive", "compact", "--url", self.url], capture_output=True, text=True,
                           timeout=20)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--older-than is required", p.stderr)
        p = subprocess.run([LOGLET_BIN, "archive", "cat", "--url", self.url, "--since", "yesterday"],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--since 'yesterday'", p.stderr)


class HostileListing(unittest.TestCase):
    """A server that answers every listing page with "more" and the same
    continuation token: before, cat looped forever, its memory growing."""

    def test_a_listing_that_does_not_end_is_an_error(self):
        import http.server
        import threading
        page = ("<?xml version='1.0'?><ListBucketResult><IsTruncated>true</IsTruncated>"
                "<NextContinuationToken>same</NextContinuationToken>" +
                "".join(f"<Contents><Key>k-{i}.gz</Key><Size>1</Size></Contents>" for i in range(100)) +
                "</ListBucketResult>").encode()
        gets = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                gets.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            p = subprocess.run([LOGLET_BIN, "archive", "cat", "--url", "s3://b/", "--endpoint",
                                f"http://127.0.0.1:{srv.server_port}"], capture_output=True, text=True, timeout=30,
                               env=dict(os.environ, AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b"))
        finally:
            srv.shutdown()
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("the same continuation token again", p.stderr)
        self.assertEqual(len(gets), 2)


class S3Reader(Reader):
    def setUp(self):
        super().setUp()
        why = s3_emulator.available()
        if why:
            raise AssertionError(why)
        self.s3 = s3_emulator.S3Emulator(self.workdir, keys={"AKIDREADER": "reader-secret"}).start()
        self.key_file = os.path.join(self.workdir, "akid")
        self.secret_file = os.path.join(self.workdir, "secret")
        open(self.key_file, "w").write("AKIDREADER\n")
        open(self.secret_file, "w").write("reader-secret\n")
        self.url = "s3://archive/cluster-a"

    def tearDown(self):
        super().tearDown()
        self.s3.stop()

    def target(self):
        return (f"    url: {self.url}\n    endpoint: {self.s3.endpoint}\n"
                f"    access_key_id_file: {yaml_quote(self.key_file)}\n"
                f"    secret_access_key_file: {yaml_quote(self.secret_file)}\n")

    def store_flags(self):
        return ["--url", self.url, "--endpoint", self.s3.endpoint, "--access-key-id-file", self.key_file,
                "--secret-access-key-file", self.secret_file]

    def keys(self):
        return sorted(k[len("cluster-a/"):] for k in self.s3.objects())

    def read(self, key):
        return self.s3.objects()["cluster-a/" + key]

    def interrupt(self, attempt):
        """Every request after the first `attempt` is refused (403, which the
        command does not retry): the compaction stops right there, as if cut,
        and is re-run by the test."""
        self.s3.fail(status=403, count=10**6, after=attempt)
        p = subprocess.run([LOGLET_BIN, "archive", "compact", "--older-than", "1h", *self.grace(), *self.store_flags()],
                           capture_output=True, text=True, timeout=120)
        self.s3.fail(count=0)
        return p.returncode == 0

    def test_interrupted_compaction_never_changes_what_cat_prints(self):
        truth = self.populate()
        before = self.cat()
        self.assertEqual(before, self.expected(truth))
        finished = cut = 0
        states = set()
        for attempt in range(1, 400, 3):  # a cut after every few requests, on top of the last cut
            if self.interrupt(attempt):
                finished += 1
            else:
                cut += 1
            keys = self.keys()
            states.add((any(k.startswith("data/") for k in keys), any(k.startswith("metadata/") for k in keys),
                        bool(self.raw_keys())))
            self.assertEqual(self.cat(), before, f"after a compaction cut after {attempt} requests")
            if finished == 2:
                break
        self.assertEqual(finished, 2, "the compaction never finished")
        self.assertGreaterEqual(cut, 5, "too few cuts to mean anything")
        # Seen: merged objects beside their raw sources (listed or not yet).
        self.assertIn((True, True, True), states)
        self.assertEqual(self.raw_keys(), [])

    def test_two_compactions_during_one_read_neither_lose_nor_repeat_lines(self):
        """cat lists, then its first GET hangs while two compaction runs merge
        and delete the raw objects it listed. Before, the 404s were taken as
        "compacted since the listing" and their lines silently left out (exit
        status 0); now cat lists again and reads the merged objects."""
        truth = self.populate()
        before = self.cat()
        self.assertEqual(before, self.expected(truth))
        self.s3.fail(status=503, count=1, after=3, hang_ms=3000)  # the listing and two indexes pass
        reader = subprocess.Popen([LOGLET_BIN, "archive", "cat", *self.store_flags()], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        for _ in range(2):
            self.archive("compact", "--older-than", "1h", *self.grace())
        self.assertEqual(self.raw_keys(), [])
        out, err = reader.communicate(timeout=60)
        self.assertEqual(reader.returncode, 0, err)
        self.assertEqual(out.splitlines(), before)

    def test_wrong_credentials_are_an_error_not_an_empty_archive(self):
        self.populate()
        open(self.secret_file, "w").write("wrong\n")
        p = self.archive("cat", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("403", p.stderr)
        self.assertEqual(p.stdout, "")


if __name__ == "__main__":
    unittest.main()
