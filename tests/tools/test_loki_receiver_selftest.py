#!/usr/bin/python3
"""Self-test of tests/tools/loki_receiver.py (the fake Loki used by loglet's tests).

Run: /usr/bin/python3 tests/tools/test_loki_receiver_selftest.py

It checks the hand-written decoder against a real push captured from Promtail 2.8.0
(tests/fixtures/loki-push/), the protoc --decode_raw look-alike against protoc's own
output, and the HTTP receiver with its fault injection.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loki_receiver as lr  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures", "loki-push")
PYTHON = "/usr/bin/python3"

LABELS_STDOUT = ('{cluster="test", container="app", namespace="shop", pod="web-0", '
                 'stream="stdout"}')
LABELS_STDERR = ('{cluster="test", container="app", namespace="shop", pod="web-0", '
                 'stream="stderr"}')
# What Promtail 2.8.0 pushed for input-cri.log (see the fixture README / decode_raw file).
EXPECTED = [
    (LABELS_STDOUT, [
        (1795341600, 1, "GET /api/cart 200 12ms"),
        (1795341601, 1, "first half of a long line, second half"),
        (1795341602, 123456789, "unicode: h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c"),
    ]),
    (LABELS_STDERR, [
        (1795341600, 500000000, 'warning: slow "query" took 1.5s\ttab'),
    ]),
]


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def post(url, body, content_type="application/x-protobuf", headers=None, timeout=10):
    """POST; return (status, body_text, headers). Raises on connection errors."""
    h = {"Content-Type": content_type} if content_type else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=body, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def parse_cri_time(ts):
    """'2026-11-22T10:00:00.123456789Z' -> (seconds, nanos), without datetime's µs limit."""
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z", ts)
    y, mo, d, hh, mm, ss = (int(x) for x in m.groups()[:6])
    import calendar
    secs = calendar.timegm((y, mo, d, hh, mm, ss, 0, 0, 0))
    frac = (m.group(7) or "").ljust(9, "0")
    return secs, int(frac)


class FixtureDecodeTest(unittest.TestCase):
    def check_streams(self, streams):
        self.assertEqual(len(streams), 2)
        self.assertEqual(sum(len(s["entries"]) for s in streams), 4)
        for s, (labels, entries) in zip(streams, EXPECTED):
            self.assertEqual(s["labels"], labels)
            self.assertEqual(s["label_map"], {"cluster": "test", "container": "app",
                                              "namespace": "shop", "pod": "web-0",
                                              "stream": labels.split('stream="')[1][:6]})
            self.assertIsNone(s["hash"])          # Promtail does not send field 3
            got = [(e["ts_ns"], e["line"], e["metadata"]) for e in s["entries"]]
            want = [(sec * 10**9 + ns, line, {}) for sec, ns, line in entries]
            self.assertEqual(got, want)
            for e in s["entries"]:
                self.assertNotIn("error", e)

    def test_snappy_body(self):
        self.check_streams(lr.decode_push(fixture("promtail-2.8.0-push.snappy")))

    def test_uncompressed_pb(self):
        self.check_streams(lr.decode_push(fixture("promtail-2.8.0-push.pb"), compressed=False))

    def test_snappy_block_is_the_pb(self):
        self.assertEqual(lr.snappy_uncompress(fixture("promtail-2.8.0-push.snappy")),
                         fixture("promtail-2.8.0-push.pb"))

    def test_matches_the_cri_input(self):
        """Independently of EXPECTED: rebuild the entries from input-cri.log."""
        want = {}
        partial = {}
        for raw in fixture("input-cri.log").decode("utf-8").splitlines():
            ts, stream, tag, msg = raw.split(" ", 3)
            if tag == "P":
                partial[stream] = partial.get(stream, "") + msg
                continue
            sec, ns = parse_cri_time(ts)
            want.setdefault(stream, []).append((sec * 10**9 + ns, partial.pop(stream, "") + msg))
        got = {}
        for s in lr.decode_push(fixture("promtail-2.8.0-push.snappy")):
            got.setdefault(s["label_map"]["stream"], []).extend(
                (e["ts_ns"], e["line"]) for e in s["entries"])
        self.assertEqual(got, want)

    def test_fast_scan_counts(self):
        self.assertEqual(lr.scan_push_counts(fixture("promtail-2.8.0-push.pb")),
                         (2, 4, sum(len(l.encode()) for _, es in EXPECTED for _, _, l in es)))


