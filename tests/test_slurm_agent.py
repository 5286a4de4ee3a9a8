"""GPUs a real Slurm gave to jobs, through the agent: held but unused, used outside the job, free.

A real slurmctld and slurmd (tests/servers/slurm.py) hold three GRES GPUs, matched by minor number
to the first three of four simulated GPUs; the fourth is no job's.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from prometheus_client.exposition import generate_latest

from flopwatch.commands.metrics_doc import with_findings
from flopwatch.outputs.alerting import UnderutilizationAlerts, annotations
from flopwatch.outputs.status_document import status_document
from tests.agent_process import get, running_agent, wait_for
from tests.servers.slurm import NODE
from tests.sources.test_slurm import config_for

# GPUs 0 and 1 run nothing (the job holding them crashed, say); GPU 2 runs a training process that
# is no Slurm job's (someone's script started by hand); GPU 3 is nobody's and idle.
SCENARIOS = ("idle", "idle", "healthy", "idle")


@pytest.fixture(scope="module")
def jobs(slurm):
    held = slurm.submit(gpus=2, name="crashed", account="ml", partition="gpu", time_limit_minutes=240)
    robbed = slurm.submit(gpus=1, name="victim", account="physics")
    yield held, robbed
    slurm.cancel(held)
    slurm.cancel(robbed)


@pytest.fixture(scope="module")
def state(slurm, jobs):
    config = config_for(slurm)
    config.agent.simulate = list(SCENARIOS)
    return with_findings(config).agent.state


def test_a_job_holding_two_gpus_running_nothing_is_held_unused_with_its_job_and_user(slurm, jobs, state):
    held, _ = jobs
    for gpu in state.gpus[:2]:
        assert (gpu.finding.cause, gpu.finding.severity) == ("held_unused", "page")
        e = gpu.finding.evidence
        assert (e["job"], e["user"], e["account"], e["partition"], e["time_limit_seconds"], e["processes"]) == (
            f"slurm:{held}", slurm.user, "ml", "gpu", 14400.0, 0)
        assert gpu.below_threshold and gpu.wasted_seconds.get("held_unused", 0.0) > 0


def test_a_process_outside_any_job_on_an_allocated_gpu_is_an_unallocated_use_ticket(slurm, jobs, state):
    _, robbed = jobs
    gpu = state.gpus[2]
    [process] = gpu.processes
    assert (gpu.finding.cause, gpu.finding.severity) == ("unallocated_use", "ticket")
    e = gpu.finding.evidence
    assert e["unallocated_processes"] == f"{process.pid} {process.job} {process.user}"
    assert (e["holder_job"], e["holder_user"], e["holder_account"]) == (f"slurm:{robbed}", slurm.user, "physics")


def test_a_gpu_no_job_holds_with_nothing_on_it_is_free_not_idle(state):
    gpu = state.gpus[3]
    assert (gpu.allocation, gpu.finding, gpu.below_threshold, gpu.wasted_seconds) == (None, None, False, {})


def test_without_slurm_an_empty_gpu_is_idle_as_before():
    from flopwatch.config import Config

    config = Config()
    config.slurm.squeue = "off"
    config.agent.simulate = list(SCENARIOS)
    gpus = with_findings(config).agent.state.gpus
    assert [g.finding.cause if g.finding else None for g in gpus] == ["idle", "idle", None, "idle"]


def test_status_shows_who_holds_each_gpu(slurm, jobs, state):
    held, _ = jobs
    doc = status_document(state)
    assert doc["gpus"][0]["allocation"] | {"started_at": None} == {
        "scheduler": "slurm", "job": f"slurm:{held}", "user": slurm.user, "account": "ml", "partition": "gpu",
        "namespace": None, "started_at": None, "time_limit_seconds": 14400.0, "owner": {}}
    assert doc["gpus"][3]["allocation"] is None


def test_the_page_carries_the_owner_so_alertmanager_routes_it_to_them(slurm, jobs, state):
    held, _ = jobs
    alerts = UnderutilizationAlerts(0, {"host": "n1", "job": "flopwatch"}, lambda g: annotations(g, ""))
    started = alerts.update(0.0, state.gpus).started
    assert [{k: a.labels[k] for k in ("gpu", "cause", "hpc_job", "user", "account", "partition")} for a in started] == [
        {"gpu": str(i), "cause": "held_unused", "hpc_job": held, "user": slurm.user, "account": "ml",
         "partition": "gpu"} for i in (0, 1)]


def test_a_running_agent_reads_the_real_slurm(slurm, jobs):
    held, robbed = jobs
    env = {"FLOPWATCH_SLURM_SQUEUE": shutil.which("squeue"), "FLOPWATCH_SLURM_CONF": str(slurm.conf),
           "FLOPWATCH_SLURM_NODE_NAME": NODE, "FLOPWATCH_SLURM_REFRESH_INTERVAL_SECONDS": "0.5"}
    with running_agent("--simulate", ",".join(SCENARIOS), "--history", "none", "--interval", "0.2",
                       env=env) as (url, _):
        status = wait_for(lambda: (doc := json.loads(get(url + "/api/v1/status")))
                          and all(g["finding"] for g in doc["gpus"][:3]) and doc)
        text = get(url + "/metrics")
        promtool = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert [(g["allocation"] and g["allocation"]["job"], g["finding"] and g["finding"]["cause"])
            for g in status["gpus"]] == [(f"slurm:{held}", "held_unused"), (f"slurm:{held}", "held_unused"),
                                         (f"slurm:{robbed}", "unallocated_use"), (None, None)]
    assert 'flopwatch_collector_success{collector="slurm"} 1.0' in text
    assert (f'flopwatch_gpu_allocation_info{{account="ml",gpu="0",hpc_job="{held}",partition="gpu",'
            f'scheduler="slurm",user="{slurm.user}"') in text
    assert (promtool.returncode, promtool.stdout + promtool.stderr) == (0, "")
