"""Reclaim, only when asked: a real Slurm job holding two GPUs and running nothing is cancelled —
that job, nothing else — after it has been held unused long enough; a dry run only records it.

The decisions and actions land in the history and `flopwatch report` shows them.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import pytest

from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.config import ConfigError, override
from flopwatch.history.report import reclaim_actions
from flopwatch.history.store import HistoryStore
from flopwatch.outputs.reclaim import Reclaimer
from tests.agent_process import flopwatch
from tests.sources.test_slurm import config_for

SCENARIOS = ("idle", "idle", "healthy")  # the job holding GPUs 0-1 runs nothing; GPU 2's job is busy


def held_for(slurm, tmp_path, mode: str, seconds: int = 40, **reclaim):
    """Tick an agent on the real Slurm for ``seconds`` of virtual time with the policy in ``mode``;
    the history's URL."""
    url = f"sqlite:///{tmp_path}/history.db"
    config = config_for(slurm)
    config.agent.simulate = list(SCENARIOS)
    config.history.url = url
    for key, value in {"slurm": mode, "after_seconds": 20.0, "min_job_age_seconds": 0.0,
                       "partitions": ["*"], "users": [slurm.user], **reclaim}.items():
        override(config, "reclaim", key, value)
    store = HistoryStore(url, "n1")
    clock, wall = VirtualClock(0.0), VirtualClock(time.time())
    reclaimer = Reclaimer(config.reclaim, history=store.record_reclaim, slurm_conf=str(slurm.conf), clock=clock,
                          wall_clock=wall)
    built = build_agent(config, clock=clock, wall_clock=wall, sinks=[store, reclaimer])
    for _ in range(seconds):
        clock.now += 1.0
        wall.now += 1.0
        built.agent.tick()
        reclaimer.act()
    store.close()
    return url


def test_dry_run_records_and_logs_its_decision_and_cancels_nothing(slurm, tmp_path, caplog):
    idle, busy = slurm.submit(gpus=2, partition="gpu"), slurm.submit(gpus=1)
    try:
        with caplog.at_level(logging.WARNING, logger="flopwatch.outputs.reclaim"):
            url = held_for(slurm, tmp_path, "dry-run")
        assert (slurm.state(idle), slurm.state(busy)) == ("RUNNING", "RUNNING")
    finally:
        slurm.cancel(idle)
        slurm.cancel(busy)
    [action] = reclaim_actions(url, 0, time.time() + 3600)
    assert {k: action[k] for k in ("job", "user", "partition", "action", "mode", "cause", "outcome")} == {
        "job": f"slurm:{idle}", "user": slurm.user, "partition": "gpu", "action": "scancel", "mode": "dry-run",
        "cause": "held_unused", "outcome": "dry-run"}
    assert f"reclaim (dry-run): scancel slurm:{idle}" in caplog.text
    until = datetime.fromtimestamp(time.time() + 3600, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    report = flopwatch("report", "--history", url, "--since", "1h", "--until", until)
    assert f"scancel slurm:{idle} (dry-run)" in report.stdout


def test_on_cancels_exactly_the_job_that_holds_its_gpus_unused(slurm, tmp_path):
    idle, busy = slurm.submit(gpus=2, partition="gpu"), slurm.submit(gpus=1)
    try:
        url = held_for(slurm, tmp_path, "on")
        assert slurm.state(busy) == "RUNNING"
        assert slurm.state(idle) in ("", "CANCELLED", "COMPLETING")
    finally:
        slurm.cancel(busy)
    assert [(a["job"], a["outcome"]) for a in reclaim_actions(url, 0, time.time() + 3600)] == [
        (f"slurm:{idle}", "decided"), (f"slurm:{idle}", "done")]


def test_a_job_outside_the_allow_list_is_left_alone(slurm, tmp_path):
    idle = slurm.submit(gpus=2, partition="gpu")
    try:
        url = held_for(slurm, tmp_path, "on", partitions=["debug"])
        assert slurm.state(idle) == "RUNNING"
    finally:
        slurm.cancel(idle)
    assert reclaim_actions(url, 0, time.time() + 3600) == []


def test_a_failed_scancel_is_tried_again_with_backoff_then_given_up(slurm, tmp_path):
    idle = slurm.submit(gpus=2, partition="gpu")
    try:
        url = held_for(slurm, tmp_path, "on", scancel=str(tmp_path / "no-scancel"), attempts=2)
    finally:
        slurm.cancel(idle)
    outcomes = [a["outcome"] for a in reclaim_actions(url, 0, time.time() + 3600)]
    assert outcomes[0] == "decided" and outcomes[1].startswith("failed: ") and outcomes[2].startswith("gave up: ")


def test_an_unknown_mode_names_the_key():
    from flopwatch.config import Config

    with pytest.raises(ConfigError, match=r"\[reclaim\]\.slurm"):
        override(Config(), "reclaim", "slurm", "yes")
