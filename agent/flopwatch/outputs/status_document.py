"""The `status --json` document (DESIGN.md's shape), from an AgentState. Pure."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flopwatch.model import AgentState, Allocation, Finding, GpuState, TokenFigures
from flopwatch.judge.evidence import contributing_document, evidence_document
from flopwatch.sources.pod_resources import LABELS as POD_LABELS, holder_labels


def status_document(state: AgentState | None, hostname: str = "") -> dict[str, Any]:
    if state is None:
        return {"host": hostname, "timestamp": None, "gpus": []}
    gpus = []
    for g in state.gpus:
        f, w = g.figures, g.window
        info = g.sample.info
        gpus.append({
            "index": info.index,
            "uuid": info.uuid,
            "name": info.name,
            "source_quality": g.sample.source_quality,
            "error": g.sample.error,
            # The figures are the means over the window the finding was made from; the last tick's
            # are under "last_tick". No window yet (the agent just started): null.
            "window_seconds": w.seconds if w else None,
            "utilization": w.utilization if w else None,
            "nvml_utilization": w.nvml_utilization if w else None,
            "sm_occupancy": w.sm_occupancy if w else None,
            "tensor_active": w.tensor_active if w else None,
            "dram_active": w.dram_active if w else None,
            "flops_utilization": w.flops_utilization if w else None,
            "memory_turnover_per_second": w.memory_turnover_per_second if w else None,
            "power_watts": w.power_watts if w else None,
            "last_tick": _last_tick(g) if f else None,
            "energy_joules": g.sample.energy_joules,
            "memory_used_bytes": f.memory_used_bytes if f else None,
            "memory_total_bytes": info.memory_total_bytes,
            # Who holds the GPU by the kubelet (null without Kubernetes), as /metrics labels it.
            **dict(zip(POD_LABELS, holder_labels(g.pods) if g.pods else (None, None, None))),
            # Who a scheduler gave the GPU to (null: nobody, or no scheduler is read).
            "allocation": _allocation(g.allocation),
            "wasted_gpu_seconds": dict(g.wasted_seconds),
            "processes": [
                {"pid": p.pid, "job": p.job, "user": p.user, "sm_ratio": p.sm_ratio,
                 "memory_bytes": p.memory_bytes, "cpu_ratio": p.cpu_ratio, "cmdline": p.cmdline,
                 "identity": _identity(p.identity)}
                for p in g.processes
            ],
            "tokens": _tokens(g.tokens),
            "finding": _finding(g.finding),
        })
    return {"host": state.hostname, "timestamp": state.timestamp, "gpus": gpus,
            "unattributed_tokens": [{"source": s, "job": j, "kind": k, "tokens": v}
                                    for (s, j, k), v in sorted(state.unattributed_tokens.items())]}


def _allocation(a: Allocation | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"scheduler": a.scheduler, "job": a.job, "user": a.user or None, "account": a.account or None,
            "partition": a.partition or None, "namespace": a.namespace or None, "started_at": a.started_at,
            "time_limit_seconds": a.time_limit_seconds, "owner": dict(a.owner_metadata)}


def _last_tick(g: GpuState) -> dict[str, Any]:
    f = g.figures
    return {"timestamp": f.timestamp, "utilization": f.utilization, "nvml_utilization": g.sample.nvml_utilization,
            "tensor_active": f.tensor_active, "dram_active": f.dram_active, "flops_utilization": f.flops_utilization,
            "memory_turnover_per_second": f.memory_turnover_per_second, "power_watts": f.power_watts,
            "below_threshold": g.below_threshold}


def _identity(identity: Any) -> dict[str, str] | None:
    if identity is None:
        return None
    return {k: v for k, v in asdict(identity).items() if v is not None}


def _tokens(tokens: TokenFigures | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    return {
        "total": sum(tokens.totals.values()),
        "by_job": [{"source": s, "job": j, "kind": k, "tokens": v} for (s, j, k), v in sorted(tokens.totals.items())],
        "window_seconds": tokens.window_seconds,
        "tokens_per_second": tokens.tokens_per_second,
        "joules_per_token": tokens.joules_per_token,
        "gpu_seconds_per_1k_tokens": tokens.gpu_seconds_per_1k_tokens,
        "tflop_per_token": tokens.tflop_per_token,
        "cost_per_1m_tokens": tokens.cost_per_1m_tokens,
    }


def _finding(finding: Finding | None) -> dict[str, Any] | None:
    if finding is None:
        return None
    return {"cause": finding.cause, "severity": finding.severity, "confidence": finding.confidence,
            "evidence": evidence_document(finding), "advice": finding.advice, "summary": finding.summary,
            "contributing": contributing_document(finding)}
