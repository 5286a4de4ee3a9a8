"""Read the facts ``flopwatch doctor`` checks: NVML through a pynvml-compatible ``lib`` (pynvml
itself or the simulated library), the OS, the NUMA layout and the kernel log's Xid records.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

_NODE_DIR = Path("/sys/devices/system/node")
_KMSG_RECORD = re.compile(r"^\d+,\d+,(?P<usec>\d+),[^;]*;(?P<message>.*)$")
_XID = re.compile(r"NVRM: Xid \(PCI:(?P<bus>[0-9a-fA-F:.]+)\): (?P<code>\d+)")


@dataclass(frozen=True)
class XidEvent:
    pci_bus_id: str
    code: int
    seconds_since_boot: float
    message: str


@dataclass(frozen=True)
class GpuFacts:
    index: int
    name: str | None = None
    pci_bus_id: str | None = None
    error: str | None = None  # the GPU could not be opened
    persistence_mode: bool | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None  # of the link: the card's and the slot's best
    pcie_gen_gpu_max: int | None = None  # of the card alone
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    utilization_ratio: float | None = None  # an idle link may train down to save power
    power_limit_watts: float | None = None  # enforced
    default_power_limit_watts: float | None = None
    clock_event_reasons: int | None = None
    ecc_enabled: bool | None = None
    ecc_pending_enabled: bool | None = None
    ecc_uncorrected_volatile: int | None = None  # since the driver loaded
    ecc_uncorrected_aggregate: int | None = None  # over the card's life
    remapped_rows_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    mig_enabled: bool | None = None
    mig_pending_enabled: bool | None = None
    gpm_supported: bool | None = None
    numa_node: int | None = None
    cpus: tuple[int, ...] | None = None  # CPUs close to the GPU
    xid_events: tuple[XidEvent, ...] = ()


@dataclass(frozen=True)
class NodeFacts:
    os_name: str
    os_release: str
    driver_version: str | None = None
    cuda_driver_version: int | None = None  # NVML's encoding: 12080 is CUDA 12.8
    nvml_error: str | None = None
    numa_nodes: int | None = None
    kernel_log_readable: bool | None = None  # None: not consulted (simulated GPUs)
    seconds_since_boot: float | None = None
    # What the kernel tells of the GPU processes' host side (None: not consulted).
    pressure_stall: bool | None = None  # /proc/pressure (PSI)
    schedstat: bool | None = None  # per-thread run-queue wait
    task_delayacct: bool | None = None  # block-I/O delay per thread (kernel.task_delayacct)
    gpus: tuple[GpuFacts, ...] = ()


def read_facts(lib: Any, kernel_log: Sequence[str] = (), *, kernel_log_readable: bool | None = None,
               init: bool = True) -> NodeFacts:
    """Everything doctor checks. ``kernel_log`` holds /dev/kmsg records (see read_kernel_log);
    ``kernel_log_readable`` None means the log was not consulted (simulated GPUs)."""
    base = dict(os_name=platform.system(), os_release=platform.release(), numa_nodes=_numa_nodes(),
                kernel_log_readable=kernel_log_readable, **_host_evidence(),
                # kmsg stamps records on the monotonic clock (time since boot, as Python's on Linux).
                seconds_since_boot=time.monotonic())
    if init:
        try:
            lib.nvmlInit()
        except (lib.NVMLError, OSError) as e:  # no driver, or no libnvidia-ml.so at all
            return NodeFacts(nvml_error=str(e) or type(e).__name__, **base)
    try:
        events = parse_xid_events(kernel_log)
        count = _query(lib, "nvmlDeviceGetCount") or 0
        return NodeFacts(
            driver_version=_text(_query(lib, "nvmlSystemGetDriverVersion")),
            cuda_driver_version=_query(lib, "nvmlSystemGetCudaDriverVersion"),
            gpus=tuple(_gpu_facts(lib, i, events) for i in range(count)),
            **base,
        )
    finally:
        if init:
            _query(lib, "nvmlShutdown")


def _host_evidence() -> dict[str, bool | None]:
    delayacct = _read_text("/proc/sys/kernel/task_delayacct")  # absent before Linux 5.14: on where built in
    return dict(pressure_stall=_read_text("/proc/pressure/cpu") is not None,
                schedstat=_read_text(f"/proc/{os.getpid()}/schedstat") is not None,
                task_delayacct=delayacct.strip() == "1" if delayacct is not None else None)


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_kernel_log(path: str = "/dev/kmsg") -> list[str] | None:
    """The kernel's message buffer as /dev/kmsg records, or None where this user may not read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        log.debug("cannot open %s: %s", path, e)
        return None
    try:
        return list(_records(fd))
    except OSError as e:
        log.debug("reading %s failed: %s", path, e)
        return None
    finally:
        os.close(fd)


def _records(fd: int) -> Iterator[str]:
    while True:
        try:
            record = os.read(fd, 8192)  # /dev/kmsg gives one record per read
        except BlockingIOError:  # all there is has been read
            return
        except BrokenPipeError:  # the ring buffer overwrote the next record: go on
            continue
        if not record:
            return
        yield record.decode(errors="replace")


