#!/usr/bin/python3
"""A fake Grafana Loki push endpoint for loglet's tests and benchmarks.

It decodes what a client pushes to /loki/api/v1/push *independently* of loglet's
own encoder: one raw snappy block (python3-snappy) holding a logproto.PushRequest,
read by the small hand-written protobuf wire-format decoder below (no
python3-protobuf, no generated code).

    PushRequest      { repeated StreamAdapter streams = 1; }
    StreamAdapter    { string labels = 1; repeated EntryAdapter entries = 2; uint64 hash = 3; }
    EntryAdapter     { Timestamp timestamp = 1; string line = 2;
                       repeated LabelPairAdapter structuredMetadata = 3; }
    Timestamp        { int64 seconds = 1; int32 nanos = 2; }
    LabelPairAdapter { string name = 1; string value = 2; }

Use it as a module (class Receiver, decode_push, decode_raw_text, parse_labels)
or as a CLI:

    python3 loki_receiver.py --port N [--out FILE.jsonl] [--fail-ratio X] [--count-only]

Only Debian's /usr/bin/python3 with the standard library and python3-snappy.
"""

import argparse
import base64
import gzip
import http.client
import http.server
import json
import random
import signal
import socket
import struct
import sys
import threading
import time
import zlib

import snappy

__all__ = [
    "DecodeError", "LabelError", "Receiver", "decode_push", "decode_push_request",
    "decode_raw_text", "parse_labels", "format_labels", "scan_push_counts",
    "encode_push", "PUSH_PATH",
]

PUSH_PATH = "/loki/api/v1/push"
HEADERS_OF_INTEREST = ("X-Scope-OrgID", "Authorization", "Content-Type",
                       "Content-Encoding", "User-Agent")
DEFAULT_FAIL_STATUSES = (500, 429, 503)
MAX_BODY_BYTES = 100 << 20            # Loki's default grpc/http max receive size

WT_VARINT, WT_FIXED64, WT_LEN, WT_START_GROUP, WT_END_GROUP, WT_FIXED32 = 0, 1, 2, 3, 4, 5


class DecodeError(ValueError):
    """The body is not a valid snappy-compressed logproto.PushRequest."""


class LabelError(DecodeError):
    """A stream's label string is not a valid Loki label set."""


# --------------------------------------------------------------------------
# Protobuf wire format, by hand
# --------------------------------------------------------------------------

