"""What a token costs on each GPU: tokens attributed to GPUs, and joules, GPU-seconds, TFLOP and
money per token over a recent window. No I/O: the agent feeds it the ledger and the tick's GPUs.

Attribution, per ledger row and per tick, on the tokens added since the last tick:
1. the GPUs that run one of the row's pids (or ran it within ``pid_memory_seconds``, so a job's
   last flush as it exits still lands on its GPU);
2. else the GPUs running a process whose job is the row's job;
3. else, on a node with a single GPU, that GPU;
4. else nowhere: counted as unattributed.
Tokens matched to several GPUs (tensor parallelism) are split evenly, so summing a node's
``flopwatch_tokens_total`` counts each token once, and a group's cost is
``sum(energy) / sum(tokens)`` over its GPUs. A token is a prompt or a generated token: both count.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Mapping, Sequence

from flopwatch.model import GpuState, TokenCount, TokenFigures

KINDS = ("prompt", "generated")
REMEMBER_EVERY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class WindowEntry:
    """One GPU's tick as the cost window sees it."""

    timestamp: float
    seconds: float
    joules: float | None
    flop: float | None
    tokens: float


@dataclass(frozen=True, slots=True)
class Prices:
    per_gpu_hour: float = 0.0
    per_kwh: float = 0.0


class CostWindow:
    """One GPU's recent entries, as totals run since the first: a key's total over the window is
    its running total at the newest entry less that just before the oldest. An entry costs the
    same however long the window is, and nothing is ever subtracted from the running totals, which
    are compensated (each keeps what rounding dropped from it): after large values, small ones
    still add up exactly."""

    # Running totals: (sum, rounding lost) for each of _KEYS, then how many entries lacked joules
    # and flop.
    _KEYS = {"seconds": 0, "tokens": 2, "joules": 4, "flop": 6}
    _UNKNOWN = {"joules": 8, "flop": 9}

    def __init__(self) -> None:
        self._running = [0.0] * 10
        self._marks: deque[tuple[float, tuple[float, ...]]] = deque()  # (timestamp, running totals after it)
        self._before = tuple(self._running)  # the running totals before the oldest entry

    def append(self, entry: WindowEntry) -> None:
        running = self._running
        for key, value in (("seconds", entry.seconds), ("tokens", entry.tokens), ("joules", entry.joules),
                           ("flop", entry.flop)):
            if value is None:  # joules or flop, where the GPU could not say
                running[self._UNKNOWN[key]] += 1
                continue
            at = self._KEYS[key]
            total = running[at]
            new = total + value
            running[at + 1] += (total - new) + value if abs(total) >= abs(value) else (value - new) + total
            running[at] = new
        self._marks.append((entry.timestamp, tuple(running)))

    def expire(self, now: float, window_seconds: float) -> None:
        marks = self._marks
        while marks and now - marks[0][0] >= window_seconds:
            self._before = marks.popleft()[1]

    def total(self, key: str) -> float | None:
        """The window's seconds, tokens, joules or flop; None where an entry could not say."""
        last = self._marks[-1][1] if self._marks else self._before
        before = self._before
        unknown = self._UNKNOWN.get(key)
        if unknown is not None and last[unknown] > before[unknown]:
            return None
        at = self._KEYS[key]
        return (last[at] - before[at]) + (last[at + 1] - before[at + 1])


def token_figures(window: CostWindow, totals: Mapping[tuple[str, str, str], float],
                  prices: Prices, tokens_this_tick: float = 0.0) -> TokenFigures:
    """Costs over a window of ticks; None where there were no tokens or the GPU could not say."""
    seconds = window.total("seconds") or 0.0
    tokens = window.total("tokens") or 0.0
    joules = window.total("joules")
    flop = window.total("flop")
    per_token = tokens > 0
    cost = None
    if per_token and (prices.per_gpu_hour or prices.per_kwh) and (joules is not None or not prices.per_kwh):
        money = prices.per_gpu_hour * seconds / 3600 + prices.per_kwh * (joules or 0.0) / 3.6e6
        cost = money / tokens * 1e6
    return TokenFigures(
        totals=dict(totals),
        tokens_this_tick=tokens_this_tick,
        window_seconds=seconds,
        tokens_per_second=tokens / seconds if seconds > 0 else None,
        joules_per_token=joules / tokens if per_token and joules is not None else None,
        gpu_seconds_per_1k_tokens=seconds / tokens * 1000 if per_token else None,
        tflop_per_token=flop / tokens / 1e12 if per_token and flop is not None else None,
        cost_per_1m_tokens=cost,
    )


