"""What a window of ticks says about one GPU: the time-weighted means diagnosis reads. No I/O.

A ``Tick`` is one GPU's view of one tick (its sample, figures, host reading and the job's other
GPUs, ``Peers``); a ``TickWindow`` holds the last ``window_seconds`` of them, and ``signals()``
reads their means as ``Signals``: the SMs' active share against NVML's kernel-time figure, the
pipes, DRAM, PCIe and NVLink traffic, clock-event reasons, and the owning processes' CPU threads,
data-loader children and disk waits. The window keeps its means as running sums (window.py).
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field, fields
from typing import Hashable, Mapping, Sequence

from flopwatch.judge.peaks import lookup
from flopwatch.judge.window import SlidingWindow
from flopwatch.model import GpuFigures, GpuSample, GpuState, HostSample, Holding, WindowFigures


@dataclass(frozen=True, slots=True)
class Peers:
    """The other GPUs running a job of this GPU, as the previous tick left them."""

    gpus: int = 0
    below: int = 0  # of those, how many were under the utilization threshold
    starved: int = 0  # of those, how many had data-loader workers each near a full core


@dataclass(frozen=True, slots=True)
class ProcessSums:
    """The GPU's processes as the host saw them in one tick; ``None`` where none could say."""

    cpu_ratio: float | None
    busiest_thread_cpu_ratio: float | None
    children_cpu_ratio: float | None
    threads_in_disk_wait: float | None
    io_read_bytes_per_second: float | None
    thread_demand_ratio: float | None = None
    thread_wait_ratio: float | None = None  # of the most demanding thread
    children_wait_ratio: float | None = None
    io_write_bytes_per_second: float | None = None
    children_io_bytes_per_second: float | None = None
    blkio_delay_ratio: float | None = None
    main_thread_disk_wait_ratio: float | None = None


@dataclass(slots=True)  # not frozen: __post_init__ fills in what it sums of the processes
class Tick:
    """One GPU's view of one tick, as diagnosis sees it, and what signals() needs of its processes
    (summed once, as the tick enters the window, not again on each evaluation while it stays)."""

    sample: GpuSample
    figures: GpuFigures
    host: HostSample
    peers: Peers = Peers()
    holding: Holding | None = None  # who the schedulers gave the GPU to; None without a scheduler
    pids: tuple[int, ...] = field(init=False, repr=False, compare=False)
    # (pid, SM share) of the processes whose share is not 0 (None: unknown); most on a busy node
    # hold a context and idle.
    working: tuple[tuple[int, float | None], ...] = field(init=False, repr=False, compare=False)
    process_sums: ProcessSums = field(init=False, repr=False, compare=False)
    # What it contributes to a window whose last processes are the first element: a tick enters
    # two windows (the segment's and the recent stretch's), and the sums are made once.
    parts: tuple[tuple[int, ...], dict[Hashable, float]] | None = field(default=None, init=False, repr=False,
                                                                         compare=False)
    # The tick before: where both were made of the very same process readings (the readers hand
    # them back until their next counter read), its sums are this tick's.
    like: InitVar[Tick | None] = None

    def __post_init__(self, like: Tick | None) -> None:
        if like is not None and like.sample.processes is self.sample.processes \
                and like.host.processes is self.host.processes:
            self.pids, self.working, self.process_sums = like.pids, like.working, like.process_sums
            return
        self.pids = tuple(p.pid for p in self.sample.processes)
        self.working = tuple((p.pid, p.sm_ratio) for p in self.sample.processes if p.sm_ratio != 0.0)
        self.process_sums = process_sums(self.host, self.pids)

    def sums_for(self, pids: tuple[int, ...]) -> ProcessSums:
        """The sums over ``pids`` (the window's last tick's processes, which may differ)."""
        return self.process_sums if pids == self.pids else process_sums(self.host, pids)

    def working_for(self, pids: tuple[int, ...]) -> tuple[tuple[int, float | None], ...]:
        """``working`` over ``pids``; a pid this tick did not see has an unknown share."""
        if pids == self.pids:
            return self.working
        by_pid = {p.pid: p.sm_ratio for p in self.sample.processes}
        return tuple((pid, by_pid.get(pid)) for pid in pids if by_pid.get(pid) != 0.0)


