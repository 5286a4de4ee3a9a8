"""Language models from Hugging Face `transformers`, built from configs (nothing downloaded):
Llama trained and served batch-1, and BERT fed by a pure-Python or a Rust tokenizer."""

from __future__ import annotations

import functools

import numpy as np
import torch

from . import DEV, dim, ready, scratch_dir


def llama(layers: int = 12):
    """A ~0.7B-parameter Llama (hidden 2048, 12 layers), made on the device: no slow CPU init."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=dim(2048), intermediate_size=dim(5632),
                         num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=16,
                         max_position_embeddings=4096)
    with torch.device(DEV):
        return LlamaForCausalLM(config)


def llama_train_bf16() -> None:
    """Pre-training step: batch 8 × 1024 tokens, bf16 autocast over fp32 weights, fused AdamW, SDPA."""
    model = llama().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=DEV == "cuda")
    ids = torch.randint(0, 32000, (8, dim(1024)), device=DEV)
    while True:
        with torch.autocast(DEV, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ready()


def llama_greedy_decode() -> None:
    """A chat backend answering one user: `generate` at batch 1, greedy, KV cache, bf16 weights."""
    model = llama().to(torch.bfloat16).eval()
    prompt = torch.randint(3, 32000, (1, 32), device=DEV)
    while True:
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=128, do_sample=False,
                       pad_token_id=0)
        ready()


class Llama8B:
    """The 8B Llama shape (4096 wide, 32 layers, GQA 32/8, 14336 MLP, 128k vocabulary) as a lean
    eager decoder, the way a hand-written server runs it: random bf16 weights made on the GPU,
    fused QKV and gate-up matrices, a static KV cache, SDPA over the filled positions."""

    def __init__(self, layers: int = 32, width: int = 4096, heads: int = 32, kv_heads: int = 8,
                 mlp: int = 14336, vocab: int = 128256, context: int = 4096) -> None:
        width, mlp = dim(width), dim(mlp)
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        qkv = width + 2 * kv_heads * self.head_dim
        w = functools.partial(torch.randn, device=DEV, dtype=torch.bfloat16)
        self.layers = [{"qkv": w(qkv, width) * width**-0.5, "o": w(width, width) * width**-0.5,
                        "gate_up": w(2 * mlp, width) * width**-0.5, "down": w(width, mlp) * mlp**-0.5,
                        "k": torch.zeros(1, kv_heads, context, self.head_dim, device=DEV, dtype=torch.bfloat16),
                        "v": torch.zeros(1, kv_heads, context, self.head_dim, device=DEV, dtype=torch.bfloat16)}
                       for _ in range(layers)]
        self.embed = w(vocab, width)
        self.head = w(vocab, width) * width**-0.5
        inv = 1.0 / 10000 ** (torch.arange(0, self.head_dim, 2, device=DEV).float() / self.head_dim)
        angles = torch.outer(torch.arange(context, device=DEV).float(), inv)
        self.cos, self.sin = angles.cos().to(torch.bfloat16), angles.sin().to(torch.bfloat16)

    def rotate(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        a, b = x[..., ::2], x[..., 1::2]
        cos, sin = self.cos[pos], self.sin[pos]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)

    def attention(self, layer: dict, h: torch.Tensor, pos: int) -> torch.Tensor:
        q, k, v = (h @ layer["qkv"].T).split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                                               self.kv_heads * self.head_dim], dim=-1)
        q = self.rotate(q.view(1, self.heads, 1, self.head_dim), pos)
        layer["k"][:, :, pos] = self.rotate(k.view(1, self.kv_heads, self.head_dim), pos)
        layer["v"][:, :, pos] = v.view(1, self.kv_heads, self.head_dim)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, layer["k"][:, :, :pos + 1], layer["v"][:, :, :pos + 1], enable_gqa=True)
        return out.reshape(1, -1) @ layer["o"].T

    def forward(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        x = self.embed[token]
        for layer in self.layers:
            x = x + self.attention(layer, torch.nn.functional.rms_norm(x, x.shape[-1:]), pos)
            gate, up = (torch.nn.functional.rms_norm(x, x.shape[-1:]) @ layer["gate_up"].T).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ layer["down"].T
        return torch.nn.functional.rms_norm(x, x.shape[-1:]) @ self.head.T

    def decode_token(self, token: torch.Tensor, pos: int) -> int:
        """One token, greedy; `.item()` as a server that streams it and checks for the end."""
        return int(self.forward(token, pos).argmax())


def llama8b_decode() -> None:
    """A hand-written chat server answering one user at a time: batch-1 greedy decode, answers of
    up to 1024 tokens, each token sent to the client as it is made."""
    with torch.no_grad():
        answer_forever(Llama8B())


def answer_forever(model: Llama8B) -> None:
    """Answers of up to 1024 tokens, one after the other, each token read back as it is made."""
    while True:
        token = torch.tensor([1], device=DEV)
        for pos in range(dim(1024)):
            token = torch.tensor([model.decode_token(token, pos)], device=DEV)
            ready()


def llama_decode_half_busy() -> None:
    """llama8b_decode with SDPA kept off cuDNN attention (whose planning for each new cache length
    took most of the host's time a token) and an MLP twice as wide (28672, a 12.6B-parameter model):
    a batch-1 eager decode whose kernels keep the SMs busy about half of each token."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                       SDPBackend.MATH]):
        answer_forever(Llama8B(mlp=28672))


def sentences(count: int, rng: np.random.Generator, words: list[str]) -> list[str]:
    """Zipf-distributed words of a made-up language, 40–120 words a sentence."""
    ranks = np.minimum(rng.zipf(1.2, size=count * 120), len(words)) - 1
    out, at = [], 0
    for n in rng.integers(40, 121, size=count):
        out.append(" ".join(words[r] for r in ranks[at:at + n]) + ".")
        at += n
    return out


@functools.cache
def lexicon(size: int = 40_000) -> list[str]:
    """Made-up words of one to four syllables, the same every run."""
    rng = np.random.default_rng(1)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    return ["".join(rng.choice(syllables, size=rng.integers(1, 5))) for _ in range(size)]


def bert_step_loop(tokenize) -> None:
    """BERT-large masked-LM training, batch 128 × 128 tokens, bf16 autocast; the batch's text is
    tokenized in the step by ``tokenize(texts) -> (input_ids, attention_mask)``."""
    from transformers import BertConfig, BertForMaskedLM

    rng = np.random.default_rng(0)
    texts = sentences(4096, rng, lexicon())
    config = BertConfig(vocab_size=30522, hidden_size=dim(1024), num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=dim(4096))
    with torch.device(DEV):
        model = BertForMaskedLM(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, at = dim(128), 0
    while True:
        ids, mask = tokenize(texts[at:at + batch])
        at = (at + batch) % (len(texts) - batch)
        ids, mask = ids.to(DEV, non_blocking=True), mask.to(DEV, non_blocking=True)
        with torch.autocast(DEV, dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ready()


def bert_slow_tokenizer() -> None:
    """The batch tokenized by transformers' pure-Python BERT tokenizer on the training thread."""
    try:  # transformers ≥ 5 keeps the pure-Python WordPiece tokenizer under this name
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as SlowBertTokenizer
    except ImportError:
        from transformers import BertTokenizer as SlowBertTokenizer

    # The vocabulary a WordPiece trainer would keep: specials, letters and their continuations,
    # and the 20 000 most frequent words (rarer ones split into pieces).
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *"abcdefghijklmnopqrstuvwxyz",
             *("##" + c for c in "abcdefghijklmnopqrstuvwxyz"), *lexicon()[:20_000]]
    path = scratch_dir() / "bert-vocab.txt"
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = SlowBertTokenizer(vocab_file=str(path))

    def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    bert_step_loop(tokenize)


def bert_fast_tokenizer() -> None:
    """The same step with a `tokenizers` WordPiece model trained at start, encoding the batch in Rust."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=30522, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(sentences(20_000, np.random.default_rng(2), lexicon()), trainer=trainer)
    tok.enable_truncation(128)
    tok.enable_padding(length=128, pad_id=0)

    def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok.encode_batch(texts)
        return (torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc]))

    bert_step_loop(tokenize)


WORKLOADS = (llama_train_bf16, llama_greedy_decode, llama8b_decode, llama_decode_half_busy, bert_slow_tokenizer,
             bert_fast_tokenizer)
