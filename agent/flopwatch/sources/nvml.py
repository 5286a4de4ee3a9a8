"""The NVML reader: static facts once, then cheap counter reads every tick.

``lib`` is the ``pynvml`` module or anything with the same functions (the simulated library), so
simulated GPUs run through exactly this code. Every NVML call goes through ``NvmlGpu._call``:
NotSupported-like errors become ``None`` and a note in ``GpuSample.unsupported``; a lost GPU
marks that GPU's sample with an error while the others go on, and it is reopened on later ticks.
GPUs are read on the tick's own thread: handing a read to another thread and back costs more
CPU than a GPU's cheap reads. A call that blocks holds only the tick it is in: the scheduler starts
the next tick beside it, which marks that GPU ``timeout`` without calling it and reads the others
(the agent drops the blocked tick once its call returns).

NVLink per link comes from GPM (``NVLINK_L<n>_TX/RX_PER_SEC``), not from the field values
``NVLINK_THROUGHPUT_DATA_TX/RX``: the link metrics ride in the GPM request that runs every tick
anyway (one call; 36 more metrics cost ~60 µs of CPU on an H100, driver 580), and GPM's
double-buffered samples cover every cycle between ticks, so rate × interval adds up to a byte
counter that misses nothing. GPM answers 0 for links that do not exist, so the links are the ones
``nvmlDeviceGetNvLinkState`` calls active at open. Cards without GPM (pre-Hopper) get no per-link
figures.
"""

from __future__ import annotations

import ctypes
import logging
import math
import struct
import threading
import time
from typing import Any, Callable, Mapping

from flopwatch.model import GpuInfo, GpuProcess, GpuSample, LinkTraffic
from flopwatch.sources import counter_period

log = logging.getLogger(__name__)

MIB = 1024 * 1024

# GPM metric ids (from pynvml) by the Sample field they fill. Ratios arrive as percent.
GPM_RATIOS = {
    "sm_active": "NVML_GPM_METRIC_SM_UTIL",
    "sm_occupancy": "NVML_GPM_METRIC_SM_OCCUPANCY",
    "tensor_active": "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    "hmma_active": "NVML_GPM_METRIC_HMMA_TENSOR_UTIL",
    "dram_active": "NVML_GPM_METRIC_DRAM_BW_UTIL",
    "fp16_active": "NVML_GPM_METRIC_FP16_UTIL",
    "fp32_active": "NVML_GPM_METRIC_FP32_UTIL",
    "fp64_active": "NVML_GPM_METRIC_FP64_UTIL",
    "integer_active": "NVML_GPM_METRIC_INTEGER_UTIL",
}
# Throughputs arrive in MiB/s.
GPM_RATES = {
    "pcie_tx_bytes_per_second": "NVML_GPM_METRIC_PCIE_TX_PER_SEC",
    "pcie_rx_bytes_per_second": "NVML_GPM_METRIC_PCIE_RX_PER_SEC",
    "nvlink_tx_bytes_per_second": "NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC",
    "nvlink_rx_bytes_per_second": "NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC",
}
# Clock-event reason time counters (ns), one field-values call a tick.
THROTTLE_FIELDS = {
    "sw_power_cap": "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP",
    "sw_thermal_slowdown": "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN",
    "hw_thermal_slowdown": "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN",
    "hw_power_brake_slowdown": "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN",
    "sync_boost": "NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST",
}
# Reasons NVML has no time counter for: accounted from the bitmask × the tick.
THROTTLE_BITS = {
    "hw_slowdown": 0x8,  # nvmlClocksEventReasonHwSlowdown
    "clocks_setting": 0x2,  # applications clocks, or clocks locked by the user (same bit)
}
FALLBACK_BITS = {
    "sw_power_cap": 0x4,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "sync_boost": 0x10,
}


class NvmlUnavailable(RuntimeError):
    """NVML cannot be initialised (no driver, no GPU)."""


class GpuLost(RuntimeError):
    pass


def _error_codes(lib: Any) -> tuple[set[int], set[int]]:
    unsupported = {
        getattr(lib, name)
        for name in (
            "NVML_ERROR_NOT_SUPPORTED",
            "NVML_ERROR_FUNCTION_NOT_FOUND",
            "NVML_ERROR_NO_PERMISSION",
            "NVML_ERROR_INVALID_ARGUMENT",
            "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
        )
        if hasattr(lib, name)
    }
    lost = {
        getattr(lib, name)
        for name in ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_TIMEOUT", "NVML_ERROR_UNINITIALIZED")
        if hasattr(lib, name)
    }
    return unsupported, lost


