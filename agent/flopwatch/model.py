"""The typed records that flow through one tick: sources → Sample → derive → diagnose → sinks.

Ratios are 0..1, rates are per second, sizes in bytes, energy in joules: the names say the unit.
``None`` always means "the source could not say", never zero.

Records are never changed once built (frozen).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

# Clock-event (throttle) reasons, in the words of NVML's clock event reasons.
THROTTLE_REASONS = (
    "sw_power_cap",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "hw_slowdown",
    "sync_boost",
    "clocks_setting",
)

SEVERITIES = ("page", "ticket")


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """Static facts about one GPU, read once at start."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    memory_total_bytes: int
    driver_version: str
    cuda_driver_version: str | None  # "12.8": the newest CUDA the driver supports
    max_sm_clock_mhz: float | None
    max_memory_clock_mhz: float | None
    memory_bus_width_bits: int | None
    power_limit_watts: float | None
    default_power_limit_watts: float | None
    gpm_supported: bool
    sm_count: int | None = None
    pcie_link_gen_max: int | None = None
    pcie_link_width_max: int | None = None
    numa_node: int | None = None
    minor_number: int | None = None  # /dev/nvidia<minor>: what Slurm's gres.conf names the GPU by


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """One process with a context on a GPU, as NVML reports it."""

    pid: int
    used_memory_bytes: int | None
    sm_ratio: float | None  # share of the GPU's SM time this process had since the last tick
    memory_ratio: float | None  # share of memory-controller time


@dataclass(frozen=True, slots=True)
class LinkTraffic:
    """One active NVLink link: its rates over the tick and its bytes since the agent started."""

    link: int
    tx_bytes_per_second: float
    rx_bytes_per_second: float
    tx_bytes: float
    rx_bytes: float


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU's readings over one tick. Activity ratios cover the whole interval (counters)."""

    info: GpuInfo
    timestamp: float
    interval_seconds: float
    source_quality: str  # "gpm": per-cycle counters; "coarse": NVML's kernel-time utilization only
    unsupported: tuple[str, ...] = ()
    error: str | None = None  # set when the GPU could not be read this tick (lost, timed out)
    sm_active: float | None = None
    sm_occupancy: float | None = None
    tensor_active: float | None = None
    hmma_active: float | None = None
    dram_active: float | None = None
    fp16_active: float | None = None
    fp32_active: float | None = None
    fp64_active: float | None = None
    integer_active: float | None = None
    pcie_tx_bytes_per_second: float | None = None
    pcie_rx_bytes_per_second: float | None = None
    nvlink_tx_bytes_per_second: float | None = None
    nvlink_rx_bytes_per_second: float | None = None
    nvlink_links: tuple[LinkTraffic, ...] = ()  # active links only; empty without NVLink or GPM
    nvml_utilization: float | None = None  # NVML utilization.gpu: time a kernel ran, not SM work
    memory_used_bytes: int | None = None
    power_watts: float | None = None
    energy_joules: float | None = None  # cumulative since the agent started, from the counter
    sm_clock_mhz: float | None = None
    memory_clock_mhz: float | None = None
    temperature_celsius: float | None = None
    clock_event_reasons: int | None = None  # NVML bitmask, as seen at the end of the tick
    throttle_seconds: Mapping[str, float] = field(default_factory=dict)  # cumulative by reason
    pcie_link_width: int | None = None  # lanes now; a link trained narrower than its maximum is a fault
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True, slots=True)
class Identity:
    """Who runs a process, from its cgroup path and a few whitelisted environment variables."""

    container_id: str | None = None  # 12 hex digits, as `docker ps` shows it
    pod_uid: str | None = None
    pod: str | None = None
    namespace: str | None = None
    slurm_job: str | None = None
    unit: str | None = None  # systemd unit, when it is the process's own (not a login session)
    # A torchrun (torch.distributed.elastic) worker's run: its rendezvous id, or where no id was given
    # ("none"), the master's address and port, which no other run on the node shares while it runs.
    torchrun: str | None = None
    # The process's place in a distributed job (RANK, else SLURM_PROCID, else OMPI_COMM_WORLD_RANK),
    # the size of that job and its rank within the node: the same job name on every node, a rank each.
    rank: int | None = None
    world_size: int | None = None
    local_rank: int | None = None
    # The Kubernetes object that made the pod, as "<kind>:<namespace>/<name>" (a JobSet, PyTorchJob,
    # MPIJob, LeaderWorkerSet group): the pods of one multi-node job share it.
    pod_owner: str | None = None


