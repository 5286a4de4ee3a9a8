"""NVML faults with the real library: a call on GPU 0 that blocks for 10 s, and GPU 0 reported
lost, injected by a thin wrapper around pynvml. A tick blocked in GPU 0 holds only itself: the
ticks beside it mark GPU 0 without calling it, read any other GPU as usual, and GPU 0 is read
again once its call returns."""

from __future__ import annotations

import ctypes
import threading
import time

import pytest

from flopwatch.sources.nvml import NvmlSource

from tests.gpu.gpus import needs_gpus

pytestmark = needs_gpus(1)
pynvml = pytest.importorskip("pynvml")


class FaultyNvml:
    """pynvml itself, except that one function on GPU 0 blocks or reports the GPU lost on demand."""

    def __init__(self):
        self.fault: str | None = None  # "block" or "lost"
        self.gpu0: int | None = None
        self.blocked = threading.Event()  # set once a call has begun to block
        self.blocked_calls = 0

    def __getattr__(self, name):
        real = getattr(pynvml, name)
        if name == "nvmlDeviceGetHandleByIndex":
            def by_index(index):
                handle = real(index)
                if index == 0:
                    self.gpu0 = ctypes.cast(handle, ctypes.c_void_p).value
                return handle
            return by_index
        if name != "nvmlDeviceGetPowerUsage":
            return real

        def power(handle):
            if ctypes.cast(handle, ctypes.c_void_p).value == self.gpu0:
                if self.fault == "block":
                    self.blocked_calls += 1
                    self.blocked.set()
                    time.sleep(10)
                elif self.fault == "lost":
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            return real(handle)
        return power


@pytest.fixture
def lib():
    return FaultyNvml()


def errors(source: NvmlSource) -> list[str | None]:
    return [s.error for s in source.read()]


def test_a_call_blocking_10_s_holds_only_its_tick_and_is_not_called_again_until_it_returns(lib):
    source = NvmlSource(lib)
    assert set(errors(source)) == {None}
    lib.fault = "block"
    blocked_tick = threading.Thread(target=source.read, daemon=True)
    blocked_tick.start()
    assert lib.blocked.wait(5)
    for _ in range(5):  # the ticks the scheduler starts beside the blocked one
        first, *others = errors(source)
        assert first.startswith("timeout") and set(others) <= {None}
    assert lib.blocked_calls == 1
    lib.fault = None
    blocked_tick.join(15)
    sample = source.read()[0]
    assert sample.error is None and sample.power_watts > 0
    source.close()


def test_a_gpu_reported_lost_is_reopened_with_the_real_library_once_it_answers(lib):
    source = NvmlSource(lib)
    source.read()
    lib.fault = "lost"
    first, *others = errors(source)
    assert "GPU is lost" in first and set(others) <= {None}
    lib.fault = None
    source.read()  # reopens GPU 0: handle, static facts, a fresh GPM sample
    time.sleep(0.2)
    sample = source.read()[0]
    assert sample.error is None and sample.power_watts > 0
    assert sample.source_quality == "gpm" or "gpm" in sample.unsupported
    source.close()
