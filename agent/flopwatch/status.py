"""The `status --json` document (DESIGN.md's shape), from an AgentState. Pure."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .model import AgentState


def status_document(state: AgentState | None, hostname: str = "") -> dict[str, Any]:
    if state is None:
        return {"host": hostname, "timestamp": None, "gpus": []}
    gpus = []
    for g in state.gpus:
        f = g.figures
        info = g.sample.info
        gpus.append({
            "index": info.index,
            "uuid": info.uuid,
            "name": info.name,
            "source_quality": g.sample.source_quality,
            "error": g.sample.error,
            "utilization": f.utilization if f else None,
            "nvml_utilization": g.sample.nvml_utilization,
            "sm_occupancy": f.sm_occupancy if f else None,
            "tensor_active": f.tensor_active if f else None,
            "dram_active": f.dram_active if f else None,
            "flops_utilization": f.flops_utilization if f else None,
            "memory_turnover_per_second": f.memory_turnover_per_second if f else None,
            "power_watts": f.power_watts if f else None,
            "energy_joules": g.sample.energy_joules,
            "memory_used_bytes": f.memory_used_bytes if f else None,
            "memory_total_bytes": info.memory_total_bytes,
            "below_threshold": g.below_threshold,
            "wasted_gpu_seconds": dict(g.wasted_seconds),
            "processes": [
                {"pid": p.pid, "job": p.job, "user": p.user, "sm_ratio": p.sm_ratio,
                 "memory_bytes": p.memory_bytes, "cpu_ratio": p.cpu_ratio, "cmdline": p.cmdline}
                for p in g.processes
            ],
            "finding": _finding(g.finding),
        })
    return {"host": state.hostname, "timestamp": state.timestamp, "gpus": gpus}


def _finding(finding: Any) -> dict[str, Any] | None:
    if finding is None:
        return None
    doc = asdict(finding)
    doc["evidence"] = dict(finding.evidence)
    return doc
