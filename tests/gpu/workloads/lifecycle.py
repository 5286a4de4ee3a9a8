"""A job's life, one phase a workload, each repeated so that every window sits in it: starting
(CUDA and imports), loading weights (torch.load, safetensors, from_pretrained), compiling
(inductor, Triton autotuning), checkpointing (torch.save, torch.distributed.checkpoint),
evaluating and exiting. The weights are a Llama-shaped 3.6B-parameter model with random bf16 weights, written
once to local disk (the scratch directory) and read back with the page cache dropped, as a node
reads them the first time."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from . import DEV, dim, ready, scratch_dir


def llama_config(layers: int = 28):
    """A Llama-3.2-3B-like shape (3072 wide, 28 layers, GQA 24/8, 128k vocabulary): 3.6B parameters."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=128256, hidden_size=dim(3072), intermediate_size=dim(8192),
                       num_hidden_layers=layers, num_attention_heads=24, num_key_value_heads=8,
                       max_position_embeddings=4096, tie_word_embeddings=False)


def build_llama(layers: int = 28) -> torch.nn.Module:
    """The model with random weights, made on the device (no slow CPU init), in bf16."""
    from transformers import LlamaForCausalLM

    with torch.device(DEV):
        return LlamaForCausalLM(llama_config(layers)).to(torch.bfloat16)


def checkpoint_dir() -> Path:
    """The model as `save_pretrained` writes it (safetensors shards) and as one torch.save file,
    written once; later runs find them."""
    path = scratch_dir() / f"llama-3b-{dim(3072)}"
    done = path / "complete"
    if not done.exists():
        model = build_llama()
        model.save_pretrained(path)
        torch.save(model.state_dict(), path / "state_dict.pt")
        del model
        # Written back before any job runs: dirty pages would make drop_cached wait on the disk
        # (14 GB at its pace) inside the job's loading phase, and would not be dropped.
        os.sync()
        done.touch()
    return path


def drop_cached(path: Path) -> None:
    """Drop the files' pages from the page cache, so the next read waits on the disk."""
    for file in ([path] if path.is_file() else sorted(path.iterdir())):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def startup_trial() -> None:
    """One trial's start: the CUDA context first (set_device), then the imports, then its model."""
    if DEV == "cuda":
        torch.cuda.set_device(0)
    for module in ("torch._dynamo", "torch._inductor.config", "torchvision.models",
                   "transformers.models.llama.modeling_llama"):
        importlib.import_module(module)

    model = build_llama(layers=4)
    model(torch.randint(0, 1000, (1, 16), device=DEV))[0].sum().item()


def startup_loop() -> None:
    """A sweep launcher: trial after trial, each a fresh process that starts and ends at once. The
    launcher itself never touches CUDA (so `ready` is printed here, not by ready())."""
    command = [sys.executable, "-c", "from tests.gpu.workloads.lifecycle import startup_trial; startup_trial()"]
    subprocess.run(command, check=True)
    print("ready", flush=True)
    while True:
        subprocess.run(command, check=True)


def torch_load_weights() -> None:
    """torch.load of the state dict from disk, then load_state_dict into the model on the GPU."""
    file = checkpoint_dir() / "state_dict.pt"
    model = build_llama()
    while True:
        drop_cached(file)
        model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        ready()


def safetensors_load_weights() -> None:
    """safetensors.torch.load_file of each shard from disk, then load_state_dict."""
    from safetensors.torch import load_file

    path = checkpoint_dir()
    model = build_llama()
    while True:
        drop_cached(path)
        for shard in sorted(path.glob("*.safetensors")):
            model.load_state_dict(load_file(shard), strict=False)
        ready()


def from_pretrained_local() -> None:
    """A model server's start: from_pretrained of the local checkpoint onto the GPU, again and again."""
    from transformers import LlamaForCausalLM

    path = checkpoint_dir()
    while True:
        drop_cached(path)
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=DEV)
        del model
        ready()


def compile_warmup() -> None:
    """torch.compile of a fresh 6-block GPT of a new width each round, caches off: each round's
    first step compiles forward and backward."""
    os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    import torch._dynamo

    from .speed import gpt

    for width in range(1024, 1 << 20, 64):
        torch._dynamo.reset()
        model = torch.compile(gpt(6, width=width))
        x = torch.randn(4, dim(512), dim(width), device=DEV)
        with torch.autocast(DEV, dtype=torch.bfloat16):
            model(x).float().square().mean().backward()
        ready()


