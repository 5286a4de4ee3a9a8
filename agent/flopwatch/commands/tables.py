"""Terminal tables for the CLI (rich). Imported only by commands that print, never by the agent."""

from __future__ import annotations

import io
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table


def render(table: Any) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=140, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue().rstrip("\n")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def simple_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*["—" if v is None else str(v) for v in row])
    return render(table)


def _per_token(tokens: dict | None) -> str:
    if not tokens or tokens.get("joules_per_token") is None:
        return "—"
    text = f"{tokens['joules_per_token']:.3g} J"
    if tokens.get("gpu_seconds_per_1k_tokens") is not None:
        text += f", {tokens['gpu_seconds_per_1k_tokens']:.3g} GPU-s/1k"
    return text


def status_table(doc: dict) -> str:
    seconds = [g["window_seconds"] for g in doc["gpus"] if g.get("window_seconds") is not None]
    table = Table(title=f"flopwatch status — {doc.get('host', '')}", caption=(
        f"util … power: means over the last {max(seconds):.0f} s, the window the finding was made from; "
        "last tick: the latest reading" if seconds else "no window yet: the agent has just started"))
    tokens = any(_per_token(g.get("tokens")) != "—" for g in doc["gpus"])
    pods = [f"{g['namespace']}/{g['pod']}" if g.get("pod") else "—" for g in doc["gpus"]]  # the kubelet's
    on_kubernetes = any(p != "—" for p in pods)
    for column in ("GPU", "name", "util", "NVML", "tensor", "DRAM", "flops", "power", "last tick",
                   "memory", "processes", *(["pod"] if on_kubernetes else []), *(["J/token"] if tokens else [])):
        # A pod's name whole: the other columns give way.
        table.add_column(column, min_width=min(max(map(len, pods), default=0), 40) if column == "pod" else None)
    table.add_column("finding", min_width=24)
    notes = []
    for i, g in enumerate(doc["gpus"]):
        finding = g.get("finding")
        cause = "—"
        if g.get("error"):
            cause = f"unreadable: {g['error']}"
        elif finding:
            cause = f"{finding['cause']} ({finding['severity']}, {finding['confidence']:.0%})"
            cause += "".join(f" + {c['cause']}" for c in finding.get("contributing") or ())
            notes.append(f"GPU {g['index']}: {finding['summary']}. {finding['advice']}")
            evidence = finding.get("evidence") or {}
            if evidence.get("stack_summary"):
                notes.append(f"  stacks: {evidence['stack_summary']}")
            elif evidence.get("stacks_unavailable"):
                notes.append(f"  stacks unavailable: {evidence['stacks_unavailable']}")
        memory = "—" if g.get("memory_used_bytes") is None else \
            f"{g['memory_used_bytes'] / 2**30:.1f}/{g['memory_total_bytes'] / 2**30:.0f} GiB"
        last = g.get("last_tick") or {}
        table.add_row(
            str(g["index"]), g["name"], _pct(g["utilization"]) + ("" if g["source_quality"] == "gpm" else " (coarse)"),
            _pct(g.get("nvml_utilization")), _pct(g.get("tensor_active")), _pct(g.get("dram_active")),
            _pct(g.get("flops_utilization")), "—" if g.get("power_watts") is None else f"{g['power_watts']:.0f} W",
            _pct(last.get("utilization")),
            memory, ", ".join(f"{p['pid']} {p['job']}" + ("" if p.get("sm_ratio") is None else f" {p['sm_ratio']:.0%}")
                              for p in g["processes"][:3]) or "—",
            *([pods[i]] if on_kubernetes else []),
            *([_per_token(g.get("tokens"))] if tokens else []), cause,
        )
    return "\n".join([render(table), *notes])


def job_table(doc: dict) -> str:
    """`flopwatch jobs --job J`: the judge's verdict, then every rank (host, GPU, pid, how much it
    waited, its utilization, its node's own finding) with the straggler marked, then the
    straggler's evidence, stacks and fix."""
    waiting = doc["evidence"].get("ranks_waiting", 0)
    table = Table(title=f"{doc['job']}: {doc['verdict']}" + (f" ({doc['cause']})" if doc["stragglers"] else ""),
                  caption=f"over the judge's last {doc['window_seconds']:.0f} s: {waiting} of {len(doc['ranks'])} "
                          f"ranks waiting in collectives, {doc['evidence'].get('ranks_unknown', 0)} unknown; "
                          f"{doc['held_gpu_seconds']:.0f} GPU-s waited")
    for column in ("rank", "host", "GPU", "pid", "state", "waiting", "util", "node's finding", ""):
        table.add_column(column)
    for r in doc["ranks"]:
        finding = r.get("finding") or {}
        table.add_row("—" if r["rank"] is None else str(r["rank"]), r["host"], str(r["gpu"]),
                      "—" if r["pid"] is None else str(r["pid"]), r["state"], _pct(r["waiting_share"]),
                      _pct(r["utilization"]), finding.get("cause") or "—", "<- straggler" if r["straggler"] else "")
    notes = []
    for s in doc["stragglers"]:
        finding = s.get("finding") or {}
        evidence = dict(finding.get("evidence") or {})
        stacks = evidence.pop("stack_summary", None)
        evidence.pop("stacks", None)
        notes.append(f"rank {s['rank']} ({s['host']} GPU {s['gpu']}, pid {s['pid']}): {s['cause'] or 'unknown'}"
                     + (f", {finding['summary']}" if finding.get("summary") else ""))
        notes += [f"  evidence: {', '.join(f'{k}={v}' for k, v in sorted(evidence.items()))}"] if evidence else []
        notes += [f"  stacks: {stacks}"] if stacks else []
        notes.append(f"  fix: {finding.get('advice') or 'its node has no finding open: see flopwatch status there'}")
    if doc["verdict"] == "communication_bound":
        notes.append("every rank waits in its collectives alike: the all-reduce itself is the bottleneck "
                     "(the network, NCCL's settings, too little compute between syncs)")
    return "\n".join([render(table), *notes])
