"""On a node with two or more NVIDIA GPUs: a real data-parallel job (torchrun, DDP over NCCL).

With a large model and a small batch the ranks wait on all-reduce: communication_bound on both
GPUs. With a large batch compute hides the all-reduce: no finding. ddp_workload.py says why the
first holds where the GPUs talk over PCIe and not over an NVLink pair. Skipped with fewer than two
GPUs. Run with -s to see the readings table (also written to $OUT/multigpu_readings.txt).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.gpu.gpus import needs_gpus, report

pytestmark = needs_gpus(2, torch=True)

from flopwatch.config import Config  # noqa: E402
from flopwatch.daemon import Agent  # noqa: E402
from flopwatch.sources.host import HostSource  # noqa: E402
from flopwatch.sources.nvml import NvmlSource  # noqa: E402

HERE = Path(__file__).parent
RANKS = 2
STARTUP_SECONDS = 180.0
WARMUP_SECONDS = float(os.environ.get("FLOPWATCH_GPU_WARMUP", "3"))
MEASURE_SECONDS = float(os.environ.get("FLOPWATCH_GPU_MEASURE", "25"))
# Multicast NVLink (NVLS) and symmetric-memory multicast must stay off on the machines this runs on.
CHILD_ENV = {
    "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
    # CUDA's device order matches NVML's indices only in PCI bus order.
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(RANKS))),
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class GpuRun:
    causes: list[str | None] = field(default_factory=list)
    utilization: list[float] = field(default_factory=list)
    nvml_utilization: list[float] = field(default_factory=list)
    nvlink: list[float] = field(default_factory=list)
    pcie: list[float] = field(default_factory=list)
    links: int = 0
    jobs: set[str] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)
    evidence: dict = field(default_factory=dict)

    @staticmethod
    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    def share(self, cause: str | None) -> float:
        return self.causes.count(cause) / len(self.causes) if self.causes else 0.0


def _measure(batch: str) -> list[GpuRun]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={RANKS}",
               str(HERE / "ddp_workload.py"), batch]
    # A session of its own, so the ranks torchrun starts are stopped with it.
    proc = subprocess.Popen(command, env=dict(os.environ, **CHILD_ENV), stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        ready: list[str] = []
        all_ready = threading.Event()

        def watch() -> None:
            for line in proc.stdout:
                if line.startswith("ready"):
                    ready.append(line)
                    if len(ready) == RANKS:
                        all_ready.set()
            all_ready.set()  # stdout closed: torchrun ended

        threading.Thread(target=watch, daemon=True).start()
        all_ready.wait(STARTUP_SECONDS)
        assert len(ready) == RANKS, f"{batch}: {len(ready)} of {RANKS} ranks started"
        time.sleep(WARMUP_SECONDS)
        config = Config()
        config.diagnosis.window_seconds = 10.0
        config.diagnosis.min_window_seconds = 5.0
        agent = Agent(config, NvmlSource(), HostSource())
        runs = [GpuRun() for _ in range(RANKS)]
        for tick in range(int(MEASURE_SECONDS)):
            time.sleep(1.0)
            state = agent.tick()
            if tick == 0:
                continue  # the first tick has no interval behind it
            for g, run in zip(state.gpus[:RANKS], runs):
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


@pytest.fixture(scope="module")
def runs() -> dict[str, list[GpuRun]]:
    out = {batch: _measure(batch) for batch in ("small", "large")}
    _print_table(out)
    return out


def _print_table(runs: dict[str, list[GpuRun]]) -> None:
    lines = ["", "DDP over NCCL, one rank per GPU (means over the measured ticks)",
             f"{'batch':6} {'gpu':>3} {'util':>5} {'nvml':>5} {'nvlink GB/s':>11} {'pcie GB/s':>9} {'links':>5}  "
             f"{'causes (windows)':40} jobs"]
    for batch, per_gpu in runs.items():
        for index, r in enumerate(per_gpu):
            causes = ", ".join(f"{c or 'none'}:{n}" for c, n in Counter(r.causes).most_common())
            lines.append(f"{batch:6} {index:>3} {r.mean(r.utilization):5.2f} {r.mean(r.nvml_utilization):5.2f} "
                         f"{r.mean(r.nvlink) / 1e9:11.1f} {r.mean(r.pcie) / 1e9:9.1f} {r.links:>5}  {causes:40} "
                         f"{sorted(r.jobs)}")
    lines += ["", "evidence of the last finding"]
    lines += [f"{batch:6} gpu {i}: {r.evidence}" for batch, per_gpu in runs.items() for i, r in enumerate(per_gpu)]
    report(lines, "multigpu_readings.txt")


def test_small_batch_large_model_is_communication_bound_on_both_gpus(runs):
    assert [r.share("communication_bound") >= 0.8 for r in runs["small"]] == [True] * RANKS


def test_large_batch_is_healthy_on_both_gpus(runs):
    assert [r.share(None) >= 0.8 for r in runs["large"]] == [True] * RANKS


def test_each_gpu_shows_a_rank_and_both_show_the_same_job(runs):
    per_gpu = runs["small"]
    assert all(r.pids for r in per_gpu)
    assert len(set.union(*(r.pids for r in per_gpu))) == RANKS
    assert len(set.union(*(r.jobs for r in per_gpu))) == 1