def max_autotune_compile() -> None:
    """torch.compile(mode="max-autotune-no-cudagraphs") of a 4-layer MLP of new shapes each round:
    inductor compiles and times Triton GEMM configurations for every matmul."""
    os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    import torch._dynamo

    for width in range(2048, 1 << 20, 128):
        torch._dynamo.reset()
        with torch.device(DEV):
            mlp = torch.nn.Sequential(*(m for _ in range(4) for m in (torch.nn.Linear(width, width), torch.nn.GELU())))
        model = torch.compile(mlp.to(torch.bfloat16), mode="max-autotune-no-cudagraphs")
        with torch.no_grad():
            model(torch.randn(dim(4096), width, device=DEV, dtype=torch.bfloat16))
        ready()


def train_and_save(save) -> None:
    """A 1.4B-parameter Llama (2048 wide, 24 layers, fp32 weights, AdamW: ~17 GB of state) trained
    a step at a time, ``save(model, opt)`` after every step."""
    from .language import llama

    model = llama(layers=24).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=DEV == "cuda")
    ids = torch.randint(0, 32000, (2, dim(512)), device=DEV)
    while True:
        with torch.autocast(DEV, dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        save(model, opt)
        ready()


def torch_save_checkpoint() -> None:
    """The model and optimizer torch.save-d to local disk after every step."""
    file = scratch_dir() / "checkpoint.pt"
    train_and_save(lambda model, opt: torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, file))


def dcp_save_checkpoint() -> None:
    """The same state saved with torch.distributed.checkpoint in one process (no process group)."""
    import torch.distributed.checkpoint as dcp

    path = str(scratch_dir() / "dcp-checkpoint")
    def save(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        state = {f"{index}.{name}": value for index, per in opt.state_dict()["state"].items()
                 for name, value in per.items()}  # tensors under string keys: what DCP plans without FSDP
        dcp.save({"model": model.state_dict(), "optimizer": state}, checkpoint_id=path)

    train_and_save(save)


def llm_eval_loop() -> None:
    """Validation perplexity and token accuracy of the 0.7B Llama, a `.item()` per batch for each."""
    from .language import llama

    model = llama().to(torch.bfloat16)
    batches = [torch.randint(0, 32000, (4, dim(512)), device=DEV) for _ in range(16)]

    def evaluate() -> tuple[float, float]:
        model.eval()
        loss_sum = correct = count = 0.0
        with torch.no_grad():
            for ids in batches:
                out = model(input_ids=ids, labels=ids)
                loss_sum += out.loss.item()
                correct += (out.logits[:, :-1].argmax(-1) == ids[:, 1:]).sum().item()
                count += ids[:, 1:].numel()
        return loss_sum / len(batches), correct / count

    while True:
        evaluate()
        ready()


def upload_results(path: Path, seconds: float) -> None:
    """An upload of a job's results (written in 1 MB pieces, paced as a network link would be)."""
    deadline = time.monotonic() + seconds
    with open(path, "wb") as f:
        while time.monotonic() < deadline:
            f.write(os.urandom(2**20))
            time.sleep(0.05)


def slow_exit_job() -> None:
    """One job: a few training steps, then its script ends with its results uploading on a
    non-daemon thread, which the interpreter joins at exit (threading._shutdown) for a minute, the
    process still holding its CUDA context and memory."""
    model = torch.nn.Linear(dim(4096), dim(4096), device=DEV, dtype=torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(dim(4096), dim(4096), device=DEV, dtype=torch.bfloat16)
    for _ in range(20):
        model(x).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if DEV == "cuda":
        torch.cuda.synchronize()
    threading.Thread(target=upload_results, args=(scratch_dir() / "results.bin", 60.0)).start()
    print("exiting", flush=True)


def slow_exit() -> None:
    """A launcher running that job again and again; `ready` once the first job's script has ended."""
    command = [sys.executable, "-c", "from tests.gpu.workloads.lifecycle import slow_exit_job; slow_exit_job()"]
    announced = False
    while True:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        for line in child.stdout:
            if line.startswith("exiting") and not announced:
                print("ready", flush=True)
                announced = True
        child.wait()


WORKLOADS = (startup_loop, torch_load_weights, safetensors_load_weights, from_pretrained_local, compile_warmup,
             max_autotune_compile, torch_save_checkpoint, dcp_save_checkpoint, llm_eval_loop, slow_exit)
