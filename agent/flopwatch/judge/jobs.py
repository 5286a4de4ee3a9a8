"""One verdict for a job that spans GPUs and hosts: which rank holds the others back, and why.

Each node names its own GPUs' causes. A data-parallel job's ranks meet in every all-reduce, so one
slow rank leaves all the others waiting in NCCL's kernels, and their nodes name
``communication_bound``; only the slow rank's own node names the real cause. Put side by side
over one window, the ranks tell the two apart:

- most ranks waiting and one (or a few) not: a **straggler** — those ranks, with their own node's
  cause (a starved loader, a host's CPUs taken, a power cap, a second process on the GPU);
- every rank waiting alike: the job is really bound by its all-reduce (``communication_bound``);
- no rank under the threshold: ``healthy``.

A rank whose node stopped writing (agent gone) is ``unknown``, never healthy; while one is, a job
without a named straggler is ``unknown`` too, since the missing rank may be it. Pure: plain
values in, a verdict out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

WAITING_CAUSE = "communication_bound"
STRAGGLER = "straggler"
VERDICTS = (STRAGGLER, WAITING_CAUSE, "healthy", "unknown")


@dataclass(frozen=True)
class JudgeThresholds:
    utilization_threshold: float = 0.6  # the agents' [diagnosis].utilization_threshold
    waiting_share: float = 0.5  # a rank whose diagnosed ticks are at least this much NCCL-waiting waits
    own_cause_share: float = 0.5  # a cause this share of a rank's diagnosed ticks is its own
    min_ticks: int = 5  # diagnosed ticks in the window before a rank counts
    stale_seconds: float = 30.0  # a rank with no tick this recent is unknown (its agent flushes every 5 s)
    max_straggler_share: float = 0.25  # more ranks than this not waiting is no straggler: a mixed job


@dataclass(frozen=True)
class RankWindow:
    """One GPU of a job over the window, as the fleet's history has it."""

    host: str
    gpu: int
    rank: int | None
    pid: int | None
    ticks: Mapping[str | None, int]  # ticks by the node's cause (None: no finding)
    utilization: Mapping[str | None, float]  # mean utilization of those ticks, by cause
    last_ts: float
    finding: Mapping[str, Any] | None = None  # the node's open finding: cause, evidence, advice, summary


@dataclass(frozen=True)
class JobWindow:
    job: str
    window_seconds: float
    ranks: tuple[RankWindow, ...]


@dataclass(frozen=True)
class RankVerdict:
    host: str
    gpu: int
    rank: int | None
    pid: int | None
    state: str  # "waiting", "own_cause", "working" or "unknown"
    cause: str | None  # the node's cause for this rank (its own, or communication_bound)
    utilization: float | None
    waiting_share: float | None
    finding: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class JobVerdict:
    job: str
    verdict: str  # one of VERDICTS
    ranks: tuple[RankVerdict, ...]
    stragglers: tuple[RankVerdict, ...] = ()
    # GPU-seconds the waiting ranks spent waiting over the window: what the stragglers cost.
    held_gpu_seconds: float = 0.0
    window_seconds: float = 0.0
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pages(self) -> bool:
        return self.verdict in (STRAGGLER, WAITING_CAUSE)

    @property
    def cause(self) -> str:
        """What routes the page: the straggler's own cause, or the job's."""
        if self.verdict == STRAGGLER:
            return self.stragglers[0].cause or "unknown"
        return self.verdict

    @property
    def namespace(self) -> str | None:
        """The owner's namespace, for a job named after a Kubernetes object (``kind:ns/name``)."""
        kind, sep, rest = self.job.partition(":")
        return rest.split("/", 1)[0] if sep and "/" in rest and kind not in ("slurm", "torchrun") else None