def loader_saturated_pids(host: HostSample, cpu_saturated_ratio: float) -> frozenset[int]:
    """The processes whose loader workers each use a full core or near it: a rank fed that way is
    the one the others of its job wait for in their all-reduce."""
    return frozenset(pid for pid, p in host.processes.items()
                     if p.children > 0 and (p.children_cpu_ratio or 0.0) / p.children >= cpu_saturated_ratio)


def job_peers(gpus: Sequence[GpuState], saturated_pids: frozenset[int]) -> dict[int, Peers]:
    """For each GPU (by index), the other GPUs sharing one of its jobs, how many were below, and
    how many were fed by saturated loaders (``saturated_pids``, from loader_saturated_pids)."""
    if len(gpus) < 2:
        return {}
    by_index = {g.sample.info.index: g for g in gpus}
    jobs = {index: {p.job for p in g.processes} for index, g in by_index.items()}
    others = {index: [other for other, theirs in jobs.items() if other != index and mine & theirs]
              for index, mine in jobs.items()}
    # Only a GPU that is some other GPU's peer needs its processes looked at, and only if any
    # loader is saturated (on most ticks none is).
    starved = {index: bool(saturated_pids) and any(p.pid in saturated_pids for p in by_index[index].processes)
               for index in {other for group in others.values() for other in group}}
    return {index: Peers(gpus=len(group), below=sum(by_index[other].below_threshold for other in group),
                         starved=sum(starved[other] for other in group))
            for index, group in others.items()}


def process_sums(host: HostSample, pids: Sequence[int]) -> ProcessSums:
    """The processes' CPU, loader workers and I/O summed as one tick saw them (of the threads, the
    busiest and the most demanding); None where no process could say."""
    cpu = busiest = children = disk_wait = io_read = io_write = None
    demand = wait = children_wait = children_io = blkio = main_disk_wait = None
    for pid in pids:
        p = host.processes.get(pid)
        if p is None:
            continue
        if p.cpu_ratio is not None:
            cpu = (cpu or 0.0) + p.cpu_ratio
        if p.busiest_thread_cpu_ratio is not None:
            busiest = p.busiest_thread_cpu_ratio if busiest is None else max(busiest, p.busiest_thread_cpu_ratio)
        if p.thread_demand_ratio is not None and (demand is None or p.thread_demand_ratio > demand):
            demand, wait = p.thread_demand_ratio, p.thread_wait_ratio
        if p.children_cpu_ratio is not None:
            children = (children or 0.0) + p.children_cpu_ratio
        if p.children_wait_ratio is not None:
            children_wait = (children_wait or 0.0) + p.children_wait_ratio
        disk_wait = (disk_wait or 0.0) + p.threads_in_disk_wait
        if p.blkio_delay_ratio is not None:
            blkio = (blkio or 0.0) + p.blkio_delay_ratio
        if p.main_thread_disk_wait_ratio is not None:
            main_disk_wait = (main_disk_wait or 0.0) + p.main_thread_disk_wait_ratio
        if p.io_read_bytes_per_second is not None:
            io_read = (io_read or 0.0) + p.io_read_bytes_per_second
        if p.io_write_bytes_per_second is not None:
            io_write = (io_write or 0.0) + p.io_write_bytes_per_second
        if p.children_io_bytes_per_second is not None:
            children_io = (children_io or 0.0) + p.children_io_bytes_per_second
    return ProcessSums(cpu_ratio=cpu, busiest_thread_cpu_ratio=busiest, children_cpu_ratio=children,
                       threads_in_disk_wait=disk_wait, io_read_bytes_per_second=io_read,
                       thread_demand_ratio=demand, thread_wait_ratio=wait, children_wait_ratio=children_wait,
                       io_write_bytes_per_second=io_write, children_io_bytes_per_second=children_io,
                       blkio_delay_ratio=blkio, main_thread_disk_wait_ratio=main_disk_wait)


