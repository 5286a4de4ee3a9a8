"""Which Kubernetes pod holds each GPU: the kubelet's pod-resources API (gRPC, v1) on its unix socket.

The kubelet's List answers with every pod on the node and the device ids each container was given.
NVIDIA's device plugin names a GPU by its UUID (``GPU-…``), a MIG slice by its own (``MIG-…``), and a
time-sliced replica ``<UUID>::<n>``. GPU UUIDs match the GPUs' own; a MIG id names no GPU the agent
reads (the samples carry no slices), so a GPU split into slices gets no pod.

List is called on a scheduler job every ``refresh_interval_seconds`` with a timeout, never on a tick:
a tick takes the last answer. grpc and the generated stubs are imported only when this is on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from flopwatch.model import PodContainer

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LABELS = ("namespace", "pod", "container")
_UNASSIGNED = ("", "", "")
# A large node's answer lists every pod with its CPUs and memory: more than gRPC's 4 MiB default.
_MAX_ANSWER_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class PodAnswer:
    """The last List the agent made sense of, and whether the last call succeeded."""

    holders: Mapping[str, tuple[PodContainer, ...]] = field(default_factory=dict)  # by device id
    ok: bool = False
    seconds: float = 0.0  # how long the last call took


def device_holders(pods: Iterable[Any]) -> tuple[dict[str, tuple[PodContainer, ...]], int]:
    """Device id → the containers holding it, from List's ``pod_resources``; and how many containers
    with devices were left out for lacking a namespace, pod or container name."""
    holders: dict[str, set[PodContainer]] = {}
    nameless = 0
    for pod in pods:
        for container in pod.containers:
            ids = [device_id for devices in container.devices for device_id in devices.device_ids]
            if not ids:
                continue
            if not (pod.namespace and pod.name and container.name):
                nameless += 1
                continue
            holder = PodContainer(pod.namespace, pod.name, container.name)
            for device_id in ids:
                holders.setdefault(device_id.split("::", 1)[0], set()).add(holder)
    return {device: tuple(sorted(held)) for device, held in holders.items()}, nameless


def holder_labels(pods: tuple[PodContainer, ...]) -> tuple[str, str, str]:
    """namespace, pod and container as labels: empty where no pod holds the GPU, comma-joined in
    the same order where time-slicing gives it to several."""
    if not pods:
        return _UNASSIGNED
    if len(pods) == 1:
        return pods[0].namespace, pods[0].pod, pods[0].container
    return tuple(",".join(dict.fromkeys(getattr(p, label) for p in pods)) for label in LABELS)


class PodResourcesReader:
    """Reads List on its own job; ``answer`` is the latest, swapped whole so a tick never sees half."""

    name = "pod_resources"

    def __init__(self, socket_path: str, refresh_interval_seconds: float = 10.0, timeout_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        import grpc

        from flopwatch.sources.podresources_v1 import api_pb2, api_pb2_grpc

        self._grpc, self._api, self._stubs = grpc, api_pb2, api_pb2_grpc
        self.socket_path = socket_path
        self.refresh_interval_seconds = refresh_interval_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self.answer = PodAnswer()
        self._failing: str | None = None  # the kind of the failure last warned about

    @classmethod
    def from_config(cls, kubernetes: Any) -> PodResourcesReader | None:
        """The reader the configuration asks for, or None (without importing grpc) when it is off."""
        path = kubernetes.pod_resources_socket
        if path in ("", "off"):
            return None
        if path == "auto":
            if not os.path.exists(DEFAULT_SOCKET):
                return None
            path = DEFAULT_SOCKET
        return cls(path, kubernetes.refresh_interval_seconds, kubernetes.timeout_seconds)

    def jobs(self) -> list[tuple[Callable[[], None], float]]:
        return [(self.refresh, self.refresh_interval_seconds)]

    def refresh(self) -> None:
        """Call List once; on failure keep the last answer (a kubelet restart should not strip every
        series of its pod for a few seconds) and say so once."""
        start = self.clock()
        holders = self.answer.holders
        try:
            # A channel per call: a long-lived one backs off up to two minutes after the kubelet
            # restarts, and one call every few seconds costs nothing to connect.
            with self._grpc.insecure_channel(f"unix://{self.socket_path}", options=[
                    ("grpc.max_receive_message_length", _MAX_ANSWER_BYTES)]) as channel:
                stub = self._stubs.PodResourcesListerStub(channel)
                response = stub.List(self._api.ListPodResourcesRequest(), timeout=self.timeout_seconds)
            holders, nameless = device_holders(response.pod_resources)
        except self._grpc.RpcError as e:
            ok = self._failed(e.code().name, f"{e.code().name}: {e.details()}")
        else:
            ok = self._failed("nameless", f"{nameless} container(s) holding devices have no namespace, "
                              "pod or container name; left out") if nameless else self._recovered()
        self.answer = PodAnswer(holders, ok, self.clock() - start)

    def _failed(self, kind: str, message: str) -> bool:
        if kind != self._failing:
            log.warning("kubelet pod-resources at %s: %s (GPUs keep the pods last read; warned once until "
                        "it changes)", self.socket_path, message)
            self._failing = kind
        return False

    def _recovered(self) -> bool:
        if self._failing is not None:
            log.info("kubelet pod-resources at %s answers again", self.socket_path)
            self._failing = None
        return True
