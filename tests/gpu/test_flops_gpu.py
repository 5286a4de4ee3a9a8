"""On a real NVIDIA GPU: flopwatch's flops utilization against work timed by the GPU itself.

Each case keeps the GPU busy with one kernel (torch.matmul in bf16, fp16, TF32, FP32 at two or three
sizes; flash SDPA attention, causal and not) for a few seconds, timed with CUDA events, while the
GPU source is read every half second over the same seconds. flopwatch should read timed FLOP/s ÷
the card's dense peak within 0.03. Run as a script to print everything the model is fitted from:

    PYTHONPATH=agent python3 -m tests.gpu.test_flops_gpu
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Callable

import pytest

from tests.gpu.gpus import needs_gpus, report

pytestmark = needs_gpus(1, torch=True)

SECONDS = float(os.environ.get("FLOPWATCH_FLOPS_SECONDS", "3"))
READ_EVERY = 0.5
TOLERANCE = 0.03
GPU = 0


@dataclass(frozen=True)
class Case:
    name: str
    precision: str  # which peak the kernel can reach: bf16/fp16 (dense tensor), tf32, fp32
    flops: float  # per call
    setup: Callable[[], Callable[[], object]]  # builds the tensors; returns one call


def _matmul(dtype_name: str, m: int, n: int, k: int) -> Case:
    def setup():
        import torch

        torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype_name, torch.float32)
        a = torch.randn(m, k, device="cuda", dtype=dtype)
        b = torch.randn(k, n, device="cuda", dtype=dtype)
        c = torch.empty(m, n, device="cuda", dtype=dtype)
        return lambda: torch.matmul(a, b, out=c)

    return Case(f"matmul {dtype_name} {m}x{n}x{k}", dtype_name, 2.0 * m * n * k, setup)


def _attention(causal: bool, batch: int = 8, heads: int = 16, seq: int = 4096, head_dim: int = 128) -> Case:
    def setup():
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        q, k, v = (torch.randn(batch, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))

        def call():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return call

    # Forward: QKᵀ and PV, 2·S²·D multiply-adds each per head; causal computes half of each.
    flops = 4.0 * batch * heads * seq * seq * head_dim / (2 if causal else 1)
    return Case(f"sdpa flash {'causal' if causal else 'full'} b{batch} h{heads} s{seq} d{head_dim}", "bf16", flops,
                setup)


CASES = (
    _matmul("bf16", 4096, 4096, 4096), _matmul("bf16", 8192, 8192, 8192), _matmul("bf16", 16384, 16384, 8192),
    _matmul("fp16", 8192, 8192, 8192),
    _matmul("tf32", 4096, 4096, 4096), _matmul("tf32", 8192, 8192, 8192),
    _matmul("fp32", 4096, 4096, 4096), _matmul("fp32", 8192, 8192, 8192),
    _attention(causal=False), _attention(causal=True),
)


@dataclass(frozen=True)
class Reading:
    case: str
    precision: str
    timed_tflops: float
    timed_ratio: float  # timed FLOP/s ÷ the card's dense peak (what flops utilization means)
    flops_utilization: float | None  # flopwatch's mean over the reads
    difference: float | None
    sm_active: float | None
    tensor_active: float | None
    hmma_active: float | None
    fp16_active: float | None
    fp32_active: float | None
    fp64_active: float | None
    sm_clock_mhz: float | None
    power_watts: float | None
    reads: int
    # FLOPs done per cycle the pipe was active, ÷ the pipe's datasheet rate per cycle: 1.0 means the
    # pipe-activity model counts exactly; below 1, active cycles do less than a full rate of work.
    flops_per_active_cycle_ratio: float | None


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def measure(case: Case, source) -> Reading:
    """Keep the GPU on ``case`` (a few dozen ms queued ahead, never more) and read the source while
    it runs; the reads whose spans lie inside the run are kept, the CUDA events time the middle."""
    import torch

    from flopwatch.judge.derive import derive
    from flopwatch.judge.peaks import lookup

    call = case.setup()
    for _ in range(3):
        call()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        call()
    end.record()
    end.synchronize()
    per_call = start.elapsed_time(end) / 5 / 1000
    chunk = max(1, int(0.02 / per_call))
    first_timed, last_timed = int(0.5 / per_call) + 1, int((0.5 + SECONDS) / per_call) + 1
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    queued: deque = deque()
    calls, samples, previous, next_read, done = 0, [], None, 0.0, False
    while not done:
        while len(queued) < 3:
            for _ in range(chunk):
                if calls == first_timed:
                    start.record()
                if calls == last_timed:
                    end.record()
                call()
                calls += 1
            mark = torch.cuda.Event()
            mark.record()
            queued.append(mark)
        queued.popleft().synchronize()
        if calls <= first_timed or not start.query() or time.monotonic() < next_read:
            continue
        next_read = time.monotonic() + READ_EVERY
        ended = calls > last_timed and end.query()  # this read's span still ran the same kernel
        sample = source.read()[GPU]
        if previous is not None:
            samples.append((sample, derive(sample, previous)))
        previous = sample
        done = ended
    torch.cuda.synchronize()
    timed = case.flops * (last_timed - first_timed) / (start.elapsed_time(end) / 1000)
    peaks = lookup(samples[0][0].info.name) if samples else None
    dense = peaks.tensor_flops if peaks else float("nan")
    clock = _mean([s.sm_clock_mhz for s, _ in samples])
    flops_util = _mean([f.flops_utilization for _, f in samples])
    pipe = _mean([(s.hmma_active if s.hmma_active is not None else s.tensor_active) for s, _ in samples])
    pipe_peak = {"bf16": dense, "fp16": dense, "tf32": dense / 2, "fp32": peaks.fp32_flops if peaks else None}
    if case.precision == "fp32":
        pipe = _mean([s.fp32_active for s, _ in samples])
    efficiency = None
    if pipe and clock and peaks and pipe_peak[case.precision]:
        efficiency = timed / (pipe * pipe_peak[case.precision] * clock / peaks.spec_sm_clock_mhz)
    return Reading(
        case=case.name, precision=case.precision, timed_tflops=timed / 1e12, timed_ratio=timed / dense,
        flops_utilization=flops_util, difference=None if flops_util is None else flops_util - timed / dense,
        sm_active=_mean([s.sm_active for s, _ in samples]), tensor_active=_mean([s.tensor_active for s, _ in samples]),
        hmma_active=_mean([s.hmma_active for s, _ in samples]), fp16_active=_mean([s.fp16_active for s, _ in samples]),
        fp32_active=_mean([s.fp32_active for s, _ in samples]), fp64_active=_mean([s.fp64_active for s, _ in samples]),
        sm_clock_mhz=clock, power_watts=_mean([s.power_watts for s, _ in samples]), reads=len(samples),
        flops_per_active_cycle_ratio=efficiency,
    )


def measure_all() -> list[Reading]:
    from flopwatch.sources.nvml import NvmlSource

    source = NvmlSource()
    try:
        return [measure(case, source) for case in CASES]
    finally:
        source.close()


def _f(value, fmt: str) -> str:
    return format(value, fmt) if value is not None else "n/a".rjust(len(format(0.0, fmt)))


def table(readings: list[Reading]) -> list[str]:
    lines = [f"{'case':42} {'TFLOP/s':>8} {'timed':>6} {'fw':>6} {'diff':>6} {'sm':>5} {'tensor':>6} {'hmma':>5} "
             f"{'fp16':>5} {'fp32':>5} {'MHz':>5} {'W':>4} {'eff':>5} reads"]
    for r in readings:
        lines.append(f"{r.case:42} {r.timed_tflops:8.1f} {r.timed_ratio:6.3f} {_f(r.flops_utilization, '6.3f')} "
                     f"{_f(r.difference, '+6.3f')} {_f(r.sm_active, '5.2f')} {_f(r.tensor_active, '6.3f')} "
                     f"{_f(r.hmma_active, '5.3f')} {_f(r.fp16_active, '5.3f')} {_f(r.fp32_active, '5.3f')} "
                     f"{_f(r.sm_clock_mhz, '5.0f')} {_f(r.power_watts, '4.0f')} "
                     f"{_f(r.flops_per_active_cycle_ratio, '5.3f')} {r.reads}")
    lines.append("timed: timed FLOP/s ÷ dense peak; fw: flopwatch's flops utilization; eff: timed FLOPs per "
                 "active pipe cycle ÷ the pipe's datasheet rate at the read clock")
    return lines


@pytest.fixture(scope="module")
def readings() -> dict[str, Reading]:
    out = measure_all()
    report(table(out), "flops_calibration.txt")
    return {r.case: r for r in out}


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_flops_utilization_matches_timed_work(readings, case):
    r = readings[case]
    assert r.flops_utilization is not None
    assert abs(r.flops_utilization - r.timed_ratio) <= TOLERANCE


if __name__ == "__main__":
    result = measure_all()
    report(table(result), "flops_calibration.txt")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "flops_calibration.json"), "w") as f:
            json.dump([asdict(r) for r in result], f, indent=1)
