"""The owner told on Kubernetes: a Warning Event on the pod that holds a GPU unused, posted to a
loopback HTTPS server answering as the API server, its body valid by the Kubernetes API schema."""

from __future__ import annotations

from datetime import datetime

import pytest

from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.config import Config
from flopwatch.outputs.pod_events import PodEvents, pod_event
from flopwatch.sources.kubernetes_api import KubernetesAPI
from tests.outputs.test_reclaim_beyond_slurm import UUID, api, kubelet  # noqa: F401 (fixtures)

kubernetes_validate = pytest.importorskip("kubernetes_validate")
VERSIONS = ("1.29.0", "1.37.0")  # as tests/test_deploy_kubernetes.py


def told(kubelet, api, seconds: int, after: float = 10.0, interval: float = 3600.0):  # noqa: F811
    config = Config()
    config.agent.simulate = ["healthy", "idle"]
    config.kubernetes.pod_resources_socket = str(kubelet.socket_path)
    config.kubernetes.api_url, config.kubernetes.events = api.url, True
    config.kubernetes.ca_file, config.kubernetes.token_file = str(api.ca_file), str(api.token_file)
    config.kubernetes.event_after_seconds, config.kubernetes.event_interval_seconds = after, interval
    events = PodEvents(config.kubernetes, KubernetesAPI.from_config(config.kubernetes), node="node1")
    clock, wall = VirtualClock(0.0), VirtualClock(1.8e9)
    built = build_agent(config, clock=clock, wall_clock=wall, sinks=[events])
    for _ in range(seconds):
        clock.now += 1.0
        wall.now += 1.0
        built.agent.tick()
        events.post()
    built.agent.close()
    return api.events


def test_the_pod_holding_its_gpu_unused_gets_a_warning_event(kubelet, api):  # noqa: F811
    [event] = told(kubelet, api, 60)
    assert api.requests == [("POST", "/api/v1/namespaces/team-a/events")]
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "team-a", "name": "notebook"}
    assert (event["type"], event["reason"], event["source"]) == (
        "Warning", "GPUHeldUnused", {"component": "flopwatch", "host": "node1"})
    assert event["message"].startswith("GPU 1 held unused for ")


def test_at_most_one_event_per_pod_per_interval(kubelet, api):  # noqa: F811
    times = [datetime.fromisoformat(e["firstTimestamp"]).timestamp() for e in told(kubelet, api, 120, interval=50.0)]
    assert len(times) >= 2 and {b - a for a, b in zip(times, times[1:])} == {50.0}


@pytest.mark.parametrize("version", VERSIONS)
def test_the_event_is_valid_by_the_kubernetes_api_schema(version):
    event = pod_event("team-a", "notebook", "GPUHeldUnused", "GPU 0 held unused for 3.0 h", 1.8e9, "node1")
    kubernetes_validate.validate(event, version, strict=True)
    assert (event["count"], event["firstTimestamp"], event["lastTimestamp"]) == (
        1, "2027-01-15T08:00:00Z", "2027-01-15T08:00:00Z")


def test_the_validator_rejects_an_event_with_a_misspelt_field():
    event = pod_event("team-a", "notebook", "GPUHeldUnused", "m", 1.8e9, "node1")
    event["involvedObject"]["nmae"] = event["involvedObject"].pop("name")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(event, VERSIONS[-1], strict=True)
