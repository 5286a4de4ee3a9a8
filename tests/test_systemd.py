"""The unit file: valid for systemd, sandboxed to an exposure of 2.0 or less, asking what the
agent promises (notify + watchdog, reload on SIGHUP, its own user and directories), and with no
sandbox option that breaks the agent."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "flopwatch.service"
SYSUSERS = UNIT.with_name("flopwatch.sysusers")
JUDGE_UNIT = UNIT.with_name("flopwatch-judge.service")
INSTALLED_BINARY = "/usr/local/bin/flopwatch"

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def settings(path: Path) -> dict[str, list[str]]:
    """Every Key=value of a unit file, values of repeated keys in order."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


@needs_systemd_analyze
@pytest.mark.parametrize("unit_path", [UNIT, JUDGE_UNIT], ids=["agent", "judge"])
def test_systemd_analyze_verify_passes(tmp_path, unit_path):
    # verify insists that ExecStart's program exists. The test machine has no flopwatch at the
    # installed path, so a copy of the unit points at a stand-in executable; nothing else changes.
    stand_in = tmp_path / "flopwatch"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / unit_path.name
    unit.write_text(unit_path.read_text().replace(INSTALLED_BINARY, str(stand_in)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
@pytest.mark.parametrize("unit_path", [UNIT, JUDGE_UNIT], ids=["agent", "judge"])
def test_exposure_is_at_most_2(unit_path):
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_path)],
                            capture_output=True, text=True, check=True)
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)[1])
    assert exposure <= 2.0, result.stdout


def test_the_service_notifies_readiness_and_is_watched():
    unit = settings(UNIT)
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert float(unit["WatchdogSec"][0]) > 0
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ExecStart"][0].startswith(INSTALLED_BINARY + " run")


def test_the_service_runs_as_its_own_user_with_its_own_directories():
    unit = settings(UNIT)
    assert (unit["User"], unit["StateDirectory"], unit["ConfigurationDirectory"]) == (
        ["flopwatch"], ["flopwatch"], ["flopwatch"])


def test_only_nvidia_devices_are_reachable():
    unit = settings(UNIT)
    assert unit["DevicePolicy"] == ["closed"]
    assert all("nvidia" in allowed for allowed in unit["DeviceAllow"])


def test_the_sandbox_leaves_proc_readable():
    # The agent attributes GPU work to jobs through other processes' /proc entries.
    unit = settings(UNIT)
    assert unit["ProtectProc"] == ["default"] and unit["ProcSubset"] == ["all"]
    assert "PrivateUsers" not in unit


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="needs systemd-sysusers")
def test_sysusers_creates_the_flopwatch_user():
    result = subprocess.run(["systemd-sysusers", "--dry-run", str(SYSUSERS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert re.search(r"Creating user '?flopwatch'?", result.stdout + result.stderr)


def run_without_wx_memory(*args: str) -> subprocess.CompletedProcess:
    mdwe = Path(__file__).with_name("mdwe.py")
    env = {**os.environ, "PYTHONPATH": str(UNIT.parents[1] / "agent")}
    result = subprocess.run([sys.executable, str(mdwe), *args], capture_output=True, text=True, env=env)
    if result.returncode == 77:
        pytest.skip("the kernel cannot refuse writable+executable memory (PR_SET_MDWE needs Linux 6.3)")
    return result


def test_writable_executable_memory_is_really_refused_in_the_check_below():
    result = run_without_wx_memory("-c", "import mmap; mmap.mmap(-1, 4096, prot=7)")
    assert result.returncode != 0 and "PermissionError" in result.stderr


def test_the_agent_runs_without_writable_executable_memory():
    # MemoryDenyWriteExecute=yes holds only if nothing the agent loads needs W+X pages (ctypes
    # callbacks, a JIT). tests/gpu checks NVML itself the same way on a real GPU.
    result = run_without_wx_memory("-m", "flopwatch", "status", "--simulate", "healthy,input_starved",
                                   "--window", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["gpus"]) == 2


def documented_ptrace_grant() -> list[str]:
    """The drop-in lines the unit's comment gives for reading Python stacks."""
    return [line.lstrip("# ").strip() for line in UNIT.read_text().splitlines()
            if re.match(r"#\s+(CapabilityBoundingSet|AmbientCapabilities)=CAP_SYS_PTRACE$", line)]


@needs_systemd_analyze
def test_the_documented_ptrace_grant_is_valid_and_keeps_exposure_low(tmp_path):
    grant = documented_ptrace_grant()
    assert grant == ["CapabilityBoundingSet=CAP_SYS_PTRACE", "AmbientCapabilities=CAP_SYS_PTRACE"]
    # The unit with the drop-in applied: the later settings replace the empty ones.
    text = UNIT.read_text().replace("CapabilityBoundingSet=\n", grant[0] + "\n").replace(
        "AmbientCapabilities=\n", grant[1] + "\n")
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, check=True)
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)[1])
    assert "CapabilityBoundingSet=~CAP_SYS_PTRACE" in result.stdout
    assert exposure <= 2.0, result.stdout
