"""On a real NVIDIA GPU: readings and causes for real PyTorch workloads started by the test.

Skipped where there is no GPU. Run with -s to see the tables (readings and confusion matrix).
Each workload is measured once, by the first test that reads it: one test per workload measures
its own (~25 s, well inside pytest-timeout's 300 s, which counts a fixture's setup inside the
first test using it, so no fixture measures them all), and the tests after it read the recorded
ticks. The last test scores all of them and prints the tables.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.gpu.corpus import go, launch, stop, wait_ready
from tests.gpu.gpus import mean, needs_gpus, report
from tests.gpu.labels import LABELS

pytestmark = needs_gpus(1, torch=True)
pynvml = pytest.importorskip("pynvml")

from flopwatch.config import Config  # noqa: E402
from flopwatch.daemon import Agent  # noqa: E402
from flopwatch.sources.host import HostSource  # noqa: E402
from flopwatch.sources.nvml import NvmlSource  # noqa: E402

WARMUP_SECONDS = float(os.environ.get("FLOPWATCH_GPU_WARMUP", "3"))  # after the first step ran
MEASURE_SECONDS = float(os.environ.get("FLOPWATCH_GPU_MEASURE", "14"))  # ticks, the first only starts the spans

# workload(s) → the cause a correct diagnosis names (None: healthy, no finding), from the corpus's
# labels; the whole corpus, window by window as `status` reads it, is tests/gpu/corpus.py.
EXPECTED = {key: LABELS[key].cause for key in (
    "healthy", "starved_dataloader", "tokenizer_in_loop", "held_idle", "fp32_no_tf32", "tiny_kernels",
    "pageable_copies", "elementwise_bandwidth", "shared_matmul x2", "eager_small_inference", "numpy_augment_in_loop")}


@dataclass
class Run:
    name: str
    pids: list[int]
    causes: list[str | None] = field(default_factory=list)
    utilization: list[float] = field(default_factory=list)
    nvml_utilization: list[float] = field(default_factory=list)
    tensor: list[float] = field(default_factory=list)
    fp32: list[float] = field(default_factory=list)
    dram: list[float] = field(default_factory=list)
    pcie: list[float] = field(default_factory=list)
    power: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # the workload's processes, cores
    busiest_thread: list[float] = field(default_factory=list)
    process_memory: dict[int, int] = field(default_factory=dict)
    process_share: dict[int, float] = field(default_factory=dict)
    agent_energy_joules: float = 0.0
    counter_energy_joules: float = 0.0
    seconds: float = 0.0
    evidence: dict = field(default_factory=dict)


def _measure(name: str, copies: int) -> Run:
    key = name if copies == 1 else f"{name} x{copies}"
    logs = Path(os.environ.get("OUT", "/tmp/flopwatch-gpu"), "logs")
    workload = launch(key, logs)
    procs = workload.procs
    go(workload)
    try:
        failure = wait_ready(procs, logs, key, timeout=120)
        assert failure is None, f"{key}: {failure}"
        time.sleep(WARMUP_SECONDS)
        config = Config()
        config.diagnosis.window_seconds = 10.0
        config.diagnosis.min_window_seconds = 5.0
        source = NvmlSource()
        agent = Agent(config, source, HostSource())
        run = Run(name if copies == 1 else f"{name} x{copies}", [p.pid for p in procs])
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        first_energy = None
        for tick in range(int(MEASURE_SECONDS)):
            time.sleep(1.0)
            state = agent.tick()
            g = state.gpus[0]
            f = g.figures
            if first_energy is None:
                # Energy spans start here, for the agent and the counter alike.
                first_energy = g.sample.energy_joules
                counter_start = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                started = time.monotonic()
                continue
            run.utilization.append(f.utilization)
            run.nvml_utilization.append(g.sample.nvml_utilization)
            run.tensor.append(f.tensor_active or 0.0)
            run.fp32.append(f.fp32_active or 0.0)
            run.dram.append(f.dram_active or 0.0)
            run.pcie.append((g.sample.pcie_rx_bytes_per_second or 0) + (g.sample.pcie_tx_bytes_per_second or 0))
            run.power.append(f.power_watts)
            host = [state.host.processes[pid] for pid in run.pids if pid in state.host.processes]
            if any(h.cpu_ratio is not None for h in host):  # known from the host's second reading on
                run.cpu.append(sum(h.cpu_ratio or 0.0 for h in host))
                run.busiest_thread.append(max(h.busiest_thread_cpu_ratio or 0.0 for h in host))
            for p in g.sample.processes:
                run.process_memory[p.pid] = p.used_memory_bytes or 0
                run.process_share[p.pid] = p.sm_ratio or 0.0
            if tick >= config.diagnosis.min_window_seconds:
                run.causes.append(g.finding.cause if g.finding else None)
                if g.finding:
                    run.evidence = dict(g.finding.evidence)
        run.seconds = time.monotonic() - started
        # Energy: the counter over the same span, and the agent's total over its ticks.
        run.counter_energy_joules = (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - counter_start) / 1000.0
        run.agent_energy_joules = g.sample.energy_joules - first_energy
        agent.close()
        return run
    finally:
        stop(procs)


_runs: dict[str, Run] = {}


def run_of(key: str) -> Run:
    """The workload's run, measured the first time a test asks for it."""
    if key not in _runs:
        name, _, copies = key.partition(" x")
        _runs[key] = _measure(name, int(copies or 1))
    return _runs[key]


