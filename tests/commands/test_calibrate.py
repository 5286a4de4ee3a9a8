"""`flopwatch calibrate`: its refusals on simulated GPUs, and how it stores factors (the timing needs a GPU:
tests/gpu/flops_check.py)."""

import json
import sys

import pytest
from click.testing import CliRunner

from flopwatch.commands import calibrate
from flopwatch.commands.calibrate import calibrate_command
from flopwatch.commands.options import UsageError
from flopwatch.judge.calibration import Factors, from_document


def run(*args: str):
    return CliRunner().invoke(calibrate_command, list(args))


def test_a_gpu_a_process_uses_is_refused_with_exit_1_naming_the_process():
    result = run("--simulate", "healthy")
    assert result.exit_code == 1
    assert "in use by process(es) 100000" in result.output and "idle" in result.output


def test_without_pytorch_or_cupy_it_says_what_to_install_and_exits_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    monkeypatch.setitem(sys.modules, "cupy", None)
    result = run("--simulate", "idle")
    assert result.exit_code == 2
    assert "pip install torch (or cupy-cuda12x)" in result.output
    assert "Traceback" not in result.output


def test_a_gpu_the_node_lacks_is_a_usage_error():
    result = run("--simulate", "idle", "--gpu", "3")
    assert result.exit_code == 2 and "--gpu 3" in result.output


def test_a_stored_factor_replaces_its_model_and_drivers_and_keeps_the_others(tmp_path):
    path = tmp_path / "calibration.json"
    calibrate._store(str(path), ("H200 SXM", "580"), Factors({"bf16": 0.88}, "2026-12-01"))
    calibrate._store(str(path), ("H100 SXM", "580"), Factors({"bf16": 0.99}, "2026-12-02"))
    calibrate._store(str(path), ("H100 SXM", "580"), Factors({"bf16": 0.98, "fp32": 1.0}, "2026-12-06"))
    assert from_document(json.loads(path.read_text())) == {
        ("H200 SXM", "580"): Factors({"bf16": 0.88}, "2026-12-01"),
        ("H100 SXM", "580"): Factors({"bf16": 0.98, "fp32": 1.0}, "2026-12-06")}


def test_an_unreadable_old_file_is_replaced_and_said_so(tmp_path, capsys):
    path = tmp_path / "calibration.json"
    path.write_text("{half a file")
    calibrate._store(str(path), ("H100 SXM", "580"), Factors({"bf16": 0.98}))
    assert "could not be read" in capsys.readouterr().out
    assert ("H100 SXM", "580") in from_document(json.loads(path.read_text()))


def test_a_file_that_cannot_be_written_names_the_key(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(UsageError, match=r"\[calibration\].file"):
        calibrate._store(str(blocker / "calibration.json"), ("H100 SXM", "580"), Factors({"bf16": 0.98}))


def test_the_agent_reads_flops_with_the_factor_stored_for_its_card(tmp_path, monkeypatch):
    from flopwatch.commands.status import status

    def flops_utilization() -> float:
        result = CliRunner().invoke(status, ["--simulate", "healthy", "--window", "3", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["gpus"][0]["flops_utilization"]

    path = tmp_path / "calibration.json"
    monkeypatch.setenv("FLOPWATCH_CALIBRATION_FILE", str(path))
    shipped = flops_utilization()  # no file yet: the H100 SXM's shipped factor
    calibrate._store(str(path), ("H100 SXM", "580.95.05"), Factors({"bf16": 0.5, "fp16": 0.5}))
    assert flops_utilization() == pytest.approx(shipped * 0.5 / 0.985, rel=0.02)
