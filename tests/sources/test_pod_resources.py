"""Which pod holds each GPU, read from a real gRPC pod-resources server on a unix socket."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flopwatch.config import KubernetesConfig
from flopwatch.model import PodContainer
from flopwatch.sources.pod_resources import DEFAULT_SOCKET, PodResourcesReader, holder_labels
from tests.agent_process import agent_env
from tests.servers.kubelet import PodResourcesServer, pod

ROOT = Path(__file__).resolve().parents[2]
GPU0 = "GPU-5f1a0c00-0000-4000-8000-000000000000"
GPU1 = "GPU-5f1a0c00-0000-4000-8000-000000000001"
MIG = "MIG-0b2a4c6e-0000-4000-8000-000000000000"


@pytest.fixture
def kubelet(tmp_path):
    with PodResourcesServer(tmp_path / "kubelet.sock") as server:
        yield server


def reader(kubelet, timeout: float = 2.0) -> PodResourcesReader:
    return PodResourcesReader(str(kubelet.socket_path), timeout_seconds=timeout)


def read(kubelet, timeout: float = 2.0) -> PodResourcesReader:
    r = reader(kubelet, timeout)
    r.refresh()
    return r


def test_each_gpu_uuid_maps_to_the_container_it_was_given_to(kubelet):
    kubelet.pods = [pod("ml", "trainer-0", train=[GPU0]), pod("team-a", "notebook", jupyter=[GPU1]),
                    pod("kube-system", "coredns", coredns=[])]
    answer = read(kubelet).answer
    assert answer.ok
    assert dict(answer.holders) == {GPU0: (PodContainer("ml", "trainer-0", "train"),),
                                    GPU1: (PodContainer("team-a", "notebook", "jupyter"),)}


def test_time_sliced_replicas_are_their_gpu_held_by_every_pod_given_one(kubelet):
    kubelet.pods = [pod("a", "p1", c=[f"{GPU0}::0", f"{GPU0}::3"]), pod("b", "p2", c=[f"{GPU0}::1"])]
    assert read(kubelet).answer.holders[GPU0] == (PodContainer("a", "p1", "c"), PodContainer("b", "p2", "c"))


def test_several_holders_are_comma_joined_labels_in_one_order():
    held = (PodContainer("a", "p1", "c"), PodContainer("a", "p2", "d"))
    assert holder_labels(held) == ("a", "p1,p2", "c,d")
    assert holder_labels(()) == ("", "", "")


def test_a_mig_slice_is_kept_under_its_own_id(kubelet):
    kubelet.pods = [pod("a", "p", c=[MIG])]
    assert dict(read(kubelet).answer.holders) == {MIG: (PodContainer("a", "p", "c"),)}


def test_a_pod_that_goes_away_releases_its_gpu(kubelet):
    kubelet.pods = [pod("team-a", "notebook", jupyter=[GPU1])]
    r = read(kubelet)
    kubelet.pods = []
    r.refresh()
    assert (r.answer.ok, dict(r.answer.holders)) == (True, {})


def test_a_gpu_that_moves_to_another_pod_carries_the_new_pod(kubelet):
    kubelet.pods = [pod("team-a", "notebook", jupyter=[GPU1])]
    r = read(kubelet)
    kubelet.pods = [pod("team-b", "batch-7", worker=[GPU1])]
    r.refresh()
    assert r.answer.holders[GPU1] == (PodContainer("team-b", "batch-7", "worker"),)


def test_a_slow_kubelet_times_out_and_the_last_answer_stays(kubelet, caplog):
    kubelet.pods = [pod("team-a", "notebook", jupyter=[GPU1])]
    r = read(kubelet, timeout=0.3)
    kubelet.hold = True
    with caplog.at_level(logging.WARNING):
        r.refresh()
    kubelet.release()
    assert not r.answer.ok
    assert r.answer.holders[GPU1] == (PodContainer("team-a", "notebook", "jupyter"),)
    assert "DEADLINE_EXCEEDED" in caplog.text


def test_a_kubelet_that_is_down_is_one_warning_however_many_refreshes(kubelet, caplog):
    kubelet.stop()
    r = reader(kubelet)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            r.refresh()
    assert not r.answer.ok
    assert [rec.getMessage().split(":")[0] for rec in caplog.records] == [
        f"kubelet pod-resources at {kubelet.socket_path}"]
    assert "UNAVAILABLE" in caplog.text


def test_the_kubelet_coming_back_is_read_at_the_next_refresh(kubelet):
    kubelet.stop()
    r = read(kubelet)
    kubelet.pods = [pod("team-a", "notebook", jupyter=[GPU1])]
    kubelet.start()
    r.refresh()
    assert r.answer.ok and GPU1 in r.answer.holders


def test_an_answer_that_is_not_the_message_is_a_failure(tmp_path, caplog):
    kubelet = PodResourcesServer(tmp_path / "kubelet.sock")
    kubelet.raw_answer = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, a length past the end
    with kubelet, caplog.at_level(logging.WARNING):
        r = read(kubelet)
    assert not r.answer.ok
    assert "kubelet pod-resources" in caplog.text


def test_containers_without_names_are_left_out_and_warned_about(kubelet, caplog):
    kubelet.pods = [pod("", "nameless", c=[GPU0]), pod("team-a", "", c=[GPU0]), pod("team-a", "notebook", **{"": [GPU0]}),
                    pod("team-a", "notebook", jupyter=[GPU1])]
    with caplog.at_level(logging.WARNING):
        r = read(kubelet)
    assert (r.answer.ok, dict(r.answer.holders)) == (False, {GPU1: (PodContainer("team-a", "notebook", "jupyter"),)})
    assert "3 container(s)" in caplog.text


def test_a_socket_configured_but_absent_is_read_and_fails_not_skipped(tmp_path):
    r = PodResourcesReader.from_config(KubernetesConfig(pod_resources_socket=str(tmp_path / "none.sock")))
    assert r is not None
    r.refresh()
    assert not r.answer.ok


def test_off_is_no_reader():
    assert PodResourcesReader.from_config(KubernetesConfig(pod_resources_socket="off")) is None


@pytest.mark.skipif(os.path.exists(DEFAULT_SOCKET), reason="a kubelet runs here")
def test_without_kubernetes_the_agent_never_imports_grpc():
    # The default is "auto": no kubelet socket here, so nothing of gRPC is loaded.
    code = ("import sys; from flopwatch.commands.build import build_agent; from flopwatch.config import Config; c = Config(); "
            "c.agent.simulate = ['idle']; b = build_agent(c); b.agent.tick(); b.exporter.collect(); "
            "print(b.agent.pods, 'grpc' in sys.modules, 'google.protobuf' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=agent_env(), timeout=60)
    assert out.stdout.split() == ["None", "False", "False"], out.stderr


def test_the_committed_client_is_what_its_proto_generates(tmp_path):
    pytest.importorskip("grpc_tools")
    generated = Path("agent/flopwatch/sources/podresources_v1")
    (tmp_path / generated).mkdir(parents=True)
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / generated / "api.proto", tmp_path / generated)
    shutil.copy(ROOT / "scripts" / "gen-podresources", tmp_path / "scripts")
    # The script runs `python3`: this venv's, as when it is activated.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    subprocess.run([str(tmp_path / "scripts" / "gen-podresources")], check=True, timeout=60,
                   env={**os.environ, "PATH": path})
    for name in ("api_pb2.py", "api_pb2_grpc.py"):
        assert (tmp_path / generated / name).read_text() == (ROOT / generated / name).read_text(), name
