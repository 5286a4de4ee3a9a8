"""The shipped Prometheus rules and Alertmanager example, checked by the real tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.servers.prometheus import eventually, find_binary, start_alertmanager

ALERTS = Path(__file__).resolve().parents[1] / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*.test.yml"))
EXAMPLE = ALERTS / "alertmanager.example.yml"


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rule_files_pass_promtool_check():
    assert RULE_FILES
    run(find_binary("promtool"), "check", "rules", *map(str, RULE_FILES))


def test_rule_unit_tests_pass_promtool_test():
    assert TEST_FILES
    run(find_binary("promtool"), "test", "rules", *map(str, TEST_FILES))


def test_every_alert_has_a_unit_test():
    alerts = {line.split(":", 1)[1].strip() for f in RULE_FILES for line in f.read_text().splitlines()
              if line.strip().startswith("- alert:")}
    tested = {line.split(":", 1)[1].strip() for f in TEST_FILES for line in f.read_text().splitlines()
              if line.strip().startswith("alertname:")}
    assert alerts - tested == set()


def test_alertmanager_example_passes_amtool_check():
    run(find_binary("amtool"), "check-config", str(EXAMPLE))


@pytest.mark.parametrize(
    "labels, receiver",
    [
        (["alertname=GPUUnderutilized", "severity=page", "cause=input_starved"], "gpu-pages"),
        (["alertname=GPUInefficient", "severity=ticket", "cause=no_tensor_cores"], "gpu-tickets"),
        (["alertname=GPUUnderutilized", "severity=page", "cause=system"], "gpu-hardware"),
        (["alertname=GPUECCErrors", "severity=page"], "gpu-hardware"),
        (["alertname=FlopwatchAgentDown", "severity=page"], "gpu-pages"),
        # The owner of a held GPU is told, and on-call still sees the page.
        (["alertname=GPUUnderutilized", "severity=page", "cause=held_unused", "hpc_job=42", "user=ada",
          "account=ml", "partition=gpu"], "team-ml,gpu-pages"),
        (["alertname=GPUInefficient", "severity=ticket", "cause=unallocated_use", "account=ml"],
         "team-ml,gpu-tickets"),
        (["alertname=GPUUnderutilized", "severity=page", "cause=held_unused", "namespace=team-a", "pod=nb"],
         "team-a,gpu-pages"),
        (["alertname=GPUUnderutilized", "severity=page", "cause=held_unused", "namespace=research", "pod=nb",
          "owner_team=ml"], "team-ml,gpu-pages"),
        (["alertname=GPUUnderutilized", "severity=page", "cause=held_unused", "account=physics"], "gpu-pages"),
        (["alertname=GPUJobStraggler", "severity=page", "cause=system", "exported_job=slurm:7"], "gpu-pages"),
        (["alertname=FlopwatchJobMember", "severity=none", "exported_job=slurm:7"], "null"),
    ],
)
def test_alertmanager_example_routes_by_severity_and_cause(labels, receiver):
    run(
        find_binary("amtool"), "config", "routes", "test",
        f"--config.file={EXAMPLE}", f"--verify.receivers={receiver}", *labels,
    )


def test_alertmanager_example_inhibits_gpu_alerts_of_a_node_whose_agent_is_down(tmp_path):
    down = {"alertname": "FlopwatchAgentDown", "severity": "page", "host": "gpu-node-1", "job": "flopwatch"}
    gpu = {"alertname": "GPUUnderutilized", "severity": "page", "cause": "input_starved",
           "host": "gpu-node-1", "job": "flopwatch", "gpu": "0", "uuid": "GPU-aaaa"}
    other_node = dict(gpu, host="gpu-node-2", uuid="GPU-bbbb")
    with start_alertmanager(tmp_path, config=EXAMPLE.read_text()) as am:
        am.post([{"labels": down}, {"labels": gpu}, {"labels": other_node}])
        inhibited = eventually(
            lambda: {a["labels"]["host"]: a["status"]["inhibitedBy"] for a in am.alerts(alertname="GPUUnderutilized")
                     if len(am.alerts()) == 3},
            what="three alerts in Alertmanager",
        )
    assert inhibited["gpu-node-1"] != []
    assert inhibited["gpu-node-2"] == []


def test_alertmanager_example_inhibits_the_node_pages_of_a_job_the_judge_pages_for(tmp_path):
    page = {"alertname": "GPUJobStraggler", "severity": "page", "exported_job": "slurm:7", "cause": "input_starved",
            "straggler_host": "gpu-node-2", "straggler_gpu": "1"}
    member = {"alertname": "FlopwatchJobMember", "severity": "none", "exported_job": "slurm:7",
              "host": "gpu-node-1", "gpu": "0"}
    waiting = {"alertname": "GPUUnderutilized", "severity": "page", "cause": "communication_bound",
               "host": "gpu-node-1", "job": "flopwatch", "gpu": "0", "uuid": "GPU-aaaa"}
    other_job = dict(waiting, gpu="1", uuid="GPU-bbbb")
    with start_alertmanager(tmp_path, config=EXAMPLE.read_text()) as am:
        am.post([{"labels": page}, {"labels": member}, {"labels": waiting}, {"labels": other_job}])
        inhibited = eventually(
            lambda: {a["labels"]["gpu"]: a["status"]["inhibitedBy"] for a in am.alerts(alertname="GPUUnderutilized")
                     if len(am.alerts()) == 4},
            what="four alerts in Alertmanager",
        )
    assert inhibited["0"] != []
    assert inhibited["1"] == []
