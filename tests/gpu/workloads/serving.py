"""Serving and interactive use: a model server with light traffic, a busy batched decode server,
and an interactive session that loaded a model, answered once and now waits at its prompt."""

from __future__ import annotations

import code
import json
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from . import DEV, dim, ready


def decode_model() -> torch.nn.Module:
    """An 8-layer 4096-wide bf16 MLP standing for a small model's decoder layers."""
    layers = []
    for _ in range(8):
        layers += [torch.nn.Linear(dim(4096), dim(4096), device=DEV, dtype=torch.bfloat16), torch.nn.GELU()]
    return torch.nn.Sequential(*layers).eval()


def send_requests(url: str, period_seconds: float) -> None:
    """The traffic: one client asking for 32 tokens every ``period_seconds``."""
    body = json.dumps({"max_tokens": 32}).encode()
    while True:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        ready()
        time.sleep(period_seconds)


def http_light_server() -> None:
    """An HTTP model server (http.server, one thread per request) that gets a request every 0.7 s;
    each generates 32 tokens at batch 1. Between requests the main thread sits in serve_forever."""
    model = decode_model()

    class Generate(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["max_tokens"]
            x = torch.randn(1, dim(4096), device=DEV, dtype=torch.bfloat16)
            tokens = []
            with torch.no_grad():
                for _ in range(n):
                    x = model(x)
                    tokens.append(int(x.argmax()))
            payload = json.dumps({"tokens": tokens}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:  # one line a request is noise here
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Generate)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/generate"
    threading.Thread(target=send_requests, args=(url, 0.7), daemon=True).start()
    server.serve_forever()


def busy_decode_server() -> None:
    """A decode server kept full: 64 sequences a step over a 2048-position KV cache each, a token
    per sequence per step (weights 268 MB and cache ~1 GB read twice a step), synchronised per step
    as sampling is."""
    batch, context, width = dim(64), dim(2048), dim(4096)
    model = decode_model()
    cache = torch.randn(batch, context, width, device=DEV, dtype=torch.bfloat16)
    x = torch.randn(batch, width, device=DEV, dtype=torch.bfloat16)
    with torch.no_grad():
        while True:
            x = model(x)
            scores = torch.softmax(torch.einsum("bcd,bd->bc", cache, x).float() / width**0.5, dim=-1)
            x = torch.einsum("bc,bcd->bd", scores.to(x.dtype), cache)
            x.amax().item()
            ready()


def interactive_model_loaded() -> None:
    """An interactive Python session that built a 1.4B-parameter Llama in bf16, generated one
    answer, and now waits at its prompt for the user to type (who went to lunch)."""
    from .language import llama

    model = llama(layers=24).to(torch.bfloat16).eval()
    prompt = torch.randint(3, 32000, (1, 16), device=DEV)
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16, do_sample=False, pad_token_id=0)
    ready()
    # The terminal: a pipe nobody writes to stands in for the user's keyboard.
    keyboard, _user = os.pipe()
    os.dup2(keyboard, 0)
    sys.stdin = open(0, closefd=False)
    code.InteractiveConsole({"model": model}).interact(banner="", exitmsg="")


WORKLOADS = (http_light_server, busy_decode_server, interactive_model_loaded)
