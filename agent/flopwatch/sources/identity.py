"""Who runs a GPU process: container, Kubernetes pod, Slurm job and systemd unit, from
/proc/PID/cgroup (v1 and v2, cgroupfs and systemd drivers) and a few environment variables.

Parsing is pure (plain text in, an Identity out); `read_identity` is the only part that reads.
Only whitelisted variables are taken from /proc/PID/environ, so no secret leaves it.

Job names, by rule (`[attribution].job_rules`, first that yields a name wins):
``slurm`` → ``slurm:<job id>``, ``pod`` → ``pod:<namespace>/<name>`` (``pod:<uid>`` when the name
is unknown), ``torchrun`` → ``torchrun:<rdzv id>`` or ``torchrun:<master addr>:<port>``,
``container`` → ``container:<12 hex>``, ``unit`` → ``unit:<name.service>``, ``user_command`` →
``<user>:<command>`` (always yields a name).

torchrun's agent gives each worker TORCHELASTIC_RUN_ID: the ``--rdzv-id`` (a fresh UUID with
``--standalone``), else "none"; and MASTER_ADDR/MASTER_PORT, the store every rank of the run joins.
Ranks of one run share them; two runs of one user do not.

A multi-node job has one name on every node: the Slurm job id, the torchrun run, or the pod's
owner — the JobSet, PyTorchJob, MPIJob or LeaderWorkerSet group that made it — read from the pod's
labels where the Downward API puts them (``/etc/podinfo/labels``) or from LeaderWorkerSet's
``LWS_LEADER_ADDRESS``. Each process's rank comes from its launcher's variables: ``RANK`` (torchrun,
the training operator), else ``SLURM_PROCID``, else ``OMPI_COMM_WORLD_RANK``.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from flopwatch.config import JOB_RULES
from flopwatch.model import Identity
from flopwatch.sources.procfs import read_once


# A pod's UID in its cgroup: dashes with the cgroupfs driver, underscores with the systemd one.
_POD_UID = re.compile(r"kubepods.*?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
# docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope, /docker/<id>,
# /kubepods/…/<id>; conmon (cri-o's monitor) shares the pod but is not the container.
_CONTAINER = re.compile(r"^(?!crio-conmon-)(?:[a-z-]+-)?([0-9a-f]{64})(?:\.scope)?$")
# Slurm: /slurm/uid_1000/job_123/step_0 (v1), /system.slice/slurmstepd.scope/job_123/step_0 (v2).
_SLURM_JOB = re.compile(r"/job_(\d+)(?:/|$)")
_UNIT = re.compile(r"^[\w@:.\\-]+\.(?:service|scope)$")
# Units that say where a process runs, not what it is: login sessions, user managers, the
# container runtimes' scopes (named by the container id instead) and Slurm's step daemon.
_NOT_A_JOB_UNIT = re.compile(r"^(?:session-.*\.scope|user@\d+\.service|init\.scope|slurmstepd\.scope|"
                             r"(?:docker|cri-containerd|crio|libpod|crio-conmon)-.*\.scope)$")
_MAX_BYTES = 1 << 20  # read of each file at most
_RANK_KEYS = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")
_WORLD_SIZE_KEYS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
_LOCAL_RANK_KEYS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")
_ENV_KEYS = (b"SLURM_JOB_ID", b"SLURM_JOBID", b"POD_NAME", b"POD_NAMESPACE", b"HOSTNAME", b"TORCHELASTIC_RUN_ID",
             b"MASTER_ADDR", b"MASTER_PORT", b"LWS_LEADER_ADDRESS",
             *(k.encode() for k in _RANK_KEYS + _WORLD_SIZE_KEYS + _LOCAL_RANK_KEYS))
_SERVICE_ACCOUNT_NAMESPACE = "var/run/secrets/kubernetes.io/serviceaccount/namespace"
_DOWNWARD_API_LABELS = "etc/podinfo/labels"
# Pod labels naming the object that made the pod, by the controller that sets them.
_KUBEFLOW_KINDS = {"pytorchjob-controller": "pytorchjob", "mpijob-controller": "mpijob"}


class BadJobRule(ValueError):
    pass


def check_rules(rules: Iterable[str]) -> list[str]:
    rules = list(rules)
    unknown = [r for r in rules if r not in JOB_RULES]
    if unknown:
        raise BadJobRule(f"unknown rule(s) {', '.join(unknown)} in [attribution].job_rules; valid: {', '.join(JOB_RULES)}")
    return rules


def cgroup_paths(text: str) -> list[str]:
    """The paths of /proc/PID/cgroup, one per hierarchy (v1) or the single v2 one, deduplicated."""
    paths: list[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2] not in paths:
            paths.append(parts[2])
    return paths


def parse_cgroup(text: str) -> Identity:
    container = pod_uid = slurm = unit = None
    for path in cgroup_paths(text):
        if pod_uid is None and (m := _POD_UID.search(path)):
            pod_uid = m.group(1).replace("_", "-")
        if slurm is None and "slurm" in path and (m := _SLURM_JOB.search(path)):
            slurm = m.group(1)
        for segment in reversed(path.split("/")):
            if container is None and (m := _CONTAINER.match(segment)):
                container = m.group(1)[:12]
            if unit is None and _UNIT.match(segment) and not _NOT_A_JOB_UNIT.match(segment):
                unit = segment
    return Identity(container_id=container, pod_uid=pod_uid, slurm_job=slurm, unit=unit)


def parse_environ(data: bytes) -> dict[str, str]:
    """The whitelisted variables of a NUL-separated environment block."""
    out = {}
    for entry in data.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name in _ENV_KEYS and value:
            out[name.decode()] = value.decode(errors="replace")
    return out


def identify(cgroup_text: str, env: Mapping[str, str], namespace_file: str | None = None,
             pod_labels: Mapping[str, str] | None = None) -> Identity:
    """Join the cgroup's facts with the environment's. The cgroup wins for the Slurm job: a
    variable can be inherited or set by anyone, the cgroup only by slurmd."""
    found = parse_cgroup(cgroup_text)
    slurm = found.slurm_job or env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    pod = namespace = owner = None
    if found.pod_uid is not None:
        # Kubernetes sets HOSTNAME to the pod's name unless the spec overrides the hostname.
        pod = env.get("POD_NAME") or env.get("HOSTNAME")
        namespace = env.get("POD_NAMESPACE") or namespace_file
        owner = pod_owner(pod_labels or {}, env, namespace)
    return Identity(container_id=found.container_id, pod_uid=found.pod_uid, pod=pod, namespace=namespace,
                    slurm_job=slurm, unit=found.unit, torchrun=torchrun_run(env),
                    rank=_first_int(env, _RANK_KEYS), world_size=_first_int(env, _WORLD_SIZE_KEYS),
                    local_rank=_first_int(env, _LOCAL_RANK_KEYS), pod_owner=owner)


def pod_owner(labels: Mapping[str, str], env: Mapping[str, str], namespace: str | None) -> str | None:
    """``<kind>:<namespace>/<name>`` of the multi-pod job a pod belongs to, from its labels (the
    controllers' own) or LeaderWorkerSet's variable; None for a pod of its own."""
    ns = namespace or "default"
    if name := labels.get("jobset.sigs.k8s.io/jobset-name"):
        return f"jobset:{ns}/{name}"
    kind = _KUBEFLOW_KINDS.get(labels.get("training.kubeflow.org/operator-name", ""))
    if kind and (name := labels.get("training.kubeflow.org/job-name")):
        return f"{kind}:{ns}/{name}"
    if name := labels.get("leaderworkerset.sigs.k8s.io/name"):
        group = labels.get("leaderworkerset.sigs.k8s.io/group-index")
        return f"leaderworkerset:{ns}/{name}-{group}" if group else f"leaderworkerset:{ns}/{name}"
    if leader := env.get("LWS_LEADER_ADDRESS"):
        # <name>-<group index>.<service>.<namespace>…: the group's leader pod names the group.
        return f"leaderworkerset:{ns}/{leader.split('.', 1)[0]}"
    return None


def parse_pod_labels(text: str) -> dict[str, str]:
    """The Downward API's labels file: ``key="value"`` a line."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


def _first_int(env: Mapping[str, str], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = env.get(key, "")
        if value.isdigit():
            return int(value)
    return None


def torchrun_run(env: Mapping[str, str]) -> str | None:
    """The torchrun run a worker belongs to; None outside torchrun (MASTER_ADDR alone is set by
    many launchers, TORCHELASTIC_RUN_ID only by torch.distributed.elastic's agent)."""
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if run_id is None:
        return None
    if run_id != "none":
        return run_id
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    return f"{addr}:{port}" if addr and port else None


def read_identity(pid: int, proc_root: str = "/proc") -> Identity:
    """What /proc says of one process; unreadable parts (another user's environ) are left out."""
    cgroup = read_once(f"{proc_root}/{pid}/cgroup", _MAX_BYTES)
    environ = read_once(f"{proc_root}/{pid}/environ", _MAX_BYTES)
    text = cgroup.decode(errors="replace") if cgroup else ""
    found = parse_cgroup(text)
    namespace = None
    labels: dict[str, str] = {}
    if found.pod_uid is not None:
        raw = read_once(f"{proc_root}/{pid}/root/{_SERVICE_ACCOUNT_NAMESPACE}", _MAX_BYTES)
        namespace = (raw.decode(errors="replace").strip() or None) if raw else None
        raw = read_once(f"{proc_root}/{pid}/root/{_DOWNWARD_API_LABELS}", _MAX_BYTES)
        labels = parse_pod_labels(raw.decode(errors="replace")) if raw else {}
    return identify(text, parse_environ(environ or b""), namespace, labels)


def job_name(rules: Iterable[str], identity: Identity | None, user: str | None, command: str) -> str:
    ident = identity or Identity()
    for rule in rules:
        if rule == "slurm" and ident.slurm_job:
            return f"slurm:{ident.slurm_job}"
        if rule == "pod" and ident.pod_owner:
            return ident.pod_owner  # the same on every pod of a multi-node job
        if rule == "pod" and (ident.pod or ident.pod_uid):
            return f"pod:{ident.namespace}/{ident.pod}" if ident.pod and ident.namespace else f"pod:{ident.pod or ident.pod_uid}"
        if rule == "torchrun" and ident.torchrun:
            return f"torchrun:{ident.torchrun}"
        if rule == "container" and ident.container_id:
            return f"container:{ident.container_id}"
        if rule == "unit" and ident.unit:
            return f"unit:{ident.unit}"
        if rule == "user_command":
            break
    return f"{user}:{command}" if user else command

