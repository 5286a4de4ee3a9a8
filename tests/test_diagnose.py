"""Diagnosis: every simulated cause is named, healthy is silent, findings do not flap."""

import json

import pytest
from click.testing import CliRunner

from flopwatch.cli import main
from flopwatch.diagnose import CAUSES, DiagnosisState, Tick, diagnose
from flopwatch.model import Finding
from flopwatch.sources.simulated import SCENARIOS
from flopwatch.thresholds import Thresholds


def status(scenario: str) -> dict:
    result = CliRunner().invoke(main, ["status", "--simulate", scenario, "--window", "5", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["gpus"][0]


@pytest.mark.parametrize("cause", [c for c in SCENARIOS if c != "healthy"])
def test_each_simulated_cause_is_named(cause):
    finding = status(cause)["finding"]
    assert finding["cause"] == cause
    assert finding["advice"] and finding["evidence"]["utilization"] is not None


def test_every_cause_in_the_taxonomy_has_a_scenario():
    assert set(CAUSES) <= set(SCENARIOS)


def test_healthy_bf16_training_at_the_default_power_limit_is_silent():
    assert status("healthy")["finding"] is None


def test_under_the_threshold_is_a_page_and_busy_but_inefficient_a_ticket():
    assert status("input_starved")["finding"]["severity"] == "page"
    assert status("no_tensor_cores")["finding"]["severity"] == "ticket"


def _ticks(scenario: str, seconds: int, start: float = 0.0):
    """Real ticks of a simulated GPU (through the NVML reader and derive), one a second."""
    from flopwatch.derive import derive
    from flopwatch.sources.nvml import NvmlSource
    from flopwatch.sources.simulated import SimulatedNvml

    now = [start]
    lib = SimulatedNvml([scenario], clock=lambda: now[0], wall_clock=lambda: now[0])
    source = NvmlSource(lib, clock=lambda: now[0], wall_clock=lambda: now[0])
    previous = None
    out = []
    for _ in range(seconds):
        now[0] += 1.0
        sample = source.read()[0]
        out.append(Tick(sample, derive(sample, previous), lib.host_sample(now[0])))
        previous = sample
    return out


def test_a_new_cause_must_lead_for_the_switch_time_before_it_replaces_the_old():
    th = Thresholds(switch_after_seconds=10.0, window_seconds=5.0)
    current = Finding("input_starved", "page", 0.8, {}, "advice")
    state = DiagnosisState(finding=current)
    ticks = _ticks("held_idle", 20)
    causes = []
    for i in range(5, 20):
        state = diagnose(ticks[i - 5:i], th, state)
        causes.append(state.finding.cause)
    assert causes[:10] == ["input_starved"] * 10
    assert causes[-1] == "held_idle"


def test_too_short_a_window_gives_no_finding_yet():
    assert diagnose(_ticks("held_idle", 2), Thresholds(min_window_seconds=3.0)).finding is None


def test_a_neighbours_iowait_does_not_make_every_gpu_io_bound():
    result = CliRunner().invoke(main, ["status", "--simulate", "input_starved,io_bound,unknown", "--window", "5", "--json"])
    causes = [g["finding"]["cause"] for g in json.loads(result.output)["gpus"]]
    assert causes == ["input_starved", "io_bound", "unknown"]
