"""The GPU's own work is the limit: launch_bound, memory_bound, no_tensor_cores, contention."""

from __future__ import annotations

from flopwatch.model import Finding
from flopwatch.thresholds import Thresholds
from flopwatch.judge.causes.rule import Cause, Context, finding, strength
from flopwatch.judge.signals import Signals

LAUNCH_BOUND = Cause(
    "launch_bound", "Kernels too small to keep the GPU busy (launch-bound)",
    "Each kernel has too few blocks to fill the SMs, or runs too briefly to outrun the CPU launching the next "
    "(Python and framework overhead). Use bigger batches, fuse ops (torch.compile), or capture the loop in "
    "CUDA graphs.")
MEMORY_BOUND = Cause(
    "memory_bound", "GPU bound by DRAM bandwidth",
    "DRAM bandwidth is the limit, not math. Batch requests (as Triton's dynamic batcher does), fuse "
    "elementwise ops, and quantize weights (bitsandbytes, GPTQ, TensorRT).")
NO_TENSOR_CORES = Cause(
    "no_tensor_cores", "GPU busy on FP32/FP64 pipes, tensor cores idle",
    "Math runs on the FP32/FP64 pipes while the tensor cores idle. Enable AMP (bf16/fp16 autocast) or TF32 "
    "(torch.backends.cuda.matmul.allow_tf32 = True).")
CONTENTION = Cause(
    "contention", "Several processes time-slice the GPU",
    "Several processes time-slice this GPU, each getting a share and paying context switches. Give each job "
    "its own GPU, or use MPS/MIG for deliberate sharing.")


# Under the threshold.

def contention(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Time-slicing holds the GPU back: each context runs in turn and switches cost, so processes
    that each keep launching work wait for each other's turns. Where their work keeps the SMs
    busy: on an H100, two small-batch MLP trainers (SM 0.56 alone, 0.72 together) each ran at 0.62
    of its pace alone. On a GPU whose SMs stay mostly idle the turns cost each little beside its
    own gaps, and one GPU each would leave each as idle (two batch-1 decoders at SM 0.07 together:
    0.93 and 0.97 of their pace alone; loops of one-element ops, 0.001: none slower; eager
    inference, 0.09: 0.93 and 0.68): their own cause leads. So do sharers that mostly wait on
    their own side (a quiet server, a loader), whose turns seldom meet. The sharing then
    contributes (``sharing``). Where a sharer's CPU is unknown, sharing leads."""
    found = sharing(s, c, th)
    if found is None or c.utilization < th.contention_min_sm_active:
        return None
    sharers = {*c.busy_shares, *c.launching}
    if not sharers <= s.process_cpu.keys():
        return found
    launching = sum(1 for pid in sharers if s.process_cpu[pid] >= th.cpu_busy_ratio)
    return found if launching >= th.contention_processes else None


def sharing(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Several processes share the GPU: each with a share of its own, or (their shares unknown)
    busy launching work on the CPU while kernels run."""
    if len(c.busy_shares) + len(c.launching) >= th.contention_processes and s.processes >= th.contention_processes:
        return _contention(s, "page", 0.8 if len(c.busy_shares) >= th.contention_processes else 0.6, c.launching)
    return None


def memory_bound(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """The kernels wait on DRAM; more SMs would not help."""
    if s.dram_active is not None and s.dram_active >= th.memory_bound_dram_active:
        return finding(MEMORY_BOUND, "page", strength(s.dram_active, th.memory_bound_dram_active), s,
                       dram_active=s.dram_active, flops_utilization=s.flops_utilization)
    return None


def memory_bound_kernels(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Beside another cause: the kernels that run read DRAM nearly all the time they hold the SMs
    (a batch-1 decode's GEMVs over the weights), so once the GPU stops waiting for them (CUDA
    graphs, a faster host) bandwidth is the next limit, however low the window's DRAM mean."""
    if s.dram_active is not None and c.utilization >= th.memory_bound_min_sm_active and \
            s.dram_active >= th.memory_bound_dram_over_sm_active * c.utilization:
        ratio = s.dram_active / c.utilization
        return finding(MEMORY_BOUND, "page", strength(ratio, th.memory_bound_dram_over_sm_active), s,
                       dram_active=s.dram_active, dram_active_over_sm_active=round(ratio, 2),
                       flops_utilization=s.flops_utilization)
    return None


def launch_bound(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Kernels so small that a launch occupies a few SMs, or too few blocks to fill the SMs while a
    kernel always runs (the launching thread then spins on the full queue and reads saturated: the
    GPU is not waiting for input). Unless the job's other GPUs wait too and its loaders are
    saturated: that is input_starved."""
    if c.kernels_outrun_sms and not (c.peers_low and c.loaders_saturated):
        over_sm_active = c.kernel_time / max(c.utilization, 1e-3)
        return _launch_bound(s, strength(over_sm_active, th.launch_kernel_time_over_sm_active))
    return None


def launch_bound_overhead(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """About a core of host work spread over threads (Python on the main thread, the autograd
    engine's own) while kernels too small to fill the SMs leave gaps: framework overhead."""
    if c.kernels_run and s.cpu_ratio >= th.cpu_saturated_ratio and \
            c.kernel_time >= th.launch_overhead_kernel_time_over_sm_active * max(c.utilization, 1e-3):
        return _launch_bound(s, 0.55)
    return None


# Over the threshold: busy, but is the work efficient?

def memory_bound_busy(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Bandwidth-bound work (batch-1 decode, elementwise chains): DRAM busier than the FP pipes
    while little of the card's math is used."""
    if s.dram_active is not None and s.dram_active >= th.memory_bound_dram_active and \
            (s.flops_utilization is None or s.flops_utilization < th.memory_bound_max_flops_utilization) and \
            c.fp_busy < s.dram_active:
        return finding(MEMORY_BOUND, "ticket", strength(s.dram_active, th.memory_bound_dram_active), s,
                       dram_active=s.dram_active, flops_utilization=s.flops_utilization, tensor_active=s.tensor_active)
    return None


def no_tensor_cores(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """FP32 GEMMs without TF32 run on the FMA pipes at a fraction of the tensor-core rate."""
    if s.tensor_active is not None and s.tensor_active < th.tensor_idle and c.fp_busy >= th.fp_pipe_busy:
        return finding(NO_TENSOR_CORES, "ticket", strength(c.fp_busy, th.fp_pipe_busy), s,
                       fp32_active=s.fp32_active, fp64_active=s.fp64_active, tensor_active=s.tensor_active)
    return None


def contention_busy(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Several jobs share a busy GPU by time-slicing."""
    if len(c.busy_shares) >= th.contention_processes:
        return _contention(s, "ticket", 0.7, ())
    return None


def _contention(s: Signals, severity: str, confidence: float, launching: tuple[int, ...]) -> Finding:
    job = s.process_jobs.get
    return finding(CONTENTION, severity, confidence, s, processes=s.processes,
                   sm_shares=", ".join(f"{pid} {job(pid, '?')} {v:.2f}"
                                       for pid, v in sorted(s.process_shares.items()) if pid not in s.unknown_shares),
                   launching_without_share=", ".join(f"{pid} {job(pid, '?')} {s.process_cpu[pid]:.2f} cores"
                                                     for pid in sorted(launching)) or None)


def _launch_bound(s: Signals, confidence: float) -> Finding:
    return finding(LAUNCH_BOUND, "page", confidence, s, nvml_utilization=s.nvml_utilization,
                   sm_occupancy=s.sm_occupancy, process_cpu_cores=s.cpu_ratio,
                   busiest_thread_cpu_cores=s.busiest_thread_cpu_ratio)
