"""Report tokens to the local flopwatch agent from inside a job. Standard library only.

    from flopwatch.client import TokenClient

    with TokenClient(job="llama-eval") as tokens:      # flushes on exit
        for batch in batches:
            out = model.generate(batch)
            tokens.add(prompt_tokens=batch.numel(), generated_tokens=out.numel())

    step = TokenClient().callback()                     # or, in a training loop:
    for batch in loader:
        ...
        step(batch["input_ids"].numel())

Counts are summed locally and sent at most every ``flush_interval`` seconds, so the loop pays a
dictionary update per call. If the agent is down nothing is raised: counts are kept and sent with
the next flush (a retry waits longer after each failure, up to a minute).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
from typing import Callable

DEFAULT_URL = os.environ.get("FLOPWATCH_TOKENS_URL", "http://127.0.0.1:9766")
MAX_PENDING_JOBS = 256  # distinct job names held while the agent is unreachable
_MAX_BACKOFF_SECONDS = 60.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class TokenClient:
    """Counts tokens and pushes them to the agent's ``POST /v1/tokens``."""

    def __init__(self, url: str = DEFAULT_URL, job: str | None = None, pid: int | None = None,
                 flush_interval: float = 1.0, timeout: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.url = url
        self.job = job
        self.pid = pid if pid is not None else os.getpid()
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.clock = clock
        self.pending: dict[str | None, list[int]] = {}  # job → [prompt, generated]
        self.sent_tokens = 0
        self.failures = 0
        self._next_flush = clock() + flush_interval
        self._backoff = flush_interval

    def add(self, prompt_tokens: int = 0, generated_tokens: int = 0, job: str | None = None) -> None:
        job = job if job is not None else self.job
        counts = self.pending.get(job)
        if counts is None:
            if len(self.pending) >= MAX_PENDING_JOBS:
                job = None  # folded into the client's default so memory stays bounded
                counts = self.pending.setdefault(job, [0, 0])
            else:
                counts = self.pending[job] = [0, 0]
        counts[0] += int(prompt_tokens)
        counts[1] += int(generated_tokens)
        if self.clock() >= self._next_flush:
            self.flush()

    def callback(self, kind: str = "prompt", job: str | None = None) -> Callable[[int], None]:
        """A function to call once per step with that step's token count."""
        if kind not in ("prompt", "generated"):
            raise ValueError("kind must be 'prompt' or 'generated'")
        if kind == "prompt":
            return lambda tokens: self.add(prompt_tokens=tokens, job=job)
        return lambda tokens: self.add(generated_tokens=tokens, job=job)

    def flush(self) -> bool:
        """Send what is pending; True when nothing is left. Never raises for an unreachable agent."""
        for job in list(self.pending):
            prompt, generated = self.pending[job]
            if prompt == 0 and generated == 0:
                del self.pending[job]
                continue
            body = {"prompt_tokens": prompt, "generated_tokens": generated, "pid": self.pid}
            if job is not None:
                body["job"] = job
            status = self._post(json.dumps(body).encode())
            if status is None or status >= 500 or status == 429:
                self.failures += 1
                self._backoff = min(self._backoff * 2, _MAX_BACKOFF_SECONDS)
                self._next_flush = self.clock() + self._backoff
                return False
            # A 4xx other than 429 will not get better by retrying: those counts are dropped.
            del self.pending[job]
            if status < 300:
                self.sent_tokens += prompt + generated
        self._backoff = self.flush_interval
        self._next_flush = self.clock() + self.flush_interval
        return True

    def _post(self, body: bytes) -> int | None:
        try:
            connection = self._connection()
            try:
                connection.request("POST", "/v1/tokens", body=body, headers={"Content-Type": "application/json"})
                return connection.getresponse().status
            finally:
                connection.close()
        except (OSError, http.client.HTTPException):
            return None

    def _connection(self) -> http.client.HTTPConnection:
        if self.url.startswith("unix:"):
            return _UnixConnection(self.url[len("unix:"):], self.timeout)
        parts = urllib.parse.urlsplit(self.url)
        return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=self.timeout)

    def __enter__(self) -> "TokenClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
