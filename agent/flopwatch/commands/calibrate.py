"""``flopwatch calibrate``: measure what this card's pipes deliver per active cycle, and store it.

Run once per GPU model and driver, on an idle GPU: it times matrix products in bf16, fp16, fp8
(where the card and PyTorch have it), TF32 and FP32 at five shapes (SHAPES) with CUDA events, reads the GPM
pipes and the clock over the same seconds with the agent's own NVML reader, fits the factors
(judge/calibration.py) and stores them in ``[calibration].file``. It refuses (exit 1) while another
process uses the GPU, and never changes clocks or power limits. Exit 2 without PyTorch or CuPy.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import tempfile
from pathlib import Path

import click

from flopwatch.commands.options import UsageError, config_option, load_config
from flopwatch.judge.calibration import (PRECISIONS, CalibrationError, Factors, Timing, fit, from_document,
                                         to_document, uncalibrated)
from flopwatch.judge.derive import achieved_flops
from flopwatch.judge.peaks import Peaks, lookup
from flopwatch.model import GpuSample
from flopwatch.sources.calibration_file import CalibrationFileUnreadable, read_document

# The factor a pipe needs varies with the kernel cuBLAS picks for a shape (0.965 to 1.017 over four
# bf16 products on one H100): the median over square products and a transformer layer's (8192
# tokens through the up and down projections of a 4096-wide MLP) sits in the middle of that spread.
SHAPES = ((4096, 4096, 4096), (5120, 5120, 5120), (8192, 8192, 8192), (8192, 28672, 4096), (8192, 4096, 14336))
READ_EVERY = 0.5


class Refused(click.ClickException):
    """The GPU cannot be calibrated now (busy, no GPM, unknown model): exit 1."""


@click.command("calibrate")
@config_option
@click.option("--gpu", "gpu_index", type=click.IntRange(min=0), default=0, show_default=True,
              help="The GPU to time products on; its factors apply to every GPU of its model and driver.")
@click.option("--seconds", type=click.FloatRange(0.5, 30.0), default=2.0, show_default=True,
              help="How long each product is timed.")
@click.option("--simulate", metavar="SCENARIO", default="",
              help="Check a simulated GPU's refusals (busy, no GPM) without timing anything.")
def calibrate_command(config_path: str | None, gpu_index: int, seconds: float, simulate: str) -> None:
    """Time products on an idle GPU and store its flops factors for the agent and doctor."""
    config = load_config(config_path, {})
    source = _source(simulate)
    try:
        sample = _idle_gpu(source, gpu_index)
        peaks = lookup(sample.info.name)
        if peaks is None:
            raise Refused(f"GPU {gpu_index} ({sample.info.name}) has no peak rates in judge/peaks.py: "
                          "there is nothing to scale")
        from flopwatch.sources.gemm import GemmUnavailable, open_backend

        try:
            backend = open_backend(gpu_index)
        except GemmUnavailable as e:
            raise UsageError(str(e)) from None
        if simulate:
            raise UsageError("a simulated GPU runs no products: --simulate only checks the refusals")
        timings = time_products(backend, source, gpu_index, peaks, seconds)
    finally:
        source.close()
    factors = Factors(fit(timings), datetime.date.today().isoformat())
    if not any(p in factors.per_precision for p in ("bf16", "fp16")):
        raise Refused("the tensor pipe read no activity during the bf16 and fp16 products: nothing stored")
    path = config.calibration.file
    _store(path, (peaks.model, sample.info.driver_version), factors)
    for line in _table(timings, factors):
        click.echo(line)
    click.echo(f"stored for {peaks.model} with driver {sample.info.driver_version} in {path}; "
               "the agent reads it when it starts")


def _source(simulate: str):
    from flopwatch.sources.nvml import NvmlSource, NvmlUnavailable

    lib = None
    if simulate:
        from flopwatch.sources.simulated import SimulatedNvml, UnknownScenario

        try:
            lib = SimulatedNvml([simulate])
        except UnknownScenario as e:
            raise UsageError(str(e)) from None
    try:
        # Every read a counter read: the process list is current on each.
        return NvmlSource(lib, counter_interval_seconds=0.0)
    except NvmlUnavailable as e:
        raise UsageError(f"NVML is not available ({e}): calibrate runs on a node with an NVIDIA GPU") from None


def _idle_gpu(source, gpu_index: int) -> GpuSample:
    samples = source.read()
    if gpu_index >= len(samples):
        raise UsageError(f"--gpu {gpu_index}: this node has {len(samples)} GPU(s)")
    sample = samples[gpu_index]
    if sample.error is not None:
        raise Refused(f"GPU {gpu_index} cannot be read: {sample.error}")
    if not sample.info.gpm_supported:
        raise Refused(f"GPU {gpu_index} ({sample.info.name}) has no GPM counters: its flops utilization is not "
                      "computed, so there is nothing to calibrate")
    _refuse_if_used(sample, gpu_index)
    return sample


def _refuse_if_used(sample: GpuSample, gpu_index: int, ours: frozenset[int] = frozenset()) -> None:
    others = sorted(p.pid for p in sample.processes if p.pid != os.getpid() and p.pid not in ours)
    if others:
        raise Refused(f"GPU {gpu_index} is in use by process(es) {', '.join(map(str, others))}: products timed "
                      "beside other work measure the sharing, not the card. Run calibrate while the GPU is idle "
                      "(drain the node or pick an idle GPU with --gpu)")


def time_products(backend, source, gpu_index: int, peaks: Peaks, seconds: float) -> list[Timing]:
    """Each precision the backend can run, at each of SHAPES: timed, and modeled by the counters at
    factor 1.0 over the same seconds. Refused if another process comes to the GPU meanwhile."""
    flat = uncalibrated(peaks)
    timings = []
    # NVML names processes by the host's PIDs, which in a container are not os.getpid(): the GPU was
    # idle before the products began, so the processes of the first read under them are this one.
    ours: frozenset[int] | None = None
    for precision in PRECISIONS:
        reason = backend.skip_reason(precision)
        if reason is not None:
            click.echo(f"{precision}: skipped ({reason})")
            continue
        for shape in SHAPES:
            reads: list[GpuSample] = []
            timed = backend.run(precision, shape, seconds, READ_EVERY, lambda: reads.append(source.read()[gpu_index]))
            if ours is None:
                ours = frozenset(p.pid for p in reads[0].processes)
            for sample in reads:
                _refuse_if_used(sample, gpu_index, ours)
            # The first read only opens the span: its interval began before the product did.
            modeled = [achieved_flops(s, flat) for s in reads[1:]]
            modeled = [m for m in modeled if m is not None]
            timings.append(Timing(precision, shape, timed.flops_per_second,
                                  statistics.fmean(modeled) if modeled else None))
    return timings


def _store(path: str, key: tuple[str, str], factors: Factors) -> None:
    """This card's entry replaces its model and driver's; the others are kept. Written whole, then
    renamed over the old file, so the agent never reads half of one."""
    stored = {}
    try:
        document = read_document(path)
        stored = from_document(document) if document is not None else {}
    except (CalibrationFileUnreadable, CalibrationError) as e:
        click.echo(f"replacing {path}, which could not be read: {e}")
    stored[key] = factors
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=target.parent, prefix=f".{target.name}.", delete=False) as f:
            json.dump(to_document(stored), f, indent=1)
            f.write("\n")
        os.chmod(f.name, 0o644)
        os.replace(f.name, target)
    except OSError as e:
        raise UsageError(f"[calibration].file = {path!r} cannot be written ({e.strerror or e}): run calibrate as "
                         "the user that owns it, or set [calibration].file (FLOPWATCH_CALIBRATION_FILE)") from None


def _table(timings: list[Timing], factors: Factors) -> list[str]:
    lines = [f"{'precision':9} {'m×n×k':>16} {'timed TFLOP/s':>13} {'counters TFLOP/s':>16} {'factor':>7}"]
    for t in timings:
        modeled = f"{t.modeled_flops_per_second / 1e12:16.1f}" if t.modeled_flops_per_second else f"{'n/a':>16}"
        ratio = (f"{t.timed_flops_per_second / t.modeled_flops_per_second:7.3f}"
                 if t.modeled_flops_per_second else f"{'n/a':>7}")
        lines.append(f"{t.precision:9} {'×'.join(map(str, t.shape)):>16} {t.timed_flops_per_second / 1e12:13.1f} "
                     f"{modeled} {ratio}")
    lines.append(f"applied: tensor pipe {factors.tensor:.3f} (mean of bf16 and fp16), FP32 pipe {factors.fp32:.3f}; "
                 "fp8 and tf32 run on the tensor pipe, which the counters cannot tell apart: stored, not applied")
    return lines
