"""Two ranks of one torchrun job on one GPU, all-reducing their gradients over gloo (NCCL refuses
two ranks on one device): the smallest real multi-process job, for reading its identity and ranks
from torchrun's environment. Rank 1 spends STRAGGLE_MS of CPU time each step, so rank 0 waits for
it in every all-reduce. Runs until killed; each rank prints ``ready`` after its fifth step.

    python3 -m torch.distributed.run --standalone --nproc-per-node 2 tests/gpu/gloo_job.py
"""

import os
import time

import torch
import torch.distributed as dist

STRAGGLE_MS = float(os.environ.get("STRAGGLE_MS", "30"))

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.cuda.set_device(0)
model = torch.nn.Linear(4096, 4096, device="cuda")
batch = torch.randn(512, 4096, device="cuda")
optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
step = 0
while True:
    model(batch).square().mean().backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)  # gloo copies CUDA tensors through host memory
    optimizer.step()
    optimizer.zero_grad()
    if rank == 1:
        until = time.perf_counter() + STRAGGLE_MS / 1000
        while time.perf_counter() < until:
            pass
    step += 1
    if step == 5:
        print(f"rank {rank} pid {os.getpid()} ready", flush=True)
