"""Simulated GPUs: a library with pynvml's functions over named scenarios.

``NvmlSource(SimulatedNvml(...))`` reads simulated GPUs through the very code that reads real
ones, so the demo, CI and the benchmarks exercise the product path. Each scenario reproduces what
one bottleneck does to the counters (see docs/causes.md); readings are deterministic for a seed.
Faults (an NVML error code, or a call that blocks) can be injected per GPU and function.
"""

from __future__ import annotations

import ctypes
import math
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import pynvml

from flopwatch.model import HostProcess, HostSample, Identity
from flopwatch.sources.host import Cadence
from flopwatch.sources.identity import JOB_RULES, identify, job_name
from flopwatch.sources.nvml import THROTTLE_FIELDS

GIB = 2**30

# Reason bits (NVML clock event reasons).
SW_POWER_CAP = 0x4
HW_THERMAL = 0x40
SW_THERMAL = 0x20
APPLICATIONS_CLOCKS = 0x2
GPU_IDLE = 0x1


@dataclass(frozen=True)
class SimProcess:
    """A process on a simulated GPU and what the host sees of it."""

    name: str
    memory_bytes: int
    sm_share: float  # share of the GPU's SM activity that is this process's
    cpu_ratio: float  # cores
    busiest_thread_cpu_ratio: float
    threads: int = 8
    threads_in_disk_wait: int = 0
    children: int = 0
    children_cpu_ratio: float = 0.0
    io_read_bytes_per_second: float = 0.0
    # The most demanding thread's run-queue wait (cores): it wants busiest + this of a CPU.
    thread_wait_ratio: float = 0.0
    state: str = "running"
    user: str = "alice"
    cmdline: str = "python train.py"
    steady: bool = False  # readings without noise: scale-run helpers, made once


@dataclass(frozen=True)
class SimulatedJob:
    """The simulated GPUs' first processes as ranks of one Slurm job that several agents share: GPU
    i's is rank ``first_rank + i`` of ``world_size``. Their environment goes through the same
    identity code as a real process's."""

    slurm_job: str
    first_rank: int
    world_size: int

    def environ(self, gpu: int) -> dict[str, str]:
        return {"SLURM_JOB_ID": self.slurm_job, "RANK": str(self.first_rank + gpu), "LOCAL_RANK": str(gpu),
                "WORLD_SIZE": str(self.world_size)}


@dataclass(frozen=True)
class Scenario:
    """Mean readings of one GPU under one workload; noise and bursts are added per tick."""

    sm_active: float
    sm_occupancy: float
    nvml_utilization: float
    tensor_active: float = 0.0
    hmma_active: float = 0.0
    dram_active: float = 0.05
    fp16_active: float = 0.0
    fp32_active: float = 0.02
    fp64_active: float = 0.0
    integer_active: float = 0.02
    pcie_tx_bytes_per_second: float = 50e6
    pcie_rx_bytes_per_second: float = 100e6
    nvlink_tx_bytes_per_second: float = 0.0
    nvlink_rx_bytes_per_second: float = 0.0
    power_watts: float = 300.0
    sm_clock_mhz: float = 1980.0
    temperature_celsius: float = 55.0
    reasons: int = 0
    # Fraction of each tick spent throttled, by reason (the NVML time counters).
    throttled: dict[str, float] = field(default_factory=dict)
    power_limit_watts: float = 700.0
    driver_version: str = "580.95.05"
    cuda_driver_version: int = 13000
    pcie_link_width: int = 16
    burst_period_seconds: float = 0.0  # >0: the SMs alternate busy/idle (a starved loop)
    processes: tuple[SimProcess, ...] = ()
    host_iowait_ratio: float = 0.01
    host_cpu_pressure_ratio: float = 0.02  # PSI cpu some
    host_io_pressure_ratio: float = 0.01  # PSI io some
    host_load_per_core: float = 0.2  # and the share of the cores busy, up to all of them


def _trainer(**overrides: Any) -> SimProcess:
    base = dict(
        name="python", memory_bytes=60 * GIB, sm_share=1.0, cpu_ratio=1.1,
        busiest_thread_cpu_ratio=0.9, threads=24, children=8, children_cpu_ratio=3.0,
    )
    base.update(overrides)
    return SimProcess(**base)