def _read_varint(buf, pos, end):
    """Return (value, newpos). Up to 10 bytes; the value is truncated to 64 bits."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def _skip_group(buf, pos, end, field_no, depth):
    """pos is just after a START_GROUP tag; return the position after its END_GROUP."""
    if depth > 100:
        raise DecodeError("groups nested too deeply")
    while True:
        if pos >= end:
            raise DecodeError("unterminated group %d" % field_no)
        tag, pos = _read_varint(buf, pos, end)
        fno, wt = tag >> 3, tag & 7
        if wt == WT_END_GROUP:
            if fno != field_no:
                raise DecodeError("end group %d does not match start group %d" % (fno, field_no))
            return pos
        pos = _skip_value(buf, pos, end, fno, wt, depth + 1)


def _skip_value(buf, pos, end, fno, wt, depth=0):
    if fno == 0:
        raise DecodeError("field number 0 is illegal")
    if wt == WT_VARINT:
        return _read_varint(buf, pos, end)[1]
    if wt == WT_FIXED64:
        pos += 8
    elif wt == WT_FIXED32:
        pos += 4
    elif wt == WT_LEN:
        n, pos = _read_varint(buf, pos, end)
        pos += n
    elif wt == WT_START_GROUP:
        return _skip_group(buf, pos, end, fno, depth)
    elif wt == WT_END_GROUP:
        raise DecodeError("unexpected end group %d" % fno)
    else:
        raise DecodeError("invalid wire type %d (field %d)" % (wt, fno))
    if pos > end:
        raise DecodeError("truncated field %d" % fno)
    return pos


def iter_fields(buf, start=0, end=None):
    """Yield (field_number, wire_type, value) of one message.

    value: int for varint/fixed32/fixed64, a memoryview slice for length-delimited.
    Groups (deprecated wire types 3/4) are skipped correctly and not yielded.
    """
    if end is None:
        end = len(buf)
    pos = start
    while pos < end:
        tag, pos = _read_varint(buf, pos, end)
        fno, wt = tag >> 3, tag & 7
        if fno == 0:
            raise DecodeError("field number 0 is illegal")
        if wt == WT_VARINT:
            v, pos = _read_varint(buf, pos, end)
            yield fno, wt, v
        elif wt == WT_LEN:
            n, pos = _read_varint(buf, pos, end)
            if pos + n > end:
                raise DecodeError("length-delimited field %d: length %d past end" % (fno, n))
            yield fno, wt, buf[pos:pos + n]
            pos += n
        elif wt == WT_FIXED64:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64 field %d" % fno)
            yield fno, wt, int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wt == WT_FIXED32:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32 field %d" % fno)
            yield fno, wt, int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        elif wt == WT_START_GROUP:
            pos = _skip_group(buf, pos, end, fno, 0)
        else:
            raise DecodeError("invalid wire type %d (field %d)" % (wt, fno))


def _expect(fno, wt, want, what):
    if wt != want:
        raise DecodeError("%s: field %d has wire type %d, expected %d" % (what, fno, wt, want))


def _int64(v):
    return v - (1 << 64) if v >= (1 << 63) else v


def _int32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def _utf8(mv, what):
    try:
        return bytes(mv).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError("%s is not valid UTF-8: %s" % (what, e)) from None


def _soft_utf8(mv, what, errors):
    """Decode strictly; on failure record an error and return a lossless-ish text."""
    raw = bytes(mv)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        errors.append("%s is not valid UTF-8: %s" % (what, e))
        return raw.decode("utf-8", "backslashreplace")


def _decode_timestamp(mv):
    seconds = 0
    nanos = 0
    for fno, wt, v in iter_fields(mv):
        if fno == 1:
            _expect(fno, wt, WT_VARINT, "Timestamp.seconds")
            seconds = _int64(v)
        elif fno == 2:
            _expect(fno, wt, WT_VARINT, "Timestamp.nanos")
            nanos = _int32(v)
    return seconds, nanos


def _decode_label_pair(mv, errors, what):
    name = ""
    value = ""
    for fno, wt, v in iter_fields(mv):
        if fno == 1:
            _expect(fno, wt, WT_LEN, "LabelPairAdapter.name")
            name = _soft_utf8(v, what + " name", errors)
        elif fno == 2:
            _expect(fno, wt, WT_LEN, "LabelPairAdapter.value")
            value = _soft_utf8(v, what + " value", errors)
    return name, value


def _decode_entry(mv):
    ts = None
    line = ""
    raw_line = b""
    metadata = {}
    errors = []
    for fno, wt, v in iter_fields(mv):
        if fno == 1:
            _expect(fno, wt, WT_LEN, "EntryAdapter.timestamp")
            s, n = _decode_timestamp(v)
            if ts is not None:        # protobuf merges repeated occurrences of a message field
                s0, n0 = ts
                s = s if s else s0
                n = n if n else n0
            ts = (s, n)
        elif fno == 2:
            _expect(fno, wt, WT_LEN, "EntryAdapter.line")
            raw_line = bytes(v)
            line = None
        elif fno == 3:
            _expect(fno, wt, WT_LEN, "EntryAdapter.structuredMetadata")
            k, val = _decode_label_pair(v, errors, "structured metadata")
            # A name sent twice is kept as the list of its values, so that a
            # test comparing metadata to a dict of strings fails on it.
            if k in metadata:
                metadata[k] = (metadata[k] if isinstance(metadata[k], list) else [metadata[k]]) + [val]
            else:
                metadata[k] = val
    if ts is None:
        raise DecodeError("entry has no timestamp (Loki: timestamp too old)")
    seconds, nanos = ts
    if not 0 <= nanos <= 999_999_999:
        raise DecodeError("timestamp nanos %d out of range [0, 999999999]" % nanos)
    # Go's time.Time (gogoproto stdtime) only holds years 0001..9999
    if not -62135596800 <= seconds <= 253402300799:
        raise DecodeError("timestamp seconds %d out of range" % seconds)
    entry = {"ts_ns": seconds * 1_000_000_000 + nanos, "line": line, "metadata": metadata}
    if line is None:
        line_errors = []
        entry["line"] = _soft_utf8(raw_line, "line", line_errors)
        if line_errors:
            entry["line_bytes"] = raw_line
            errors.extend(line_errors)
    if errors:
        entry["error"] = "; ".join(errors)
    return entry


def _decode_stream(mv):
    labels = None
    entries = []
    hsh = None
    for fno, wt, v in iter_fields(mv):
        if fno == 1:
            _expect(fno, wt, WT_LEN, "StreamAdapter.labels")
            labels = _utf8(v, "labels")
        elif fno == 2:
            _expect(fno, wt, WT_LEN, "StreamAdapter.entries")
            entries.append(_decode_entry(v))
        elif fno == 3:
            _expect(fno, wt, WT_VARINT, "StreamAdapter.hash")
            hsh = v
    if labels is None:
        raise LabelError("stream without labels")
    label_map = parse_labels(labels)
    return {"labels": labels, "label_map": label_map, "entries": entries, "hash": hsh}


def decode_push_request(pb):
    """Decode an uncompressed logproto.PushRequest into a list of stream dicts.

    Raises DecodeError (LabelError for a bad label string) on anything Loki would reject
    with 400. A line (or structured metadata) that is not valid UTF-8 does not raise: the
    entry gets "error" (the reason), "line_bytes" (the raw bytes) and a "line" decoded with
    backslash escapes for the bad bytes.
    """
    mv = memoryview(pb)
    streams = []
    for fno, wt, v in iter_fields(mv):
        if fno == 1:
            _expect(fno, wt, WT_LEN, "PushRequest.streams")
            streams.append(_decode_stream(v))
    return streams


def snappy_uncompress(body):
    try:
        return snappy.uncompress(bytes(body))
    except Exception as e:  # snappy raises its own UncompressError / others
        raise DecodeError("snappy: %s: %s" % (type(e).__name__, e)) from None


def decode_push(body, compressed=True):
    """Decode an HTTP push body (one raw snappy block) -> list of streams:

    [{"labels": '{a="b"}', "label_map": {"a": "b"}, "hash": int|None,
      "entries": [{"ts_ns": int, "line": str, "metadata": {name: value}}, ...]}, ...]
    (a structured metadata name sent more than once: {name: [value, ...]})
    """
    pb = snappy_uncompress(body) if compressed else body
    return decode_push_request(pb)


def scan_push_counts(pb):
    """Fast structural scan of an uncompressed PushRequest: (streams, entries, line_bytes).

    Walks the wire format without building objects (single-byte varints inlined); used by
    --count-only. Raises DecodeError on a malformed body.
    """
    mv = memoryview(pb)
    end = len(mv)
    rv = _read_varint
    pos = 0
    nstreams = nentries = line_bytes = 0
    while pos < end:
        tag, pos = rv(mv, pos, end)
        if tag != 0x0A:                     # not streams (field 1, LEN)
            pos = _skip_value(mv, pos, end, tag >> 3, tag & 7)
            continue
        n, pos = rv(mv, pos, end)
        send = pos + n
        if send > end:
            raise DecodeError("stream length past end")
        nstreams += 1
        while pos < send:
            tag = mv[pos]
            if tag != 0x12:                 # not entries (field 2, LEN)
                tag, pos = rv(mv, pos, send)
                pos = _skip_value(mv, pos, send, tag >> 3, tag & 7)
                continue
            n = mv[pos + 1] if pos + 1 < send else 0x80
            if n < 0x80:
                pos += 2
            else:
                n, pos = rv(mv, pos + 1, send)
            eend = pos + n
            if eend > send:
                raise DecodeError("entry length past end")
            nentries += 1
            while pos < eend:
                tag = mv[pos]
                if tag == 0x12 or tag == 0x0A:      # line, or timestamp
                    n = mv[pos + 1] if pos + 1 < eend else 0x80
                    if n < 0x80:
                        pos += 2
                    else:
                        n, pos = rv(mv, pos + 1, eend)
                    pos += n
                    if pos > eend:
                        raise DecodeError("entry field length past end")
                    if tag == 0x12:
                        line_bytes += n
                else:
                    tag, pos = rv(mv, pos, eend)
                    pos = _skip_value(mv, pos, eend, tag >> 3, tag & 7)
    return nstreams, nentries, line_bytes


# --- encoder (for the self-test and for tests that need to push something) -------

def _varint(v):
    v &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(fno, data):
    return _varint(fno << 3 | WT_LEN) + _varint(len(data)) + data


def encode_push(streams, compress=True):
    """Encode [(labels_str, [(ts_ns, line[, metadata_dict]), ...]), ...] as a PushRequest.

    Independent of loglet; meant for tests of the receiver itself.
    """
    out = bytearray()
    for labels, entries in streams:
        s = bytearray(_field_bytes(1, labels.encode() if isinstance(labels, str) else labels))
        for e in entries:
            ts_ns, line = e[0], e[1]
            md = e[2] if len(e) > 2 else {}
            sec, nanos = divmod(ts_ns, 1_000_000_000)
            tsb = b""
            if sec:
                tsb += _varint(WT_VARINT | 1 << 3) + _varint(sec)
            if nanos:
                tsb += _varint(WT_VARINT | 2 << 3) + _varint(nanos)
            eb = _field_bytes(1, tsb)
            eb += _field_bytes(2, line.encode() if isinstance(line, str) else line)
            for k, v in md.items():
                eb += _field_bytes(3, _field_bytes(1, k.encode()) + _field_bytes(2, v.encode()))
            s += _field_bytes(2, eb)
        out += _field_bytes(1, bytes(s))
    return snappy.compress(bytes(out)) if compress else bytes(out)


# --------------------------------------------------------------------------
# Loki label strings: {a="b", c="d"}
# --------------------------------------------------------------------------

_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11,
                   "\\": 92, '"': 34}


def _is_name_start(c):
    return c == "_" or "a" <= c <= "z" or "A" <= c <= "Z"


def _is_name_char(c):
    return _is_name_start(c) or "0" <= c <= "9"


def _parse_quoted(s, i):
    """Go-style quoted string at s[i] ('"' or '`'); return (value, next_index)."""
    q = s[i]
    i += 1
    if q == "`":
        j = s.find("`", i)
        if j < 0:
            raise LabelError("unterminated raw string")
        return s[i:j], j + 1
    out = bytearray()
    n = len(s)
    while True:
        if i >= n:
            raise LabelError("unterminated quoted string")
        c = s[i]
        if c == '"':
            i += 1
            break
        if c == "\n":
            raise LabelError("newline in quoted string")
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        i += 1
        if i >= n:
            raise LabelError("unterminated escape")
        c = s[i]
        if c in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[c])
            i += 1
        elif c == "x":
            h = s[i + 1:i + 3]
            if len(h) != 2 or any(ch not in "0123456789abcdefABCDEF" for ch in h):
                raise LabelError("bad \\x escape")
            out.append(int(h, 16))
            i += 3
        elif c in "01234567":
            o = s[i:i + 3]
            if len(o) != 3 or any(ch not in "01234567" for ch in o) or int(o, 8) > 255:
                raise LabelError("bad octal escape")
            out.append(int(o, 8))
            i += 3
        elif c in "uU":
            k = 4 if c == "u" else 8
            h = s[i + 1:i + 1 + k]
            if len(h) != k or any(ch not in "0123456789abcdefABCDEF" for ch in h):
                raise LabelError("bad \\%s escape" % c)
            cp = int(h, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise LabelError("bad code point in \\%s escape" % c)
            out += chr(cp).encode("utf-8")
            i += 1 + k
        else:
            raise LabelError("unknown escape sequence \\%s" % c)
    try:
        return out.decode("utf-8"), i
    except UnicodeDecodeError:
        raise LabelError("label value is not valid UTF-8") from None


def parse_labels(s):
    """Parse a Loki stream label string like '{a="b", c="d"}' -> {"a": "b", "c": "d"}.

    Mirrors what Loki's distributor accepts: equality matchers only, valid label names,
    Go-quoted values (escapes such as \\" and \\\\), at least one label, no duplicates.
    Raises LabelError otherwise.
    """
    n = len(s)
    i = 0

    def ws(i):
        while i < n and s[i] in " \t\r\n":
            i += 1
        return i

    i = ws(i)
    if i >= n or s[i] != "{":
        raise LabelError("label string must start with '{': %r" % s)
    i = ws(i + 1)
    result = {}
    if i < n and s[i] == "}":
        raise LabelError("at least one label pair is required per stream")
    while True:
        if i >= n or not _is_name_start(s[i]):
            raise LabelError("expected a label name at offset %d in %r" % (i, s))
        j = i + 1
        while j < n and _is_name_char(s[j]):
            j += 1
        name = s[i:j]
        i = ws(j)
        if i >= n or s[i] != "=" or (i + 1 < n and s[i + 1] in "~"):
            raise LabelError("only equality matchers are allowed (label %r) in %r" % (name, s))
        i = ws(i + 1)
        if i >= n or s[i] not in '"`':
            raise LabelError("expected a quoted value for label %r in %r" % (name, s))
        value, i = _parse_quoted(s, i)
        if name in result:
            raise LabelError("duplicate label name %r in %r" % (name, s))
        result[name] = value
        i = ws(i)
        if i < n and s[i] == ",":
            i = ws(i + 1)
            continue
        if i < n and s[i] == "}":
            i = ws(i + 1)
            break
        raise LabelError("expected ',' or '}' at offset %d in %r" % (i, s))
    if i != n:
        raise LabelError("trailing characters after '}' in %r" % s)
    return result


def format_labels(label_map):
    """Canonical Loki/Prometheus form: names sorted, ', ' between pairs, values quoted."""
    def q(v):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return "{" + ", ".join("%s=%s" % (k, q(label_map[k])) for k in sorted(label_map)) + "}"


# --------------------------------------------------------------------------
# protoc --decode_raw, re-implemented (protobuf 3.21 semantics)
# --------------------------------------------------------------------------

_UNKNOWN_FIELD_RECURSION_LIMIT = 10   # TextFormat's kUnknownFieldRecursionLimit
_CODED_STREAM_RECURSION_LIMIT = 100   # CodedInputStream default


class _RawParseError(Exception):
    pass


def _raw_varint(buf, pos, max_bytes=10):
    """Varint as protobuf 3.21's parser reads it: tags take at most 5 bytes, values 10;
    the value is truncated to 64 bits."""
    result = 0
    shift = 0
    n = len(buf)
    for _ in range(max_bytes):
        if pos >= n:
            raise _RawParseError()
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    raise _RawParseError()


def _raw_parse(buf, pos, depth_left, group_no=None):
    """Parse an unknown field set like protobuf's WireFormat::SkipMessage.

    Returns (fields, pos). fields: list of (number, kind, value), kind in
    'varint', 'fixed32', 'fixed64', 'bytes', 'group'.
    """
    fields = []
    n = len(buf)
    while True:
        if pos >= n:
            if group_no is not None:
                raise _RawParseError()      # EOF inside a group
            return fields, pos
        tag, pos = _raw_varint(buf, pos, 5)
        tag &= 0xFFFFFFFF
        if tag == 0:
            raise _RawParseError()
        number, wt = tag >> 3, tag & 7
        if wt == WT_END_GROUP:
            if group_no is None or number != group_no:
                raise _RawParseError()
            return fields, pos
        if number == 0:
            raise _RawParseError()
        if wt == WT_VARINT:
            v, pos = _raw_varint(buf, pos)
            fields.append((number, "varint", v))
        elif wt == WT_FIXED64:
            if pos + 8 > n:
                raise _RawParseError()
            fields.append((number, "fixed64", int.from_bytes(buf[pos:pos + 8], "little")))
            pos += 8
        elif wt == WT_FIXED32:
            if pos + 4 > n:
                raise _RawParseError()
            fields.append((number, "fixed32", int.from_bytes(buf[pos:pos + 4], "little")))
            pos += 4
        elif wt == WT_LEN:
            start = pos
            length, pos = _raw_varint(buf, pos, 5)
            # a size takes at most 5 bytes, must stay below 2 GiB - slop (ReadSize)
            if (pos - start == 5 and buf[start + 4] >= 8) or length > 0x7FFFFFFF - 16 \
                    or pos + length > n:
                raise _RawParseError()
            fields.append((number, "bytes", bytes(buf[pos:pos + length])))
            pos += length
        elif wt == WT_START_GROUP:
            if depth_left <= 0:
                raise _RawParseError()
            sub, pos = _raw_parse(buf, pos, depth_left - 1, number)
            fields.append((number, "group", sub))
        else:
            raise _RawParseError()


def _c_escape(data):
    out = []
    for b in data:
        if b == 0x0A:
            out.append("\\n")
        elif b == 0x0D:
            out.append("\\r")
        elif b == 0x09:
            out.append("\\t")
        elif b == 0x22:
            out.append('\\"')
        elif b == 0x27:
            out.append("\\'")
        elif b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append("\\%03o" % b)
    return "".join(out)


def _raw_print(fields, indent, budget, out):
    pad = "  " * indent
    for number, kind, value in fields:
        if kind == "varint":
            out.append("%s%d: %d\n" % (pad, number, value))
        elif kind == "fixed32":
            out.append("%s%d: 0x%08x\n" % (pad, number, value))
        elif kind == "fixed64":
            out.append("%s%d: 0x%016x\n" % (pad, number, value))
        elif kind == "group":
            out.append("%s%d {\n" % (pad, number))
            _raw_print(value, indent + 1, budget - 1, out)
            out.append("%s}\n" % pad)
        else:
            sub = None
            if value and budget > 0:
                try:
                    sub, _ = _raw_parse(value, 0, budget)
                except _RawParseError:
                    sub = None
            if sub is not None:
                out.append("%s%d {\n" % (pad, number))
                _raw_print(sub, indent + 1, budget - 1, out)
                out.append("%s}\n" % pad)
            else:
                out.append('%s%d: "%s"\n' % (pad, number, _c_escape(value)))


def decode_raw_text(pb):
    """Render protobuf bytes like `protoc --decode_raw` (protobuf 3.21): field numbers,
    nested messages guessed the same way protoc guesses them, strings C-escaped with
    octal for bytes outside printable ASCII. Raises DecodeError where protoc says
    "Failed to parse input."
    """
    try:
        fields, _ = _raw_parse(bytes(pb), 0, _CODED_STREAM_RECURSION_LIMIT)
    except _RawParseError:
        raise DecodeError("Failed to parse input.") from None
    out = []
    _raw_print(fields, 0, _UNKNOWN_FIELD_RECURSION_LIMIT, out)
    return "".join(out)


# --------------------------------------------------------------------------
# The receiver
# --------------------------------------------------------------------------

_FAULT_DEFAULTS = {
    "fail_ratio": 0.0,          # fraction of pushes answered with a status from fail_statuses
    "fail_statuses": list(DEFAULT_FAIL_STATUSES),
    "seed": 0,                  # setting it re-seeds the fail_ratio generator
    "fail_next": 0,             # the next N pushes fail (statuses from fail_statuses in turn)
    "down": False,              # close push connections at once, no HTTP response
    "down_hard": False,         # close the listening socket (connection refused); False reopens
    "down_seconds": None,       # with down/down_hard: come back up by itself after this long
    "delay_seconds": 0.0,       # wait this long before answering a push
    "force_status": None,       # answer every push with this status
    "force_body": None,         # body for force_status (default: a Loki-like message)
    "retry_after": None,        # seconds: Retry-After header on 429 (and 503) answers
}


def _now():
    return time.time()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler, receiver):
        self.receiver = receiver
        super().__init__(addr, handler)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return                      # a client went away, or we dropped it (down)
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "loki-receiver/1.0"
    sys_version = ""
    timeout = 120                      # like Loki's http_server_idle_timeout

    def setup(self):
        super().setup()
        self.server.receiver._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.receiver._track(self.connection, False)

    def log_message(self, fmt, *args):  # quiet unless asked
        if self.server.receiver.verbose:
            sys.stderr.write("loki_receiver: %s - %s\n" % (self.address_string(), fmt % args))

    # -- helpers --
    def _send(self, status, body=b"", ctype="text/plain; charset=utf-8", headers=None):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if status != 204 and status >= 200:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if status != 204 and self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _send_json(self, status, obj):
        self._send(status, json.dumps(obj, sort_keys=True) + "\n", "application/json")

    def _read_body(self):
        """Return body bytes, or None after answering an error."""
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof in chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    self.close_connection = True
                    self._send(413, "request body too large\n")
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
            return b"".join(chunks)
        cl = self.headers.get("Content-Length")
        if cl is None:
            self.close_connection = True
            self._send(411, "length required\n")
            return None
        try:
            n = int(cl)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._send(400, "bad Content-Length\n")
            return None
        if n > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(413, "request body too large\n")
            return None
        data = self.rfile.read(n)
        if len(data) != n:
            raise ConnectionError("short body")
        return data

    # -- verbs --
    def do_POST(self):
        path = self.path.split("?", 1)[0]
        rcv = self.server.receiver
        if path == PUSH_PATH:
            return rcv._handle_push(self)
        if path == "/admin/faults":
            body = self._read_body()
            if body is None:
                return
            try:
                kw = json.loads(body.decode("utf-8") or "{}")
                if not isinstance(kw, dict):
                    raise ValueError("expected a JSON object")
                # closing the listener also drops this very connection: answer first
                later = {k: kw.pop(k) for k in ("down_hard", "down_seconds") if k in kw}
                rcv._check_faults(later)
                faults = rcv.set_faults(**kw)
                if later:
                    faults = dict(faults, **later)
            except (ValueError, TypeError) as e:
                return self._send_json(400, {"error": str(e)})
            if later:
                self.close_connection = True
            self._send_json(200, faults)
            if later:
                rcv.set_faults(**later)
            return
        if path == "/admin/reset":
            body = self._read_body()
            if body is None:
                return
            rcv.clear()
            rcv.reset_faults()
            return self._send_json(200, {"ok": True})
        body = self._read_body()
        self._send(404, "404 page not found\n")

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        rcv = self.server.receiver
        if path == "/stats":
            return self._send_json(200, rcv.stats())
        if path == "/admin/faults":
            return self._send_json(200, rcv.get_faults())
        if path == "/ready":
            return self._send(200, "ready\n")
        if path == "/entries":
            return self._send_json(200, [_jsonable(e) for e in rcv.all_entries()])
        if path == "/requests":
            return self._send_json(200, rcv.requests())
        if path == PUSH_PATH:
            return self._send(405, "method not allowed\n")
        self._send(404, "404 page not found\n")

    do_HEAD = do_GET


def _jsonable(entry):
    d = dict(entry)
    if "line_bytes" in d:
        d["line_bytes_b64"] = base64.b64encode(d.pop("line_bytes")).decode()
    return d


class Receiver:
    """A fake Loki push endpoint on 127.0.0.1.

        r = Receiver(); r.start()          # port=0: any free port
        ... point loglet at r.url ...
        assert r.wait_for(3, timeout=10)   # 3 entries delivered
        r.lines(); r.all_entries(); r.stats(); r.requests()
        r.set_faults(fail_ratio=1.0); r.set_faults(down=True); r.reset_faults()
        r.stop()

    It is also a context manager (start on enter, stop on exit).
    """

    def __init__(self, count_only=False, out_path=None, strict_utf8=False,
                 max_label_names=30, max_line_size=0, host="127.0.0.1", verbose=False,
                 keep_requests=10000, ssl_context=None):
        self.ssl_context = ssl_context  # an ssl.SSLContext: serve HTTPS (for TLS tests)
        self.count_only = count_only
        self.out_path = out_path
        self.strict_utf8 = strict_utf8
        self.max_label_names = max_label_names
        self.max_line_size = max_line_size
        self.host = host
        self.verbose = verbose
        self.keep_requests = keep_requests
        self.port = None
        self._server = None
        self._thread = None
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._conns = set()
        self._out = None
        self._up_timer = None
        self._faults = dict(_FAULT_DEFAULTS)
        self._faults["fail_statuses"] = list(DEFAULT_FAIL_STATUSES)
        self._rng = random.Random(0)
        self._fail_next_idx = 0
        self._running = False
        self._next_id = 0
        self.clear()

    # -- lifecycle --
    @property
    def url(self):
        return "%s%s" % (self.base_url, PUSH_PATH)

    @property
    def base_url(self):
        return "%s://%s:%d" % ("https" if self.ssl_context else "http", self.host, self.port)

    def start(self, port=0):
        with self._lock:
            if self._running:
                raise RuntimeError("already started")
            self._running = True
            if self.out_path and self._out is None:
                self._out = open(self.out_path, "a", encoding="utf-8")
            self._listen(port)
        return self

    def _listen(self, port):
        srv = _Server((self.host, port), _Handler, self)
        if self.ssl_context is not None:
            srv.socket = self.ssl_context.wrap_socket(srv.socket, server_side=True)
        self.port = srv.server_address[1]
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="loki-receiver-%d" % self.port, daemon=True)
        self._thread.start()

    def _close_listener(self):
        srv, th = self._server, self._thread
        self._server = self._thread = None
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        if th is not None:
            th.join(5)
        self._drop_connections()

    def _drop_connections(self):
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        with self._lock:
            self._running = False
            if self._up_timer is not None:
                self._up_timer.cancel()
                self._up_timer = None
            self._close_listener()
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None

    def __enter__(self):
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _track(self, conn, add):
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # -- faults --
    def set_faults(self, **kw):
        """Change fault injection at runtime; unspecified keys keep their value.

        Keys: fail_ratio, fail_statuses, seed, fail_next, down, down_hard, down_seconds,
        delay_seconds, force_status, force_body, retry_after.
        """
        self._check_faults(kw)
        with self._lock:
            was_hard = self._faults["down_hard"]
            self._faults.update(kw)
            if "seed" in kw:
                self._rng = random.Random(kw["seed"])
            if "fail_next" in kw:
                self._fail_next_idx = 0
            if self._up_timer is not None and ("down" in kw or "down_hard" in kw):
                self._up_timer.cancel()
                self._up_timer = None
            now_hard = self._faults["down_hard"]
            started = self._running
            if started and now_hard and not was_hard:
                self._close_listener()
            elif started and was_hard and not now_hard and self._server is None:
                self._reopen()
            ds = self._faults["down_seconds"]
            if ds and ("down" in kw or "down_hard" in kw) and (
                    self._faults["down"] or self._faults["down_hard"]):
                self._up_timer = threading.Timer(ds, self._come_back_up)
                self._up_timer.daemon = True
                self._up_timer.start()
        return self.get_faults()

    @staticmethod
    def _check_faults(kw):
        """Validate and normalise fault settings in place; raise ValueError."""
        unknown = set(kw) - set(_FAULT_DEFAULTS)
        if unknown:
            raise ValueError("unknown fault(s): %s" % ", ".join(sorted(unknown)))
        if "fail_ratio" in kw:
            fr = float(kw["fail_ratio"])
            if not 0.0 <= fr <= 1.0:
                raise ValueError("fail_ratio must be within 0..1")
            kw["fail_ratio"] = fr
        if "fail_statuses" in kw:
            fs = [int(s) for s in kw["fail_statuses"]]
            if not fs or any(not 400 <= s <= 599 for s in fs):
                raise ValueError("fail_statuses must be a non-empty list of HTTP statuses")
            kw["fail_statuses"] = fs
        if kw.get("force_status") is not None:
            fs = int(kw["force_status"])
            if not 200 <= fs <= 599:
                raise ValueError("force_status must be an HTTP status 200..599")
            kw["force_status"] = fs
        for k in ("delay_seconds",):
            if k in kw:
                kw[k] = float(kw[k] or 0.0)
        for k in ("down_seconds", "retry_after"):
            if kw.get(k) is not None:
                kw[k] = float(kw[k]) if k == "down_seconds" else int(kw[k])
        if "fail_next" in kw:
            kw["fail_next"] = int(kw["fail_next"])
        for k in ("down", "down_hard"):
            if k in kw:
                kw[k] = bool(kw[k])

    def _reopen(self):
        deadline = time.monotonic() + 5
        while True:
            try:
                self._listen(self.port)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _come_back_up(self):
        with self._lock:
            self._up_timer = None
        self.set_faults(down=False, down_hard=False, down_seconds=None)

    def get_faults(self):
        with self._lock:
            f = dict(self._faults)
            f["fail_statuses"] = list(f["fail_statuses"])
            return f

    def reset_faults(self):
        """Back to a healthy Loki (reopens the socket after down_hard)."""
        d = dict(_FAULT_DEFAULTS)
        d["fail_statuses"] = list(DEFAULT_FAIL_STATUSES)
        return self.set_faults(**d)

    # -- records --
    def clear(self):
        """Forget everything received (faults are kept)."""
        with self._lock:
            self._streams = []
            self._requests = []
            self._errors = []
            self._by_status = {}
            self._n_requests = 0
            self._n_entries = 0
            self._n_streams = 0
            self._n_line_bytes = 0
            self._bytes_compressed = 0
            self._bytes_uncompressed = 0
            self._n_invalid = 0
            self._n_unsupported = 0
            self._n_failed = 0
            self._n_dropped = 0
            self._n_utf8_errors = 0
            self._cond.notify_all()

    def streams(self):
        """Every delivered stream, one item per stream per accepted push, in arrival order."""
        with self._lock:
            return list(self._streams)

    def all_entries(self, match=None):
        """Delivered entries flattened: [{labels, label_map, ts_ns, line, metadata, request}]
        (plus "error"/"line_bytes" for a line that is not UTF-8). match: optional dict of
        labels that must all be equal."""
        with self._lock:
            streams = list(self._streams)
        out = []
        for s in streams:
            lm = s["label_map"]
            if match and any(lm.get(k) != v for k, v in match.items()):
                continue
            for e in s["entries"]:
                d = {"labels": s["labels"], "label_map": lm, "request": s["request"]}
                d.update(e)
                out.append(d)
        return out

    def lines(self, match=None):
        return [e["line"] for e in self.all_entries(match)]

    def requests(self):
        """One record per push request: {id, time, status, outcome, reason, headers,
        bytes_compressed, bytes_uncompressed, streams, entries}."""
        with self._lock:
            return [dict(r) for r in self._requests]

    def errors(self):
        """Bodies that failed validation and entries with UTF-8 problems, with the reason."""
        with self._lock:
            return [dict(e) for e in self._errors]

    def entry_count(self):
        with self._lock:
            return self._n_entries

    def stats(self):
        with self._lock:
            return {
                "requests": self._n_requests,
                "entries": self._n_entries,
                "streams": self._n_streams,
                "line_bytes": self._n_line_bytes,
                "bytes_compressed": self._bytes_compressed,
                "bytes_uncompressed": self._bytes_uncompressed,
                "by_status": {str(k): v for k, v in sorted(self._by_status.items())},
                "invalid": self._n_invalid,
                "unsupported_media_type": self._n_unsupported,
                "failed_injected": self._n_failed,
                "dropped_down": self._n_dropped,
                "utf8_errors": self._n_utf8_errors,
                "count_only": self.count_only,
            }

    def wait_for(self, what, timeout=10.0):
        """Wait until `what` holds; return True, or False on timeout.

        what: an int N (at least N entries delivered) or a zero-argument callable.
        """
        if isinstance(what, int):
            n = what
            pred = lambda: self._n_entries >= n  # noqa: E731
        elif callable(what):
            pred = what
        else:
            raise TypeError("wait_for wants an int or a callable")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if pred():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))

    def wait_for_requests(self, n, timeout=10.0):
        """Wait until at least n push requests were answered (any status)."""
        return self.wait_for(lambda: self._n_requests >= n, timeout)

    # -- the push path --
    def _record_request(self, rec):
        # caller holds the lock
        self._n_requests += 1
        self._by_status[rec["status"]] = self._by_status.get(rec["status"], 0) + 1
        if self.keep_requests:
            self._requests.append(rec)
            if len(self._requests) > self.keep_requests:
                del self._requests[:len(self._requests) - self.keep_requests]
        self._cond.notify_all()

    def _pick_fault(self):
        """Under the lock: (status, kind) of an injected failure, or (None, None)."""
        f = self._faults
        if f["force_status"] is not None:
            return f["force_status"], "force_status"
        if f["fail_next"] > 0:
            f["fail_next"] -= 1
            st = f["fail_statuses"][self._fail_next_idx % len(f["fail_statuses"])]
            self._fail_next_idx += 1
            return st, "fail_next"
        if f["fail_ratio"] > 0 and self._rng.random() < f["fail_ratio"]:
            return self._rng.choice(f["fail_statuses"]), "fail_ratio"
        return None, None

    def _handle_push(self, h):
        with self._lock:
            down = self._faults["down"] or self._faults["down_hard"]
            if down:
                self._n_dropped += 1
                self._cond.notify_all()
        if down:
            h.close_connection = True
            try:
                # linger 0: close() sends a RST, as a dead or firewalled Loki would
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
            except OSError:
                pass
            return

        headers = {k: h.headers.get(k) for k in HEADERS_OF_INTEREST if h.headers.get(k) is not None}
        try:
            body = h._read_body()
        except ValueError as e:
            h.close_connection = True
            return h._send(400, "bad chunked body: %s\n" % e)
        if body is None:
            return
        with self._lock:
            req_id = self._next_id
            self._next_id += 1
        rec = {"id": req_id, "time": _now(), "headers": headers, "bytes_compressed": len(body),
               "bytes_uncompressed": 0, "streams": 0, "entries": 0, "reason": None}

        status, outcome, reason, streams, counts = self._decode_validate(h, body, rec)

        with self._lock:
            delay = self._faults["delay_seconds"]
            if status is None:
                fstatus, fkind = self._pick_fault()
                if fstatus is not None:
                    status, outcome = fstatus, fkind
                    reason = self._faults["force_body"] if fkind == "force_status" else None
                    if reason is None:
                        reason = self._fault_body(fstatus, streams)
            retry_after = self._faults["retry_after"]

        if delay:
            time.sleep(delay)

        if status is None or 200 <= status < 300:
            if status is None:
                status = 204
            outcome = outcome or "accepted"
            self._deliver(rec, streams, counts)
        with self._lock:
            rec["status"] = status
            rec["outcome"] = outcome
            rec["reason"] = reason
            if outcome in ("invalid", "unsupported_media_type"):
                self._errors.append({"request": rec["id"], "status": status, "reason": reason})
                if outcome == "invalid":
                    self._n_invalid += 1
                else:
                    self._n_unsupported += 1
            elif outcome in ("force_status", "fail_next", "fail_ratio") and not 200 <= status < 300:
                self._n_failed += 1
            self._record_request(rec)

        hdrs = {}
        if retry_after is not None and status in (429, 503):
            hdrs["Retry-After"] = retry_after
        if status == 204:
            h._send(204, headers=hdrs)
        elif 200 <= status < 300:
            h._send(status, "", headers=hdrs)
        else:
            h._send(status, (reason or http.client.responses.get(status, "error")) + "\n",
                    headers=hdrs)

    def _fault_body(self, status, streams):
        if status == 400:
            labels = streams[0]["labels"] if streams else "{}"
            ts = ""
            if streams and streams[0]["entries"]:
                ns = streams[0]["entries"][0]["ts_ns"]
                ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + "Z"
            return ("entry for stream '%s' has timestamp too old: %s, "
                    "oldest acceptable timestamp is: 1970-01-01T00:00:00Z" % (labels, ts))
        if status == 429:
            return ("Ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec) "
                    "while attempting to ingest lines totaling bytes, reduce log volume or "
                    "contact your Loki administrator to see if the limit can be increased")
        return http.client.responses.get(status, "error")

    def _decode_validate(self, h, body, rec):
        """Return (status|None, outcome|None, reason|None, streams|None, counts)."""
        ctype = (h.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/x-protobuf":
            return (415, "unsupported_media_type",
                    "unsupported Content-Type %r (want application/x-protobuf)"
                    % h.headers.get("Content-Type"), None, None)
        enc = (h.headers.get("Content-Encoding") or "").strip().lower()
        try:
            if enc == "gzip":
                body = gzip.decompress(body)
            elif enc == "deflate":
                body = zlib.decompress(body)
            elif enc not in ("", "identity"):
                return (415, "unsupported_media_type",
                        "unsupported Content-Encoding %r" % enc, None, None)
        except (OSError, zlib.error, EOFError) as e:
            return 400, "invalid", "Content-Encoding %s: %s" % (enc, e), None, None
        try:
            pb = snappy_uncompress(body)
            rec["bytes_uncompressed"] = len(pb)
            if self.count_only:
                counts = scan_push_counts(pb)
                return None, None, None, None, counts
            streams = decode_push_request(pb)
        except DecodeError as e:
            return 400, "invalid", str(e), None, None
        line_bytes = 0
        for s in streams:
            if self.max_label_names and len(s["label_map"]) > self.max_label_names:
                return (400, "invalid", "stream '%s' has %d label names; limit: %d"
                        % (s["labels"], len(s["label_map"]), self.max_label_names), None, None)
            for e in s["entries"]:
                n = len(e["line_bytes"]) if "line_bytes" in e else len(e["line"].encode("utf-8"))
                line_bytes += n
                if self.max_line_size and n > self.max_line_size:
                    return (400, "invalid", "max entry size '%d' bytes exceeded for stream '%s' "
                            "while adding an entry with length '%d' bytes"
                            % (self.max_line_size, s["labels"], n), None, None)
                if "error" in e and self.strict_utf8:
                    return 400, "invalid", e["error"], None, None
        counts = (len(streams), sum(len(s["entries"]) for s in streams), line_bytes)
        return None, None, None, streams, counts

    def _deliver(self, rec, streams, counts):
        nstreams, nentries, line_bytes = counts
        rec["streams"] = nstreams
        rec["entries"] = nentries
        with self._lock:
            self._n_streams += nstreams
            self._n_entries += nentries
            self._n_line_bytes += line_bytes
            self._bytes_compressed += rec["bytes_compressed"]
            self._bytes_uncompressed += rec["bytes_uncompressed"]
            if streams is not None:
                req_id = rec["id"]
                for s in streams:
                    s["request"] = req_id
                    for e in s["entries"]:
                        if "error" in e:
                            self._n_utf8_errors += 1
                            self._errors.append({"request": req_id, "status": 204,
                                                 "reason": e["error"], "labels": s["labels"],
                                                 "ts_ns": e["ts_ns"]})
                self._streams.extend(streams)
                if self._out is not None:
                    for s in streams:
                        for e in s["entries"]:
                            d = {"labels": s["labels"], "ts_ns": e["ts_ns"], "line": e["line"],
                                 "metadata": e["metadata"]}
                            if "error" in e:
                                d["error"] = e["error"]
                                d["line_bytes_b64"] = base64.b64encode(e["line_bytes"]).decode()
                            self._out.write(json.dumps(d, ensure_ascii=False) + "\n")
                    self._out.flush()


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Loki push endpoint (for loglet's tests).")
    ap.add_argument("--port", type=int, default=3100, help="0 picks a free port (default 3100)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--out", help="append one JSON object per delivered entry to this file")
    ap.add_argument("--fail-ratio", type=float, default=0.0)
    ap.add_argument("--fail-statuses", default="500,429,503",
                    help="comma-separated statuses used by --fail-ratio")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count-only", action="store_true",
                    help="only count entries and bytes (fast); see GET /stats")
    ap.add_argument("--strict-utf8", action="store_true",
                    help="answer 400 to a line that is not valid UTF-8 (default: accept, record)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.count_only and args.out:
        ap.error("--out needs decoded entries: it cannot be combined with --count-only")

    rcv = Receiver(count_only=args.count_only, out_path=args.out, strict_utf8=args.strict_utf8,
                   host=args.host, verbose=args.verbose,
                   keep_requests=0 if args.count_only else 10000)
    rcv.set_faults(fail_ratio=args.fail_ratio, seed=args.seed,
                   fail_statuses=[int(s) for s in args.fail_statuses.split(",") if s.strip()])
    rcv.start(args.port)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("listening on http://%s:%d" % (args.host, rcv.port), flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        rcv.stop()
        sys.stderr.write("loki_receiver: %s\n" % json.dumps(rcv.stats(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
