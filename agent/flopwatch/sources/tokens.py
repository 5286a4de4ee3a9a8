"""Tokens processed, from two kinds of source, kept in one ledger of cumulative counts:

- a local push endpoint, ``POST /v1/tokens`` with JSON ``{"job": str?, "pid": int?,
  "prompt_tokens": int, "generated_tokens": int}`` (deltas), on loopback or a unix socket
  (``[tokens].push_listen = "unix:/run/flopwatch/tokens.sock"``); flopwatch.client speaks it;
- scraping inference servers' Prometheus endpoints (``[tokens].scrape_urls``): vLLM, Hugging Face
  TGI and SGLang. ``URL#pid=1234`` or ``URL#job=name`` ties a target to its GPU processes; without
  either, the process listening on a local URL's port (and its descendants, such as vLLM's engine
  core) is found through psutil.

The agent's tick only copies the ledger (`snapshot`); scraping runs on its own scheduler job.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from socketserver import ThreadingUnixStreamServer
from typing import Any, Callable, Iterator

from flopwatch.config import ConfigError
from flopwatch.model import TokenCount
from flopwatch.httpbase import (LISTEN_BACKLOG, POLL_SECONDS, QuietErrors, StrictHandler, check_local_bind, is_loopback,
                                parse_listen)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_TOKENS_PER_PUSH = 10**12
MAX_JOB_LENGTH = 128
MAX_LEDGER_ROWS = 4096  # distinct (job, pid) pushes kept; more is a misbehaving client

# Counter samples (as exposed) of each server: prompt tokens, generated tokens. TGI has no token
# counters, only per-request histograms whose _sum counts the tokens of finished requests.
SERVER_METRICS: dict[str, tuple[str, str]] = {
    "vllm": ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"),
    "sglang": ("sglang:prompt_tokens_total", "sglang:generation_tokens_total"),
    "tgi": ("tgi_request_input_length_sum", "tgi_request_generated_tokens_sum"),
}


class PushError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ListenRefused(ValueError):
    """A push address this configuration must not bind (remote without allow_remote_push)."""


class PushBindError(OSError):
    """The push address is valid but cannot be bound (in use, no permission)."""


# -- the ledger ---------------------------------------------------------------------------------

class _Row:
    __slots__ = ("job", "pids", "prompt", "generated", "last_prompt", "last_generated")

    def __init__(self, job: str | None, pids: frozenset[int]):
        self.job, self.pids = job, pids
        self.prompt = self.generated = 0
        self.last_prompt = self.last_generated = 0  # the server's own counters, to spot restarts


class TokenLedger:
    """Cumulative tokens by (source, key); thread-safe, never decreasing."""

    def __init__(self, max_rows: int = MAX_LEDGER_ROWS):
        self._rows: dict[tuple[str, str], _Row] = {}
        self._lock = threading.Lock()
        self.max_rows = max_rows

    def add(self, source: str, key: str, job: str | None, pids: frozenset[int], prompt: int, generated: int) -> bool:
        """Add deltas; False when the ledger is full and the row is new."""
        with self._lock:
            row = self._row(source, key, job, pids)
            if row is None:
                return False
            row.prompt += prompt
            row.generated += generated
            return True

    def observe(self, source: str, key: str, job: str | None, pids: frozenset[int], prompt: int, generated: int) -> None:
        """Take a server's cumulative counters. The first reading is the baseline (tokens count from
        when the agent first saw them, like its energy); a drop means the server restarted."""
        with self._lock:
            new = (source, key) not in self._rows
            row = self._row(source, key, job, pids)
            if row is None:
                return
            if new:
                row.last_prompt, row.last_generated = prompt, generated
            row.job, row.pids = job, pids
            row.prompt += prompt - row.last_prompt if prompt >= row.last_prompt else prompt
            row.generated += generated - row.last_generated if generated >= row.last_generated else generated
            row.last_prompt, row.last_generated = prompt, generated

    def _row(self, source: str, key: str, job: str | None, pids: frozenset[int]) -> _Row | None:
        row = self._rows.get((source, key))
        if row is None:
            if len(self._rows) >= self.max_rows:
                return None
            row = self._rows[(source, key)] = _Row(job, pids)
        return row

    def snapshot(self) -> tuple[TokenCount, ...]:
        with self._lock:
            return tuple(TokenCount(source, key, r.job, r.pids, r.prompt, r.generated)
                         for (source, key), r in self._rows.items())


# -- the push endpoint --------------------------------------------------------------------------

_PUSH_KEYS = {"job", "pid", "prompt_tokens", "generated_tokens"}


@dataclass(frozen=True, slots=True)
class Push:
    job: str | None
    pid: int | None
    prompt_tokens: int
    generated_tokens: int


def parse_push(body: bytes) -> Push:
    """Validate one push body; a PushError carries the HTTP status to answer."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise PushError(400, f"body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PushError(400, "body must be a JSON object")
    unknown = set(doc) - _PUSH_KEYS
    if unknown:
        raise PushError(400, f"unknown field(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_PUSH_KEYS))}")
    counts = [_count(doc, k) for k in ("prompt_tokens", "generated_tokens")]
    job = doc.get("job")
    if job is not None and (not isinstance(job, str) or not job or len(job) > MAX_JOB_LENGTH or not job.isprintable()):
        raise PushError(400, f"job must be a printable string of 1..{MAX_JOB_LENGTH} characters")
    pid = doc.get("pid")
    if pid is not None and (type(pid) is not int or pid <= 0):
        raise PushError(400, "pid must be a positive integer")
    return Push(job, pid, *counts)


