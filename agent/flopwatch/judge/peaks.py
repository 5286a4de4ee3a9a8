"""Peak rates by GPU model: the one table flops utilization and memory turnover divide by.

Figures are NVIDIA's datasheet numbers (dense, i.e. without 2:4 sparsity) at the clock the
datasheet uses for them; achieved rates scale them by the current SM clock. Hopper's datasheets
quote the tensor rates at 1830 MHz (``spec_sm_clock_mhz``) but the FP32/FP64/FP16 rates at the
1980 MHz boost clock (``cuda_core_spec_sm_clock_mhz``): 66.9 TFLOP/s = 132 SMs × 256 FLOP × 1980
MHz. Scaling FP32 by 1830 read FP32 products 1980/1830 = 1.082× high (measured: 1/0.923). NVLink
is the datasheet's total over all links and both directions (H100 SXM: 900 GB/s; PCIe cards: their
NVLink bridge).
Sources: NVIDIA H100 Tensor Core GPU datasheet (2023), H200 product brief (2024), A100 datasheet
(2021), L40S datasheet (2023), L4 datasheet (2023), A10 datasheet (2021), T4 datasheet (2019),
V100 datasheet (2018). An unlisted model gets ``None``: no figure is better than a guessed one.

GPM counts a tensor-pipe cycle active whenever the pipe holds work, and what such a cycle delivers
against the datasheet's rate at the reported clock differs between cards of the same SM: on an H200
0.883–0.894 of it (CUDA-event-timed bf16 and fp16 products of four shapes), on an H100 SXM about
0.985 (docs/accuracy.md, "Flops calibration", says what physics explains and what is only
measured). ``tensor_active_efficiency`` is that ratio as shipped; ``flopwatch calibrate`` measures
it on a node and its stored factor wins (judge/calibration.py). 1.0 where no one has measured it.
The counters cannot tell TF32 from bf16, nor mma.sync from wgmma: see the same section.
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
    fp32_active_efficiency: float = 1.0  # the same for the FP32 pipe (1.0 once its clock is right)
    # The clock the FP32/FP64/FP16 figures are quoted at; None: the same as the tensor figures'.
    cuda_core_spec_sm_clock_mhz: float | None = None
    # Where the shipped efficiency came from (a card and its driver), or "" where it is 1.0 unmeasured.
    efficiency_measured_on: str = ""

    @property
    def fp_spec_sm_clock_mhz(self) -> float:
        return self.cuda_core_spec_sm_clock_mhz or self.spec_sm_clock_mhz


def _p(model: str, sms: int, clock: float, tensor: float, fp32: float, fp64: float, fp16: float, bw_gbs: float,
       nvlink_gbs: float | None = None, tensor_efficiency: tuple[float, str] = (1.0, ""),
       fp_clock: float | None = None) -> Peaks:
    return Peaks(model, sms, clock, tensor * TERA, fp32 * TERA, fp64 * TERA, fp16 * TERA, bw_gbs * 1e9,
                 nvlink_gbs * 1e9 if nvlink_gbs else None, tensor_efficiency[0], 1.0, fp_clock, tensor_efficiency[1])


# Shipped tensor-pipe factors, each measured on the card named (tests/gpu/flops_check.py prints the
# line to paste after a run; `flopwatch calibrate` stores a node's own, which wins over these).
H200_SXM_TENSOR_EFFICIENCY = (0.887, "H200 SXM, driver 580.159.04, 2026-12-03: bf16/fp16 products, four shapes")
# Provisional: the bf16 8192³ loop on two H100 SXM (timed 0.689, 0.702 against 0.697, 0.715
# read without a factor); the next tests/gpu/flops_check.py run on an H100 replaces it.
H100_SXM_TENSOR_EFFICIENCY = (0.985, "H100 SXM, driver 580.159.04, 2026-12-06: bf16/fp16 products, two sizes, two runs")
HOPPER_BOOST_MHZ = 1980.0  # Hopper SXM's FP32/FP64/FP16 datasheet clock


# Ordered: the first pattern that matches the NVML name wins.
TABLE: tuple[tuple[re.Pattern[str], Peaks], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), peaks)
    for pattern, peaks in (
        (r"H200", _p("H200 SXM", 132, 1830, 989.4, 66.9, 33.5, 133.8, 4800, 900, H200_SXM_TENSOR_EFFICIENCY,
                     HOPPER_BOOST_MHZ)),
        # PCIe: FP32 51.2 TFLOP/s = 114 SMs × 256 × 1755 MHz, tensor 756.5 = 114 × 4096 × 1620 MHz.
        (r"H100.*PCIe", _p("H100 PCIe", 114, 1620, 756.5, 51.2, 25.6, 102.4, 2000, 600, fp_clock=1755)),
        (r"H100.*NVL", _p("H100 NVL", 132, 1785, 835.5, 60.0, 30.0, 120.0, 3900, 600)),
        (r"H100", _p("H100 SXM", 132, 1830, 989.4, 66.9, 33.5, 133.8, 3350, 900, H100_SXM_TENSOR_EFFICIENCY,
                     HOPPER_BOOST_MHZ)),
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
