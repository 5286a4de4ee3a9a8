"""Where a batch-1 eager decode's token goes: the host's launching, the GPU's kernels, and the
host's costliest operators, for the corpus's 8B decoder and a wider 16-layer one, each with SDPA
free to pick cuDNN attention and kept off it. From the repository root on a GPU machine:
``python3 -m tests.gpu.probe_decode``. (It found the 8B decode's SDPA spending ~1.1 ms of CPU a
call in cuDNN attention, planned anew for each cache length.)"""

import contextlib
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from tests.gpu.workloads.language import Llama8B

TOKENS = 30


def probe(name: str, without_cudnn: bool = False, **shape) -> None:
    model = Llama8B(**shape)
    # SDPA's other backends, for a decode whose attention is not planned anew each token.
    backends = sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]) \
        if without_cudnn else contextlib.nullcontext()
    with torch.no_grad(), backends:
        token = torch.tensor([1], device="cuda")
        for pos in range(5):  # warm-up
            token = torch.tensor([model.decode_token(token, pos)], device="cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        for pos in range(5, 5 + TOKENS):
            token = torch.tensor([model.decode_token(token, pos)], device="cuda")
        per_token_ms = (time.perf_counter() - start) / TOKENS * 1e3
        # The host alone: forwards launched back to back, no token read back.
        torch.cuda.synchronize()
        start = time.perf_counter()
        for pos in range(40, 50):
            model.forward(token, pos)
        launch_ms = (time.perf_counter() - start) / 10 * 1e3
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for pos in range(60, 63):
                model.decode_token(token, pos)
    weights_gb = sum(t.numel() * t.element_size() for layer in model.layers for t in layer.values()) / 1e9
    print(f"{name}: {per_token_ms:.1f} ms a token, the host launches one in {launch_ms:.1f} ms, "
          f"{weights_gb:.1f} GB of weights and caches", flush=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8), flush=True)
    del model
    torch.cuda.empty_cache()


if __name__ == "__main__":
    probe("8B shape")
    probe("8B shape, attention without cuDNN", without_cudnn=True)
    probe("wide 8192 x 16 layers", layers=16, width=8192, heads=64, kv_heads=8, mlp=28672)
    probe("wide 8192 x 16 layers, attention without cuDNN", without_cudnn=True, layers=16, width=8192, heads=64,
          kv_heads=8, mlp=28672)
