"""The one table of diagnosis thresholds (config section [diagnosis]). docs/causes.md explains each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Thresholds:
    # Paging signal: SM active below this for alert_after_seconds pages.
    utilization_threshold: float = 0.6
    alert_after_seconds: float = 120.0
    # A finding needs this much history; the window slides over the last window_seconds.
    min_window_seconds: float = 3.0
    window_seconds: float = 30.0
    # A GPU's ticks are cut into segments judged alone (judge/regime.py): a new one starts when its
    # processes change, or when the mean of the last regime_change_seconds is on the other side of
    # the utilization threshold by regime_margin.
    regime_change_seconds: float = 5.0
    regime_margin: float = 0.1
    # A new segment's ticks under the threshold wait at most this long for its cause (judge/ledger.py).
    charge_hold_seconds: float = 15.0
    # A named segment's ticks are charged this long after they happened, so that a change of work
    # seen within it moves them to the segment it starts (judge/ledger.py). Below charge_hold_seconds
    # (config.check_relations).
    charge_settle_seconds: float = 10.0
    # Every tick enters the window; the window is diagnosed this often.
    evaluation_interval_seconds: float = 5.0
    # A new cause must lead for this long before it replaces the current one (no flapping).
    switch_after_seconds: float = 10.0
    # A process with this much GPU memory and SM active under idle_sm_active is holding, not working.
    idle_sm_active: float = 0.05
    held_memory_bytes: float = 256 * 2**20
    # Host CPU: a thread (or the loader workers, each) that runs, or runs and waits on the run queue,
    # this share of a core is CPU-bound: saturated when it gets its core, starved of one when it waits.
    cpu_saturated_ratio: float = 0.8
    # ...and waits this share of a core for a CPU: the host's cores are taken by other work.
    cpu_runqueue_wait_ratio: float = 0.2
    # The process is doing something on the CPU (not just sleeping while holding the GPU).
    cpu_busy_ratio: float = 0.3
    # io_bound: threads waiting on block I/O (disk-sleep, or delay accounting's count), or host iowait
    # or I/O pressure (PSI some) while these processes read; or they move this many bytes a second
    # from storage with no thread CPU-bound (the disk is what they wait for).
    disk_wait_threads: float = 0.5
    iowait_ratio: float = 0.2
    io_pressure_ratio: float = 0.3
    io_read_bytes_per_second: float = 10e6
    io_busy_bytes_per_second: float = 100e6
    # io_bound before host_transfer_bound: the storage traffic is at least this share of PCIe's (the
    # bytes on the bus are the disk's, passing through).
    io_share_of_pcie: float = 0.5
    # host_transfer_bound: PCIe traffic while the SMs wait.
    pcie_busy_bytes_per_second: float = 1.0e9
    # launch_bound: kernels ran for this many times longer than the SMs had work (tiny kernels),
    # or ran this share of the time while the SMs stayed under the threshold (too small to fill them).
    launch_kernel_time_over_sm_active: float = 2.0
    launch_min_kernel_time: float = 0.1
    launch_busy_kernel_time: float = 0.9
    # launch_bound by framework overhead: the processes keep cpu_saturated_ratio of a core busy, no
    # thread saturated (the main and autograd threads take turns), kernels this much longer than the
    # SMs had work.
    launch_overhead_kernel_time_over_sm_active: float = 1.2
    # low_demand (ticket): SM activity at least idle_sm_active, kernel time within this many times of
    # it (the kernels that run fill the SMs), the host quiet (under cpu_busy_ratio, no storage I/O,
    # PCIe under this): there is little work, and it is done efficiently.
    low_demand_kernel_time_over_sm_active: float = 1.5
    low_demand_pcie_bytes_per_second: float = 100e6
    # Busy-but-inefficient tickets.
    memory_bound_dram_active: float = 0.6
    memory_bound_max_flops_utilization: float = 0.3
    # memory_bound beside another cause: DRAM active at least this share of SM activity, that at
    # least the minimum (the kernels that run read DRAM nearly all the time they hold the SMs; the
    # H100 corpus: batch-1 decodes 1.06-1.11, elementwise 0.91, other work 0.85 at most).
    memory_bound_dram_over_sm_active: float = 0.9
    memory_bound_min_sm_active: float = 0.05
    fp_pipe_busy: float = 0.2
    tensor_idle: float = 0.05
    # Clocks: throttled for this fraction of the window, and the SM clock below this share of max.
    throttle_fraction: float = 0.2
    clock_ratio_low: float = 0.85
    # Contention: this many processes each with at least this SM share; it leads under the threshold
    # only where their work keeps the SMs at least contention_min_sm_active busy (else each one's own
    # gaps leave most of the GPU idle, whatever turns they wait for: their own cause leads).
    contention_processes: int = 2
    contention_min_sm_ratio: float = 0.1
    contention_min_sm_active: float = 0.2
    # communication_bound: interconnect traffic while SMs wait, and the job's other GPUs waiting
    # with this one (this share of them under the threshold too, averaged over the window).
    nvlink_busy_bytes_per_second: float = 5.0e9
    # NVLink busy: this share of the card's NVLink bandwidth (the bytes above where the card's peak
    # is unknown). A GPU over the utilization threshold still waits on the interconnect (ticket)
    # while NVLink is busy and the SMs are active less than this.
    nvlink_busy_ratio: float = 0.15
    communication_max_utilization: float = 0.8
    peers_below_ratio: float = 0.75
    # input_starved through a peer: for this share of the window, another GPU of the job waiting
    # with this one had saturated loaders (DDP ranks step together: all wait for the slowest).
    peer_starved_ratio: float = 0.5
