"""Patterns from users' code that no rule was written for: gradient accumulation that syncs on
every micro-step to log the loss, a metric computed on the CPU after every step, and a collate
function that moves each batch to the GPU from pageable memory."""

from __future__ import annotations

import numpy as np
import torch

from . import DEV, dim, ready


def grad_accum_item_sync() -> None:
    """A 12-block 768-wide GPT at micro-batch 2 × 256, gradients accumulated over 8 micro-steps,
    each micro-step's loss logged with `.item()` (a sync that drains the launch queue)."""
    from .speed import gpt

    model = gpt(12, width=768, heads=12)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    micro = [torch.randn(2, dim(256), dim(768), device=DEV) for _ in range(8)]
    log = []
    while True:
        for x in micro:
            with torch.autocast(DEV, dtype=torch.bfloat16):
                loss = model(x).float().square().mean() / len(micro)
            loss.backward()
            log.append(loss.item())
        opt.step()
        opt.zero_grad(set_to_none=True)
        ready()


def roc_auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean one-vs-rest ROC AUC by ranks (Mann–Whitney U), per class: an argsort of the batch each."""
    aucs = []
    for c in range(scores.shape[1]):
        positive = labels == c
        n_pos = positive.sum()
        if 0 < n_pos < len(labels):
            ranks = np.empty(len(labels))
            ranks[np.argsort(scores[:, c])] = np.arange(1, len(labels) + 1)
            aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(labels) - n_pos)))
    return float(np.mean(aucs))


def metric_on_cpu_every_step() -> None:
    """A 1000-class head over 4096-wide features trained at batch 8192, and after every step the
    batch's ROC AUC computed from its scores on the CPU (compute_metrics, NumPy, one thread)."""
    classes, rows, width = 1000, dim(8192), dim(4096)
    with torch.device(DEV):
        model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, classes))
        features = torch.randn(rows, width)
        labels = torch.randint(0, classes, (rows,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def compute_metrics(logits: torch.Tensor) -> float:
        return roc_auc_score(labels.cpu().numpy(), logits.float().softmax(-1).cpu().numpy())

    while True:
        with torch.autocast(DEV, dtype=torch.bfloat16):
            logits = model(features)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        compute_metrics(logits.detach())
        ready()


def collate_to_gpu(batch: list[torch.Tensor]) -> torch.Tensor:
    """The custom collate: the shard already is a batch; it goes to the GPU here, unpinned."""
    return batch[0].to(DEV)


def collate_to_gpu_unpinned() -> None:
    """A DataLoader over pre-batched float32 shards (256 × 3 × 224 × 224, 154 MB each) in host
    memory whose collate_fn copies each to the GPU; a linear probe trains on it."""
    shards = [torch.randn(dim(256), 3 * 224 * 224) for _ in range(8)]
    loader = torch.utils.data.DataLoader(shards, batch_size=1, collate_fn=collate_to_gpu)
    with torch.device(DEV):
        probe = torch.nn.Linear(3 * 224 * 224, 1000)
    opt = torch.optim.SGD(probe.parameters(), lr=1e-3)
    while True:
        for x in loader:
            with torch.autocast(DEV, dtype=torch.bfloat16):
                loss = probe(x).float().logsumexp(1).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            ready()


WORKLOADS = (grad_accum_item_sync, metric_on_cpu_every_step, collate_to_gpu_unpinned)
