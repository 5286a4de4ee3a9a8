"""The fleet judge end to end: simulated nodes playing ranks of one job write to a real PostgreSQL,
the judge names the straggler and its own cause, and pages once to a real Alertmanager."""

from __future__ import annotations

import pytest

from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.commands.judge import verdicts
from flopwatch.config import Config
from flopwatch.history.store import HistoryStore, open_engine
from flopwatch.outputs.job_alerts import AlertmanagerPoster, JobPages
from tests.fixtures_prometheus import eventually, start_alertmanager

WALL_START = 1.8e9
SECONDS = 40


def play_job(url: str, job: str, nodes: list[list[str]]) -> float:
    """Agents on virtual clocks, one per node, each GPU a rank of ``job``, ticked SECONDS times
    into the history at ``url``; returns the wall clock at the end."""
    agents = []
    clock, wall = VirtualClock(0.0), VirtualClock(WALL_START)
    world = sum(len(n) for n in nodes)
    rank = 0
    for i, scenarios in enumerate(nodes):
        config = Config()
        config.agent.simulate, config.agent.hostname = scenarios, f"{job.replace(':', '-')}-node{i}"
        config.agent.simulate_job, config.agent.simulate_rank = job.split(":")[1], rank
        config.agent.simulate_world_size = world
        config.stacks.enabled = False
        rank += len(scenarios)
        store = HistoryStore(url, config.agent.hostname, clock=wall)
        agents.append((build_agent(config, clock=clock, wall_clock=wall, sinks=[store]).agent, store))
    for _ in range(SECONDS):
        clock.now += 1.0
        wall.now += 1.0
        for agent, _ in agents:
            agent.tick()
    for agent, store in agents:
        assert store.flush(), store.last_error
        agent.close()
    return wall.now


def judge(url: str, now: float, job: str):
    config = Config()
    config.history.url = url
    [verdict] = verdicts(open_engine(url), config, now, job)[0]
    return verdict


@pytest.fixture
def straggling_job(postgres_url):
    now = play_job(postgres_url, "slurm:71", [["communication_bound"] * 2, ["input_starved", "communication_bound"],
                                             ["communication_bound"] * 2])
    return postgres_url, now


def test_the_straggler_rank_and_its_own_cause_are_named(straggling_job):
    verdict = judge(*straggling_job, "slurm:71")
    assert verdict.verdict == "straggler"
    [straggler] = verdict.stragglers
    assert (straggler.host, straggler.gpu, straggler.rank, straggler.cause) == ("slurm-71-node1", 0, 2, "input_starved")
    assert straggler.pid is not None
    assert straggler.finding["cause"] == "input_starved"
    assert {r.state for r in verdict.ranks if r is not straggler} == {"waiting"}


def test_a_job_whose_ranks_all_wait_is_communication_bound_without_a_straggler(postgres_url):
    now = play_job(postgres_url, "slurm:72", [["communication_bound"] * 2] * 3)
    verdict = judge(postgres_url, now, "slurm:72")
    assert (verdict.verdict, verdict.stragglers) == ("communication_bound", ())


def test_a_healthy_job_does_not_page(postgres_url):
    now = play_job(postgres_url, "slurm:73", [["healthy"] * 2] * 3)
    verdict = judge(postgres_url, now, "slurm:73")
    assert verdict.verdict == "healthy" and not verdict.pages


def test_a_node_gone_quiet_makes_its_ranks_unknown_not_healthy(postgres_url):
    now = play_job(postgres_url, "slurm:74", [["healthy"] * 2] * 3)
    verdict = judge(postgres_url, now + 60, "slurm:74")  # a minute later nothing new came
    assert verdict.verdict == "unknown"
    assert {r.state for r in verdict.ranks} == {"unknown"}


def test_the_job_pages_once_and_a_restarted_judge_pages_the_same_alert(straggling_job, tmp_path):
    url, now = straggling_job
    with start_alertmanager(tmp_path) as am:
        for restart in range(2):  # the second judge restores the first one's page
            poster = AlertmanagerPoster([am.url], interval_seconds=10)
            pages = JobPages(confirm_passes=2)
            pages.restore(poster.firing_pages())
            for n in range(2):
                poster.send(now + n, pages, pages.update(now + n, [judge(url, now + n, "slurm:71")]))
        firing = eventually(lambda: am.alerts(alertname="GPUJobStraggler"), what="the job's page")
        members = am.alerts(alertname="FlopwatchJobMember")
    [page] = firing
    assert {k: page["labels"][k] for k in ("exported_job", "cause", "straggler_host", "straggler_gpu",
                                           "straggler_rank")} == {
        "exported_job": "slurm:71", "cause": "input_starved", "straggler_host": "slurm-71-node1",
        "straggler_gpu": "0", "straggler_rank": "2"}
    assert len(members) == 6
