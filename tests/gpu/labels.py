"""What each real-GPU workload should read, written before it ran: the cause a correct diagnosis
names (None: healthy, no finding), the functions a stack sample of the culprit should show for a
host-side cause, and the physics that says so.

A key is a workload name (tests/gpu/workloads), ``NAME xN`` for N copies of it on one GPU, or
``A+B`` for two different jobs on one GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

HOST_SIDE = frozenset({"input_starved", "launch_bound", "io_bound", "host_transfer_bound", "held_idle", "low_demand"})


@dataclass(frozen=True)
class Label:
    cause: str | None
    responsible: tuple[str, ...]  # a stack frame ("fn (file:line)") containing one of these names the culprit
    why: str
    start_seconds: float = 8.0  # from launch to its first step, for planning batches

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
        "launch_bound", ("evaluate", "forward", "_conv_forward"),
        "ResNet-18 at batch 16, 128²: ~60 kernels of a few µs each; `.item()` per batch drains the queue, "
        "so the GPU waits for Python to launch every kernel", 12.0),
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
}
