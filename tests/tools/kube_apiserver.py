"""A small stand-in for the Kubernetes API server, for loglet's tests.

It speaks the wire format a real API server speaks to a reflector (client-go's
list-then-watch), for pods and namespaces only:
  GET /api/v1/pods?fieldSelector=spec.nodeName%3DN&limit=L[&continue=C]
      -> {"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":..,"continue":..},"items":[..]}
  GET /api/v1/pods?...&watch=true&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=T
      -> 200, Transfer-Encoding: chunked, one JSON event per line:
         {"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{..}}
         every event after RV in order; an RV older than the compaction point gets one
         ERROR event with a 410 Status (what a real server does), then the stream ends.
  The same for /api/v1/namespaces (no field selector).
Authentication: `Authorization: Bearer <token>` must match the current token (rotate_token()
changes it; the old one is refused with 401), or a client certificate signed by the test CA.
TLS with a CA generated at test time by the openssl CLI (make_tls()).

Faults for the tests: watch_close_after (the server ends every watch after N seconds,
as real API servers do after their timeout), compact() (older resourceVersions -> 410),
garbage_next_watch (a line that is not JSON), page_size (forces paging of lists),
status_override (answer every request with this status), stop()/start() on the same port.
Counters: lists, watches, unauthorized, tokens_seen, watch_versions.

Used as a library by tests/integration/test_kubernetes.py.
"""
import http.server
import json
import os
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid


def make_tls(d):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in d."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=kube test CA")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("apiserver", ["-extfile", "san.ext"]), ("client", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=system:node:{name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", *ext)
    return {n: os.path.join(d, n) for n in ("ca.crt", "apiserver.crt", "apiserver.key", "client.crt", "client.key")}


def pod(namespace, name, node="node-a", uid=None, labels=None, annotations=None, owner=None):
    """A pod object as the API server returns it. owner: (kind, name) of the controller."""
    meta = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
            "creationTimestamp": "2026-12-01T10:00:00Z", "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}]}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": str(uuid.uuid4()), "controller": True, "blockOwnerDeletion": True}]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]},
            "status": {"phase": "Running"}}


