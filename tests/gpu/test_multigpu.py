"""On a node with two or more NVIDIA GPUs: a real data-parallel job (torchrun, DDP over NCCL).

A large model with a small batch waits on its all-reduce: communication_bound on both GPUs. Over
NVLink the ranks stay over the utilization threshold (NCCL's blocks count as active SMs), so it is a
ticket; with NCCL's peer-to-peer off the gradients cross PCIe through host memory, as on GPUs
without NVLink, and it pages. Fed by DataLoader workers too slow for it, the same job waits on its
loaders, though its all-reduce still crosses NVLink every step: input_starved. With a large batch,
compute hides the all-reduce: no finding. A one-rank run of the small batch gives the step without
communication. Skipped with fewer than two GPUs. Run with -s to see the readings table (also written to $OUT/multigpu_readings.txt).
"""

from __future__ import annotations

from tests.gpu.gpus import needs_gpus, report

pytestmark = needs_gpus(2, torch=True)

import pytest  # noqa: E402

from tests.gpu.ddp import PCIE_ONLY, GpuRun, measure, table  # noqa: E402

RANKS = 2
RUNS = {"small": ("small", RANKS, None), "large": ("large", RANKS, None), "small pcie": ("small", RANKS, PCIE_ONLY),
        "small 1 rank": ("small", 1, None), "starved": ("starved", RANKS, None)}
_runs: dict[str, list[GpuRun]] = {}


def run_of(key: str) -> list[GpuRun]:
    """The run's readings, measured by the first test that asks (pytest-timeout counts a fixture's
    setup inside its first test, so no fixture measures all five)."""
    if key not in _runs:
        mode, ranks, env = RUNS[key]
        _runs[key] = measure(mode, ranks, env=env)
        report(table(_runs), "multigpu_readings.txt")
    return _runs[key]


def test_small_batch_large_model_is_communication_bound_on_both_gpus():
    assert [r.share("communication_bound") >= 0.8 for r in run_of("small")] == [True] * RANKS
    assert run_of("small")[0].evidence["via"] == "nvlink"


def test_small_batch_over_pcie_is_communication_bound_on_both_gpus():
    assert [r.share("communication_bound") >= 0.8 for r in run_of("small pcie")] == [True] * RANKS
    assert run_of("small pcie")[0].evidence["via"] == "pcie"


def test_the_small_batch_alone_on_one_gpu_moves_no_gradients_and_is_not_communication_bound():
    assert run_of("small 1 rank")[0].share("communication_bound") == 0.0


def test_ranks_waiting_on_their_loaders_are_input_starved_on_both_gpus():
    assert [r.share("input_starved") >= 0.8 for r in run_of("starved")] == [True] * RANKS


def test_large_batch_is_healthy_on_both_gpus():
    assert [r.share(None) >= 0.8 for r in run_of("large")] == [True] * RANKS


def test_each_gpu_shows_a_rank_and_both_show_the_same_job():
    per_gpu = run_of("small")
    assert all(r.pids for r in per_gpu)
    assert len(set.union(*(r.pids for r in per_gpu))) == RANKS
    assert len(set.union(*(r.jobs for r in per_gpu))) == 1
