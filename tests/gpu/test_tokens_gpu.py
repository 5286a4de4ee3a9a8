"""On a real NVIDIA GPU: what a token costs in batch-1 and batched decode, and two decoders
sharing the GPU, each with its SM share. Run with -s to see the tables.

The agent runs in this process (real NVML, real host source, the push endpoint on loopback and
the status API); the decoders are subprocesses (decode_worker.py) that push their tokens with
flopwatch.client. About 60 s in all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.gpu.gpus import needs_gpus

pytestmark = needs_gpus(1, torch=True)

from flopwatch.commands.build import build_agent  # noqa: E402
from flopwatch.config import Config  # noqa: E402
from flopwatch.outputs.server import MetricsServer  # noqa: E402
from flopwatch.outputs.status_document import status_document  # noqa: E402

HERE = Path(__file__).parent
AGENT_DIR = HERE.parents[1] / "agent"
WINDOW_SECONDS = 10.0  # the agent's token window: each reading covers one mode only


@pytest.fixture(scope="module")
def agent():
    config = Config()
    config.tokens.push_listen = "127.0.0.1:0"
    config.tokens.window_seconds = WINDOW_SECONDS
    config.tokens.price_per_gpu_hour = 2.0
    built = build_agent(config)
    built.agent.tokens.start()
    server = MetricsServer("127.0.0.1:0", built.exporter.registry(),
                           lambda: status_document(built.agent.state, built.agent.hostname))
    server.start()
    stop = threading.Event()

    def ticks() -> None:
        while not stop.wait(1.0):
            built.agent.tick()

    built.agent.tick()
    ticker = threading.Thread(target=ticks, daemon=True)
    ticker.start()
    yield built.agent.tokens.push.url, server.url
    stop.set()
    ticker.join()
    server.shutdown()
    built.agent.close()


def _start(batch: int, seconds: float, push_url: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{AGENT_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(HERE / "decode_worker.py"), str(batch), str(seconds), push_url],
                            stdout=subprocess.PIPE, text=True, env=env)


def _wait_ready(worker: subprocess.Popen) -> None:
    line = worker.stdout.readline()
    assert line.strip() == "ready", f"worker {worker.pid} did not start (exit {worker.poll()})"


def _status(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/v1/status", timeout=10) as response:
        return json.load(response)


def _gpu_of(doc: dict, pids: list[int]) -> dict:
    """The GPU the workers run on: by pid, else the one with tokens (pids differ across pid namespaces)."""
    for g in doc["gpus"]:
        if any(p["pid"] in pids for p in g["processes"]):
            return g
    return max(doc["gpus"], key=lambda g: (g.get("tokens") or {}).get("total", 0))


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def test_batched_decode_costs_fewer_joules_per_token_than_batch_1(agent):
    push_url, status_url = agent
    readings = {}
    for batch in (1, 64):
        worker = _start(batch, WINDOW_SECONDS + 4, push_url)
        try:
            _wait_ready(worker)
            time.sleep(WINDOW_SECONDS + 2)
            g = _gpu_of(_status(status_url), [worker.pid])
            readings[batch] = (g["tokens"], g["power_watts"], g["name"])
        finally:
            worker.wait(timeout=60)
    print(f"\n{readings[1][2]}: decode cost over the agent's last {WINDOW_SECONDS:.0f} s of each run")
    print(f"{'mode':<10} {'tokens/s':>10} {'J/token':>10} {'GPU-s/1k tok':>13} {'TFLOP/token':>12} "
          f"{'$/1M tok @2/h':>14} {'power W':>8}")
    for batch, (t, power, _) in readings.items():
        print(f"{'batch ' + str(batch):<10} {_fmt(t['tokens_per_second'], '10.0f')} {_fmt(t['joules_per_token'], '10.4f')} "
              f"{_fmt(t['gpu_seconds_per_1k_tokens'], '13.4f')} {_fmt(t['tflop_per_token'], '12.6f')} "
              f"{_fmt(t['cost_per_1m_tokens'], '14.3f')} {_fmt(power, '8.0f')}")
    one, batched = readings[1][0]["joules_per_token"], readings[64][0]["joules_per_token"]
    assert one is not None and batched is not None
    assert batched < one


def test_two_decoders_sharing_the_gpu_each_have_an_sm_share(agent):
    push_url, status_url = agent
    workers = [_start(16, 12, push_url) for _ in range(2)]
    try:
        for worker in workers:
            _wait_ready(worker)
        time.sleep(6)
        g = _gpu_of(_status(status_url), [w.pid for w in workers])
    finally:
        for worker in workers:
            worker.wait(timeout=60)
    ours = [w.pid for w in workers]
    print(f"\n{g['name']}: two decoders (batch 16) at once; finding: "
          f"{(g['finding'] or {}).get('cause')} {(g['finding'] or {}).get('evidence', {}).get('sm_shares', '')}")
    print(f"{'pid':>8} {'job':<28} {'SM share':>9} {'memory GiB':>11}")
    for p in g["processes"]:
        print(f"{p['pid']:>8} {p['job']:<28} {_fmt(p['sm_ratio'], '9.2f')} {_fmt((p['memory_bytes'] or 0) / 2**30, '11.2f')}")
    shared = [p for p in g["processes"] if p["sm_ratio"] is not None]
    if not {p["pid"] for p in g["processes"]} & set(ours):
        print(f"NVML lists pids {[p['pid'] for p in g['processes']]}, the workers are {ours}: another pid namespace")
        assert len(shared) >= 2
    else:
        assert {p["pid"] for p in shared} >= set(ours)
