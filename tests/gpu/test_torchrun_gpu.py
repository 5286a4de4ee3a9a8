"""A real torchrun job on the GPU (two ranks over gloo on one device): the agent names both ranks'
processes by torchrun's run, with the rank torchrun gave each, live and in the history.

One GPU holds both ranks, so the fleet judge, which compares a job's GPUs, has one member here: it
is proven over many GPUs by bench/fleet_jobs.py. About 1 min.
"""

from __future__ import annotations

from tests.gpu.gpus import needs_gpus

pytestmark = needs_gpus(1, torch=True)

import os  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.gpu.torchrun_job import RankSeen, run  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[RankSeen]:
    out = Path(os.environ["OUT"], "torchrun") if os.environ.get("OUT") else tmp_path_factory.mktemp("torchrun")
    return run(out)


def test_the_agent_reads_each_rank_that_torchrun_gave_its_worker(ranks):
    assert sorted((r.identity.get("rank"), r.identity.get("world_size"), r.identity.get("local_rank")) for r in ranks) \
        == sorted((int(r.environ["RANK"]), int(r.environ["WORLD_SIZE"]), int(r.environ["LOCAL_RANK"])) for r in ranks) \
        == [(0, 2, 0), (1, 2, 1)]


def test_both_ranks_carry_the_run_torchrun_gave_them(ranks):
    assert [r.identity.get("torchrun") for r in ranks] == [r.environ["TORCHELASTIC_RUN_ID"] for r in ranks]
    assert len({r.job for r in ranks}) == 1


def test_the_job_is_named_by_the_torchrun_run_where_no_scheduler_names_it(ranks):
    if any(r.identity.get(k) for r in ranks for k in ("slurm_job", "pod", "pod_uid")):
        pytest.skip("a scheduler's job name comes first by the default job rules")
    assert ranks[0].job == f"torchrun:{ranks[0].environ['TORCHELASTIC_RUN_ID']}"


def test_the_history_keeps_each_rank_under_the_job(ranks):
    assert sorted((r.history_job, r.history_rank) for r in ranks) == sorted((r.job, r.identity["rank"]) for r in ranks)