SCENARIOS: dict[str, Scenario] = {
    # A well-fed bf16 training loop: tensor cores busy, at the card's default power limit, which
    # it touches now and then (that is the card doing its job, not a cap). Repeated over GPUs it is
    # a data-parallel job whose all-reduce overlaps compute: modest NVLink traffic.
    "healthy": Scenario(
        sm_active=0.96, sm_occupancy=0.45, nvml_utilization=1.0, tensor_active=0.72, hmma_active=0.72,
        dram_active=0.38, fp32_active=0.08, fp16_active=0.04, power_watts=660, sm_clock_mhz=1755,
        nvlink_tx_bytes_per_second=2e9, nvlink_rx_bytes_per_second=2e9,
        temperature_celsius=66, reasons=SW_POWER_CAP, throttled={"sw_power_cap": 0.4},
        processes=(_trainer(),),
    ),
    "idle": Scenario(
        sm_active=0.0, sm_occupancy=0.0, nvml_utilization=0.0, dram_active=0.0, fp32_active=0.0,
        integer_active=0.0, pcie_tx_bytes_per_second=0, pcie_rx_bytes_per_second=0, power_watts=70,
        sm_clock_mhz=345, temperature_celsius=32, reasons=GPU_IDLE,
    ),
    # A notebook holding 20 GB and doing nothing.
    "held_idle": Scenario(
        sm_active=0.0, sm_occupancy=0.0, nvml_utilization=0.0, dram_active=0.0, fp32_active=0.0,
        integer_active=0.0, pcie_tx_bytes_per_second=0, pcie_rx_bytes_per_second=0, power_watts=115,
        sm_clock_mhz=1980, temperature_celsius=36, reasons=GPU_IDLE,
        processes=(SimProcess("python", 20 * GIB, 1.0, 0.01, 0.01, threads=30, state="sleeping",
                              cmdline="python -m ipykernel_launcher -f kernel.json"),),
    ),
    # Data loading on too few CPU workers: the GPU works in bursts, the workers are pegged.
    "input_starved": Scenario(
        sm_active=0.28, sm_occupancy=0.13, nvml_utilization=0.33, tensor_active=0.2, hmma_active=0.2,
        dram_active=0.1, power_watts=260, sm_clock_mhz=1980, burst_period_seconds=4.0,
        pcie_rx_bytes_per_second=300e6,
        processes=(_trainer(cpu_ratio=1.0, busiest_thread_cpu_ratio=0.35, children=2, children_cpu_ratio=1.98),),
    ),
    # Reading samples from slow storage: threads in disk wait, host iowait.
    "io_bound": Scenario(
        sm_active=0.2, sm_occupancy=0.09, nvml_utilization=0.24, tensor_active=0.14, hmma_active=0.14,
        dram_active=0.07, power_watts=230, burst_period_seconds=6.0, host_iowait_ratio=0.35,
        processes=(_trainer(cpu_ratio=0.25, busiest_thread_cpu_ratio=0.12, children=4, children_cpu_ratio=0.4,
                            threads_in_disk_wait=3, io_read_bytes_per_second=180e6, state="disk-sleep"),),
    ),
    # A loop reading each batch with O_DIRECT from a local disk: 1.5 GB/s off the disk and over
    # PCIe, a tenth of a core, the GPU almost idle; host iowait, spread over 64 cores, stays low.
    "disk_direct_read": Scenario(
        sm_active=0.01, sm_occupancy=0.005, nvml_utilization=0.01, dram_active=0.01, fp32_active=0.0,
        power_watts=120, pcie_tx_bytes_per_second=5e6, pcie_rx_bytes_per_second=1.5e9, host_iowait_ratio=0.015,
        host_io_pressure_ratio=0.9,
        processes=(SimProcess("python", 820 * 2**20, 1.0, 0.08, 0.07, threads=6, io_read_bytes_per_second=1.5e9,
                              cmdline="python read_direct.py"),),
    ),
    # A training loop on a host whose cores other processes keep busy (load twice the cores): its
    # feeding thread wants a whole core, runs half of one and waits for a CPU the rest of the time.
    "cpu_contended": Scenario(
        sm_active=0.01, sm_occupancy=0.005, nvml_utilization=0.01, tensor_active=0.005, dram_active=0.01,
        power_watts=125, host_cpu_pressure_ratio=0.97, host_load_per_core=2.0,
        processes=(_trainer(cpu_ratio=0.55, busiest_thread_cpu_ratio=0.5, thread_wait_ratio=0.48, children=0,
                            children_cpu_ratio=0.0),),
    ),
    # A model server with little traffic (the bursts of an H200 with big bf16 GEMMs per request): the
    # kernels fill the SMs while they run, then it waits in its event loop.
    "low_demand": Scenario(
        sm_active=0.11, sm_occupancy=0.06, nvml_utilization=0.155, tensor_active=0.11, hmma_active=0.11,
        dram_active=0.03, fp32_active=0.0, power_watts=160, pcie_tx_bytes_per_second=1e6,
        pcie_rx_bytes_per_second=2e6,
        processes=(SimProcess("python", 6 * GIB, 1.0, 0.15, 0.15, threads=12, state="sleeping",
                              cmdline="python serve.py --port 8000"),),
    ),
    # Pageable host→device copies: PCIe busy, SMs waiting, one CPU thread doing the staging memcpy.
    "host_transfer_bound": Scenario(
        sm_active=0.18, sm_occupancy=0.1, nvml_utilization=0.22, tensor_active=0.1, hmma_active=0.1,
        dram_active=0.12, power_watts=210, pcie_rx_bytes_per_second=9.5e9,
        processes=(_trainer(cpu_ratio=1.05, busiest_thread_cpu_ratio=0.98, children=0, children_cpu_ratio=0.0),),
    ),
    # A Python loop of tiny kernels: kernels run a lot of the time, but on a handful of SMs.
    "launch_bound": Scenario(
        sm_active=0.02, sm_occupancy=0.01, nvml_utilization=0.32, dram_active=0.01, fp32_active=0.01,
        power_watts=130, processes=(_trainer(cpu_ratio=1.0, busiest_thread_cpu_ratio=0.99, children=0,
                                             children_cpu_ratio=0.0),),
    ),
    # Bandwidth-bound decode/elementwise: SMs busy waiting on DRAM, little math.
    "memory_bound": Scenario(
        sm_active=0.93, sm_occupancy=0.7, nvml_utilization=1.0, tensor_active=0.03, hmma_active=0.03,
        dram_active=0.88, fp32_active=0.12, power_watts=480,
        processes=(_trainer(name="python", cmdline="python serve.py --batch-size 1"),),
    ),
    # FP32 GEMMs without TF32: the FMA pipes are full, the tensor cores idle.
    "no_tensor_cores": Scenario(
        sm_active=0.97, sm_occupancy=0.3, nvml_utilization=1.0, tensor_active=0.0, hmma_active=0.0,
        dram_active=0.3, fp32_active=0.78, power_watts=520, processes=(_trainer(),),
    ),
    # An administrator lowered the power limit: the clocks drop to fit it.
    "power_capped": Scenario(
        sm_active=0.96, sm_occupancy=0.45, nvml_utilization=1.0, tensor_active=0.7, hmma_active=0.7,
        dram_active=0.3, power_watts=398, power_limit_watts=400, sm_clock_mhz=1095, reasons=SW_POWER_CAP,
        throttled={"sw_power_cap": 1.0}, processes=(_trainer(),),
    ),
    "thermal_throttled": Scenario(
        sm_active=0.95, sm_occupancy=0.45, nvml_utilization=1.0, tensor_active=0.65, hmma_active=0.65,
        dram_active=0.3, power_watts=540, sm_clock_mhz=1170, temperature_celsius=89,
        reasons=HW_THERMAL | SW_THERMAL, throttled={"hw_thermal_slowdown": 0.6, "sw_thermal_slowdown": 0.8},
        processes=(_trainer(),),
    ),
    # Application clocks locked low (a leftover `nvidia-smi -lgc`).
    "clocks_capped": Scenario(
        sm_active=0.96, sm_occupancy=0.45, nvml_utilization=1.0, tensor_active=0.7, hmma_active=0.7,
        dram_active=0.3, power_watts=330, sm_clock_mhz=990, reasons=APPLICATIONS_CLOCKS,
        processes=(_trainer(),),
    ),
    # Two jobs time-slicing one GPU: each gets a part, context switches eat the rest.
    "contention": Scenario(
        sm_active=0.52, sm_occupancy=0.25, nvml_utilization=0.9, tensor_active=0.35, hmma_active=0.35,
        dram_active=0.2, power_watts=380,
        processes=(
            _trainer(memory_bytes=30 * GIB, sm_share=0.5, cmdline="python train_a.py", user="alice"),
            _trainer(memory_bytes=30 * GIB, sm_share=0.5, cmdline="python train_b.py", user="bob"),
        ),
    ),
    # A data-parallel rank waiting on all-reduce: NVLink busy (half its 900 GB/s, as an all-reduce
    # two-thirds of the step would keep it), SMs idle but for NCCL's blocks, whose kernels keep
    # NVML's kernel time high. Repeated over GPUs (--simulate-gpus) it is one job with a torchrun
    # worker on each GPU.
    "communication_bound": Scenario(
        sm_active=0.3, sm_occupancy=0.15, nvml_utilization=0.85, tensor_active=0.2, hmma_active=0.2,
        dram_active=0.15, power_watts=300, nvlink_tx_bytes_per_second=225e9, nvlink_rx_bytes_per_second=225e9,
        processes=(_trainer(cpu_ratio=1.0, busiest_thread_cpu_ratio=0.6, children=2, children_cpu_ratio=0.3,
                            cmdline="python -u train.py"),),
    ),
    # An old driver on a downtrained PCIe link.
    "system": Scenario(
        sm_active=0.35, sm_occupancy=0.15, nvml_utilization=0.4, tensor_active=0.25, hmma_active=0.25,
        dram_active=0.1, power_watts=260, driver_version="525.60.13", cuda_driver_version=12000,
        pcie_link_width=4, processes=(_trainer(cpu_ratio=0.6, busiest_thread_cpu_ratio=0.4, children=4,
                                               children_cpu_ratio=0.8),),
    ),
    # Under the threshold with no signal that names a cause.
    "unknown": Scenario(
        sm_active=0.3, sm_occupancy=0.2, nvml_utilization=0.32, tensor_active=0.2, hmma_active=0.2,
        dram_active=0.1, power_watts=250, processes=(_trainer(cpu_ratio=0.5, busiest_thread_cpu_ratio=0.1, children=2,
                                                              children_cpu_ratio=0.1),),
    ),
}

