"""The host cannot feed the GPU: input_starved, io_bound, host_transfer_bound."""

from __future__ import annotations

from dataclasses import replace

from flopwatch.model import Finding
from flopwatch.thresholds import Thresholds
from flopwatch.judge.causes.rule import Cause, Context, finding, strength
from flopwatch.judge.signals import Signals

INPUT_STARVED = Cause(
    "input_starved", "GPU starved by a CPU-bound input pipeline",
    "The GPU waits for the input pipeline, which is CPU-bound. Raise DataLoader num_workers, set "
    "pin_memory=True and persistent_workers=True, prefetch; use a fast (Rust) tokenizer in batch mode or "
    "pre-tokenize; store data in a binary format.")
# input_starved where the feeding thread wants a core and waits for one: the fix is the host's cores.
CPU_CONTENDED = Cause(
    "input_starved", "GPU starved: its input thread waits for CPUs taken by other processes",
    "The thread feeding the GPU is runnable but waits for a CPU: other processes hold the host's cores. Free "
    "the cores (move or stop the other work), reserve CPUs for the job (cgroup cpu.weight/cpuset, Slurm "
    "--cpus-per-task, a Kubernetes CPU request), or run it on a less loaded node. More loader workers would "
    "only queue for the same cores.")
IO_BOUND = Cause(
    "io_bound", "GPU starved by storage I/O",
    "The input pipeline waits on storage. Stage data on local NVMe, use larger sequential reads "
    "(WebDataset/TFRecord shards), more loader workers, or cache the dataset in RAM.")
HOST_TRANSFER_BOUND = Cause(
    "host_transfer_bound", "GPU waiting on host-to-device copies",
    "Host-to-device copies dominate. Use pinned memory (pin_memory=True) with non_blocking copies, overlap "
    "copies with compute, and keep data on the GPU.")


def io_bound(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """The loader waits on storage, not on CPU. Where PCIe is busy too, the storage traffic must be
    a share of it: then the bytes on the bus are the disk's, passing through."""
    if c.io_confidence is not None and (not c.pcie_busy or c.storage >= th.io_share_of_pcie * c.pcie):
        return finding(IO_BOUND, "page", c.io_confidence, s, threads_in_disk_wait=s.threads_in_disk_wait,
                       blkio_delay_threads=s.blkio_delay_ratio, main_thread_disk_wait=s.main_thread_disk_wait_ratio,
                       iowait_ratio=s.iowait_ratio,
                       io_pressure=s.io_pressure_ratio, io_read_bytes_per_second=s.io_read_bytes_per_second,
                       io_write_bytes_per_second=s.io_write_bytes_per_second,
                       loader_io_bytes_per_second=s.children_io_bytes_per_second, storage_bytes_per_second=c.storage,
                       process_cpu_cores=s.cpu_ratio, pcie_bytes_per_second=s.pcie_bytes_per_second)
    return None


def host_transfer_bound(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Copies from pageable memory are staged by a CPU memcpy and serialize with compute."""
    if c.pcie_busy:
        return finding(HOST_TRANSFER_BOUND, "page", strength(c.pcie, th.pcie_busy_bytes_per_second),
                       s, pcie_bytes_per_second=s.pcie_bytes_per_second,
                       busiest_thread_cpu_cores=s.busiest_thread_cpu_ratio)
    return None


def input_starved_by_peer(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """This rank waits in its all-reduce for one whose loaders cannot keep up: the job is starved
    (data-parallel ranks step together, so all wait for the slowest rank's loaders)."""
    if c.waiting_on_peers and (s.peer_starved_ratio or 0.0) >= th.peer_starved_ratio:
        return finding(INPUT_STARVED, "page", 0.7, s, peer_starved_ratio=s.peer_starved_ratio,
                       nvml_utilization=c.kernel_time, loader_workers=s.children,
                       loader_cpu_cores=s.children_cpu_ratio, job_gpus=s.job_gpus + 1)
    return None


def input_starved(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """A single-threaded stage or too few loader workers cannot keep up: a thread (or each worker)
    runs, or runs and waits on the run queue, about a full core. Where it waits for a CPU, the
    host's other work holds the cores, and the fix is theirs."""
    if not (c.thread_saturated or c.loaders_saturated):
        return None
    demand = max(c.demand, c.loader_demand)
    evidence = dict(busiest_thread_cpu_cores=s.busiest_thread_cpu_ratio, loader_workers=s.children,
                    loader_cpu_cores=s.children_cpu_ratio, process_cpu_cores=s.cpu_ratio,
                    nvlink_bytes_per_second=s.nvlink_bytes_per_second)
    if not c.waits_for_cpu:
        return finding(INPUT_STARVED, "page", strength(demand, th.cpu_saturated_ratio) - 0.1, s, **evidence)
    # The scheduler's own counters prove the thread was runnable and had no CPU; PSI, the load and
    # the cores busy beyond this job's own say the host's other work held them.
    others = None
    if s.host_cpu_busy_ratio is not None and s.cpu_count:
        others = max(s.host_cpu_busy_ratio * s.cpu_count - s.cpu_ratio - s.children_cpu_ratio, 0.0)
    return finding(CPU_CONTENDED, "page", strength(demand, th.cpu_saturated_ratio), s, **evidence,
                   thread_demand_cores=s.thread_demand_ratio,
                   thread_run_cores=(s.thread_demand_ratio or 0.0) - (s.thread_wait_ratio or 0.0),
                   thread_wait_cores=s.thread_wait_ratio, loader_wait_cores=s.children_wait_ratio,
                   cpu_pressure=s.cpu_pressure_ratio, load_per_core=s.load_per_core,
                   other_processes_cpu_cores=others, cpu_count=s.cpu_count)
