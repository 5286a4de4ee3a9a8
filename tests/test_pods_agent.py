"""GPUs tied to pods by the kubelet, through the agent: /metrics labels, status, alerts, history.

A real pod-resources server on a unix socket assigns the simulated node's GPU UUIDs to pods.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flopwatch.outputs.alerting import UnderutilizationAlerts, annotations
from flopwatch.config import Config, ConfigError
from flopwatch.commands.metrics_doc import with_findings
from flopwatch.outputs.status_document import status_document
from flopwatch.commands.tables import status_table
from flopwatch.history.store import HistoryStore, query_history
from tests.agent_process import flopwatch, get, running_agent, wait_for
from tests.servers.kube_api import KubeAPIServer
from tests.servers.kubelet import PodResourcesServer, pod

# The simulated GPUs' UUIDs (seed 0), by index.
UUID = [f"GPU-5f1a0c00-0000-4000-8000-000000{i:06d}" for i in range(3)]


@pytest.fixture
def kubelet(tmp_path):
    with PodResourcesServer(tmp_path / "kubelet.sock") as server:
        # GPU 0 trains in ml/trainer-0; GPU 1 is held by a notebook pod with no process on it;
        # GPU 2 is no pod's. A device id of no GPU here is one the agent has nothing to tie to.
        server.pods = [pod("ml", "trainer-0", train=[UUID[0]]), pod("team-a", "notebook", jupyter=[UUID[1]]),
                       pod("other", "elsewhere", c=["GPU-00000000-dead-beef-0000-000000000000"])]
        yield server


def agent_over(kubelet, scenarios=("healthy", "idle", "healthy"), pod_labels: bool = True):
    config = Config()
    config.agent.simulate = list(scenarios)
    config.kubernetes.pod_resources_socket = str(kubelet.socket_path)
    config.kubernetes.pod_labels = pod_labels
    return with_findings(config)


def exposition(built) -> str:
    return generate_latest(built.exporter.registry()).decode()


def test_a_gpu_a_pod_holds_with_no_process_is_held_unused_by_that_pod(kubelet):
    gpu = agent_over(kubelet).agent.state.gpus[1]
    assert (gpu.processes, gpu.finding.cause, [p.job for p in gpu.pods]) == ((), "held_unused", ["pod:team-a/notebook"])
    assert (gpu.finding.evidence["job"], gpu.finding.evidence["namespace"]) == ("pod:team-a/notebook", "team-a")


def test_a_gpu_no_pod_holds_and_nothing_runs_on_is_free_not_idle(kubelet):
    gpu = agent_over(kubelet, scenarios=("healthy", "healthy", "idle")).agent.state.gpus[2]
    assert (gpu.pods, gpu.finding, gpu.below_threshold, gpu.wasted_seconds) == ((), None, False, {})


def test_every_per_gpu_series_carries_its_pod_and_an_unheld_gpu_empty_ones(kubelet):
    text = exposition(agent_over(kubelet))
    assert pods_of(text, "flopwatch_utilization_ratio") == {
        "0": ("ml", "trainer-0", "train"), "1": ("team-a", "notebook", "jupyter"), "2": ("", "", "")}
    assert pods_of(text, "flopwatch_finding_info", cause="held_unused") == {"1": ("team-a", "notebook", "jupyter")}
    assert 'flopwatch_collector_success{collector="pod_resources"} 1.0' in text


def test_pod_labels_switched_off_leave_the_series_as_without_kubernetes(kubelet):
    built = agent_over(kubelet, pod_labels=False)
    text = exposition(built)
    assert pods_of(text, "flopwatch_utilization_ratio") == {}
    assert 'container="jupyter"' not in text
    assert status_document(built.agent.state)["gpus"][1]["pod"] == "notebook"


def test_status_shows_each_gpus_pod(kubelet):
    doc = status_document(agent_over(kubelet).agent.state)
    assert [(g["namespace"], g["pod"], g["container"]) for g in doc["gpus"]] == [
        ("ml", "trainer-0", "train"), ("team-a", "notebook", "jupyter"), (None, None, None)]


def test_the_status_table_names_the_pod_holding_each_gpu(kubelet):
    table = status_table(status_document(agent_over(kubelet).agent.state))
    assert "team-a/notebook" in table and "ml/trainer-0" in table


def test_a_kubelet_gone_is_collector_success_0_and_the_gpus_keep_their_pods(kubelet):
    built = agent_over(kubelet)
    kubelet.stop()
    built.agent.pods.refresh()
    state = built.agent.tick()
    assert state.collector_success["pod_resources"] is False
    assert state.gpus[1].pods[0].pod == "notebook"


def test_the_unused_pods_time_is_charged_to_it_in_the_history(kubelet, tmp_path):
    state = agent_over(kubelet).agent.state
    url = f"sqlite:///{tmp_path}/history.db"
    store = HistoryStore(url, "n1")
    store.record(state)
    store.close()
    [row] = query_history(url, state.timestamp - 1, state.timestamp + 1, gpu=1, level="raw")
    assert (row.cause, row.job) == ("held_unused", "pod:team-a/notebook")


def test_an_alert_for_a_pods_gpu_carries_its_pod_as_the_rules_alert_does(kubelet):
    state = agent_over(kubelet, scenarios=("healthy", "held_idle", "healthy")).agent.state
    alerts = UnderutilizationAlerts(0, {"host": "n1", "job": "flopwatch"}, lambda g: annotations(g, ""),
                                    pod_labels=True)
    (alert,) = alerts.update(0.0, state.gpus).started
    assert {k: alert.labels[k] for k in ("cause", "namespace", "pod", "container")} == {
        "cause": "held_idle", "namespace": "team-a", "pod": "notebook", "container": "jupyter"}
    assert "pod:team-a/notebook" in alert.annotations["jobs"]


def test_a_running_agent_shows_each_gpus_pod_on_metrics_and_status(kubelet):
    env = {"FLOPWATCH_KUBERNETES_POD_RESOURCES_SOCKET": str(kubelet.socket_path),
           "FLOPWATCH_KUBERNETES_REFRESH_INTERVAL_SECONDS": "0.5"}
    with running_agent("--simulate", "healthy,idle,held_idle", "--history", "none", "--interval", "0.2",
                       env=env) as (url, _):
        wait_for(lambda: all(g["finding"] for g in json.loads(get(url + "/api/v1/status"))["gpus"][1:]))
        kubelet.pods = [*kubelet.pods, pod("team-b", "stuck", main=[UUID[2]])]  # a pod comes
        wait_for(lambda: 'pod="stuck"' in get(url + "/metrics"))
        text = get(url + "/metrics")
        status = flopwatch("status", "--json", "--from", url)
        promtool = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert pods_of(text, "flopwatch_utilization_ratio") == {
        "0": ("ml", "trainer-0", "train"), "1": ("team-a", "notebook", "jupyter"), "2": ("team-b", "stuck", "main")}
    assert pods_of(text, "flopwatch_finding_info", cause="held_unused") == {"1": ("team-a", "notebook", "jupyter")}
    gpus = json.loads(status.stdout)["gpus"]
    assert [(g["namespace"], g["pod"], g["container"], len(g["processes"]), g["finding"] and g["finding"]["cause"])
            for g in gpus] == [("ml", "trainer-0", "train", 1, None), ("team-a", "notebook", "jupyter", 0, "held_unused"),
                               ("team-b", "stuck", "main", 1, "held_idle")]
    assert (promtool.returncode, promtool.stdout + promtool.stderr) == (0, "")


def pods_of(text: str, metric: str, **match: str) -> dict[str, tuple[str, str, str]]:
    """(namespace, pod, container) of the metric's series, by GPU index."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == metric and "pod" in labels and all(labels.get(k) == v for k, v in match.items()):
                found[labels["gpu"]] = (labels["namespace"], labels["pod"], labels["container"])
    return found


