"""A GPU with nothing, or little, to do: idle, held_idle, low_demand."""

from __future__ import annotations

from flopwatch.model import Finding
from flopwatch.thresholds import Thresholds
from flopwatch.judge.causes.rule import Cause, Context, finding
from flopwatch.judge.signals import Signals

IDLE = Cause(
    "idle", "GPU idle: no process",
    "No process uses this GPU. Release it to the scheduler or shrink the allocation.")
HELD_IDLE = Cause(
    "held_idle", "GPU memory held, no work",
    "A process holds GPU memory and runs nothing (often a notebook or a finished job waiting). Stop it or "
    "free the memory (torch.cuda.empty_cache, end the kernel).")
LOW_DEMAND = Cause(
    "low_demand", "GPU has little work to do (low demand)",
    "The GPU has little work: short efficient bursts (requests to a lightly used server), then waiting. "
    "Consolidate replicas onto fewer GPUs, autoscale on queue depth (down to zero), share the GPU (MIG, MPS, "
    "time-slicing), or batch requests.")


def idle(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Nobody is using an allocated GPU (a capacity question: a ticket)."""
    if s.processes == 0:
        return finding(IDLE, "ticket", 0.95, s, processes=0)
    return None


def held_idle(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """A notebook or finished job keeps its context and memory and does nothing. A process moving
    data from storage, or waiting on it, is not idle, however little it asks of the GPU and CPU."""
    if c.utilization < th.idle_sm_active and s.memory_held_bytes >= th.held_memory_bytes and \
            s.cpu_ratio + s.children_cpu_ratio < th.cpu_busy_ratio and c.kernel_time < th.launch_min_kernel_time \
            and c.storage < th.io_read_bytes_per_second and c.disk_waiting < th.disk_wait_threads:
        return finding(HELD_IDLE, "page", 0.9, s, memory_held_bytes=s.memory_held_bytes,
                       process_cpu_cores=s.cpu_ratio, processes=s.processes)
    return None


def low_demand(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Little work, done efficiently: the SMs are active now and then, and the kernels that run fill
    them (kernel time close to SM activity); nothing on the host is busy, waits or moves data, and
    the job's other GPUs are not waiting with this one."""
    if (c.utilization >= th.idle_sm_active
            and s.nvml_utilization is not None
            and s.nvml_utilization <= th.low_demand_kernel_time_over_sm_active * c.utilization
            and s.cpu_ratio + s.children_cpu_ratio < th.cpu_busy_ratio
            and (s.thread_wait_ratio or 0.0) < th.cpu_runqueue_wait_ratio
            and c.storage < th.io_read_bytes_per_second
            and (s.pcie_bytes_per_second or 0.0) < th.low_demand_pcie_bytes_per_second
            and not c.peers_low):
        return finding(LOW_DEMAND, "ticket", 0.6, s, nvml_utilization=s.nvml_utilization,
                       tensor_active=s.tensor_active, process_cpu_cores=s.cpu_ratio,
                       busiest_thread_cpu_cores=s.busiest_thread_cpu_ratio,
                       thread_wait_cores=s.thread_wait_ratio, io_bytes_per_second=c.storage,
                       pcie_bytes_per_second=s.pcie_bytes_per_second)
    return None