CARD = dict(
    name="NVIDIA H100 80GB HBM3", memory_total=80 * GIB, max_sm_clock=1980, max_memory_clock=2619,
    bus_width=5120, default_power_limit_watts=700.0, pcie_gen=5, nvlinks=18,
)

# GPM's per-link NVLink rate metrics, by metric id: (the Scenario's total it is a share of, link).
_GPM_LINKS = {
    getattr(pynvml, f"NVML_GPM_METRIC_NVLINK_L{link}_{d}_PER_SEC"): (f"nvlink_{d.lower()}_bytes_per_second", link)
    for link in range(CARD["nvlinks"]) for d in ("TX", "RX")
}


class UnknownScenario(ValueError):
    pass


def check_scenarios(names: list[str]) -> None:
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise UnknownScenario(
            f"unknown scenario {', '.join(map(repr, unknown))}; valid: {', '.join(SCENARIOS)}"
        )


@dataclass
class _Gpu:
    index: int
    scenario_name: str
    scenario: Scenario
    processes: tuple[SimProcess, ...]
    pid_base: int
    energy_offset_joules: float
    # What never changes, made once: nvmlDeviceGetComputeRunningProcesses' answer, the memory
    # in use, the steady processes' host records.
    running: tuple[Any, ...] = ()
    memory_used_bytes: int = 0
    steady_host: dict[int, HostProcess] = field(default_factory=dict)
    identity: Identity | None = None  # the first process's, when it is a rank of a simulated job