READINGS_HEADER = (f"{'workload':24} {'util':>5} {'nvml':>5} {'tensor':>6} {'fp32':>5} {'dram':>5} {'pcie GB/s':>9} "
                   f"{'power W':>7} {'cpu':>5} {'thread':>6}")


def readings_row(key: str, r: Run) -> str:
    """Means over the measured ticks; cpu: the workload's cores, thread: its busiest thread's."""
    return (f"{key:24} {mean(r.utilization):5.2f} {mean(r.nvml_utilization):5.2f} {mean(r.tensor):6.2f} "
            f"{mean(r.fp32):5.2f} {mean(r.dram):5.2f} {mean(r.pcie) / 1e9:9.2f} {mean(r.power):7.0f} "
            f"{mean(r.cpu):5.2f} {mean(r.busiest_thread):6.2f}")


def _print_tables(runs: dict[str, Run]) -> None:
    lines = ["", "readings (means over the measured ticks)",
             READINGS_HEADER] + [readings_row(key, r) for key, r in runs.items()]
    causes = sorted({c or "none" for r in runs.values() for c in r.causes} | {c or "none" for c in EXPECTED.values()})
    lines += ["", "confusion matrix (rows: expected cause; columns: named cause; cells: windows)",
              f"{'expected':22} " + " ".join(f"{c[:10]:>10}" for c in causes)]
    right = total = 0
    for key, r in runs.items():
        expected = EXPECTED[key] or "none"
        counts = Counter(c or "none" for c in r.causes)
        right += counts[expected]
        total += len(r.causes)
        lines.append(f"{expected[:22]:22} " + " ".join(f"{counts.get(c, 0):>10}" for c in causes))
    lines.append(f"windows right: {right}/{total} = {right / max(total, 1):.1%}")
    lines += ["", "energy: agent total vs counter over the same ticks"]
    for key, r in runs.items():
        lines.append(f"{key:24} agent {r.agent_energy_joules:9.1f} J  counter {r.counter_energy_joules:9.1f} J  "
                     f"mean power x time {mean(r.power) * r.seconds:9.1f} J")
    lines += ["", "evidence of the last finding"] + [f"{k:24} {r.evidence}" for k, r in runs.items()]
    report(lines, "gpu_readings.txt")


@pytest.mark.parametrize("key", EXPECTED)
def test_each_workload_is_named_its_label_in_most_windows(key):
    r = run_of(key)
    assert r.causes.count(EXPECTED[key]) > len(r.causes) / 2, r.causes


def test_bf16_matmul_loop_reads_busy_with_tensor_cores():
    r = run_of("healthy")
    assert mean(r.utilization) >= 0.9
    assert mean(r.tensor) >= 0.7


def test_healthy_training_gives_no_finding():
    assert set(run_of("healthy").causes) == {None}


def test_idle_process_holding_memory_reads_idle_and_owns_its_memory():
    r = run_of("held_idle")
    assert mean(r.utilization) <= 0.05
    assert r.process_memory.get(r.pids[0], 0) >= 20 * 2**30


def test_tiny_kernels_read_low_while_nvml_says_more():
    r = run_of("tiny_kernels")
    assert mean(r.utilization) <= 0.2
    assert mean(r.nvml_utilization) > mean(r.utilization)


def test_energy_matches_mean_power_times_time():
    r = run_of("healthy")
    assert r.counter_energy_joules == pytest.approx(mean(r.power) * r.seconds, rel=0.05)
    assert r.agent_energy_joules == pytest.approx(r.counter_energy_joules, rel=0.05)


def test_both_sharing_processes_have_an_sm_share():
    r = run_of("shared_matmul x2")
    assert all(r.process_share.get(pid, 0.0) > 0.1 for pid in r.pids)


@pytest.mark.timeout(900)  # run alone, it measures every workload (~11 × 25 s); after the others, none
def test_causes_are_right_in_95_percent_of_windows():
    runs = {key: run_of(key) for key in EXPECTED}
    _print_tables(runs)
    right = sum(c == EXPECTED[k] for k, r in runs.items() for c in r.causes)
    total = sum(len(r.causes) for r in runs.values())
    assert right / total >= 0.95
