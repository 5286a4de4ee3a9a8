"""Vision: torchvision ResNets trained from JPEGs decoded in a DataLoader, FP32 without TF32, and an
evaluation loop that reads its accuracy back every step."""

from __future__ import annotations

import io
import os

import numpy as np
import torch

from . import DEV, dim, ready

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def make_jpegs(count: int = 64, size: tuple[int, int] = (341, 256)) -> list[bytes]:
    """Photo-like JPEGs (smooth colour fields with noise, quality 90) at 256 on the short side, as
    ImageNet is commonly stored for training."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize(size, Image.BICUBIC)
        noisy = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-20, 21, (size[1], size[0], 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(noisy.astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class JpegDataset(torch.utils.data.Dataset):
    """ImageNet-style training samples: decode the JPEG, random-resized-crop to 224, flip."""

    def __init__(self, jpegs: list[bytes]) -> None:
        from torchvision.transforms import v2

        self.jpegs = jpegs
        self.transform = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
                                     v2.PILToTensor()])

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = Image.open(io.BytesIO(self.jpegs[i % len(self.jpegs)])).convert("RGB")
        return self.transform(img), i % 1000


def train_resnet50_from_jpegs(workers: int) -> None:
    """ResNet-50, bf16 autocast, channels-last, batch 256; uint8 batches normalised on the GPU."""
    import torchvision

    model = torchvision.models.resnet50(weights=None).to(DEV, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(JpegDataset(make_jpegs()), batch_size=dim(256), num_workers=workers,
                                         pin_memory=DEV == "cuda", persistent_workers=workers > 0,
                                         prefetch_factor=4 if workers else None)
    mean, std = MEAN.to(DEV), STD.to(DEV)
    for images, labels in loader:
        x = ((images.to(DEV, non_blocking=True).float() - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(DEV, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), labels.to(DEV, non_blocking=True))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ready()


def resnet50_jpeg_2_workers() -> None:
    """Two loader workers decode JPEGs for a GPU that trains several times faster than they decode."""
    train_resnet50_from_jpegs(2)


def resnet50_jpeg_many_workers() -> None:
    """The same job with a worker per core but four: the loader keeps up."""
    train_resnet50_from_jpegs(max(2, (os.cpu_count() or 8) - 4))


def resnet50_fp32_no_tf32() -> None:
    """ResNet-50 trained in FP32 with TF32 turned off (for bitwise reproducibility): CUDA cores only."""
    import torchvision

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = torchvision.models.resnet50(weights=None).to(DEV, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(dim(128), 3, 224, 224, device=DEV).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (x.shape[0],), device=DEV)
    while True:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ready()


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy counted the usual way: a `.item()` per batch, so the host waits for every batch."""
    correct = seen = 0
    for _ in range(50):
        with torch.autocast(DEV, dtype=torch.bfloat16):
            logits = model(x)
        correct += (logits.argmax(1) == y).sum().item()
        seen += y.numel()
    return correct / seen


def eval_item_every_step() -> None:
    """ResNet-18 evaluated at batch 16 on 128×128 crops, the accuracy read back every batch."""
    import torchvision

    model = torchvision.models.resnet18(weights=None).to(DEV, memory_format=torch.channels_last).eval()
    x = torch.randn(16, 3, 128, 128, device=DEV).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (16,), device=DEV)
    with torch.no_grad():
        while True:
            evaluate(model, x, y)
            ready()


WORKLOADS = (resnet50_jpeg_2_workers, resnet50_jpeg_many_workers, resnet50_fp32_no_tf32, eval_item_every_step)
