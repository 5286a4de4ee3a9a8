"""What the agent's two HTTP servers (/metrics and the token push) share: the listen address
and who may reach it, and what they accept as a request.

http.server is lenient: it answers a request with a header line it could not parse, an HTTP/0.9
line or a bad Content-Length as if it were fine, and answers an unknown method or HTTP/2 framing
with a 5xx. Here anything that is not well-formed HTTP/1.x gets a 4xx and its connection closed:
the client's mistake, never the server's, and never a guess at what was meant.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from flopwatch.config import ConfigError

log = logging.getLogger(__name__)

# socketserver's default backlog of 5 drops the SYNs of clients that connect together, and each
# dropped one waits a second for its retry.
LISTEN_BACKLOG = 128
# RFC 9110 token characters: what a header name may be made of.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# How often an idle server thread wakes to check for shutdown: rarely, since every wake-up is CPU
# on every node, and a stop (SIGTERM) still completes within the 5 s systemd is promised.
POLL_SECONDS = 1.0


class ListenError(OSError):
    pass


def parse_listen(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen address {address!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def check_local_bind(address: str, *, allow_remote: bool, setting: str, allow_setting: str) -> None:
    """Refuse to listen beyond this host unless configured: for endpoints that accept data or
    change state. ``unix:PATH`` and loopback addresses are always fine."""
    if address.startswith("unix:") or allow_remote:
        return
    try:
        host, _ = parse_listen(address)
    except ValueError as e:
        raise ConfigError(f"{setting}: {e}") from None
    if is_loopback(host):
        return
    raise ConfigError(f"{setting} = {address!r} would accept data from other hosts; listen on 127.0.0.1, "
                      f"::1 or unix:PATH, or set {allow_setting} = true")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


class StrictHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # so even an answer to a version-less line has a status line
    timeout = 10  # a slow client cannot hold a handler thread forever

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False  # http.server has answered (400, 414, 431) or the line was empty
        problem = self._problem()
        if problem is None:
            return True
        status, message = problem
        self.send_error(status, message)
        return False

    def _problem(self) -> tuple[int, str] | None:
        if len(self.requestline.split()) != 3 or self.request_version not in ("HTTP/1.0", "HTTP/1.1"):
            return 400, "the request line must be METHOD TARGET HTTP/1.1"
        if self.headers.defects or not all(HEADER_NAME.match(name) for name in self.headers.keys()):
            return 400, "malformed header"
        if any("\n" in value for value in self.headers.values()):
            return 400, "folded header lines (obs-fold) are not accepted"
        if len(self.headers.get_all("Host", [])) > 1:
            return 400, "more than one Host header"
        lengths = {value.strip() for value in self.headers.get_all("Content-Length", [])}
        if len(lengths) > 1 or not all(value.isdigit() for value in lengths):
            return 400, "malformed Content-Length"
        if "Transfer-Encoding" in self.headers:  # no body here is ever chunked
            return 411, "send a Content-Length, not a Transfer-Encoding"
        if not hasattr(self, "do_" + self.command):
            return 405, "method not allowed"
        return None

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # HTTP/2 framing on an HTTP/1.1 port is a request this server cannot read: a client error.
        if code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            code, message = HTTPStatus.BAD_REQUEST, "this server speaks HTTP/1.1"
        self.close_connection = True  # what follows a request we could not read is not a request
        if self.request_version not in ("HTTP/1.0", "HTTP/1.1"):
            self.request_version = "HTTP/1.0"  # an HTTP/0.9 answer would have no status line
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # each server logs its requests its own way


class QuietErrors:
    """For the servers: a request that fails because its client hung up mid-answer or failed the
    TLS handshake is the client's problem, logged at debug, not a traceback on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("request from %s failed", client_address, exc_info=True)
