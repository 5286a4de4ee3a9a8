import json

import pynvml
import pytest
from click.testing import CliRunner

from flopwatch.sources import sysfacts
from flopwatch.commands.doctor import doctor_command


def doctor(*args: str):
    return CliRunner().invoke(doctor_command, list(args))


def test_simulated_healthy_gpu_passes_as_json():
    result = doctor("--simulate", "healthy", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["status"] == "pass"
    assert {"name": "driver", "status": "pass", "value": "580.95.05", "fix": "", "gpu": None} in document["checks"]
    assert {c["name"] for c in document["checks"] if c["gpu"] == 0} == {
        "persistence_mode", "pcie_link", "power_limit", "clock_events", "ecc", "remapped_rows", "mig_mode",
        "gpm", "xid_events", "numa_affinity", "flops_calibration"}


def test_an_old_driver_on_a_narrow_link_fails_with_exit_1():
    result = doctor("--simulate", "system", "--json")
    assert result.exit_code == 1
    failed = {(c["name"], c["gpu"]) for c in json.loads(result.output)["checks"] if c["status"] == "fail"}
    assert failed == {("driver", None), ("cuda", None), ("pcie_link", 0)}


def test_a_lowered_power_limit_is_a_warning_not_a_failure():
    result = doctor("--simulate", "power_capped", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["status"] == "warn"


def test_the_table_names_each_check_and_its_fix():
    result = doctor("--simulate", "healthy,thermal_throttled")
    assert result.exit_code == 1
    assert "clock_events" in result.output and "cooling" in result.output


def test_a_calibration_file_that_is_not_json_is_a_warning_naming_it(tmp_path, monkeypatch):
    broken = tmp_path / "calibration.json"
    broken.write_text("{not json")
    monkeypatch.setenv("FLOPWATCH_CALIBRATION_FILE", str(broken))
    result = doctor("--simulate", "healthy", "--json")
    assert result.exit_code == 0
    check = next(c for c in json.loads(result.output)["checks"] if c["name"] == "flops_calibration" and c["gpu"] is None)
    assert check["status"] == "warn" and str(broken) in check["value"]


def test_a_factor_stored_for_the_card_passes_with_where_it_came_from(tmp_path, monkeypatch):
    stored = tmp_path / "calibration.json"
    stored.write_text(json.dumps({"version": 1, "entries": [
        {"model": "H100 SXM", "driver": "580.95.05", "measured_at": "2026-12-06", "factors": {"bf16": 0.97}}]}))
    monkeypatch.setenv("FLOPWATCH_CALIBRATION_FILE", str(stored))
    check = next(c for c in json.loads(doctor("--simulate", "healthy", "--json").output)["checks"]
                 if c["name"] == "flops_calibration")
    assert check["status"] == "pass" and check["value"].startswith("stored: measured on this node on 2026-12-06")


def test_an_unknown_scenario_is_a_usage_error():
    result = doctor("--simulate", "on_fire")
    assert result.exit_code == 2 and "on_fire" in result.output


def test_without_an_nvidia_driver_the_driver_check_fails():
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    result = doctor("--json")
    assert result.exit_code == 1
    driver = next(c for c in json.loads(result.output)["checks"] if c["name"] == "driver")
    assert driver["status"] == "fail" and driver["value"].startswith("NVML unavailable")


def test_an_unreadable_kernel_log_reads_as_none(tmp_path):
    assert sysfacts.read_kernel_log(str(tmp_path / "no-kmsg")) is None
