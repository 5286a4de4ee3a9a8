"""Which real GPUs this machine has, for the marks that skip the GPU suite elsewhere, and where
the suite's readings go."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


def nvidia_gpus() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount()
    except Exception:  # no nvidia-ml-py, no driver, no GPU: none here
        return 0


def needs_gpus(count: int = 1, torch: bool = False) -> list:
    """The marks of a module that needs ``count`` NVIDIA GPUs (and PyTorch)."""
    marks = [pytest.mark.gpu,
             pytest.mark.skipif(nvidia_gpus() < count, reason=f"needs {count} NVIDIA GPU(s)")]
    if torch:
        marks.append(pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch"))
    return marks


def mean(values: list[float]) -> float:
    """The readings' mean; NaN for none, so a table shows the gap instead of failing."""
    return sum(values) / len(values) if values else float("nan")


def report(lines: list[str], filename: str) -> None:
    """Print a run's readings, and keep them in $OUT/``filename`` where the runner collects files."""
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out, filename).write_text(text)


def wait_until_free(index: int = 0, timeout: float = 30.0) -> None:
    """Return once no process holds GPU ``index``; else stop the run, naming the holders: a
    leftover process (an earlier run's orphan) would be read into every window that follows."""
    import time

    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    deadline = time.monotonic() + timeout
    while True:
        pids = sorted({p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)})
        if not pids:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"GPU {index} is not free after {timeout:.0f} s: pids {pids}")
        time.sleep(0.5)