class DecodeRawTest(unittest.TestCase):
    def test_matches_committed_protoc_output_exactly(self):
        # Exact, byte for byte: no whitespace normalisation was needed.
        want = fixture("promtail-2.8.0-push.decode_raw.txt").decode("ascii")
        self.assertEqual(lr.decode_raw_text(fixture("promtail-2.8.0-push.pb")), want)

    def test_escapes_and_wire_types(self):
        pb = (b"\x08\x96\x01"                     # 1: 150
              b"\x15\x01\x00\x00\x80"             # 2: fixed32
              b"\x19\x01\x02\x03\x04\x05\x06\x07\x08"   # 3: fixed64
              b"\x22\x05a\"'\\\xff"               # 4: string with escapes
              b"\x2b\x08\x01\x2c"                 # 5: group { 1: 1 }
              b"\x32\x00")                        # 6: empty
        self.assertEqual(lr.decode_raw_text(pb),
                         '1: 150\n2: 0x80000001\n3: 0x0807060504030201\n'
                         '4: "a\\"\\\'\\\\\\377"\n5 {\n  1: 1\n}\n6: ""\n')

    def test_unparseable_raises(self):
        for bad in (b"\x08", b"\x0a\x05ab", b"\x0f", b"\x00", b"\x0c"):
            with self.assertRaises(lr.DecodeError, msg=bad):
                lr.decode_raw_text(bad)

    @unittest.skipUnless(shutil.which("protoc"), "protoc not installed")
    def test_against_protoc(self):
        import random
        rnd = random.Random(7)
        v = lr._varint

        def gen(depth):
            out = b""
            for _ in range(rnd.randint(0, 4)):
                f = rnd.choice([1, 2, 3, 15, 16, 2**29 - 1])
                k = rnd.randint(0, 5)
                if k == 0:
                    out += v(f << 3) + v(rnd.choice([0, 1, 300, 2**63, 2**64 - 1]))
                elif k == 1:
                    out += v(f << 3 | 1) + rnd.randbytes(8)
                elif k == 2:
                    out += v(f << 3 | 5) + rnd.randbytes(4)
                elif k == 3 and depth < 12:
                    d = gen(depth + 1)
                    out += v(f << 3 | 2) + v(len(d)) + d
                elif k == 4 and depth < 12:
                    out += v(f << 3 | 3) + gen(depth + 1) + v(f << 3 | 4)
                else:
                    d = rnd.randbytes(rnd.randint(0, 6))
                    out += v(f << 3 | 2) + v(len(d)) + d
            return out

        samples = [fixture("promtail-2.8.0-push.pb")]
        for _ in range(60):
            m = gen(0)
            if m and rnd.random() < 0.3:
                m = m[:rnd.randrange(len(m))]
            samples.append(m)
        for m in samples:
            p = subprocess.run(["protoc", "--decode_raw"], input=m, capture_output=True)
            want = p.stdout.decode("latin-1") if p.returncode == 0 else None
            try:
                got = lr.decode_raw_text(m)
            except lr.DecodeError:
                got = None
            self.assertEqual(got, want, m.hex())