@pytest.fixture
def api(tmp_path):
    with KubeAPIServer(tmp_path) as server:
        server.pods = {("ml", "trainer-0"), ("team-a", "notebook")}
        server.metadata[("team-a", "notebook")] = {"labels": {"team": "ml", "app": "jupyter"},
                                                    "annotations": {"example.com/owner": "ada@" + "x" * 80}}
        yield server


def owned_agent(kubelet, api, scenarios=("healthy", "idle", "healthy")):
    config = Config()
    config.agent.simulate = list(scenarios)
    config.kubernetes.pod_resources_socket = str(kubelet.socket_path)
    config.kubernetes.owner_labels = ["team", "example.com/owner", "cost-center"]
    config.kubernetes.api_url, config.kubernetes.token_file, config.kubernetes.ca_file = (
        api.url, str(api.token_file), str(api.ca_file))
    return with_findings(config)


def test_a_pods_owner_labels_and_annotations_reach_its_gpus_allocation(kubelet, api):
    state = owned_agent(kubelet, api).agent.state
    assert state.gpus[1].allocation.owner_metadata == (("team", "ml"), ("example.com/owner", "ada@" + "x" * 59))
    assert state.gpus[0].allocation.owner_metadata == ()  # a pod with none of the keys
    assert status_document(state)["gpus"][1]["allocation"]["owner"] == {
        "team": "ml", "example.com/owner": "ada@" + "x" * 59}
    assert state.collector_success["pod_metadata"] is True
    # Every pod the kubelet names holding a device, once each in the ticks since.
    assert sorted(path for method, path in api.requests if method == "GET") == [
        "/api/v1/namespaces/ml/pods/trainer-0", "/api/v1/namespaces/other/pods/elsewhere",
        "/api/v1/namespaces/team-a/pods/notebook"]


