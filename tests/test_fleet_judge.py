"""The fleet judge end to end: simulated nodes playing ranks of one job write to a real PostgreSQL,
the judge names the straggler and its own cause, pages once to a real Alertmanager, shows the job
rank by rank (`jobs --job`, /metrics) and keeps what held the job back for `report --job`."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.commands.judge import verdict_document, verdicts
from flopwatch.commands.report_render import render_text
from flopwatch.commands.tables import job_table
from flopwatch.config import Config
from flopwatch.history.jobs import read_jobs, record_verdicts
from flopwatch.history.report import HeldBackTime, Prices, Query, build_report, read_history
from flopwatch.history.store import HistoryStore, open_engine
from flopwatch.outputs.job_alerts import AlertmanagerPoster, JobPages
from flopwatch.outputs.job_metrics import JobExporter
from tests.servers.prometheus import eventually, start_alertmanager

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


def test_a_job_named_without_ranks_shows_each_gpus_own_process(tmp_path):
    # Without a scheduler or launcher's rank, both simulated GPUs' processes are the job alice:train.py.
    url = f"sqlite:///{tmp_path / 'h.db'}"
    config = Config()
    config.agent.simulate, config.stacks.enabled = ["healthy", "input_starved"], False
    clock, wall = VirtualClock(0.0), VirtualClock(WALL_START)
    store = HistoryStore(url, "node0", clock=wall)
    built = build_agent(config, clock=clock, wall_clock=wall, sinks=[store])
    for _ in range(SECONDS):
        clock.now += 1.0
        wall.now += 1.0
        built.agent.tick()
    assert store.flush(), store.last_error
    built.agent.close()
    [window] = read_jobs(open_engine(url), wall.now, 30.0)
    assert window.job == "alice:train.py" and {r.rank for r in window.ranks} == {None}
    assert [(r.gpu, r.pid) for r in window.ranks] == [(0, 100000), (1, 101000)]  # the simulator's pids


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


def test_the_one_job_view_lists_every_rank_and_marks_the_straggler_with_its_evidence_and_fix(straggling_job):
    table = job_table(verdict_document(judge(*straggling_job, "slurm:71")))
    [marked] = [line for line in table.splitlines() if "<- straggler" in line]
    assert "slurm-71-node1" in marked and "input_starved" in marked
    assert sum("slurm-71-node" in line for line in table.splitlines()) == 6 + 1  # the ranks, the note
    assert "rank 2 (slurm-71-node1 GPU 0" in table
    assert "  evidence: " in table and "loader_cpu_cores=" in table
    assert "  fix: The GPU waits for the input pipeline" in table


def samples(exporter: JobExporter, name: str) -> list:
    families = text_string_to_metric_families(generate_latest(exporter.registry()).decode())
    return [s for f in families for s in f.samples if s.name == name]


def test_the_judges_metrics_name_the_straggler_and_each_ranks_utilization(straggling_job):
    url, now = straggling_job
    exporter = JobExporter()
    exporter.update(now, [judge(url, now, "slurm:71")], query_seconds=0.01)
    [straggler] = samples(exporter, "flopwatch_job_straggler")
    assert straggler.labels == {"job": "slurm:71", "rank": "2", "host": "slurm-71-node1", "gpu": "0",
                                "cause": "input_starved"}
    assert sorted(s.labels["rank"] for s in samples(exporter, "flopwatch_job_rank_utilization_ratio")) == list("012345")
    [verdict] = samples(exporter, "flopwatch_job_verdict")
    assert (verdict.labels["verdict"], verdict.labels["cause"]) == ("straggler", "input_starved")


def test_a_database_failure_keeps_the_last_verdicts_and_says_so():
    exporter = JobExporter()
    exporter.update(WALL_START, None, query_seconds=0.0)
    [up] = samples(exporter, "flopwatch_judge_history_up")
    assert up.value == 0 and samples(exporter, "flopwatch_job_verdict") == []


def record(url: str, *passes: float, max_gap_seconds: float = 30) -> None:
    for now in passes:
        record_verdicts(open_engine(url), now, [judge(url, now, "slurm:71")], max_gap_seconds=max_gap_seconds,
                        keep_seconds=1e9)


def held_back(url: str, since: float, until: float) -> list[HeldBackTime]:
    query = Query(since, until, job="slurm:71")
    return build_report(read_history(url, query), query, interval_seconds=1.0, utilization_threshold=0.6,
                        prices=Prices(0.0, 0.0, "USD")).held_back


def test_a_straggler_found_pass_after_pass_is_one_stretch_whose_waiting_adds_up(straggling_job):
    url, now = straggling_job
    record(url, now - 10, now)  # the second pass extends the first's row by its 10 s
    [h] = held_back(url, now - 60, now)
    assert (h.verdict, h.cause, h.host, h.gpu, h.rank) == ("straggler", "input_starved", "slurm-71-node1", 0, 2)
    assert h.seconds == pytest.approx(30 + 10)  # the first window, then one pass
    first = judge(url, now - 10, "slurm:71").held_gpu_seconds
    assert h.held_gpu_seconds == pytest.approx(first + judge(url, now, "slurm:71").held_gpu_seconds / 3)


def test_a_straggler_found_again_after_a_gap_starts_a_new_stretch(straggling_job):
    url, now = straggling_job
    record(url, now - 10, now, max_gap_seconds=5)  # the judge was away longer than a stretch bridges
    [h] = held_back(url, now - 60, now)  # two stretches of one culprit, summed
    assert h.seconds == pytest.approx(30 + 10)  # the second from where the first ended, not its whole window


def test_the_job_report_says_which_rank_held_the_others_back(straggling_job):
    url, now = straggling_job
    record(url, now)
    query = Query(now - 60, now, job="slurm:71")
    report = build_report(read_history(url, query), query, interval_seconds=1.0, utilization_threshold=0.6,
                          prices=Prices(0.0, 0.0, "USD"))
    assert "- rank 2 (slurm-71-node1 GPU 0): input_starved for 30 s; the other ranks waited" in render_text(report)


def test_a_judge_told_to_listen_on_nonsense_says_which_setting_and_exits_2(tmp_path):
    from click.testing import CliRunner

    from flopwatch.commands.cli import main

    result = CliRunner().invoke(main, ["judge", "--from-store", f"sqlite:///{tmp_path / 'h.db'}", "--listen", "nowhere"])
    assert result.exit_code == 2
    assert "[judge].listen" in result.output and "Traceback" not in result.output