@dataclass(frozen=True, slots=True)
class HostProcess:
    """What the host knows of one GPU process (psutil), over the last tick."""

    pid: int
    name: str
    user: str | None = None
    cmdline: str = ""  # redacted
    state: str = ""  # psutil status: running, sleeping, disk-sleep, ...
    cpu_ratio: float | None = None  # cores busy, 1.0 = one full core
    busiest_thread_cpu_ratio: float | None = None  # a single-threaded stage shows here at ~1.0
    # The thread that wanted a CPU most (schedstat): run + run-queue wait, in cores, and the part it
    # spent runnable but waiting for a CPU. A thread that wants a whole core and gets half is CPU-bound.
    thread_demand_ratio: float | None = None
    thread_wait_ratio: float | None = None
    threads: int = 0
    threads_in_disk_wait: int = 0  # as seen at the read: a snapshot
    # Threads waiting for block I/O on average (delay accounting; None where the kernel does not account it).
    blkio_delay_ratio: float | None = None
    # Share of the ticks since the last read that the main thread was in disk wait (None: too few ticks).
    main_thread_disk_wait_ratio: float | None = None
    children: int = 0
    children_cpu_ratio: float | None = None  # data-loader workers and other descendants
    children_wait_ratio: float | None = None  # their main threads' run-queue wait, cores
    ppid: int | None = None
    rss_bytes: int | None = None
    io_read_bytes_per_second: float | None = None
    io_write_bytes_per_second: float | None = None
    # Read + written by the loader workers (a process's /proc/PID/io leaves out its live children's).
    children_io_bytes_per_second: float | None = None
    job: str | None = None
    identity: Identity | None = None


@dataclass(frozen=True, slots=True)
class HostSample:
    timestamp: float  # when /proc was read: a sample is carried between reads
    cpu_count: int
    cpu_busy_ratio: float | None  # whole host, 0..1
    iowait_ratio: float | None  # whole host, 0..1
    processes: Mapping[int, HostProcess] = field(default_factory=dict)
    # PSI (/proc/pressure): share of the interval in which some task waited for a CPU, or for I/O
    # (some: at least one task; full: all non-idle tasks at once). None where the kernel has no PSI.
    cpu_pressure_ratio: float | None = None
    io_pressure_ratio: float | None = None
    io_full_pressure_ratio: float | None = None
    load_per_core: float | None = None  # one-minute load average over the CPU count


@dataclass(frozen=True, slots=True)
class GpuFigures:
    """Derived figures for one GPU and one tick (derive.py)."""

    index: int
    uuid: str
    timestamp: float
    interval_seconds: float
    source_quality: str
    utilization: float | None
    sm_occupancy: float | None
    tensor_active: float | None
    dram_active: float | None
    fp32_active: float | None
    fp64_active: float | None
    fp16_active: float | None
    flops_utilization: float | None
    achieved_flops_per_second: float | None
    dram_bytes_per_second: float | None
    memory_turnover_per_second: float | None
    power_watts: float | None
    energy_joules: float | None
    energy_joules_delta: float | None
    sm_clock_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int
    throttle_fractions: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WindowFigures:
    """Means over the diagnosis window a finding was made from (or last checked against): what
    a finding is shown beside, so the verdict and the figures agree."""

    seconds: float
    utilization: float | None
    nvml_utilization: float | None
    sm_occupancy: float | None
    tensor_active: float | None
    dram_active: float | None
    flops_utilization: float | None
    power_watts: float | None
    memory_turnover_per_second: float | None