class DecoderTest(unittest.TestCase):
    def test_roundtrip_with_metadata_and_unknown_fields(self):
        body = lr.encode_push([('{app="x"}', [(5 * 10**9 + 7, "hi", {"trace_id": "abc"}),
                                              (0, "")])], compress=False)
        # unknown fields everywhere: varint, fixed32, fixed64, group, length-delimited
        junk = b"\x78\x05\x7d\x01\x02\x03\x04\x79" + bytes(8) + b"\x7b\x08\x01\x7c\x7a\x01z"
        streams = lr.decode_push(junk + body + junk, compressed=False)
        self.assertEqual(len(streams), 1)
        self.assertEqual(streams[0]["entries"],
                         [{"ts_ns": 5 * 10**9 + 7, "line": "hi", "metadata": {"trace_id": "abc"}},
                          {"ts_ns": 0, "line": "", "metadata": {}}])
        # and inside a stream / an entry
        s = lr._field_bytes(1, b'{a="b"}') + junk + lr._field_bytes(
            2, junk + lr._field_bytes(1, b"\x08\x01") + lr._field_bytes(2, b"l") + junk) + \
            b"\x18\x2a"
        streams = lr.decode_push(lr._field_bytes(1, s), compressed=False)
        self.assertEqual(streams[0]["hash"], 42)
        self.assertEqual(streams[0]["entries"][0]["line"], "l")
        self.assertEqual(streams[0]["entries"][0]["ts_ns"], 10**9)

    def test_invalid_utf8_line_is_recorded_not_fatal(self):
        body = lr.encode_push([('{a="b"}', [(1, b"ok \xff\xfe bad")])], compress=False)
        e = lr.decode_push(body, compressed=False)[0]["entries"][0]
        self.assertIn("not valid UTF-8", e["error"])
        self.assertEqual(e["line_bytes"], b"ok \xff\xfe bad")
        self.assertEqual(e["line"], "ok \\xff\\xfe bad")

    def test_broken_bodies(self):
        good = lr.encode_push([('{a="b"}', [(1, "x")])], compress=False)
        cases = {
            "bad snappy": (b"\xff\xff\xff\xff", True),
            "truncated": (good[:-1], False),
            "wire type 7": (b"\x0f", False),
            "field 0": (b"\x02\x00", False),
            "bad labels": (lr.encode_push([("a=b", [(1, "x")])], compress=False), False),
            "no labels": (lr.encode_push([("{}", [(1, "x")])], compress=False), False),
            "labels wire type": (b"\x0a\x02\x08\x01", False),
            "no timestamp": (lr._field_bytes(1, lr._field_bytes(1, b'{a="b"}') +
                                             lr._field_bytes(2, lr._field_bytes(2, b"x"))), False),
            "nanos out of range": (lr._field_bytes(1, lr._field_bytes(1, b'{a="b"}') +
                                                   lr._field_bytes(2, lr._field_bytes(
                                                       1, b"\x10" + lr._varint(10**9)))), False),
            "unterminated group": (b"\x0b\x08\x01", False),
        }
        for name, (body, compressed) in cases.items():
            with self.subTest(name):
                with self.assertRaises(lr.DecodeError):
                    lr.decode_push(body, compressed=compressed)
                if not compressed and name not in ("bad labels", "no labels", "no timestamp",
                                                   "nanos out of range", "labels wire type"):
                    with self.assertRaises(lr.DecodeError):
                        lr.scan_push_counts(body)

    def test_random_garbage_only_raises_decode_error(self):
        import random
        rnd = random.Random(3)
        good = fixture("promtail-2.8.0-push.pb")
        for _ in range(2000):
            b = bytearray(good)
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            try:
                streams = lr.decode_push(bytes(b), compressed=False)
            except lr.DecodeError:
                streams = None
            try:
                counts = lr.scan_push_counts(bytes(b))
            except lr.DecodeError:
                self.assertIsNone(streams, "scan rejected what decode accepted")
                continue
            if streams is not None:
                self.assertEqual(counts[:2], (len(streams),
                                              sum(len(s["entries"]) for s in streams)))

    def test_negative_seconds(self):
        ts = lr._field_bytes(1, b"\x08" + lr._varint(-1) + b"\x10\x05")
        body = lr._field_bytes(1, lr._field_bytes(1, b'{a="b"}') +
                               lr._field_bytes(2, ts + lr._field_bytes(2, b"x")))
        self.assertEqual(lr.decode_push(body, compressed=False)[0]["entries"][0]["ts_ns"],
                         -10**9 + 5)


