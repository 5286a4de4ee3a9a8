"""A kubelet's pod-resources server for tests and benchmarks: a real gRPC server, the generated
servicer, a unix socket in the caller's directory. The kubelet itself cannot run here; what the
agent reads is the same protocol.

    with PodResourcesServer(tmp_path / "kubelet.sock") as kubelet:
        kubelet.pods = [pod("team-a", "notebook", jupyter=["GPU-…"])]
"""

from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path

import grpc

from flopwatch.sources.podresources_v1 import api_pb2, api_pb2_grpc


def pod(namespace: str, name: str, **containers: list[str]) -> api_pb2.PodResources:
    """A pod whose containers (by name) were given these nvidia.com/gpu device ids."""
    return api_pb2.PodResources(namespace=namespace, name=name, containers=[
        api_pb2.ContainerResources(name=container, devices=[
            api_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=ids)] if ids else [])
        for container, ids in containers.items()])


class PodResourcesServer(api_pb2_grpc.PodResourcesListerServicer):
    """Answers List with ``pods``; ``hold`` set makes List wait for ``release()`` (a slow kubelet).
    With ``raw_answer`` set when it starts, List answers those bytes instead (a malformed message)."""

    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self.pods: list[api_pb2.PodResources] = []
        self.calls = 0
        self.raw_answer: bytes | None = None
        self.hold = False
        self._released = threading.Event()
        self._server: grpc.Server | None = None

    def List(self, request, context):  # noqa: N802 (the service's method name)
        self.calls += 1
        if self.hold:
            self._released.wait(30)
        return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)

    def release(self) -> None:
        self._released.set()

    def start(self) -> "PodResourcesServer":
        self._released.clear()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        if self.raw_answer is None:
            api_pb2_grpc.add_PodResourcesListerServicer_to_server(self, self._server)
        else:
            self._server.add_generic_rpc_handlers((_RawAnswer(self.raw_answer),))
        self._server.add_insecure_port(f"unix://{self.socket_path}")
        self._server.start()
        return self

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def __enter__(self) -> "PodResourcesServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _RawAnswer(grpc.GenericRpcHandler):
    """List, answered with bytes that need not be a message."""

    def __init__(self, answer: bytes):
        self.answer = answer

    def service(self, handler_call_details):
        if handler_call_details.method != "/v1.PodResourcesLister/List":
            return None
        return grpc.unary_unary_rpc_method_handler(lambda request, context: self.answer,
                                                   request_deserializer=lambda data: data,
                                                   response_serializer=lambda data: data)