def judge_rank(r: RankWindow, now: float, th: JudgeThresholds) -> RankVerdict:
    """A rank's state: waiting in collectives, held by its own cause, working, or unknown."""
    # Ticks without a finding under the threshold are the node's window filling up: not diagnosed.
    diagnosed = {c: n for c, n in r.ticks.items()
                 if c is not None or r.utilization.get(None, 0.0) >= th.utilization_threshold}
    total = sum(diagnosed.values())
    utilization = _mean(r.ticks, r.utilization)
    if now - r.last_ts > th.stale_seconds or total < th.min_ticks:
        return RankVerdict(r.host, r.gpu, r.rank, r.pid, "unknown", None, utilization, None, r.finding)
    waiting = diagnosed.get(WAITING_CAUSE, 0) / total
    own = max(((c, n) for c, n in diagnosed.items() if c not in (None, WAITING_CAUSE)),
              key=lambda cn: cn[1], default=(None, 0))
    if waiting >= th.waiting_share:
        state, cause = "waiting", WAITING_CAUSE
    elif own[0] is not None and own[1] / total >= th.own_cause_share:
        state, cause = "own_cause", own[0]
    else:
        state, cause = "working", None
    return RankVerdict(r.host, r.gpu, r.rank, r.pid, state, cause, utilization, waiting, r.finding)


def judge_job(job: JobWindow, now: float, th: JudgeThresholds = JudgeThresholds()) -> JobVerdict:
    ranks = tuple(sorted((judge_rank(r, now, th) for r in job.ranks),
                         key=lambda v: (v.rank is None, v.rank if v.rank is not None else 0, v.host, v.gpu)))
    known = [r for r in ranks if r.state != "unknown"]
    unknown = len(ranks) - len(known)
    waiting = [r for r in known if r.state == "waiting"]
    others = [r for r in known if r.state != "waiting"]
    held = sum((r.waiting_share or 0.0) for r in waiting) * job.window_seconds
    base = dict(job=job.job, ranks=ranks, window_seconds=job.window_seconds)
    evidence = {"ranks": len(ranks), "ranks_waiting": len(waiting), "ranks_unknown": unknown}
    if known and len(waiting) >= th.waiting_share * len(known):
        if others and len(others) <= max(1, int(th.max_straggler_share * len(known))):
            evidence["waiting_utilization"] = _mean_of(r.utilization for r in waiting)
            return JobVerdict(verdict=STRAGGLER, stragglers=tuple(others), held_gpu_seconds=held,
                              evidence=evidence, **base)
        if not others and not unknown:
            evidence["waiting_utilization"] = _mean_of(r.utilization for r in waiting)
            return JobVerdict(verdict=WAITING_CAUSE, held_gpu_seconds=held, evidence=evidence, **base)
    if known and not unknown and all(r.state == "working" for r in known):
        return JobVerdict(verdict="healthy", evidence=evidence, **base)
    return JobVerdict(verdict="unknown", held_gpu_seconds=held, evidence=evidence, **base)


def _mean(ticks: Mapping[str | None, int], utilization: Mapping[str | None, float]) -> float | None:
    n = sum(ticks.values())
    return sum(utilization.get(c, 0.0) * k for c, k in ticks.items()) / n if n else None


def _mean_of(values: Any) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class HeldBack:
    """Who held a job back in one verdict: a straggler rank with its own cause, or, for a job
    bound by its all-reduce, nobody (host, GPU and rank None). What ``flopwatch report --job``
    adds up, from the judge's passes kept in the history's ``job_verdicts``."""

    job: str
    verdict: str
    cause: str
    host: str | None
    gpu: int | None
    rank: int | None
    # GPU-seconds the other ranks waited per second: the verdict's waiting over its window,
    # shared evenly among the stragglers when there are several.
    held_gpu_seconds_per_second: float


def held_back(v: JobVerdict) -> list[HeldBack]:
    """The verdict's culprits; none for a healthy or unknown job."""
    if not v.pages or not v.window_seconds:
        return []
    rate = v.held_gpu_seconds / v.window_seconds
    if v.verdict != STRAGGLER:
        return [HeldBack(v.job, v.verdict, v.cause, None, None, None, rate)]
    return [HeldBack(v.job, v.verdict, s.cause or "unknown", s.host, s.gpu, s.rank, rate / len(v.stragglers))
            for s in v.stragglers]