class LabelTest(unittest.TestCase):
    def test_valid(self):
        self.assertEqual(lr.parse_labels('{a="b", c="d"}'), {"a": "b", "c": "d"})
        self.assertEqual(lr.parse_labels('{ a = "b" ,c="d" }'), {"a": "b", "c": "d"})
        self.assertEqual(lr.parse_labels(r'{msg="say \"hi\" \\ back\n", _x9="\u00e9\x41"}'),
                         {"msg": 'say "hi" \\ back\n', "_x9": "\u00e9A"})
        self.assertEqual(lr.parse_labels('{a=`raw \\ "q"`}'), {"a": 'raw \\ "q"'})
        self.assertEqual(lr.parse_labels('{a="h\u00e9"}'), {"a": "h\u00e9"})
        self.assertEqual(lr.parse_labels('{a=""}'), {"a": ""})

    def test_invalid(self):
        for s in ('', '{}', 'a="b"', '{a="b"', '{a="b",}', '{a=b}', '{a!="b"}', '{a=~"b"}',
                  '{1a="b"}', '{a="b", a="c"}', '{a="b"} x', '{a="b" c="d"}', r'{a="\q"}',
                  '{a="b\nc"}', '{a="\\xff"}', '{a-b="c"}'):
            with self.subTest(s):
                with self.assertRaises(lr.LabelError):
                    lr.parse_labels(s)

    def test_format_labels_roundtrip(self):
        m = {"z": 'q"\\', "a": "1"}
        self.assertEqual(lr.format_labels(m), '{a="1", z="q\\"\\\\"}')
        self.assertEqual(lr.parse_labels(lr.format_labels(m)), m)


