"""What each real-GPU workload should read, written before it ran: the cause a correct diagnosis
names (None: healthy, no finding), the functions a stack sample of the culprit should show for a
host-side cause, and the physics that says so.

A key is a workload name (tests/gpu/workloads), ``NAME xN`` for N copies of it on one GPU, or
``A+B`` for two different jobs on one GPU.

A phase of a job's life (PHASES) is named like a cause: a workload that spends its time loading
weights is labelled ``loading_weights``, and a window is right when the finding names that phase,
as its cause or as its ``phase``. ``contributing``: causes a complete finding names beside the
primary one; scored apart, the primary alone decides whether a window is right.

A label describes its workload under the threshold. A window that runs over it (a workload sized near
the threshold, on a faster host) is right with no page: no finding, or a ticket for the label's cause
or a contributing one. The scores say how many windows were right that way.
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("starting", "loading_weights", "compiling", "checkpointing", "evaluating", "exiting")
HOST_SIDE = frozenset({"input_starved", "launch_bound", "io_bound", "host_transfer_bound", "held_idle", "low_demand",
                       *PHASES})
# What the rules over the threshold name (judge/diagnose.py's BUSY): tickets on a busy GPU. Any other
# label's cause is a waiting GPU's, which a window over the threshold cannot show.
BUSY_CAUSES = frozenset({"power_capped", "thermal_throttled", "clocks_capped", "communication_bound", "memory_bound",
                         "no_tensor_cores", "contention"})


@dataclass(frozen=True)
class Label:
    cause: str | None
    responsible: tuple[str, ...]  # a stack frame ("fn (file:line)") containing one of these names the culprit
    why: str
    start_seconds: float = 8.0  # from launch to its first step, for planning batches
    contributing: tuple[str, ...] = ()

    def names_culprit(self, frames: list[str]) -> bool:
        return any(name in frame for frame in frames for name in self.responsible)


LABELS: dict[str, Label] = {
    "healthy": Label(None, (), "4 bf16 8192² GEMMs forward and backward on resident data: tensor cores busy"),
    "starved_dataloader": Label(
        "input_starved", ("__getitem__", "avg_pool2d", "_next_data", "_get_data"),
        "2 workers run 6 CPU pooling passes per 256² image; the GPU finishes a batch far sooner"),
    "tokenizer_in_loop": Label(
        "input_starved", ("tokenizer_in_loop",),
        "a Python loop over 200 000 words on the training thread per step; the GPU's step is ~ms"),
    "held_idle": Label("held_idle", ("held_idle",), "20 GiB allocated, then time.sleep forever: no kernels"),
    "fp32_no_tf32": Label("no_tensor_cores", (), "FP32 GEMMs with TF32 off run on the FMA pipes only"),
    "tiny_kernels": Label("launch_bound", ("tiny_kernels",),
                          "one-element ops: each kernel takes ~2 µs, its launch from Python ~10 µs"),
    "pageable_copies": Label("host_transfer_bound", ("pageable_copies",),
                             "256 MB copied from pageable memory per step, one small kernel on it"),
    "elementwise_bandwidth": Label("memory_bound", (), "add/mul over 1 GiB tensors: bytes, not FLOPs, limit"),
    "shared_matmul x2": Label("contention", (), "two processes' GEMM loops time-slice one GPU"),
    "small_batch_training": Label(
        "launch_bound", ("small_batch_training", "forward", "backward", "step"),
        "24-layer MLP at batch 256: kernels of a few µs each, Python and autograd launch slower"),
    "eager_small_inference": Label("launch_bound", ("eager_small_inference", "forward"),
                                   "48 tiny bf16 kernels per forward at batch 32, launched one by one"),
    "light_traffic_server": Label("low_demand", ("light_traffic_server",),
                                  "a 10 ms burst of GEMMs, then 50 ms of sleep: the work comes rarely"),
    "numpy_augment_in_loop": Label("input_starved", ("numpy_augment_in_loop",),
                                   "NumPy clips 38 MB three times on the training thread per big step"),
    "resnet50_jpeg_2_workers": Label(
        "input_starved", ("__getitem__", "decode", "_next_data", "_get_data", "resized_crop", "pil_to_tensor"),
        "2 workers decode+crop ~1000 JPEGs/s (~2 ms each); bf16 ResNet-50 trains ~3000 images/s", 15.0),
    "resnet50_jpeg_many_workers": Label(
        None, (), "12 workers decode ~6000 JPEGs/s, twice what the GPU trains; 4 batches prefetched a worker", 20.0),
    "resnet50_fp32_no_tf32": Label("no_tensor_cores", (),
                                   "FP32 convolutions with cudnn TF32 off: FMA pipes, tensor cores idle", 12.0),
    "eval_item_every_step": Label(
        "evaluating", ("evaluate", "forward", "_conv_forward"),
        "ResNet-18 at batch 16, 128²: ~60 kernels of a few µs each; `.item()` per batch drains the queue, "
        "so the GPU waits for Python to launch every kernel (labelled launch_bound until evaluation had a name "
        "of its own)", 12.0),
    "llama_train_bf16": Label(None, (), "0.7B Llama, 8×1024 tokens, bf16 + SDPA: ~35 TFLOP a step in big GEMMs",
                              20.0),
    "llama_greedy_decode": Label(
        "launch_bound", ("generate", "_sample", "forward"),
        "batch-1 decode: per token ~300 kernels of µs each (GEMVs over 1.4 GB of weights), the Python "
        "of transformers launching them is slower than the GPU runs them", 20.0),
    "bert_slow_tokenizer": Label(
        "input_starved", ("tokeniz", "Tokenizer", "_run_split_on_punc", "_is_punctuation", "_clean_text",
                          "_encode_plus"),
        "pure-Python WordPiece over 128 sentences of ~80 words per step takes longer than BERT-large's step",
        20.0),
    "bert_fast_tokenizer": Label(None, (), "Rust encode_batch of the same text takes ~ms; BERT-large's step ~100 ms",
                                 20.0),
    "compiled_gpt_training": Label(None, (), "torch.compile of a 6-block GPT at 16×1024: fused big kernels", 90.0),
    "cuda_graph_inference": Label(None, (), "a CUDA graph of 16 bf16 1024×4096² GEMMs replayed back to back", 10.0),
    "sdpa_prefill_inference": Label(None, (), "12 GPT blocks at 8×2048 tokens, flash SDPA: compute-bound", 12.0),
    "amp_grad_accumulation": Label(None, (), "fp16 autocast + GradScaler, 4 micro-batches of 2048×8192²", 12.0),
    "activation_offload_training": Label(
        "host_transfer_bound", ("pack_to_cpu", "unpack_from_cpu"),
        "save_on_cpu(pin_memory=False): ~2 GB of activations out and back per step through pageable "
        "copies (~0.4 s) for ~30 ms of GEMMs", 12.0),
    "odirect_file_loader": Label(
        "io_bound", ("read_batch",),
        "64 MiB O_DIRECT reads from disk (~1–3 GB/s) into pinned memory per step on the training thread; "
        "the copy to the GPU takes a few ms of the read's tens, the GPU's part is tiny", 20.0),
    "host_oversubscribed": Label(
        "input_starved", ("augment_batches", "Queue.get"),
        "2 busy processes per core: the feeder thread is runnable but gets ~half a core, the GPU waits", 15.0),
    "http_light_server": Label(
        "low_demand", ("serve_forever", "select", "accept", "do_POST"),
        "one 32-token request every 0.7 s: the GPU busy ~1 % of the time, the server waiting in select", 10.0),
    "interactive_model_loaded": Label(
        "held_idle", ("interact", "raw_input"),
        "2.8 GB of bf16 weights loaded, one answer generated, then the session waits at its prompt", 20.0),
    "llama_train_bf16+sdpa_prefill_inference": Label(
        "contention", (), "a training job and an inference job of two users time-slice one GPU", 20.0),
    # Two servers sharing one GPU. Under the threshold together, neither is slowed much by the
    # other: each would read its own cause alone, and that cause's fix comes first (one job per GPU
    # would leave two GPUs as empty); the sharing is a contributing cause. Over it, docs/causes.md
    # tries memory_bound before contention, so DRAM-bound decoders read a memory_bound ticket.
    "llama_greedy_decode x2": Label(
        "launch_bound", ("generate", "_sample", "forward"),
        "two chat backends, each the batch-1 decode of llama_greedy_decode (SM 0.03 alone), time-slice one GPU: "
        "together ~0.06, each still waits on its own Python launches", 25.0, contributing=("contention",)),
    "http_light_server x2": Label(
        "low_demand", ("serve_forever", "select", "accept", "do_POST"),
        "two light-traffic model servers (a request every 0.7 s each) on one GPU: busy ~2 % together, both "
        "waiting in select; consolidating them is the fix, which sharing already half does", 10.0,
        contributing=("contention",)),
    "busy_decode_server x2": Label(
        "memory_bound", (),
        "two decode servers at batch 64 over 2048-position KV caches: per step ~2.4 GB read for ~19 GFLOP "
        "(flops utilization ~0.02), DRAM busy ~0.8 and SM ~0.9 between them; over the threshold memory_bound "
        "is tried before contention: a ticket, two processes sharing as its contributing cause (issue 29's "
        "two decoders, util 0.66)", 12.0, contributing=("contention",)),
    # Sized so the GPU's and the host's share of a token are alike: 16 GB of bf16 weights read per
    # token at ~2.9 TB/s is ~5.5 ms of GEMVs that fill the SMs; ~35 eager kernels a layer (GEMVs,
    # rotary, norms, cache writes) × 32 layers at ~6 µs of Python and dispatch each is ~6.7 ms of
    # launching, and the ~1000 small ones run ~2 µs each on a few SMs; the token's `.item()` lets
    # the queue run dry once a token. Expected SM 0.5–0.65, kernel time ~0.9: under the threshold
    # that is launch_bound (kernels nearly always running on few SMs); its GEMVs read DRAM.
    "llama8b_decode": Label(
        "launch_bound", ("decode_token", "forward", "attention"),
        "batch-1 decode of an 8B Llama-shaped model (random bf16 weights, static KV cache, eager PyTorch): "
        "~5.5 ms of weight reads a token against ~5 ms of launching and a sync per token, so the GPU idles "
        "while Python launches; its kernels read DRAM, not FLOPs", 40.0, contributing=("memory_bound",)),
    # The decode the 8B one was meant to be (issue 29's alone at SM ~0.63): with cuDNN attention out
    # of the way the host launches a token in ~11 ms (the probe: 45 ms less cuDNN's 35), and the GPU's
    # GEMVs take about half of that. The GPU runs a token's kernels while the host is still launching
    # them, then waits: busy about half the time, nearly all of it in GEMVs across every SM, so SM
    # ~0.5 — under the threshold because Python launches too slowly. (Written for a version that
    # sized its MLP at start to ~0.55 of the launching; its timing of the first forwards hit the
    # 28672 bound, which is the shape it ran and now has: SM 0.40–0.51 on the H100.)
    "llama_decode_half_busy": Label(
        "launch_bound", ("decode_token", "forward", "attention"),
        "batch-1 eager decode of a Llama-shaped model (8B's attention, a 28672 MLP: 12.6B parameters), SDPA "
        "kept off cuDNN: the GPU's GEMVs fill about half of the host's launching a token, SM ~0.5, the GPU "
        "waiting on Python's launches the rest of the time; its GEMVs read DRAM", 40.0,
        contributing=("memory_bound",)),
    # A job's life: each phase alone, repeated so that every window sits in it.
    "startup_loop": Label(
        "starting", ("_find_and_load", "_lazy_init", "exec_module", "_call_with_frames_removed", "from_config"),
        "a sweep launcher starting trial after trial: each creates its CUDA context, imports transformers, "
        "torchvision and dynamo, builds its model on the GPU and ends; a process holds ~1 GB and runs one core "
        "of imports while the GPU runs nothing", 20.0),
    "torch_load_weights": Label(
        "loading_weights", ("load", "_load", "load_state_dict", "persistent_load"),
        "a 7 GB state dict torch.load-ed from local disk (page cache dropped, as on a node's first load), then "
        "load_state_dict into the model on the GPU: the disk and the unpickler take seconds, the copy ~1 s", 90.0),
    "safetensors_load_weights": Label(
        "loading_weights", ("load_file", "load_state_dict", "safe_open", "load"),
        "the same 7 GB from .safetensors shards (safetensors.torch.load_file, cold page cache), then "
        "load_state_dict: the GPU holds the model and waits on the disk", 90.0),
    "from_pretrained_local": Label(
        "loading_weights", ("from_pretrained", "_load_pretrained_model", "load_state_dict", "load_shard_file",
                            "load"),
        "LlamaForCausalLM.from_pretrained of a local 3.6B-parameter checkpoint (safetensors, cold page cache) "
        "onto the GPU, again and again as a model server restarting", 90.0),
    "compile_warmup": Label(
        "compiling", ("compile", "codegen", "lower", "_inductor", "_dynamo"),
        "torch.compile of a 6-block GPT of a new width each round (caches off, as in a fresh container): "
        "dynamo tracing and inductor's code generation on the host for tens of seconds, one step on the GPU",
        90.0),
    "max_autotune_compile": Label(
        "compiling", ("autotune", "benchmark", "select_algorithm", "compile"),
        "torch.compile(mode='max-autotune-no-cudagraphs') of an MLP of new shapes each round: Triton GEMM "
        "configurations compiled on the host and timed in short GPU bursts", 90.0),
    "torch_save_checkpoint": Label(
        "checkpointing", ("save", "_save", "persistent_id", "write"),
        "a 1.3B-parameter model and its AdamW state (~16 GB) torch.save-d every training step: the host copies "
        "and serializes for seconds, the step takes ~100 ms", 30.0),
    "dcp_save_checkpoint": Label(
        "checkpointing", ("save", "write_data", "_write_item", "_write_files_from_queue", "_save_state_dict"),
        "the same model and optimizer saved with torch.distributed.checkpoint.save in one process (no process "
        "group) every step: the planner and the file writer on the host, the GPU idle", 30.0),
    "llm_eval_loop": Label(
        "evaluating", ("evaluate", "forward"),
        "validation perplexity of the 0.7B Llama: model.eval(), no_grad, batch 4×512, `loss.item()` and the "
        "token accuracy's `.item()` every batch; ~3 ms of GEMMs a batch behind ~10 ms of eager launches", 25.0),
    "slow_exit": Label(
        "exiting", ("_shutdown", "upload_results"),
        "a job whose script ends with its results uploading on a non-daemon thread: the interpreter joins it at "
        "exit (threading._shutdown) for a minute, the process holding its CUDA context, the GPU running nothing "
        "(labelled 2026-12-07, not yet run)", 15.0),
    # Patterns from users' code that no rule was written for.
    "grad_accum_item_sync": Label(
        "launch_bound", ("grad_accum_item_sync", "forward", "backward"),
        "a 12-block 768-wide GPT at micro-batch 2×256, 8 micro-steps accumulated, `loss.item()` logged after "
        "each: kernels of a few µs, and each sync drains the queue before Python launches the next", 12.0),
    "metric_on_cpu_every_step": Label(
        "input_starved", ("roc_auc_score", "compute_metrics"),
        "a 1000-class head trained at batch 8192 (~5 ms a step), then per-class ROC AUC of the batch's scores in "
        "NumPy on the training thread (~0.3 s): the GPU waits for a single-threaded host stage; no rule names a "
        "metric stage, and a saturated host thread the GPU waits on is what input_starved says", 10.0),
    "collate_to_gpu_unpinned": Label(
        "host_transfer_bound", ("collate_to_gpu",),
        "a DataLoader whose collate_fn moves each pre-batched 150 MB float32 shard to the GPU from pageable "
        "memory (~10 GB/s through the driver's staging copy) for a linear probe of ~0.1 ms", 12.0),
}
