"""Which Slurm job holds each GPU: squeue's JSON read, recorded and from a real slurmctld/slurmd.

The recording is Debian 12's Slurm 22.05.8 (``squeue --json``) with two jobs holding one GPU each on
node ``vm``, one cancelled, two pending. The live cluster is tests/servers/slurm.py: three GRES
GPUs matched to three simulated GPUs by minor number.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

import pytest

from flopwatch.config import Config
from flopwatch.model import Allocation
from flopwatch.sources.slurm import SlurmAnswerError, SlurmReader, gpu_holders, gres_indices
from tests.servers.slurm import NODE

RECORDED = json.loads((Path(__file__).parent / "squeue-22.05.8.json").read_text())


@pytest.mark.parametrize("detail, indices", [
    ("gpu:2(IDX:0-1)", [0, 1]),
    ("gpu:a100:3(IDX:0,2-3)", [0, 2, 3]),
    ("gpu:1(IDX:5),shard:2(0/4,0/4)", [5]),
    ("gpu:tesla:2(IDX:N/A)", []),
    ("mps:100(0/100)", []),
])
def test_the_gres_string_names_the_gpu_indices(detail, indices):
    assert gres_indices(detail) == indices


def test_running_jobs_hold_their_gres_gpus_on_this_node_only():
    assert gpu_holders(RECORDED, "vm") == {
        0: Allocation("slurm", "slurm:3", user="root", account="ml", partition="debug", started_at=1796556586.0,
                      time_limit_seconds=5400.0),
        1: Allocation("slurm", "slurm:4", user="nobody", account="physics", partition="debug",
                      started_at=1796556586.0, time_limit_seconds=1800.0)}
    assert gpu_holders(RECORDED, "another-node") == {}


def test_gres_minor_numbers_map_an_index_to_another_gpu():
    assert sorted(gpu_holders(RECORDED, "vm", minor_numbers=(3, 2))) == [2, 3]


def test_newer_squeue_shapes_are_read_too():
    # Slurm 23.11's data_parser: states as lists, numbers as {set, infinite, number}, nodes by name.
    job = {"job_id": 7, "user_name": "ada", "account": "a", "partition": "p", "job_state": ["RUNNING"],
           "gres_detail": ["gpu:h100:1(IDX:0)", "gpu:h100:1(IDX:3)"],
           "start_time": {"set": True, "infinite": False, "number": 100},
           "time_limit": {"set": True, "infinite": True, "number": 0},
           "job_resources": {"nodes": {"allocation": [{"name": "n1"}, {"name": "n2"}]}}}
    assert gpu_holders({"jobs": [job]}, "n2") == {
        3: Allocation("slurm", "slurm:7", user="ada", account="a", partition="p", started_at=100.0)}


@pytest.mark.parametrize("document", [[], {"jobs": "none"}, {"meta": {}}])
def test_an_answer_without_a_jobs_list_is_an_error(document):
    with pytest.raises(SlurmAnswerError):
        gpu_holders(document, "vm")


def config_for(slurm) -> Config:
    config = Config()
    config.slurm.squeue = shutil.which("squeue")
    config.slurm.conf = str(slurm.conf)
    config.slurm.node_name = NODE
    return config


def test_the_reader_answers_what_the_real_slurm_allocated(slurm):
    job = slurm.submit(gpus=2, account="ml", time_limit_minutes=90)
    try:
        reader = SlurmReader.from_config(config_for(slurm).slurm)
        reader.refresh()
        holders = reader.answer.holders
        assert (reader.answer.ok, sorted(holders)) == (True, [0, 1])
        assert (holders[0].job, holders[0].user, holders[0].account, holders[0].time_limit_seconds) == (
            f"slurm:{job}", slurm.user, "ml", 5400.0)
    finally:
        slurm.cancel(job)
    reader.refresh()
    assert (reader.answer.ok, reader.answer.holders) == (True, {})


def fake_squeue(tmp_path: Path, body: str) -> str:
    """A stand-in for squeue answering ``body`` (a shell script's lines): Slurm cannot be made to
    answer garbage."""
    path = tmp_path / "squeue"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_a_garbled_answer_keeps_the_last_good_one_with_one_warning(slurm, tmp_path, caplog):
    job = slurm.submit(gpus=1)
    try:
        reader = SlurmReader.from_config(config_for(slurm).slurm)
        reader.refresh()
        good = reader.answer.holders
        reader.command[0] = fake_squeue(tmp_path, "echo '{\"jobs\": '")
        with caplog.at_level(logging.WARNING, logger="flopwatch.sources.slurm"):
            reader.refresh()
            reader.refresh()
    finally:
        slurm.cancel(job)
    assert (reader.answer.ok, reader.answer.answered, reader.answer.holders) == (False, True, good)
    assert [r.getMessage() for r in caplog.records if "not squeue's JSON" in r.getMessage()] != []
    assert len(caplog.records) == 1


def test_a_slurmctld_that_does_not_answer_is_a_timeout(slurm, caplog):
    reader = SlurmReader.from_config(config_for(slurm).slurm)
    reader.timeout_seconds = 1.0
    pid = int((slurm.root / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # slurmctld hangs: squeue waits on it
    try:
        with caplog.at_level(logging.WARNING, logger="flopwatch.sources.slurm"):
            reader.refresh()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (reader.answer.ok, reader.answer.answered) == (False, False)
    assert "no answer in 1 s" in caplog.text


def test_squeue_missing_or_failing_is_a_warning_not_an_error(tmp_path, caplog):
    reader = SlurmReader(str(tmp_path / "no-squeue"), NODE)
    with caplog.at_level(logging.WARNING, logger="flopwatch.sources.slurm"):
        reader.refresh()
        reader.command[0] = fake_squeue(tmp_path, "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1")
        reader.refresh()
    assert reader.answer.ok is False
    assert "[slurm].squeue" in caplog.records[0].getMessage()
    assert "Unable to contact slurm controller" in caplog.records[1].getMessage()


def test_auto_is_off_without_a_slurm_conf(tmp_path):
    config = Config()
    config.slurm.conf = str(tmp_path / "missing.conf")
    assert SlurmReader.from_config(config.slurm) is None