@dataclass(frozen=True, slots=True)
class Signals:
    """Time-weighted means over the window; ``None`` where the source could not say."""

    seconds: float
    utilization: float | None
    nvml_utilization: float | None
    sm_occupancy: float | None
    tensor_active: float | None
    fp32_active: float | None
    fp64_active: float | None
    dram_active: float | None
    flops_utilization: float | None
    pcie_bytes_per_second: float | None
    nvlink_bytes_per_second: float | None
    nvlink_busy_ratio: float | None  # tx + rx over the card's NVLink bandwidth (datasheet)
    sm_clock_ratio: float | None
    throttle: Mapping[str, float]
    processes: int
    process_shares: Mapping[int, float]
    memory_held_bytes: int
    cpu_ratio: float  # the GPU processes' own CPU, cores
    busiest_thread_cpu_ratio: float
    children: int
    children_cpu_ratio: float
    threads_in_disk_wait: float
    io_read_bytes_per_second: float
    iowait_ratio: float | None
    driver_major: int | None
    cuda_version: tuple[int, int] | None
    pcie_width: int | None
    pcie_width_max: int | None
    power_limit_ratio: float | None
    source_quality: str
    process_jobs: Mapping[int, str] = field(default_factory=dict)
    job_gpus: int = 0  # other GPUs running this GPU's job (last tick)
    peers_below_ratio: float | None = None  # share of those under the threshold; None: no other GPU
    peer_starved_ratio: float | None = None  # share of the window some other GPU's loaders were saturated
    # CPU scheduling (schedstat, PSI, load); None where the kernel does not say.
    thread_demand_ratio: float | None = None  # the most demanding thread's run + run-queue wait, cores
    thread_wait_ratio: float | None = None  # its run-queue wait, cores
    children_wait_ratio: float | None = None  # the loader workers' run-queue wait, cores
    cpu_pressure_ratio: float | None = None
    load_per_core: float | None = None
    host_cpu_busy_ratio: float | None = None  # all the host's cores, 0..1
    cpu_count: int | None = None
    # Storage I/O of the processes and their loader workers, and the host's I/O pressure.
    io_write_bytes_per_second: float = 0.0
    children_io_bytes_per_second: float = 0.0
    blkio_delay_ratio: float | None = None  # threads waiting on block I/O, on average (delay accounting)
    main_thread_disk_wait_ratio: float | None = None  # main threads in disk wait, on average (a state read each tick)
    io_pressure_ratio: float | None = None
    # Mean CPU (cores) of each process that is not a child of another of the GPU's processes: a job
    # launching work of its own, where NVML's per-process SM shares are not known.
    process_cpu: Mapping[int, float] = field(default_factory=dict)
    unknown_shares: frozenset[int] = frozenset()  # processes whose SM share no tick of the window knew
    holding: Holding | None = None  # the schedulers' word on the GPU at the last tick (judge/allocation.py)
    process_users: Mapping[int, str] = field(default_factory=dict)
    timestamp: float = 0.0  # wall clock, of the last tick


_PROCESS_SIGNALS = tuple(f.name for f in fields(ProcessSums))
# Keys of the per-reason and per-process contributions, next to the plain names of TickWindow._parts.
_THROTTLE, _SM, _SM_UNKNOWN, _CPU = "throttle", "sm", "sm_unknown", "cpu"


