"""The first workloads: one per bottleneck a single GPU can show, each in a few lines."""

from __future__ import annotations

import time

import torch

from . import DEV, ready


def healthy() -> None:
    """A well-fed bf16 training step: big GEMMs forward and backward, data already on the GPU."""
    torch.backends.cuda.matmul.allow_tf32 = True
    layers = [torch.nn.Linear(8192, 8192, bias=False, device=DEV, dtype=torch.bfloat16) for _ in range(4)]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    while True:
        loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ready()


class _DecodeDataset(torch.utils.data.Dataset):
    """Samples that cost real CPU to produce, like JPEG decoding and augmentation."""

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(i)
        img = torch.rand(3, 256, 256, generator=g)
        for _ in range(6):  # resize/blur-like passes on the CPU
            img = torch.nn.functional.avg_pool2d(img.unsqueeze(0), 3, 1, 1).squeeze(0) * 1.01
        return img[:, :224, :224].contiguous()


def starved_dataloader() -> None:
    """A vision step fed by a DataLoader with two workers doing CPU-heavy decoding."""
    torch.set_num_threads(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 7, 2, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 128, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(128, 1000),
    ).to(DEV).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(_DecodeDataset(), batch_size=128, num_workers=2, pin_memory=True)
    for batch in loader:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch.to(DEV, non_blocking=True)).float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ready()


def tokenizer_in_loop() -> None:
    """A language-model step whose batch is tokenized in Python on the main thread each step."""
    vocab = {}
    words = [f"w{i}" for i in range(50_000)]
    text = " ".join(words[(i * 7919) % 50_000] for i in range(200_000))
    emb = torch.nn.Embedding(50_000, 2048, device=DEV, dtype=torch.bfloat16)
    proj = torch.nn.Linear(2048, 2048, device=DEV, dtype=torch.bfloat16)
    while True:
        ids = []
        for word in text.split():  # a slow, pure-Python tokenizer
            ids.append(vocab.setdefault(word, len(vocab) % 50_000))
        tokens = torch.tensor(ids[:65536], device=DEV).view(32, 2048)
        proj(emb(tokens)).float().mean().backward()
        ready()


def held_idle() -> None:
    """A notebook that loaded a model and went to lunch."""
    held = torch.empty(20 * 2**30, dtype=torch.uint8, device=DEV)
    held.fill_(1)
    ready()
    while True:
        time.sleep(1)


def fp32_no_tf32() -> None:
    """FP32 GEMMs with TF32 off: the FMA pipes do the work, tensor cores idle."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    a = torch.randn(8192, 8192, device=DEV)
    b = torch.randn(8192, 8192, device=DEV)
    while True:
        a = (a @ b) * 1e-4
        ready()


def tiny_kernels() -> None:
    """A Python loop of one-element ops: every kernel is a launch on one SM."""
    x = torch.zeros(1, device=DEV)
    step = 0
    while True:
        x = x + 1
        x = x * 0.5
        step += 1
        if step % 10_000 == 0:
            ready()


def pageable_copies() -> None:
    """Host-to-device copies from pageable memory, a small kernel on each chunk."""
    host = torch.randn(64 * 2**20)  # 256 MB, pageable
    while True:
        dev = host.to(DEV)
        dev.mul_(2.0)
        ready()


def elementwise_bandwidth() -> None:
    """Elementwise ops over tensors far larger than L2: bound by DRAM bandwidth."""
    x = torch.randn(1024 * 2**20 // 2, device=DEV, dtype=torch.bfloat16)  # 1 GiB
    y = torch.empty_like(x)
    while True:
        torch.add(x, 1.0, out=y)
        torch.mul(y, 0.5, out=x)
        ready()


def shared_matmul() -> None:
    """One of two jobs placed on the same GPU: medium bf16 GEMMs in a loop."""
    a = torch.randn(4096, 4096, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(4096, 4096, device=DEV, dtype=torch.bfloat16)
    while True:
        for _ in range(50):
            c = a @ b
        ready()
        del c


def _mlp(width: int, depth: int, **kwargs) -> torch.nn.Sequential:
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width, device=DEV, **kwargs), torch.nn.GELU()]
    return torch.nn.Sequential(*layers)


def small_batch_training() -> None:
    """A 24-layer MLP trained at batch 256 under bf16 autocast: each step hundreds of small kernels,
    launched by Python on the main thread and by the autograd engine's thread in turn."""
    model = _mlp(2048, 24)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = torch.randn(256, 2048, device=DEV)
    while True:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ready()


def eager_small_inference() -> None:
    """Eager bf16 inference at batch 32: small kernels one after another, no graph capture."""
    model = _mlp(1024, 24, dtype=torch.bfloat16)
    x = torch.randn(32, 1024, device=DEV, dtype=torch.bfloat16)
    with torch.no_grad():
        while True:
            model(x)
            ready()


def light_traffic_server() -> None:
    """A model server with little traffic: a burst of big GEMMs per request, then waiting."""
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    while True:
        for _ in range(6):
            c = a @ a
        torch.cuda.synchronize()
        ready()
        del c
        time.sleep(0.05)


def numpy_augment_in_loop() -> None:
    """Augmentation in NumPy on the main thread before each big GPU step."""
    import numpy as np

    w = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    rng = np.random.default_rng(0)
    while True:
        img = rng.random((64, 3, 224, 224), dtype=np.float32)
        for _ in range(3):
            img = np.clip(img * 1.01 + 0.001, 0.0, 1.0)
        x = torch.from_numpy(img.reshape(-1)[: 8192 * 1024].copy()).to(DEV).view(1024, 8192).bfloat16()
        for _ in range(4):
            x = x @ w
        ready()


WORKLOADS = (healthy, starved_dataloader, tokenizer_in_loop, held_idle, fp32_no_tf32, tiny_kernels, pageable_copies,
             elementwise_bandwidth, shared_matmul, small_batch_training, eager_small_inference, light_traffic_server,
             numpy_augment_in_loop)
