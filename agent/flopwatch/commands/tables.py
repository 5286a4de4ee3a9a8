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
