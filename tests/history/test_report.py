"""`flopwatch report` over a history the real agent wrote while simulated GPUs changed workload.

Six minutes of 1 Hz ticks on five simulated GPUs, on a virtual clock: GPU 0 trains well, then
its input pipeline starves it; GPU 1 is a notebook holding memory; GPU 2 idles, then trains;
GPU 3 is memory-bound (busy, a ticket, no waste); GPU 4 is shared by two processes.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from dataclasses import replace

import pytest
from click.testing import CliRunner

from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.commands.cli import main
from flopwatch.config import Config
from flopwatch.judge.diagnose import ADVICE
from flopwatch.model import StackProfile, StackShare
from flopwatch.history.report import Prices, Query, build_report, choose_level, read_history
from flopwatch.history.store import HistoryStore
from tests.store_ticks import starved, tick

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SECONDS = 360
SWITCH = 180  # GPU 0 starts starving, GPU 2 starts training
SCENARIOS = ["healthy", "held_idle", "idle", "memory_bound", "contention"]
TOKENS_PER_SECOND = {"healthy": 5000.0, "input_starved": 1500.0}
WINDOW = ["--since", "2026-01-01T00:00Z", "--until", "2026-01-01T00:07Z"]
PRICES = ["--price-per-gpu-hour", "2.5", "--price-per-kwh", "0.2"]


def write_history(stores: list[HistoryStore]) -> None:
    """Run the agent on simulated GPUs for SECONDS virtual seconds, recording into ``stores``."""
    config = Config()
    config.agent.simulate = SCENARIOS
    config.agent.hostname = "node1"
    clock, wall = VirtualClock(0.0), VirtualClock(T0)
    built = build_agent(config, clock=clock, wall_clock=wall)
    for second in range(1, SECONDS + 1):
        if second == SWITCH:
            built.lib.set_scenario(0, "input_starved")
            built.lib.set_scenario(2, "healthy")
        clock.now += 1.0
        wall.now += 1.0
        state = built.agent.tick()
        # Tokens come from the token sources in the agent; here the training GPU reports them.
        tokens = {0: TOKENS_PER_SECOND.get(built.lib.scenario_of(0), 0.0)}
        for store in stores:
            store.record(state, tokens)
    built.agent.close()
    for store in stores:
        store.close()  # as the agent stops: the ticks still settling are written as they were read
        store.rollup(now=wall.now)


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'history.db'}"
    write_history([HistoryStore(url, "node1")])
    return url


def report(url: str, group_by: str = "job", **query):
    q = Query(T0, T0 + 420, **query)
    return build_report(read_history(url, q), q, interval_seconds=1.0, utilization_threshold=0.6,
                        prices=Prices(2.5, 0.2), group_by=group_by)


def cli(*args: str):
    return CliRunner().invoke(main, ["report", *args], catch_exceptions=False, env={"COLUMNS": "200"})


# -- the figures -----------------------------------------------------------------------------


def test_gpu_hours_are_every_gpu_for_every_tick(url):
    assert report(url).total.gpu_hours == pytest.approx(len(SCENARIOS) * SECONDS / 3600)


@pytest.mark.parametrize("group_by", ["job", "user", "host", "gpu"])
def test_groups_add_up_to_the_total(url, group_by):
    r = report(url, group_by)
    assert sum(g.gpu_hours for g in r.groups) == pytest.approx(r.total.gpu_hours)
    assert sum(g.wasted_gpu_hours for g in r.groups) == pytest.approx(r.total.wasted_gpu_hours)
    assert sum(g.energy_kwh for g in r.groups) == pytest.approx(r.total.energy_kwh)


def test_waste_by_cause_sums_to_the_waste(url):
    r = report(url)
    assert r.total.wasted_gpu_hours > 0
    assert sum(r.total.wasted_by_cause.values()) == pytest.approx(r.total.wasted_gpu_hours)
    assert sum(c.wasted_gpu_hours for c in r.causes) == pytest.approx(r.total.wasted_gpu_hours)
    assert sum(c.share for c in r.causes) == pytest.approx(1.0)


def test_each_gpu_wastes_its_time_on_its_own_cause(url):
    by_gpu = {g.name: g for g in report(url, "gpu").groups}
    assert by_gpu["node1:0"].top_cause == "input_starved"
    assert by_gpu["node1:1"].top_cause == "held_idle"
    assert by_gpu["node1:2"].top_cause == "idle"
    assert by_gpu["node1:3"].wasted_gpu_hours == 0  # memory-bound is busy: a ticket, not waste
    assert by_gpu["node1:4"].top_cause == "contention"


def test_a_gpu_that_idles_then_trains_wastes_only_the_idle_part(url):
    gpu2 = report(url, gpu="2").total
    assert gpu2.wasted_gpu_hours == pytest.approx(SWITCH / 3600, abs=15 / 3600)


def test_each_cause_carries_its_advice(url):
    for cause in report(url).causes:
        assert cause.advice == ADVICE[cause.cause]


def test_a_cause_lists_the_causes_found_beside_it(url):
    contention = next(c for c in report(url).causes if c.cause == "contention")
    assert "launch_bound" in contention.contributing


def test_the_jobs_that_waste_most_come_first(url):
    top = report(url).top_jobs
    assert [u.wasted_gpu_hours for u in top] == sorted((u.wasted_gpu_hours for u in top), reverse=True)
    assert top[0].name == "alice:kernel.json"  # the notebook holding a GPU the whole time


def test_users_come_from_the_jobs_processes(url):
    assert {g.name for g in report(url, "user").groups} == {"alice", "(no user)"}


def test_joules_per_token_is_the_energy_of_the_ticks_that_counted_tokens(url):
    gpu0 = report(url, gpu="0").total
    tokens = (SWITCH - 1) * 5000.0 + (SECONDS - SWITCH + 1) * 1500.0
    assert gpu0.tokens == pytest.approx(tokens)
    assert gpu0.joules_per_token == pytest.approx(gpu0.energy_kwh * 3.6e6 / tokens)


def test_cost_is_gpu_hours_and_energy_at_their_prices(url):
    t = report(url).total
    assert t.cost == pytest.approx(t.gpu_hours * 2.5 + t.energy_kwh * 0.2)
    assert t.wasted_cost == pytest.approx(t.wasted_gpu_hours * 2.5)


def test_the_minute_rollups_give_the_raw_totals(url):
    raw, minute = report(url, level="raw").total, report(url, level="minute").total
    assert minute.gpu_hours == pytest.approx(raw.gpu_hours)
    assert minute.wasted_gpu_hours == pytest.approx(raw.wasted_gpu_hours)
    assert minute.energy_kwh == pytest.approx(raw.energy_kwh)
    assert minute.mean_utilization == pytest.approx(raw.mean_utilization)


def test_the_plotted_series_holds_all_the_energy_and_waste(url):
    r = report(url)
    assert sum(p.energy_kwh for p in r.series) == pytest.approx(r.total.energy_kwh)
    wasted = sum(share * p.gpus * r.step_seconds for p in r.series for share in p.wasted_share_by_cause.values())
    assert wasted / 3600 == pytest.approx(r.total.wasted_gpu_hours, rel=0.02)  # the edge buckets are cut


@pytest.fixture(scope="module")
def fleet_url(tmp_path_factory) -> str:
    """The same jobs on two hosts, as a data-parallel job spanning nodes writes them."""
    url = f"sqlite:///{tmp_path_factory.mktemp('fleet') / 'history.db'}"
    write_history([HistoryStore(url, "node1"), HistoryStore(url, "node2")])
    return url


def test_a_job_spanning_two_hosts_is_one_job(url, fleet_url):
    one = {g.name: g.gpu_hours for g in report(url).groups}
    both = {g.name: g.gpu_hours for g in report(fleet_url).groups}
    assert both == pytest.approx({job: 2 * hours for job, hours in one.items()})


def test_grouped_by_host_each_host_has_its_own_gpu_hours(url, fleet_url):
    by_host = {g.name: g.gpu_hours for g in report(fleet_url, "host").groups}
    assert by_host == pytest.approx({"node1": report(url).total.gpu_hours, "node2": report(url).total.gpu_hours})


def test_a_host_filter_reads_only_that_host(url, fleet_url):
    assert report(fleet_url, host="node2").total.gpu_hours == pytest.approx(report(url).total.gpu_hours)


@pytest.mark.parametrize("days, gpus, level", [
    (1, 8, "raw"),  # a node's day: 691,200 raw ticks
    (1, 512, "minute"),  # a fleet's day: 44 M raw ticks, 737,280 minutes
    (30, 8, "minute"),
    (30, 512, "hour"),  # 22 M minutes, 368,640 hours
])
def test_the_more_gpus_a_report_covers_the_coarser_the_level_it_reads(days, gpus, level):
    assert choose_level(T0, T0 + days * 86_400, gpus) == level


def test_a_long_range_is_read_in_slices_with_progress(url):
    calls = []
    read_history(url, Query(T0 - 29 * 86_400, T0 + 86_400), progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 1 and calls[-1][0] == calls[-1][1]


# -- the command -----------------------------------------------------------------------------


def test_json_and_csv_carry_the_same_numbers(url):
    as_json = json.loads(cli("--history", url, *WINDOW, *PRICES, "--format", "json").stdout)
    rows = list(csv.DictReader(io.StringIO(cli("--history", url, *WINDOW, *PRICES, "--format", "csv").stdout)))
    numbers = ("gpu_hours", "mean_utilization", "wasted_gpu_hours", "energy_kwh", "cost", "wasted_cost")
    total = next(r for r in rows if r["section"] == "total")
    assert {n: float(total[n]) for n in numbers} == {n: as_json["total"][n] for n in numbers}
    jobs = {r["name"]: float(r["wasted_gpu_hours"]) for r in rows if r["section"] == "job"}
    assert jobs == {g["name"]: g["wasted_gpu_hours"] for g in as_json["groups"]}
    causes = {r["name"]: float(r["wasted_gpu_hours"]) for r in rows if r["section"] == "cause"}
    assert causes == {c["cause"]: c["wasted_gpu_hours"] for c in as_json["causes"]}


def test_progress_goes_to_stderr_and_leaves_the_json_whole(url):
    result = cli("--history", url, "--since", "2025-12-01T00:00Z", "--until", "2026-01-02T00:00Z",
                 "--format", "json", "--progress")
    assert result.exit_code == 0 and json.loads(result.stdout)["total"]["gpu_hours"] > 0


def test_the_table_names_the_causes_and_their_advice(url):
    result = cli("--history", url, *WINDOW)
    assert result.exit_code == 0
    assert "input_starved" in result.stdout and "held_idle" in result.stdout
    assert "Raise DataLoader num_workers" in result.stdout


def test_a_job_report_covers_the_job_while_it_ran(url):
    result = cli("--history", url, "--job", "alice:kernel.json", "--format", "json")
    doc = json.loads(result.stdout)
    assert doc["total"]["gpu_hours"] == pytest.approx(SECONDS / 3600)
    assert list(doc["total"]["wasted_by_cause"])[0] == "held_idle"


def test_text_is_a_short_summary_an_epilog_can_mail(url):
    text = cli("--history", url, "--job", "alice:kernel.json", "--format", "text").stdout
    assert text.startswith("flopwatch report: job alice:kernel.json")
    assert "held_idle" in text and ADVICE["held_idle"] in text
    assert len(text.splitlines()) < 15


def test_an_empty_range_says_so_and_exits_0(url):
    for fmt in ("table", "text"):
        result = cli("--history", url, "--since", "2025-06-01T00:00Z", "--until", "2025-06-02T00:00Z", "--format", fmt)
        assert result.exit_code == 0 and result.stdout.startswith("no history for all GPUs between")
    result = cli("--history", url, "--since", "2025-06-01T00:00Z", "--until", "2025-06-02T00:00Z", "--format", "json")
    assert result.exit_code == 0 and json.loads(result.stdout)["empty"] is True
    assert "holds no history" in result.stderr


def test_an_unknown_job_is_an_empty_report(url):
    result = cli("--history", url, "--job", "nosuchjob")
    assert result.exit_code == 0 and "no history for job nosuchjob" in result.stdout


@pytest.mark.parametrize("args, code, message", [
    (["--format", "html"], 2, "give -o FILE"),
    (["--since", "1h", "--until", "2h"], 2, "--since must be before --until"),
    (["--history", "nosuchdb://x"], 2, "--history / [history].url"),
])
def test_mistakes_exit_2_with_the_reason(args, code, message):
    result = cli(*args)
    assert result.exit_code == code and message in result.output


def test_a_missing_database_exits_1(tmp_path):
    result = cli("--history", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.exit_code == 1 and "no history database" in result.stderr


# -- the page --------------------------------------------------------------------------------


def test_the_html_page_is_one_file_with_the_plots_and_the_causes(url, tmp_path):
    page = tmp_path / "report.html"
    assert cli("--history", url, *WINDOW, *PRICES, "--format", "html", "-o", str(page)).exit_code == 0
    text = page.read_text()
    assert text.count("<svg") == 3
    # Nothing to fetch: every src and href points inside the page.
    assert re.findall(r'(?:src|href)\s*=\s*"([^"#][^"]*)"', text) == []
    assert re.findall(r"url\(([^#)][^)]*)\)", text) == [] and "@import" not in text


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/test installs it)")
def test_the_html_page_shows_its_plots_in_a_headless_browser(url, tmp_path):
    page = tmp_path / "report.html"
    cli("--history", url, *WINDOW, *PRICES, "--format", "html", "-o", str(page))
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1366,900"]
    shot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=60)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    assert dom.count("<figure") == 3 and dom.count("<svg") >= 3
    for caption in ("Utilization over time", "Waste by cause", "Power and energy"):
        assert caption in dom
    for cause in ("input_starved", "held_idle", "idle", "contention"):
        assert f"wasted: {cause}" in dom  # the legend of the shaded utilization plot


# -- PostgreSQL ------------------------------------------------------------------------------


def test_postgresql_and_sqlite_give_the_same_report(postgres_url, tmp_path):
    sqlite_url = f"sqlite:///{tmp_path / 'history.db'}"
    write_history([HistoryStore(sqlite_url, "node1"), HistoryStore(postgres_url, "node1")])
    for level in ("raw", "minute"):
        on_sqlite, on_postgres = report(sqlite_url, level=level), report(postgres_url, level=level)
        assert on_postgres.total.gpu_hours == pytest.approx(on_sqlite.total.gpu_hours)
        assert on_postgres.total.wasted_by_cause == pytest.approx(on_sqlite.total.wasted_by_cause)
        assert on_postgres.total.energy_kwh == pytest.approx(on_sqlite.total.energy_kwh)
        assert len(on_postgres.series) == len(on_sqlite.series)


def test_a_cause_shows_the_stack_its_culprit_was_last_found_in(tmp_path):
    stacked = f"sqlite:///{tmp_path / 'history.db'}"
    store = HistoryStore(stacked, "node1")
    profile = StackProfile(pids=(1000,), samples=40, stacks=(
        StackShare(share=0.62, frames=("encode (prep.py:88)", "collate (train.py:41)"), thread="MainThread", pid=1000),))
    for n in range(5):
        store.record(tick(T0 + n, utilization=0.3, finding=replace(starved(), stacks=profile if n >= 2 else None)))
    store.flush()
    [cause] = report(stacked).causes
    assert (cause.cause, cause.top_stack) == ("input_starved", "62 % in encode (prep.py:88) ← collate (train.py:41)")
    assert "  Stack: 62 % in encode (prep.py:88)" in cli("--history", stacked, *WINDOW, "--format", "text").stdout


# -- reclaim decisions and actions -----------------------------------------------------------


RECLAIMED = [
    {"ts": T0 + 60, "scheduler": "slurm", "job": "slurm:41", "user": "ana", "account": "ml", "partition": "gpu",
     "action": "scancel", "mode": "on", "cause": "held_unused", "held_seconds": 7200.0, "outcome": "decided"},
    {"ts": T0 + 61, "scheduler": "slurm", "job": "slurm:41", "user": "ana", "account": "ml", "partition": "gpu",
     "action": "scancel", "mode": "on", "cause": "held_unused", "held_seconds": 7200.0, "outcome": "done"},
]


@pytest.fixture
def reclaim_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    store = HistoryStore(url, "node1")
    for row in RECLAIMED:
        store.record_reclaim(row)
    store.close()
    return url


def test_json_lists_every_reclaim_decision_and_action(reclaim_url):
    reclaim = json.loads(cli("--history", reclaim_url, *WINDOW, "--format", "json").stdout)["reclaim"]
    assert [{k: a[k] for k in RECLAIMED[0]} for a in reclaim] == RECLAIMED
    assert {a["host"] for a in reclaim} == {"node1"}


def test_csv_has_a_reclaim_row_for_each(reclaim_url):
    rows = csv.DictReader(io.StringIO(cli("--history", reclaim_url, *WINDOW, "--format", "csv").stdout))
    assert [(r["name"], r["action"], r["mode"], r["top_cause"], r["user"], r["outcome"])
            for r in rows if r["section"] == "reclaim"] == [
        ("slurm:41", "scancel", "on", "held_unused", "ana", "decided"),
        ("slurm:41", "scancel", "on", "held_unused", "ana", "done")]


def test_the_html_page_has_a_reclaim_table(reclaim_url, tmp_path):
    page = tmp_path / "report.html"
    assert cli("--history", reclaim_url, *WINDOW, "--format", "html", "-o", str(page)).exit_code == 0
    text = page.read_text()
    assert "<h2>Reclaim: decisions and actions</h2>" in text
    assert text.count("<td>slurm:41</td>") == 2 and "<td>done</td>" in text


@pytest.mark.parametrize("fmt", ["table", "text"])
def test_the_terminal_formats_list_them_too(reclaim_url, fmt):
    out = cli("--history", reclaim_url, *WINDOW, "--format", fmt).stdout
    assert "scancel slurm:41 (on)  user=ana partition=gpu  held_unused for 7200 s  → done" in out
