"""Reclaim beyond Slurm, only when asked: a pod holding a GPU unused is deleted through the API
server (a loopback HTTPS server answering as the real one), a bare process holding a GPU idle gets
SIGTERM (a real child process); each decision and attempt is a history row."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys

import pytest

from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.config import Config, ConfigError, override
from flopwatch.model import ProcessView
from flopwatch.sources.kubernetes_api import KubernetesAPI
from flopwatch.outputs.reclaim import Reclaimer
from tests.servers.kube_api import KubeAPIServer
from tests.servers.kubelet import PodResourcesServer, pod

UUID = [f"GPU-5f1a0c00-0000-4000-8000-000000{i:06d}" for i in range(2)]  # the simulated GPUs' (seed 0)
TICKS = 40  # virtual seconds: past the window and the 20 s the policy waits


@pytest.fixture
def api(tmp_path):
    with KubeAPIServer(tmp_path) as server:
        server.pods = {("ml", "trainer-0"), ("team-a", "notebook")}
        yield server


@pytest.fixture
def kubelet(tmp_path):
    with PodResourcesServer(tmp_path / "kubelet.sock") as server:
        # GPU 0 trains in ml/trainer-0; GPU 1 is held by a notebook pod that runs nothing on it.
        server.pods = [pod("ml", "trainer-0", train=[UUID[0]]), pod("team-a", "notebook", jupyter=[UUID[1]])]
        yield server


def policy(**reclaim) -> Config:
    config = Config()
    for key, value in {"after_seconds": 20.0, "min_job_age_seconds": 0.0, **reclaim}.items():
        override(config, "reclaim", key, value)
    return config


def reclaim_pods(kubelet, api, mode="on", namespaces=("team-a",), url=None):
    """Tick an agent on the kubelet's pods for TICKS virtual seconds under the policy, acting after
    each tick; the (reclaimer, history rows, clock)."""
    config = policy(kubernetes=mode, namespaces=list(namespaces))
    config.agent.simulate = ["healthy", "idle"]
    config.kubernetes.pod_resources_socket = str(kubelet.socket_path)
    config.kubernetes.api_url = url or api.url
    config.kubernetes.ca_file, config.kubernetes.token_file = str(api.ca_file), str(api.token_file)
    rows: list[dict] = []
    clock, wall = VirtualClock(0.0), VirtualClock(1.8e9)
    reclaimer = Reclaimer(config.reclaim, history=rows.append, clock=clock, wall_clock=wall,
                          kubernetes=KubernetesAPI.from_config(config.kubernetes))
    built = build_agent(config, clock=clock, wall_clock=wall, sinks=[reclaimer])
    for _ in range(TICKS):
        clock.now += 1.0
        wall.now += 1.0
        built.agent.tick()
        reclaimer.act()
    built.agent.close()
    return reclaimer, rows, clock


def outcomes(rows: list[dict]) -> list[tuple[str, str, str]]:
    return [(r["job"], r["action"], r["outcome"]) for r in rows]


def test_on_deletes_exactly_the_pod_that_holds_its_gpu_unused(kubelet, api):
    _, rows, _ = reclaim_pods(kubelet, api, namespaces=["*"])
    assert api.requests == [("DELETE", "/api/v1/namespaces/team-a/pods/notebook")]
    assert api.pods == {("ml", "trainer-0")}
    assert outcomes(rows) == [("pod:team-a/notebook", "delete pod", "decided"),
                              ("pod:team-a/notebook", "delete pod", "done")]
    assert {(r["scheduler"], r["partition"], r["cause"]) for r in rows} == {("kubernetes", "team-a", "held_unused")}


def test_dry_run_records_the_decision_and_calls_no_api(kubelet, api):
    _, rows, _ = reclaim_pods(kubelet, api, mode="dry-run")
    assert (api.requests, outcomes(rows)) == ([], [("pod:team-a/notebook", "delete pod", "dry-run")])


def test_a_pod_outside_the_namespace_allow_list_is_left_alone(kubelet, api):
    _, rows, _ = reclaim_pods(kubelet, api, namespaces=["ml"])
    assert (api.requests, rows) == ([], [])


@pytest.mark.parametrize("code", [500, 409])
def test_a_failed_delete_is_tried_again_after_a_backoff(kubelet, api, code):
    api.fail_next = [code]
    _, rows, _ = reclaim_pods(kubelet, api)
    decided, failed, done = rows
    assert (decided["outcome"], failed["outcome"], done["outcome"]) == (
        "decided", f"failed: HTTP {code}: injected", "done")
    assert done["ts"] - failed["ts"] == 5.0  # the first retry waits 5 s; the tick went on meanwhile
    assert len(api.requests) == 2 and api.pods == {("ml", "trainer-0")}


def test_a_pod_already_gone_is_done(kubelet, api):
    api.pods = {("ml", "trainer-0")}
    _, rows, _ = reclaim_pods(kubelet, api)
    assert outcomes(rows)[-1][2] == "done: already gone"


def test_an_api_server_that_does_not_answer_is_a_failure_not_a_stuck_tick(kubelet, api, tmp_path):
    _, rows, _ = reclaim_pods(kubelet, api, url="https://127.0.0.1:1")
    assert outcomes(rows)[-1][2].startswith("failed: no answer")


# -- bare metal: SIGTERM ----------------------------------------------------------------------


def held_idle_by(pid: int, mode: str = "on", users=("alice",)):
    """Tick an agent whose GPU 0 holds memory idle (the simulated held_idle scenario), its process
    shown as ``pid``; the history rows."""
    config = policy(host=mode, users=list(users))
    config.agent.simulate = ["held_idle"]
    rows: list[dict] = []
    clock, wall = VirtualClock(0.0), VirtualClock(1.8e9)
    reclaimer = Reclaimer(config.reclaim, history=rows.append, clock=clock, wall_clock=wall)
    built = build_agent(config, clock=clock, wall_clock=wall)
    for _ in range(TICKS):
        clock.now += 1.0
        wall.now += 1.0
        state = built.agent.tick()
        [gpu] = state.gpus
        shown = tuple(ProcessView(pid, p.job, "alice", p.cmdline, p.sm_ratio, p.memory_bytes, p.cpu_ratio)
                      for p in gpu.processes[:1])
        reclaimer.record(dataclasses.replace(state, gpus=(dataclasses.replace(gpu, processes=shown),)))
        reclaimer.act()
    built.agent.close()
    return rows


@pytest.fixture
def child():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_on_sends_sigterm_to_the_process_holding_the_gpu_idle(child):
    rows = held_idle_by(child.pid)
    assert child.wait(timeout=10) == -signal.SIGTERM
    assert [(r["scheduler"], r["job"], r["user"], r["action"], r["cause"], r["outcome"]) for r in rows] == [
        ("host", f"pid:{child.pid}", "alice", "sigterm", "held_idle", "decided"),
        ("host", f"pid:{child.pid}", "alice", "sigterm", "held_idle", "done")]


def test_dry_run_signals_nothing(child):
    rows = held_idle_by(child.pid, mode="dry-run")
    assert child.poll() is None and [r["outcome"] for r in rows] == ["dry-run"]


def test_a_user_outside_the_allow_list_is_left_alone(child):
    assert held_idle_by(child.pid, users=["bob"]) == [] and child.poll() is None


def test_a_process_whose_start_cannot_be_read_is_not_decided_on():
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    rows = held_idle_by(ended.pid)
    assert rows == []  # gone: its age is unknown


@pytest.mark.parametrize("key, value", [("kubernetes", "yes"), ("host", "always"), ("attempts", 0),
                                        ("after_seconds", -1)])
def test_a_bad_reclaim_value_names_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"\[reclaim\]\.{key}"):
        override(Config(), "reclaim", key, value)


@pytest.mark.parametrize("key, value", [("api_url", "http://10.0.0.1"), ("api_timeout_seconds", 0)])
def test_a_bad_kubernetes_value_names_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"\[kubernetes\]\.{key}"):
        override(Config(), "kubernetes", key, value)
