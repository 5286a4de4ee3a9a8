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


@pytest.fixture(scope="module")
def runs() -> dict[str, list[GpuRun]]:
    out = {"small": measure("small", RANKS), "large": measure("large", RANKS),
           "small pcie": measure("small", RANKS, env=PCIE_ONLY), "small 1 rank": measure("small", 1),
           "starved": measure("starved", RANKS)}
    report(table(out), "multigpu_readings.txt")
    return out


def test_small_batch_large_model_is_communication_bound_on_both_gpus(runs):
    assert [r.share("communication_bound") >= 0.8 for r in runs["small"]] == [True] * RANKS
    assert runs["small"][0].evidence["via"] == "nvlink"


def test_small_batch_over_pcie_is_communication_bound_on_both_gpus(runs):
    assert [r.share("communication_bound") >= 0.8 for r in runs["small pcie"]] == [True] * RANKS
    assert runs["small pcie"][0].evidence["via"] == "pcie"


def test_ranks_waiting_on_their_loaders_are_input_starved_on_both_gpus(runs):
    assert [r.share("input_starved") >= 0.8 for r in runs["starved"]] == [True] * RANKS


def test_large_batch_is_healthy_on_both_gpus(runs):
    assert [r.share(None) >= 0.8 for r in runs["large"]] == [True] * RANKS


def test_each_gpu_shows_a_rank_and_both_show_the_same_job(runs):
    per_gpu = runs["small"]
    assert all(r.pids for r in per_gpu)
    assert len(set.union(*(r.pids for r in per_gpu))) == RANKS
    assert len(set.union(*(r.jobs for r in per_gpu))) == 1