def namespace(name, labels=None, annotations=None):
    return {"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": name, "uid": str(uuid.uuid4()), "labels": dict(labels or {}),
                         "annotations": dict(annotations or {})},
            "status": {"phase": "Active"}}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _json(self, status, obj):
        body = (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _status(self, code, reason, message):
        self._json(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code})

    def do_GET(self):
        api = self.server.api
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if api.status_override:
            return self._status(api.status_override, "InternalError", "injected")
        token = (self.headers.get("Authorization") or "")
        cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        with api.lock:
            api.tokens_seen.append(token[len("Bearer "):] if token.startswith("Bearer ") else None)
            ok = token == "Bearer " + api.token if api.token else True
            if not ok and cert and api.accept_client_cert:
                ok = True
            if not ok:
                api.unauthorized += 1
        if not ok:
            return self._status(401, "Unauthorized", "Unauthorized")
        kind = {"/api/v1/pods": "pods", "/api/v1/namespaces": "namespaces"}.get(url.path)
        if not kind:
            return self._status(404, "NotFound", "the server could not find the requested resource")
        if kind == "namespaces" and not api.allow_namespaces:
            return self._status(403, "Forbidden", 'namespaces is forbidden: User "system:serviceaccount:'
                                'loglet:loglet" cannot list resource "namespaces"')
        node = None
        fs = q.get("fieldSelector", "")
        if fs:
            if not fs.startswith("spec.nodeName="):
                return self._status(400, "BadRequest", "unsupported field selector " + fs)
            node = fs[len("spec.nodeName="):]
        if q.get("watch") in ("true", "1"):
            return self._watch(kind, node, q)
        return self._list(kind, node, q)

    def _list(self, kind, node, q):
        api = self.server.api
        if api.list_delay.get(kind):
            time.sleep(api.list_delay[kind])
        with api.lock:
            api.lists += 1
            items = [o for o in api._objects(kind) if node is None or o["spec"].get("nodeName") == node]
            rv = str(api.rv)
        limit = int(q.get("limit", "0") or 0)
        if api.page_size:
            limit = min(limit, api.page_size) if limit else api.page_size
        start = int(q.get("continue", "0") or 0)
        page = items[start:start + limit] if limit else items[start:]
        cont = str(start + limit) if limit and start + limit < len(items) else ""
        meta = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
        self._json(200, {"kind": "PodList" if kind == "pods" else "NamespaceList", "apiVersion": "v1",
                         "metadata": meta, "items": page})

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, kind, node, q):
        api = self.server.api
        since = int(q.get("resourceVersion") or 0)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        timeout = float(q.get("timeoutSeconds") or 1800)
        if api.watch_close_after:
            timeout = min(timeout, api.watch_close_after)
        with api.lock:
            api.watches += 1
            api.watch_versions.append((kind, since))
            garbage = api.garbage_next_watch
            api.garbage_next_watch = False
            gone = since < api.compacted
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if gone:
                self._chunk((json.dumps({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "too old resource version: %d (%d)" % (since, api.compacted),
                    "reason": "Expired", "code": 410}}) + "\n").encode())
                self._chunk(b"")
                return
            if garbage:
                self._chunk(b'{"type":"ADDED","object":{"metadata": nonsense\n')
            deadline = time.monotonic() + timeout
            last_bookmark = time.monotonic()
            sent = since
            while time.monotonic() < deadline and not api.stopping:
                with api.cond:
                    pending = [e for e in api.events if e[0] > sent and e[1] == kind]
                    if not pending:
                        api.cond.wait(0.1)
                        pending = [e for e in api.events if e[0] > sent and e[1] == kind]
                    current_rv = api.event_rv
                for rv, _, etype, obj in pending:
                    sent = rv
                    if kind == "pods" and node is not None and obj["spec"].get("nodeName") != node:
                        continue
                    self._chunk((json.dumps({"type": etype, "object": obj}) + "\n").encode())
                if bookmarks and time.monotonic() - last_bookmark >= api.bookmark_every:
                    last_bookmark = time.monotonic()
                    sent = max(sent, current_rv)
                    with api.lock:
                        api.bookmarks_sent += 1
                    self._chunk((json.dumps({"type": "BOOKMARK", "object": {
                        "kind": "Pod" if kind == "pods" else "Namespace", "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(sent),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}}) + "\n").encode())
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass


class APIServer:
    def __init__(self, tls, token="token-1"):
        self.tls = tls
        self.token = token
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.rv = 1000
        self.event_rv = 1000  # what bookmarks report: a silent change has no event to mark
        self.pods = {}
        self.nss = {}
        self.events = []  # (rv, kind, type, object)
        self.compacted = 0
        self.watch_close_after = 0
        self.bookmark_every = 1.0
        self.garbage_next_watch = False
        self.page_size = 0
        self.list_delay = {}  # kind ("pods", "namespaces") -> seconds a list answer is held back
        self.status_override = 0
        self.allow_namespaces = True
        self.accept_client_cert = True
        self.lists = self.watches = self.unauthorized = self.bookmarks_sent = 0
        self.tokens_seen = []
        self.watch_versions = []
        self.stopping = False
        self.httpd = None
        self.port = 0

    # -- state ------------------------------------------------------------------------------------
    def _objects(self, kind):
        return list((self.pods if kind == "pods" else self.nss).values())

    def _emit(self, kind, etype, obj):
        with self.cond:
            self.rv += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.events.append((self.rv, kind, etype, obj))
            self.event_rv = self.rv
            self.cond.notify_all()
            return obj

    def put_pod(self, obj):
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self.lock:
            etype = "MODIFIED" if key in self.pods else "ADDED"
            self.pods[key] = self._emit("pods", etype, obj)

    def delete_pod(self, ns, name):
        with self.lock:
            obj = self.pods.pop((ns, name))
            self._emit("pods", "DELETED", obj)

    def put_namespace(self, obj):
        name = obj["metadata"]["name"]
        with self.lock:
            etype = "MODIFIED" if name in self.nss else "ADDED"
            self.nss[name] = self._emit("namespaces", etype, obj)

    def put_pod_silently(self, obj):
        """Changes a pod without an event (as if the event were lost): only a relist sees it."""
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self.lock:
            self.rv += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.pods[key] = obj

    def compact(self):
        """Every version up to now is gone: a watch from one of them gets 410."""
        with self.cond:
            self.compacted = self.rv  # the current version stays valid
            self.events = []
            self.cond.notify_all()

    def rotate_token(self, new):
        with self.lock:
            self.token = new

    # -- life -------------------------------------------------------------------------------------
    def start(self):
        self.stopping = False
        self.httpd = _Server(("127.0.0.1", self.port), _Handler)
        self.httpd.api = self
        self.port = self.httpd.server_address[1]
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls["apiserver.crt"], self.tls["apiserver.key"])
            ctx.load_verify_locations(self.tls["ca.crt"])
            ctx.verify_mode = ssl.CERT_OPTIONAL
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self):
        """Down: no more connections, open watches end."""
        self.stopping = True
        with self.cond:
            self.cond.notify_all()
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    @property
    def url(self):
        return "https://127.0.0.1:%d" % self.port
