"""A data-parallel (DDP over NCCL) training loop, one process per GPU. Runs until killed.

    torchrun --standalone --nproc-per-node 2 ddp_workload.py small|large

~1.07 B bf16 parameters (16 square layers of 8192): every step all-reduces ~2.1 GB of gradients.
Measured on one H100 with one rank: a small-batch step is 9.4 ms of weight streaming (SM active
0.92, DRAM 0.83), a large-batch step 311 ms of GEMMs. Over PCIe (~25-50 GB/s) the all-reduce
takes 40-90 ms: the small batch waits on it most of the step, the large batch hides it behind the
backward pass (DDP buckets). Over an NVLink pair (~370 GB/s: ~6 ms) the all-reduce is shorter
than the small step's compute, so expect no communication_bound there.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

WIDTH = 8192
LAYERS = 16
ROWS = {"small": 16, "large": int(os.environ.get("FLOPWATCH_DDP_LARGE_ROWS", "32768"))}


def main(batch: str) -> None:
    rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl")
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH, bias=False, device="cuda", dtype=torch.bfloat16)
                                  for _ in range(LAYERS)])
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank], gradient_as_bucket_view=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x = torch.randn(ROWS[batch], WIDTH, device="cuda", dtype=torch.bfloat16)
    announced = False
    while True:
        model(x).float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        if not announced:
            torch.cuda.synchronize()
            print(f"ready rank {rank} pid {os.getpid()}", flush=True)
            announced = True


if __name__ == "__main__":
    main(sys.argv[1])
