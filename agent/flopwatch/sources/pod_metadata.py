"""The owner of each pod holding a GPU: the values of ``[kubernetes].owner_labels`` among the pod's
labels or annotations, read from the API server (GET of the pod) so alerts route to its team.

Read on a scheduler job, never on a tick: the pods the kubelet last named are each read once, then
again every ``REREAD_SECONDS`` (labels rarely change). A failed read keeps the pod's last answer and
is warned about once; a pod gone (404) is dropped. Only the configured keys are kept, and values are
cut to ``MAX_VALUE_CHARS``, so the label sets they become stay bounded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from flopwatch.sources.kubernetes_api import KubernetesAPI, KubernetesAPIError

log = logging.getLogger(__name__)

REREAD_SECONDS = 300.0
MAX_VALUE_CHARS = 63  # a Kubernetes label value's own limit

Owner = tuple[tuple[str, str], ...]  # (key, value) for each configured key the pod has


@dataclass(frozen=True, slots=True)
class OwnerAnswer:
    owners: Mapping[tuple[str, str], Owner] = field(default_factory=dict)  # by (namespace, pod)
    ok: bool = True
    seconds: float = 0.0


def owner_of(pod: Mapping[str, Any], keys: Iterable[str]) -> Owner:
    """The configured keys' values: a label's, else an annotation's; keys the pod has neither of left out."""
    metadata = pod.get("metadata") or {}
    labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
    found = ((key, labels.get(key, annotations.get(key))) for key in keys)
    return tuple((key, str(value)[:MAX_VALUE_CHARS]) for key, value in found if value is not None)


class PodMetadataReader:
    name = "pod_metadata"

    def __init__(self, api: KubernetesAPI, keys: list[str], pods: Callable[[], Iterable[tuple[str, str]]],
                 refresh_interval_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.api = api
        self.keys = list(keys)
        self.pods = pods  # (namespace, pod) of those holding GPUs now: the kubelet's last answer
        self.refresh_interval_seconds = refresh_interval_seconds
        self.clock = clock
        self.answer = OwnerAnswer()
        self._read_at: dict[tuple[str, str], float] = {}
        self._failing: str | None = None

    def jobs(self) -> list[tuple[Callable[[], None], float]]:
        return [(self.refresh, self.refresh_interval_seconds)]

    def refresh(self) -> None:
        start = self.clock()
        wanted = set(self.pods())
        owners = {pod: owner for pod, owner in self.answer.owners.items() if pod in wanted}
        self._read_at = {pod: at for pod, at in self._read_at.items() if pod in wanted}
        failure = None
        for namespace, name in sorted(wanted):
            if start - self._read_at.get((namespace, name), -REREAD_SECONDS) < REREAD_SECONDS:
                continue
            try:
                pod = self.api.get_pod(namespace, name)
            except KubernetesAPIError as e:
                failure = failure or f"pod {namespace}/{name}: {e}"
                continue
            self._read_at[(namespace, name)] = start
            if pod is None:
                owners.pop((namespace, name), None)
            else:
                owners[(namespace, name)] = owner_of(pod, self.keys)
        self.answer = OwnerAnswer(owners, failure is None, self.clock() - start)
        if failure is not None and self._failing is None:
            log.warning("Kubernetes API server at %s: %s (pods keep the owner last read; warned once until "
                        "it answers again)", self.api.url, failure)
        elif failure is None and self._failing is not None:
            log.info("Kubernetes API server at %s answers again", self.api.url)
        self._failing = failure
