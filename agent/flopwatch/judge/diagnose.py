"""Why is this GPU under-used? A window's signals tried against rules in order; a held Finding.

The causes and their rules live in ``causes/``, one module per family (docs/causes.md has the
physics). This module holds the order they are tried in, as two tables (the first rule that
matches wins), and the state that keeps a finding from flapping: a cause must lead for
``switch_after_seconds`` before it replaces another. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flopwatch.model import Contribution, Finding, WindowFigures
from flopwatch.thresholds import Thresholds
from flopwatch.judge import allocation
from flopwatch.judge.causes import clocks, communication, host, idle, kernels, phases, system
from flopwatch.judge.causes.rule import Cause, Context, Rule, base_evidence, context
from flopwatch.judge.signals import Signals, TickWindow, signals, window_figures

# The taxonomy. Names are stable identifiers: metrics, alerts and the history carry them.
TAXONOMY = (
    idle.IDLE, idle.HELD_IDLE, host.INPUT_STARVED, host.IO_BOUND, host.HOST_TRANSFER_BOUND, kernels.LAUNCH_BOUND,
    kernels.MEMORY_BOUND, kernels.NO_TENSOR_CORES, clocks.POWER_CAPPED, clocks.THERMAL_THROTTLED,
    clocks.CLOCKS_CAPPED, kernels.CONTENTION, communication.COMMUNICATION_BOUND, system.SYSTEM,
    idle.LOW_DEMAND, system.UNKNOWN, *phases.PHASES,
    # Who holds the GPU, by the scheduler's word: tried before every rule (judge/allocation.py).
    *(Cause(name, allocation.SUMMARY[name], allocation.ADVICE[name]) for name in allocation.CAUSES),
)
CAUSES = tuple(cause.name for cause in TAXONOMY)
PHASES = tuple(cause.name for cause in phases.PHASES)
ADVICE = {cause.name: cause.advice for cause in TAXONOMY}
SUMMARY = {cause.name: cause.summary for cause in TAXONOMY}

# Under the utilization threshold: why does the GPU wait? Pages, but for idle and low_demand.
UNDER_THRESHOLD: tuple[Rule, ...] = (
    idle.idle,
    idle.held_idle,
    # Before launch_bound: two jobs of small kernels time-slicing a GPU they keep in kernels look
    # launch-bound too, and giving each its own GPU comes first.
    kernels.contention,
    communication.over_nvlink,
    # Before io_bound and host_transfer_bound: PCIe traffic while the job's GPUs wait together is
    # the collectives'.
    communication.over_pcie,
    # Before host_transfer_bound: where storage moves a share of PCIe's bytes, they are the disk's.
    host.io_bound,
    host.host_transfer_bound,
    kernels.memory_bound,
    # The next three read one sign, kernels outrunning the SMs while the job's other GPUs are low,
    # in turn: a peer whose loaders are saturated holds the job back; else, with no CPU saturated
    # here, the collectives themselves; else kernels too small, unless this rank's own loaders are
    # saturated (input_starved, below).
    host.input_starved_by_peer,
    communication.waiting_on_peers,
    kernels.launch_bound,
    # After launch_bound: a thread spinning on a full launch queue reads saturated, yet it is the
    # GPU it waits for.
    host.input_starved,
    # After input_starved: host work spread over threads, none of them saturated.
    kernels.launch_bound_overhead,
    idle.low_demand,
    system.system,
    system.unknown,  # always matches
)

# Over the threshold: busy, but is the work efficient? Tickets; none matching is a healthy GPU.
BUSY: tuple[Rule, ...] = (
    clocks.power_capped,
    clocks.thermal_throttled,
    clocks.clocks_capped,
    communication.nvlink_busy,
    kernels.memory_bound_busy,
    kernels.no_tensor_cores,
    kernels.contention_busy,
)


@dataclass(frozen=True, slots=True)
class DiagnosisState:
    """The current finding and a challenger that must lead long enough to replace it."""

    finding: Finding | None = None
    candidate: str | None = None
    candidate_since: float | None = None
    # The means of the window the finding was last checked against: it was made under the
    # threshold, or not, as they were (a held finding never crosses it).
    window: WindowFigures | None = None


# Contributing causes: conditions that hold whatever else does (who shares the GPU, its clocks, its
# memory bandwidth, the node), tried beside every primary cause; and, where the primary is
# contention, what each sharing job suffers from besides (the rules after it in its table).
ALONGSIDE: tuple[Rule, ...] = (
    kernels.sharing, kernels.contention_busy, kernels.memory_bound, kernels.memory_bound_busy,
    kernels.memory_bound_kernels,
    clocks.power_capped, clocks.thermal_throttled, clocks.clocks_capped, system.system,
)
MAX_CONTRIBUTING = 2


def primary(s: Signals, th: Thresholds) -> Finding | None:
    """The most likely cause for one window alone, or None when the GPU is doing its job."""
    return _first_match(s, th)[0]


def classify(s: Signals, th: Thresholds) -> Finding | None:
    """The most likely cause for one window, with up to two contributing ones, or None when the
    GPU is doing its job."""
    found, later, c = _first_match(s, th)
    if found is None or c is None:
        return found
    rules = later if found.cause == kernels.CONTENTION.name else ()
    return replace(found, contributing=_contributing(found, (*rules, *ALONGSIDE), s, c, th))


def _first_match(s: Signals, th: Thresholds) -> tuple[Finding | None, tuple[Rule, ...], Context | None]:
    """The first rule's finding, the rules after it in its table, and the window's context (None
    where the scheduler's word decided)."""
    if s.utilization is None:
        return None, (), None
    if (ruled := allocation.rule(s, th)) is not allocation.PASS:  # a free GPU (None), held_unused, unallocated_use
        return ruled, (), None
    c = context(s, s.utilization, th)
    table = UNDER_THRESHOLD if s.utilization < th.utilization_threshold else BUSY
    for place, rule in enumerate(table):
        found = rule(s, c, th)
        if found is not None:
            return found, table[place + 1:], c
    return None, (), c


def _contributing(primary: Finding, rules: tuple[Rule, ...], s: Signals, c: Context, th: Thresholds) -> tuple[Contribution, ...]:
    out: list[Contribution] = []
    seen = {primary.cause, system.UNKNOWN.name}
    base = base_evidence(s)
    for rule in rules:
        found = rule(s, c, th)
        if found is None or found.cause in seen:
            continue
        seen.add(found.cause)
        evidence = {k: v for k, v in found.evidence.items() if k not in base}
        out.append(Contribution(found.cause, found.summary, evidence))
        if len(out) == MAX_CONTRIBUTING:
            break
    return tuple(out)


def diagnose(window: TickWindow, th: Thresholds, state: DiagnosisState = DiagnosisState()) -> DiagnosisState:
    """Advance one GPU's diagnosis by one tick, the window's last.

    A new cause must lead for ``switch_after_seconds`` to replace the current one, but only on the
    same side of the utilization threshold: a page never outlives a window over the threshold, and
    a window that falls under it is named at once. A held finding's figures are the window's own.
    """
    if not window:
        return DiagnosisState()
    s = signals(window)
    if s.seconds < th.min_window_seconds:
        return state
    figures = window_figures(window)
    now = window.ticks.last.sample.timestamp
    found = classify(s, th)
    current = state.finding
    new_cause = found.cause if found is not None else None
    if current is None or new_cause == current.cause or th.switch_after_seconds <= 0:
        return DiagnosisState(finding=found, window=figures)
    was_under = _under(state.window.utilization, th) if state.window is not None else current.severity == "page"
    if was_under != _under(s.utilization, th):
        return DiagnosisState(finding=found, window=figures)
    held = replace(current, evidence={**current.evidence, **base_evidence(s)})
    # No finding is a challenger too: candidate None with a time is "healthy since".
    if state.candidate_since is None or state.candidate != new_cause:
        return DiagnosisState(finding=held, candidate=new_cause, candidate_since=now, window=figures)
    if now - state.candidate_since >= th.switch_after_seconds:
        return DiagnosisState(finding=found, window=figures)
    return replace(state, finding=held, window=figures)


def _under(utilization: float | None, th: Thresholds) -> bool:
    return utilization is not None and utilization < th.utilization_threshold