def _gpu_facts(lib: Any, index: int, events: list) -> GpuFacts:
    try:
        handle = lib.nvmlDeviceGetHandleByIndex(index)
    except lib.NVMLError as e:
        return GpuFacts(index=index, error=f"cannot open GPU {index}: {e}")
    q = lambda name, *args: _query(lib, name, handle, *args)  # noqa: E731
    pci = q("nvmlDeviceGetPciInfo")
    bus_id = _text(getattr(pci, "busId", None))
    ecc = q("nvmlDeviceGetEccMode")
    remap = q("nvmlDeviceGetRemappedRows")
    mig = q("nvmlDeviceGetMigMode")
    gpm = q("nvmlGpmQueryDeviceSupport")
    utilization = q("nvmlDeviceGetUtilizationRates")
    numa = q("nvmlDeviceGetNumaNodeId")
    return GpuFacts(
        index=index,
        name=_text(q("nvmlDeviceGetName")),
        pci_bus_id=bus_id,
        persistence_mode=_flag(q("nvmlDeviceGetPersistenceMode")),
        pcie_gen_current=q("nvmlDeviceGetCurrPcieLinkGeneration"),
        pcie_gen_max=q("nvmlDeviceGetMaxPcieLinkGeneration"),
        pcie_gen_gpu_max=q("nvmlDeviceGetGpuMaxPcieLinkGeneration"),
        pcie_width_current=q("nvmlDeviceGetCurrPcieLinkWidth"),
        pcie_width_max=q("nvmlDeviceGetMaxPcieLinkWidth"),
        utilization_ratio=utilization.gpu / 100 if utilization is not None else None,
        power_limit_watts=_watts(q("nvmlDeviceGetEnforcedPowerLimit")),
        default_power_limit_watts=_watts(q("nvmlDeviceGetPowerManagementDefaultLimit")),
        clock_event_reasons=q("nvmlDeviceGetCurrentClocksEventReasons"),
        ecc_enabled=_flag(ecc[0]) if ecc is not None else None,
        ecc_pending_enabled=_flag(ecc[1]) if ecc is not None else None,
        ecc_uncorrected_volatile=q("nvmlDeviceGetTotalEccErrors", lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                   lib.NVML_VOLATILE_ECC),
        ecc_uncorrected_aggregate=q("nvmlDeviceGetTotalEccErrors", lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                    lib.NVML_AGGREGATE_ECC),
        remapped_rows_uncorrectable=remap[1] if remap is not None else None,
        remap_pending=_flag(remap[2]) if remap is not None else None,
        remap_failure=_flag(remap[3]) if remap is not None else None,
        mig_enabled=_flag(mig[0]) if mig is not None else None,
        mig_pending_enabled=_flag(mig[1]) if mig is not None else None,
        gpm_supported=bool(gpm.isSupportedDevice) if gpm is not None else None,
        numa_node=numa,
        cpus=_affinity(q("nvmlDeviceGetCpuAffinity", _cpu_words())),
        xid_events=tuple(e for e in events if bus_id and same_pci_device(e.pci_bus_id, bus_id)),
    )


def _query(lib: Any, name: str, *args: Any) -> Any:
    """One NVML call; None where the function is missing or the driver cannot answer."""
    fn = getattr(lib, name, None)
    if fn is None:
        return None
    try:
        return fn(*args)
    except lib.NVMLError as e:
        log.debug("%s: %s", name, e)
        return None


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else milliwatts / 1000


def _cpu_words() -> int:
    return max(1, ((os.cpu_count() or 1) + 63) // 64)


def _affinity(words: Any) -> tuple[int, ...] | None:
    """NVML's CPU bitmask (an array of 64-bit words) → the CPU numbers set in it."""
    if words is None:
        return None
    return tuple(64 * w + bit for w, word in enumerate(words) for bit in range(64) if int(word) >> bit & 1)


def _numa_nodes() -> int | None:
    try:
        return sum(1 for p in _NODE_DIR.iterdir() if p.name.startswith("node") and p.name[4:].isdigit())
    except OSError:
        return None


def parse_xid_events(records: Iterable[str]) -> list[XidEvent]:
    """Xid events from /dev/kmsg records ("6,1234,567890,-;NVRM: Xid (PCI:0000:18:00): 79, ...")."""
    events = []
    for record in records:
        m = _KMSG_RECORD.match(record)
        xid = _XID.search(m["message"]) if m else None
        if xid:
            events.append(XidEvent(xid["bus"], int(xid["code"]), int(m["usec"]) / 1e6, m["message"].strip()))
    return events


def same_pci_device(xid_bus: str, nvml_bus: str) -> bool:
    """Whether an Xid's "0000:18:00" and NVML's "00000000:18:00.0" name the same device."""
    return _pci_key(xid_bus) == _pci_key(nvml_bus)


def _pci_key(bus_id: str) -> tuple[int, int, int] | None:
    parts = bus_id.split(".")[0].split(":")
    try:
        domain, bus, device = (int(p, 16) for p in parts[-3:])
    except ValueError:
        return None
    return domain, bus, device