def _count(doc: dict, key: str) -> int:
    value = doc.get(key, 0)
    if type(value) is not int or not 0 <= value <= MAX_TOKENS_PER_PUSH:
        raise PushError(400, f"{key} must be an integer in 0..{MAX_TOKENS_PER_PUSH}, got {value!r}")
    return value


def record_push(ledger: TokenLedger, push: Push, peer_pid: int | None = None) -> bool:
    """Count one push. The kernel's word on the sender (unix socket) beats the body's: a client in
    a container knows only its own pid namespace's number."""
    pid = peer_pid if peer_pid is not None else push.pid
    key = f"{push.job or ''}/{pid or ''}"
    return ledger.add("push", key, push.job, frozenset({pid}) if pid else frozenset(),
                      push.prompt_tokens, push.generated_tokens)


class _PushHandler(StrictHandler):
    server: Any

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] != "/v1/tokens":
            return self._answer(404, "not found")
        try:
            push = parse_push(self._body())
        except PushError as e:
            self.server.rejected += 1
            return self._answer(e.status, str(e))
        if not record_push(self.server.ledger, push, self._peer_pid()):
            self.server.rejected += 1
            return self._answer(429, "too many distinct jobs and pids pushed")
        self._answer(204, "")

    def do_GET(self) -> None:  # noqa: N802
        self._answer(405 if self.path.split("?", 1)[0] == "/v1/tokens" else 404, "POST JSON to /v1/tokens")

    do_PUT = do_DELETE = do_PATCH = do_GET

    def _body(self) -> bytes:
        content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            raise PushError(415, "Content-Type must be application/json")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise PushError(411, "Content-Length is required")
        if int(length) > MAX_BODY_BYTES:
            raise PushError(413, f"body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(int(length))

    def _peer_pid(self) -> int | None:
        """Over a unix socket the kernel names the sender, in this process's pid namespace."""
        if self.server.address_family != socket.AF_UNIX:
            return None
        try:
            creds = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        except OSError:
            return None
        return int.from_bytes(creds[:4], "little") or None

    def _answer(self, status: int, message: str) -> None:
        body = (message + "\n").encode() if status != 204 else b""
        self.send_response(status)
        if status >= 400:
            # The body of a rejected request may be unread: do not parse it as the next request.
            self.close_connection = True
        if body:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("push %s " + format, self.address_string(), *args)


class _TcpPushServer(QuietErrors, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG


class _Tcp6PushServer(_TcpPushServer):
    address_family = socket.AF_INET6


class _UnixPushServer(QuietErrors, ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG


def push_address(listen: str, allow_remote: bool) -> tuple[str, Any]:
    """("unix", path) or ("tcp", (host, port)); refuses a non-loopback host unless allowed."""
    if listen.startswith("unix:"):
        path = listen[len("unix:"):]
        if not path:
            raise ListenRefused("[tokens].push_listen unix: needs a path, e.g. unix:/run/flopwatch/tokens.sock")
        return "unix", path
    try:
        # Anyone who can reach a pushed-data endpoint could inflate token counts.
        check_local_bind(listen, allow_remote=allow_remote, setting="[tokens].push_listen",
                         allow_setting="[tokens].allow_remote_push")
        return "tcp", parse_listen(listen)
    except (ConfigError, ValueError) as e:
        raise ListenRefused(str(e)) from None


class PushServer:
    """The push endpoint over TCP (loopback) or a unix socket."""

    def __init__(self, listen: str, ledger: TokenLedger, allow_remote: bool = False):
        family, address = push_address(listen, allow_remote)
        try:
            if family == "unix":
                if os.path.exists(address):
                    os.unlink(address)  # a stale socket from a previous run
                self._server = _UnixPushServer(address, _PushHandler)
                os.chmod(address, 0o666)  # any local job may push; the kernel tells us which
            else:
                server_class = _Tcp6PushServer if ":" in address[0] else _TcpPushServer
                self._server = server_class(address, _PushHandler)
        except OSError as e:
            raise PushBindError(f"cannot listen on {listen} ([tokens].push_listen): {e.strerror or e}") from None
        self._server.ledger = ledger
        self._server.rejected = 0
        self.family, self.listen = family, listen
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.family == "unix":
            return f"unix:{self._server.server_address}"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def rejected(self) -> int:
        return self._server.rejected

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL_SECONDS,), name="token-push", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()
        if self.family == "unix":
            try:
                os.unlink(self._server.server_address)
            except OSError:
                pass


# -- scraping inference servers -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    url: str  # without the fragment
    pid: int | None = None
    job: str | None = None

    @property
    def name(self) -> str:
        """The URL without credentials, for labels and logs."""
        parts = urllib.parse.urlsplit(self.url)
        return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()


def parse_target(entry: str) -> ScrapeTarget:
    url, _, fragment = entry.partition("#")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"[tokens].scrape_urls entry {entry!r} is not an http(s) URL")
    pid = job = None
    for item in filter(None, fragment.split("&")):
        key, _, value = item.partition("=")
        if key == "pid" and value.isdigit() and int(value) > 0:
            pid = int(value)
        elif key == "job" and value:
            job = urllib.parse.unquote(value)
        else:
            raise ValueError(f"[tokens].scrape_urls entry {entry!r}: after # use pid=N or job=NAME")
    return ScrapeTarget(url, pid, job)


def parse_exposition(text: str) -> tuple[str, int, int] | None:
    """(server, prompt tokens, generated tokens) from a /metrics page, summed over its labels
    (vLLM and SGLang label by model and engine); None when no known server's counters are there."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    wanted = {name for pair in SERVER_METRICS.values() for name in pair}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    for server, (prompt, generated) in SERVER_METRICS.items():
        if prompt in sums or generated in sums:
            return server, int(sums.get(prompt, 0.0)), int(sums.get(generated, 0.0))
    return None


def listening_pids(port: int) -> frozenset[int]:
    """The process listening on a local TCP port, and its descendants (workers holding the GPU)."""
    import psutil

    try:
        owners = {c.pid for c in psutil.net_connections(kind="tcp")
                  if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    except (psutil.AccessDenied, OSError):
        return frozenset()
    pids = set(owners)
    for pid in owners:
        try:
            pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            continue
    return frozenset(pids)


def _is_local(host: str) -> bool:
    return is_loopback(host) or host in (socket.gethostname(), socket.getfqdn())


class Scraper:
    """Scrapes each target in turn; a failing target is a 0 on flopwatch_token_source_up."""

    def __init__(self, targets: list[ScrapeTarget], ledger: TokenLedger, timeout: float = 3.0,
                 find_pids: Callable[[int], frozenset[int]] = listening_pids):
        self.targets = targets
        self.ledger = ledger
        self.timeout = timeout
        self.find_pids = find_pids
        self.up: dict[ScrapeTarget, tuple[str, bool]] = {t: ("unknown", False) for t in targets}
        self._warned: set[ScrapeTarget] = set()

    def scrape(self) -> None:
        for target in self.targets:
            try:
                self._scrape(target)
            except Exception as e:  # noqa: BLE001 (any failure of one target is that target's)
                self.up[target] = (self.up[target][0], False)
                if target not in self._warned:
                    log.warning("token source %s: %s", target.name, getattr(e, "reason", e))
                    self._warned.add(target)

    def _scrape(self, target: ScrapeTarget) -> None:
        with urllib.request.urlopen(target.url, timeout=self.timeout) as response:
            text = response.read(16 << 20).decode("utf-8", errors="replace")
        found = parse_exposition(text)
        if found is None:
            raise ValueError("no vLLM, TGI or SGLang token counters on the page")
        server, prompt, generated = found
        pids = frozenset({target.pid}) if target.pid else frozenset()
        parts = urllib.parse.urlsplit(target.url)
        if not pids and not target.job and _is_local(parts.hostname or ""):
            pids = self.find_pids(parts.port or (443 if parts.scheme == "https" else 80))
        self.ledger.observe(server, target.name, target.job, pids, prompt, generated)
        self.up[target] = (server, True)
        self._warned.discard(target)


# -- the source the agent holds ------------------------------------------------------------------

class TokenSource:
    """The ledger, its push endpoint and its scraper, behind one object the agent reads per tick."""

    name = "tokens"

    def __init__(self, push_listen: str = "", allow_remote_push: bool = False, scrape_urls: list[str] = (),
                 scrape_interval_seconds: float = 5.0):
        self.ledger = TokenLedger()
        self.scraper = Scraper([parse_target(u) for u in scrape_urls], self.ledger)
        self.scrape_interval_seconds = scrape_interval_seconds
        # Checked now, bound at start(): a bad address is a usage error before anything runs.
        if push_listen:
            push_address(push_listen, allow_remote_push)
        self._push_args = (push_listen, allow_remote_push)
        self.push: PushServer | None = None
        self.push_error: str | None = None

    @classmethod
    def from_config(cls, tokens: Any) -> "TokenSource":
        return cls(tokens.push_listen, tokens.allow_remote_push, tokens.scrape_urls, tokens.scrape_interval_seconds)

    def start(self) -> None:
        """Open the push endpoint. One that cannot bind is logged and exported, not fatal: the
        GPUs are still worth watching without it."""
        listen, allow_remote = self._push_args
        if not listen:
            return
        try:
            self.push = PushServer(listen, self.ledger, allow_remote)
        except PushBindError as e:
            self.push_error = str(e)
            log.error("%s; token pushes are off", e)
            return
        self.push.start()

    def snapshot(self) -> tuple[TokenCount, ...]:
        return self.ledger.snapshot()

    def scrape(self) -> None:
        self.scraper.scrape()

    def jobs(self) -> list[tuple[Callable[[], None], float]]:
        """Scheduler jobs: scraping, when there is anything to scrape."""
        return [(self.scrape, self.scrape_interval_seconds)] if self.scraper.targets else []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("flopwatch_token_source_up", "1 if the token source's last scrape found token "
                               "counters.", labels=["source", "target"])
        for target, (server, ok) in self.scraper.up.items():
            up.add_metric([server, target.name], 1 if ok else 0)
        yield up
        if self._push_args[0]:
            push_up = GaugeMetricFamily("flopwatch_token_push_up", "1 if the token push endpoint is listening.")
            push_up.add_metric([], 1 if self.push is not None else 0)
            yield push_up
        if self.push is not None:
            rejected = CounterMetricFamily("flopwatch_token_pushes_rejected", "Token pushes answered with a 4xx.")
            rejected.add_metric([], self.push.rejected)
            yield rejected

    def close(self) -> None:
        if self.push is not None:
            self.push.close()
            self.push = None

