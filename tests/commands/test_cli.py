"""The README's agent command, end to end: a real agent process, real promtool, the status document."""

import json
import re
import signal
import socket
import subprocess

import pytest

from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.commands.status import look, one_look
from flopwatch.config import Config
from flopwatch.sources.stacks import StackSampler
from tests.agent_process import flopwatch, get, running_agent, wait_for
from tests.sources.test_stacks import counting

CONTRACT_PER_GPU = [
    "flopwatch_utilization_ratio", "flopwatch_sm_occupancy_ratio", "flopwatch_tensor_active_ratio",
    "flopwatch_dram_active_ratio", "flopwatch_flops_utilization_ratio", "flopwatch_memory_turnover_per_second",
    "flopwatch_power_watts", "flopwatch_energy_joules_total", "flopwatch_throttle_seconds_total",
    "flopwatch_memory_used_bytes", "flopwatch_below_threshold", "flopwatch_process_sm_ratio", "flopwatch_gpu_info",
]


@pytest.fixture(scope="module")
def agent():
    with running_agent("--simulate", "healthy,input_starved", "--history", "none", "--interval", "0.2") as (url, proc):
        # The diagnosis needs a few seconds of window before it names a cause.
        wait_for(lambda: json.loads(get(url + "/api/v1/status"))["gpus"][1]["finding"])
        yield url


def test_metrics_have_every_contract_series_for_both_gpus(agent):
    text = get(agent + "/metrics")
    for name in CONTRACT_PER_GPU:
        gpus = set(re.findall(rf'^{name}{{[^}}]*gpu="(\d+)"', text, re.M))
        assert gpus == {"0", "1"}, name
    assert re.search(r'^flopwatch_collector_success{collector="nvml"} 1', text, re.M)


