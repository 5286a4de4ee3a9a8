"""What every rule shares: the window's ``Context``, the ``Cause`` record, and building a Finding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from flopwatch.model import Finding
from flopwatch.thresholds import Thresholds
from flopwatch.judge.signals import Signals


@dataclass(frozen=True, slots=True)
class Cause:
    """A cause of the taxonomy: its stable name, a line for people, and the fix."""

    name: str
    summary: str
    advice: str


@dataclass(frozen=True, slots=True)
class Context:
    """Judgements several rules share, made once per window (whose utilization is known)."""

    utilization: float  # the SMs' active share (GPM), or NVML's kernel time where GPM is missing
    kernel_time: float  # NVML's utilization.gpu: the share of time some kernel ran, on however few SMs
    # The processes with a real share of the GPU (shares are kernel time, so the bar is relative).
    busy_shares: tuple[int, ...]
    # Bytes per second the processes and their loader workers move to and from storage.
    storage: float
    # Threads waiting on block I/O, by the best count the kernel gave.
    disk_waiting: float
    kernels_run: bool  # GPM says the SMs are the truth, and NVML sees kernels run
    # With kernels running, processes whose share no tick knew, each busy on the CPU: other jobs.
    launching: tuple[int, ...]
    # Kernels run far longer than the SMs have work (tiny kernels, or NCCL's few spinning blocks),
    # or a kernel runs nearly all the time and the SMs still wait: the kernels cannot fill them.
    kernels_outrun_sms: bool
    peers_low: bool  # most of the job's other GPUs are under the threshold too
    waiting_on_peers: bool  # and this one's kernels outrun its SMs: it waits in collectives
    # CPU-bound: what a thread runs, or runs and waits on the run queue for a core other work holds.
    demand: float
    loader_demand: float  # the same, per loader worker
    thread_saturated: bool
    loaders_saturated: bool
    waits_for_cpu: bool  # the saturated thread (or each worker) waits for a CPU, not just runs
    io_confidence: float | None  # how surely the processes wait on storage; None: they do not
    nvlink_confidence: float | None  # how surely NVLink is busy; None: it is not
    pcie: float  # PCIe rx + tx, bytes per second (0 where unknown)
    pcie_busy: bool
    clocks_low: bool  # the SM clock is well below its maximum
    fp_busy: float  # FP32 + FP64 pipe activity


Rule = Callable[[Signals, Context, Thresholds], Finding | None]


def context(s: Signals, util: float, th: Thresholds) -> Context:
    """What the window says before any rule is tried; ``util`` is its utilization (known)."""
    kernel_time = s.nvml_utilization or 0.0
    busy_shares = _busy_shares(s, th)
    storage = s.io_read_bytes_per_second + s.io_write_bytes_per_second + s.children_io_bytes_per_second
    disk_waiting = max(s.threads_in_disk_wait, s.blkio_delay_ratio or 0.0, s.main_thread_disk_wait_ratio or 0.0)
    kernels_run = s.source_quality == "gpm" and kernel_time >= th.launch_min_kernel_time
    kernels_outrun_sms = kernels_run and (kernel_time >= th.launch_kernel_time_over_sm_active * max(util, 1e-3)
                                          or kernel_time >= th.launch_busy_kernel_time)
    peers_low = s.peers_below_ratio is not None and s.peers_below_ratio >= th.peers_below_ratio
    demand = max(s.busiest_thread_cpu_ratio, s.thread_demand_ratio or 0.0)
    per_child = s.children_cpu_ratio / s.children if s.children else 0.0
    per_child_wait = (s.children_wait_ratio or 0.0) / s.children if s.children else 0.0
    loaders_saturated = per_child + per_child_wait >= th.cpu_saturated_ratio
    thread_saturated = demand >= th.cpu_saturated_ratio
    pcie = s.pcie_bytes_per_second or 0.0
    return Context(
        utilization=util, kernel_time=kernel_time, busy_shares=busy_shares, storage=storage,
        disk_waiting=disk_waiting, kernels_run=kernels_run,
        launching=_launching_without_share(s, th, busy_shares) if kernels_run else (),
        kernels_outrun_sms=kernels_outrun_sms, peers_low=peers_low, waiting_on_peers=peers_low and kernels_outrun_sms,
        demand=demand, loader_demand=per_child + per_child_wait,
        thread_saturated=thread_saturated, loaders_saturated=loaders_saturated,
        waits_for_cpu=(thread_saturated and (s.thread_wait_ratio or 0.0) >= th.cpu_runqueue_wait_ratio) or
                      (loaders_saturated and per_child_wait >= th.cpu_runqueue_wait_ratio),
        io_confidence=_io_confidence(s, th, storage, disk_waiting, cpu_bound=thread_saturated or loaders_saturated),
        nvlink_confidence=_nvlink_confidence(s, th),
        pcie=pcie, pcie_busy=pcie >= th.pcie_busy_bytes_per_second,
        clocks_low=s.sm_clock_ratio is not None and s.sm_clock_ratio < th.clock_ratio_low,
        fp_busy=(s.fp32_active or 0.0) + (s.fp64_active or 0.0),
    )


def _busy_shares(s: Signals, th: Thresholds) -> tuple[int, ...]:
    """The processes with a real share of the GPU. NVML's per-process shares are kernel time, as
    its utilization.gpu is, so the bar is a share of that (or of SM activity where higher)."""
    bar = th.contention_min_sm_ratio * max(s.utilization or 0.0, s.nvml_utilization or 0.0, 1e-9)
    return tuple(pid for pid, v in s.process_shares.items() if v >= bar)


def _launching_without_share(s: Signals, th: Thresholds, busy: tuple[int, ...]) -> tuple[int, ...]:
    """Processes whose SM share no tick knew, each busy on the CPU (launching work of its own, not a
    loader worker of another): with kernels running, they take turns on the GPU too."""
    return tuple(pid for pid in s.unknown_shares
                 if pid not in busy and s.process_cpu.get(pid, 0.0) >= th.cpu_busy_ratio)


def _io_confidence(s: Signals, th: Thresholds, storage: float, waiting: float, cpu_bound: bool) -> float | None:
    """How surely the processes wait on storage, or None if they do not.

    Threads seen in disk wait, or delay accounting's count of them; host-wide iowait or I/O pressure
    only while these processes read (it could be another job's); or, counters only, bytes moved from
    storage at a rate that leaves a thread no time for anything but waiting, with no thread CPU-bound."""
    if waiting >= th.disk_wait_threads:
        return strength(waiting, th.disk_wait_threads)
    if cpu_bound:
        return None
    reads = s.io_read_bytes_per_second + s.children_io_bytes_per_second >= th.io_read_bytes_per_second
    if reads and ((s.iowait_ratio or 0.0) >= th.iowait_ratio or (s.io_pressure_ratio or 0.0) >= th.io_pressure_ratio):
        return 0.7
    if storage >= th.io_busy_bytes_per_second:
        return strength(storage, th.io_busy_bytes_per_second) - 0.1
    return None


def _nvlink_confidence(s: Signals, th: Thresholds) -> float | None:
    """How surely NVLink is busy, or None if it is not.

    By its share of the card's bandwidth where the card is known: ranks starved by their loaders
    still all-reduce every step, tens of GB/s that take a few percent of the time."""
    if s.nvlink_busy_ratio is not None:
        value, bar = s.nvlink_busy_ratio, th.nvlink_busy_ratio
    elif s.nvlink_bytes_per_second is not None:
        value, bar = s.nvlink_bytes_per_second, th.nvlink_busy_bytes_per_second
    else:
        return None
    return strength(value, bar) if value >= bar else None


def strength(value: float, threshold: float) -> float:
    """0.6 at the threshold, rising towards 0.95 as the signal doubles it."""
    if threshold <= 0:
        return 0.9
    return 0.6 + 0.35 * min(max(value / threshold - 1.0, 0.0), 1.0)


def base_evidence(s: Signals) -> dict[str, float | str | None]:
    """What every finding shows of its window."""
    return {"utilization": _r(s.utilization), "window_seconds": round(s.seconds, 1), "source_quality": s.source_quality}


def finding(cause: Cause, severity: str, confidence: float, s: Signals,
            **evidence: float | int | str | None) -> Finding:
    """A finding of ``cause``: its evidence rounded, after what every finding shows."""
    return Finding(
        cause=cause.name, severity=severity, confidence=round(min(max(confidence, 0.05), 0.99), 2),
        evidence={**base_evidence(s), **{k: (_r(v) if isinstance(v, float) else v) for k, v in evidence.items()}},
        advice=cause.advice, summary=cause.summary,
    )


def _r(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None
