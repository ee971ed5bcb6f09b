#!/usr/bin/python3
"""End-to-end oracle for loglet: a node writer that knows every line it put on
disk, and a checker that reads what the agent delivered and says, line by
line, what went wrong.

The writer (a subprocess: `checker.py write SPEC.json`) plays the container
runtime and the kubelet, laid out exactly as tests/tools/kubelet.py does:

    <root>/pods/<ns>_<pod>_<uid>/<container>/<restart>.log        the runtime writes here
    <root>/containers/<pod>_<ns>_<container>-<id>.log -> that file  the kubelet's symlink

  * the runtime writes CRI lines in batches (one write() per container per
    tick); lines longer than 16 KiB are cut into P pieces as containerd does,
    or (kind "b") written as one physical line, as containerd does with
    max_container_log_line_size = -1;
  * the kubelet, from its own thread, rotates a running container's file
    once it exceeds rotate_bytes: removes excess rotated files (keeps
    max_files - 2), gzips the older uncompressed ones (<f>.tmp, rename to
    <f>.gz, unlink <f>), renames 0.log to 0.log.<YYYYMMDD-HHMMSS> and asks the
    runtime to reopen — and the runtime keeps writing into the renamed file
    for a few ticks before it does (containerd's ReopenContainerLog);
  * pods are created and deleted (symlinks removed, then the pod directory
    rmtree'd, delete_grace seconds after its containers stopped); containers
    restart (1.log beside 0.log, a new symlink; the kubelet keeps one dead
    container, so restart N removes restart N-2's file and link).

Every line is `id=<writer>:<seq> ns=<ns> pod=<pod> c=<container> k=<kind> ...`
and the rest of it is a pure function of (writer, seq, kind): the journal the
writer keeps (one record per batch, per rotation, per pod event) is all the
checker needs to know every line's bytes, pod, stream, timestamp and the file
generation it went to. Pieces of long lines carry `<writer:seq>` tokens, so
every piece the agent emits can be attributed even without the head.

Kinds (lower case: stdout, upper case: stderr):
    n  plain line                    p  CRI partial pieces (P...P F) to be joined
    u  invalid UTF-8 (the agent must replace it as Python's decode('utf-8',
       'replace') does: one U+FFFD per maximal ill-formed subpart)
    s  longer than max_line_bytes, written in 16 KiB P pieces
    b  longer than max_line_bytes, one physical CRI line
A line longer than max_line_bytes must arrive as pieces of exactly
max_line_bytes (the last one shorter) whose concatenation is the line.

The checker (Checker.check) takes the agent's output as Entry objects — from
the independent Loki receiver (receiver_entries) or from the agent's stdout
(StdoutSink, text or JSON) — and reports by id: lost, duplicated (a copy is
justified only when a fault — an agent kill, a receiver cut — lies between it
and the previous copy), corrupted (bytes or timestamp differ), wrong-labelled
(never counted as delivered), unknown, torn (the unterminated last stdout
line of a SIGKILLed agent) and, if asked, out of order.

Only Debian's python3 and its standard library (plus python3-snappy through
tests/tools/loki_receiver.py for the Loki side).
"""
import array
import bisect
import collections
import datetime
import gzip
import hashlib
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("LOGLET_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
TOOLS_DIR = os.path.join(SOURCE_DIR, "tests", "tools")
if TOOLS_DIR not in sys.path:
    sys.path.insert(0, TOOLS_DIR)
LOGLET_BIN = os.environ.get("LOGLET_BIN", os.path.join(SOURCE_DIR, "build", "loglet"))

MAX_LINE_BYTES = 256 * 1024        # collection.max_line_bytes default
RUNTIME_SPLIT = 16 * 1024          # containerd cuts longer lines into P pieces of this size
MAX_HELD_BYTES = 1 << 30           # collection.max_held_bytes default (per the spec)
# A line delivered this long before a SIGKILL may rightly be sent again by the next
# run: positions_sync_period (1 s default) plus slack for a loaded machine (the
# acknowledgement follows the receiver's answer, the save the next loop turn).
# Anything older was saved: sending it again means positions were not.
INFLIGHT_WINDOW = 3.0
SCALE = float(os.environ.get("LOGLET_E2E_SCALE", "1") or 1)


def sleep_until(t):
    """Sleeps until wall-clock time t (returns at once if it passed)."""
    left = t - time.time()
    if left > 0:
        time.sleep(left)


def scaled(seconds, minimum=1.0):
    """A spec'd duration, shortened by LOGLET_E2E_SCALE for local runs (never below minimum)."""
    return max(minimum, seconds * SCALE)


# ---------------------------------------------------------------------------
# Line codec: what a line id says, written and expected
# ---------------------------------------------------------------------------

def _make_fill():
    rng = random.Random(20240611)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_=+*/!?()[]{}#%"
    return "".join(rng.choice(alphabet) for _ in range(16384))


FILL = _make_fill()                # no '<', '>', '\\', '"', '&': tokens and JSON stay unambiguous
INVALID_UTF8 = (b"\xff", b"\xfe\xfe", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"\xf0\x9f\x98", b"\x80",
                b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe0\x80\xaf", b"\xf8\x88\x80\x80\x80")
VALID_MULTIBYTE = "é漢😀".encode()
BASE_KINDS = "npusb"
ID_RX = re.compile(rb"^id=(\d+):(\d+) ")
TOKEN_RX = re.compile(rb"<(\d+):(\d+)>")


def _hash(wid, seq):
    x = (seq * 0x9E3779B1 + wid * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x ^= x >> 12
    return x


def kind_stream(kind):
    return "stderr" if kind.isupper() else "stdout"


def line_content(wid, seq, kind, ns, pod, cname, fmin=20, fmax=120, max_line=MAX_LINE_BYTES):
    """The bytes the application printed for this line (before CRI/docker framing)."""
    h = _hash(wid, seq)
    base = kind.lower()
    head = f"id={wid}:{seq} ns={ns} pod={pod} c={cname} k={kind} "
    if base == "n":
        n = fmin + h % (fmax - fmin + 1)
        off = (h >> 9) % 8192
        return (head + FILL[off:off + n]).encode()
    if base == "p":
        return (head + f"<{wid}:{seq}>" * (3 + h % 6)).encode()
    if base == "u":
        off = (h >> 9) % 8192
        return (head.encode() + VALID_MULTIBYTE + INVALID_UTF8[h % len(INVALID_UTF8)] + b" x"
                + INVALID_UTF8[(h >> 5) % len(INVALID_UTF8)] + b" " + FILL[off:off + 20 + h % 40].encode())
    if base in "sb":
        total = max_line + 1 + h % (2 * max_line if base == "s" else max_line)
        unit = f"<{wid}:{seq}>"
        body = head + unit * ((total - len(head)) // len(unit) + 1)
        return body[:total].encode()
    raise ValueError("unknown kind %r" % kind)


def expected_units(raw, kind, max_line=MAX_LINE_BYTES):
    """What the agent must deliver for a line: one entry, or max_line_bytes pieces."""
    if kind.lower() == "u":
        raw = raw.decode("utf-8", "replace").encode("utf-8")
    if len(raw) <= max_line:
        return [raw]
    return [raw[i:i + max_line] for i in range(0, len(raw), max_line)]


def _cri_pieces(wid, seq, kind, raw):
    base = kind.lower()
    if base == "s":
        return [raw[i:i + RUNTIME_SPLIT] for i in range(0, len(raw), RUNTIME_SPLIT)]
    if base == "p":
        h = _hash(wid, seq)
        unit_len = len(f"<{wid}:{seq}>")
        k = 3 + h % 6
        head_len = len(raw) - k * unit_len
        m = min(2 + (h >> 4) % 3, k)
        cuts = [head_len + unit_len * round(k * j / m) for j in range(1, m)]
        bounds = [0] + cuts + [len(raw)]
        return [raw[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
    return [raw]


def frame_cri(ts, wid, seq, kind, raw):
    stream = kind_stream(kind).encode()
    pieces = _cri_pieces(wid, seq, kind, raw)
    prefix = ts.encode() + b" " + stream
    out = [prefix + b" P " + p + b"\n" for p in pieces[:-1]]
    out.append(prefix + b" F " + pieces[-1] + b"\n")
    return b"".join(out)


def frame_docker(ts, kind, raw):
    return (json.dumps({"log": raw.decode("utf-8") + "\n", "stream": kind_stream(kind), "time": ts},
                       separators=(",", ":")) + "\n").encode()


def cri_timestamp(t_ns):
    sec, ns = divmod(t_ns, 1_000_000_000)
    return datetime.datetime.fromtimestamp(sec, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + ".%09dZ" % ns


def parse_rfc3339_ns(s):
    """'2024-01-02T03:04:05.123456789Z' (any fraction, Z or +hh:mm) -> ns since the epoch, or None."""
    m = re.match(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        return None
    y, mo, d, hh, mi, ss = (int(m.group(i)) for i in range(1, 7))
    frac = int((m.group(7) or "0").ljust(9, "0"))
    dt = datetime.datetime(y, mo, d, hh, mi, ss, tzinfo=datetime.timezone.utc)
    sec = int(dt.timestamp())
    if m.group(8) != "Z":
        sign = 1 if m.group(8)[0] == "+" else -1
        sec -= sign * (int(m.group(8)[1:3]) * 3600 + int(m.group(8)[4:6]) * 60)
    return sec * 1_000_000_000 + frac


# ---------------------------------------------------------------------------
# Journal (the writer's ground truth, on disk) and Truth (it, loaded)
# ---------------------------------------------------------------------------

class Journal:
    """Append-only record of what was written. Records (space separated):
        H wid fmin fmax max_line                          writer header
        C cidx wid ns pod name uid restart cid link log fmt t    a container started
        W cidx first_seq kinds ts_ns gen t                lines first_seq.. (one kind char each)
        R cidx rotated_path t | O cidx gen t | Z cidx gz t | X cidx path t   rotate / reopen / gzip / delete
        T cidx t (stopped) | D cidx t (its pod deleted) | K cidx path t (its file removed by GC)
        U cidx t (copytruncate) | E t (writer ended)
    """

    def __init__(self, path):
        self.path = path
        self.f = open(path, "a", buffering=1 << 16)
        self.lock = threading.Lock()

    def rec(self, *fields):
        with self.lock:
            self.f.write(" ".join(str(x) for x in fields) + "\n")

    def flush(self):
        with self.lock:
            self.f.flush()

    def close(self):
        with self.lock:
            self.f.flush()
            self.f.close()


class ContainerInfo:
    __slots__ = ("cidx", "wid", "ns", "pod", "name", "uid", "restart", "cid", "link", "log", "fmt", "t")

    def __init__(self, cidx, wid, ns, pod, name, uid, restart, cid, link, log, fmt, t):
        self.cidx, self.wid, self.ns, self.pod, self.name = cidx, wid, ns, pod, name
        self.uid, self.restart, self.cid, self.link, self.log, self.fmt, self.t = uid, restart, cid, link, log, fmt, t

    def expected_labels(self, stream):
        if self.fmt == "docker":
            return {"filename": self.link, "stream": stream}
        return {"namespace": self.ns, "pod": self.pod, "container": self.name, "stream": stream}

    def __repr__(self):
        return f"{self.ns}/{self.pod}/{self.name}#{self.restart}"


class LineInfo:
    __slots__ = ("wid", "seq", "cidx", "kind", "ts_ns", "gen", "t")

    def __init__(self, wid, seq, cidx, kind, ts_ns, gen, t):
        self.wid, self.seq, self.cidx, self.kind, self.ts_ns, self.gen, self.t = wid, seq, cidx, kind, ts_ns, gen, t


class Truth:
    """Every line written, from one or more journals."""

    def __init__(self):
        self.containers = {}
        self.headers = {}      # wid -> (fmin, fmax, max_line)
        self._cidx = {}        # wid -> array of cidx by seq (-1: never written)
        self._kind = {}        # wid -> bytearray of kind chars by seq
        self._batch = {}       # wid -> array of batch index by seq
        self.batches = []      # (ts_ns, gen, t)
        self.events = []       # (type, cidx, arg, t)
        self.t0 = None
        self._gone = None      # (cidx, generation) whose file was gone at the end; cidx: all of it

    @classmethod
    def load(cls, paths):
        truth = cls()
        for p in paths:
            truth._load(p)
        return truth

    def _load(self, path):
        with open(path) as f:
            for line in f:
                r = line.split()
                if not r:
                    continue
                typ = r[0]
                if typ == "W":
                    cidx, first, kinds, ts_ns, gen, t = int(r[1]), int(r[2]), r[3], int(r[4]), int(r[5]), float(r[6])
                    wid = self.containers[cidx].wid
                    self._add_lines(wid, cidx, first, kinds, ts_ns, gen, t)
                elif typ == "C":
                    c = ContainerInfo(int(r[1]), int(r[2]), r[3], r[4], r[5], r[6], int(r[7]), r[8], r[9], r[10],
                                      r[11], float(r[12]))
                    self.containers[c.cidx] = c
                    if self.t0 is None or c.t < self.t0:
                        self.t0 = c.t
                elif typ == "H":
                    self.headers[int(r[1])] = (int(r[2]), int(r[3]), int(r[4]))
                elif typ == "E":
                    self.events.append(("E", None, None, float(r[1])))
                else:
                    arg = r[2] if len(r) > 3 else None
                    self.events.append((typ, int(r[1]), arg, float(r[-1])))

    def _add_lines(self, wid, cidx, first, kinds, ts_ns, gen, t):
        ca = self._cidx.setdefault(wid, array.array("q"))
        ka = self._kind.setdefault(wid, bytearray())
        ba = self._batch.setdefault(wid, array.array("q"))
        end = first + len(kinds)
        if len(ca) < end:
            grow = end - len(ca)
            ca.extend([-1] * grow)
            ka.extend(b"?" * grow)
            ba.extend([-1] * grow)
        self.batches.append((ts_ns, gen, t))
        b = len(self.batches) - 1
        kb = kinds.encode()
        for i in range(len(kinds)):
            ca[first + i] = cidx
            ba[first + i] = b
        ka[first:end] = kb

    def line(self, wid, seq):
        ca = self._cidx.get(wid)
        if ca is None or seq >= len(ca) or seq < 0 or ca[seq] < 0:
            return None
        ts_ns, gen, t = self.batches[self._batch[wid][seq]]
        return LineInfo(wid, seq, ca[seq], chr(self._kind[wid][seq]), ts_ns, gen, t)

    def keys(self):
        for wid, ca in self._cidx.items():
            for seq in range(len(ca)):
                if ca[seq] >= 0:
                    yield wid, seq

    def count(self):
        return sum(sum(1 for x in ca if x >= 0) for ca in self._cidx.values())

    def content(self, info):
        c = self.containers[info.cidx]
        fmin, fmax, max_line = self.headers.get(info.wid, (20, 120, MAX_LINE_BYTES))
        return line_content(info.wid, info.seq, info.kind, c.ns, c.pod, c.name, fmin, fmax, max_line)

    def units_count(self, max_line=MAX_LINE_BYTES):
        """How many entries the agent must deliver, long lines counting one per piece."""
        n = 0
        for wid, ka in self._kind.items():
            ca = self._cidx[wid]
            for seq in range(len(ka)):
                if ca[seq] < 0:
                    continue
                k = chr(ka[seq]).lower()
                if k in "sb":
                    n += len(expected_units(self.content(self.line(wid, seq)), "s", max_line))
                else:
                    n += 1
        return n

    def _compute_gone(self):
        gone = set()
        rotated = collections.defaultdict(list)
        for typ, cidx, arg, _ in self.events:
            if typ == "R":
                rotated[cidx].append(arg)
            elif typ == "X":            # the kubelet deleted a rotated file: its generation is gone
                base = arg[:-3] if arg.endswith(".gz") else arg
                if base in rotated[cidx]:
                    gone.add((cidx, rotated[cidx].index(base)))
            elif typ == "K":            # container GC removed its current file
                gone.add((cidx, len(rotated[cidx])))
            elif typ == "D":            # the pod's directory went
                gone.add(cidx)
        self._gone = gone

    def gone_at(self, info):
        """When the file this line went to was deleted (its generation, its
        container's current file, or its pod's directory), or None."""
        times = []
        rotated = collections.defaultdict(list)
        for typ, cidx, arg, t in self.events:
            if typ == "R":
                rotated[cidx].append(arg)
            if cidx != info.cidx:
                continue
            if typ == "X":
                base = arg[:-3] if arg.endswith(".gz") else arg
                if base in rotated[cidx] and rotated[cidx].index(base) == info.gen:
                    times.append(t)
            elif typ == "K" and len(rotated[cidx]) == info.gen:
                times.append(t)
            elif typ == "D":
                times.append(t)
        return min(times) if times else None

    def on_disk_at_end(self, info):
        """Was the file this line went to still there when the writer ended?"""
        if self._gone is None:
            self._compute_gone()
        return info.cidx not in self._gone and (info.cidx, info.gen) not in self._gone

    def event_counts(self, since=None, until=None):
        out = collections.Counter()
        for typ, _, _, t in self.events:
            if (since is None or t >= since) and (until is None or t <= until):
                out[typ] += 1
        return out


# ---------------------------------------------------------------------------
# The node writer (runs in its own process)
# ---------------------------------------------------------------------------

DEFAULT_SPEC = dict(
    wid=0, seed=1, root=None, journal=None,
    namespaces=["e2e-a", "e2e-b", "e2e-c"], pods=8, containers=["app", "sidecar"], pod_prefix=None,
    mode="rate",                  # "rate": `rate` lines/s over the running containers; "quiet": each one
    rate=1000.0,                  # line every quiet_interval (uniform) seconds
    quiet_interval=[0.2, 2.0],
    hot_pods=0, hot_factor=1.0,   # the first hot_pods pods write hot_factor x as much and are never churned
    filler=[20, 120],
    p_partial=0.0, p_utf8=0.0, p_stderr=0.2, long_per_s=0.0, long_physical_frac=0.5,
    rotate=True, rotate_bytes=1 << 20, max_files=5, compress=True, kubelet_period=0.25,
    late_ticks=[0, 3],            # ticks the runtime keeps writing into a renamed file before reopening
    churn_every=0.0, delete_grace=1.0, deletes=True,
    restart_every=0.0,
    duration=0.0, tick=0.01, fmt="cri",
)


class RtContainer:
    """A container as its runtime and the kubelet see it (writer process only)."""

    def __init__(self, node, pod, name, restart, weight):
        self.node, self.pod, self.name, self.restart, self.weight = node, pod, name, restart, weight
        self.cidx = node.next_cidx()
        ns, pname, uid = pod.ns, pod.name, pod.uid
        self.container_id = hashlib.sha256(f"{ns}/{pname}/{name}/{uid}/{restart}".encode()).hexdigest()
        self.dir = os.path.join(pod.dir, name)
        self.log_path = os.path.join(self.dir, f"{restart}.log")
        self.link_path = os.path.join(node.root, "containers", f"{pname}_{ns}_{name}-{self.container_id}.log")
        os.makedirs(self.dir, exist_ok=True)
        self.fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.gen = 0
        self.rotated = []          # rotated names, oldest first (the kubelet's view)
        self.running = True
        self.carry = 0.0
        self.next_due = 0.0
        self.reopen_at = None      # tick count left before the runtime reopens (None: no request)
        self.reopen_done = threading.Event()
        self.force_rotate = False
        self.last_stamp = None
        node.journal.rec("C", self.cidx, node.wid, ns, pname, name, uid, restart, self.container_id,
                         self.link_path, self.log_path, "cri", repr(time.time()))
        rel = os.path.relpath(self.log_path, os.path.dirname(self.link_path))
        os.symlink(rel, self.link_path)

    def stop(self):
        if self.running:
            self.running = False
            os.close(self.fd)
            self.reopen_at = None
            self.reopen_done.set()
            self.node.journal.rec("T", self.cidx, repr(time.time()))


class RtPod:
    def __init__(self, node, ns, name):
        self.ns, self.name, self.uid = ns, name, str(uuid.UUID(int=node.rng.getrandbits(128)))
        self.dir = os.path.join(node.root, "pods", f"{ns}_{name}_{self.uid}")
        self.containers = []       # every RtContainer ever started in it
        self.created = time.monotonic()
        self.delete_at = None


class Node:
    """The writer: runtime loop in the main thread, kubelet in its own thread."""

    def __init__(self, spec):
        self.spec = dict(DEFAULT_SPEC, **spec)
        s = self.spec
        self.root, self.wid = s["root"], int(s["wid"])
        self.rng = random.Random(int(s["seed"]) * 7919 + self.wid)
        self.krng = random.Random(int(s["seed"]) * 104729 + self.wid)
        self.journal = Journal(s["journal"])
        self.journal.rec("H", self.wid, s["filler"][0], s["filler"][1], MAX_LINE_BYTES)
        self.lock = threading.RLock()
        self.pods = []             # live pods (not deleted)
        self.seq = 0
        self._cidx = 0
        self._pod_n = 0
        self.stats = collections.Counter()
        self.stopping = False
        self.cmds = queue.Queue()
        self.out_lock = threading.Lock()
        self.force_rotate_all = False
        os.makedirs(os.path.join(self.root, "containers"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "pods"), exist_ok=True)

    def next_cidx(self):
        self._cidx += 1
        return self.wid * 1_000_000 + self._cidx

    def emit(self, **ev):
        with self.out_lock:
            sys.stdout.write(json.dumps(ev) + "\n")
            sys.stdout.flush()

    # -- pods and containers (runtime side; caller holds the lock) --
    def create_pod(self):
        s = self.spec
        n = self._pod_n
        self._pod_n += 1
        ns = s["namespaces"][n % len(s["namespaces"])]
        prefix = s["pod_prefix"] or f"w{self.wid}-pod"
        pod = RtPod(self, ns, f"{prefix}-{n}")
        pod.pinned = n < s["hot_pods"]
        for name in s["containers"]:
            c = RtContainer(self, pod, name, 0, s["hot_factor"] if pod.pinned else 1.0)
            c.next_due = time.monotonic() + self.rng.uniform(*s["quiet_interval"])
            pod.containers.append(c)
        self.pods.append(pod)
        self.stats["pods_created"] += 1
        return pod

    def terminate_pod(self, pod):
        for c in pod.containers:
            c.stop()
        pod.delete_at = time.monotonic() + self.spec["delete_grace"]
        self.stats["pods_terminated"] += 1

    def restart_container(self, c):
        c.stop()
        nc = RtContainer(self, c.pod, c.name, c.restart + 1, c.weight)
        c.pod.containers.append(nc)
        self.stats["restarts"] += 1
        # The kubelet keeps one dead container per container name: older ones are removed.
        for old in c.pod.containers:
            if old.name == c.name and old.restart <= nc.restart - 2 and not getattr(old, "removed", False):
                old.removed = True
                for p in (old.link_path, old.log_path):
                    if os.path.lexists(p):
                        os.unlink(p)
                        self.journal.rec("K", old.cidx, p, repr(time.time()))
        return nc

    def running(self):
        return [c for p in self.pods if p.delete_at is None for c in p.containers if c.running]

    # -- the kubelet --
    def kubelet_loop(self):
        while not self.stopping:
            time.sleep(self.spec["kubelet_period"])
            try:
                self.kubelet_pass()
            except Exception as e:  # a bug in the model must be seen, not hang the test
                self.emit(ev="error", where="kubelet", error=repr(e))
                raise

    def kubelet_pass(self):
        now = time.monotonic()
        waits = []
        with self.lock:
            for pod in list(self.pods):
                if pod.delete_at is not None and now >= pod.delete_at and self.spec["deletes"]:
                    self.delete_pod(pod)
            force_all = self.force_rotate_all
            self.force_rotate_all = False
            for c in self.running():
                if force_all:
                    c.force_rotate = True
                if c.reopen_at is not None:
                    continue
                if not (c.force_rotate or (self.spec["rotate"] and self._size(c) > self.spec["rotate_bytes"])):
                    continue
                stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
                rotated = f"{c.log_path}.{stamp}"
                if stamp == c.last_stamp or os.path.exists(rotated) or os.path.exists(rotated + ".gz"):
                    continue   # the kubelet never rotates one file twice in a second: next pass
                self.rotate(c, rotated, stamp)
                waits.append(c)
        for c in waits:        # ReopenContainerLog is synchronous: wait for the runtime
            if not c.reopen_done.wait(10):
                self.emit(ev="error", where="kubelet", error=f"runtime never reopened {c.log_path}")

    @staticmethod
    def _size(c):
        try:
            return os.stat(c.log_path).st_size
        except OSError:
            return 0

    def rotate(self, c, rotated, stamp):
        s = self.spec
        now = repr(time.time())
        # removeExcessLogs: keep max_files - 2 rotated files before this rotation.
        keep = max(0, s["max_files"] - 2)
        while len(c.rotated) > keep:
            old = c.rotated.pop(0)
            if os.path.exists(old):
                os.unlink(old)
            self.journal.rec("X", c.cidx, old, now)
            self.stats["deleted_rotated"] += 1
        # compressLog for every rotated file not compressed yet.
        if s["compress"]:
            for i, old in enumerate(c.rotated):
                if old.endswith(".gz") or not os.path.exists(old):
                    continue
                with open(old, "rb") as src, open(old + ".tmp", "wb") as raw:
                    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                os.rename(old + ".tmp", old + ".gz")
                os.unlink(old)
                c.rotated[i] = old + ".gz"
                self.journal.rec("Z", c.cidx, old + ".gz", now)
                self.stats["gzips"] += 1
        # rotateLatestLog: rename, then ask the runtime to reopen.
        os.rename(c.log_path, rotated)
        c.rotated.append(rotated)
        c.last_stamp = stamp
        c.force_rotate = False
        c.reopen_done.clear()
        c.reopen_at = self.krng.randint(*s["late_ticks"])
        self.journal.rec("R", c.cidx, rotated, now)
        self.stats["rotations"] += 1

    def delete_pod(self, pod):
        for c in pod.containers:
            if os.path.lexists(c.link_path):
                os.unlink(c.link_path)
        shutil.rmtree(pod.dir, ignore_errors=True)
        self.pods.remove(pod)
        for c in pod.containers:
            self.journal.rec("D", c.cidx, repr(time.time()))
        self.stats["pods_deleted"] += 1

    # -- the runtime --
    def _reopen(self, c):
        os.close(c.fd)
        c.fd = os.open(c.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        c.gen += 1
        c.reopen_at = None
        self.journal.rec("O", c.cidx, c.gen, repr(time.time()))
        c.reopen_done.set()

    def _kind(self):
        s, r = self.spec, self.rng.random()
        if r < s["p_partial"]:
            base = "p"
        elif r < s["p_partial"] + s["p_utf8"]:
            base = "u"
        else:
            base = "n"
        return base.upper() if self.rng.random() < s["p_stderr"] else base

    def write_batch(self, c, n, longs=0):
        s = self.spec
        ts_ns = time.time_ns()
        ts = cri_timestamp(ts_ns)
        first = self.seq
        kinds = []
        parts = []
        fmin, fmax = s["filler"]
        p, ns, name = c.pod.name, c.pod.ns, c.name
        for i in range(n + longs):
            seq = self.seq
            self.seq += 1
            if i >= n:
                k = "b" if self.rng.random() < s["long_physical_frac"] else "s"
                if self.rng.random() < s["p_stderr"]:
                    k = k.upper()
            else:
                k = self._kind()
            raw = line_content(self.wid, seq, k, ns, p, name, fmin, fmax)
            parts.append(frame_cri(ts, self.wid, seq, k, raw))
            kinds.append(k)
        data = b"".join(parts)
        view = memoryview(data)
        while view:
            w = os.write(c.fd, view)
            view = view[w:]
        self.journal.rec("W", c.cidx, first, "".join(kinds), ts_ns, c.gen, repr(time.time()))
        self.stats["lines"] += len(kinds)
        self.stats["bytes"] += len(data)
        if c.reopen_at is not None:
            self.stats["late_lines"] += len(kinds)

    def command(self, cmd):
        op = cmd.get("cmd")
        if op == "set":
            for k, v in cmd.items():
                if k != "cmd":
                    if k not in self.spec:
                        self.emit(ev="error", where="command", error=f"unknown spec key {k}")
                    self.spec[k] = v
        elif op == "create_pods":
            with self.lock:
                for _ in range(int(cmd.get("n", 1))):
                    self.create_pod()
        elif op == "rotate_all":
            with self.lock:
                self.force_rotate_all = True
        elif op == "restart":
            with self.lock:
                cs = self.running()
                for c in self.rng.sample(cs, min(len(cs), int(cmd.get("n", 1)))):
                    self.restart_container(c)
        elif op == "stats":
            self.journal.flush()
            self.emit(ev="stats", tag=cmd.get("tag"), seq=self.seq, **self.stats)
        elif op == "stop":
            self.stopping = True
        else:
            self.emit(ev="error", where="command", error=f"unknown command {op}")

    def stdin_loop(self):
        for line in sys.stdin:
            line = line.strip()
            if line:
                self.cmds.put(json.loads(line))
        self.cmds.put({"cmd": "stop"})

    def run(self):
        s = self.spec
        with self.lock:
            for _ in range(s["pods"]):
                self.create_pod()
        self.journal.flush()
        threading.Thread(target=self.stdin_loop, daemon=True).start()
        kubelet = threading.Thread(target=self.kubelet_loop, daemon=True)
        kubelet.start()
        self.emit(ev="ready", wid=self.wid)
        t0 = last = time.monotonic()
        next_churn = t0 + s["churn_every"] if s["churn_every"] else None
        next_restart = t0 + s["restart_every"] if s["restart_every"] else None
        long_carry = 0.0
        while not self.stopping:
            while True:
                try:
                    self.command(self.cmds.get_nowait())
                except queue.Empty:
                    break
            if self.stopping:
                break
            now = time.monotonic()
            if s["duration"] and now - t0 >= s["duration"]:
                break
            dt, last = now - last, now
            with self.lock:
                if s["churn_every"] and next_churn is None:
                    next_churn = now + s["churn_every"]
                if s["churn_every"] and now >= next_churn:
                    next_churn = now + s["churn_every"]
                    live = [p for p in self.pods if p.delete_at is None and not p.pinned]
                    if live:
                        self.terminate_pod(min(live, key=lambda p: p.created))
                    self.create_pod()
                if s["restart_every"] and next_restart is None:
                    next_restart = now + s["restart_every"]
                if s["restart_every"] and now >= next_restart:
                    next_restart = now + s["restart_every"]
                    cs = self.running()
                    if cs:
                        self.restart_container(self.rng.choice(cs))
                running = self.running()
                longs = {}
                long_carry += s["long_per_s"] * dt
                while long_carry >= 1 and running:
                    long_carry -= 1
                    c = self.rng.choice(running)
                    longs[c] = longs.get(c, 0) + 1
                total_w = sum(c.weight for c in running) or 1.0
                for c in running:
                    if s["mode"] == "quiet":
                        n = 0
                        if now >= c.next_due:
                            n = 1
                            c.next_due = now + self.rng.uniform(*s["quiet_interval"])
                    else:
                        c.carry += s["rate"] * dt * c.weight / total_w
                        n = int(c.carry)
                        c.carry -= n
                    if n or c in longs:
                        self.write_batch(c, n, longs.get(c, 0))
                    if c.reopen_at is not None:   # the runtime handles the kubelet's reopen request
                        if c.reopen_at <= 0:
                            self._reopen(c)
                        else:
                            c.reopen_at -= 1
            self.journal.flush()
            time.sleep(max(0.0, s["tick"] - (time.monotonic() - now)))
        self.stopping = True
        deadline = time.monotonic() + 10
        while kubelet.is_alive() and time.monotonic() < deadline:
            with self.lock:             # a rotation in progress waits for its reopen
                for c in self.running():
                    if c.reopen_at is not None:
                        self._reopen(c)
            kubelet.join(0.05)
        with self.lock:
            for c in self.running():
                if c.reopen_at is not None:
                    self._reopen(c)
        self.journal.rec("E", repr(time.time()))
        self.journal.close()
        self.emit(ev="done", seq=self.seq, **self.stats)


def writer_main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    Node(spec).run()


class WriterGroup:
    """Writer processes, each with its own journal; commands go to all of them."""

    def __init__(self, root, workdir, specs):
        self.root, self.workdir = root, workdir
        self.specs = []
        self.procs = []
        self.events = []
        self.cond = threading.Condition()
        for i, spec in enumerate(specs):
            spec = dict(spec)
            spec.setdefault("wid", i)
            spec["root"] = root
            spec["journal"] = os.path.join(workdir, f"journal-{spec['wid']}.txt")
            self.specs.append(spec)

    @property
    def journals(self):
        return [s["journal"] for s in self.specs]

    def start(self, timeout=20):
        for spec in self.specs:
            path = os.path.join(self.workdir, f"writer-{spec['wid']}.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            with open(path + ".stderr", "wb") as err:
                p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "write", path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
            self.procs.append(p)
            threading.Thread(target=self._pump, args=(p,), daemon=True).start()
        self._wait(lambda: sum(1 for e in self.events if e["ev"] == "ready") >= len(self.procs), timeout, "ready")
        return self

    def _pump(self, p):
        for line in p.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"ev": "garbage", "line": line}
            with self.cond:
                self.events.append(ev)
                self.cond.notify_all()

    def _wait(self, pred, timeout, what):
        deadline = time.time() + timeout
        with self.cond:
            while not pred():
                errors = [e for e in self.events if e["ev"] == "error"]
                if errors:
                    raise AssertionError(f"writer error: {errors}")
                left = deadline - time.time()
                if left <= 0 or all(p.poll() is not None for p in self.procs) and not pred():
                    tails = ""
                    for s in self.specs:
                        try:
                            tails += open(os.path.join(self.workdir, f"writer-{s['wid']}.json.stderr")).read()[-2000:]
                        except OSError:
                            pass
                    raise AssertionError(f"writer never said {what}: {self.events[-5:]}\n{tails}")
                self.cond.wait(min(left, 0.2))

    def send(self, **cmd):
        for p in self.procs:
            if p.poll() is None:
                p.stdin.write(json.dumps(cmd) + "\n")
                p.stdin.flush()

    def stats(self, timeout=10):
        tag = uuid.uuid4().hex
        self.send(cmd="stats", tag=tag)
        self._wait(lambda: sum(1 for e in self.events if e.get("tag") == tag) >= len(self.procs), timeout, "stats")
        total = collections.Counter()
        for e in self.events:
            if e.get("tag") == tag:
                total.update({k: v for k, v in e.items() if isinstance(v, int)})
        return total

    def stop(self, timeout=30):
        self.send(cmd="stop")
        self._wait(lambda: sum(1 for e in self.events if e["ev"] == "done") >= len(self.procs), timeout, "done")
        for p in self.procs:
            p.wait(timeout)
            p.stdin.close()
        total = collections.Counter()
        for e in self.events:
            if e["ev"] == "done":
                total.update({k: v for k, v in e.items() if isinstance(v, int)})
        return total

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for stream in (p.stdin, p.stdout):
                try:
                    stream.close()
                except OSError:
                    pass


class DockerJsonFile:
    """A docker json-file log written from the test process itself:
    <root>/docker/containers/<id>/<id>-json.log, rotated as dockerd does
    (-json.log.1 newest ... .N oldest, no compression), or copytruncated as logrotate does."""

    def __init__(self, root, journal, wid, cidx, name="web", max_file=5):
        self.journal, self.wid, self.cidx, self.max_file = journal, wid, cidx, max_file
        self.name = name
        self.id = hashlib.sha256(f"docker/{name}/{cidx}".encode()).hexdigest()
        self.dir = os.path.join(root, "docker", "containers", self.id)
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, f"{self.id}-json.log")
        self.f = open(self.path, "ab", buffering=0)
        self.seq = 0
        self.gen = 0
        self.rng = random.Random(cidx)
        journal.rec("H", wid, 20, 120, MAX_LINE_BYTES)
        journal.rec("C", cidx, wid, "-", "-", name, "-", 0, self.id, self.path, self.path, "docker", repr(time.time()))

    def write(self, n, p_stderr=0.2):
        ts_ns = time.time_ns()
        ts = cri_timestamp(ts_ns)
        kinds = "".join("N" if self.rng.random() < p_stderr else "n" for _ in range(n))
        first = self.seq
        data = b"".join(frame_docker(ts, k, line_content(self.wid, first + i, k, "-", "-", self.name))
                        for i, k in enumerate(kinds))
        self.f.write(data)
        self.seq += n
        self.journal.rec("W", self.cidx, first, kinds, ts_ns, self.gen, repr(time.time()))
        self.journal.flush()
        return list(range(first, first + n))

    def rotate(self):
        """dockerd's json-file rotation: .N-1 -> .N ... .1 -> .2, the log -> .1, a new log."""
        self.f.close()
        for i in range(self.max_file - 1, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                if i + 1 >= self.max_file:
                    os.unlink(src)
                else:
                    os.rename(src, f"{self.path}.{i + 1}")
        os.rename(self.path, self.path + ".1")
        self.f = open(self.path, "ab", buffering=0)
        self.gen += 1
        self.journal.rec("R", self.cidx, self.path + ".1", repr(time.time()))
        self.journal.flush()

    def copytruncate(self):
        """logrotate's copytruncate: copy the log to .1, truncate the log in place."""
        self.f.flush()
        shutil.copyfile(self.path, self.path + ".1")
        os.truncate(self.path, 0)
        self.gen += 1
        self.journal.rec("U", self.cidx, repr(time.time()))
        self.journal.flush()

    def close(self):
        self.f.close()


# ---------------------------------------------------------------------------
# What the agent delivered
# ---------------------------------------------------------------------------

class Entry:
    """One delivered line: labels (dict), raw (bytes), ts_ns (None if unknown),
    t (arrival, wall clock), epoch (which agent run sent it), torn."""
    __slots__ = ("labels", "raw", "ts_ns", "t", "epoch", "torn")

    def __init__(self, labels, raw, ts_ns, t, epoch=0, torn=False):
        self.labels, self.raw, self.ts_ns, self.t, self.epoch, self.torn = labels, raw, ts_ns, t, epoch, torn


def receiver_entries(receiver, starts=()):
    """Entries from tests/tools/loki_receiver.py's Receiver (create it with a large
    keep_requests, so every request's arrival time is known). starts: wall-clock
    start times of successive agent runs, to tell which run pushed what."""
    times = {r["id"]: r["time"] for r in receiver.requests()}
    starts = sorted(starts)
    out = []
    for d in receiver.all_entries():
        raw = d["line_bytes"] if "line_bytes" in d else d["line"].encode("utf-8")
        t = times.get(d["request"], 0.0)
        epoch = max(0, bisect.bisect_right(starts, t) - 1) if starts else 0
        out.append(Entry(d["label_map"], raw, d["ts_ns"], t, epoch))
    return out


def iter_receiver_entries(receiver, starts=()):
    """receiver_entries, one Entry at a time (for Checker.check on long runs: the
    receiver's entries are not copied into a list first)."""
    times = {r["id"]: r["time"] for r in receiver.requests()}
    starts = sorted(starts)
    for s in receiver.streams():
        lm = s["label_map"]
        t = times.get(s["request"], 0.0)
        epoch = max(0, bisect.bisect_right(starts, t) - 1) if starts else 0
        for d in s["entries"]:
            raw = d["line_bytes"] if "line_bytes" in d else d["line"].encode("utf-8")
            yield Entry(lm, raw, d["ts_ns"], t, epoch)


def parse_stdout_line(raw, fmt):
    """One line of the agent's stdout (text or json) -> (labels, content bytes, ts_ns) or None."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    if fmt == "json":
        try:
            d = json.loads(body)
        except ValueError:
            return None
        labels = {k: d[k] for k in ("namespace", "pod", "container") if d.get(k)}
        if "stream" in d:
            labels["stream"] = d["stream"]
        if d.get("file"):
            labels["filename"] = d["file"]
        line = d.get("line")
        if not isinstance(line, str):
            return None
        return labels, line.encode("utf-8", "surrogatepass"), parse_rfc3339_ns(d.get("time", ""))
    parts = body.split(b" ", 3)
    if len(parts) < 4:
        return None
    ts, origin, stream, content = parts
    origin = origin.decode("utf-8", "replace")
    if origin.startswith("/"):
        labels = {"filename": origin}
    else:
        o = origin.split("/")
        if len(o) != 3:
            return None
        labels = {"namespace": o[0], "pod": o[1], "container": o[2]}
    labels["stream"] = stream.decode("utf-8", "replace")
    return labels, content, parse_rfc3339_ns(ts.decode("ascii", "replace"))


class StdoutSink:
    """Collects the stdout of successive agent runs as entries (epoch = run index)."""

    def __init__(self, fmt="text"):
        self.fmt = fmt
        self.lock = threading.Lock()
        self.entries = []
        self.unparsed = []
        self.count = 0

    def pump(self, stream, epoch, killed):
        for raw in iter(stream.readline, b""):
            t = time.time()
            p = parse_stdout_line(raw, self.fmt)
            torn = not raw.endswith(b"\n")
            with self.lock:
                if p is None:
                    self.unparsed.append((epoch, raw[:300]))
                    self.entries.append(Entry({}, raw.rstrip(b"\n"), None, t, epoch, torn))
                else:
                    self.entries.append(Entry(p[0], p[1], p[2], t, epoch, torn and killed()))
                self.count += 1

    def snapshot(self):
        with self.lock:
            return list(self.entries)


# ---------------------------------------------------------------------------
# The agent as a process
# ---------------------------------------------------------------------------

class AgentError(AssertionError):
    pass


def http_get(port, path, timeout=5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return 0, ""
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
    return status, body.decode("utf-8", "replace")


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


class Agent:
    """One run of the loglet binary."""

    def __init__(self, config_path, epoch=0, sink=None, env=None, binary=None):
        self.config_path, self.epoch, self.sink = config_path, epoch, sink
        self.binary = binary or LOGLET_BIN
        self.env = dict(os.environ if env is None else env)
        self.env.pop("NODE_NAME", None)
        self.proc = None
        self.port = None
        self.stderr_lines = []
        self.cond = threading.Condition()
        self.killed = False
        self.start_time = self.end_time = None
        self._threads = []

    def start(self, wait_ready=True, timeout=20):
        self.start_time = time.time()
        self.proc = subprocess.Popen([self.binary, "-config", self.config_path], env=self.env,
                                     stdout=subprocess.PIPE if self.sink else subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        t = threading.Thread(target=self._pump_stderr, daemon=True)
        t.start()
        self._threads.append(t)
        if self.sink:
            t = threading.Thread(target=self.sink.pump, args=(self.proc.stdout, self.epoch, lambda: self.killed),
                                 daemon=True)
            t.start()
            self._threads.append(t)
        rx = re.compile(r"probes and metrics on http://[^ ]*:(\d+)")
        deadline = time.time() + timeout
        with self.cond:
            while self.port is None:
                for line in self.stderr_lines:
                    m = rx.search(line)
                    if m:
                        self.port = int(m.group(1))
                if self.port is not None:
                    break
                if self.proc.poll() is not None or time.time() > deadline:
                    self.cond.wait(0.3)
                    raise AgentError(f"agent did not start (exit {self.proc.poll()}):\n" + self.stderr_text()[-3000:])
                self.cond.wait(0.1)
        if wait_ready:
            while time.time() < deadline:
                if http_get(self.port, "/ready")[0] == 200:
                    return self
                time.sleep(0.05)
            raise AgentError("agent never became ready:\n" + self.stderr_text()[-3000:])
        return self

    def _pump_stderr(self):
        for raw in self.proc.stderr:
            with self.cond:
                self.stderr_lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()

    def stderr_text(self):
        with self.cond:
            return "\n".join(self.stderr_lines)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        self.killed = True
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.end_time = time.time()
        self._join()
        # A push the dead agent had fully sent may still be being read by the receiver:
        # let it land before a new run starts, so it is not taken for the new run's.
        time.sleep(0.3)

    def term(self, timeout=60):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None
        self.end_time = time.time()
        self._join()
        return rc

    def _join(self):
        for t in self._threads:
            t.join(5)

    def metrics(self):
        if not self.alive() or self.port is None:
            return None
        status, body = http_get(self.port, "/metrics")
        return parse_metrics(body) if status == 200 else None


def inotify_fds(pid):
    """How many inotify instances a process holds (from /proc/<pid>/fd)."""
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                    n += 1
            except OSError:
                pass
    except OSError:
        return None
    return n


def poll_watcher_failures(agent, collection_extra):
    """With `watcher: poll` the agent must not use inotify at all."""
    if "watcher: poll" not in collection_extra:
        return []
    n = inotify_fds(agent.proc.pid)
    return [f"watcher: poll, yet the agent holds {n} inotify instance(s)"] if n else []


def spool_leftovers(spool_dir, log_root):
    """Links in the agent's spool to files no longer in the log tree. Once every
    line was delivered and the agent stopped, there must be none: a link to a
    deleted file keeps its disk space, and nothing would ever read it again."""
    if not os.path.isdir(spool_dir):
        return []
    present = set()
    for d, _, names in os.walk(log_root):
        for n in names:
            try:
                st = os.lstat(os.path.join(d, n))
            except OSError:
                continue
            present.add((st.st_dev, st.st_ino))
    stale = []
    for n in os.listdir(spool_dir):
        try:
            st = os.lstat(os.path.join(spool_dir, n))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in present:
            stale.append(n)
    return stale


def agent_config(glob, positions, loki_url=None, collection_extra="", extra=""):
    """The default configuration: only what the scenario must name."""
    # The logs API socket is a path too: each run its own, beside its positions,
    # so agents of tests running side by side do not meet at /run/loglet.
    api_sock = os.path.join(os.path.dirname(positions), "api.sock")
    cfg = ("server:\n  http_listen_address: 127.0.0.1\n  http_listen_port: 0\n"
           f"  api:\n    socket: {json.dumps(api_sock)}\n"
           f"collection:\n  paths: [{json.dumps(glob)}]\n  positions_file: {json.dumps(positions)}\n"
           + collection_extra)
    if loki_url:
        cfg += f"output:\n  loki:\n    url: {json.dumps(loki_url)}\n"
    return cfg + extra


# ---------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------

def _short(b, n=160):
    if isinstance(b, bytes):
        b = b.decode("utf-8", "backslashreplace")
    return b if len(b) <= n else b[:n] + f"...(+{len(b) - n})"


def _first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else -1


class Report:
    CATEGORIES = ("lost", "duplicated", "unjustified_duplicates", "corrupted", "wrong_labels", "unknown",
                  "out_of_order")

    def __init__(self, name, max_examples=20):
        self.name, self.max_examples = name, max_examples
        self.written = self.delivered = self.exempt = 0
        self.entries = 0
        self.counts = collections.Counter()
        self.examples = collections.defaultdict(list)
        self.lost_by = collections.defaultdict(collections.Counter)
        self.lost_groups = {}          # (container, generation, reason) -> [n, first seq, last seq, t1, t2]
        self.lost_keys = []            # (wid, seq) of every line lost
        self.exempt_groups = {}        # (container, generation) -> [n, first seq, last seq, t1, t2]
        self.lost_traces = {}          # container -> {"link", "dir", "events"}: what verdict() traces
        self.dup_copies = 0
        self.torn = 0
        self.notes = []
        self.latency = None            # (p50, p99, max) seconds from write to first correct arrival

    def add(self, category, example, n=1):
        self.counts[category] += n
        if len(self.examples[category]) < self.max_examples:
            self.examples[category].append(example)

    @property
    def lost(self):
        return self.counts["lost"]

    def summary(self):
        c = self.counts
        return (f"e2e[{self.name}]: written {self.written} delivered {self.delivered} lost {c['lost']} "
                f"duplicated {c['duplicated']} (+{self.dup_copies} copies, {c['unjustified_duplicates']} unjustified) "
                f"corrupted {c['corrupted']} wrong-labelled {c['wrong_labels']} unknown {c['unknown']} "
                f"out-of-order {c['out_of_order']} torn-at-kill {self.torn} exempt {self.exempt} "
                f"(entries {self.entries})")

    def details(self):
        out = [self.summary()]
        if self.latency:
            out.append("  latency write -> first correct arrival: p50 %.2fs p99 %.2fs max %.2fs" % self.latency)
        for n in self.notes:
            out.append("  note: " + n)
        if self.exempt_groups:
            out.append(f"  exempt (not delivered; file deleted while no agent ran): {self.exempt}, by (container, "
                       "file generation):")
            for (cname, gen), (n, s1, s2, t1, t2) in sorted(self.exempt_groups.items(), key=lambda kv: -kv[1][0])[:16]:
                out.append(f"      {cname} gen {gen}: {n} lines, seq {s1}..{s2}, written {t1}..{t2}")
        for cat in self.CATEGORIES:
            if not self.counts[cat]:
                continue
            out.append(f"  {cat}: {self.counts[cat]}")
            if cat == "lost":
                for by, counter in self.lost_by.items():
                    out.append(f"    by {by}: " + ", ".join(f"{k}={v}" for k, v in counter.most_common(12)))
                groups = sorted(self.lost_groups.items(), key=lambda kv: -kv[1][0])
                out.append(f"    in {len(groups)} runs of (container, file generation, reason), largest first:")
                for (cname, gen, reason), (n, s1, s2, t1, t2) in groups[:16]:
                    out.append(f"      {cname} gen {gen}: {n} lines, seq {s1}..{s2}, written {t1}..{t2}: {reason}")
            for ex in self.examples[cat]:
                out.append("    - " + ex)
        return "\n".join(out)

    def problems(self, allow=()):
        """The failures, as strings; `allow`: categories that do not fail."""
        out = []
        for cat in ("lost", "unjustified_duplicates", "corrupted", "wrong_labels", "unknown", "out_of_order"):
            if self.counts[cat] and cat not in allow:
                out.append(f"{self.counts[cat]} {cat.replace('_', ' ')}")
        if self.written == 0:
            out.append("nothing was written: the scenario did not run")
        return out


class _Obs:
    __slots__ = ("copies", "wrong", "corrupt")

    def __init__(self, n):
        self.copies = [[] for _ in range(n)]
        self.wrong = 0
        self.corrupt = 0


class Checker:
    """Compares delivered entries with the truth, line by line."""

    def __init__(self, truth, max_line=MAX_LINE_BYTES, check_ts=True, slack=1.5, inflight=INFLIGHT_WINDOW):
        self.truth, self.max_line, self.check_ts, self.slack, self.inflight = truth, max_line, check_ts, slack, inflight
        self._units_cache = {}

    def _units(self, info):
        key = (info.wid, info.seq)
        u = self._units_cache.get(key)
        if u is None:
            units = expected_units(self.truth.content(info), info.kind, self.max_line)
            u = (units, {b: i for i, b in enumerate(units)} if len(units) > 1 else None)
            if len(units) > 1:
                self._units_cache[key] = u
        return u

    def _rel(self, t):
        return f"t+{t - self.truth.t0:.1f}s" if self.truth.t0 and t else "t=?"

    def check(self, entries, name="e2e", faults=(), exempt=None, order=False, max_examples=20, runs=None):
        """entries: iterable of Entry, in arrival order. faults: wall-clock times of
        receiver cuts (a push cut while answered may rightly be sent again).
        runs: per epoch (end time, killed): a copy sent again by a later run is
        justified only if the earlier one arrived within the in-flight window before
        that run was SIGKILLed (None: any later run may send it again).
        exempt(LineInfo) -> True: a line the scenario cannot promise (not failed)."""
        truth = self.truth
        rep = Report(name, max_examples)
        faults = sorted(faults)
        obs = {}
        last_seq = {}
        first_seen = set()
        n_entries = 0
        arrivals = {}  # epoch -> times anything arrived (accepted pushes; stdout lines)
        for e in entries:
            n_entries += 1
            raw = e.raw
            m = ID_RX.match(raw) or TOKEN_RX.search(raw)
            info = truth.line(int(m.group(1)), int(m.group(2))) if m else None
            if info is None:
                if e.torn:
                    rep.torn += 1
                else:
                    rep.add("unknown", f"{self._rel(e.t)} run {e.epoch} labels={e.labels} line={_short(raw)!r}")
                continue
            key = (info.wid, info.seq)
            c = truth.containers[info.cidx]
            units, index = self._units(info)
            st = obs.get(key)
            if st is None:
                st = obs[key] = _Obs(len(units))
            want = c.expected_labels(kind_stream(info.kind))
            got = {k: e.labels.get(k) for k in ("namespace", "pod", "container", "stream", "filename")}
            if any(got[k] != want.get(k) for k in got):
                st.wrong += 1
                rep.add("wrong_labels", f"id={info.wid}:{info.seq} written by {c} ({kind_stream(info.kind)}) "
                                        f"arrived as {{{', '.join(f'{k}={v}' for k, v in got.items() if v is not None)}}}"
                                        f" {self._rel(e.t)} run {e.epoch}: {_short(raw, 60)!r}")
                continue
            u = (0 if raw == units[0] else -1) if index is None else index.get(raw, -1)
            ts_bad = self.check_ts and e.ts_ns is not None and e.ts_ns != info.ts_ns
            if u < 0 or ts_bad:
                if e.torn:
                    rep.torn += 1
                    continue
                st.corrupt += 1
                if u < 0:
                    exp = units[0] if index is None else min(units, key=lambda x: abs(len(x) - len(raw)))
                    why = (f"kind {info.kind}, {len(raw)} bytes vs {len(exp)} expected (of {len(units)} piece(s)), "
                           f"first difference at byte {_first_diff(raw, exp)}: got {_short(raw, 100)!r}")
                else:
                    why = f"timestamp {e.ts_ns} instead of {info.ts_ns}"
                rep.add("corrupted", f"id={info.wid}:{info.seq} of {c} {self._rel(e.t)} run {e.epoch}: {why}")
                continue
            st.copies[u].append((e.t, e.epoch))
            arrivals.setdefault(e.epoch, set()).add(e.t)
            if order and key not in first_seen:
                first_seen.add(key)
                ok = (info.cidx, kind_stream(info.kind))
                prev = last_seq.get(ok)
                if prev is not None and info.seq < prev:
                    rep.add("out_of_order", f"id={info.wid}:{info.seq} of {c} arrived after id={info.wid}:{prev} "
                                            f"{self._rel(e.t)}")
                else:
                    last_seq[ok] = info.seq
        rep.entries = n_entries
        latencies = []
        next_after = None
        for key in truth.keys():
            info = truth.line(*key)
            st = obs.get(key)
            # Exempt only if it did not arrive: a line whose file went while no
            # agent ran, yet delivered (read back from the spool), is checked
            # like any other.
            if exempt and (st is None or not all(st.copies)) and exempt(info):
                rep.exempt += 1
                gkey = (str(truth.containers[info.cidx]), info.gen)
                g = rep.exempt_groups.get(gkey)
                if g is None:
                    rep.exempt_groups[gkey] = [1, info.seq, info.seq, self._rel(info.t), self._rel(info.t)]
                else:
                    g[0] += 1
                    g[2] = info.seq
                    g[4] = self._rel(info.t)
                continue
            rep.written += 1
            if st is None or not all(st.copies):
                if st is None:
                    reason = "never seen"
                elif any(st.copies):
                    reason = f"incomplete ({sum(1 for x in st.copies if x)} of {len(st.copies)} pieces)"
                elif st.wrong:
                    reason = "seen only wrong-labelled"
                else:
                    reason = "seen only corrupted"
                c = truth.containers[info.cidx]
                rep.add("lost", f"id={info.wid}:{info.seq} kind {info.kind} of {c} written {self._rel(info.t)} "
                                f"into file generation {info.gen}: {reason}")
                rep.lost_keys.append(key)
                rep.lost_by["reason"][reason.split(" (")[0]] += 1
                rep.lost_by["kind"][info.kind] += 1
                rep.lost_by["generation"][info.gen] += 1
                rep.lost_by["its file at the end"]["on disk" if truth.on_disk_at_end(info) else "deleted"] += 1
                rep.lost_by["container"][str(c)] += 1
                if str(c) not in rep.lost_traces and len(rep.lost_traces) < 3:
                    rep.lost_traces[str(c)] = {
                        "link": os.path.basename(c.link), "dir": os.path.dirname(c.log),
                        "events": [(typ, arg, self._rel(t)) for typ, cidx, arg, t in truth.events if cidx == c.cidx]}
                g = rep.lost_groups.get((str(c), info.gen, reason.split(" (")[0]))
                if g is None:
                    rep.lost_groups[(str(c), info.gen, reason.split(" (")[0])] = [1, info.seq, info.seq,
                                                                                 self._rel(info.t), self._rel(info.t)]
                else:
                    g[0] += 1
                    g[2] = info.seq
                    g[4] = self._rel(info.t)
                continue
            rep.delivered += 1
            latencies.append(max(min(t for t, _ in x) for x in st.copies) - info.t)
            extra = max(len(x) for x in st.copies) - 1
            if extra <= 0:
                continue
            rep.counts["duplicated"] += 1
            rep.dup_copies += extra
            unjustified = []
            if next_after is None:
                next_after = {}
                for ep, ts in arrivals.items():
                    order = sorted(ts)
                    next_after[ep] = (lambda o: lambda t: o[bisect.bisect_right(o, t)]
                                      if bisect.bisect_right(o, t) < len(o) else None)(order)
            for copies in st.copies:
                copies.sort()
                for (t1, e1), (t2, e2) in zip(copies, copies[1:]):
                    if e1 != e2:
                        if runs is None or e1 >= len(runs):
                            continue
                        end, killed = runs[e1]
                        if killed and (end is None or t1 >= end - self.inflight):
                            continue
                        # Part of a chunk can arrive while the rest waits in the
                        # next batch (failing, or Loki gone): the chunk is
                        # acknowledged only with that next delivery. So a copy is
                        # in flight until the run's next arrival after it.
                        later = next_after.get(e1)
                        nxt = later(t1) if later else None
                        if killed and (nxt is None or end is None or nxt >= end - self.inflight):
                            continue
                        unjustified.append((t1, t2, e1, e2))
                        continue
                    i = bisect.bisect_left(faults, t1 - self.slack)
                    if i < len(faults) and faults[i] <= t2 + self.slack:
                        continue
                    unjustified.append((t1, t2, e1, e2))
            if unjustified:
                t1, t2, e1, e2 = unjustified[0]
                if e1 == e2:
                    why = f"twice in run {e1} ({self._rel(t1)} and {self._rel(t2)}) with no fault in between"
                else:
                    end, killed = runs[e1]
                    why = (f"in run {e1} at {self._rel(t1)}, {end - t1:.1f}s before that run "
                           f"{'was killed' if killed else 'stopped cleanly'}, and again in run {e2} at "
                           f"{self._rel(t2)}")
                rep.add("unjustified_duplicates", f"id={key[0]}:{key[1]} of {truth.containers[info.cidx]} "
                                                  f"arrived {why}")
            elif len(rep.examples["duplicated"]) < max_examples:
                rep.examples["duplicated"].append(f"id={key[0]}:{key[1]} x{extra + 1} across runs "
                                                  f"{sorted(set(e for x in st.copies for _, e in x))}")
        if latencies:
            latencies.sort()
            rep.latency = (latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)], latencies[-1])
        return rep


# ---------------------------------------------------------------------------
# The scenario harness (unittest)
# ---------------------------------------------------------------------------

class E2ECase(unittest.TestCase):
    """A temp node, an optional Loki receiver, agents started at default settings,
    writers, and the final verdict. Set LOGLET_E2E_KEEP=1 to keep the directory."""

    def setUp(self):
        warnings.simplefilter("ignore", ResourceWarning)
        self.workdir = tempfile.mkdtemp(prefix="loglet-e2e-")
        self.root = os.path.join(self.workdir, "log")
        os.makedirs(os.path.join(self.root, "containers"))
        os.makedirs(os.path.join(self.root, "pods"))
        self.glob = os.path.join(self.root, "containers", "*.log")
        self.positions = os.path.join(self.workdir, "state", "positions.yaml")
        self.receiver = None
        self.sink = None
        self.agents = []
        self.cuts = []
        self.writers = None
        self.failures = []

    def tearDown(self):
        for a in self.agents:
            if a.alive():
                a.kill9()
        if self.writers:
            self.writers.kill()
        if self.receiver:
            self.receiver.stop()
        if os.environ.get("LOGLET_E2E_KEEP"):
            for a in self.agents:
                with open(os.path.join(self.workdir, f"agent-{a.epoch}.stderr"), "w") as f:
                    f.write(a.stderr_text() + "\n")
            sys.stderr.write(f"kept {self.workdir} (journals, agent-N.stderr, positions)\n")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- pieces --
    def use_loki(self, **faults):
        import loki_receiver
        self.receiver = loki_receiver.Receiver(keep_requests=10_000_000).start()
        if faults:
            self.receiver.set_faults(**faults)
        return self.receiver

    def use_stdout(self, fmt="text"):
        self.sink = StdoutSink(fmt)
        return self.sink

    def config(self, collection_extra="", extra="", glob=None):
        url = self.receiver.url if self.receiver else None
        out_extra = extra
        if self.sink and self.sink.fmt == "json":
            out_extra = "output:\n  stdout:\n    format: json\n" + extra
        return agent_config(glob or self.glob, self.positions, url, collection_extra, out_extra)

    def start_agent(self, config_text=None, wait_ready=True):
        path = os.path.join(self.workdir, f"loglet-{len(self.agents)}.yaml")
        with open(path, "w") as f:
            f.write(config_text if config_text is not None else self.config())
        a = Agent(path, epoch=len(self.agents), sink=self.sink)
        self.agents.append(a)
        return a.start(wait_ready=wait_ready)

    def cut_receiver(self, down):
        self.receiver.set_faults(down_hard=down)
        if down:
            self.cuts.append(time.time())

    def start_writers(self, *specs):
        self.writers = WriterGroup(self.root, self.workdir, specs).start()
        return self.writers

    def entries(self):
        if self.receiver:
            return receiver_entries(self.receiver, [a.start_time for a in self.agents])
        return self.sink.snapshot()

    def runs(self):
        """(end time, killed) per agent run, for Checker.check(runs=...)."""
        return [(a.end_time, a.killed) for a in self.agents]

    def down_windows(self):
        """(from, to) spans during which no agent ran, after the first start."""
        spans = []
        runs = sorted((a.start_time, a.end_time or float("inf")) for a in self.agents if a.start_time)
        for (_, end), (nxt, _) in zip(runs, runs[1:]):
            if end < nxt:
                spans.append((end, nxt))
        return spans

    def gone_while_down(self, truth):
        """An exemption: a line never delivered whose file the kubelet deleted
        while no agent was running — the README's loss case 2, which the
        agent logs and counts (loglet_files_missed_total) but cannot undo."""
        windows = self.down_windows()

        def exempt(info):
            t = truth.gone_at(info)
            return t is not None and any(a <= t <= b for a, b in windows)
        return exempt

    def checker_check(self, truth, **kw):
        """Checker(truth).check(self.entries(), faults=cuts, runs=...) with this case's history."""
        kw.setdefault("faults", self.cuts)
        kw.setdefault("runs", self.runs())
        return Checker(truth).check(self.entries(), **kw)

    def delivered_count(self):
        if self.receiver:
            return self.receiver.entry_count()
        with self.sink.lock:
            return self.sink.count

    def wait_drained(self, truth, timeout=120, settle=20, checker=None, exempt=None):
        """Waits until every line arrived, or nothing new arrived for `settle` s."""
        need = truth.units_count()
        deadline = time.time() + timeout
        last_n, last_change, checked_at = -1, time.time(), -1
        while time.time() < deadline:
            n = self.delivered_count()
            if n != last_n:
                last_n, last_change = n, time.time()
            if n >= need and n != checked_at:
                checked_at = n
                rep = (checker or Checker(truth)).check(self.entries(), exempt=exempt)
                if rep.lost == 0:
                    return True
            if time.time() - last_change > settle:
                return False
            time.sleep(1)
        return False

    def verdict(self, report, allow=(), extra_failures=()):
        """Prints the report and fails with every problem at once."""
        sys.stderr.write("\n" + report.details() + "\n")
        for a in self.agents:
            noisy = [l for l in a.stderr_lines if "level=error" in l or "level=warn" in l]
            if noisy:
                sys.stderr.write(f"  agent run {a.epoch}: {len(noisy)} warnings/errors, e.g.\n    "
                                 + "\n    ".join(noisy[:8]) + "\n")
        problems = report.problems(allow) + list(extra_failures) + self.failures
        # A loss is traced: the writer's events for the container, then every
        # line each run logged about its files (CI keeps no work directory).
        try:
            for name, tr in (report.lost_traces.items() if problems else ()):
                sys.stderr.write(f"  trace of {name}: writer events " +
                                 ", ".join(f"{typ} {os.path.basename(arg) if isinstance(arg, str) else arg} {t}"
                                           for typ, arg, t in tr["events"][:40]) + "\n")
                for a in self.agents:
                    mine = [l for l in a.stderr_lines if tr["dir"] in l or tr["link"] in l]
                    sys.stderr.write(f"    run {a.epoch} ({len(mine)} lines):\n      " + "\n      ".join(mine[:30]) + "\n")
        except Exception as e:  # the verdict below matters more than its trace
            sys.stderr.write(f"  (tracing the loss failed: {e!r})\n")
        if problems:
            self.fail(f"{report.summary()}\nproblems: " + "; ".join(problems))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "write":
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        writer_main(sys.argv[2])
    else:
        print("usage: checker.py write SPEC.json   (the node writer; see the module docstring)", file=sys.stderr)
        sys.exit(2)
