"""Issue 11: pipeline stages through the real binary into the Loki test receiver
(tests/tools/loki_receiver.py, its own decoder), with real files and inotify.

Settings are the defaults except the pipeline and the Loki URL (and a short
batch_wait so the tests need not wait a second per batch). Ground truth is
what the test wrote: every entry's labels, content and timestamp is checked
against it, across several pods, some of which no match block applies to.

    LOGLET_BIN=build/loglet LOGLET_SOURCE_DIR=. /usr/bin/python3 tests/integration/test_pipeline.py
"""
import json
import os
import re
import signal
import time
import unittest

from harness import AgentTestCase, SOURCE_DIR, base_config, cri_line, http_get

import loki_receiver as lr

FIXTURES = os.path.join(SOURCE_DIR, "tests", "fixtures", "multiline")
T0 = 1714644930_000_000_000  # timestamps the test writes: entries keep their first line's


def fixture(name):
    """The trace's lines and the expected entries (lists of lines)."""
    with open(os.path.join(FIXTURES, name + ".log")) as f:
        lines = f.read().split("\n")[:-1]
    with open(os.path.join(FIXTURES, name + ".groups")) as f:
        counts = [int(x) for x in f.read().split()]
    entries, at = [], 0
    for n in counts:
        entries.append(lines[at:at + n])
        at += n
    return lines, entries


