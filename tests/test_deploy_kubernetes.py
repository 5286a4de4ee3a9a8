"""deploy/kubernetes/ and deploy/Containerfile, checked offline: the manifests against the schemas
of two Kubernetes versions, the Prometheus Operator's resources by their references, the
PrometheusRule against the shipped rules, and the image's recipe against the package."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from flopwatch import config as config_mod

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
OPERATOR = DEPLOY / "prometheus-operator"
VERSIONS = ("1.29.0", "1.37.0")  # the oldest and newest minor kubernetes-validate bundles that we test

kubernetes_validate = pytest.importorskip("kubernetes_validate")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def manifests() -> dict[str, dict]:
    return {p.name: load(p) for p in sorted(DEPLOY.glob("*.yaml")) if p.name != "kustomization.yaml"}


def daemonset() -> dict:
    return load(DEPLOY / "daemonset.yaml")


def container() -> dict:
    [c] = daemonset()["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(manifests()))
def test_each_manifest_is_valid_for_kubernetes(name, version):
    kubernetes_validate.validate(manifests()[name], version, strict=True)


def test_the_validator_rejects_a_misspelt_field():
    broken = copy.deepcopy(daemonset())
    broken["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_the_kustomization_applies_every_manifest():
    assert sorted(load(DEPLOY / "kustomization.yaml")["resources"]) == sorted(manifests())


CLUSTER_WIDE = ("Namespace", "ClusterRole", "ClusterRoleBinding")


def test_everything_lives_in_the_namespace_it_creates():
    resources = [*manifests().values(), *(load(p) for p in OPERATOR.glob("*.yaml"))]
    namespaced = {r["metadata"].get("namespace") for r in resources if r["kind"] not in CLUSTER_WIDE}
    assert namespaced == {manifests()["namespace.yaml"]["metadata"]["name"]}


def test_the_daemonset_sees_host_processes_and_the_kubelet_socket_read_only_and_takes_no_gpu():
    spec = daemonset()["spec"]["template"]["spec"]
    c = container()
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert spec["hostPID"] is True
    assert mounts["pod-resources"] == {"name": "pod-resources", "mountPath": "/var/lib/kubelet/pod-resources",
                                       "readOnly": True}
    assert not any("nvidia.com/gpu" in part for part in c["resources"].values())
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"} in c["env"]


def test_the_agent_runs_without_capabilities_on_a_read_only_root():
    security = container()["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert (security["readOnlyRootFilesystem"], security["allowPrivilegeEscalation"]) == (True, False)


def test_the_memory_limit_leaves_room_over_the_measured_peak():
    # docs/performance.md: 85 MB with the SQLite store; the pod-resources reader adds 15 MB.
    resources = container()["resources"]
    assert _mebibytes(resources["requests"]["memory"]) >= 100
    assert _mebibytes(resources["limits"]["memory"]) >= 2 * 100


def test_the_configmap_is_a_configuration_the_agent_accepts(tmp_path):
    (tmp_path / "config.toml").write_text(manifests()["configmap.yaml"]["data"]["config.toml"])
    config = config_mod.load(tmp_path / "config.toml", env={})
    mounts = {m["mountPath"] for m in container()["volumeMounts"]}
    assert str(Path(config.kubernetes.pod_resources_socket).parent) in mounts
    assert str(Path(config.history.url.removeprefix("sqlite:///")).parent) in mounts
    assert container()["args"] == ["run", "--config", "/etc/flopwatch/config.toml"]


def test_the_service_and_monitors_select_the_agents_pods_and_port():
    pod_labels = daemonset()["spec"]["template"]["metadata"]["labels"]
    port = container()["ports"][0]["name"]
    service = manifests()["service.yaml"]
    service_monitor = load(OPERATOR / "servicemonitor.yaml")
    pod_monitor = load(OPERATOR / "podmonitor.yaml")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == port
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == port
    for monitor in (service_monitor, pod_monitor):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"


def test_the_judges_monitor_scrapes_the_port_the_judge_serves_its_verdicts_on():
    deployment = manifests()["judge-deployment.yaml"]
    [judge] = deployment["spec"]["template"]["spec"]["containers"]
    monitor = load(OPERATOR / "judge-podmonitor.yaml")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    [port] = [p for p in judge["ports"] if p["name"] == monitor["spec"]["podMetricsEndpoints"][0]["port"]]
    assert config_mod.JudgeConfig().listen.rpartition(":")[2] == str(port["containerPort"])


def test_both_monitors_keep_the_gpus_pod_labels_and_the_job_the_rules_expect():
    service = manifests()["service.yaml"]
    endpoints = [load(OPERATOR / "servicemonitor.yaml")["spec"]["endpoints"][0],
                 load(OPERATOR / "podmonitor.yaml")["spec"]["podMetricsEndpoints"][0]]
    for endpoint in endpoints:
        dropped = [r["regex"] for r in endpoint["relabelings"] if r.get("action") == "labeldrop"]
        assert all(any(re.fullmatch(regex, label) for regex in dropped) for label in ("namespace", "pod", "container"))
        assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"} in endpoint["relabelings"]
    assert service["metadata"]["name"] == "flopwatch"  # a ServiceMonitor's job is its Service's name
    assert {"targetLabel": "job", "replacement": "flopwatch"} in endpoints[1]["relabelings"]


def test_the_prometheusrule_holds_the_shipped_rules_unchanged():
    rule = load(OPERATOR / "prometheusrule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == load(ROOT / "alerts" / "flopwatch.rules.yml")["groups"]


def test_the_prometheusrule_is_what_its_script_generates():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-prometheusrule"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- the image ------------------------------------------------------------------------------------

def containerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Containerfile").read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def final_stage() -> list[tuple[str, str]]:
    steps = containerfile()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def pyproject() -> dict:
    return config_mod.tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_image_installs_this_package_with_extras_it_defines():
    project = pyproject()["project"]
    installs = [args for op, args in final_stage() if op == "RUN" and "pip install" in args]
    [requirement] = [w for w in shlex.split(installs[0]) if w.startswith(project["name"] + "[")]
    name, extras = re.fullmatch(r"([\w-]+)\[([\w,]+)\]", requirement).groups()
    assert name == project["name"]
    assert set(extras.split(",")) <= set(project["optional-dependencies"])


def test_the_image_is_built_in_its_own_stage_and_runs_the_cli_as_no_root_user():
    steps = final_stage()
    assert sum(op == "FROM" for op, _ in containerfile()) == 2
    assert not any(op == "COPY" and "--from=" not in args for op, args in steps), "sources reach the image"
    assert not any(re.search(r"\b(gcc|build-essential|apt-get install)\b", args) for _, args in steps)
    user = [args for op, args in steps if op == "USER"][-1]
    assert user.strip() not in ("0", "root")
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["flopwatch"]
    assert json.loads(dict(steps)["CMD"]) == ["run"]
    assert pyproject()["project"]["scripts"]["flopwatch"] == "flopwatch.commands.cli:main"


def test_what_the_build_stage_copies_builds_the_wheel_with_the_cli_and_the_kubelet_client(tmp_path):
    copies = [args.split() for op, args in containerfile() if op == "COPY" and "--from=" not in args]
    context = tmp_path / "context"
    context.mkdir()
    for *sources, _ in copies:
        for source in sources:
            subprocess.run(["cp", "-r", str(ROOT / source), str(context)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--wheel-dir", str(tmp_path / "wheels"), str(context)], check=True, timeout=300,
                   capture_output=True)
    [wheel] = (tmp_path / "wheels").glob("flopwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "flopwatch/sources/podresources_v1/api_pb2_grpc.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "flopwatch = flopwatch.commands.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


RECLAIM = DEPLOY / "reclaim"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", sorted(RECLAIM.glob("*.yaml")), ids=lambda p: p.name)
def test_the_opt_in_reclaim_rbac_is_valid_for_kubernetes(path, version):
    kubernetes_validate.validate(load(path), version, strict=True)


def test_the_agent_may_create_events_read_pods_and_delete_pods_only_with_the_reclaim_files():
    rules = {(tuple(r["resources"]), tuple(r["verbs"])) for m in manifests().values() if m["kind"] == "ClusterRole"
             for r in m["rules"]}
    assert rules == {(("events",), ("create",)), (("pods",), ("get",))}
    assert [r for r in load(RECLAIM / "clusterrole-reclaim.yaml")["rules"]] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]