def test_promtool_finds_nothing_to_say_about_the_metrics(agent):
    result = subprocess.run(["promtool", "check", "metrics"], input=get(agent + "/metrics"), capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_status_from_a_running_agent_has_the_contract_shape(agent):
    result = flopwatch("status", "--from", agent, "--json")
    doc = json.loads(result.stdout)
    assert [g["index"] for g in doc["gpus"]] == [0, 1]
    gpu = doc["gpus"][1]
    for key in ("uuid", "name", "source_quality", "utilization", "flops_utilization", "memory_turnover_per_second",
                "power_watts", "processes", "finding"):
        assert key in gpu
    assert set(gpu["processes"][0]) >= {"pid", "job", "sm_ratio", "memory_bytes"}


def test_status_shows_the_finding_beside_the_means_of_the_window_it_was_made_from():
    result = flopwatch("status", "--simulate", "input_starved", "--window", "5", "--json")
    gpu = json.loads(result.stdout)["gpus"][0]
    assert gpu["window_seconds"] == 5.0
    assert gpu["finding"]["evidence"]["utilization"] == round(gpu["utilization"], 3) < 0.6
    assert gpu["last_tick"]["utilization"] != gpu["utilization"]  # a starved GPU's seconds differ from its mean


def test_status_gives_a_verdict_on_work_that_changed_in_the_windows_last_seconds():
    # A job's process appears on an idle GPU 1 s before the window ends: its segment is named
    # once it has min_window_seconds, a few seconds past the window, not left without a verdict.
    config = Config()
    config.agent.simulate = ["idle"]
    clock, wall = VirtualClock(0.0), VirtualClock(1.8e9)
    built = build_agent(config, clock=clock, wall_clock=wall)

    def wait(seconds: float) -> None:
        clock.now += seconds
        wall.now += seconds
        if clock.now == 7.0:
            built.lib.set_scenario(0, "held_idle")

    state = look(built.agent, config, 8.0, wait, lambda: clock.now)
    assert state.gpus[0].finding.cause == "held_idle"
    assert clock.now <= 8.0 + config.diagnosis.min_window_seconds


def test_status_reads_the_processes_sm_shares_three_times_in_its_window():
    # Read once a counter interval (10 s), an 8 s window would hold only its first tick's shares:
    # one NVML sample period, from before the window (a training process read 0.0 beside its peer).
    config = Config()
    config.agent.simulate = ["contention"]
    one_look(config, 8.0)
    clock, wall = VirtualClock(0.0), VirtualClock(1.8e9)
    built = build_agent(config, clock=clock, wall_clock=wall)
    reads = []
    real_read = built.lib.nvmlDeviceGetProcessUtilization
    built.lib.nvmlDeviceGetProcessUtilization = lambda *a: reads.append(clock.now) or real_read(*a)

    def wait(seconds: float) -> None:
        clock.now += seconds
        wall.now += seconds

    look(built.agent, config, 8.0, wait, lambda: clock.now)
    assert len(reads) >= 3


def test_status_shows_stacks_of_work_that_changed_after_the_windows_first_sample(tmp_path):
    # The job, healthy when the window began, was sampled then; its launches stall from 3 s.
    script, _ = counting(tmp_path)
    config = Config()
    config.agent.simulate = ["healthy"]
    one_look(config, 8.0)
    clock, wall = VirtualClock(0.0), VirtualClock(1.8e9)
    built = build_agent(config, clock=clock, wall_clock=wall)
    built.agent.stacks = StackSampler(config.stacks, binary=script, clock=clock, wall_clock=wall,
                                      ptrace_check=lambda: None)

    def wait(seconds: float) -> None:
        built.agent.stacks.wait(30)
        clock.now += seconds
        wall.now += seconds
        if clock.now == 3.0:
            built.lib.set_scenario(0, "launch_bound")

    finding = look(built.agent, config, 8.0, wait, lambda: clock.now).gpus[0].finding
    assert finding.cause == "launch_bound"
    assert finding.stacks.timestamp - 1.8e9 >= 5  # not the sample that saw 1 s to 3 s


def test_status_table_labels_the_last_tick_apart_from_the_window_means():
    result = flopwatch("status", "--simulate", "input_starved", "--window", "5")
    assert "last tick" in result.stdout and "means over the last 5 s" in result.stdout


def test_status_table_names_the_cause_and_the_advice(agent):
    result = flopwatch("status", "--from", agent)
    assert "input_starved" in result.stdout and "num_workers" in result.stdout


def test_sigterm_stops_the_agent_with_exit_0():
    with running_agent("--simulate", "healthy", "--history", "none") as (url, proc):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_port_in_use_is_exit_2_naming_the_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = flopwatch("run", "--simulate", "healthy", "--history", "none", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_unknown_scenario_is_exit_2_listing_the_valid_ones():
    result = flopwatch("status", "--simulate", "sleepy", "--window", "1")
    assert result.returncode == 2
    assert "'sleepy'" in result.stderr and "input_starved" in result.stderr


def test_a_status_window_of_zero_is_exit_2_naming_the_option():
    result = flopwatch("status", "--simulate", "healthy", "--window", "0")
    assert result.returncode == 2
    assert "--window" in result.stderr and "Traceback" not in result.stderr


def test_bad_config_is_exit_2_naming_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[agent]\ninterval_seconds = -1\n")
    result = flopwatch("run", "--config", str(path), "--simulate", "healthy")
    assert result.returncode == 2
    assert "[agent].interval_seconds" in result.stderr and "Traceback" not in result.stderr


def test_no_nvml_and_no_simulation_says_how_to_simulate():
    result = flopwatch("run", "--history", "none", "--listen", "127.0.0.1:0", env={"LD_LIBRARY_PATH": "/nonexistent"})
    if result.returncode == 0:
        pytest.skip("this machine has NVML")
    assert result.returncode == 2
    assert "--simulate" in result.stderr and "Traceback" not in result.stderr


def test_version():
    assert flopwatch("version").stdout.startswith("flopwatch ")
