"""A Kubernetes API server's endpoints the agent calls, over HTTPS on loopback: GET and DELETE of a
pod and POST of an Event, answering as the real one does (the object, or a ``Status`` with its code).
A real API server cannot run here; the shapes are the API's.

    with KubeAPIServer(tmp_path) as api:
        api.pods = {("team-a", "notebook")}
        api.metadata[("team-a", "notebook")] = {"labels": {"team": "ml"}, "annotations": {}}
        api.fail_next = [500]          # the next request answers 500
        ... api.requests, api.events
"""

from __future__ import annotations

import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.tls import self_signed

POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")
EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")
REASONS = {401: "Unauthorized", 404: "NotFound", 409: "Conflict", 500: "InternalError"}


def status(code: int, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": REASONS.get(code, ""), "code": code}


class KubeAPIServer:
    def __init__(self, directory: Path, token: str = "sa-token"):
        self.ca_file, key = self_signed(directory, "kube-api")
        self.token_file = directory / "token"
        self.token_file.write_text(token + "\n")
        self.token = token
        self.pods: set[tuple[str, str]] = set()
        self.fail_next: list[int] = []  # status codes the next requests answer, in order
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.events: list[dict] = []
        self.metadata: dict[tuple[str, str], dict] = {}  # a pod's labels and annotations, by (namespace, name)
        self.lock = threading.Lock()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(self.ca_file, key)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, method: str, path: str, authorization: str, body: bytes) -> tuple[int, dict]:
        with self.lock:
            self.requests.append((method, path))
            if authorization != f"Bearer {self.token}":
                return 401, status(401, "Unauthorized")
            if self.fail_next:
                code = self.fail_next.pop(0)
                return code, status(code, "injected")
            if method == "GET" and (m := POD.match(path)):
                ns, name = m.groups()
                if (ns, name) not in self.pods:
                    return 404, status(404, f'pods "{name}" not found')
                return 200, {"kind": "Pod", "apiVersion": "v1",
                             "metadata": {"name": name, "namespace": ns, **self.metadata.get((ns, name), {})}}
            if method == "DELETE" and (m := POD.match(path)):
                ns, name = m.groups()
                if (ns, name) not in self.pods:
                    return 404, status(404, f'pods "{name}" not found')
                self.pods.discard((ns, name))
                return 200, {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name, "namespace": ns,
                             "deletionTimestamp": "2026-01-01T00:00:00Z"}}
            if method == "POST" and (m := EVENTS.match(path)):
                event = json.loads(body)
                if event["metadata"].get("namespace") != m.group(1):
                    return 400, status(400, "the namespace of the object does not match the request")
                self.events.append(event)
                return 201, event
            return 404, status(404, "the server could not find the requested resource")

    def __enter__(self) -> KubeAPIServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: KubeAPIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            code, answer = server.answer(self.command, self.path, self.headers.get("Authorization", ""), body)
            raw = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_DELETE = do_POST = _serve

        def log_message(self, *args) -> None:
            pass

    return Handler