class PipelineTestCase(AgentTestCase):
    def setUp(self):
        super().setUp()
        self.receiver = lr.Receiver().start()

    def tearDown(self):
        self.receiver.stop()
        super().tearDown()

    def config(self, pipeline):
        return base_config(self.tree, self.workdir,
                           f"output:\n  loki:\n    url: {self.receiver.url}\n    batch_wait: 100ms\n" + pipeline)

    def entries_of(self, c):
        return [e for e in self.receiver.all_entries()
                if e["label_map"].get("pod") == c.pod and e["label_map"].get("container") == c.name]

    def assert_labels(self, e, c, stream="stdout", **extra):
        want = {"namespace": c.namespace, "pod": c.pod, "container": c.name, "stream": stream}
        want.update(extra)
        got = {k: v for k, v in e["label_map"].items() if k != "node_name"}
        self.assertEqual(got, want, e["line"][:200])

    def metric(self, agent, name, **labels):
        status, body = http_get(agent.port, "/metrics")
        self.assertEqual(status, 200)
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in body.splitlines():
            if line.startswith(name + ("{" + want if want else "")):
                if not want or line.startswith(name + "{" + want + "}") or line.startswith(name + "{" + want + ","):
                    return float(line.rsplit(" ", 1)[1])
        self.fail(f"no metric {name}{{{want}}} in:\n{body[-3000:]}")

    def positions(self):
        path = os.path.join(self.workdir, "positions.yaml")
        out = {}
        if os.path.exists(path):
            for m in re.finditer(r'path: "([^"]+)".*?offset: (\d+)', open(path).read()):
                out[m.group(1)] = int(m.group(2))
        return out

    def wait(self, pred, timeout=15, what="condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred():
                return
            time.sleep(0.05)
        self.fail(f"timed out waiting for {what}")


JAVA_PIPELINE = """pipeline:
  - match: {namespaces: ["shop-*"], containers: [api]}
    stages:
      - multiline: {mode: java}
"""


class MultilineTest(PipelineTestCase):
    def test_join_across_read_buffer_and_rotation_every_entry_checked(self):
        """One Java trace straddles the first 256 KiB read, another a kubelet
        rotation; pods the block does not match pass line by line."""
        lines, entries = fixture("java")
        a = self.agent(self.config(JAVA_PIPELINE)).start()
        api = self.tree.container("shop-eu", "api-0", "api", link=False)
        web = self.tree.container("shop-eu", "web-0", "web")       # container not matched
        other = self.tree.container("batch", "api-1", "api")       # namespace not matched
        expected_api, ts = [], T0
        # Filler up to just before the first read's end (256 KiB, the default
        # read_buffer_bytes), so the first trace crosses it.
        data = b""
        n = 0
        while len(data) < 256 * 1024 - 600:
            line = f"filler {n:06d} " + "x" * 100
            data += cri_line(line, ts_ns=ts).encode()
            expected_api.append(([line], ts))
            ts += 1
            n += 1
        for group in entries:
            for k, line in enumerate(group):
                data += cri_line(line, ts_ns=ts + k).encode()
            expected_api.append((group, ts))
            ts += len(group)
        api.write_raw(data)
        self.assertLess(len(data) - 256 * 1024, 2000)  # the boundary falls inside the traces
        api.link()
        for i in range(50):
            web.write(f"web {i}\tat not.a.Frame(web)")
            other.write(f"\tat other {i}")
        # A trace split by a rotation: its start in the rotated file, its end in the new one.
        time.sleep(0.5)
        trace = entries[3]  # the uncaught exception: 11 lines
        for k, line in enumerate(trace[:5]):
            api.write(line, ts_ns=ts + k)
        time.sleep(0.3)
        api.rotate(compress=False)
        for k, line in enumerate(trace[5:]):
            api.write(line, ts_ns=ts + 5 + k)
        expected_api.append((trace, ts))
        ts += len(trace)
        api.write("2024-05-02 10:16:00.000 INFO  [main] shop.Shop - after rotation", ts_ns=ts)
        expected_api.append((["2024-05-02 10:16:00.000 INFO  [main] shop.Shop - after rotation"], ts))

        self.assertTrue(self.receiver.wait_for(len(expected_api) + 100, timeout=30),
                        f"{len(self.receiver.all_entries())} entries\n" + a.stderr_text()[-2000:])
        time.sleep(4)  # the last line is held until the timeout (3 s): then nothing more may come
        got = self.entries_of(api)
        self.assertEqual(len(got), len(expected_api), "entries of the matched pod")
        for e, (group, t) in zip(sorted(got, key=lambda e: e["ts_ns"]), expected_api):
            self.assertEqual(e["line"], "\n".join(group))
            self.assertEqual(e["ts_ns"], t, "a joined entry keeps its first line's time")
            self.assert_labels(e, api)
        for c in (web, other):
            got = sorted(self.entries_of(c), key=lambda e: e["ts_ns"])
            self.assertEqual(len(got), 50)
            for i, e in enumerate(got):
                self.assertEqual(e["line"], f"web {i}\tat not.a.Frame(web)" if c is web else f"\tat other {i}")
                self.assert_labels(e, c)
        self.assertEqual(a.stop(), 0)

    def test_kill9_while_join_held_loses_nothing(self):
        """The agent is killed while it holds the first lines of a trace: the
        restart reads them again and sends the trace once, whole."""
        _, entries = fixture("python")
        pipeline = JAVA_PIPELINE.replace("java", "python").replace("containers: [api]", "containers: [app]")
        cfg = self.config(pipeline)
        app = self.tree.container("shop-de", "app-0", "app")
        a = self.agent(cfg).start()
        ts = T0
        app.write(entries[0][0], ts_ns=ts)                # a first entry
        trace = entries[1]
        for k, line in enumerate(trace[:10]):
            app.write(line, ts_ns=ts + 1 + k)
        # Until the agent delivered the first entry and holds ten lines of the trace.
        self.wait(lambda: len(self.entries_of(app)) == 1, what="the first entry")
        self.wait(lambda: self.metric(a, "loglet_pipeline_in_total", block="0", stage="0") >= 11,
                  what="ten lines held")  # (joined counts lines once their entry is sent)
        # The saved position reaches the held trace's first line and stays there.
        first_line_end = len(cri_line(entries[0][0], ts_ns=ts).encode())
        self.wait(lambda: self.positions().get(app.link_path) == first_line_end, timeout=10,
                  what="the position of the first entry's end")
        time.sleep(1.5)  # more than positions_sync_period: a save past the held lines would show
        self.assertEqual(self.positions().get(app.link_path), first_line_end,
                         "the acknowledged offset stops at the held trace's first line")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        for k, line in enumerate(trace[10:]):
            app.write(line, ts_ns=ts + 11 + k)
        app.write(entries[2][0], ts_ns=ts + 1 + len(trace))
        b = self.agent(cfg, name="b.yaml").start()
        self.wait(lambda: len(self.entries_of(app)) >= 3, timeout=20, what="the trace after restart")
        time.sleep(4)
        got = sorted(self.entries_of(app), key=lambda e: e["ts_ns"])
        self.assertEqual([e["line"] for e in got], ["\n".join(g) for g in entries])
        self.assertEqual([e["ts_ns"] for e in got], [ts, ts + 1, ts + 1 + len(trace)])
        self.assertEqual(b.stop(), 0)


    def test_sigterm_sends_held_join_before_positions_are_saved(self):
        """A join held (timeout 30 s) when the agent is stopped goes out before
        it exits, and the saved position covers it: a file deleted before the
        next start loses nothing, and nothing is sent twice."""
        _, entries = fixture("java")
        cfg = self.config(JAVA_PIPELINE.replace("{mode: java}", "{mode: java, timeout: 30s}"))
        a = self.agent(cfg).start()
        api = self.tree.container("shop-eu", "api-0", "api")
        ts = T0
        for group in entries:
            for k, line in enumerate(group):
                api.write(line, ts_ns=ts + k)
            ts += len(group)
        # Every entry but the last goes out; the last (an 11-line trace) is held.
        self.wait(lambda: len(self.entries_of(api)) == len(entries) - 1, what="all but the held join")
        self.wait(lambda: self.metric(a, "loglet_pipeline_in_total", block="0", stage="0", type="multiline")
                  == sum(len(g) for g in entries), what="the held lines read")
        held_from = os.path.getsize(api.log_path) - sum(len(cri_line(l, ts_ns=0)) for l in entries[-1])
        self.wait(lambda: self.positions().get(api.link_path) == held_from, what="the position at the held join")
        self.assertEqual(a.stop(), 0)
        got = sorted(self.entries_of(api), key=lambda e: e["ts_ns"])
        self.assertEqual([e["line"] for e in got], ["\n".join(g) for g in entries])
        for e in got:
            self.assert_labels(e, api)
        self.assertIn("sent 1 held multiline join at shutdown", a.stderr_text())
        self.assertEqual(self.positions().get(api.link_path), os.path.getsize(api.log_path))
        api.remove()  # the pod goes while no agent runs
        other = self.tree.container("batch", "api-1", "api")  # no block: sent at once
        b = self.agent(cfg, name="b.yaml").start()
        other.write("after restart", ts_ns=ts)
        self.wait(lambda: len(self.entries_of(other)) == 1, what="a line after the restart")
        time.sleep(4)  # more than the multiline timeout: a join sent twice would show
        self.assertEqual(len(self.entries_of(api)), len(entries))
        self.assertEqual([e["line"] for e in self.entries_of(other)], ["after restart"])
        self.assertEqual(b.stop(), 0)


class DropLimitLabelsTest(PipelineTestCase):
    def test_dropped_lines_are_acknowledged_and_counted(self):
        pipeline = """pipeline:
  - match: {namespaces: [shop]}
    stages:
      - drop: {line: "healthz"}
      - limit: {rate: 5, burst: 5}
"""
        a = self.agent(self.config(pipeline)).start()
        probe = self.tree.container("shop", "probe-0", "app")
        for i in range(200):
            probe.write(f"GET /healthz {i}")
        for i in range(20):
            probe.write(f"real {i}")
        size = os.path.getsize(probe.log_path)
        self.wait(lambda: self.positions().get(probe.link_path) == size, timeout=10,
                  what="the positions to reach the end of the file")
        self.wait(lambda: len(self.entries_of(probe)) == 5, what="the burst")
        self.assertEqual(self.metric(a, "loglet_pipeline_dropped_total", block="0", stage="0", type="drop",
                                     reason="line"), 200)
        self.assertEqual(self.metric(a, "loglet_pipeline_dropped_total", block="0", stage="1", type="limit",
                                     reason="rate"), 15)
        self.assertEqual([e["line"] for e in sorted(self.entries_of(probe), key=lambda e: e["ts_ns"])],
                         [f"real {i}" for i in range(5)])
        self.assertEqual(a.stop(), 0)

    def test_limit_wait_slows_only_its_file(self):
        pipeline = """pipeline:
  - match: {pods: [slow-*]}
    stages:
      - limit: {rate: 10, burst: 10, action: wait}
"""
        a = self.agent(self.config(pipeline)).start()
        slow = self.tree.container("shop", "slow-0", "app")
        fast = self.tree.container("shop", "fast-0", "app")
        start = time.time()
        for i in range(100):
            slow.write(f"slow {i}")
            fast.write(f"fast {i}")
        self.wait(lambda: len(self.entries_of(fast)) == 100, what="the fast file")
        fast_done = time.time() - start
        slow_then = len(self.entries_of(slow))
        # 10 at once, then 10 a second: 100 lines need at least 9 s (the
        # bucket's arithmetic, not a guess about speed); the fast file is
        # not held up by them.
        self.assertLess(slow_then, 100, f"fast file done after {fast_done:.1f}s")
        self.wait(lambda: len(self.entries_of(slow)) == 100, timeout=30, what="the slow file")
        slow_done = time.time() - start
        self.assertGreater(slow_done, 9.0)
        for c, name in ((slow, "slow"), (fast, "fast")):
            got = sorted(self.entries_of(c), key=lambda e: int(e["line"].split()[1]))
            self.assertEqual([e["line"] for e in got], [f"{name} {i}" for i in range(100)])
        self.assertEqual(self.metric(a, "loglet_pipeline_dropped_total", block="0", stage="0", type="limit",
                                     reason="rate"), 0)
        self.assertEqual(a.stop(), 0)

    def test_allow_list_caps_streams_and_metadata_travels(self):
        pipeline = """pipeline:
  - match: {namespaces: [shop]}
    stages:
      - json: {fields: {level: level, msg: msg, trace_id: trace_id}}
      - labels: {level: {values: [info, error], other: other}}
      - structured_metadata: [trace_id]
      - output: {source: msg}
"""
        # With the agent's own structured metadata on, an entry carries both.
        cfg = self.config(pipeline).replace("    batch_wait: 100ms\n", "    batch_wait: 100ms\n    structured_metadata: true\n")
        a = self.agent(cfg).start()
        pods = [self.tree.container("shop", f"api-{p}", "api") for p in range(3)]
        plain = self.tree.container("infra", "dns-0", "dns")
        levels = ["info", "error"] + [f"lvl{i}" for i in range(40)]
        want = {}
        for p, c in enumerate(pods):
            for i in range(120):
                lvl = levels[(i * 7 + p) % len(levels)]
                line = json.dumps({"level": lvl, "msg": f"m {p} {i}", "trace_id": f"t{p}-{i}"})
                c.write(line, stream="stderr" if i % 5 == 0 else "stdout")
                want[(c.pod, f"m {p} {i}")] = (lvl if lvl in ("info", "error") else "other", f"t{p}-{i}",
                                               "stderr" if i % 5 == 0 else "stdout")
            c.write("not json at all")
        for i in range(30):
            plain.write(json.dumps({"level": "lvl9", "msg": i}))
        self.assertTrue(self.receiver.wait_for(3 * 121 + 30, timeout=20))
        time.sleep(0.5)
        streams = {e["labels"] for e in self.receiver.all_entries() if e["label_map"]["namespace"] == "shop"}
        # level in {info, error, other} (or absent for the non-JSON line) x stream kinds x pods
        self.assertLessEqual(len(streams), 3 * (3 * 2 + 1))
        for p, c in enumerate(pods):
            got = self.entries_of(c)
            self.assertEqual(len(got), 121)
            for e in got:
                own = {"pod_uid": c.uid, "container_id": c.container_id}
                if e["line"] == "not json at all":
                    self.assert_labels(e, c)
                    self.assertEqual(e["metadata"], own)
                    continue
                level, trace, stream = want.pop((c.pod, e["line"]))
                self.assert_labels(e, c, stream=stream, level=level)
                self.assertEqual(e["metadata"], dict(own, trace_id=trace))
        self.assertEqual(want, {})
        got = self.entries_of(plain)
        self.assertEqual(sorted(e["line"] for e in got), sorted(json.dumps({"level": "lvl9", "msg": i}) for i in range(30)))
        for e in got:
            self.assert_labels(e, plain)
        self.assertEqual(a.stop(), 0)


class MetricsTest(PipelineTestCase):
    def test_counters_exact_while_the_ring_refuses_entries(self):
        """The output (stdout, its reader stalled) stops taking lines until
        the ring is full, then takes them slowly, so entries the pipeline
        made are refused and read again, over and over: every stage's
        counters still count each entry once (a stage's out is the next
        one's in), and a limit's bucket is charged once per entry (its burst
        is exactly the number of entries: a token taken twice would drop the
        last ones)."""
        import threading
        # Joins of many short lines: the entry a line lets out is much larger
        # than the line, so the ring is met full where the pipeline emits.
        entries = []
        for i in range(600):
            entries.append([f"BEGIN {i}"] + [f" at frame {j} " + "x" * 90 for j in range(30)])
            entries.append([f"single {i}"])
        lines = [l for g in entries for l in g]
        n_entries = len(entries)
        pipeline = f"""pipeline:
  - match: {{namespaces: [shop]}}
    stages:
      - multiline: {{start: '^(BEGIN|single)', timeout: 1s}}
      - json: {{fields: [level]}}
      - limit: {{rate: 0.001, burst: {n_entries}}}
"""
        cfg = base_config(self.tree, self.workdir, "output:\n  stdout:\n    format: json\n"
                          "  shutdown_grace: 1s\nbuffer:\n  max_bytes: 96KiB\n" + pipeline)
        cfg = cfg.replace("collection:\n", "collection:\n  max_line_bytes: 4KiB\n", 1)
        a = self.agent(cfg).start(read_stdout=False)
        c = self.tree.container("shop", "api-0", "api")
        data, expected, ts = [], [], T0
        for group in entries:
            for k, line in enumerate(group):
                data.append(cri_line(line, ts_ns=ts + k))
            expected.append("\n".join(group))
            ts += len(group)
        c.write_raw("".join(data).encode())
        self.wait(lambda: self.metric(a, "loglet_collector_paused") == 1, timeout=20, what="the ring to fill")
        time.sleep(0.5)

        def slow_reader():  # a pipe's worth at a time, so the ring fills again and again
            for raw in a.proc.stdout:
                with a.cond:
                    a.stdout_lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    a.cond.notify_all()
                if len(a.stdout_lines) % 50 == 0:
                    time.sleep(0.05)
        threading.Thread(target=slow_reader, daemon=True).start()
        a.wait_lines(n_entries, timeout=60)
        time.sleep(1.5)  # nothing more may come
        got = [json.loads(l) for l in a.lines()]
        self.assertEqual([e["line"] for e in got], expected)
        for e in got:
            self.assertEqual((e["namespace"], e["pod"], e["container"], e["stream"]), ("shop", "api-0", "api", "stdout"))
            self.assertNotIn("labels", e)
        joined = sum(len(g) for g in entries if len(g) > 1)
        want = {
            ("in", "0", "multiline"): len(lines), ("out", "0", "multiline"): n_entries,
            ("joined", "0", "multiline"): joined, ("errors", "0", "multiline"): 0,
            ("in", "1", "json"): n_entries, ("out", "1", "json"): n_entries, ("errors", "1", "json"): n_entries,
            ("in", "2", "limit"): n_entries, ("out", "2", "limit"): n_entries,
        }
        got_metrics = {k: self.metric(a, f"loglet_pipeline_{k[0]}_total", block="0", stage=k[1], type=k[2])
                       for k in want}
        self.maxDiff = None
        self.assertEqual(got_metrics, want)
        self.assertEqual(self.metric(a, "loglet_pipeline_dropped_total", block="0", stage="2", type="limit",
                                     reason="rate"), 0)
        self.assertEqual(a.stop(), 0)


class StreamBoundTest(PipelineTestCase):
    def test_new_label_sets_beyond_the_bound_keep_the_files_labels(self):
        """labels.max_pipeline_streams: 4. Two files, each with levels from an
        allow-list: the first four label sets seen (file, stream, level) are
        streams; entries that would make a fifth are sent with their file's
        own labels, never dropped, counted, and said once."""
        pipeline = """labels:
  max_pipeline_streams: 4
pipeline:
  - match: {namespaces: [shop]}
    stages:
      - json: {fields: [level, msg]}
      - labels: {level: {values: [a, b, c, d, e]}}
      - output: {source: msg}
"""
        a = self.agent(self.config(pipeline)).start()
        one = self.tree.container("shop", "one-0", "app")
        two = self.tree.container("shop", "two-0", "app")
        admitted, want = set(), {}
        # One file first, then the other, so the order of first sight is known.
        for c, levels in ((one, "abcab"), (two, "aeaec")):
            for i, lvl in enumerate(levels):
                key = (c.pod, lvl)
                if key not in admitted and len(admitted) < 4:
                    admitted.add(key)
                want[f"{c.pod} {i}"] = (c, lvl if key in admitted else None)
                c.write(json.dumps({"level": lvl, "msg": f"{c.pod} {i}"}))
            self.wait(lambda: len(self.entries_of(c)) == len(levels), what=f"{c.pod}'s lines")
        got = self.receiver.all_entries()
        self.assertEqual(sorted(e["line"] for e in got), sorted(want))
        for e in got:
            c, lvl = want[e["line"]]
            if lvl:
                self.assert_labels(e, c, level=lvl)
            else:
                self.assert_labels(e, c)
        # one: a, b, c; two: a (4 sets); two's e and c fall back: 3 entries.
        self.assertEqual(self.metric(a, "loglet_pipeline_streams"), 4)
        self.assertEqual(self.metric(a, "loglet_pipeline_streams_limited_total"), 3)
        self.assertEqual(len(re.findall("reached labels.max_pipeline_streams", a.stderr_text())), 1)
        self.assertEqual(a.stop(), 0)


class StdoutTest(PipelineTestCase):
    def test_stdout_text_and_json_show_labels_and_metadata(self):
        """Without Loki the entries go to stdout with what the pipeline added."""
        pipeline = """pipeline:
  - match: {namespaces: [shop]}
    stages:
      - logfmt: {fields: [level, msg, trace]}
      - labels: {level: {values: [info, error]}}
      - structured_metadata: [trace]
      - output: {source: msg}
"""
        for fmt in ("text", "json"):
            cfg = base_config(self.tree, self.workdir, f"output:\n  stdout:\n    format: {fmt}\n" + pipeline)
            a = self.agent(cfg, name=f"{fmt}.yaml").start()
            c = self.tree.container("shop", f"web-{fmt}", "app")
            c.write('level=error msg="disk full" trace=abc', ts_ns=T0)
            c.write("level=debug msg=quiet", ts_ns=T0 + 1)
            lines = a.wait_lines(2)
            self.assertEqual(a.stop(), 0)
            if fmt == "text":
                self.assertEqual(lines, [f"2024-05-02T10:15:30.000000000Z shop/web-text/app stdout {{level=\"error\"}} disk full",
                                         f"2024-05-02T10:15:30.000000001Z shop/web-text/app stdout {{level=\"other\"}} quiet"])
            else:
                got = [json.loads(l) for l in lines]
                self.assertEqual(got[0]["line"], "disk full")
                self.assertEqual(got[0]["labels"], 'level="error"')
                self.assertEqual(got[0]["metadata"], {"trace": "abc"})
                self.assertEqual(got[1]["labels"], 'level="other"')
                self.assertNotIn("metadata", got[1])


class ConfigTest(PipelineTestCase):
    def test_check_config_errors_and_effective_pipeline(self):
        from harness import run_loglet
        path = os.path.join(self.workdir, "bad.yaml")
        with open(path, "w") as f:
            f.write("pipeline:\n  - match: {namespaces: [shop]}\n    stages:\n      - json: {fields: [a]}\n"
                    "      - drop: {line: '(oops'}\n")
        r = run_loglet(["-config", path, "-check-config"])
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"{path}:5: key pipeline[0].stages[1].drop.line: invalid regular expression", r.stderr)
        with open(path, "w") as f:
            f.write(JAVA_PIPELINE)
        r = run_loglet(["-config", path, "-check-config"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("#       - multiline: {mode: java, max_lines: 500, max_bytes: 262144, timeout: 3000ms}", r.stdout)
        # The printed configuration loads again.
        again = os.path.join(self.workdir, "again.yaml")
        with open(again, "w") as f:
            f.write(r.stdout)
        self.assertEqual(run_loglet(["-config", again, "-check-config"]).returncode, 0)

    def test_pipeline_test_dry_run(self):
        from harness import run_loglet
        path = os.path.join(self.workdir, "p.yaml")
        with open(path, "w") as f:
            f.write(JAVA_PIPELINE)
        lines, entries = fixture("java")
        log = os.path.join(self.workdir, "in.log")
        with open(log, "w") as f:
            for line in lines:
                f.write(cri_line(line, ts_ns=T0))
        r = run_loglet(["-config", path, "-pipeline-test", log, "-namespace", "shop-eu", "-container", "api"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("# match block 0 applies", r.stdout)
        self.assertIn(f"# {len(entries)} entries", r.stdout)
        self.assertIn("2024-05-02T10:15:30.000000000Z stdout " + "\n".join(entries[1]) + "\n", r.stdout)


KIB = 1024
MAX_LINE = 256 * KIB  # collection.max_line_bytes, the default
LONGER_THAN_PIPELINE = """pipeline:
  - match: {namespaces: [shop]}
    stages:
      - drop: {longer_than: 100KiB}
  - match: {namespaces: [edge]}
    stages:
      - drop: {longer_than: 256KiB}
"""


def long_lines(n):
    """(name, content, how) for the longer_than tests: how is 'F' (one CRI
    line), 'P' (16 KiB P pieces, as the runtimes write them) or 'slow' (one
    CRI line written in 40 KiB pieces 50 ms apart, so the agent reads it
    across many reads)."""
    euro = "\u20ac"  # 3 bytes in UTF-8: a cut at max_line_bytes falls inside one
    return [
        ("below", "a" * 10, "F"),
        ("just below", "b" * (n - 1), "F"),
        ("exactly", "c" * n, "F"),
        ("one above", "d" * (n + 1), "F"),
        ("max line", "e" * MAX_LINE, "F"),
        ("max line + 1", "f" * (MAX_LINE + 1), "F"),
        ("600 KiB", "g" * (600 * KIB), "F"),
        ("600 KiB of 3-byte chars", euro * (200 * KIB), "F"),
        ("P pieces below", "h" * (n - 100), "P"),
        ("P pieces above", "i" * (n + 100), "P"),
        ("P pieces 700 KiB", "j" * (700 * KIB), "P"),
        ("slow below", "k" * (n - 5), "slow"),
        ("slow 600 KiB", "l" * (600 * KIB), "slow"),
    ]


def write_line(c, content, how, ts):
    if how == "F":
        c.write(content, ts_ns=ts)
    elif how == "P":
        for at in range(0, len(content), 16 * KIB):
            piece = content[at:at + 16 * KIB]
            c.write(piece, partial=at + 16 * KIB < len(content), ts_ns=ts)
    else:
        data = cri_line(content, ts_ns=ts).encode()
        for at in range(0, len(data), 40 * KIB):
            c.write_raw(data[at:at + 40 * KIB])
            time.sleep(0.05)


def pieces(content):
    """The pieces the agent sends a line longer than max_line_bytes in: cut at
    max_line_bytes, back to a UTF-8 boundary."""
    data, out = content.encode(), []
    while len(data) > MAX_LINE:
        cut = MAX_LINE
        while data[cut] & 0xC0 == 0x80:
            cut -= 1
        out.append(data[:cut].decode())
        data = data[cut:]
    out.append(data.decode())
    return out


class LongerThanTest(PipelineTestCase):
    """drop longer_than judges the whole logical line, however it reaches the
    stages (in pieces of max_line_bytes, CRI P pieces, across reads), drops
    every piece of it, counts it once and acknowledges it."""

    def write_all(self, c, n, ts):
        expected = []
        for k, (name, content, how) in enumerate(long_lines(n)):
            write_line(c, content, how, ts + 2 * k)
            c.write(f"after {name}", ts_ns=ts + 2 * k + 1)  # a stray piece would sit beside it
            if len(content.encode()) <= n:
                expected.append(content)
            expected.append(f"after {name}")
        dropped = sum(1 for _, content, _ in long_lines(n) if len(content.encode()) > n)
        return expected, dropped

    def test_longer_than_drops_whole_lines_counted_once_and_acknowledged(self):
        cfg = self.config(LONGER_THAN_PIPELINE)
        a = self.agent(cfg).start()
        shop = self.tree.container("shop", "api-0", "api")
        edge = self.tree.container("edge", "proxy-0", "proxy")
        want = {}
        for c, n, ts in ((shop, 100 * KIB, T0), (edge, MAX_LINE, T0 + 1000)):
            want[c.pod] = self.write_all(c, n, ts)
        for c in (shop, edge):
            size = os.path.getsize(c.log_path)
            self.wait(lambda: self.positions().get(c.link_path) == size, timeout=20,
                      what=f"the position of {c.pod} at the end of its file")
            expected, _ = want[c.pod]
            self.wait(lambda: len(self.entries_of(c)) >= len(expected), what=f"the lines of {c.pod}")
        time.sleep(1)  # a stray piece sent late would show
        for c, block in ((shop, "0"), (edge, "1")):
            expected, dropped = want[c.pod]
            got = [e["line"] for e in sorted(self.entries_of(c), key=lambda e: e["ts_ns"])]
            self.assertEqual([(len(g), g[:20]) for g in got], [(len(x), x[:20]) for x in expected], c.pod)
            self.assertEqual(got, expected, c.pod)
            self.assertEqual(self.metric(a, "loglet_pipeline_dropped_total", block=block, stage="0", type="drop",
                                         reason="longer_than"), dropped, c.pod)
        self.assertEqual(a.stop(), 0)
        for c in (shop, edge):
            self.assertEqual(self.positions().get(c.link_path), os.path.getsize(c.log_path), c.pod)
        # A restart reads nothing again: dropped lines were acknowledged.
        b = self.agent(cfg, name="b.yaml").start()
        for c in (shop, edge):
            c.write("after restart", ts_ns=T0 + 5000)
        for c in (shop, edge):
            expected, _ = want[c.pod]
            self.wait(lambda: len(self.entries_of(c)) >= len(expected) + 1, what="the line after the restart")
        time.sleep(1)
        for c in (shop, edge):
            expected, _ = want[c.pod]
            got = [e["line"] for e in sorted(self.entries_of(c), key=lambda e: e["ts_ns"])]
            self.assertEqual(got, expected + ["after restart"], c.pod)
        self.assertEqual(b.stop(), 0)

    def test_longer_than_above_max_line_bytes_is_refused_at_load(self):
        from harness import run_loglet
        path = os.path.join(self.workdir, "p.yaml")
        with open(path, "w") as f:
            f.write("pipeline:\n  - match: {namespaces: [shop]}\n    stages:\n      - drop: {line: x}\n"
                    "      - drop: {longer_than: 300KiB}\n")
        r = run_loglet(["-config", path, "-check-config"])
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"{path}:5: key pipeline[0].stages[1].drop.longer_than: 300KiB is more than "
                      "collection.max_line_bytes (256KiB)", r.stderr)
        self.assertIn("set collection.max_line_bytes to at least 300KiB", r.stderr)
        # Raised, it loads; and then a 300 KiB line reaches the stages whole.
        with open(path, "w") as f:
            f.write("collection:\n  max_line_bytes: 300KiB\n"
                    "pipeline:\n  - match: {namespaces: [shop]}\n    stages:\n      - drop: {longer_than: 300KiB}\n")
        r = run_loglet(["-config", path, "-check-config"])
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_dry_run_sends_what_the_agent_sends(self):
        """The same bytes through -pipeline-test and through the agent give the
        same entries: pieces, timestamps, streams and drops."""
        from harness import run_loglet
        from kubelet import cri_timestamp
        cfg = self.config(LONGER_THAN_PIPELINE + "  - match: {namespaces: [plain]}\n    stages:\n"
                          "      - drop: {line: '^never$'}\n")
        a = self.agent(cfg).start()
        files = {}
        for ns, n in (("shop", 100 * KIB), ("edge", MAX_LINE), ("plain", 100 * KIB)):
            c = self.tree.container(ns, f"{ns}-0", "app")
            self.write_all(c, n, T0)
            c.write("last", stream="stderr", ts_ns=T0 + 999)
            files[ns] = c
        for c in files.values():
            size = os.path.getsize(c.log_path)
            self.wait(lambda: self.positions().get(c.link_path) == size, timeout=20, what="the whole file read")
        time.sleep(1)
        self.assertEqual(a.stop(), 0)
        cfg_path = os.path.join(self.workdir, "loglet.yaml")
        for ns, c in files.items():
            r = run_loglet(["-config", cfg_path, "-pipeline-test", c.log_path, "-namespace", ns,
                            "-pod", c.pod, "-container", c.name])
            self.assertEqual(r.returncode, 0, r.stderr)
            dry = [line for line in r.stdout.split("\n") if line and not line.startswith("#")]
            agent = [f"{cri_timestamp(e['ts_ns'])} {e['label_map']['stream']} {e['line']}"
                     for e in self.entries_of(c)]
            self.assertEqual([(len(x), x[:60]) for x in dry], [(len(x), x[:60]) for x in agent], ns)
            self.assertEqual(dry, agent, ns)
            if ns == "plain":  # nothing dropped: the long lines go out in the agent's pieces
                slow = [name for name, _, _ in long_lines(100 * KIB)].index("slow 600 KiB")
                self.assertIn(f"{cri_timestamp(T0 + 2 * slow)} stdout " + pieces("l" * (600 * KIB))[2], dry)
                euro = pieces("\u20ac" * (200 * KIB))
                self.assertEqual([len(p.encode()) for p in euro], [MAX_LINE - 1, MAX_LINE - 1, 600 * KIB - 2 * (MAX_LINE - 1)])


class OrderAndValuesTest(PipelineTestCase):
    """What the stages before a multiline stage set would not reach the joined
    entry, so such an order is refused, alike by -check-config, the dry run and
    the agent; empty label values are left out; settings that would silently
    mean something else are refused."""

    def run_three_ways(self, cfg_path, log):
        from harness import run_loglet
        return [run_loglet(["-config", cfg_path, "-check-config"]),
                run_loglet(["-config", cfg_path, "-pipeline-test", log, "-namespace", "shop"]),
                run_loglet(["-config", cfg_path], timeout=10)]

    def test_labels_and_fields_before_multiline_refused_and_the_order_that_works(self):
        log = os.path.join(self.workdir, "in.log")
        with open(log, "w") as f:
            f.write(cri_line('{"level":"error","msg":"boom"}', ts_ns=T0) + cri_line("  at frame 1", ts_ns=T0 + 1))
        # (stages, the stage the error is about, the error after its line number)
        bad = [
            ("      - json: {fields: [level, msg]}\n      - labels: {level: {values: [info, error]}}\n"
             "      - structured_metadata: [msg]\n      - multiline: {start: '^[{]'}\n", "      - multiline:",
             ": key pipeline[0].stages[3].multiline: multiline must come before stages that set labels or "
             "structured metadata (stages[1] is labels)"),
            ("      - json: {fields: [level]}\n      - multiline: {start: '^[{]'}\n"
             "      - labels: {level: {values: [info, error]}}\n", "      - labels:",
             ": key pipeline[0].stages[2].labels: reads field 'level', which only stages[0] (json) extracts, "
             "before the multiline stage (stages[1])"),
        ]
        for k, (stages, at, want) in enumerate(bad):
            path = os.path.join(self.workdir, f"bad{k}.yaml")
            text = self.config("pipeline:\n  - match: {namespaces: [shop]}\n    stages:\n" + stages)
            with open(path, "w") as f:
                f.write(text)
            line = [n for n, t in enumerate(text.split("\n"), 1) if t.startswith(at)][0]
            for r in self.run_three_ways(path, log):
                self.assertEqual(r.returncode, 1, r.args)
                self.assertIn(f"{path}:{line}{want}", r.stderr, r.args)
        # Multiline first: the joined entry is what the later stages read.
        cfg = self.config("""pipeline:
  - match: {namespaces: [shop]}
    stages:
      - multiline: {start: '^[{]', timeout: 300ms}
      - regex: {expression: '^[{]"level":"(?P<level>[a-z]+)","msg":"(?P<msg>[^"]*)"'}
      - labels: {level: {values: [info, error]}}
      - structured_metadata: [msg]
""")
        a = self.agent(cfg).start()
        c = self.tree.container("shop", "api-0", "api")
        c.write('{"level":"error","msg":"boom"}', ts_ns=T0)
        c.write("  at frame 1", ts_ns=T0 + 1)
        c.write('{"level":"info","msg":"ok"}', ts_ns=T0 + 2)
        self.wait(lambda: len(self.entries_of(c)) == 2, what="2 entries")
        got = sorted(self.entries_of(c), key=lambda e: e["ts_ns"])
        self.assertEqual([e["line"] for e in got], ['{"level":"error","msg":"boom"}\n  at frame 1',
                                                    '{"level":"info","msg":"ok"}'])
        self.assertEqual([e["ts_ns"] for e in got], [T0, T0 + 2])
        self.assert_labels(got[0], c, level="error")
        self.assert_labels(got[1], c, level="info")
        self.assertEqual([e.get("metadata") for e in got], [{"msg": "boom"}, {"msg": "ok"}])
        self.assertEqual(a.stop(), 0)

    def test_empty_label_values_are_left_out(self):
        pipeline = """pipeline:
  - match: {namespaces: [shop]}
    stages:
      - json: {fields: [v, w, msg]}
      - labels: {v: {max_values: 50}, w: {values: [keep], other: ""}}
      - structured_metadata: {meta: v}
      - output: {source: msg}
"""
        a = self.agent(self.config(pipeline)).start()
        c = self.tree.container("shop", "api-0", "api")
        vals = ['a"b', "c\\d", "e\nf", "g\th", "i\x01j", "m\x7fn", "\u00e9\u20ac\U0001F600", "", " ",
                '{x="y"}', "\u2028"]
        # Loki's label syntax has no control characters: they arrive as U+FFFD.
        sent = [v.replace("\x01", "\ufffd").replace("\x7f", "\ufffd") for v in vals]
        for i, v in enumerate(vals):
            c.write(json.dumps({"v": v, "w": "keep" if i % 2 else "drop-me", "msg": f"m{i}"}), ts_ns=T0 + i)
        self.wait(lambda: len(self.entries_of(c)) == len(vals), what="every entry")
        time.sleep(0.5)
        got = sorted(self.entries_of(c), key=lambda e: e["ts_ns"])
        self.assertEqual([e["line"] for e in got], [f"m{i}" for i in range(len(vals))])
        for i, e in enumerate(got):
            extra = {"v": sent[i]} if sent[i] else {}
            if i % 2:
                extra["w"] = "keep"  # out of the list with other: "": no w label
            self.assert_labels(e, c, **extra)
            self.assertEqual(e.get("metadata"), {"meta": vals[i]})
        self.assertEqual(self.receiver.errors(), [])
        self.assertEqual(a.stop(), 0)

    def test_settings_that_would_mean_something_else(self):
        from harness import run_loglet
        path = os.path.join(self.workdir, "p.yaml")
        refused = [
            ("  - match: {}\n    stages:\n      - drop: {longer_than: 0}\n",
             ":4: key pipeline[0].stages[0].drop.longer_than: must be more than 0"),
            ("  - match: {namespaces: [\"[a\"]}\n    stages: []\n",
             ":2: key pipeline[0].match.namespaces: glob '[a' has a [ with no closing ]"),
        ]
        for block, want in refused:
            with open(path, "w") as f:
                f.write("pipeline:\n" + block)
            r = run_loglet(["-config", path, "-check-config"])
            self.assertEqual(r.returncode, 1, block)
            self.assertIn(path + want, r.stderr)
        # A field no stage sets: loaded, with a warning naming where.
        with open(path, "w") as f:
            f.write("pipeline:\n  - match: {}\n    stages:\n      - labels: {level: {values: [a], other: \"\"}}\n"
                    "      - structured_metadata: [trace_id]\n")
        r = run_loglet(["-config", path, "-check-config"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"{path}:5: key pipeline[0].stages[1].structured_metadata: reads field 'trace_id', which no "
                      "earlier stage of this block extracts", r.stderr)
        self.assertIn(f"{path}:4: key pipeline[0].stages[0].labels: reads field 'level'", r.stderr)
        self.assertIn('#       - labels: {level: {source: "level", values: ["a"], other: ""}}', r.stdout)


class LimitWaitStopTest(PipelineTestCase):
    def test_sigterm_while_paused_keeps_the_held_join_whole(self):
        """A limit (action: wait) paused the file while a join is held whose
        next line is on disk, unread: a stop keeps the join held (the file
        acknowledged at its first line) instead of sending half of it, and the
        next start joins it whole. Every entry once, whole, in order."""
        pipeline = """pipeline:
  - match: {pods: [slow-*]}
    stages:
      - multiline: {start: '^S', timeout: 30s}
      - limit: {rate: 0.05, burst: 2, action: wait}
"""
        cfg = self.config(pipeline)
        agent = self.agent(cfg).start()
        slow = self.tree.container("shop", "slow-0", "app")
        offsets = []
        for i in range(6):
            offsets.append(os.path.getsize(slow.log_path) if os.path.exists(slow.log_path) else 0)
            slow.write(f"S {i}", ts_ns=T0 + 10 * i)
            slow.write(f" c {i}", ts_ns=T0 + 10 * i + 1)
        want = [f"S {i}\n c {i}" for i in range(6)]
        for run, upto in (("a", 2), ("b", 4)):
            if run == "b":
                agent = self.agent(cfg, name="b.yaml").start()
            # The burst sends two joins; the line starting the third empties the
            # bucket: the file pauses with "S n" held and " c n" unread.
            self.wait(lambda: len(self.entries_of(slow)) == upto, what=f"{upto} entries")
            self.wait(lambda: self.metric(agent, "loglet_pipeline_in_total", block="0", stage="0") == 5,
                      what="the paused file")
            time.sleep(0.5)
            self.assertEqual(agent.stop(), 0)
            got = sorted(self.entries_of(slow), key=lambda e: e["ts_ns"])
            self.assertEqual([e["line"] for e in got], want[:upto])
            self.assertEqual(self.positions().get(slow.link_path), offsets[upto])
            self.assertIn("kept 1 held multiline join of files paused by a limit", agent.stderr_text())
        # Unlimited, the rest goes, the last join at the stop (nothing left unread).
        agent = self.agent(cfg.replace("rate: 0.05, burst: 2", "rate: 1000"), name="c.yaml").start()
        self.wait(lambda: len(self.entries_of(slow)) == 5, what="5 entries")
        self.assertEqual(agent.stop(), 0)
        got = sorted(self.entries_of(slow), key=lambda e: e["ts_ns"])
        self.assertEqual([e["line"] for e in got], want)
        self.assertEqual([e["ts_ns"] for e in got], [T0 + 10 * i for i in range(6)])
        for e in got:
            self.assert_labels(e, slow)
        self.assertEqual(self.positions().get(slow.link_path), os.path.getsize(slow.log_path))


if __name__ == "__main__":
    unittest.main()