class ReceiverTest(unittest.TestCase):
    def setUp(self):
        self.r = lr.Receiver()
        self.r.start()
        self.body = fixture("promtail-2.8.0-push.snappy")

    def tearDown(self):
        self.r.stop()

    def test_url(self):
        self.assertEqual(self.r.url, "http://127.0.0.1:%d/loki/api/v1/push" % self.r.port)
        self.assertGreater(self.r.port, 0)

    def test_push_is_recorded(self):
        st, _, _ = post(self.r.url, self.body, headers={
            "X-Scope-OrgID": "tenant-a", "User-Agent": "promtail/2.8.0",
            "Authorization": "Basic dTpw"})
        self.assertEqual(st, 204)
        self.assertTrue(self.r.wait_for(4, timeout=5))
        self.assertEqual(self.r.lines(), [l for _, es in EXPECTED for _, _, l in es])
        self.assertEqual(self.r.lines(match={"stream": "stderr"}),
                         ['warning: slow "query" took 1.5s\ttab'])
        ents = self.r.all_entries()
        self.assertEqual(ents[0]["labels"], LABELS_STDOUT)
        self.assertEqual(ents[0]["ts_ns"], 1795341600 * 10**9 + 1)
        self.assertEqual(ents[0]["label_map"]["pod"], "web-0")
        self.assertEqual(len(self.r.streams()), 2)
        req, = self.r.requests()
        self.assertEqual(req["status"], 204)
        self.assertEqual(req["outcome"], "accepted")
        self.assertEqual(req["entries"], 4)
        self.assertEqual(req["headers"], {
            "X-Scope-OrgID": "tenant-a", "User-Agent": "promtail/2.8.0",
            "Authorization": "Basic dTpw", "Content-Type": "application/x-protobuf"})
        stats = get_json(self.r.base_url + "/stats")
        self.assertEqual(stats["requests"], 1)
        self.assertEqual(stats["entries"], 4)
        self.assertEqual(stats["by_status"], {"204": 1})
        self.assertEqual(stats["bytes_compressed"], len(self.body))
        self.assertEqual(stats["bytes_uncompressed"], len(fixture("promtail-2.8.0-push.pb")))
        self.assertEqual(self.r.errors(), [])

    def test_keepalive_and_chunked(self):
        c = http.client.HTTPConnection("127.0.0.1", self.r.port, timeout=5)
        for _ in range(3):
            c.request("POST", lr.PUSH_PATH, body=self.body,
                      headers={"Content-Type": "application/x-protobuf"})
            resp = c.getresponse()
            resp.read()
            self.assertEqual(resp.status, 204)
        c.request("POST", lr.PUSH_PATH, body=iter([self.body[:100], self.body[100:]]),
                  headers={"Content-Type": "application/x-protobuf"}, encode_chunked=True)
        resp = c.getresponse()
        resp.read()
        self.assertEqual(resp.status, 204)
        c.close()
        self.assertEqual(self.r.stats()["entries"], 16)

    def test_fail_ratio_one_records_nothing(self):
        self.r.set_faults(fail_ratio=1.0, seed=1)
        statuses = [post(self.r.url, self.body)[0] for _ in range(12)]
        self.assertTrue(all(s in (500, 429, 503) for s in statuses), statuses)
        self.assertGreater(len(set(statuses)), 1)
        self.assertEqual(self.r.lines(), [])
        st = self.r.stats()
        self.assertEqual((st["entries"], st["failed_injected"], st["requests"]), (0, 12, 12))
        # deterministic with the seed
        self.r.set_faults(seed=1)
        self.assertEqual([post(self.r.url, self.body)[0] for _ in range(12)], statuses)
        self.r.reset_faults()
        self.assertEqual(post(self.r.url, self.body)[0], 204)
        self.assertEqual(len(self.r.lines()), 4)

    def test_fail_ratio_half_is_deterministic(self):
        self.r.set_faults(fail_ratio=0.5, seed=42, fail_statuses=[503])
        a = [post(self.r.url, self.body)[0] for _ in range(20)]
        self.assertEqual(set(a), {204, 503})
        self.assertEqual(self.r.stats()["entries"], 4 * a.count(204))
        self.r.set_faults(seed=42)
        self.assertEqual([post(self.r.url, self.body)[0] for _ in range(20)], a)

    def test_fail_next_and_retry_after(self):
        self.r.set_faults(fail_next=2, fail_statuses=[429], retry_after=7)
        st, body, hdrs = post(self.r.url, self.body)
        self.assertEqual((st, hdrs.get("Retry-After")), (429, "7"))
        self.assertIn("rate limit", body)
        self.assertEqual(post(self.r.url, self.body)[0], 429)
        self.assertEqual(post(self.r.url, self.body)[0], 204)
        self.assertEqual(self.r.stats()["by_status"], {"204": 1, "429": 2})

    def test_down_gives_connection_error(self):
        self.r.set_faults(down=True)
        with self.assertRaises((ConnectionError, http.client.HTTPException, urllib.error.URLError)):
            post(self.r.url, self.body)
        self.assertEqual(self.r.stats()["dropped_down"], 1)
        self.assertEqual(self.r.stats()["requests"], 0)
        # admin and stats still answer while "down"
        self.assertEqual(get_json(self.r.base_url + "/stats")["dropped_down"], 1)
        self.r.set_faults(down=False)
        self.assertEqual(post(self.r.url, self.body)[0], 204)
        self.assertEqual(len(self.r.lines()), 4)

    def test_down_hard_closes_the_port_and_reopens(self):
        port = self.r.port
        # an idle keep-alive connection is dropped too
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/ready")
        c.getresponse().read()
        self.r.set_faults(down_hard=True)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with self.assertRaises((ConnectionError, http.client.HTTPException, OSError)):
            c.request("POST", lr.PUSH_PATH, body=self.body,
                      headers={"Content-Type": "application/x-protobuf"})
            c.getresponse().read()
        c.close()
        self.r.set_faults(down_hard=False)
        self.assertEqual(self.r.port, port)
        self.assertEqual(post(self.r.url, self.body)[0], 204)
        # auto-recovery
        self.r.set_faults(down_hard=True, down_seconds=0.3)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        deadline = time.monotonic() + 5
        while True:
            try:
                self.assertEqual(post(self.r.url, self.body)[0], 204)
                break
            except (ConnectionError, urllib.error.URLError):
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)
        self.assertFalse(self.r.get_faults()["down_hard"])

    def test_force_status_400(self):
        self.r.set_faults(force_status=400)
        st, body, _ = post(self.r.url, self.body)
        self.assertEqual(st, 400)
        self.assertIn("entry for stream '%s' has timestamp too old" % LABELS_STDOUT, body)
        self.r.set_faults(force_body="custom message")
        self.assertEqual(post(self.r.url, self.body)[:2], (400, "custom message\n"))
        self.assertEqual(self.r.lines(), [])
        self.assertEqual(self.r.stats()["failed_injected"], 2)

    def test_wrong_content_type_rejected(self):
        for ct in ("application/json", "text/plain", None):
            st, body, _ = post(self.r.url, self.body, content_type=ct)
            self.assertEqual(st, 415, ct)
        self.assertEqual(self.r.lines(), [])
        self.assertEqual(self.r.stats()["unsupported_media_type"], 3)
        # parameters are fine
        self.assertEqual(post(self.r.url, self.body,
                              content_type="application/x-protobuf; charset=binary")[0], 204)

    def test_broken_push_is_400_and_counted(self):
        st, body, _ = post(self.r.url, b"not snappy at all")
        self.assertEqual(st, 400)
        st, body, _ = post(self.r.url, lr.encode_push([("{app=x}", [(1, "x")])]))
        self.assertEqual(st, 400)
        self.assertIn("quoted value", body)
        self.assertEqual(self.r.stats()["invalid"], 2)
        errs = self.r.errors()
        self.assertEqual(len(errs), 2)
        self.assertIn("snappy", errs[0]["reason"])
        self.assertEqual(self.r.lines(), [])

    def test_invalid_utf8_accepted_but_reported(self):
        self.assertEqual(post(self.r.url, lr.encode_push([('{a="b"}', [(1, b"\xc3(")])]))[0], 204)
        self.assertEqual(self.r.stats()["utf8_errors"], 1)
        self.assertIn("UTF-8", self.r.errors()[0]["reason"])
        self.assertIn("error", self.r.all_entries()[0])

    def test_delay(self):
        self.r.set_faults(delay_seconds=0.4)
        t = time.monotonic()
        self.assertEqual(post(self.r.url, self.body)[0], 204)
        self.assertGreaterEqual(time.monotonic() - t, 0.4)

    def test_admin_endpoint(self):
        st, body, _ = post(self.r.base_url + "/admin/faults",
                           json.dumps({"fail_ratio": 1, "fail_statuses": [500]}).encode(),
                           content_type="application/json")
        self.assertEqual(st, 200)
        self.assertEqual(json.loads(body)["fail_ratio"], 1.0)
        self.assertEqual(post(self.r.url, self.body)[0], 500)
        st, body, _ = post(self.r.base_url + "/admin/faults", b'{"nope": 1}',
                           content_type="application/json")
        self.assertEqual(st, 400)
        st, _, _ = post(self.r.base_url + "/admin/reset", b"", content_type="application/json")
        self.assertEqual(st, 200)
        self.assertEqual(self.r.stats()["requests"], 0)
        self.assertEqual(post(self.r.url, self.body)[0], 204)

    def test_wait_for_predicate_and_timeout(self):
        self.assertFalse(self.r.wait_for(1, timeout=0.2))
        post(self.r.url, self.body)
        self.assertTrue(self.r.wait_for(lambda: "GET /api/cart 200 12ms" in self.r.lines(), 2))
        self.assertTrue(self.r.wait_for_requests(1, 2))


