"""When a GPU's work changed: the segment of ticks that one verdict may speak for. Pure.

A 30 s mean across a change of job or of phase speaks for neither side: a job's start-up averaged
with the idle GPU before it reads `idle`, a healthy run after a stall carries the stall's cause for
as long as the stall stays in the window. So a GPU's ticks are cut into segments, and a segment is
judged alone. A segment ends when

- the processes on the GPU change (a job starts, ends, or a second one joins), or
- its utilization moves to the other side of the threshold and stays there: every tick of the last
  ``regime_change_seconds`` is on the other side of ``utilization_threshold``, and their mean by at
  least ``regime_margin``. The new segment starts where that stretch began.

- on the same side of the threshold, what the GPU's last ``regime_change_seconds`` say (the cause
  the rules give them alone) differs from the segment's verdict, the same at two evaluations in a row: a job
  moving from training to saving a checkpoint, from loading weights to compiling. The new segment
  starts where that stretch began.

A job that stalls and runs in turn faster than ``regime_change_seconds`` stays one segment: its
verdict is about the mix, which is what its owner can change.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable

from flopwatch.thresholds import Thresholds


@dataclass(frozen=True, slots=True)
class Change:
    """A new segment: where it starts (a tick's timestamp) and why."""

    start: float
    reason: str  # "processes", "utilization" or "activity"


class RegimeTracker:
    """One GPU's current segment, fed one tick at a time."""

    def __init__(self) -> None:
        self.pids: frozenset[int] | None = None
        self.under: bool | None = None  # the segment's side of the threshold, once it has one
        self.started: float | None = None
        self._recent: deque[tuple[float, float, float]] = deque()  # (timestamp, utilization, seconds)
        # The cause a recent stretch gave that differs from the segment's, and where that stretch began.
        self._challenger: tuple[str | None, float] | None = None

    @property
    def since(self) -> float:
        """Where the current segment started; before any, the beginning of time."""
        return self.started if self.started is not None else float("-inf")

    def observe(self, timestamp: float, seconds: float, utilization: float | None, pids: frozenset[int],
                th: Thresholds) -> Change | None:
        """The change this tick ends the current segment with, or None if it continues it."""
        if self.pids is None or pids != self.pids:
            first = self.pids is None
            self._restart(timestamp, pids)
            self._remember(timestamp, utilization, seconds, th)
            return None if first else Change(timestamp, "processes")
        self._remember(timestamp, utilization, seconds, th)
        trailing = self._trailing_mean()
        if trailing is None or timestamp - self._recent[0][0] + seconds < th.regime_change_seconds:
            return None
        under = trailing < th.utilization_threshold
        if self.under is None:
            self.under = under
            return None
        stayed = all((u < th.utilization_threshold) == under for _, u, _ in self._recent)
        beyond = abs(trailing - th.utilization_threshold) >= th.regime_margin
        if under == self.under or not (stayed and beyond):
            return None
        start = self._recent[0][0]
        self.under, self.started, self._challenger = under, start, None
        return Change(start, "utilization")

    def compare(self, stretch_start: float, recent_cause: str | None, segment_cause: str | None) -> Change | None:
        """At an evaluation: the change if the last stretch's own cause differs from the segment's
        verdict and is the one the stretch before gave, starting where that first stretch began."""
        if recent_cause == segment_cause:
            self._challenger = None
            return None
        if self._challenger is None or self._challenger[0] != recent_cause:
            self._challenger = (recent_cause, stretch_start)  # a transition's mix names a cause once
            return None
        start = self._challenger[1]
        self._challenger, self.started = None, start
        return Change(start, "activity")

    def _restart(self, timestamp: float, pids: frozenset[int]) -> None:
        self.pids, self.under, self.started = pids, None, timestamp
        self._challenger = None
        self._recent.clear()

    def _remember(self, timestamp: float, utilization: float | None, seconds: float, th: Thresholds) -> None:
        if utilization is not None:
            self._recent.append((timestamp, utilization, seconds))
        while self._recent and timestamp - self._recent[0][0] >= th.regime_change_seconds:
            self._recent.popleft()

    def _trailing_mean(self) -> float | None:
        weight = sum(s for _, _, s in self._recent)
        return sum(u * s for _, u, s in self._recent) / weight if weight > 0 else None


# A tick's growth of GPU memory that marks weights landing on it (a 3.6B model's bf16 weights came
# 6.7 GB in one tick on an H100; a CUDA context is ~0.5 GB, but comes before the job's first sample).
WEIGHTS_LANDING_BYTES = 256 * 2**20


@dataclass(frozen=True, slots=True)
class GpuTick:
    """One tick of a GPU, kept for a few seconds: what a stack sample is read against, and where a
    phase's start shows on the GPU's own counters."""

    timestamp: float  # the tick's end
    seconds: float
    utilization: float | None
    under: bool  # under the utilization threshold
    memory_used_bytes: int | None = None


def phase_onset(phase: str, ticks: Iterable[GpuTick], start: float, end: float, th: Thresholds) -> float | None:
    """Where the GPU's own counters place the start of ``phase`` between ``start`` and ``end`` (the
    earlier stack sample's start and the later one's end, which named the phase before and this
    one): the end of the last tick before it, or None where they show no sign of it.

    Stack samples a phase turn apart place a change of phase only halfway between them. Some
    phases begin with a mark of their own on the GPU: weights loading land in its memory (its
    first step up); an evaluation loop starts kernels on a GPU that ran none; a checkpoint or an
    exit stops them. The tick the kernels start or stop in goes to the side it spent most of its
    time on: with kernels under half the rate of the work beside it, most of it had none."""
    def kernels(tick: GpuTick) -> bool:
        return tick.utilization is not None and tick.utilization >= th.idle_sm_active

    def mostly_without(tick: GpuTick, work: GpuTick) -> bool:
        return kernels(work) and tick.utilization < work.utilization / 2

    ticks = list(ticks)
    edges = [i for i in range(1, len(ticks)) if start <= ticks[i - 1].timestamp < end]  # tick i-1's end, then tick i

    def beside(i: int) -> GpuTick | None:
        return ticks[i] if 0 <= i < len(ticks) else None

    if phase == "loading_weights":
        return next((ticks[i - 1].timestamp for i in edges
                     if ticks[i - 1].memory_used_bytes is not None and ticks[i].memory_used_bytes is not None
                     and ticks[i].memory_used_bytes - ticks[i - 1].memory_used_bytes >= WEIGHTS_LANDING_BYTES), None)
    if phase == "evaluating":
        for i in edges:
            if not kernels(ticks[i - 1]) and kernels(ticks[i]):
                work = beside(i + 1)
                return ticks[i].timestamp if work is not None and mostly_without(ticks[i], work) else ticks[i - 1].timestamp
        return None
    if phase in ("checkpointing", "exiting"):
        stopped = None
        for i in edges:
            if kernels(ticks[i]):
                stopped = None
            elif kernels(ticks[i - 1]):
                work = beside(i - 2)
                stopped = work.timestamp if work is not None and mostly_without(ticks[i - 1], work) \
                    else ticks[i - 1].timestamp
        return stopped
    return None
