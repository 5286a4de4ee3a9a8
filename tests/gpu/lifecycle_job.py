"""The jobs of the scripted lifecycle (tests/gpu/lifecycle.py), each logging its phases as it
enters them: one JSON line {"t": unix seconds, "phase": …, "job": …} appended to PHASE_LOG.

    python3 -m tests.gpu.lifecycle_job first PHASE_LOG    # start, load, compile, train, checkpoint ×2, evaluate
    python3 -m tests.gpu.lifecycle_job second PHASE_LOG   # start, load, train fed by a Python tokenizer

The phase names are the segments' labels, written before any run: what the whole segment should
be charged to (``training``: nothing, a healthy job wastes no time).
"""

from __future__ import annotations

import json
import sys
import time

LOG = sys.argv[2] if len(sys.argv) > 2 else "/dev/null"
JOB = sys.argv[1] if len(sys.argv) > 1 else "first"


def phase(name: str) -> None:
    with open(LOG, "a") as log:
        log.write(json.dumps({"t": time.time(), "phase": name, "job": JOB}) + "\n")


# Until the job's CUDA context exists its process is not on the GPU, which is idle as far as any
# reader of the GPU can tell: `launching` is labelled idle, `starting` begins with the context.
phase("launching")
import torch  # noqa: E402

torch.cuda.set_device(0)  # the context first, as a launcher's local-rank set-up does
torch.zeros(1, device="cuda")  # (a context really made, not only asked for)
phase("starting")
import transformers  # noqa: E402, F401
from transformers import LlamaForCausalLM  # noqa: E402

from tests.gpu.workloads import scratch_dir  # noqa: E402
from tests.gpu.workloads.lifecycle import checkpoint_dir, drop_cached, llama_config  # noqa: E402


def train(model, steps: int, batch) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    for _ in range(steps):
        ids = batch()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()


def first() -> None:
    path = checkpoint_dir()
    phase("loading_weights")
    drop_cached(path)
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda")
    phase("compiling")
    for layer in model.model.layers:  # regional compilation: one decoder layer, reused 28 times
        layer.compile()
    ids = torch.randint(0, 128000, (4, 1024), device="cuda")
    train(model, 1, lambda: ids)
    phase("training")
    for round_ in range(2):
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            train(model, 5, lambda: ids)
        phase("checkpointing")
        torch.save(model.state_dict(), scratch_dir() / "lifecycle-checkpoint.pt")
        phase("training")
    phase("evaluating")
    model.eval()
    losses = []
    with torch.no_grad():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            batch = torch.randint(0, 128000, (1, 256), device="cuda")
            losses.append(model(input_ids=batch, labels=batch).loss.item())
    phase("exiting")


def second() -> None:
    """A fine-tune fed by a Python tokenizer on the training thread (the corpus's tokenizer_in_loop)."""
    path = checkpoint_dir() / "state_dict.pt"
    phase("loading_weights")
    with torch.device("cuda"):
        model = LlamaForCausalLM(llama_config(layers=8)).to(torch.bfloat16)
    drop_cached(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=False)
    del state
    phase("input_starved")
    words = [f"w{i % 5000}" for i in range(200_000)]

    def tokenize() -> torch.Tensor:
        vocab: dict[str, int] = {}
        ids = [vocab.setdefault(w, len(vocab)) for w in words for _ in range(3)]
        return torch.tensor(ids[:2048], device="cuda").view(2, 1024)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        train(model, 1, tokenize)
    phase("exiting")


{"first": first, "second": second}[JOB]()