class TickWindow:
    """One GPU's last ``window_seconds`` of ticks, with the running sums signals() reads.

    A tick with a read error never enters: the agent clears the window instead. Each tick is
    weighted by its interval. The process signals are over the last tick's processes, so when
    those change every tick's contributions are counted again (O(window), and rare).
    """

    def __init__(self) -> None:
        self.ticks: SlidingWindow[Tick] = SlidingWindow()  # read it; append() and clear() change it
        self._pids: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.ticks)

    def append(self, tick: Tick, window_seconds: float) -> None:
        now = tick.sample.timestamp
        self.ticks.expire(lambda t: now - t.sample.timestamp > window_seconds)
        if tick.pids is not self._pids and tick.pids != self._pids:
            self._pids = tick.pids
            self.ticks.recount(self._parts)
        self.ticks.append(tick, max(tick.sample.interval_seconds, 1e-6), self._parts(tick))

    def clear(self) -> None:
        self.ticks.clear()

    def _parts(self, tick: Tick) -> dict[Hashable, float]:
        made = tick.parts
        if made is not None and (made[0] is self._pids or made[0] == self._pids):
            return made[1]
        parts = self._make_parts(tick)
        tick.parts = (self._pids, parts)
        return parts

    def _make_parts(self, tick: Tick) -> dict[Hashable, float]:
        # What signals() averages over the window, by the key each tick contributes it under.
        f, sample, peers = tick.figures, tick.sample, tick.peers
        values = (
            ("utilization", f.utilization),
            ("nvml_utilization", sample.nvml_utilization),
            ("sm_occupancy", f.sm_occupancy),
            ("tensor_active", f.tensor_active),
            ("fp32_active", f.fp32_active),
            ("fp64_active", f.fp64_active),
            ("dram_active", f.dram_active),
            ("flops_utilization", f.flops_utilization),
            ("power_watts", f.power_watts),
            ("memory_turnover_per_second", f.memory_turnover_per_second),
            ("pcie_tx", sample.pcie_tx_bytes_per_second),
            ("pcie_rx", sample.pcie_rx_bytes_per_second),
            ("nvlink_tx", sample.nvlink_tx_bytes_per_second),
            ("nvlink_rx", sample.nvlink_rx_bytes_per_second),
            ("sm_clock_ratio", f.sm_clock_ratio),
            ("iowait_ratio", tick.host.iowait_ratio),
            ("cpu_pressure_ratio", tick.host.cpu_pressure_ratio),
            ("host_cpu_busy_ratio", tick.host.cpu_busy_ratio),
            ("io_pressure_ratio", tick.host.io_pressure_ratio),
            ("load_per_core", tick.host.load_per_core),
            ("peers_below_ratio", peers.below / peers.gpus if peers.gpus else None),
            ("peer_starved_ratio", float(peers.starved > 0) if peers.gpus else None),
        )
        parts: dict[Hashable, float] = {key: value for key, value in values if value is not None}
        for reason, fraction in f.throttle_fractions.items():
            parts[(_THROTTLE, reason)] = fraction
        sums = tick.sums_for(self._pids)
        for name in _PROCESS_SIGNALS:
            value = getattr(sums, name)
            if value is not None:
                parts[name] = value
        # Only shares above 0 are summed; a process's known weight is the window's less that of
        # the ticks that did not know its share.
        for pid, ratio in tick.working_for(self._pids):
            if ratio is None:
                parts[(_SM_UNKNOWN, pid)] = 0.0
            else:
                parts[(_SM, pid)] = ratio
        if len(self._pids) > 1:
            processes = tick.host.processes
            for pid in self._pids:
                p = processes.get(pid)
                if p is not None and p.cpu_ratio is not None and p.ppid not in self._pids:
                    parts[(_CPU, pid)] = p.cpu_ratio
        return parts


