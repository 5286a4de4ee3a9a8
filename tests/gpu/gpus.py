"""Which real GPUs this machine has, for the marks that skip the GPU suite elsewhere."""

from __future__ import annotations

import importlib.util

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
