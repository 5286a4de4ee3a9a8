"""Jobs held back by the host: a loader waiting on the disk, a host whose cores other processes
take, activations offloaded to host memory through pageable copies."""

from __future__ import annotations

import ctypes
import mmap
import os
import queue
import signal
import subprocess
import sys
import threading

import numpy as np
import torch

from . import DEV, dim, ready, scratch_dir

CHUNK = 64 * 2**20


def write_shards(path, size: int) -> None:
    """The data set on disk, written once, bypassing the page cache so nothing of it stays cached."""
    if path.exists() and path.stat().st_size == size:
        return
    block = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT requires
    block.write(np.random.default_rng(0).integers(0, 256, CHUNK, dtype=np.uint8).tobytes())
    for flags in (os.O_DIRECT, 0):  # a file system without O_DIRECT: write, then drop it from the cache
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o600)
            try:
                for _ in range(size // CHUNK):
                    os.write(fd, block)
                os.fsync(fd)
                os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            return
        except OSError:
            if not flags:
                raise


def read_batch(fd: int, buffer: torch.Tensor, offset: int, direct: bool) -> None:
    """One batch from the file, waiting on the disk (O_DIRECT; else buffered and dropped after)."""
    os.preadv(fd, [buffer.numpy()], offset)
    if not direct:
        os.posix_fadvise(fd, offset, CHUNK, os.POSIX_FADV_DONTNEED)


def odirect_file_loader() -> None:
    """Batches of a 4 GiB pre-tokenized shard read with O_DIRECT, 64 MiB at a time, on the training
    thread, into a pinned buffer; each is copied to the GPU and summed (the GPU's part is tiny, and
    the copy from pinned memory takes a few ms of the disk's tens)."""
    path = scratch_dir() / "shard.bin"
    size = dim(4096) * 2**20 // CHUNK * CHUNK or CHUNK
    write_shards(path, size)
    try:
        fd, direct = os.open(path, os.O_RDONLY | os.O_DIRECT), True
    except OSError:  # a file system without O_DIRECT (tmpfs): read, then drop what was cached
        fd, direct = os.open(path, os.O_RDONLY), False
    print(f"reading {path} {'O_DIRECT' if direct else 'buffered, dropped after each read'}", flush=True)
    staging = torch.empty(CHUNK + 4096, dtype=torch.uint8, pin_memory=DEV == "cuda")
    skip = -staging.data_ptr() % 4096  # O_DIRECT reads into page-aligned memory
    buffer = staging[skip:skip + CHUNK]
    total = torch.zeros((), device=DEV)
    offset = 0
    while True:
        read_batch(fd, buffer, offset, direct)
        offset = (offset + CHUNK) % size
        total += buffer.to(DEV).view(torch.int16).float().sum()
        ready()


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def augment_batches(out: queue.Queue, rows: int) -> None:
    """The feeder: NumPy augmentation of each batch (jitter, clip, normalise), ~1 core's work."""
    rng = np.random.default_rng(0)
    while True:
        img = rng.random((rows, 3, 64, 64), dtype=np.float32)
        for _ in range(4):
            img = np.clip(img * rng.uniform(0.9, 1.1) + rng.normal(0, 0.01, img.shape).astype(np.float32), 0, 1)
        out.put(torch.from_numpy((img - img.mean()) / (img.std() + 1e-6)).view(rows, -1))


def host_oversubscribed() -> None:
    """A training loop fed by a feeder thread on a host where other users' processes (two per core,
    pure CPU) keep every core busy: the feeder is runnable but waits for a CPU."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_die_with_parent)
            for _ in range(2 * (os.cpu_count() or 1))]
    print(f"{len(hogs)} busy processes", flush=True)
    rows = dim(256)
    batches: queue.Queue = queue.Queue(maxsize=4)
    threading.Thread(target=augment_batches, args=(batches, rows), daemon=True).start()
    with torch.device(DEV):
        model = torch.nn.Sequential(torch.nn.Linear(3 * 64 * 64, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 4096),
                                    torch.nn.GELU(), torch.nn.Linear(4096, 1000))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    while True:
        x = batches.get().to(DEV, non_blocking=True)
        with torch.autocast(DEV, dtype=torch.bfloat16):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ready()


def activation_offload_training() -> None:
    """Activations offloaded to host memory to fit a bigger batch (torch.autograd.graph.save_on_cpu,
    pageable): every saved tensor goes out over PCIe in forward and back in backward."""
    with torch.device(DEV):
        model = torch.nn.Sequential(*(m for _ in range(8) for m in (torch.nn.Linear(dim(8192), dim(8192)),
                                                                    torch.nn.GELU())))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(dim(4096), dim(8192), device=DEV)
    while True:
        with torch.autograd.graph.save_on_cpu(pin_memory=False), torch.autocast(DEV, dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ready()


WORKLOADS = (odirect_file_loader, host_oversubscribed, activation_offload_training)