def signals(window: TickWindow) -> Signals:
    ticks = window.ticks
    mean = ticks.mean
    last = ticks.last
    pids = last.pids
    throttle: dict[str, float] = {}
    # A process's mean SM share is over the ticks that knew it; 0 if it never had one above 0.
    shares = dict.fromkeys(pids, 0.0)
    process_cpu: dict[int, float] = {}
    unknown_shares = set()
    for key in ticks.keys():
        if type(key) is tuple:
            family, name = key
            if family == _THROTTLE:
                throttle[name] = mean(key) or 0.0
            elif family == _SM:
                shares[name] = ticks.total(key) / (ticks.weight - ticks.weight_of((_SM_UNKNOWN, name)))
            elif family == _CPU:
                process_cpu[name] = mean(key) or 0.0
            elif family == _SM_UNKNOWN and ticks.weight_of(key) >= ticks.weight:
                unknown_shares.add(name)
    info = last.sample.info
    driver_major = int(info.driver_version.split(".")[0]) if info.driver_version[:1].isdigit() else None
    cuda = None
    if info.cuda_driver_version:
        major, _, minor = info.cuda_driver_version.partition(".")
        cuda = (int(major), int(minor or 0))
    pcie_tx, pcie_rx = mean("pcie_tx"), mean("pcie_rx")
    nvl_tx, nvl_rx = mean("nvlink_tx"), mean("nvlink_rx")
    nvlink = None if nvl_tx is None and nvl_rx is None else (nvl_tx or 0) + (nvl_rx or 0)
    peaks = lookup(info.name)
    nvlink_peak = peaks.nvlink_bytes_per_second if peaks is not None else None
    nvlink_busy = nvlink / nvlink_peak if nvlink is not None and nvlink_peak else None
    limit_ratio = None
    if info.power_limit_watts and info.default_power_limit_watts:
        limit_ratio = info.power_limit_watts / info.default_power_limit_watts
    return Signals(
        seconds=ticks.weight,
        utilization=mean("utilization"),
        nvml_utilization=mean("nvml_utilization"),
        sm_occupancy=mean("sm_occupancy"),
        tensor_active=mean("tensor_active"),
        fp32_active=mean("fp32_active"),
        fp64_active=mean("fp64_active"),
        dram_active=mean("dram_active"),
        flops_utilization=mean("flops_utilization"),
        pcie_bytes_per_second=None if pcie_tx is None and pcie_rx is None else (pcie_tx or 0) + (pcie_rx or 0),
        nvlink_bytes_per_second=nvlink,
        nvlink_busy_ratio=nvlink_busy,
        sm_clock_ratio=mean("sm_clock_ratio"),
        throttle=throttle,
        processes=len(pids),
        process_shares=shares,
        memory_held_bytes=sum(p.used_memory_bytes or 0 for p in last.sample.processes),
        cpu_ratio=mean("cpu_ratio") or 0.0,
        busiest_thread_cpu_ratio=mean("busiest_thread_cpu_ratio") or 0.0,
        children=max((last.host.processes[pid].children for pid in pids if pid in last.host.processes), default=0),
        children_cpu_ratio=mean("children_cpu_ratio") or 0.0,
        threads_in_disk_wait=mean("threads_in_disk_wait") or 0.0,
        io_read_bytes_per_second=mean("io_read_bytes_per_second") or 0.0,
        iowait_ratio=mean("iowait_ratio"),
        driver_major=driver_major,
        cuda_version=cuda,
        pcie_width=last.sample.pcie_link_width,
        pcie_width_max=info.pcie_link_width_max,
        power_limit_ratio=limit_ratio,
        source_quality=last.sample.source_quality,
        process_jobs={pid: last.host.processes[pid].job for pid in pids
                      if pid in last.host.processes and last.host.processes[pid].job},
        job_gpus=last.peers.gpus,
        peers_below_ratio=mean("peers_below_ratio"),
        peer_starved_ratio=mean("peer_starved_ratio"),
        thread_demand_ratio=mean("thread_demand_ratio"),
        thread_wait_ratio=mean("thread_wait_ratio"),
        children_wait_ratio=mean("children_wait_ratio"),
        cpu_pressure_ratio=mean("cpu_pressure_ratio"),
        load_per_core=mean("load_per_core"),
        host_cpu_busy_ratio=mean("host_cpu_busy_ratio"),
        cpu_count=last.host.cpu_count,
        io_write_bytes_per_second=mean("io_write_bytes_per_second") or 0.0,
        children_io_bytes_per_second=mean("children_io_bytes_per_second") or 0.0,
        blkio_delay_ratio=mean("blkio_delay_ratio"),
        main_thread_disk_wait_ratio=mean("main_thread_disk_wait_ratio"),
        io_pressure_ratio=mean("io_pressure_ratio"),
        process_cpu=process_cpu,
        unknown_shares=frozenset(unknown_shares),
        holding=last.holding,
        process_users={pid: last.host.processes[pid].user for pid in pids
                       if pid in last.host.processes and last.host.processes[pid].user},
        timestamp=last.sample.timestamp,
    )


def window_figures(window: TickWindow) -> WindowFigures:
    mean = window.ticks.mean
    return WindowFigures(
        seconds=window.ticks.weight, utilization=mean("utilization"), nvml_utilization=mean("nvml_utilization"),
        sm_occupancy=mean("sm_occupancy"), tensor_active=mean("tensor_active"), dram_active=mean("dram_active"),
        flops_utilization=mean("flops_utilization"), power_watts=mean("power_watts"),
        memory_turnover_per_second=mean("memory_turnover_per_second"))
