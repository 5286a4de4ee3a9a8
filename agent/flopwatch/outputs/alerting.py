"""Alertmanager sink: page through Alertmanager's v2 API with the cause, evidence and advice.

One alert per GPU and cause (``alertname="GPUUnderutilized"``) fires once the GPU's finding has
been a page (utilization under the threshold over the diagnosis window) for ``[diagnosis]
alert_after_seconds``; a changed cause resolves the old alert and fires the new one; a GPU back at
work resolves it. The per-tick ``below_threshold`` is not the signal: a starved GPU alternates busy
and idle seconds, so it flips every few ticks and would never stay up long enough. Like Prometheus, the sink re-sends
firing alerts every ``resend_interval_seconds`` with an ``endsAt`` a few intervals ahead, so an
agent that dies stops paging on its own, and sends ``endsAt`` = now on resolve.

``record()`` runs on the sampling path and only touches memory. A sender thread moves each change
into the outbox and posts it to every configured Alertmanager (an HA pair gets every alert); a
message stays in the outbox, per URL, until that Alertmanager took it, and a newer message for the
same alert replaces an older one. Alertmanager merges posts of the same alert, so a retried post
never pages twice.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Protocol

from flopwatch.judge.stackclass import stack_summary
from flopwatch.model import OWNER_LABELS, Allocation, Finding, GpuFigures, PodContainer, ProcessView, owner_label
from flopwatch.sources.pod_resources import LABELS as POD_LABELS, holder_labels

log = logging.getLogger(__name__)

ALERTNAME = "GPUUnderutilized"
# Prometheus marks a firing alert valid for four resend intervals; a silent sender resolves after.
VALIDITY_INTERVALS = 4
MAX_RETRY_SECONDS = 30.0
# Alertmanager answers 400 to a batch it will never accept; keeping it would block the URL forever.
REJECTED_STATUS = (400, 422)
# Annotations are read in a page or a chat line: a stack longer than this is cut.
STACKS_ANNOTATION_CHARS = 240


@dataclass
class FiringAlert:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float


@dataclass
class _GpuState:
    paging_since: float | None = None
    firing: FiringAlert | None = None


class GpuView(Protocol):
    """What the sink reads of one GPU in one tick (daemon's GpuState)."""

    figures: GpuFigures | None
    finding: Finding | None
    processes: tuple[ProcessView, ...]
    pods: tuple[PodContainer, ...]
    allocation: Allocation | None


@dataclass
class Changes:
    started: list[FiringAlert] = field(default_factory=list)
    resolved: list[FiringAlert] = field(default_factory=list)


class UnderutilizationAlerts:
    """Which GPUs page, and for what cause, from one tick to the next. Pure: no clock, no I/O."""

    def __init__(self, alert_after_seconds: float, static_labels: dict[str, str],
                 annotate: Callable[[GpuView], dict[str, str]], pod_labels: bool = False):
        self.alert_after_seconds = alert_after_seconds
        self.static_labels = static_labels
        self.pod_labels = pod_labels  # as /metrics has them, so the rules' alert is this one
        self.annotate = annotate
        self._gpus: dict[str, _GpuState] = {}

    @property
    def firing(self) -> list[FiringAlert]:
        return [s.firing for s in self._gpus.values() if s.firing is not None]

    def update(self, now: float, gpus: Iterable[GpuView]) -> Changes:
        changes = Changes()
        for gpu in gpus:
            if gpu.figures is None:
                continue  # the GPU could not be read: nothing new is known, keep what was
            state = self._gpus.setdefault(gpu.figures.uuid, _GpuState())
            if gpu.finding is None or gpu.finding.severity != "page":
                state.paging_since = None
                self._resolve(state, changes)
                continue
            if state.paging_since is None:
                state.paging_since = now
            if now - state.paging_since < self.alert_after_seconds:
                continue
            cause = gpu.finding.cause
            if state.firing is not None and state.firing.labels["cause"] != cause:
                self._resolve(state, changes)
            if state.firing is None:
                state.firing = FiringAlert(self._labels(gpu, cause), {}, now)
                changes.started.append(state.firing)
            state.firing.annotations = self.annotate(gpu)
        return changes

    def _labels(self, gpu: GpuView, cause: str) -> dict[str, str]:
        return {
            "alertname": ALERTNAME,
            "severity": "page",
            "cause": cause,
            "gpu": str(gpu.figures.index),
            "uuid": gpu.figures.uuid,
            **self.static_labels,
            # Prometheus drops an empty label, and so does the rules' alert.
            **({k: v for k, v in zip(POD_LABELS, holder_labels(gpu.pods)) if v} if self.pod_labels else {}),
            # The Slurm job holding the GPU, as flopwatch_finding_info has it: routes to its owner.
            **({k: v for k, v in zip(OWNER_LABELS, gpu.allocation.owner()) if v} if gpu.allocation else {}),
            # The pod's owner labels or annotations ([kubernetes].owner_labels).
            **({owner_label(k): v for k, v in gpu.allocation.owner_metadata if v} if gpu.allocation else {}),
        }

    @staticmethod
    def _resolve(state: _GpuState, changes: Changes) -> None:
        if state.firing is not None:
            changes.resolved.append(state.firing)
            state.firing = None


def annotations(gpu: GpuView, generator_url: str) -> dict[str, str]:
    """Summary, evidence and advice of the GPU's finding, for people reading the page."""
    finding = gpu.finding
    utilization = gpu.figures.utilization
    evidence = {"utilization": round(utilization, 3) if utilization is not None else None}
    if finding is not None:
        # Plain figures only: nested ones (the stacks' shares by activity) stay in status and the history.
        evidence.update({k: v for k, v in finding.evidence.items() if not isinstance(v, dict)})
    return {
        "summary": (finding.summary if finding and finding.summary
                    else f"GPU {gpu.figures.index} under-utilized"),
        "evidence": ", ".join(f"{k}={_plain(v)}" for k, v in evidence.items()),
        "advice": finding.advice if finding else "",
        **({"contributing": "; ".join(f"{c.cause}: {c.summary}" for c in finding.contributing)}
           if finding is not None and finding.contributing else {}),
        "jobs": ", ".join(sorted({p.job for p in gpu.processes} | {p.job for p in gpu.pods})),
        "link": generator_url,
        **_stacks(finding),
    }


def _stacks(finding: Finding | None) -> dict[str, str]:
    """The culprit's top stack in one short line, or why none was taken; nothing before a sample."""
    profile = finding.stacks if finding is not None else None
    if profile is None:
        return {}
    text = f"unavailable: {profile.unavailable}" if profile.unavailable else stack_summary(profile) or ""
    return {"stacks": text if len(text) <= STACKS_ANNOTATION_CHARS else text[:STACKS_ANNOTATION_CHARS - 1] + "…"}


def _plain(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_key(alert: FiringAlert) -> str:
    return f"{alert.labels['uuid']}/{alert.labels['cause']}"


def message(alert: FiringAlert, generator_url: str, resolved_at: float | None = None) -> dict:
    """The alert as Alertmanager's API takes it; a firing one gets its ``endsAt`` when sent."""
    body = {
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": _iso(alert.starts_at),
        "generatorURL": generator_url,
    }
    if resolved_at is not None:
        body["endsAt"] = _iso(resolved_at)
    return body


class Outbox(Protocol):
    """Messages waiting for one Alertmanager each; a newer message for a key replaces the older."""

    def put(self, url: str, key: str, body: dict) -> None: ...
    def pending(self, url: str) -> list[tuple[str, dict]]: ...
    def done(self, url: str, keys: Iterable[str]) -> None: ...
    def __len__(self) -> int: ...


class MemoryOutbox:
    """The outbox when there is no history store: lost on restart, nothing else."""

    def __init__(self):
        self._messages: dict[str, dict[str, dict]] = {}

    def put(self, url: str, key: str, body: dict) -> None:
        self._messages.setdefault(url, {})[key] = body

    def pending(self, url: str) -> list[tuple[str, dict]]:
        return list(self._messages.get(url, {}).items())

    def done(self, url: str, keys: Iterable[str]) -> None:
        for key in keys:
            self._messages.get(url, {}).pop(key, None)

    def __len__(self) -> int:
        return sum(len(m) for m in self._messages.values())


class StoreOutbox(MemoryOutbox):
    """The outbox kept in the history store as well, so alerts survive a restart.

    Memory stays the working copy (the sender never waits on the database); every change is
    written through, and a database that is down costs durability for a while, never alerts.
    """

    def __init__(self, store: Any):
        super().__init__()
        self.store = store
        self._ids: dict[tuple[str, str], int] = {}
        try:
            for row_id, saved in store.outbox_pending(limit=10_000):
                super().put(saved["url"], saved["key"], saved["body"])
                self._ids[(saved["url"], saved["key"])] = row_id
        except Exception as e:  # a store that is down at start: begin empty
            log.warning("alerts outbox: cannot read pending alerts from the history store: %s", e)

    def put(self, url: str, key: str, body: dict) -> None:
        super().put(url, key, body)
        replaced = self._ids.pop((url, key), None)
        try:
            if replaced is not None:
                self.store.outbox_mark([replaced], sent=True)  # superseded by the newer message
            self._ids[(url, key)] = self.store.outbox_enqueue({"url": url, "key": key, "body": body})
        except Exception as e:
            log.warning("alerts outbox: history store unavailable, alert kept in memory only: %s", e)

    def done(self, url: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        super().done(url, keys)
        sent = [self._ids.pop((url, key)) for key in keys if (url, key) in self._ids]
        if sent:
            try:
                self.store.outbox_mark(sent, sent=True)
            except Exception as e:
                log.warning("alerts outbox: cannot mark %d alert(s) sent in the history store: %s", len(sent), e)


@dataclass
class _Target:
    """One Alertmanager: where to post, how to name it in logs and metrics, how it is doing."""

    post_url: str
    name: str  # without credentials
    authorization: str | None
    up: bool = True
    failures: int = 0
    retry_at: float = 0.0
    sent: int = 0
    failed: int = 0


def parse_target(url: str) -> _Target:
    """``http://user:pass@am:9093`` → posts to ``/api/v2/alerts`` with basic auth, named without it."""
    parts = urllib.parse.urlsplit(url.strip())
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    path = parts.path.rstrip("/")
    if not path.endswith("/api/v2/alerts"):
        path += "/api/v2/alerts"
    post_url = urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))
    authorization = None
    if parts.username is not None:
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(token.encode()).decode()
    name = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return _Target(post_url, name, authorization)


class AlertmanagerSink:
    """The alerting sink: ``record(state)`` each tick, ``start()``/``stop()`` the sender thread."""

    name = "alerting"

    def __init__(self, config, outbox: Outbox | None = None,
                 clock: Callable[[], float] = time.time):
        alerting = config.alerting
        host = config.agent.node_name()
        self.generator_url = alerting.external_url or _status_url(host, config.agent.listen)
        self.resend_interval = max(alerting.resend_interval_seconds, 1.0)
        self.timeout = alerting.timeout_seconds
        self.targets = [parse_target(u) for u in alerting.alertmanager_urls]
        self.outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self.clock = clock
        self.alerts = UnderutilizationAlerts(
            config.diagnosis.alert_after_seconds,
            {"host": host, "job": alerting.job},
            lambda gpu: annotations(gpu, self.generator_url),
            pod_labels=config.kubernetes.pod_labels,
        )
        self._changes: deque[tuple[str, dict]] = deque()
        self._firing: list[FiringAlert] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = 0

    # The sampling side --------------------------------------------------------------------------

    def record(self, state) -> None:
        """Evaluate this tick's GPUs and queue what changed; never blocks on the network or disk."""
        now = self.clock()
        changes = self.alerts.update(now, _gpu_views(state))
        firing = [FiringAlert(dict(a.labels), dict(a.annotations), a.starts_at) for a in self.alerts.firing]
        with self._lock:
            for alert in changes.resolved:
                self._changes.append((alert_key(alert), message(alert, self.generator_url, now)))
            for alert in changes.started:
                self._changes.append((alert_key(alert), message(alert, self.generator_url)))
            self._firing = firing
        if changes.started or changes.resolved:
            self._wake.set()

    # The sending side ---------------------------------------------------------------------------

    def start(self) -> "AlertmanagerSink":
        if self.targets and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="flopwatch-alerting", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop the sender after one last delivery attempt (bounded by the HTTP timeout)."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout if timeout is not None else self.timeout * len(self.targets) + 1)
        self._thread = None

    def _run(self) -> None:
        next_resend = time.monotonic() + self.resend_interval
        while True:
            stopping = self._stopping.is_set()
            try:
                next_resend = self._send_round(next_resend, final=stopping)
            except Exception:  # a bug here must not end alerting for the agent's lifetime
                log.exception("alert sender failed; retrying")
                next_resend = time.monotonic() + self.resend_interval
            if stopping:
                return
            due = min([next_resend] + [t.retry_at for t in self.targets if self._has_pending(t)])
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()

    def _send_round(self, next_resend: float, final: bool) -> float:
        """Queue changes and due re-sends, post what is due; returns when to re-send next."""
        self._take_changes()
        now = time.monotonic()
        if now >= next_resend:
            self._queue_firing()
            next_resend = now + self.resend_interval
        for target in self.targets:
            if final or now >= target.retry_at:
                self._deliver(target)
        self._pending = len(self.outbox)
        return next_resend

    def _take_changes(self) -> None:
        with self._lock:
            changes, self._changes = list(self._changes), deque()
        for key, body in changes:
            for target in self.targets:
                self.outbox.put(target.name, key, body)

    def _queue_firing(self) -> None:
        with self._lock:
            firing = list(self._firing)
        for alert in firing:
            for target in self.targets:
                self.outbox.put(target.name, alert_key(alert), message(alert, self.generator_url))

    def _has_pending(self, target: _Target) -> bool:
        return bool(self.outbox.pending(target.name))

    def _deliver(self, target: _Target) -> None:
        batch = self.outbox.pending(target.name)
        if not batch:
            return
        valid_until = _iso(self.clock() + VALIDITY_INTERVALS * self.resend_interval)
        bodies = [body if "endsAt" in body else {**body, "endsAt": valid_until} for _, body in batch]
        error = self._post(target, bodies)
        if error is None or error.startswith("rejected"):
            self.outbox.done(target.name, (key for key, _ in batch))
        if error is None:
            if not target.up:
                log.info("Alertmanager %s is reachable again", target.name)
            target.up, target.failures, target.retry_at = True, 0, 0.0
            target.sent += len(bodies)
            return
        target.failed += 1
        if target.up or error.startswith("rejected"):
            log.warning("cannot send %d alert(s) to Alertmanager %s: %s; they wait in the outbox",
                        len(bodies), target.name, error)
        target.up = False
        target.failures += 1
        target.retry_at = time.monotonic() + min(2.0 ** (target.failures - 1), self.resend_interval,
                                                 MAX_RETRY_SECONDS)

    def _post(self, target: _Target, bodies: list[dict]) -> str | None:
        """Post one batch; ``None`` when Alertmanager took it, else why not."""
        try:
            request = urllib.request.Request(
                target.post_url, data=json.dumps(bodies).encode(), method="POST",
                headers={"Content-Type": "application/json"},
            )
            if target.authorization:
                request.add_header("Authorization", target.authorization)
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
            return None
        except urllib.error.HTTPError as e:
            detail = e.read(200).decode(errors="replace").strip()
            prefix = "rejected" if e.code in REJECTED_STATUS else "HTTP"
            return f"{prefix} {e.code} {e.reason}: {detail}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            return str(getattr(e, "reason", e))

    # Metrics ------------------------------------------------------------------------------------

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "flopwatch_alerts_pending",
            "Alert messages waiting to reach an Alertmanager (one per alert and Alertmanager).",
            value=self._pending,
        )
        with self._lock:
            firing = len(self._firing)
        yield GaugeMetricFamily("flopwatch_alerts_firing", "GPUUnderutilized alerts firing now.", value=firing)
        up = GaugeMetricFamily("flopwatch_alertmanager_up",
                               "1 if the last post to this Alertmanager succeeded.", labels=["url"])
        sent = CounterMetricFamily("flopwatch_alerts_sent", "Alert messages Alertmanager took.", labels=["url"])
        failed = CounterMetricFamily("flopwatch_alerts_send_failures",
                                     "Posts to Alertmanager that failed.", labels=["url"])
        for target in self.targets:
            up.add_metric([target.name], 1.0 if target.up else 0.0)
            sent.add_metric([target.name], target.sent)
            failed.add_metric([target.name], target.failed)
        yield up
        yield sent
        yield failed


def _status_url(host: str, listen: str) -> str:
    port = listen.rsplit(":", 1)[-1]
    return f"http://{host}:{port}/api/v1/status"


def _gpu_views(state) -> Iterable[GpuView]:
    """The per-GPU entries of the agent's snapshot of one tick."""
    return state.gpus
