"""Phases of a job's life that leave the GPU waiting: starting, loading_weights, compiling,
checkpointing, evaluating, exiting. The counters show a read, a busy thread or a quiet GPU; the frames
around the work name the phase, so these are named from the culprit's stacks (judge/stackclass.py),
not by a rule over the counters. Tickets: the job's owner shortens a phase, not on-call."""

from __future__ import annotations

from flopwatch.judge.causes.rule import Cause

STARTING = Cause(
    "starting", "Job starting up (imports, CUDA initialization)",
    "The job is starting: importing Python modules and initializing CUDA while the GPU waits. Use an image with "
    "every dependency installed (no pip at start), import lazily, keep a warm worker or model server instead of a "
    "new process per task, and start the next job's process while the last one finishes.")
LOADING_WEIGHTS = Cause(
    "loading_weights", "GPU waiting while model weights load",
    "The GPU waits while model weights load. Keep the weights on local NVMe (not a network filesystem), use "
    "safetensors with mmap and load straight to the GPU (safe_open or load_file(device='cuda'), "
    "torch.load(mmap=True)), load shards in parallel, or keep a warm model server instead of reloading per job.")
COMPILING = Cause(
    "compiling", "GPU waiting while the model compiles",
    "The GPU waits while the model compiles (torch.compile/Inductor, Triton autotuning, TensorRT or ONNX builds). "
    "Keep the compile caches between runs (TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR on persistent local disk), "
    "compile the repeated block once (regional compilation), use max-autotune only where it pays back, and build "
    "engines ahead of time.")
CHECKPOINTING = Cause(
    "checkpointing", "GPU waiting while a checkpoint is saved",
    "The GPU waits while a checkpoint is written. Save asynchronously (torch.distributed.checkpoint.async_save, or "
    "copy to pinned host memory and write from a thread), write to local NVMe and upload after, save each rank's "
    "shard only, and save less often.")
EVALUATING = Cause(
    "evaluating", "GPU waiting in an evaluation loop",
    "The GPU waits in an evaluation loop: per-batch .item()/.cpu() syncs and metric code on the host leave it "
    "idle. Evaluate under torch.inference_mode() with larger batches, keep metrics on the GPU and sync once per "
    "evaluation, or evaluate less often or on a subset.")

EXITING = Cause(
    "exiting", "GPU waiting while the job exits",
    "The job has finished its work and is exiting with its process still on the GPU: atexit handlers, joining "
    "threads and worker processes, destroying the process group, freeing the CUDA context. A second or two is "
    "normal; where it lasts, the stacks show the handler: give joins and uploads a timeout, make helper threads "
    "daemons, shut loader workers and compile pools down before the end, and upload results after the process "
    "has released the GPU.")

PHASES = (STARTING, LOADING_WEIGHTS, COMPILING, CHECKPOINTING, EVALUATING, EXITING)
