"""Reading an archive the way a user would: every object decompressed with
Python's own gzip, every record parsed as the kubelet's CRI line, keys
matched against the default layout.

Nothing here uses loglet's code: it is the oracle the archive tests compare
the agent's objects with.
"""
import gzip
import os
import re

# kube.var.log.containers.{pod}_{namespace}_{container}-{container_id}/{date}_{index}.gz
DEFAULT_KEY = re.compile(r"^kube\.var\.log\.containers\.(?P<pod>[^_/]+)_(?P<namespace>[^_/]+)_(?P<container>[^/]+)"
                         r"-(?P<container_id>[0-9a-f]{64})/(?P<date>\d{4}-\d{2}-\d{2})_(?P<index>\d+)\.gz$")
CRI = re.compile(r"^(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z) (?P<stream>stdout|stderr) (?P<tag>[PF]) "
                 r"(?P<content>.*)$")


def file_objects(root, include_hidden=False):
    """{key: bytes} of every object under a file:// archive. Temporary files
    (.NAME.tmp.PID, being written) are left out unless include_hidden: once
    the agent stopped there must be none."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.startswith(".") and not include_hidden:
                continue
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def records(data, key="?"):
    """The CRI records of one gzip object: [(ts, stream, content)]; a line that
    is not CRI is an AssertionError naming the key and line number. A record
    the agent wrote as partial pieces (P ... then F, one per line of a
    multiline record) is joined back with newlines; its pieces must share
    the time and stream, and the object must not end inside one."""
    text = gzip.decompress(data).decode("utf-8")
    assert text.endswith("\n") or not text, f"{key}: last record has no newline"
    out = []
    pieces = []
    for n, line in enumerate(text.split("\n")[:-1] if text else [], 1):
        m = CRI.match(line)
        assert m, f"{key}:{n}: not a CRI record: {line[:200]!r}"
        if pieces:
            assert (m["ts"], m["stream"]) == pieces[0][:2], f"{key}:{n}: a piece of another record: {line[:200]!r}"
        pieces.append((m["ts"], m["stream"], m["content"]))
        if m["tag"] == "F":
            out.append((pieces[0][0], pieces[0][1], "\n".join(p[2] for p in pieces)))
            pieces = []
    assert not pieces, f"{key}: ends inside a record of partial pieces"
    return out


def by_container(objects, key_re=DEFAULT_KEY):
    """{(namespace, pod, container, container_id): [(index, key, records)]} sorted by
    index; a key not in the layout is an AssertionError."""
    out = {}
    for key, data in objects.items():
        m = key_re.match(key)
        assert m, f"key {key!r} is not in the layout {key_re.pattern}"
        ident = (m["namespace"], m["pod"], m["container"], m["container_id"])
        out.setdefault(ident, []).append((int(m["index"]), key, records(data, key)))
    for v in out.values():
        v.sort()
    return out


def contents_in_order(entries):
    """The contents of one container's objects, object by object in index order."""
    return [r[2] for _, _, recs in entries for r in recs]
