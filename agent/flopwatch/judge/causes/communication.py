"""The GPUs of a job wait on each other: communication_bound (NVLink, PCIe, collectives)."""

from __future__ import annotations

from flopwatch.model import Finding
from flopwatch.thresholds import Thresholds
from flopwatch.judge.causes.rule import Cause, Context, finding, strength
from flopwatch.judge.signals import Signals

COMMUNICATION_BOUND = Cause(
    "communication_bound", "GPU waiting on inter-GPU communication",
    "GPUs wait on collectives (all-reduce) over NVLink/PCIe. Use larger per-GPU batches, gradient "
    "accumulation, overlap communication with compute (DDP buckets, FSDP prefetch), or check NCCL's topology "
    "and P2P settings.")


# Under the threshold: data-parallel ranks wait for all-reduce, all at once; NCCL's kernels spin on
# a few SMs, so NVML reads busy while the SMs idle.

def over_nvlink(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """NVLink busy while the SMs wait (surer when the job's other GPUs are low too)."""
    if c.nvlink_confidence is not None:
        return _communication(s, "nvlink", c.nvlink_confidence + (0.1 if c.peers_low else 0.0))
    return None


def over_pcie(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Collectives over PCIe (no NVLink, or P2P off): the job's GPUs wait together, NCCL spins."""
    if c.pcie_busy and c.waiting_on_peers:
        return _communication(s, "pcie", strength(c.pcie, th.pcie_busy_bytes_per_second))
    return None


def waiting_on_peers(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Little traffic, yet every GPU of the job waits in its collectives, and no CPU is saturated:
    latency-bound all-reduces or a straggler rank."""
    if c.waiting_on_peers and not c.loaders_saturated and not c.thread_saturated:
        return _communication(s, "waiting", 0.55)
    return None


# Over the threshold.

def nvlink_busy(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """Busy only because NCCL's blocks count as active: the step spends a large share moving
    gradients. Bytes alone do not tell that here (a large batch's all-reduce moves 14 GB/s behind
    compute), so only the share of the card's NVLink bandwidth counts."""
    if s.nvlink_busy_ratio is not None and c.nvlink_confidence is not None \
            and c.utilization < th.communication_max_utilization:
        return _communication(s, "nvlink", c.nvlink_confidence, severity="ticket")
    return None


def _communication(s: Signals, via: str, confidence: float, severity: str = "page") -> Finding:
    return finding(COMMUNICATION_BOUND, severity, confidence, s, via=via,
                   nvlink_bytes_per_second=s.nvlink_bytes_per_second, nvlink_busy_ratio=s.nvlink_busy_ratio,
                   pcie_bytes_per_second=s.pcie_bytes_per_second,
                   nvml_utilization=s.nvml_utilization, job_gpus=s.job_gpus + 1,
                   peers_below_ratio=s.peers_below_ratio)