class NvmlGpu:
    """One GPU: its handle, static facts and the counters carried from tick to tick."""

    def __init__(self, lib: Any, index: int, *, counter_interval_seconds: float, clock: Callable[[], float]):
        self.lib = lib
        self.index = index
        self.counter_interval_seconds = counter_interval_seconds
        self.clock = clock
        self._unsupported_codes, self._lost_codes = _error_codes(lib)
        self._gpm_ids = {
            field: getattr(lib, const) for field, const in {**GPM_RATIOS, **GPM_RATES}.items() if hasattr(lib, const)
        }
        self._throttle_ids = {r: getattr(lib, c) for r, c in THROTTLE_FIELDS.items() if hasattr(lib, c)}
        self.open()

    # -- NVML access -------------------------------------------------------------------------
    def _call(self, name: str, *args: Any, not_found: Any = None) -> Any:
        """Call NVML; ``None`` where the GPU or driver cannot say; GpuLost where the GPU is gone;
        ``not_found`` where NVML has nothing to report (no sample since a timestamp)."""
        fn = getattr(self.lib, name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except self.lib.NVMLError as e:
            code = getattr(e, "value", None)
            if code == getattr(self.lib, "NVML_ERROR_NOT_FOUND", None):
                return not_found
            if code in self._lost_codes:
                raise GpuLost(f"{name}: {e}") from None
            if code not in self._unsupported_codes:
                log.debug("GPU %d: %s failed: %s", self.index, name, e)
            return None

    def open(self) -> None:
        self.handle = self._call("nvmlDeviceGetHandleByIndex", self.index)
        if self.handle is None:
            raise GpuLost(f"GPU {self.index}: no handle")
        self.info = self._read_info()
        self._gpm_previous = self._gpm_sample() if self.info.gpm_supported else None
        self._link_ids = self._nvlink_metric_ids() if self.info.gpm_supported else {}
        self._gpm_request = self._metrics_request() if self.info.gpm_supported else None
        self._link_bytes = {link: [0.0, 0.0] for link, _ in self._link_ids}
        self._last_process_timestamp = 0
        now = self.clock()
        self._last_read = now
        self.counters_period = counter_period(now, self.counter_interval_seconds)  # of the last read
        energy = self._call("nvmlDeviceGetTotalEnergyConsumption", self.handle)
        self._energy = SlowCounter(energy / 1000.0) if energy is not None else None
        throttle = self._throttle_counters()
        self._throttle = {r: SlowCounter(v) for r, v in (throttle or {}).items()}
        # Reasons with no NVML time counter are accounted from the bitmask alone.
        self._throttle_bits = {r: b for r, b in {**THROTTLE_BITS, **FALLBACK_BITS}.items() if r not in self._throttle}
        self._throttle_from_bits: dict[str, float] = dict.fromkeys(self._throttle_bits, 0.0)
        # The bits that move a total: a counted reason's between counter reads, the others' always.
        self._throttle_mask = 0
        for bits in (*self._throttle_bits.values(), *(FALLBACK_BITS[r] for r in self._throttle)):
            self._throttle_mask |= bits
        self._throttle_totals: Mapping[str, float] | None = None
        self._process_ratios: dict[int, tuple[float | None, float | None]] | None = None
        self._carried: tuple[dict[int, Any], tuple[GpuProcess, ...]] | None = None  # (memory by pid, processes)
        self._pcie_link_width: int | None = None

    def _read_info(self) -> GpuInfo:
        h = self.handle
        lib = self.lib
        memory = self._call("nvmlDeviceGetMemoryInfo", h)
        pci = self._call("nvmlDeviceGetPciInfo", h)
        cuda = self._call("nvmlSystemGetCudaDriverVersion")
        gpm = self._call("nvmlGpmQueryDeviceSupport", h)

        def watts(mw: Any) -> float | None:
            return mw / 1000.0 if mw is not None else None

        return GpuInfo(
            index=self.index,
            uuid=_text(self._call("nvmlDeviceGetUUID", h)) or f"GPU-{self.index}",
            name=_text(self._call("nvmlDeviceGetName", h)) or "unknown",
            pci_bus_id=_text(getattr(pci, "busId", "")) if pci is not None else "",
            memory_total_bytes=int(memory.total) if memory is not None else 0,
            driver_version=_text(self._call("nvmlSystemGetDriverVersion")) or "",
            cuda_driver_version=f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
            max_sm_clock_mhz=self._call("nvmlDeviceGetMaxClockInfo", h, lib.NVML_CLOCK_SM),
            max_memory_clock_mhz=self._call("nvmlDeviceGetMaxClockInfo", h, lib.NVML_CLOCK_MEM),
            memory_bus_width_bits=self._call("nvmlDeviceGetMemoryBusWidth", h),
            power_limit_watts=watts(self._call("nvmlDeviceGetEnforcedPowerLimit", h)),
            default_power_limit_watts=watts(self._call("nvmlDeviceGetPowerManagementDefaultLimit", h)),
            gpm_supported=bool(gpm is not None and getattr(gpm, "isSupportedDevice", 0)),
            pcie_link_gen_max=self._call("nvmlDeviceGetMaxPcieLinkGeneration", h),
            pcie_link_width_max=self._call("nvmlDeviceGetMaxPcieLinkWidth", h),
            numa_node=self._call("nvmlDeviceGetNumaNodeId", h),
            minor_number=self._call("nvmlDeviceGetMinorNumber", h),
        )

    def _nvlink_metric_ids(self) -> dict[tuple[int, int], int]:
        """GPM metric ids of the active links, by (link, 0 for tx | 1 for rx)."""
        lib = self.lib
        ids = {}
        for link in range(getattr(lib, "NVML_NVLINK_MAX_LINKS", 0)):
            names = (f"NVML_GPM_METRIC_NVLINK_L{link}_TX_PER_SEC", f"NVML_GPM_METRIC_NVLINK_L{link}_RX_PER_SEC")
            if not all(hasattr(lib, n) for n in names):
                break
            if self._call("nvmlDeviceGetNvLinkState", self.handle, link) == lib.NVML_FEATURE_ENABLED:
                ids[(link, 0)], ids[(link, 1)] = (getattr(lib, n) for n in names)
        return ids

    def _metrics_request(self) -> Any:
        """The GPM request, its metric ids set once: each tick sets only the two samples (each
        field set through pynvml's structures is a Python call)."""
        metric_ids = [*self._gpm_ids.values(), *self._link_ids.values()]
        request = self.lib.c_nvmlGpmMetricsGet_t()
        request.version = self.lib.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(metric_ids)
        for i, metric_id in enumerate(metric_ids):
            request.metrics[i].metricId = metric_id
        return request

    def _gpm_sample(self) -> Any:
        sample = self._call("nvmlGpmSampleAlloc")
        if sample is None or self._call("nvmlGpmSampleGet", self.handle, sample) is None:
            return None
        return sample

    def _throttle_counters(self) -> dict[str, float] | None:
        if not self._throttle_ids:
            return None
        values = self._call("nvmlDeviceGetFieldValues", self.handle, list(self._throttle_ids.values()))
        if values is None:
            return None
        out = {}
        for reason, value in zip(self._throttle_ids, values):
            if value.nvmlReturn != 0:
                return None
            out[reason] = value.value.ullVal / 1e9
        return out

    # -- one tick ----------------------------------------------------------------------------
    def read(self, timestamp: float) -> GpuSample:
        now = self.clock()
        interval = max(now - self._last_read, 1e-6)
        self._last_read = now
        h = self.handle
        lib = self.lib
        unsupported: list[str] = []

        gpm: dict[str, float | None] = {}
        links: tuple[LinkTraffic, ...] = ()
        if self._gpm_previous is not None:
            gpm, link_rates = self._read_gpm(unsupported)
            links = self._link_traffic(link_rates, interval)
        rates = self._call("nvmlDeviceGetUtilizationRates", h)
        nvml_utilization = rates.gpu / 100.0 if rates is not None else None
        quality = "gpm" if gpm.get("sm_active") is not None else "coarse"
        if quality == "coarse":
            # NVML's utilization.gpu is the share of time any kernel ran, not SM work: coarse.
            gpm["sm_active"] = nvml_utilization
            unsupported.append("gpm")

        memory = self._call("nvmlDeviceGetMemoryInfo", h)
        power_mw = self._call("nvmlDeviceGetPowerUsage", h)
        power_watts = power_mw / 1000.0 if power_mw is not None else None
        # Counters that cost milliseconds of CPU a read are read every few seconds; between reads
        # they are carried forward from cheap readings, and a read puts them right.
        period = counter_period(now, self.counter_interval_seconds)
        slow = period != self.counters_period
        self.counters_period = period
        energy_joules = self._read_energy(slow, interval, power_watts)
        sm_clock = self._call("nvmlDeviceGetClockInfo", h, lib.NVML_CLOCK_SM)
        memory_clock = self._call("nvmlDeviceGetClockInfo", h, lib.NVML_CLOCK_MEM)
        temperature = self._call("nvmlDeviceGetTemperature", h, lib.NVML_TEMPERATURE_GPU)
        reasons = self._call("nvmlDeviceGetCurrentClocksEventReasons", h)
        throttle_seconds = self._read_throttle(slow, reasons, interval)
        processes = self._read_processes(slow)
        if slow or self._pcie_link_width is None:
            self._pcie_link_width = self._call("nvmlDeviceGetCurrPcieLinkWidth", h)

        memory_used = int(memory.used) if memory is not None else None
        for name, value in (("power_watts", power_watts), ("energy_joules", energy_joules),
                            ("memory_used_bytes", memory_used), ("sm_clock_mhz", sm_clock)):
            if value is None:
                unsupported.append(name)
        return GpuSample(
            info=self.info, timestamp=timestamp, interval_seconds=interval, source_quality=quality,
            unsupported=tuple(unsupported), nvlink_links=links, nvml_utilization=nvml_utilization,
            memory_used_bytes=memory_used, power_watts=power_watts, energy_joules=energy_joules,
            sm_clock_mhz=sm_clock, memory_clock_mhz=memory_clock, temperature_celsius=temperature,
            clock_event_reasons=reasons, throttle_seconds=throttle_seconds,
            pcie_link_width=self._pcie_link_width, processes=processes, **gpm,
        )

    def _read_gpm(self, unsupported: list[str]) -> tuple[dict[str, float | None], dict[tuple[int, int], float]]:
        """The Sample fields from GPM, and the active links' rates in bytes/s by (link, tx|rx)."""
        current = self._gpm_sample()
        if current is None:
            return {}, {}
        previous, self._gpm_previous = self._gpm_previous, current
        request = self._gpm_request
        request.sample1 = previous
        request.sample2 = current
        result = self._call("nvmlGpmMetricsGet", request)
        self._call("nvmlGpmSampleFree", previous)
        if result is None:
            return {}, {}
        metrics = gpm_results(result, len(self._gpm_ids) + len(self._link_ids))
        out: dict[str, float | None] = {}
        for field, (code, value) in zip(self._gpm_ids, metrics):
            if code != 0:
                out[field] = None
                unsupported.append(field)
            elif not math.isfinite(value):  # GPM can answer NaN for a metric over a sample pair
                out[field] = None
            elif field in GPM_RATIOS:
                out[field] = min(max(value / 100.0, 0.0), 1.0)
            else:
                out[field] = max(value, 0.0) * MIB
        links = {key: max(value, 0.0) * MIB
                 for key, (code, value) in zip(self._link_ids, metrics[len(self._gpm_ids):])
                 if code == 0 and math.isfinite(value)}
        return out, links

    def _link_traffic(self, rates: dict[tuple[int, int], float], interval: float) -> tuple[LinkTraffic, ...]:
        """Per-link rates, and bytes since open: each tick's rate × its interval."""
        out = []
        for link, totals in self._link_bytes.items():
            tx, rx = rates.get((link, 0)), rates.get((link, 1))
            if tx is None or rx is None:
                continue
            totals[0] += tx * interval
            totals[1] += rx * interval
            out.append(LinkTraffic(link, tx, rx, totals[0], totals[1]))
        return tuple(out)

    def _read_energy(self, slow: bool, interval: float, power_watts: float | None) -> float | None:
        """Joules since the agent started: the counter every few seconds, power × time between."""
        if self._energy is None:
            return None
        counter = self._call("nvmlDeviceGetTotalEnergyConsumption", self.handle) if slow else None
        if counter is not None:
            return self._energy.read(counter / 1000.0)
        return self._energy.advance(power_watts * interval if power_watts is not None else 0.0)

    def _read_throttle(self, slow: bool, reasons: int | None, interval: float) -> Mapping[str, float]:
        """Seconds throttled since the agent started, by reason: NVML's time counters every few
        seconds, the current reason bits × the tick between."""
        read = slow and bool(self._throttle)
        if not read and not (reasons or 0) & self._throttle_mask and self._throttle_totals is not None:
            return self._throttle_totals  # no reason active and no counter read: nothing moved
        for reason, bits in self._throttle_bits.items():
            if reasons is not None and reasons & bits:
                self._throttle_from_bits[reason] += interval
        counters = self._throttle_counters() if read else None
        totals = dict(self._throttle_from_bits)
        for reason, counter in self._throttle.items():
            if counters is not None and reason in counters:
                totals[reason] = counter.read(counters[reason])
            else:
                active = reasons is not None and reasons & FALLBACK_BITS[reason]
                totals[reason] = counter.advance(interval if active else 0.0)
        self._throttle_totals = totals
        return totals

    def _read_processes(self, slow: bool) -> tuple[GpuProcess, ...]:
        """Processes and memory every tick; their SM shares (NVML's per-process samples since the
        last read, ~2 ms of CPU a call) every few seconds and when a process appears, carried
        forward between."""
        running = self._call("nvmlDeviceGetComputeRunningProcesses", self.handle) or []
        memory = {p.pid: p.usedGpuMemory for p in running}
        # A process new since the last read is read at once, so it has a share from its first tick.
        fresh = slow or self._process_ratios is None or not memory.keys() <= self._process_ratios.keys()
        if fresh:
            self._process_ratios = self._process_utilization(set(memory))
        elif self._carried is not None and self._carried[0] == memory:
            return self._carried[1]  # the same processes and memory, the same shares: last tick's answer
        # A fresh read also lists processes that ran since the last one and are gone: this tick only.
        pids = (memory.keys() | self._process_ratios.keys()) if fresh else memory.keys()
        out = []
        for pid in sorted(pids):
            used = memory.get(pid)
            sm, mem = self._process_ratios.get(pid, (None, None))
            out.append(GpuProcess(pid=pid, used_memory_bytes=int(used) if isinstance(used, int) else None,
                                  sm_ratio=sm, memory_ratio=mem))
        processes = tuple(out)
        self._carried = (memory, processes) if len(pids) == len(memory) else None
        return processes

    def _process_utilization(self, running: set[int]) -> dict[int, tuple[float | None, float | None]]:
        samples = self._call("nvmlDeviceGetProcessUtilization", self.handle, self._last_process_timestamp, not_found=[])
        by_pid: dict[int, list[Any]] = {}
        for s in samples or []:
            by_pid.setdefault(s.pid, []).append(s)
        if samples:
            self._last_process_timestamp = max(self._last_process_timestamp, max(s.timeStamp for s in samples))
        # No sample since the last read means the process ran nothing on the SMs; a call that failed
        # (not supported, no permission) says nothing of any process.
        idle = 0.0 if samples is not None else None
        out = {}
        for pid in running | by_pid.keys():
            seen = by_pid.get(pid)
            out[pid] = ((sum(s.smUtil for s in seen) / 100.0 / len(seen), sum(s.memUtil for s in seen) / 100.0 / len(seen))
                        if seen else (idle, idle))
        return out


def gpm_results(request: Any, count: int) -> list[tuple[int, float]]:
    """(nvmlReturn, value) of a GPM request's first ``count`` metrics, unpacked from the array's
    memory in one call: read field by field through pynvml's structures, each value costs a
    Python call (~40 a tick)."""
    array = type(request).metrics  # the ctypes field: where the array starts
    metric = type(request.metrics)._type_
    layout = _GPM_LAYOUTS.get(metric)
    if layout is None:
        size = ctypes.sizeof(metric)
        code_at, value_at = metric.nvmlReturn.offset, metric.value.offset
        layout = _GPM_LAYOUTS[metric] = struct.Struct(
            f"={code_at}xI{value_at - code_at - 4}xd{size - value_at - 8}x")
    raw = ctypes.string_at(ctypes.addressof(request) + array.offset, count * layout.size)
    return list(layout.iter_unpack(raw))


_GPM_LAYOUTS: dict[type, struct.Struct] = {}


class SlowCounter:
    """A counter read every few seconds, advanced by cheap estimates between reads.

    The total never goes backwards: if the estimates ran ahead of the counter, the total holds
    until the counter passes it, so the error never exceeds one read interval's drift.
    """

    def __init__(self, start: float):
        self.start = start
        self.total = 0.0

    def advance(self, estimate: float) -> float:
        self.total += estimate
        return self.total

    def read(self, value: float) -> float:
        self.total = max(self.total, value - self.start)
        return self.total


class NvmlSource:
    """All GPUs of the node. ``read()`` never raises for one GPU's failure."""

    name = "nvml"

    def __init__(
        self,
        lib: Any | None = None,
        *,
        counter_interval_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        if lib is None:
            import pynvml as lib
        self.lib = lib
        self.clock = clock
        self.wall_clock = wall_clock
        try:
            lib.nvmlInit()
            count = lib.nvmlDeviceGetCount()
        except lib.NVMLError as e:
            raise NvmlUnavailable(str(e)) from None
        except OSError as e:  # libnvidia-ml.so missing
            raise NvmlUnavailable(str(e)) from None
        self._kwargs = dict(counter_interval_seconds=counter_interval_seconds, clock=clock)
        self.gpus: list[NvmlGpu | None] = []
        self._last_info: dict[int, GpuInfo] = {}
        for index in range(count):
            self.gpus.append(self._open(index))
        # GPUs being read now, and since when: a GPU is never read by two ticks at once.
        self._reading: dict[int, float] = {}
        self._reading_lock = threading.Lock()

    def _open(self, index: int) -> NvmlGpu | None:
        try:
            gpu = NvmlGpu(self.lib, index, **self._kwargs)
        except (GpuLost, self.lib.NVMLError) as e:
            log.warning("GPU %d cannot be opened: %s", index, e)
            return None
        self._last_info[index] = gpu.info
        return gpu

    def read(self) -> list[GpuSample]:
        """Every GPU's sample for this tick, read on the calling thread. A GPU still being read by
        an earlier tick (its call blocks) is marked ``timeout`` and not called a second time."""
        timestamp = self.wall_clock()
        return [self._read_once(index, timestamp) for index in range(len(self.gpus))]

    @property
    def blocked(self) -> bool:
        """Whether some tick is inside a read now."""
        return bool(self._reading)

    def _read_once(self, index: int, timestamp: float) -> GpuSample:
        now = self.clock()
        with self._reading_lock:
            since = self._reading.get(index)
            if since is None:
                self._reading[index] = now
        if since is not None:
            log.warning("GPU %d: an earlier read has not returned in %.1f s", index, now - since)
            return self._lost_sample(index, timestamp, f"timeout: an earlier read has not returned in {now - since:.1f} s")
        try:
            return self._read_gpu(index, timestamp)
        except Exception:
            log.exception("reading GPU %d failed", index)
            return self._lost_sample(index, timestamp, "read failed")
        finally:
            with self._reading_lock:
                del self._reading[index]

    def _read_gpu(self, index: int, timestamp: float) -> GpuSample:
        gpu = self.gpus[index]
        if gpu is None:
            gpu = self.gpus[index] = self._open(index)
            if gpu is None:
                return self._lost_sample(index, timestamp, "cannot be opened")
        try:
            return gpu.read(timestamp)
        except GpuLost as e:
            log.warning("GPU %d lost: %s", index, e)
            self.gpus[index] = None
            return self._lost_sample(index, timestamp, str(e))

    def _lost_sample(self, index: int, timestamp: float, error: str) -> GpuSample:
        info = self._last_info.get(index) or GpuInfo(
            index=index, uuid=f"GPU-{index}", name="unknown", pci_bus_id="", memory_total_bytes=0,
            driver_version="", cuda_driver_version=None, max_sm_clock_mhz=None, max_memory_clock_mhz=None,
            memory_bus_width_bits=None, power_limit_watts=None, default_power_limit_watts=None,
            gpm_supported=False,
        )
        return GpuSample(info=info, timestamp=timestamp, interval_seconds=0.0, source_quality="none", error=error)

    def close(self) -> None:
        if self.blocked:
            return  # a call is still inside the library: leave it to the process's exit
        try:
            self.lib.nvmlShutdown()
        except self.lib.NVMLError:
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
