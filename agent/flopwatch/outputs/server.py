"""The HTTP endpoint: /metrics (Prometheus text) and /api/v1/status (JSON). Read-only.

Requests only render the last tick's state, so any number of scrapers cost no NVML calls.
TLS and basic auth come from a web-config file (webconfig.py); both are off by default.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from flopwatch.config import ConfigError
from flopwatch.httpbase import LISTEN_BACKLOG, POLL_SECONDS, ListenError, QuietErrors, StrictHandler, parse_listen
from flopwatch.outputs.webconfig import WWW_AUTHENTICATE, WebConfig

log = logging.getLogger(__name__)

INDEX = b"""<html><head><title>flopwatch</title></head><body><h1>flopwatch</h1>
<p><a href="/metrics">/metrics</a> &middot; <a href="/api/v1/status">/api/v1/status</a></p></body></html>
"""


class _Handler(StrictHandler):
    server: "MetricsServer"
    # Headers and body are two writes: with Nagle on, the body waits for the client's delayed
    # ACK of the headers, 40 ms on Linux, on every kept-alive scrape.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, self.server.metrics())
        elif path == "/api/v1/status":
            body = json.dumps(self.server.status(), default=str).encode()
            self._send(200, "application/json", body)
        elif path in ("/", ""):
            self._send(200, "text/html; charset=utf-8", INDEX)
        elif path in ("/-/healthy", "/-/ready"):
            self._send(200, "text/plain", b"OK\n")
        else:
            self._send(404, "text/plain", b"not found\n")

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
        if self._authorized():
            self._send(405, "text/plain", b"method not allowed\n")

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _authorized(self) -> bool:
        if self.server.web.check_basic_auth(self.headers.get("Authorization")):
            return True
        self._send(401, "text/plain", b"Unauthorized\n", {"WWW-Authenticate": WWW_AUTHENTICATE})
        return False

    def _send(self, code: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in {**self.server.web.headers, **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class MetricsServer(QuietErrors, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: str, registry: CollectorRegistry, status: Callable[[], dict],
                 web: WebConfig | None = None, version: Callable[[], object] | None = None):
        """``version`` names what the registry renders (the agent's last state): while it is the
        same object, scrapes get the same bytes, so ten scrapers cost one render a tick."""
        host, port = parse_listen(address)
        self.registry = registry
        self.status = status
        self.web = web or WebConfig()
        self.version = version
        self._rendered: tuple[object, bytes] | None = None
        self._render_lock = threading.Lock()
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise ListenError(f"cannot listen on {address}: {e.strerror or e}") from None
        context = self.web.ssl_context()
        if context is not None:
            # The handshake happens on the first read, in the request's thread, under the
            # handler's timeout: a slow client cannot stall accept() for everyone else.
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def tls(self) -> bool:
        return isinstance(self.socket, ssl.SSLSocket)

    def metrics(self) -> bytes:
        if self.version is None:
            return generate_latest(self.registry)
        with self._render_lock:  # concurrent scrapers of a new tick wait for one render
            version = self.version()
            if self._rendered is None or self._rendered[0] is not version:
                self._rendered = (version, generate_latest(self.registry))
            return self._rendered[1]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def set_web(self, web: WebConfig) -> None:
        """Take a re-read web config: new users, headers and certificate for new connections.
        Turning TLS on or off needs a restart, since the listening socket changes."""
        context = web.ssl_context()
        if (context is not None) != self.tls:
            raise ConfigError("turning TLS on or off takes a restart of the agent")
        if context is not None:
            self.socket.context = context
        self.web = web

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, args=(POLL_SECONDS,), name="http", daemon=True)
        thread.start()
        return thread