def window_entry(gpu: GpuState, tokens: float) -> WindowEntry | None:
    f = gpu.figures
    if f is None:
        return None
    joules = f.energy_joules_delta
    if joules is None and f.power_watts is not None:
        joules = f.power_watts * f.interval_seconds
    flop = f.achieved_flops_per_second * f.interval_seconds if f.achieved_flops_per_second is not None else None
    return WindowEntry(f.timestamp, f.interval_seconds, joules, flop, tokens)


class TokenAccount:
    """Turns the ledger's cumulative rows into per-GPU totals and cost figures, tick by tick."""

    def __init__(self, window_seconds: float = 60.0, prices: Prices = Prices(), pid_memory_seconds: float = 60.0):
        self.window_seconds = window_seconds
        self.prices = prices
        self.pid_memory_seconds = pid_memory_seconds
        self._last: dict[tuple[str, str], tuple[int, int]] = {}
        self._recent: dict[int, tuple[frozenset[int], str, float]] = {}  # pid → (GPUs, job, seen at)
        self._remembered_at = -math.inf
        self._totals: dict[int, dict[tuple[str, str, str], float]] = {}
        self._windows: dict[int, CostWindow] = {}
        self.unattributed: dict[tuple[str, str, str], float] = {}

    def advance(self, counts: Sequence[TokenCount], gpus: Sequence[GpuState], now: float) -> dict[int, TokenFigures]:
        """Each GPU's figures; none until a token source has counted something (most nodes train,
        and the cost windows start with the first tokens rather than with minutes of none)."""
        # A job's last flush can come after it left the GPU: who ran where is remembered, every
        # few seconds while no tokens have been counted (a node of many processes pays little).
        dormant = not counts and not self._last
        if not dormant or now - self._remembered_at >= REMEMBER_EVERY_SECONDS:
            self._remember(gpus, now)
        if dormant:
            return {}
        jobs: dict[str, set[int]] = {}
        for g in gpus:
            for p in g.processes:
                jobs.setdefault(p.job, set()).add(g.sample.info.index)
        only = frozenset({gpus[0].sample.info.index}) if len(gpus) == 1 else frozenset()
        added: dict[int, float] = {}
        for row in counts:
            deltas = self._deltas(row)
            if deltas is None:
                continue
            targets, job = self._match(row, jobs, only)
            for kind, delta in zip(KINDS, deltas):
                if delta <= 0:
                    continue
                if not targets:
                    key = (row.source, job, kind)
                    self.unattributed[key] = self.unattributed.get(key, 0.0) + delta
                    continue
                share = delta / len(targets)
                for index in targets:
                    totals = self._totals.setdefault(index, {})
                    totals[(row.source, job, kind)] = totals.get((row.source, job, kind), 0.0) + share
                    added[index] = added.get(index, 0.0) + share
        out = {}
        for g in gpus:
            index = g.sample.info.index
            window = self._windows.setdefault(index, CostWindow())
            entry = window_entry(g, added.get(index, 0.0))
            if entry is not None:
                window.append(entry)
            window.expire(now, self.window_seconds)
            out[index] = token_figures(window, self._totals.get(index, {}), self.prices, added.get(index, 0.0))
        return out

    def _deltas(self, row: TokenCount) -> tuple[int, int] | None:
        key = (row.source, row.key)
        before = self._last.get(key, (0, 0))
        now = (row.prompt_tokens, row.generated_tokens)
        if now == before:
            return None
        self._last[key] = now
        return now[0] - before[0], now[1] - before[1]

    def _match(self, row: TokenCount, jobs: Mapping[str, set[int]], only: frozenset[int]) -> tuple[frozenset[int], str]:
        targets: set[int] = set()
        job = row.job
        for pid in row.pids:
            recent = self._recent.get(pid)
            if recent is not None:
                targets |= recent[0]
                job = job or recent[1]
        if not targets and row.job in jobs:
            targets = jobs[row.job]
        return frozenset(targets) or only, job or ""

    def _remember(self, gpus: Sequence[GpuState], now: float) -> None:
        self._remembered_at = now
        seen: dict[int, tuple[set[int], str]] = {}
        for g in gpus:
            for p in g.processes:
                seen.setdefault(p.pid, (set(), p.job))[0].add(g.sample.info.index)
        for pid, (indexes, job) in seen.items():
            self._recent[pid] = (frozenset(indexes), job, now)
        for pid in [pid for pid, (_, _, at) in self._recent.items() if now - at > self.pid_memory_seconds]:
            del self._recent[pid]
