"""The usual ways to make a step fast: torch.compile, CUDA graphs, SDPA attention, mixed precision
with gradient accumulation. All are expected to keep the GPU busy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import DEV, dim, ready


class Block(torch.nn.Module):
    """A pre-norm GPT block whose attention is F.scaled_dot_product_attention (causal)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width, bias=False)
        self.out = torch.nn.Linear(width, width, bias=False)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                       torch.nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attn.transpose(1, 2).reshape(b, s, w))
        return x + self.mlp(self.norm2(x))


def gpt(layers: int, width: int = 2048, heads: int = 16) -> torch.nn.Module:
    with torch.device(DEV):
        return torch.nn.Sequential(*(Block(dim(width), heads) for _ in range(layers)))


def compiled_gpt_training() -> None:
    """A 6-block GPT trained under torch.compile (default mode), batch 16 × 1024, bf16 autocast."""
    model = gpt(6)
    step_model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=DEV == "cuda")
    x = torch.randn(16, dim(1024), dim(2048), device=DEV)
    while True:
        with torch.autocast(DEV, dtype=torch.bfloat16):
            loss = step_model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ready()


def cuda_graph_inference() -> None:
    """A 16-layer bf16 MLP served at batch 1024, its forward captured once in a CUDA graph and replayed."""
    layers = []
    for _ in range(16):
        layers += [torch.nn.Linear(4096, 4096, device=DEV, dtype=torch.bfloat16), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers).eval()
    static_in = torch.randn(1024, 4096, device=DEV, dtype=torch.bfloat16)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
            for _ in range(3):
                model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static_in)
    while True:
        for _ in range(20):
            static_in.copy_(static_out)  # the next request's input lands in the captured buffer
            graph.replay()
        ready()


def sdpa_prefill_inference() -> None:
    """Prompt processing (prefill) of a 12-block GPT: batch 8 × 2048 tokens, bf16, flash SDPA."""
    model = gpt(12).to(torch.bfloat16).eval()
    x = torch.randn(8, dim(2048), dim(2048), device=DEV, dtype=torch.bfloat16)
    with torch.no_grad():
        while True:
            model(x)
            ready()


def amp_grad_accumulation() -> None:
    """fp16 autocast with a GradScaler, gradients accumulated over 4 micro-batches of 2048 rows."""
    with torch.device(DEV):
        model = torch.nn.Sequential(*(m for _ in range(6) for m in (torch.nn.Linear(dim(8192), dim(8192)),
                                                                    torch.nn.GELU())))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(DEV)
    micro = [torch.randn(dim(2048), dim(8192), device=DEV) for _ in range(4)]
    while True:
        for x in micro:
            with torch.autocast(DEV, dtype=torch.float16):
                loss = model(x).float().square().mean() / len(micro)
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        ready()


WORKLOADS = (compiled_gpt_training, cuda_graph_inference, sdpa_prefill_inference, amp_grad_accumulation)