@dataclass(frozen=True, slots=True)
class StackShare:
    """One Python stack of one thread, and the share of that thread's samples spent in it."""

    share: float
    frames: tuple[str, ...]  # "fn (file:line)", innermost first
    thread: str
    pid: int
    paths: tuple[str, ...] = ()  # each frame's full file path, as the process sees it
    code: str = ""  # the innermost frame's source line, where it could be read; never shown


@dataclass(frozen=True, slots=True)
class StackProfile:
    """Stacks sampled from a GPU's processes and their children, or why none could be."""

    pids: tuple[int, ...]  # the GPU processes sampled; the stacks' other pids are their children
    samples: int  # stacks read, over all threads
    stacks: tuple[StackShare, ...] = ()  # shown: the GPU processes' main threads first, then by share
    # Every stack sampled, however small its share: an activity spread over many short stacks (a
    # tokenizer's) is read from these, where the shown ones would leave most of it out.
    sampled: tuple[StackShare, ...] = ()
    unavailable: str | None = None  # why no stacks were taken: no permission, py-spy missing, ...
    timestamp: float = 0.0  # wall clock, when py-spy stopped reading
    seconds: float = 0.0  # how long py-spy read (one process after another): the sample's span ends at timestamp

    @property
    def started(self) -> float:
        return self.timestamp - self.seconds

    @property
    def middle(self) -> float:
        return self.timestamp - self.seconds / 2


@dataclass(frozen=True, slots=True)
class Contribution:
    """A cause beside a finding's primary one: its own signature matched the same window."""

    cause: str
    summary: str
    evidence: Mapping[str, float | int | str | None]


@dataclass(frozen=True, slots=True)
class Finding:
    """Why a GPU is under-used or inefficient: a cause from the taxonomy, with its evidence."""

    cause: str
    severity: str  # "page" (under the utilization threshold) or "ticket" (busy but inefficient)
    confidence: float
    evidence: Mapping[str, float | int | str | None]
    advice: str
    summary: str = ""
    stacks: StackProfile | None = None  # the culprit's Python stacks, for a host-side cause
    # Up to two more causes (judge/diagnose.py): the page routes on ``cause`` alone.
    contributing: tuple[Contribution, ...] = ()


@dataclass(frozen=True, slots=True, order=True)
class PodContainer:
    """A container the kubelet gave a GPU to (its pod-resources API)."""

    namespace: str
    pod: str
    container: str

    @property
    def job(self) -> str:
        return f"pod:{self.namespace}/{self.pod}"  # the job name sources/identity.py gives a pod


@dataclass(frozen=True, slots=True)
class Allocation:
    """Who a scheduler gave a GPU to: a Slurm job or a Kubernetes pod, and its owner."""

    scheduler: str  # "slurm" or "kubernetes"
    job: str  # as the processes' jobs are named: "slurm:<id>", "pod:<namespace>/<name>"
    user: str = ""  # Slurm: the job's user
    account: str = ""  # Slurm: the job's account
    partition: str = ""  # Slurm: the job's partition
    namespace: str = ""  # Kubernetes: the pod's namespace
    started_at: float | None = None  # wall clock, when the job started (Slurm) or None when not known
    time_limit_seconds: float | None = None  # Slurm: None when unlimited
    # Kubernetes: ([kubernetes].owner_labels key, value) from the pod's labels or annotations.
    owner_metadata: tuple[tuple[str, str], ...] = ()

    def owner(self) -> tuple[str, str, str, str]:
        """OWNER_LABELS' values: dcgm-exporter's ``hpc_job`` with the Slurm job's user, account and
        partition; empty for a pod (its namespace and pod are labels of their own)."""
        if self.scheduler != "slurm":
            return ("", "", "", "")
        return self.job.removeprefix("slurm:"), self.user, self.account, self.partition


