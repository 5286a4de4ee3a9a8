"""Why is this GPU under-used? Pure rules from a window of ticks to a Finding. No I/O.

Each rule reads what its bottleneck does to the counters (docs/causes.md has the physics):
the SMs' active share against NVML's kernel-time figure, the pipes (tensor vs FP32/FP64), DRAM,
PCIe and NVLink traffic, clock-event reasons, and the owning processes' CPU threads, data-loader
children and disk waits, and whether the other GPUs of the same job are under-used at the same
time (``Peers``: a data-parallel job waits on its collectives on all GPUs at once). Thresholds
come from one table (thresholds.py). A cause must lead for ``switch_after_seconds`` before it
replaces another, so findings do not flap on noisy ticks. The window (``TickWindow``) keeps its
means as running sums, so a tick costs the same however many ticks the window holds.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field, fields, replace
from typing import Hashable, Mapping, Sequence

from flopwatch.judge import allocation
from flopwatch.judge.allocation import Holding
from flopwatch.model import Finding, GpuFigures, GpuSample, GpuState, HostSample, WindowFigures
from flopwatch.judge.peaks import lookup
from flopwatch.thresholds import Thresholds
from flopwatch.judge.window import SlidingWindow

CAUSES = (
    "idle", "held_idle", "input_starved", "io_bound", "host_transfer_bound", "launch_bound",
    "memory_bound", "no_tensor_cores", "power_capped", "thermal_throttled", "clocks_capped",
    "contention", "communication_bound", "system", "low_demand", "unknown",
) + allocation.CAUSES

ADVICE = {
    "idle": "No process uses this GPU. Release it to the scheduler or shrink the allocation.",
    "held_idle": "A process holds GPU memory and runs nothing (often a notebook or a finished job "
                 "waiting). Stop it or free the memory (torch.cuda.empty_cache, end the kernel).",
    "input_starved": "The GPU waits for the input pipeline, which is CPU-bound. Raise DataLoader "
                     "num_workers, set pin_memory=True and persistent_workers=True, prefetch; use a fast "
                     "(Rust) tokenizer in batch mode or pre-tokenize; store data in a binary format.",
    "io_bound": "The input pipeline waits on storage. Stage data on local NVMe, use larger sequential "
                "reads (WebDataset/TFRecord shards), more loader workers, or cache the dataset in RAM.",
    "host_transfer_bound": "Host-to-device copies dominate. Use pinned memory (pin_memory=True) with "
                           "non_blocking copies, overlap copies with compute, and keep data on the GPU.",
    "launch_bound": "Each kernel has too few blocks to fill the SMs, or runs too briefly to outrun the CPU "
                    "launching the next (Python and framework overhead). Use bigger batches, fuse ops "
                    "(torch.compile), or capture the loop in CUDA graphs.",
    "memory_bound": "DRAM bandwidth is the limit, not math. Batch requests (as Triton's dynamic batcher "
                    "does), fuse elementwise ops, and quantize weights (bitsandbytes, GPTQ, TensorRT).",
    "no_tensor_cores": "Math runs on the FP32/FP64 pipes while the tensor cores idle. Enable AMP "
                       "(bf16/fp16 autocast) or TF32 (torch.backends.cuda.matmul.allow_tf32 = True).",
    "power_capped": "The power limit is below the card's default and the clocks drop to fit it. "
                    "Restore the default limit (nvidia-smi -pl) or accept the slower clocks knowingly.",
    "thermal_throttled": "The GPU slows itself to cool down. Check airflow, fans, inlet temperature and "
                         "the data-centre cooling for this node.",
    "clocks_capped": "Application or locked clocks hold the SM clock below its maximum. Reset them "
                     "(nvidia-smi -rac / -rgc) unless the cap is intended.",
    "contention": "Several processes time-slice this GPU, each getting a share and paying context "
                  "switches. Give each job its own GPU, or use MPS/MIG for deliberate sharing.",
    "communication_bound": "GPUs wait on collectives (all-reduce) over NVLink/PCIe. Use larger per-GPU "
                           "batches, gradient accumulation, overlap communication with compute (DDP "
                           "buckets, FSDP prefetch), or check NCCL's topology and P2P settings.",
    "system": "The node itself holds the GPU back. Update the driver to >= 530 with CUDA >= 12.1 and "
              "check the PCIe link (reseat, BIOS), ECC and Xid errors; run `flopwatch doctor`.",
    "low_demand": "The GPU has little work: short efficient bursts (requests to a lightly used server), "
                  "then waiting. Consolidate replicas onto fewer GPUs, autoscale on queue depth (down to "
                  "zero), share the GPU (MIG, MPS, time-slicing), or batch requests.",
    "unknown": "Utilization is low and no known signature matches. Profile one step (PyTorch profiler, "
               "Nsight Systems) to see where the time goes.",
    **allocation.ADVICE,
}

SUMMARY = {
    "idle": "GPU idle: no process",
    "held_idle": "GPU memory held, no work",
    "input_starved": "GPU starved by a CPU-bound input pipeline",
    "io_bound": "GPU starved by storage I/O",
    "host_transfer_bound": "GPU waiting on host-to-device copies",
    "launch_bound": "Kernels too small to keep the GPU busy (launch-bound)",
    "memory_bound": "GPU bound by DRAM bandwidth",
    "no_tensor_cores": "GPU busy on FP32/FP64 pipes, tensor cores idle",
    "power_capped": "GPU clocks held down by a lowered power limit",
    "thermal_throttled": "GPU clocks held down by temperature",
    "clocks_capped": "GPU clocks locked below maximum",
    "contention": "Several processes time-slice the GPU",
    "communication_bound": "GPU waiting on inter-GPU communication",
    "system": "Node problem (driver, PCIe link) holds the GPU back",
    "low_demand": "GPU has little work to do (low demand)",
    "unknown": "GPU under-used, cause not identified",
    **allocation.SUMMARY,
}

# input_starved where the feeding thread wants a core and waits for one: the fix is the host's cores.
CPU_CONTENDED_ADVICE = ("The thread feeding the GPU is runnable but waits for a CPU: other processes hold the "
                        "host's cores. Free the cores (move or stop the other work), reserve CPUs for the job "
                        "(cgroup cpu.weight/cpuset, Slurm --cpus-per-task, a Kubernetes CPU request), or run it "
                        "on a less loaded node. More loader workers would only queue for the same cores.")
CPU_CONTENDED_SUMMARY = "GPU starved: its input thread waits for CPUs taken by other processes"


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


@dataclass(slots=True)  # built every tick: not frozen, as the records of model.py
class Tick:
    """One GPU's view of one tick, as diagnosis sees it.

    A tick stays in the window for ``window_seconds``, so what signals() needs of its processes
    is summed once here rather than on every tick it stays (hundreds of processes × 30 ticks).
    """

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
    # One pass, no helpers: this runs for every tick that enters a window (on a new reading only).
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
class DiagnosisState:
    """The current finding and a challenger that must lead long enough to replace it."""

    finding: Finding | None = None
    candidate: str | None = None
    candidate_since: float | None = None
    # The means of the window the finding was last checked against: it was made under the
    # threshold, or not, as they were (a held finding never crosses it).
    window: WindowFigures | None = None


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
        # What signals() averages over the window, by the key each tick contributes it under;
        # written out, not a table of getters: this runs for every tick that enters.
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


def _r(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None


def _base_evidence(s: Signals) -> dict[str, float | str | None]:
    return {"utilization": _r(s.utilization), "window_seconds": round(s.seconds, 1), "source_quality": s.source_quality}


def _finding(cause: str, severity: str, confidence: float, s: Signals, **evidence: float | int | str | None) -> Finding:
    return Finding(
        cause=cause, severity=severity, confidence=round(min(max(confidence, 0.05), 0.99), 2),
        evidence={**_base_evidence(s), **{k: (_r(v) if isinstance(v, float) else v) for k, v in evidence.items()}},
        advice=ADVICE[cause], summary=SUMMARY[cause],
    )


def _strength(value: float, threshold: float) -> float:
    """0.6 at the threshold, rising towards 0.95 as the signal doubles it."""
    if threshold <= 0:
        return 0.9
    return 0.6 + 0.35 * min(max(value / threshold - 1.0, 0.0), 1.0)


def classify(s: Signals, th: Thresholds) -> Finding | None:
    """The most likely cause for one window, or None when the GPU is doing its job."""
    if s.utilization is None:
        return None
    if (ruled := allocation.rule(s, th)) is not allocation.PASS:  # who holds the GPU: judge/allocation.py
        return ruled
    util = s.utilization
    kernel_time = s.nvml_utilization or 0.0
    busy_shares = _busy_shares(s, th)
    thermal = s.throttle.get("sw_thermal_slowdown", 0.0) + s.throttle.get("hw_thermal_slowdown", 0.0)
    clocks_low = s.sm_clock_ratio is not None and s.sm_clock_ratio < th.clock_ratio_low

    if util < th.utilization_threshold:
        if s.processes == 0:
            return _finding("idle", "ticket", 0.95, s, processes=0)
        storage = s.io_read_bytes_per_second + s.io_write_bytes_per_second + s.children_io_bytes_per_second
        disk_waiting = max(s.threads_in_disk_wait, s.blkio_delay_ratio or 0.0, s.main_thread_disk_wait_ratio or 0.0)
        # A process moving data from storage, or waiting on it, is not idle, however little it asks
        # of the GPU and CPU.
        if util < th.idle_sm_active and s.memory_held_bytes >= th.held_memory_bytes and \
                s.cpu_ratio + s.children_cpu_ratio < th.cpu_busy_ratio and kernel_time < th.launch_min_kernel_time \
                and storage < th.io_read_bytes_per_second and disk_waiting < th.disk_wait_threads:
            return _finding("held_idle", "page", 0.9, s, memory_held_bytes=s.memory_held_bytes,
                            process_cpu_cores=s.cpu_ratio, processes=s.processes)
        kernels_run = s.source_quality == "gpm" and kernel_time >= th.launch_min_kernel_time
        launching = _launching_without_share(s, th, busy_shares) if kernels_run else []
        if len(busy_shares) + len(launching) >= th.contention_processes and s.processes >= th.contention_processes:
            return _contention(s, "page", 0.8 if len(busy_shares) >= th.contention_processes else 0.6, launching)
        # Kernels run far longer than the SMs have work: tiny kernels, or NCCL's few spinning blocks.
        # Or a kernel runs nearly all the time and the SMs still wait: the kernels are too small to
        # fill them, and the GPU is not waiting for input (a thread spinning on the full launch
        # queue looks saturated, yet it is the GPU it waits for).
        kernels_outrun_sms = kernels_run and (kernel_time >= th.launch_kernel_time_over_sm_active * max(util, 1e-3)
                                              or kernel_time >= th.launch_busy_kernel_time)
        peers_low = s.peers_below_ratio is not None and s.peers_below_ratio >= th.peers_below_ratio
        waiting_on_peers = peers_low and kernels_outrun_sms
        # CPU-bound: what a thread (or each loader worker) runs, or runs and waits on the run queue
        # for a core that other work holds: a thread that wants a core and gets half is CPU-bound too.
        demand = max(s.busiest_thread_cpu_ratio, s.thread_demand_ratio or 0.0)
        per_child = s.children_cpu_ratio / s.children if s.children else 0.0
        per_child_wait = (s.children_wait_ratio or 0.0) / s.children if s.children else 0.0
        loaders_saturated = per_child + per_child_wait >= th.cpu_saturated_ratio
        thread_saturated = demand >= th.cpu_saturated_ratio
        waits_for_cpu = (thread_saturated and (s.thread_wait_ratio or 0.0) >= th.cpu_runqueue_wait_ratio) or \
            (loaders_saturated and per_child_wait >= th.cpu_runqueue_wait_ratio)
        io_bound = _io_bound(s, th, storage, disk_waiting, cpu_bound=thread_saturated or loaders_saturated)
        nvlink_busy = _nvlink_busy(s, th)
        pcie = s.pcie_bytes_per_second or 0.0
        pcie_busy = pcie >= th.pcie_busy_bytes_per_second
        if nvlink_busy is not None:
            return _communication(s, "nvlink", nvlink_busy + (0.1 if peers_low else 0.0))
        if pcie_busy and waiting_on_peers:
            # Collectives over PCIe (no NVLink, or P2P off): the job's GPUs wait together, NCCL spins.
            return _communication(s, "pcie", _strength(pcie, th.pcie_busy_bytes_per_second))
        if io_bound is not None and (not pcie_busy or storage >= th.io_share_of_pcie * pcie):
            # The bytes on the bus are the disk's, passing through: it is the disk they wait for.
            return _io_finding(s, io_bound, storage)
        if pcie_busy:
            return _finding("host_transfer_bound", "page", _strength(pcie, th.pcie_busy_bytes_per_second),
                            s, pcie_bytes_per_second=s.pcie_bytes_per_second,
                            busiest_thread_cpu_cores=s.busiest_thread_cpu_ratio)
        if s.dram_active is not None and s.dram_active >= th.memory_bound_dram_active:
            return _finding("memory_bound", "page", _strength(s.dram_active, th.memory_bound_dram_active), s,
                            dram_active=s.dram_active, flops_utilization=s.flops_utilization)
        if waiting_on_peers and (s.peer_starved_ratio or 0.0) >= th.peer_starved_ratio:
            # This rank waits in its all-reduce for one whose loaders cannot keep up: the job is starved.
            return _finding("input_starved", "page", 0.7, s, peer_starved_ratio=s.peer_starved_ratio,
                            nvml_utilization=kernel_time, loader_workers=s.children,
                            loader_cpu_cores=s.children_cpu_ratio, job_gpus=s.job_gpus + 1)
        if waiting_on_peers and not loaders_saturated and not thread_saturated:
            # Little traffic, yet every GPU of the job waits in its collectives: latency-bound
            # all-reduces or a straggler rank.
            return _communication(s, "waiting", 0.55)
        if kernels_outrun_sms and not (peers_low and loaders_saturated):
            return _launch_bound(s, _strength(kernel_time / max(util, 1e-3), th.launch_kernel_time_over_sm_active))
        if thread_saturated or loaders_saturated:
            return _input_starved(s, th, max(demand, per_child + per_child_wait), waits_for_cpu)
        if kernels_run and s.cpu_ratio >= th.cpu_saturated_ratio and \
                kernel_time >= th.launch_overhead_kernel_time_over_sm_active * max(util, 1e-3):
            # About a core of host work spread over threads (Python on the main thread, the autograd
            # engine's own) while kernels too small to fill the SMs leave gaps: framework overhead.
            return _launch_bound(s, 0.55)
        if _low_demand(s, th, storage) and not peers_low:
            return _finding("low_demand", "ticket", 0.6, s, nvml_utilization=s.nvml_utilization,
                            tensor_active=s.tensor_active, process_cpu_cores=s.cpu_ratio,
                            busiest_thread_cpu_cores=s.busiest_thread_cpu_ratio,
                            thread_wait_cores=s.thread_wait_ratio, io_bytes_per_second=storage,
                            pcie_bytes_per_second=s.pcie_bytes_per_second)
        problems = _system_problems(s)
        if problems:
            return _finding("system", "page", 0.7, s, problems="; ".join(problems))
        return _finding("unknown", "page", 0.3, s, nvml_utilization=s.nvml_utilization,
                        process_cpu_cores=s.cpu_ratio, pcie_bytes_per_second=s.pcie_bytes_per_second,
                        thread_demand_cores=s.thread_demand_ratio, thread_wait_cores=s.thread_wait_ratio,
                        io_bytes_per_second=storage, cpu_pressure=s.cpu_pressure_ratio,
                        io_pressure=s.io_pressure_ratio)

    # Busy, but is the work efficient?
    if s.power_limit_ratio is not None and s.power_limit_ratio < 0.98 and clocks_low and \
            s.throttle.get("sw_power_cap", 0.0) >= th.throttle_fraction:
        return _finding("power_capped", "ticket", 0.85, s, power_limit_ratio=s.power_limit_ratio,
                        sm_clock_ratio=s.sm_clock_ratio, sw_power_cap_fraction=s.throttle.get("sw_power_cap"))
    if thermal >= th.throttle_fraction and clocks_low:
        return _finding("thermal_throttled", "ticket", _strength(thermal, th.throttle_fraction), s,
                        thermal_throttle_fraction=min(thermal, 1.0), sm_clock_ratio=s.sm_clock_ratio)
    if s.throttle.get("clocks_setting", 0.0) >= th.throttle_fraction and clocks_low:
        return _finding("clocks_capped", "ticket", 0.8, s, sm_clock_ratio=s.sm_clock_ratio,
                        clocks_setting_fraction=s.throttle.get("clocks_setting"))
    # Busy only because NCCL's blocks count as active: the step spends a large share moving gradients.
    # Bytes alone do not tell that here (a large batch's all-reduce moves 14 GB/s behind compute).
    nvlink_busy = _nvlink_busy(s, th) if s.nvlink_busy_ratio is not None else None
    if nvlink_busy is not None and util < th.communication_max_utilization:
        return _communication(s, "nvlink", nvlink_busy, severity="ticket")
    fp_busy = (s.fp32_active or 0.0) + (s.fp64_active or 0.0)
    if s.dram_active is not None and s.dram_active >= th.memory_bound_dram_active and \
            (s.flops_utilization is None or s.flops_utilization < th.memory_bound_max_flops_utilization) and \
            fp_busy < s.dram_active:
        return _finding("memory_bound", "ticket", _strength(s.dram_active, th.memory_bound_dram_active), s,
                        dram_active=s.dram_active, flops_utilization=s.flops_utilization, tensor_active=s.tensor_active)
    if s.tensor_active is not None and s.tensor_active < th.tensor_idle and fp_busy >= th.fp_pipe_busy:
        return _finding("no_tensor_cores", "ticket", _strength(fp_busy, th.fp_pipe_busy), s,
                        fp32_active=s.fp32_active, fp64_active=s.fp64_active, tensor_active=s.tensor_active)
    if len(busy_shares) >= th.contention_processes:
        return _contention(s, "ticket", 0.7, [])
    return None


def _busy_shares(s: Signals, th: Thresholds) -> list[int]:
    """The processes with a real share of the GPU. NVML's per-process shares are kernel time, as
    its utilization.gpu is, so the bar is a share of that (or of SM activity where higher)."""
    bar = th.contention_min_sm_ratio * max(s.utilization or 0.0, s.nvml_utilization or 0.0, 1e-9)
    return [pid for pid, v in s.process_shares.items() if v >= bar]


def _launching_without_share(s: Signals, th: Thresholds, busy: list[int]) -> list[int]:
    """Processes whose SM share no tick knew, each busy on the CPU (launching work of its own, not a
    loader worker of another): with kernels running, they take turns on the GPU too."""
    return [pid for pid in s.unknown_shares
            if pid not in busy and s.process_cpu.get(pid, 0.0) >= th.cpu_busy_ratio]


def _contention(s: Signals, severity: str, confidence: float, launching: list[int]) -> Finding:
    return _finding("contention", severity, confidence, s, processes=s.processes,
                    sm_shares=", ".join(f"{pid} {s.process_jobs.get(pid, '?')} {v:.2f}"
                                        for pid, v in sorted(s.process_shares.items()) if pid not in s.unknown_shares),
                    launching_without_share=", ".join(f"{pid} {s.process_jobs.get(pid, '?')} {s.process_cpu[pid]:.2f} cores"
                                                      for pid in sorted(launching)) or None)


def _io_bound(s: Signals, th: Thresholds, storage: float, waiting: float, cpu_bound: bool) -> float | None:
    """How surely the processes wait on storage (a confidence), or None if they do not.

    Threads seen in disk wait, or delay accounting's count of them; host-wide iowait or I/O pressure
    only while these processes read (it could be another job's); or, counters only, bytes moved from
    storage at a rate that leaves a thread no time for anything but waiting, with no thread CPU-bound."""
    if waiting >= th.disk_wait_threads:
        return _strength(waiting, th.disk_wait_threads)
    if cpu_bound:
        return None
    reads = s.io_read_bytes_per_second + s.children_io_bytes_per_second >= th.io_read_bytes_per_second
    if reads and ((s.iowait_ratio or 0.0) >= th.iowait_ratio or (s.io_pressure_ratio or 0.0) >= th.io_pressure_ratio):
        return 0.7
    if storage >= th.io_busy_bytes_per_second:
        return _strength(storage, th.io_busy_bytes_per_second) - 0.1
    return None


def _io_finding(s: Signals, confidence: float, storage: float) -> Finding:
    return _finding("io_bound", "page", confidence, s, threads_in_disk_wait=s.threads_in_disk_wait,
                    blkio_delay_threads=s.blkio_delay_ratio, main_thread_disk_wait=s.main_thread_disk_wait_ratio,
                    iowait_ratio=s.iowait_ratio,
                    io_pressure=s.io_pressure_ratio, io_read_bytes_per_second=s.io_read_bytes_per_second,
                    io_write_bytes_per_second=s.io_write_bytes_per_second,
                    loader_io_bytes_per_second=s.children_io_bytes_per_second, storage_bytes_per_second=storage,
                    process_cpu_cores=s.cpu_ratio, pcie_bytes_per_second=s.pcie_bytes_per_second)


def _input_starved(s: Signals, th: Thresholds, demand: float, waits_for_cpu: bool) -> Finding:
    evidence = dict(busiest_thread_cpu_cores=s.busiest_thread_cpu_ratio, loader_workers=s.children,
                    loader_cpu_cores=s.children_cpu_ratio, process_cpu_cores=s.cpu_ratio,
                    nvlink_bytes_per_second=s.nvlink_bytes_per_second)
    if not waits_for_cpu:
        return _finding("input_starved", "page", _strength(demand, th.cpu_saturated_ratio) - 0.1, s, **evidence)
    # The scheduler's own counters prove the thread was runnable and had no CPU; PSI, the load and
    # the cores busy beyond this job's own say the host's other work held them.
    others = None
    if s.host_cpu_busy_ratio is not None and s.cpu_count:
        others = max(s.host_cpu_busy_ratio * s.cpu_count - s.cpu_ratio - s.children_cpu_ratio, 0.0)
    found = _finding("input_starved", "page", _strength(demand, th.cpu_saturated_ratio), s, **evidence,
                     thread_demand_cores=s.thread_demand_ratio,
                     thread_run_cores=(s.thread_demand_ratio or 0.0) - (s.thread_wait_ratio or 0.0),
                     thread_wait_cores=s.thread_wait_ratio, loader_wait_cores=s.children_wait_ratio,
                     cpu_pressure=s.cpu_pressure_ratio, load_per_core=s.load_per_core,
                     other_processes_cpu_cores=others, cpu_count=s.cpu_count)
    return replace(found, advice=CPU_CONTENDED_ADVICE, summary=CPU_CONTENDED_SUMMARY)


def _low_demand(s: Signals, th: Thresholds, storage: float) -> bool:
    """Little work, done efficiently: the SMs are active now and then, and the kernels that run fill
    them (kernel time close to SM activity); nothing on the host is busy, waits or moves data."""
    return (s.utilization is not None and s.utilization >= th.idle_sm_active
            and s.nvml_utilization is not None
            and s.nvml_utilization <= th.low_demand_kernel_time_over_sm_active * s.utilization
            and s.cpu_ratio + s.children_cpu_ratio < th.cpu_busy_ratio
            and (s.thread_wait_ratio or 0.0) < th.cpu_runqueue_wait_ratio
            and storage < th.io_read_bytes_per_second
            and (s.pcie_bytes_per_second or 0.0) < th.low_demand_pcie_bytes_per_second)


def _nvlink_busy(s: Signals, th: Thresholds) -> float | None:
    """How surely NVLink is busy (a confidence), or None if it is not.

    By its share of the card's bandwidth where the card is known: ranks starved by their loaders
    still all-reduce every step, tens of GB/s that take a few percent of the time."""
    if s.nvlink_busy_ratio is not None:
        value, bar = s.nvlink_busy_ratio, th.nvlink_busy_ratio
    elif s.nvlink_bytes_per_second is not None:
        value, bar = s.nvlink_bytes_per_second, th.nvlink_busy_bytes_per_second
    else:
        return None
    return _strength(value, bar) if value >= bar else None


def _launch_bound(s: Signals, confidence: float) -> Finding:
    return _finding("launch_bound", "page", confidence, s, nvml_utilization=s.nvml_utilization,
                    sm_occupancy=s.sm_occupancy, process_cpu_cores=s.cpu_ratio,
                    busiest_thread_cpu_cores=s.busiest_thread_cpu_ratio)


def _communication(s: Signals, via: str, confidence: float, severity: str = "page") -> Finding:
    return _finding("communication_bound", severity, confidence, s, via=via,
                    nvlink_bytes_per_second=s.nvlink_bytes_per_second, nvlink_busy_ratio=s.nvlink_busy_ratio,
                    pcie_bytes_per_second=s.pcie_bytes_per_second,
                    nvml_utilization=s.nvml_utilization, job_gpus=s.job_gpus + 1,
                    peers_below_ratio=s.peers_below_ratio)


def _system_problems(s: Signals) -> list[str]:
    problems = []
    if s.driver_major is not None and s.driver_major < 530:
        problems.append(f"driver {s.driver_major} < 530")
    if s.cuda_version is not None and s.cuda_version < (12, 1):
        problems.append(f"CUDA {s.cuda_version[0]}.{s.cuda_version[1]} < 12.1")
    if s.pcie_width is not None and s.pcie_width_max and s.pcie_width < s.pcie_width_max:
        problems.append(f"PCIe link x{s.pcie_width} of x{s.pcie_width_max}")
    return problems


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
    held = replace(current, evidence={**current.evidence, **_base_evidence(s)})
    # No finding is a challenger too: candidate None with a time is "healthy since".
    if state.candidate_since is None or state.candidate != new_cause:
        return DiagnosisState(finding=held, candidate=new_cause, candidate_since=now, window=figures)
    if now - state.candidate_since >= th.switch_after_seconds:
        return DiagnosisState(finding=found, window=figures)
    return replace(state, finding=held, window=figures)


def window_figures(window: TickWindow) -> WindowFigures:
    mean = window.ticks.mean
    return WindowFigures(
        seconds=window.ticks.weight, utilization=mean("utilization"), nvml_utilization=mean("nvml_utilization"),
        sm_occupancy=mean("sm_occupancy"), tensor_active=mean("tensor_active"), dram_active=mean("dram_active"),
        flops_utilization=mean("flops_utilization"), power_watts=mean("power_watts"),
        memory_turnover_per_second=mean("memory_turnover_per_second"))


def _under(utilization: float | None, th: Thresholds) -> bool:
    return utilization is not None and utilization < th.utilization_threshold


def waste_seconds(figures: GpuFigures, finding: Finding | None, th: Thresholds) -> tuple[str, float] | None:
    """GPU-seconds of this tick spent under the threshold, and the cause they are charged to."""
    if figures.utilization is None or figures.utilization >= th.utilization_threshold:
        return None
    return (finding.cause if finding is not None else "unknown"), figures.interval_seconds
