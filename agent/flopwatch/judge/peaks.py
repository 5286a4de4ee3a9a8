"""Peak rates by GPU model: the one table flops utilization and memory turnover divide by.

Figures are NVIDIA's datasheet numbers (dense, i.e. without 2:4 sparsity) at the clock the
datasheet uses (``spec_sm_clock_mhz``); achieved rates scale them by the current SM clock. NVLink
is the datasheet's total over all links and both directions (H100 SXM: 900 GB/s; PCIe cards: their
NVLink bridge).
Sources: NVIDIA H100 Tensor Core GPU datasheet (2023), H200 product brief (2024), A100 datasheet
(2021), L40S datasheet (2023), L4 datasheet (2023), A10 datasheet (2021), T4 datasheet (2019),
V100 datasheet (2018). An unlisted model gets ``None``: no figure is better than a guessed one.

GPM counts a tensor-pipe cycle active whenever the pipe holds work, and a cycle of a dense 16-bit
matrix product (Hopper's wgmma) delivers less than the datasheet's rate: measured on an H200 against
CUDA-event-timed bf16 and fp16 products of four shapes, 0.883–0.894 of it (docs/accuracy.md, "Flops
calibration"). ``tensor_active_efficiency`` is that ratio (the median, 0.887); 1.0 where no one has
measured it. The counters cannot tell TF32 from bf16, nor mma.sync from wgmma: see the same section.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

TERA = 1e12


@dataclass(frozen=True, slots=True)
class Peaks:
    model: str
    sm_count: int
    spec_sm_clock_mhz: float
    tensor_flops: float  # best dense tensor precision a training job uses (BF16, FP16 on T4/V100)
    fp32_flops: float
    fp64_flops: float
    fp16_flops: float  # non-tensor FP16 (half2 FMA)
    memory_bytes_per_second: float
    nvlink_bytes_per_second: float | None  # all links, both directions; None: no NVLink
    tensor_active_efficiency: float = 1.0  # FLOPs a tensor-active cycle delivers ÷ the datasheet's


def _p(model: str, sms: int, clock: float, tensor: float, fp32: float, fp64: float, fp16: float, bw_gbs: float,
       nvlink_gbs: float | None = None, tensor_efficiency: float = 1.0) -> Peaks:
    return Peaks(model, sms, clock, tensor * TERA, fp32 * TERA, fp64 * TERA, fp16 * TERA, bw_gbs * 1e9,
                 nvlink_gbs * 1e9 if nvlink_gbs else None, tensor_efficiency)


HOPPER_TENSOR_EFFICIENCY = 0.887  # measured on an H200; the H100 has the same SM


# Ordered: the first pattern that matches the NVML name wins.
TABLE: tuple[tuple[re.Pattern[str], Peaks], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), peaks)
    for pattern, peaks in (
        (r"H200", _p("H200 SXM", 132, 1830, 989.4, 66.9, 33.5, 133.8, 4800, 900, HOPPER_TENSOR_EFFICIENCY)),
        (r"H100.*PCIe", _p("H100 PCIe", 114, 1620, 756.5, 51.2, 25.6, 102.4, 2000, 600, HOPPER_TENSOR_EFFICIENCY)),
        (r"H100.*NVL", _p("H100 NVL", 132, 1785, 835.5, 60.0, 30.0, 120.0, 3900, 600, HOPPER_TENSOR_EFFICIENCY)),
        (r"H100", _p("H100 SXM", 132, 1830, 989.4, 66.9, 33.5, 133.8, 3350, 900, HOPPER_TENSOR_EFFICIENCY)),
        (r"A100.*(80GB.*PCIe|PCIE.*80GB)", _p("A100 80GB PCIe", 108, 1410, 312.0, 19.5, 9.7, 78.0, 1935, 600)),
        (r"A100.*80GB", _p("A100 80GB SXM", 108, 1410, 312.0, 19.5, 9.7, 78.0, 2039, 600)),
        (r"A100", _p("A100 40GB", 108, 1410, 312.0, 19.5, 9.7, 78.0, 1555, 600)),
        (r"L40S", _p("L40S", 142, 2520, 362.05, 91.6, 1.4, 91.6, 864)),
        (r"\bL4\b", _p("L4", 58, 2040, 121.0, 30.3, 0.49, 30.3, 300)),
        (r"\bA10\b", _p("A10", 72, 1695, 125.0, 31.2, 0.98, 31.2, 600)),
        (r"\bT4\b", _p("T4", 40, 1590, 65.0, 8.1, 0.25, 16.2, 320)),
        (r"V100.*PCIE", _p("V100 PCIe", 80, 1380, 112.0, 14.0, 7.0, 28.0, 900)),
        (r"V100", _p("V100 SXM2", 80, 1530, 125.0, 15.7, 7.8, 31.4, 900, 300)),
    )
)


@functools.cache  # a GPU's name never changes: match it once, not every tick
def lookup(name: str) -> Peaks | None:
    for pattern, peaks in TABLE:
        if pattern.search(name):
            return peaks
    return None