@dataclass(frozen=True, slots=True)
class Holding:
    """What the schedulers said of one GPU at a tick."""

    allocation: Allocation | None  # the job or pod holding it; None: nobody
    jobs: frozenset[str] = frozenset()  # every holder's job (several pods when time-sliced)
    # Slurm answers for every process on the node: one outside the holding job is an outsider.
    # The kubelet only for pods: a node runs host daemons of its own, and a pod's process named by
    # its cgroup alone is ``pod:<uid>``, which no holder's name matches.
    every_process: bool = False

    @property
    def free(self) -> bool:
        return self.allocation is None

    def outsider(self, job: str) -> bool:
        """Whether a process of ``job`` runs where the scheduler did not put it."""
        if job in self.jobs:
            return False
        return self.every_process or (job.startswith("pod:") and "/" in job)


# Who to tell, on the alerts and on flopwatch_finding_info (which the rules' alerts come from).
OWNER_LABELS = ("hpc_job", "user", "account", "partition")
NO_OWNER = ("", "", "", "")


def owner_label(key: str) -> str:
    """A pod's owner label or annotation key as a Prometheus label name:
    ``example.com/team`` → ``owner_example_com_team``."""
    return "owner_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


@dataclass(frozen=True, slots=True)
class ProcessView:
    """A GPU process as the sinks show it: NVML's share joined with the host's identity."""

    pid: int
    job: str
    user: str | None
    cmdline: str
    sm_ratio: float | None
    memory_bytes: int | None
    cpu_ratio: float | None
    identity: Identity | None = None


@dataclass(frozen=True, slots=True)
class TokenCount:
    """Cumulative tokens one source reported for one job or process (the ledger's row)."""

    source: str  # "push", "vllm", "tgi", "sglang"
    key: str  # unique within the source: the push's job/pid, or the scraped URL
    job: str | None
    pids: frozenset[int]  # the processes that did the work, when known
    prompt_tokens: int
    generated_tokens: int


@dataclass(frozen=True, slots=True)
class TokenFigures:
    """One GPU's token accounting: totals since start and costs over the recent window."""

    totals: Mapping[tuple[str, str, str], float]  # (source, job, kind) → tokens attributed to this GPU
    tokens_this_tick: float
    window_seconds: float
    tokens_per_second: float | None
    joules_per_token: float | None
    gpu_seconds_per_1k_tokens: float | None
    tflop_per_token: float | None
    cost_per_1m_tokens: float | None


@dataclass(frozen=True, slots=True)
class GpuState:
    """Everything the sinks need about one GPU after a tick."""

    sample: GpuSample
    figures: GpuFigures | None  # None when the GPU could not be read
    finding: Finding | None
    below_threshold: bool
    wasted_seconds: Mapping[str, float]  # cumulative since start, by cause
    processes: tuple[ProcessView, ...] = ()
    tokens: TokenFigures | None = None
    window: WindowFigures | None = None  # None until the GPU's window is long enough to diagnose
    pods: tuple[PodContainer, ...] = ()  # who holds the GPU, by the kubelet; several when time-sliced
    # Ticks under the threshold whose cause was settled this tick (this one's, or earlier ones that
    # waited for their segment to be named): judge.ledger.Charge records.
    charges: tuple = ()
    charge_pending: bool = False  # this tick is under the threshold and waits for its segment's cause
    allocation: Allocation | None = None  # who a scheduler gave the GPU to (Slurm, or the kubelet's first pod)


@dataclass(frozen=True, slots=True)
class AgentState:
    """The result of one tick: what /metrics, status, the store and alerting read."""

    hostname: str
    timestamp: float
    ticks: int
    gpus: tuple[GpuState, ...]
    host: HostSample | None
    collector_success: Mapping[str, bool]
    collector_seconds: Mapping[str, float]
    # Tokens that matched no GPU (no pid or job of theirs is on one), by (source, job, kind).
    unattributed_tokens: Mapping[tuple[str, str, str], float] = field(default_factory=dict)
