"""Runs ddp_workload.py under torchrun, one rank per GPU, and records what the agent reads of it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from flopwatch.config import Config
from flopwatch.daemon import Agent
from flopwatch.sources.host import HostSource
from flopwatch.sources.nvml import NvmlSource
from tests.gpu.gpus import mean

HERE = Path(__file__).parent
STARTUP_SECONDS = 180.0
WARMUP_SECONDS = float(os.environ.get("FLOPWATCH_GPU_WARMUP", "3"))
MEASURE_SECONDS = float(os.environ.get("FLOPWATCH_GPU_MEASURE", "25"))
# Multicast NVLink (NVLS) and symmetric-memory multicast must stay off on the machines this runs on.
CHILD_ENV = {
    "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
    # CUDA's device order matches NVML's indices only in PCI bus order.
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "PYTHONUNBUFFERED": "1",
}
# NCCL without peer-to-peer: gradients go through host memory over PCIe, as on a node whose GPUs
# have no NVLink between them.
PCIE_ONLY = {"NCCL_P2P_DISABLE": "1"}


@dataclass
class GpuRun:
    causes: list[str | None] = field(default_factory=list)
    utilization: list[float] = field(default_factory=list)
    nvml_utilization: list[float] = field(default_factory=list)
    nvlink: list[float] = field(default_factory=list)
    pcie: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    links: int = 0
    jobs: set[str] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)
    evidence: dict = field(default_factory=dict)

    def share(self, cause: str | None) -> float:
        return self.causes.count(cause) / len(self.causes) if self.causes else 0.0


def measure(batch: str, ranks: int = 2, env: dict[str, str] | None = None) -> list[GpuRun]:
    """One ``GpuRun`` per rank's GPU: the agent ticks at 1 s for MEASURE_SECONDS after warm-up."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               str(HERE / "ddp_workload.py"), batch]
    child_env = dict(os.environ, **CHILD_ENV, CUDA_VISIBLE_DEVICES=",".join(map(str, range(ranks))), **(env or {}))
    # A session of its own, so the ranks torchrun starts are stopped with it.
    proc = subprocess.Popen(command, env=child_env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    runs = [GpuRun() for _ in range(ranks)]
    try:
        ready: set[int] = set()
        all_ready = threading.Event()

        def watch() -> None:
            for line in proc.stdout:
                for m in re.finditer(r"ready rank (\d+)", line):
                    ready.add(int(m[1]))
                for m in re.finditer(r"step_ms rank (\d+) ([\d.]+)", line):
                    runs[int(m[1])].step_ms.append(float(m[2]))
                if len(ready) == ranks:
                    all_ready.set()
            all_ready.set()  # stdout closed: torchrun ended

        threading.Thread(target=watch, daemon=True).start()
        all_ready.wait(STARTUP_SECONDS)
        assert len(ready) == ranks, f"{batch}: {len(ready)} of {ranks} ranks started"
        time.sleep(WARMUP_SECONDS)
        config = Config()
        config.diagnosis.window_seconds = 10.0
        config.diagnosis.min_window_seconds = 5.0
        agent = Agent(config, NvmlSource(), HostSource())
        for tick in range(int(MEASURE_SECONDS)):
            time.sleep(1.0)
            state = agent.tick()
            if tick == 0:
                continue  # the first tick has no interval behind it
            for g, run in zip(state.gpus[:ranks], runs):
                s = g.sample
                run.utilization.append(g.figures.utilization)
                run.nvml_utilization.append(s.nvml_utilization)
                run.nvlink.append((s.nvlink_tx_bytes_per_second or 0) + (s.nvlink_rx_bytes_per_second or 0))
                run.pcie.append((s.pcie_tx_bytes_per_second or 0) + (s.pcie_rx_bytes_per_second or 0))
                run.links = len(s.nvlink_links)
                run.jobs |= {p.job for p in g.processes}
                run.pids |= {p.pid for p in g.processes}
                if tick >= config.diagnosis.min_window_seconds:
                    run.causes.append(g.finding.cause if g.finding else None)
                    if g.finding:
                        run.evidence = dict(g.finding.evidence)
        agent.close()
        return runs
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        time.sleep(3.0)  # let the contexts go before the next run


def table(runs: dict[str, list[GpuRun]]) -> list[str]:
    """The readings of each run, a row per GPU, then the evidence of each GPU's last finding."""
    lines = ["", "DDP over NCCL, one rank per GPU (means over the measured ticks)",
             f"{'run':14} {'gpu':>3} {'step ms':>7} {'util':>5} {'nvml':>5} {'nvlink GB/s':>11} {'pcie GB/s':>9} "
             f"{'links':>5}  {'causes (windows)':36} jobs"]
    for label, per_gpu in runs.items():
        for index, r in enumerate(per_gpu):
            causes = ", ".join(f"{c or 'none'}:{n}" for c, n in Counter(r.causes).most_common())
            lines.append(f"{label:14} {index:>3} {mean(r.step_ms[1:]):7.1f} {mean(r.utilization):5.2f} "
                         f"{mean(r.nvml_utilization):5.2f} {mean(r.nvlink) / 1e9:11.1f} {mean(r.pcie) / 1e9:9.1f} "
                         f"{r.links:>5}  {causes:36} {sorted(r.jobs)}")
    lines += ["", "evidence of the last finding"]
    lines += [f"{label:14} gpu {i}: {r.evidence}" for label, per_gpu in runs.items() for i, r in enumerate(per_gpu)]
    return lines
