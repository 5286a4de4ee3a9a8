"""Matrix products timed by the GPU itself, for ``flopwatch calibrate``: PyTorch, else CuPy.

Neither is a dependency of flopwatch: each is imported only here and only when a calibration
runs. A product is kept on the GPU without gaps (a few chunks of ~20 ms queued ahead, never
more) and timed with CUDA events between two marks; ``on_read`` is called every ``read_every``
seconds in between, so the caller reads the counters over the same seconds. Nothing here
touches clocks or power limits.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

RAMP_SECONDS = 0.3  # queued before the timed span opens: the GPU is busy when the first read starts
CHUNK_SECONDS = 0.02
QUEUED_CHUNKS = 3

NO_BACKEND = ("flopwatch calibrate times matrix products on the GPU with PyTorch or CuPy, and neither "
              "is installed: pip install torch (or cupy-cuda12x) into flopwatch's environment, then run "
              "it again")


class GemmUnavailable(RuntimeError):
    """No library to time products with; the message says what to install."""


@dataclass(frozen=True, slots=True)
class TimedProduct:
    flops_per_second: float
    seconds: float  # CUDA-event time of the timed span
    calls: int


class _Backend:
    """One library's tensors, product and events; the timing loop is shared."""

    name: str
    precisions: tuple[str, ...]

    def skip_reason(self, precision: str) -> str | None:
        """Why this card or library cannot run ``precision``, or None."""
        raise NotImplementedError

    def product(self, precision: str, m: int, n: int, k: int) -> Callable[[], Any]:
        raise NotImplementedError

    def event(self) -> Any:
        raise NotImplementedError

    def elapsed_seconds(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def release(self) -> None:
        """Free the tensors of the last product."""

    def run(self, precision: str, shape: tuple[int, int, int], seconds: float, read_every: float,
            on_read: Callable[[], None]) -> TimedProduct:
        """An m×n×k product in ``precision``, timed (see ``time_call``); its tensors freed after."""
        m, n, k = shape
        try:
            return time_call(self, self.product(precision, m, n, k), 2.0 * m * n * k, seconds, read_every, on_read)
        finally:
            self.release()


def time_call(backend: _Backend, call: Callable[[], Any], flops_per_call: float, seconds: float, read_every: float,
              on_read: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> TimedProduct:
    """``call`` repeated for ``seconds`` without a gap, timed with CUDA events; ``on_read`` once as
    the timed span opens, every ``read_every`` seconds, and once as it closes, the GPU busy at each."""
    start, end = backend.event(), backend.event()
    start.record()
    for _ in range(3):
        call()
    end.record()
    end.synchronize()
    chunk = max(1, int(CHUNK_SECONDS / max(backend.elapsed_seconds(start, end) / 3, 1e-6)))
    queued: deque = deque()

    def enqueue() -> int:
        while len(queued) >= QUEUED_CHUNKS:
            queued.popleft().synchronize()
        for _ in range(chunk):
            call()
        mark = backend.event()
        mark.record()
        queued.append(mark)
        return chunk

    ramp_until = clock() + RAMP_SECONDS
    while clock() < ramp_until:
        enqueue()
    start, end = backend.event(), backend.event()
    start.record()
    on_read()  # opens the first span the caller keeps
    calls, now = 0, clock()
    stop, next_read = now + seconds, now + read_every
    while now < stop:
        calls += enqueue()
        now = clock()
        if now >= next_read:
            on_read()
            next_read = now + read_every
    end.record()
    on_read()  # closes the last span while the queued chunks still run
    end.synchronize()
    for mark in queued:
        mark.synchronize()
    elapsed = backend.elapsed_seconds(start, end)
    return TimedProduct(flops_per_call * calls / elapsed, elapsed, calls)


class _Torch(_Backend):
    name = "torch"
    precisions = ("bf16", "fp16", "fp8", "tf32", "fp32")

    def __init__(self, torch: Any, device_index: int):
        self.torch = torch
        self.device = torch.device("cuda", device_index)
        torch.cuda.set_device(self.device)
        self._tensors: tuple = ()

    def skip_reason(self, precision: str) -> str | None:
        if precision != "fp8":
            return None
        torch = self.torch
        if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
            return f"this PyTorch ({torch.__version__}) has no torch._scaled_mm"
        if torch.cuda.get_device_capability(self.device) < (8, 9):
            return "FP8 tensor cores need compute capability 8.9 or newer"
        try:  # _scaled_mm's signature moved between releases: one small product says if this one fits
            self.product("fp8", 16, 16, 16)()
            torch.cuda.synchronize(self.device)
        except (RuntimeError, TypeError) as e:
            return f"torch._scaled_mm failed here ({str(e).splitlines()[0][:120]})"
        finally:
            self.release()
        return None

    def product(self, precision: str, m: int, n: int, k: int) -> Callable[[], Any]:
        torch = self.torch
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        if precision == "fp8":
            a = torch.randn(m, k, device=self.device).to(torch.float8_e4m3fn)
            b = torch.randn(n, k, device=self.device).to(torch.float8_e4m3fn).t()  # column-major, as cuBLASLt wants
            scale = torch.ones((), device=self.device)
            self._tensors = (a, b, scale)
            return lambda: torch._scaled_mm(a, b, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        a = torch.randn(m, k, device=self.device, dtype=dtype)
        b = torch.randn(k, n, device=self.device, dtype=dtype)
        c = torch.empty(m, n, device=self.device, dtype=dtype)
        self._tensors = (a, b, c)
        return lambda: torch.matmul(a, b, out=c)

    def event(self) -> Any:
        return self.torch.cuda.Event(enable_timing=True)

    def elapsed_seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0

    def release(self) -> None:
        self._tensors = ()
        self.torch.backends.cuda.matmul.allow_tf32 = False
        self.torch.cuda.empty_cache()


class _Cupy(_Backend):
    name = "cupy"
    precisions = ("fp16", "fp32")  # no bfloat16 or FP8; TF32 only process-wide (CUPY_TF32=1 before import)

    def __init__(self, cupy: Any, device_index: int):
        self.cupy = cupy
        cupy.cuda.Device(device_index).use()
        self._tensors: tuple = ()

    def skip_reason(self, precision: str) -> str | None:
        return None if precision in self.precisions else f"CuPy has no {precision} matrix product"

    def product(self, precision: str, m: int, n: int, k: int) -> Callable[[], Any]:
        cp = self.cupy
        dtype = cp.float16 if precision == "fp16" else cp.float32
        a = cp.random.standard_normal((m, k), dtype=cp.float32).astype(dtype)
        b = cp.random.standard_normal((k, n), dtype=cp.float32).astype(dtype)
        c = cp.empty((m, n), dtype=dtype)
        self._tensors = (a, b, c)
        return lambda: cp.matmul(a, b, out=c)

    def event(self) -> Any:
        return self.cupy.cuda.Event()

    def elapsed_seconds(self, start: Any, end: Any) -> float:
        return self.cupy.cuda.get_elapsed_time(start, end) / 1000.0

    def release(self) -> None:
        self._tensors = ()
        self.cupy.get_default_memory_pool().free_all_blocks()


def open_backend(device_index: int) -> _Backend:
    """PyTorch with CUDA if importable, else CuPy; GemmUnavailable saying what to install."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return _Torch(torch, device_index)
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        return _Cupy(cupy, device_index)
    if torch is not None:
        raise GemmUnavailable(f"PyTorch {torch.__version__} is installed but sees no CUDA device "
                              "(a CPU-only build?): install a CUDA build of torch, or cupy-cuda12x")
    raise GemmUnavailable(NO_BACKEND)
