"""A generation-like loop that reports its tokens with flopwatch.client.

    python decode_worker.py BATCH SECONDS PUSH_URL

A stand-in for a decoder: per token, an 8-layer 4096-wide bf16 MLP (the weights are read once per
step, whatever the batch) and an attention-like read over a per-sequence cache of 512 positions.
One token per sequence per step, synchronised each step as sampling would be. Prints "ready"
once warm, then runs SECONDS more.
"""

from __future__ import annotations

import sys
import time

import torch

from flopwatch.client import TokenClient

WIDTH, LAYERS, CONTEXT = 4096, 8, 512


def main() -> None:
    batch, seconds, url = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    weights = [torch.randn(WIDTH, WIDTH, device="cuda", dtype=torch.bfloat16) / WIDTH**0.5 for _ in range(LAYERS)]
    cache = torch.randn(batch, CONTEXT, WIDTH, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(batch, WIDTH, device="cuda", dtype=torch.bfloat16)

    def step(x: torch.Tensor) -> torch.Tensor:
        for w in weights:
            x = torch.relu(x @ w)
        scores = torch.softmax(torch.einsum("bcd,bd->bc", cache, x).float() / WIDTH**0.5, dim=-1)
        x = torch.einsum("bc,bcd->bd", scores.to(x.dtype), cache)
        x.amax().item()  # the host waits for each token, as sampling does
        return x

    for _ in range(20):
        x = step(x)
    print("ready", flush=True)
    # Flushing 4 times a second keeps the agent's window edges sharp; the cost is a loopback POST.
    with TokenClient(url, job=f"decode-batch{batch}", flush_interval=0.25) as tokens:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            x = step(x)
            tokens.add(generated_tokens=batch)


if __name__ == "__main__":
    main()