class SimulatedNvml:
    """The subset of pynvml that flopwatch calls, answering from scenarios.

    Constants, NVMLError and its codes are pynvml's own, so error handling is exercised as is.
    """

    NVMLError = pynvml.NVMLError

    def __init__(
        self,
        scenarios: list[str],
        *,
        gpus: int | None = None,
        processes_per_gpu: int = 1,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        job: SimulatedJob | None = None,
    ):
        check_scenarios(scenarios)
        self.job = job
        count = max(gpus or len(scenarios), 1)
        self.seed = seed
        self.clock = clock
        self.wall_clock = wall_clock
        self._start = clock()
        self._faults: dict[tuple[int, str], tuple[int | None, float]] = {}
        self.blocked_calls: Counter[tuple[int, str]] = Counter()  # by (GPU, function), for fault tests
        self._lock = threading.Lock()
        self._gpus = []
        for i in range(count):
            name = scenarios[i % len(scenarios)]
            self._gpus.append(self._make_gpu(i, name, processes_per_gpu))

    def _make_gpu(self, index: int, name: str, processes_per_gpu: int) -> _Gpu:
        scenario = SCENARIOS[name]
        procs = list(scenario.processes)
        # Extra processes for scale runs: small helpers holding a little memory, no SM time.
        for k in range(len(procs), processes_per_gpu if procs else 0):
            procs.append(SimProcess(f"worker{k}", 256 * 2**20, 0.0, 0.02, 0.02, threads=2, state="sleeping",
                                    cmdline=f"python worker.py --rank {k}", steady=True))
        pid_base = 100_000 + index * 1000
        running = tuple(SimpleNamespace(pid=pid_base + k, usedGpuMemory=p.memory_bytes) for k, p in enumerate(procs))
        gpu = _Gpu(index, name, scenario, tuple(procs), pid_base=pid_base, energy_offset_joules=1.0e6 * (index + 1),
                   running=running, memory_used_bytes=sum(p.memory_bytes for p in procs) + 512 * 2**20,
                   identity=identify("", self.job.environ(index)) if self.job and procs else None)
        gpu.steady_host = {pid_base + k: _host_process(gpu, k, 1.0) for k, p in enumerate(procs) if p.steady}
        return gpu

    # -- control (tests, demo) ----------------------------------------------------------------
    def set_scenario(self, index: int, name: str) -> None:
        check_scenarios([name])
        with self._lock:
            self._gpus[index] = self._make_gpu(index, name, len(self._gpus[index].processes) or 1)

    def scenario_of(self, index: int) -> str:
        return self._gpus[index].scenario_name

    def fail(self, index: int, function: str = "*", code: int | None = pynvml.NVML_ERROR_GPU_IS_LOST,
             block_seconds: float = 0.0) -> None:
        """Make ``function`` (or every function, ``*``) on GPU ``index`` fail or block."""
        with self._lock:
            self._faults[(index, function)] = (code, block_seconds)

    def heal(self, index: int) -> None:
        with self._lock:
            for key in [k for k in self._faults if k[0] == index]:
                del self._faults[key]

    # -- helpers ------------------------------------------------------------------------------
    def _gpu(self, handle: Any, function: str) -> _Gpu:
        index = handle.index
        fault = self._faults.get((index, function)) or self._faults.get((index, "*"))
        if fault is not None:
            code, block = fault
            if block:
                self.blocked_calls[(index, function)] += 1
                time.sleep(block)
            if code is not None:
                raise pynvml.NVMLError(code)
        return self._gpus[index]

    def _t(self) -> float:
        return self.clock() - self._start

    def _noise(self, gpu: _Gpu, key: str, t: float) -> float:
        """Deterministic noise in [-1, 1) for a seed, a GPU, a signal and a whole second.

        CRC-32 rather than ``hash()``: the same in every process (``hash`` of a str is salted),
        and cheap enough for thousands of simulated processes a tick.
        """
        return zlib.crc32(f"{self.seed}/{gpu.index}/{key}/{int(t)}".encode()) / 2**31 - 1.0

    def _activity(self, gpu: _Gpu, key: str, t1: float, t2: float) -> float:
        """Mean of a scenario signal over [t1, t2], with bursts and ±4 % noise."""
        s = gpu.scenario
        value = getattr(s, key)
        if s.burst_period_seconds and key not in ("power_watts",):
            # Busy for a share of each period, idle for the rest; the mean matches the scenario.
            duty = min(max(s.sm_active, 0.01), 0.99)
            busy = _overlap_fraction(t1, t2, s.burst_period_seconds, duty)
            value = value / duty * busy if duty else 0.0
        value *= 1.0 + 0.04 * self._noise(gpu, key, t2)
        return min(max(value, 0.0), 1.0) if not key.endswith("per_second") else max(value, 0.0)

    # -- pynvml's surface ---------------------------------------------------------------------
    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus)

    def nvmlSystemGetDriverVersion(self) -> str:
        return self._gpus[0].scenario.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self._gpus[0].scenario.cuda_driver_version

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        handle = SimpleNamespace(index=index)
        self._gpu(handle, "nvmlDeviceGetHandleByIndex")
        return handle

    def nvmlDeviceGetName(self, h: Any) -> str:
        self._gpu(h, "nvmlDeviceGetName")
        return CARD["name"]

    def nvmlDeviceGetUUID(self, h: Any) -> str:
        self._gpu(h, "nvmlDeviceGetUUID")
        return f"GPU-5f1a0c00-0000-4000-8000-{self.seed:06d}{h.index:06d}"

    def nvmlDeviceGetPciInfo(self, h: Any) -> Any:
        self._gpu(h, "nvmlDeviceGetPciInfo")
        return SimpleNamespace(busId=f"00000000:{0x18 + h.index:02X}:00.0")

    def nvmlDeviceGetMemoryInfo(self, h: Any) -> Any:
        gpu = self._gpu(h, "nvmlDeviceGetMemoryInfo")
        used = gpu.memory_used_bytes
        return SimpleNamespace(total=CARD["memory_total"], used=used, free=CARD["memory_total"] - used)

    def nvmlDeviceGetMaxClockInfo(self, h: Any, clock: int) -> int:
        self._gpu(h, "nvmlDeviceGetMaxClockInfo")
        return CARD["max_sm_clock"] if clock == pynvml.NVML_CLOCK_SM else CARD["max_memory_clock"]

    def nvmlDeviceGetClockInfo(self, h: Any, clock: int) -> int:
        gpu = self._gpu(h, "nvmlDeviceGetClockInfo")
        return int(gpu.scenario.sm_clock_mhz) if clock == pynvml.NVML_CLOCK_SM else CARD["max_memory_clock"]

    def nvmlDeviceGetMemoryBusWidth(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetMemoryBusWidth")
        return CARD["bus_width"]

    def nvmlDeviceGetEnforcedPowerLimit(self, h: Any) -> int:
        return int(self._gpu(h, "nvmlDeviceGetEnforcedPowerLimit").scenario.power_limit_watts * 1000)

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetPowerManagementDefaultLimit")
        return int(CARD["default_power_limit_watts"] * 1000)

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetMaxPcieLinkGeneration")
        return CARD["pcie_gen"]

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetMaxPcieLinkWidth")
        return 16

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetCurrPcieLinkGeneration")
        return CARD["pcie_gen"]

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetCurrPcieLinkWidth").scenario.pcie_link_width

    def nvmlDeviceGetNumaNodeId(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetNumaNodeId")
        return 0 if h.index < 4 else 1

    def nvmlDeviceGetMinorNumber(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetMinorNumber")
        return h.index  # /dev/nvidia<index>, as on most nodes

    # -- what `flopwatch doctor` reads: a well-kept node, apart from what a scenario changes ----
    def nvmlDeviceGetPersistenceMode(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetPersistenceMode")
        return pynvml.NVML_FEATURE_ENABLED

    def nvmlDeviceGetGpuMaxPcieLinkGeneration(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetGpuMaxPcieLinkGeneration")
        return CARD["pcie_gen"]

    def nvmlDeviceGetEccMode(self, h: Any) -> list[int]:
        self._gpu(h, "nvmlDeviceGetEccMode")
        return [pynvml.NVML_FEATURE_ENABLED, pynvml.NVML_FEATURE_ENABLED]

    def nvmlDeviceGetTotalEccErrors(self, h: Any, error_type: int, counter_type: int) -> int:
        self._gpu(h, "nvmlDeviceGetTotalEccErrors")
        return 0

    def nvmlDeviceGetRemappedRows(self, h: Any) -> tuple[int, int, int, int]:
        self._gpu(h, "nvmlDeviceGetRemappedRows")
        return (0, 0, 0, 0)  # correctable, uncorrectable, pending, failure

    def nvmlDeviceGetMigMode(self, h: Any) -> list[int]:
        self._gpu(h, "nvmlDeviceGetMigMode")
        return [pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_DISABLE]

    def nvmlDeviceGetCpuAffinity(self, h: Any, words: int) -> list[int]:
        # Two sockets of 32 CPUs (the simulated host has 64): GPUs 0-3 on the first.
        numa = self.nvmlDeviceGetNumaNodeId(h)
        mask = (2**32 - 1) << (32 * numa)
        return [mask >> (64 * w) & (2**64 - 1) for w in range(words)]

    def nvmlDeviceGetNvLinkState(self, h: Any, link: int) -> int:
        self._gpu(h, "nvmlDeviceGetNvLinkState")
        if link >= CARD["nvlinks"]:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return pynvml.NVML_FEATURE_ENABLED

    def nvmlGpmQueryDeviceSupport(self, h: Any) -> Any:
        self._gpu(h, "nvmlGpmQueryDeviceSupport")
        return SimpleNamespace(isSupportedDevice=1)

    def nvmlGpmSampleAlloc(self) -> Any:
        return SimpleNamespace(index=None, t=None)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        pass

    def nvmlGpmSampleGet(self, h: Any, sample: Any) -> Any:
        self._gpu(h, "nvmlGpmSampleGet")
        sample.index, sample.t = h.index, self._t()
        return sample

    class c_nvmlGpmMetricsGet_t(ctypes.Structure):  # noqa: N801 (pynvml's name)
        """pynvml's request, with the samples held as Python objects: the metrics are the real
        array, so the reader parses simulated results exactly as it parses NVML's."""

        _fields_ = [("version", ctypes.c_uint), ("numMetrics", ctypes.c_uint), ("sample1", ctypes.py_object),
                    ("sample2", ctypes.py_object), ("metrics", pynvml.c_nvmlGpmMetric_t * pynvml.NVML_GPM_METRIC_MAX)]

    NVML_GPM_METRICS_GET_VERSION = pynvml.NVML_GPM_METRICS_GET_VERSION

    _GPM_FIELDS = {
        pynvml.NVML_GPM_METRIC_SM_UTIL: "sm_active",
        pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: "sm_occupancy",
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: "tensor_active",
        pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL: "hmma_active",
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: "dram_active",
        pynvml.NVML_GPM_METRIC_FP16_UTIL: "fp16_active",
        pynvml.NVML_GPM_METRIC_FP32_UTIL: "fp32_active",
        pynvml.NVML_GPM_METRIC_FP64_UTIL: "fp64_active",
        pynvml.NVML_GPM_METRIC_INTEGER_UTIL: "integer_active",
        pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: "pcie_tx_bytes_per_second",
        pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: "pcie_rx_bytes_per_second",
        pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: "nvlink_tx_bytes_per_second",
        pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: "nvlink_rx_bytes_per_second",
    }

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        gpu = self._gpu(SimpleNamespace(index=request.sample2.index), "nvmlGpmMetricsGet")
        t1, t2 = request.sample1.t, request.sample2.t
        # The links share one signal each way: computed once a call, not once a link (36 on 18 links).
        answers: dict[str, float] = {}
        for i in range(request.numMetrics):
            metric = request.metrics[i]
            metric_id = metric.metricId
            key, link = self._GPM_FIELDS.get(metric_id), None
            if key is None and metric_id in _GPM_LINKS:
                key, link = _GPM_LINKS[metric_id]
            if key is None:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            value = answers.get(key)
            if value is None:
                value = answers[key] = self._activity(gpu, key, t1, t2)
            if link is not None:
                value /= CARD["nvlinks"]  # the links share the traffic evenly, so they sum to the total
            metric.nvmlReturn = pynvml.NVML_SUCCESS  # an OUT field: each call sets it, as NVML does
            metric.value = value / 2**20 if key.endswith("per_second") else value * 100.0
        return request

    def nvmlDeviceGetUtilizationRates(self, h: Any) -> Any:
        gpu = self._gpu(h, "nvmlDeviceGetUtilizationRates")
        t = self._t()
        value = self._activity(gpu, "nvml_utilization", t - 1.0, t)
        return SimpleNamespace(gpu=int(round(value * 100)), memory=int(round(gpu.scenario.dram_active * 100)))

    def _power(self, gpu: _Gpu, t: float) -> float:
        return gpu.scenario.power_watts * (1.0 + 0.03 * math.sin(t * 0.7 + gpu.index))

    def _energy(self, gpu: _Gpu, t: float) -> float:
        # ∫ P0 (1 + 0.03 sin(0.7 t + i)) dt, so counter and power always agree.
        p0 = gpu.scenario.power_watts
        return gpu.energy_offset_joules + p0 * t - p0 * 0.03 / 0.7 * math.cos(t * 0.7 + gpu.index)

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        gpu = self._gpu(h, "nvmlDeviceGetPowerUsage")
        return int(self._power(gpu, self._t()) * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, h: Any) -> int:
        gpu = self._gpu(h, "nvmlDeviceGetTotalEnergyConsumption")
        return int(self._energy(gpu, self._t()) * 1000)

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        gpu = self._gpu(h, "nvmlDeviceGetTemperature")
        return int(gpu.scenario.temperature_celsius + 2 * self._noise(gpu, "temperature", self._t()))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetCurrentClocksEventReasons").scenario.reasons

    def nvmlDeviceGetFieldValues(self, h: Any, field_ids: list[int]) -> list[Any]:
        gpu = self._gpu(h, "nvmlDeviceGetFieldValues")
        t = self._t()
        names = {getattr(pynvml, c): r for r, c in THROTTLE_FIELDS.items()}
        out = []
        for fid in field_ids:
            reason = names.get(fid)
            if reason is None:
                out.append(SimpleNamespace(nvmlReturn=pynvml.NVML_ERROR_NOT_SUPPORTED, value=None))
                continue
            ns = int(gpu.scenario.throttled.get(reason, 0.0) * t * 1e9)
            out.append(SimpleNamespace(nvmlReturn=0, value=SimpleNamespace(ullVal=ns)))
        return out

    def nvmlDeviceGetComputeRunningProcesses(self, h: Any) -> list[Any]:
        return list(self._gpu(h, "nvmlDeviceGetComputeRunningProcesses").running)

    def nvmlDeviceGetProcessUtilization(self, h: Any, last_seen: int) -> list[Any]:
        gpu = self._gpu(h, "nvmlDeviceGetProcessUtilization")
        if not gpu.processes:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        t = self._t()
        sm = self._activity(gpu, "sm_active", t - 1.0, t)
        stamp = int(self.wall_clock() * 1e6)
        # Like NVML, no sample for a process that ran nothing since the last read.
        return [
            SimpleNamespace(pid=gpu.pid_base + k, timeStamp=stamp, smUtil=int(round(sm * p.sm_share * 100)),
                            memUtil=int(round(gpu.scenario.dram_active * p.sm_share * 100)), encUtil=0, decUtil=0)
            for k, p in enumerate(gpu.processes) if p.sm_share > 0
        ]

    def __getattr__(self, name: str) -> Any:
        # Constants and error classes come from pynvml; NVML functions not simulated are absent,
        # exactly like a driver that lacks them.
        if name.startswith("nvml"):
            raise AttributeError(name)
        return getattr(pynvml, name)

    # -- the host side of the scenarios -------------------------------------------------------
    def host_sample(self, timestamp: float) -> HostSample:
        processes = {}
        iowait = cpu_pressure = io_pressure = load = 0.0
        t = self._t()
        for gpu in self._gpus:
            iowait = max(iowait, gpu.scenario.host_iowait_ratio)
            cpu_pressure = max(cpu_pressure, gpu.scenario.host_cpu_pressure_ratio)
            io_pressure = max(io_pressure, gpu.scenario.host_io_pressure_ratio)
            load = max(load, gpu.scenario.host_load_per_core)
            processes.update(gpu.steady_host)
            for k, p in enumerate(gpu.processes):
                if not p.steady:
                    jitter = 1.0 + 0.03 * self._noise(gpu, f"cpu{k}", t)
                    processes[gpu.pid_base + k] = _host_process(gpu, k, jitter)
        return HostSample(timestamp=timestamp, cpu_count=64, cpu_busy_ratio=min(load, 1.0), iowait_ratio=iowait,
                          processes=processes, cpu_pressure_ratio=cpu_pressure, io_pressure_ratio=io_pressure,
                          io_full_pressure_ratio=io_pressure / 2, load_per_core=load)


def _host_process(gpu: _Gpu, k: int, jitter: float) -> HostProcess:
    p = gpu.processes[k]
    busiest = min(p.busiest_thread_cpu_ratio * jitter, 1.0)
    # The job's rank is the GPU's first process; a second one on it (contention) is a stranger.
    identity = gpu.identity if k == 0 else None
    return HostProcess(
        pid=gpu.pid_base + k, name=p.name, user=p.user, cmdline=p.cmdline, state=p.state,
        cpu_ratio=p.cpu_ratio * jitter, busiest_thread_cpu_ratio=busiest,
        thread_demand_ratio=busiest + p.thread_wait_ratio, thread_wait_ratio=p.thread_wait_ratio,
        children_wait_ratio=0.0 if p.children else None, ppid=1, threads=p.threads, threads_in_disk_wait=p.threads_in_disk_wait, children=p.children,
        children_cpu_ratio=p.children_cpu_ratio * jitter, rss_bytes=4 * GIB,
        io_read_bytes_per_second=p.io_read_bytes_per_second, io_write_bytes_per_second=0.0,
        job=job_name(JOB_RULES, identity, p.user, p.cmdline.split()[-1] if p.cmdline else p.name),
        identity=identity,
    )


def _overlap_fraction(t1: float, t2: float, period: float, duty: float) -> float:
    """Share of [t1, t2] inside the busy part [0, duty·period) of each period."""
    if t2 <= t1:
        return duty

    def busy_until(t: float) -> float:
        whole, rest = divmod(t, period)
        return whole * duty * period + min(rest, duty * period)

    return (busy_until(t2) - busy_until(t1)) / (t2 - t1)


class SimulatedHost:
    """The host source for simulated GPUs: their processes' CPU, threads and I/O, read at the real
    host source's cadence (every counter interval, carried between)."""

    name = "host"

    def __init__(self, lib: SimulatedNvml, counter_interval_seconds: float = 10.0):
        self.lib = lib
        self._cadence = Cadence(lambda pids, timestamp: lib.host_sample(timestamp), counter_interval_seconds,
                                lib.clock)

    def read(self, pids: Any, timestamp: float) -> HostSample:
        return self._cadence.read(pids, timestamp)
