"""A data-parallel (DDP over NCCL) training loop, one process per GPU. Runs until killed.

    torchrun --standalone --nproc-per-node 2 ddp_workload.py small|large|starved

~1.07 B parameters (16 square layers of 8192): every step all-reduces the gradients, 2.1 GB in
bf16. Measured on H100s: with one rank a small-batch step is 9.2 ms of weight streaming (SM active
0.92, DRAM 0.83); with two ranks over NVLink it is 15.3 ms, over PCIe through host memory 81 ms.
A large-batch step is ~320 ms of GEMMs, and hides the all-reduce behind the backward pass (DDP
buckets).

"starved" feeds the small batch from a DataLoader with two workers a rank doing CPU-heavy decoding
(workloads/basic.py's): the ranks wait on their loaders, and still all-reduce every step over NVLink.

FLOPWATCH_DDP_PARAMS=fp32 keeps fp32 parameters and runs the layers under bf16 autocast (PyTorch's
usual mixed precision): the gradients, and so the all-reduce, are fp32, twice the bytes.
Each rank prints ``step_ms`` (mean over the last two seconds) so a run's readings can be set
against what the step did.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist
from workloads.basic import _DecodeDataset

WIDTH = 8192
LAYERS = 16
ROWS = {"small": 16, "starved": 16, "large": int(os.environ.get("FLOPWATCH_DDP_LARGE_ROWS", "32768"))}
MIXED = os.environ.get("FLOPWATCH_DDP_PARAMS", "bf16") == "fp32"


def say(line: str) -> None:
    # One write, so the ranks' lines on torchrun's shared stdout never interleave.
    os.write(1, f"{line}\n".encode())


def inputs(batch: str) -> Iterator[torch.Tensor]:
    """The same resident batch every step, or, starved, batches the loader workers decode."""
    if batch == "starved":
        loader = torch.utils.data.DataLoader(_DecodeDataset(), batch_size=ROWS[batch], num_workers=2, pin_memory=True)
        for images in loader:
            yield images.flatten(1)[:, :WIDTH].to("cuda", torch.bfloat16, non_blocking=True)
    else:
        yield from itertools.repeat(torch.randn(ROWS[batch], WIDTH, device="cuda", dtype=torch.bfloat16))


def main(batch: str) -> None:
    rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl")
    dtype = torch.float32 if MIXED else torch.bfloat16
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH, bias=False, device="cuda", dtype=dtype)
                                  for _ in range(LAYERS)])
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank], gradient_as_bucket_view=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if MIXED else contextlib.nullcontext()
    steps, since = 0, None
    for x in inputs(batch):
        with autocast:
            loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        steps += 1
        if since is None:
            torch.cuda.synchronize()
            say(f"ready rank {rank} pid {os.getpid()}")
            steps, since = 0, time.monotonic()
        elif time.monotonic() - since >= 2.0:
            torch.cuda.synchronize()
            elapsed = time.monotonic() - since
            say(f"step_ms rank {rank} {elapsed / steps * 1e3:.1f}")
            steps, since = 0, time.monotonic()


if __name__ == "__main__":
    main(sys.argv[1])
