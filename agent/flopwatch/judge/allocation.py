"""Allocated but unused, used but unallocated: the rules that read who a scheduler gave a GPU to.

Pure, like the rules of judge/causes/: from a window's signals (``Signals``, with the schedulers' ``Holding``
of the GPU at the window's last tick) to a Finding. ``rule`` runs before the usual rules and
answers one of three ways: a Finding, ``None`` (the GPU is free: no job holds it and no process
runs on it — spare capacity, not waste), or ``PASS`` (the usual rules decide). Without a scheduler
(no Slurm, no kubelet) it always passes, so ``idle`` stays what it was: no process.
"""

from __future__ import annotations

from typing import Final

from flopwatch.judge.signals import Signals
from flopwatch.model import Allocation, Finding, Holding
from flopwatch.thresholds import Thresholds

CAUSES = ("held_unused", "unallocated_use")

ADVICE = {
    "held_unused": "A job holds this GPU and runs nothing on it: a crashed step whose allocation stays, a "
                   "multi-node job whose other ranks died, a notebook left open. End the job (scancel, delete "
                   "the pod) or release the GPU; ask for fewer GPUs if the job does not use them all.",
    "unallocated_use": "A process runs on a GPU the scheduler gave to no job, or to another job than its own: "
                       "it escapes accounting and steals from the job that holds the GPU. Run it through the "
                       "scheduler (srun/sbatch, a pod with a GPU request), or stop it.",
}

SUMMARY = {
    "held_unused": "GPU allocated to a job that runs nothing on it",
    "unallocated_use": "GPU used by a process outside the job it was allocated to",
}


class _Pass:
    def __repr__(self) -> str:
        return "PASS"


PASS: Final = _Pass()  # not this module's to say: the usual rules decide


def rule(s: Signals, th: Thresholds) -> Finding | None | _Pass:
    """A Finding, None for a free GPU, or PASS."""
    holding = s.holding
    if holding is None or s.utilization is None:
        return PASS
    if s.processes == 0 and holding.free:
        return None
    outsiders = sorted(pid for pid, job in s.process_jobs.items() if holding.outsider(job))
    if outsiders:
        return _unallocated(s, holding, outsiders)
    if holding.free or s.utilization >= th.utilization_threshold:
        return PASS
    untouched = s.utilization < th.idle_sm_active and (s.nvml_utilization or 0.0) < th.launch_min_kernel_time \
        and s.memory_held_bytes < th.held_memory_bytes
    if s.processes == 0 or untouched:
        return _held_unused(s, holding.allocation)
    return PASS


def _owner_evidence(a: Allocation) -> dict[str, str | float | None]:
    return {"job": a.job, "user": a.user or None, "account": a.account or None, "partition": a.partition or None,
            "namespace": a.namespace or None}


def _finding(cause: str, severity: str, confidence: float, s: Signals, evidence: dict) -> Finding:
    base = {"utilization": round(s.utilization, 3) if s.utilization is not None else None,
            "window_seconds": round(s.seconds, 1), "source_quality": s.source_quality}
    return Finding(cause=cause, severity=severity, confidence=confidence,
                   evidence={**base, **{k: v for k, v in evidence.items() if v is not None}},
                   advice=ADVICE[cause], summary=SUMMARY[cause])


def _held_unused(s: Signals, a: Allocation) -> Finding:
    held = round(s.timestamp - a.started_at, 1) if a.started_at is not None and s.timestamp else None
    return _finding("held_unused", "page", 0.95 if s.processes == 0 else 0.85, s, {
        **_owner_evidence(a), "held_seconds": held, "time_limit_seconds": a.time_limit_seconds,
        "processes": s.processes, "memory_held_bytes": s.memory_held_bytes})


def _unallocated(s: Signals, holding: Holding, pids: list[int]) -> Finding:
    processes = ", ".join(f"{pid} {s.process_jobs[pid]} {s.process_users.get(pid) or '?'}" for pid in pids)
    holder = _owner_evidence(holding.allocation) if holding.allocation is not None else {"job": "nobody"}
    return _finding("unallocated_use", "ticket", 0.9, s, {
        "unallocated_processes": processes, **{f"holder_{k}": v for k, v in holder.items()}})
