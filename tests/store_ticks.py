"""Synthetic ticks for the history store's tests and benchmark: plain values, no randomness."""

from __future__ import annotations

from flopwatch.model import (AgentState, Finding, GpuFigures, GpuInfo, GpuProcess, GpuSample, GpuState,
                             HostProcess, HostSample, ProcessView)


def gpu_info(index: int) -> GpuInfo:
    return GpuInfo(index=index, uuid=f"GPU-{index:08d}-0000-0000-0000-000000000000",
                   name="NVIDIA H100 80GB HBM3", pci_bus_id=f"00000000:{index:02X}:00.0",
                   memory_total_bytes=80 * 2**30, driver_version="580.65.06",
                   cuda_driver_version="13.0", max_sm_clock_mhz=1980.0, max_memory_clock_mhz=2619.0,
                   memory_bus_width_bits=5120, power_limit_watts=700.0,
                   default_power_limit_watts=700.0, gpm_supported=True)


def starved(evidence_cpu: float = 0.98) -> Finding:
    return Finding(cause="input_starved", severity="page", confidence=0.8,
                   evidence={"busiest_thread_cpu_ratio": evidence_cpu, "utilization": 0.31},
                   advice="Raise DataLoader num_workers.", summary="GPU waits for input")


def tick(ts: float, gpus: int = 1, processes: int = 2, finding: Finding | None = None,
         utilization: float = 0.9, job: str = "slurm:4242"):
    """One tick of ``gpus`` GPUs, each with ``processes`` processes of ``job``."""
    per_gpu = []
    host_processes = {}
    for index in range(gpus):
        info = gpu_info(index)
        procs = tuple(GpuProcess(pid=1000 + 10 * index + n, used_memory_bytes=(20 + n) * 2**30,
                                 sm_ratio=utilization / processes, memory_ratio=0.1)
                      for n in range(processes))
        for p in procs:
            host_processes[p.pid] = HostProcess(pid=p.pid, name="python", user="alice",
                                                cmdline="python train.py --epochs 3", job=job)
        sample = GpuSample(info=info, timestamp=ts, interval_seconds=1.0, source_quality="gpm",
                           processes=procs)
        figures = GpuFigures(
            index=index, uuid=info.uuid, timestamp=ts, interval_seconds=1.0, source_quality="gpm",
            utilization=utilization, sm_occupancy=0.42, tensor_active=0.37, dram_active=0.28,
            fp32_active=0.05, fp64_active=0.0, fp16_active=0.0, flops_utilization=0.31,
            achieved_flops_per_second=3.1e14, dram_bytes_per_second=9.4e11,
            memory_turnover_per_second=11.0, power_watts=512.5, energy_joules=1000.0 + ts,
            energy_joules_delta=512.5, sm_clock_ratio=0.99, memory_used_bytes=40 * 2**30,
            memory_total_bytes=info.memory_total_bytes)
        views = tuple(ProcessView(pid=p.pid, job=job, user="alice", cmdline="python train.py --epochs 3",
                                  sm_ratio=p.sm_ratio, memory_bytes=p.used_memory_bytes, cpu_ratio=1.0)
                      for p in procs)
        per_gpu.append(GpuState(sample=sample, figures=figures, finding=finding,
                                below_threshold=utilization < 0.6 or (finding is not None and finding.severity == "page"),
                                wasted_seconds={}, processes=views))
    host = HostSample(timestamp=ts, cpu_count=64, cpu_busy_ratio=0.2, iowait_ratio=0.0,
                      processes=host_processes)
    return AgentState(hostname="node1", timestamp=ts, ticks=1, gpus=tuple(per_gpu), host=host,
                      collector_success={}, collector_seconds={})


def process_samples_by_pid(engine, host: str) -> list[tuple[int, int]]:
    """(pid, memory_bytes) of a host's stored process samples, through their process rows: tick() gives
    process n of a GPU (n + 20) GiB, so a sample filed under the wrong process shows."""
    from sqlalchemy import text

    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(
            "SELECT p.pid, s.memory_bytes FROM process_samples s JOIN processes p ON p.id = s.process_id "
            "WHERE p.host = :host"), {"host": host})]
