"""The owner told on Kubernetes: a Warning Event on a pod that holds a GPU of this node and uses it
not, so `kubectl describe pod` shows "GPU 0 held unused for 3.0 h" ([kubernetes].events, off by
default).

A sink. Each tick it notes since when each pod's GPU has been held_unused or held_idle; once that
lasts event_after_seconds it queues an Event, at most one per pod every event_interval_seconds.
The Events are posted on the sink's own scheduler job, so a slow API server never holds up the
tick; one that fails is logged and not retried, the next interval posts again.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable

from flopwatch.config import KubernetesConfig
from flopwatch.model import AgentState
from flopwatch.sources.kubernetes_api import KubernetesAPI

log = logging.getLogger(__name__)

REASONS = {"held_unused": ("GPUHeldUnused", "held unused"), "held_idle": ("GPUHeldIdle", "held idle")}


def held_for(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


class PodEvents:
    name = "pod_events"

    def __init__(self, config: KubernetesConfig, api: KubernetesAPI, node: str):
        self.config = config
        self.api = api
        self.node = node
        self._since: dict[tuple[str, int, str], float] = {}  # (pod job, GPU, cause) → since when
        self._posted: dict[str, float] = {}  # pod job → when its last Event was queued
        self._queue: deque[dict[str, Any]] = deque()  # appended by the tick, taken by post()

    def jobs(self) -> list[tuple[Callable[[], None], float]]:
        return [(self.post, 1.0)]

    def record(self, state: AgentState) -> None:
        now = state.timestamp
        since = {}
        for g in state.gpus:
            a = g.allocation
            if a is None or a.scheduler != "kubernetes" or g.finding is None or g.finding.cause not in REASONS:
                continue
            key = (a.job, g.sample.info.index, g.finding.cause)
            since[key] = self._since.get(key, now)
            last = self._posted.get(a.job)
            if now - since[key] >= self.config.event_after_seconds and \
                    (last is None or now - last >= self.config.event_interval_seconds):
                self._posted[a.job] = now
                reason, words = REASONS[g.finding.cause]
                namespace, _, pod = a.job.removeprefix("pod:").partition("/")
                self._queue.append(pod_event(namespace, pod, reason,
                                             f"GPU {g.sample.info.index} {words} for {held_for(now - since[key])}",
                                             now, self.node))
        self._since = since
        self._posted = {job: ts for job, ts in self._posted.items() if now - ts < self.config.event_interval_seconds}

    def post(self) -> None:
        while self._queue:
            event = self._queue.popleft()
            outcome = self.api.create_event(event)
            if outcome != "done":
                log.warning("Event on pod %s/%s not posted: %s", event["metadata"]["namespace"],
                            event["involvedObject"]["name"], outcome)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_event(namespace: str, pod: str, reason: str, message: str, ts: float, node: str) -> dict[str, Any]:
    """A core/v1 Event on the pod, as `kubectl describe pod` lists it. Named as the kubelet names
    its own (the object's name, a dot, the time in hex nanoseconds), so each is new and unique."""
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{pod}.{int(ts * 1e9):x}", "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": pod},
        "reason": reason, "message": message, "type": "Warning",
        "source": {"component": "flopwatch", "host": node},
        "reportingComponent": "flopwatch", "reportingInstance": node,
        "count": 1, "firstTimestamp": rfc3339(ts), "lastTimestamp": rfc3339(ts),
    }