def test_a_held_unused_gpu_pages_with_its_pods_owner_and_says_so_on_finding_info(kubelet, api):
    built = owned_agent(kubelet, api)
    alerts = UnderutilizationAlerts(0, {"host": "n1", "job": "flopwatch"}, lambda g: annotations(g, ""),
                                    pod_labels=True)
    (alert,) = alerts.update(0.0, built.agent.state.gpus).started
    assert (alert.labels["cause"], alert.labels["owner_team"], alert.labels["owner_example_com_owner"]) == (
        "held_unused", "ml", "ada@" + "x" * 59)
    assert "owner_cost_center" not in alert.labels
    text = exposition(built)
    [info] = [s for f in text_string_to_metric_families(text) for s in f.samples
              if s.name == "flopwatch_finding_info" and s.labels["cause"] == "held_unused"]
    assert (info.labels["pod"], info.labels["owner_team"]) == ("notebook", "ml")
    held = {s.labels["gpu"]: s.labels["owner_team"] for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "flopwatch_gpu_allocation_info"}
    assert held == {"0": "", "1": "ml"}
    promtool = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert (promtool.returncode, promtool.stdout + promtool.stderr) == (0, "")


def test_the_api_server_failing_keeps_the_owner_last_read_and_is_collector_success_0(kubelet, api, caplog):
    built = owned_agent(kubelet, api)
    owners = built.agent.pod_owners
    kubelet.pods = [*kubelet.pods, pod("team-b", "stuck", main=[UUID[2]])]  # a new pod to read
    api.pods.add(("team-b", "stuck"))
    api.fail_next = [500, 500]
    built.agent.pods.refresh()
    owners.refresh()
    owners.refresh()
    state = built.agent.tick()
    assert state.collector_success["pod_metadata"] is False
    assert dict(state.gpus[1].allocation.owner_metadata)["team"] == "ml"
    assert [r.message for r in caplog.records if "API server" in r.message and r.levelname == "WARNING"] == [
        "Kubernetes API server at %s: pod team-b/stuck: HTTP 500: injected (pods keep the owner last read; "
        "warned once until it answers again)" % api.url]
    owners.refresh()  # it answers again
    assert built.agent.tick().collector_success["pod_metadata"] is True


def test_a_pod_gone_from_the_api_server_has_no_owner_and_is_no_failure(kubelet, api):
    api.pods.discard(("team-a", "notebook"))
    state = owned_agent(kubelet, api).agent.state
    assert (state.gpus[1].allocation.owner_metadata, state.collector_success["pod_metadata"]) == ((), True)


def test_owner_label_keys_that_become_one_label_name_are_refused():
    config = Config()
    config.kubernetes.owner_labels = ["example.com/team", "example.com_team"]
    with pytest.raises(ConfigError, match=r"\[kubernetes\].owner_labels"):
        config.kubernetes.check()
