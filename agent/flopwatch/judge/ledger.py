"""Waste: GPU-seconds under the utilization threshold, charged to the cause of their segment. Pure.

A tick under the threshold is charged to the cause its segment (judge/regime.py) is given. A new
segment is named only once it has ``min_window_seconds`` of ticks, so its first ticks wait for that
name — at most ``charge_hold_seconds`` — instead of being charged to the verdict on what came
before. A tick under the threshold in a segment judged healthy waits as long: it is most often the
first of a new segment that the regime tracker has not yet seen (it needs a few ticks on the new
side), and joins that segment when it is. A tick takes the first verdict that speaks for it, but
is charged ``settle_seconds`` after it happened, so that a change of activity, confirmed seconds
after it began, takes its ticks for the new segment. Charges are only ever added, so the
Prometheus counter stays monotonic, and each settled tick is handed on with its cause so the
history writes the same charge the counter made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Charge:
    """One tick's GPU-seconds under the threshold, charged to a cause."""

    timestamp: float  # the tick's
    cause: str
    seconds: float


@dataclass
class _Waiting:
    """A tick under the threshold not yet charged, and the verdict it was given, if any."""

    timestamp: float
    seconds: float
    cause: str | None = None
    seen: bool = False  # the verdict is a phase a stack sample placed the tick in

    @property
    def middle(self) -> float:
        """Where a moment between two samples' phases is compared: the tick is the phase's that
        held most of it."""
        return self.timestamp - self.seconds / 2


@dataclass
class WasteLedger:
    """One GPU's waste by cause since the agent started, and the ticks waiting for their segment's name."""

    hold_seconds: float
    # A tick given its verdict is charged this long after it happened: a change of work found within
    # that time (an activity change is seen ~10 s late, on two evaluations) takes its ticks for the
    # segment it starts, instead of the verdict it replaces. A later verdict of the same segment
    # does not (the next phase of a job's life is not the one its ticks were in).
    settle_seconds: float = 0.0
    totals: dict[str, float] = field(default_factory=dict)
    pending: list[_Waiting] = field(default_factory=list)  # oldest first

    def new_segment(self, start: float, cause: str | None = None) -> tuple[Charge, ...]:
        """A segment starts at ``start``: the ticks still waiting from before it are charged to
        their verdict, else to the cause the old segment was given. Where it was given none
        (healthy, or too short to be named) they join the new segment: they are most often its
        first ticks, cut from the rest by a last burst of work (a checkpoint's first second, then
        the step that was still running). Its own ticks wait for its name, whatever verdict the old
        segment gave them, but for a phase the stacks placed them in: a change of activity is seen
        on a stretch of several seconds and starts where it began, the stacks' edge is nearer."""
        before = self._take(lambda w: w.timestamp < start and bool(w.cause or cause))
        for waiting in self.pending:
            if not waiting.seen:
                waiting.cause = None
        return self._charge(before, cause)

    def settle(self, cause: str | None = None) -> tuple[Charge, ...]:
        """Every tick still waiting, charged as it stands: to its verdict, else ``cause``, else
        ``unknown`` (the agent stops, or the GPU is lost)."""
        return self._charge(self._take(lambda w: True), cause)

    def hand_over(self, boundary: float, before: str | None, after: str, until: float = float("inf")) -> None:
        """A phase named by the stacks after another, starting at ``boundary`` (where the GPU's
        counters or the sample place it): the ticks still waiting whose middle is before it are the
        phase before's, those after it (up to ``until``) the new one's, whichever the halfway point
        between the two samples gave them (``before`` None: those given none)."""
        for waiting in self.pending:
            if waiting.middle <= boundary:
                if waiting.cause is None and before is not None:
                    waiting.cause, waiting.seen = before, True
            elif waiting.middle <= until and waiting.cause in (None, before):
                waiting.cause, waiting.seen = after, True

    def tick(self, timestamp: float, seconds: float, under: bool, named: bool, cause: str | None,
             until: float = float("inf")) -> tuple[Charge, ...]:
        """Account one tick; the charges settled by it (its own, and earlier ones its segment's
        name settles). ``named``: the segment has been judged; ``cause``: its verdict (None: no
        cause found, so an under-threshold tick is ``unknown`` once it has waited its hold);
        ``until``: the verdict is a phase the stacks saw, and holds for the ticks up to then; later
        ones wait for the next sample."""
        if under:
            self.pending.append(_Waiting(timestamp, seconds))
        if named and cause is not None:
            for waiting in self.pending:
                if waiting.cause is None and waiting.middle <= until:
                    waiting.cause, waiting.seen = cause, until != float("inf")
        ripe = self._take(lambda w: w.cause is not None and w.timestamp <= timestamp - self.settle_seconds)
        overdue = self._take(lambda w: timestamp - w.timestamp >= self.hold_seconds)
        return self._charge(ripe) + self._charge(overdue, UNKNOWN)

    def _take(self, which: Callable[[_Waiting], bool]) -> list[_Waiting]:
        taken: list[_Waiting] = []
        kept: list[_Waiting] = []
        for waiting in self.pending:
            (taken if which(waiting) else kept).append(waiting)
        self.pending = kept
        return taken

    def _charge(self, ticks: list[_Waiting], default: str | None = None) -> tuple[Charge, ...]:
        if not ticks:
            return ()
        charges = tuple(Charge(w.timestamp, w.cause or default or UNKNOWN, w.seconds) for w in ticks)
        totals = dict(self.totals)
        for charge in charges:
            totals[charge.cause] = totals.get(charge.cause, 0.0) + charge.seconds
        self.totals = totals
        return charges
