"""Derived figures from one GPU's sample (and the previous one, for counters). Pure: no I/O."""

from __future__ import annotations

from flopwatch.model import GpuFigures, GpuSample
from flopwatch.judge.calibration import Calibrations
from flopwatch.judge.peaks import Peaks

SHIPPED = Calibrations()  # no stored factors: the shipped ones, where the card has them


def peak_memory_bytes_per_second(sample: GpuSample, peaks: Peaks | None) -> float | None:
    if peaks is not None:
        return peaks.memory_bytes_per_second
    info = sample.info
    if info.max_memory_clock_mhz and info.memory_bus_width_bits and "HBM" in info.name.upper():
        # HBM: two transfers a clock on every bit of the bus.
        return info.max_memory_clock_mhz * 1e6 * 2 * info.memory_bus_width_bits / 8
    return None


def achieved_flops(sample: GpuSample, peaks: Peaks | None) -> float | None:
    """Pipe activity × each pipe's peak at the current SM clock (each peak scaled from the clock its
    datasheet figure is quoted at, and by what an active cycle of that pipe delivers), summed."""
    if peaks is None or sample.source_quality != "gpm" or sample.sm_clock_mhz is None:
        return None
    tensor = sample.hmma_active if sample.hmma_active is not None else sample.tensor_active
    fp32, fp64, fp16 = sample.fp32_active, sample.fp64_active, sample.fp16_active
    if tensor is None and fp32 is None and fp64 is None and fp16 is None:
        return None
    tensor_flops = (tensor or 0.0) * peaks.tensor_flops * peaks.tensor_active_efficiency
    cuda_core_flops = ((fp32 or 0.0) * peaks.fp32_flops * peaks.fp32_active_efficiency
                       + (fp64 or 0.0) * peaks.fp64_flops + (fp16 or 0.0) * peaks.fp16_flops)
    return sample.sm_clock_mhz * (tensor_flops / peaks.spec_sm_clock_mhz + cuda_core_flops / peaks.fp_spec_sm_clock_mhz)


def throttle_fractions(sample: GpuSample, previous: GpuSample | None) -> dict[str, float]:
    if previous is None or sample.interval_seconds <= 0:
        return {}
    if sample.throttle_seconds is previous.throttle_seconds:  # handed back unchanged: nothing moved
        return dict.fromkeys(sample.throttle_seconds, 0.0)
    out = {}
    for reason, seconds in sample.throttle_seconds.items():
        before = previous.throttle_seconds.get(reason)
        if before is not None:
            out[reason] = min(max((seconds - before) / sample.interval_seconds, 0.0), 1.0)
    return out


def derive(sample: GpuSample, previous: GpuSample | None = None, calibrations: Calibrations = SHIPPED) -> GpuFigures:
    info = sample.info
    calibration = calibrations.resolve(info.name, info.driver_version)
    peaks = calibration.peaks if calibration is not None else None
    flops = achieved_flops(sample, peaks)
    peak_bw = peak_memory_bytes_per_second(sample, peaks)
    dram_bytes = sample.dram_active * peak_bw if sample.dram_active is not None and peak_bw else None
    energy_delta = None
    if sample.energy_joules is not None and previous is not None and previous.energy_joules is not None:
        energy_delta = max(sample.energy_joules - previous.energy_joules, 0.0)
    clock_ratio = None
    if sample.sm_clock_mhz is not None and info.max_sm_clock_mhz:
        clock_ratio = sample.sm_clock_mhz / info.max_sm_clock_mhz
    return GpuFigures(
        index=info.index,
        uuid=info.uuid,
        timestamp=sample.timestamp,
        interval_seconds=sample.interval_seconds,
        source_quality=sample.source_quality,
        utilization=sample.sm_active,
        sm_occupancy=sample.sm_occupancy,
        tensor_active=sample.tensor_active,
        dram_active=sample.dram_active,
        fp32_active=sample.fp32_active,
        fp64_active=sample.fp64_active,
        fp16_active=sample.fp16_active,
        flops_utilization=min(flops / peaks.tensor_flops, 1.0) if flops is not None and peaks else None,
        achieved_flops_per_second=flops,
        dram_bytes_per_second=dram_bytes,
        memory_turnover_per_second=dram_bytes / info.memory_total_bytes if dram_bytes is not None and info.memory_total_bytes else None,
        power_watts=sample.power_watts,
        energy_joules=sample.energy_joules,
        energy_joules_delta=energy_delta,
        sm_clock_ratio=clock_ratio,
        memory_used_bytes=sample.memory_used_bytes,
        memory_total_bytes=info.memory_total_bytes,
        throttle_fractions=throttle_fractions(sample, previous),
    )