class CountOnlyTest(unittest.TestCase):
    def test_count_only(self):
        with lr.Receiver(count_only=True) as r:
            body = fixture("promtail-2.8.0-push.snappy")
            for _ in range(5):
                self.assertEqual(post(r.url, body)[0], 204)
            self.assertEqual(post(r.url, b"\x00garbage")[0], 400)
            st = get_json(r.base_url + "/stats")
            self.assertEqual(st["entries"], 20)
            self.assertEqual(st["requests"], 6)
            self.assertEqual(st["bytes_compressed"], 5 * len(body))
            self.assertEqual(st["bytes_uncompressed"], 5 * len(fixture("promtail-2.8.0-push.pb")))
            self.assertEqual(st["by_status"], {"204": 5, "400": 1})
            self.assertEqual(r.lines(), [])


class CliTest(unittest.TestCase):
    def start_cli(self, *args):
        p = subprocess.Popen([PYTHON, os.path.join(HERE, "loki_receiver.py"), "--port", "0"]
                             + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait(),
                                 p.stdout.close(), p.stderr.close()))
        line = p.stdout.readline()
        m = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+))\n", line)
        self.assertIsNotNone(m, line)
        return p, m.group(1)

    def stop_cli(self, p):
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(10), 0)

    def test_cli_out_file(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "out.jsonl")
            p, base = self.start_cli("--out", out)
            self.assertEqual(post(base + lr.PUSH_PATH, fixture("promtail-2.8.0-push.snappy"))[0],
                             204)
            self.assertEqual(get_json(base + "/stats")["entries"], 4)
            self.stop_cli(p)
            with open(out, encoding="utf-8") as f:
                rows = [json.loads(l) for l in f]
        self.assertEqual([r["line"] for r in rows], [l for _, es in EXPECTED for _, _, l in es])
        self.assertEqual(rows[0], {"labels": LABELS_STDOUT, "ts_ns": 1795341600 * 10**9 + 1,
                                   "line": "GET /api/cart 200 12ms", "metadata": {}})

    def test_cli_fail_ratio_and_count_only(self):
        p, base = self.start_cli("--fail-ratio", "1", "--count-only")
        self.assertIn(post(base + lr.PUSH_PATH, fixture("promtail-2.8.0-push.snappy"))[0],
                      (500, 429, 503))
        post(base + "/admin/faults", b'{"fail_ratio": 0}', content_type="application/json")
        self.assertEqual(post(base + lr.PUSH_PATH, fixture("promtail-2.8.0-push.snappy"))[0], 204)
        st = get_json(base + "/stats")
        self.assertEqual((st["requests"], st["entries"], st["count_only"]), (2, 4, True))
        # down_hard through the admin endpoint: answered, then the port closes, then reopens
        st, body, _ = post(base + "/admin/faults", b'{"down_hard": true, "down_seconds": 0.5}',
                           content_type="application/json")
        self.assertEqual((st, json.loads(body)["down_hard"]), (200, True))
        port = int(base.rsplit(":", 1)[1])
        deadline = time.monotonic() + 0.45       # it closes at once, reopens after 0.5 s
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                time.sleep(0.01)
            except ConnectionRefusedError:
                refused = True
            except ConnectionResetError:
                pass        # queued in the backlog while the listener was closing
        self.assertTrue(refused, "the port never closed")
        deadline = time.monotonic() + 5
        while True:
            try:
                self.assertFalse(get_json(base + "/admin/faults")["down_hard"])
                break
            except (ConnectionError, urllib.error.URLError):
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)
        self.stop_cli(p)


if __name__ == "__main__":
    unittest.main(verbosity=2)
