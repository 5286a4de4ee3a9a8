"""Flops calibration: what a pipe's active cycle delivers on this card, fitted from timed products.

``flopwatch calibrate`` times GEMMs in each precision while the counters are read, and divides
the timed FLOP/s by what the counters model says at factor 1.0 (``derive.achieved_flops`` with
``uncalibrated`` peaks): that ratio is the precision's factor. The counters see pipes, not
precisions, so only two factors are applied: the tensor pipe's (the mean of bf16 and fp16, the
dense peak's precisions) and the FP32 pipe's. FP8 and TF32 run on the same tensor pipe at twice
and half the bf16 rate per cycle: their factors are kept to say how far such work reads off.

Factors are stored per GPU model and driver (the document ``to_document`` writes). A stored
factor for this model and driver wins; else the one shipped in ``peaks``; else the card runs
uncalibrated at 1.0, and ``doctor`` says so. Pure: the file is read in ``sources`` and written
by the command.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from flopwatch.judge.peaks import Peaks, lookup

PRECISIONS = ("bf16", "fp16", "fp8", "tf32", "fp32")
TENSOR_PRECISIONS = ("bf16", "fp16")  # their mean is the tensor pipe's factor
DOCUMENT_VERSION = 1


class CalibrationError(ValueError):
    """A calibration document that cannot be read; the message says where."""


@dataclass(frozen=True, slots=True)
class Timing:
    """One GEMM kept on the GPU while the counters were read over the same seconds."""

    precision: str
    shape: tuple[int, int, int]  # m, n, k
    timed_flops_per_second: float
    modeled_flops_per_second: float | None  # the counters' model at factor 1.0, over the same seconds


@dataclass(frozen=True, slots=True)
class Factors:
    """One card's fitted factors (timed ÷ modeled), per precision as measured."""

    per_precision: Mapping[str, float]
    measured_at: str = ""  # ISO date of the run

    @property
    def tensor(self) -> float:
        return statistics.fmean(self.per_precision[p] for p in TENSOR_PRECISIONS if p in self.per_precision)

    @property
    def fp32(self) -> float:
        return self.per_precision.get("fp32", 1.0)


@dataclass(frozen=True, slots=True)
class Calibration:
    """The peaks a card's flops are computed with, and where their factors came from."""

    peaks: Peaks
    state: str  # stored | shipped | uncalibrated
    detail: str


def fit(timings: Iterable[Timing]) -> dict[str, float]:
    """Per precision, the median over its shapes of timed ÷ modeled; a precision whose counters
    read nothing is left out (the model cannot be scaled from zero)."""
    ratios: dict[str, list[float]] = {}
    for t in timings:
        if t.modeled_flops_per_second and t.modeled_flops_per_second > 0 and t.timed_flops_per_second > 0:
            ratios.setdefault(t.precision, []).append(t.timed_flops_per_second / t.modeled_flops_per_second)
    return {p: statistics.median(r) for p, r in ratios.items()}


def uncalibrated(peaks: Peaks) -> Peaks:
    """The peaks at factor 1.0: what a calibration's timings are divided by."""
    return replace(peaks, tensor_active_efficiency=1.0, fp32_active_efficiency=1.0)


@dataclass
class Calibrations:
    """Stored factors by (GPU model, driver), resolved once per card."""

    stored: Mapping[tuple[str, str], Factors] = field(default_factory=dict)
    _resolved: dict[tuple[str, str], Calibration | None] = field(default_factory=dict, repr=False)

    def resolve(self, name: str, driver: str) -> Calibration | None:
        """The card's peaks with the factors that apply; None for a model the peak table lacks."""
        key = (name, driver)
        if key not in self._resolved:
            self._resolved[key] = self._resolve(name, driver)
        return self._resolved[key]

    def _resolve(self, name: str, driver: str) -> Calibration | None:
        peaks = lookup(name)
        if peaks is None:
            return None
        factors = self.stored.get((peaks.model, driver))
        if factors is not None and any(p in factors.per_precision for p in TENSOR_PRECISIONS):
            when = f" on {factors.measured_at}" if factors.measured_at else ""
            return Calibration(
                replace(peaks, tensor_active_efficiency=factors.tensor, fp32_active_efficiency=factors.fp32), "stored",
                f"measured on this node{when} (tensor {factors.tensor:.3f}, fp32 {factors.fp32:.3f})")
        if peaks.efficiency_measured_on:
            return Calibration(peaks, "shipped", f"measured on {peaks.efficiency_measured_on} "
                                                 f"(tensor {peaks.tensor_active_efficiency:.3f})")
        others = sorted(d for m, d in self.stored if m == peaks.model)
        why = f"; stored only for driver {', '.join(others)}" if others else ""
        return Calibration(peaks, "uncalibrated", f"no factor for {peaks.model} with driver {driver}{why}")


def to_document(stored: Mapping[tuple[str, str], Factors]) -> dict:
    """The JSON document the calibration file holds."""
    entries = [{"model": model, "driver": driver, "measured_at": f.measured_at,
                "factors": dict(sorted(f.per_precision.items()))}
               for (model, driver), f in sorted(stored.items())]
    return {"version": DOCUMENT_VERSION, "entries": entries}


def from_document(document: object) -> dict[tuple[str, str], Factors]:
    """Stored factors from the file's JSON; CalibrationError naming what is wrong."""
    if not isinstance(document, dict) or document.get("version") != DOCUMENT_VERSION:
        raise CalibrationError(f"not a version {DOCUMENT_VERSION} calibration document")
    out: dict[tuple[str, str], Factors] = {}
    for i, entry in enumerate(document.get("entries", [])):
        try:
            factors = {str(p): float(v) for p, v in entry["factors"].items()}
            key = (str(entry["model"]), str(entry["driver"]))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise CalibrationError(f"entry {i}: needs model, driver and factors ({e})") from None
        bad = [p for p, v in factors.items() if p not in PRECISIONS or not 0.1 <= v <= 10.0]
        if bad:
            raise CalibrationError(f"entry {i} ({key[0]}, driver {key[1]}): bad factor for {', '.join(bad)}")
        out[key] = Factors(factors, str(entry.get("measured_at", "")))
    return out
