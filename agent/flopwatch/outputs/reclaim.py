"""Reclaim, only when asked: end what holds GPUs of this node and uses none of them.

A sink. Each tick it notes, per target — a Slurm job, a Kubernetes pod, or on a GPU no scheduler
gave anyone a bare process — since when all its GPUs here have had a reclaiming finding
(``[reclaim].causes``: ``held_unused``, ``held_idle``; a bare process only ``held_idle``). Once that
lasts ``after_seconds``, the target is older than ``min_job_age_seconds`` (a pod: since the agent
first saw it, the kubelet does not say when it started) and it is allow-listed (partition and
user; namespace; user), it decides — once per target. ``dry-run`` records and logs the decision;
``on`` also queues the action — ``scancel <job>`` from an argument list with a timeout, the pod's
DELETE through the API server, SIGTERM to the process if it is still the one decided on — run on
its own scheduler job and tried again with backoff on failure: the tick never waits on it. Every
decision and every attempt goes to the history.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import psutil

from flopwatch.config import ReclaimConfig
from flopwatch.model import AgentState, GpuState
from flopwatch.sources.kubernetes_api import KubernetesAPI

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Target:
    """What reclaim would end: a Slurm job, a Kubernetes pod, or a process no scheduler placed."""

    scheduler: str  # "slurm", "kubernetes" or "host"
    job: str  # "slurm:<id>", "pod:<namespace>/<name>", "pid:<pid>"
    user: str = ""
    account: str = ""
    partition: str = ""  # Slurm: the partition; Kubernetes: the pod's namespace
    started_at: float | None = None  # wall clock; a process's start time is also checked before SIGTERM
    action: str = "scancel"  # "scancel", "delete pod", "sigterm"


@dataclass
class _Pending:
    target: Target
    row: dict[str, Any]  # the decision's history row, copied for each attempt
    attempts: int = 0
    next_at: float = 0.0


def _allowed(value: str, allowed: list[str]) -> bool:
    return "*" in allowed or value in allowed


def _process_started_at(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class Reclaimer:
    name = "reclaim"

    def __init__(self, config: ReclaimConfig, history: Callable[[Mapping[str, Any]], None] | None = None,
                 slurm_conf: str = "", clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, kubernetes: KubernetesAPI | None = None,
                 process_started_at: Callable[[int], float | None] = _process_started_at):
        self.config = config
        self.env = {**os.environ, "SLURM_CONF": slurm_conf} if slurm_conf else None  # as squeue's ([slurm].conf)
        self.history = history
        self.clock = clock
        self.wall_clock = wall_clock
        self.kubernetes = kubernetes
        self.process_started_at = process_started_at
        self._since: dict[Target, float] = {}  # since when all the target's GPUs here are held unused
        self._first_seen: dict[str, float] = {}  # a pod's age where its start is not known: since first seen
        self._decided: set[str] = set()
        self._queue: list[_Pending] = []  # decided on the tick's thread, acted on the scheduler's
        self._queue_lock = threading.Lock()

    def _mode(self, scheduler: str) -> str:
        return getattr(self.config, scheduler)

    def jobs(self) -> list[tuple[Callable[[], None], float]]:
        return [(self.act, 1.0)] if "on" in (self.config.slurm, self.config.kubernetes, self.config.host) else []

    def _targets(self, g: GpuState) -> list[Target]:
        """Who holds this GPU, where their scheduler's reclaim is not off."""
        a = g.allocation
        if a is None:
            if self.config.host == "off":
                return []
            return [Target("host", f"pid:{p.pid}", user=p.user or "", started_at=self.process_started_at(p.pid),
                           action="sigterm") for p in g.processes]
        if a.scheduler == "slurm" and self.config.slurm != "off":
            return [Target("slurm", a.job, a.user, a.account, a.partition, a.started_at, "scancel")]
        if a.scheduler == "kubernetes" and self.config.kubernetes != "off":
            return [Target("kubernetes", a.job, partition=a.namespace, started_at=a.started_at, action="delete pod")]
        return []

    def _reclaiming(self, target: Target, g: GpuState) -> bool:
        """The GPU's finding lets its holder be reclaimed: a bare process only for holding memory idle."""
        causes = ("held_idle",) if target.scheduler == "host" else self.config.causes
        return g.finding is not None and g.finding.cause in causes and g.finding.cause in self.config.causes

    def record(self, state: AgentState) -> None:
        held: dict[Target, str] = {}
        busy: set[Target] = set()
        now = state.timestamp
        for g in state.gpus:
            for target in self._targets(g):
                self._first_seen.setdefault(target.job, now)
                if self._reclaiming(target, g):
                    held.setdefault(target, g.finding.cause)
                else:
                    busy.add(target)
        self._since = {t: self._since.get(t, now) for t in held if t not in busy}
        seen = {t.job for t in held.keys() | busy}
        self._first_seen = {job: ts for job, ts in self._first_seen.items() if job in seen}
        for target, since in self._since.items():
            if target.job not in self._decided and self._due(target, now - since, now):
                self._decide(target, held[target], now - since, now)

    def _due(self, t: Target, held_seconds: float, now: float) -> bool:
        c = self.config
        started_at = t.started_at if t.started_at is not None or t.scheduler != "kubernetes" else self._first_seen[t.job]
        if held_seconds < c.after_seconds or started_at is None or now - started_at < c.min_job_age_seconds:
            return False
        if t.scheduler == "slurm":
            return _allowed(t.partition, c.partitions) and _allowed(t.user, c.users)
        if t.scheduler == "kubernetes":
            return _allowed(t.partition, c.namespaces)
        return bool(t.user) and _allowed(t.user, c.users)

    def _decide(self, t: Target, cause: str, held_seconds: float, now: float) -> None:
        self._decided.add(t.job)
        mode = self._mode(t.scheduler)
        row = {"ts": now, "scheduler": t.scheduler, "job": t.job, "user": t.user, "account": t.account,
               "partition": t.partition, "action": t.action, "mode": mode, "cause": cause,
               "held_seconds": round(held_seconds, 1)}
        log.warning("reclaim (%s): %s %s of %s (%s): %s for %.0f s", mode, t.action, t.job, t.user or "?",
                    t.partition or t.scheduler, cause, held_seconds)
        self._write({**row, "outcome": "dry-run" if mode == "dry-run" else "decided"})
        if mode == "on":
            with self._queue_lock:
                self._queue.append(_Pending(t, row))

    def act(self) -> None:
        """Run the actions that are due; a failure waits twice as long as the last before the next try."""
        with self._queue_lock:
            due = [p for p in self._queue if p.next_at <= self.clock()]
        for pending in due:
            pending.attempts += 1
            outcome = self._run(pending.target)
            if outcome.startswith("done") or pending.attempts >= self.config.attempts:
                with self._queue_lock:
                    self._queue.remove(pending)
                outcome = outcome if outcome.startswith("done") else f"gave up: {outcome}"
            else:
                pending.next_at = self.clock() + FIRST_RETRY_SECONDS * 2 ** (pending.attempts - 1)
            self._write({**pending.row, "ts": self.wall_clock(), "outcome": outcome})

    def _run(self, t: Target) -> str:
        if t.scheduler == "slurm":
            return self._scancel(t.job.removeprefix("slurm:"))
        if t.scheduler == "kubernetes":
            if self.kubernetes is None:
                return "failed: no Kubernetes API ([kubernetes].api_url)"
            namespace, _, pod = t.job.removeprefix("pod:").partition("/")
            return self.kubernetes.delete_pod(namespace, pod)
        return self._sigterm(int(t.job.removeprefix("pid:")), t.started_at)

    def _sigterm(self, pid: int, started_at: float | None) -> str:
        """SIGTERM the process decided on, and not another that has since taken its pid."""
        if self.process_started_at(pid) != started_at:
            return "done: already gone"
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return "done: already gone"
        except OSError as e:
            return f"failed: {e}"
        return "done"

    def _scancel(self, job_id: str) -> str:
        try:
            done = subprocess.run([self.config.scancel, job_id], capture_output=True, env=self.env,
                                  timeout=self.config.timeout_seconds, check=False)
        except subprocess.TimeoutExpired:
            return f"failed: no answer in {self.config.timeout_seconds:g} s"
        except OSError as e:
            return f"failed: {e}"
        if done.returncode != 0:
            return f"failed: exit {done.returncode}: {done.stderr.decode(errors='replace').strip()[:200]}"
        return "done"

    def _write(self, row: Mapping[str, Any]) -> None:
        if self.history is not None:
            self.history(row)
