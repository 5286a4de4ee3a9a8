"""Real PyTorch workloads, each a pattern from users' code, one bottleneck (or none) each.

Run from the repository root: ``python -m tests.gpu.workloads NAME``. Each runs until killed and
prints ``ready`` after its first step. They are written for the physics of the bottleneck, not for
flopwatch's rules: a starved loader is a real DataLoader with too few workers, and so on. What each
is expected to read is written down beforehand in tests/gpu/labels.py. Nothing is downloaded:
models are built from configs, data is made at start.

FLOPWATCH_WORKLOAD_DEVICE (default cuda) and FLOPWATCH_WORKLOAD_SIZE (default 1, a factor on the
new families' widths and batches) let a workload's set-up be tried on a CPU at a small size.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

DEV = os.environ.get("FLOPWATCH_WORKLOAD_DEVICE", "cuda")
SIZE = float(os.environ.get("FLOPWATCH_WORKLOAD_SIZE", "1"))
# Where each process keeps its count of steps ("<pid>.steps": "wall-seconds steps"), for a probe
# that times the workload by its own progress; unset, nothing is counted.
STEPS_DIR = os.environ.get("FLOPWATCH_WORKLOAD_STEPS_DIR")
_announced = False
_steps, _written = 0, 0.0


def ready() -> None:
    """Say once that the first step ran, so measuring starts after start-up, not during it; count
    the steps where STEPS_DIR asks (written twice a second at most)."""
    global _announced, _steps, _written
    if not _announced:
        if DEV == "cuda":
            torch.cuda.synchronize()
        print("ready", flush=True)
        _announced = True
    if STEPS_DIR:
        _steps += 1
        now = time.time()
        if now - _written >= 0.5:
            path = Path(STEPS_DIR) / f"{os.getpid()}.steps"
            part = path.with_suffix(".part")
            part.write_text(f"{now} {_steps}")
            part.replace(path)
            _written = now


def dim(n: int) -> int:
    """A width or batch scaled by SIZE, kept a multiple of 8 (tensor-core friendly)."""
    return max(8, int(n * SIZE) // 8 * 8)


def scratch_dir() -> Path:
    """Where a workload writes its data: on a disk, not tmpfs, so O_DIRECT reads really wait on it."""
    path = Path(os.environ.get("FLOPWATCH_WORKLOAD_SCRATCH", "/var/tmp"))
    if not path.is_dir():
        path = Path.cwd()
    path = path / "flopwatch-corpus"
    path.mkdir(parents=True, exist_ok=True)
    return path


def workloads() -> dict:
    """Every workload by name (the families are imported here, not at start-up of each other)."""
    from . import basic, host, language, lifecycle, patterns, serving, speed, vision

    return {f.__name__: f for module in (basic, vision, language, speed, host, serving, lifecycle, patterns)
            for f in module.WORKLOADS}
