"""Diagnosis: every simulated cause is named, healthy is silent, findings do not flap."""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from flopwatch.commands.cli import main
from flopwatch.judge import allocation
from flopwatch.judge.diagnose import CAUSES, PHASES, DiagnosisState, classify, diagnose
from flopwatch.judge.signals import Signals, Tick, TickWindow
from flopwatch.model import Finding
from flopwatch.sources.simulated import SCENARIOS
from flopwatch.thresholds import Thresholds
from tests.approx import approx_numbers


def status(scenario: str) -> dict:
    result = CliRunner().invoke(main, ["status", "--simulate", scenario, "--window", "5", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["gpus"][0]


# Scenarios named for how a cause shows, not for the cause.
SIGNATURES = {"cpu_contended": "input_starved", "disk_direct_read": "io_bound"}


@pytest.mark.parametrize("scenario", [c for c in SCENARIOS if c != "healthy"])
def test_each_simulated_cause_is_named(scenario):
    finding = status(scenario)["finding"]
    assert finding["cause"] == SIGNATURES.get(scenario, scenario)
    assert finding["advice"] and finding["evidence"]["utilization"] is not None


def test_every_cause_in_the_taxonomy_has_a_scenario():
    # Phases of a job's life are named from its Python stacks, which simulated processes do not have;
    # who holds a GPU is the scheduler's to say, not a simulated GPU's (tests/test_allocation.py).
    assert set(CAUSES) - set(PHASES) - set(allocation.CAUSES) <= set(SCENARIOS)


def test_healthy_bf16_training_at_the_default_power_limit_is_silent():
    assert status("healthy")["finding"] is None


def test_under_the_threshold_is_a_page_and_busy_but_inefficient_a_ticket():
    assert status("input_starved")["finding"]["severity"] == "page"
    assert status("no_tensor_cores")["finding"]["severity"] == "ticket"


def _ticks(scenario: str, seconds: int, start: float = 0.0):
    """Real ticks of a simulated GPU (through the NVML reader and derive), one a second."""
    from flopwatch.judge.derive import derive
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


def _window(ticks, window_seconds: float = float("inf")) -> TickWindow:
    window = TickWindow()
    for tick in ticks:
        window.append(tick, window_seconds)
    return window


def test_a_new_cause_must_lead_for_the_switch_time_before_it_replaces_the_old():
    th = Thresholds(switch_after_seconds=10.0, window_seconds=5.0)
    current = Finding("input_starved", "page", 0.8, {}, "advice")
    state = DiagnosisState(finding=current)
    ticks = _ticks("held_idle", 20)
    causes = []
    for i in range(5, 20):
        state = diagnose(_window(ticks[i - 5:i]), th, state)
        causes.append(state.finding.cause)
    assert causes[:10] == ["input_starved"] * 10
    assert causes[-1] == "held_idle"


def test_a_ticket_clears_once_no_cause_has_led_for_the_switch_time():
    th = Thresholds(switch_after_seconds=10.0, window_seconds=5.0)
    state = DiagnosisState(finding=Finding("memory_bound", "ticket", 0.8, {}, "advice"))
    ticks = _ticks("healthy", 20)
    causes = []
    for i in range(5, 20):
        state = diagnose(_window(ticks[i - 5:i]), th, state)
        causes.append(state.finding.cause if state.finding else None)
    assert causes[:10] == ["memory_bound"] * 10
    assert causes[-1] is None


def test_a_page_ends_as_soon_as_its_window_is_over_the_threshold():
    th = Thresholds(switch_after_seconds=10.0, window_seconds=5.0)
    state = DiagnosisState(finding=Finding("input_starved", "page", 0.8, {}, "advice"))
    state = diagnose(_window(_ticks("healthy", 5)), th, state)
    assert state.finding is None


def test_a_window_falling_under_the_threshold_is_named_at_once():
    th = Thresholds(switch_after_seconds=10.0, window_seconds=5.0)
    state = DiagnosisState(finding=Finding("memory_bound", "ticket", 0.8, {}, "advice"))
    state = diagnose(_window(_ticks("held_idle", 5)), th, state)
    assert state.finding.cause == "held_idle"


def test_a_held_finding_reports_the_utilization_of_the_window_it_is_shown_with():
    th = Thresholds(switch_after_seconds=10.0, window_seconds=5.0)
    state = DiagnosisState(finding=Finding("input_starved", "page", 0.8, {"utilization": 0.5}, "advice"))
    state = diagnose(_window(_ticks("held_idle", 5)), th, state)
    assert state.finding.cause == "input_starved"
    assert state.finding.evidence["utilization"] == round(state.window.utilization, 3) < 0.05


def test_too_short_a_window_gives_no_finding_yet():
    assert diagnose(_window(_ticks("held_idle", 2)), Thresholds(min_window_seconds=3.0)).finding is None


def test_a_neighbours_iowait_does_not_make_every_gpu_io_bound():
    result = CliRunner().invoke(main, ["status", "--simulate", "input_starved,io_bound,unknown", "--window", "5", "--json"])
    causes = [g["finding"]["cause"] for g in json.loads(result.output)["gpus"]]
    assert causes == ["input_starved", "io_bound", "unknown"]


# One GPU, one process, as read on an H200 for a 24-layer MLP trained at batch 256 under bf16 autocast
# (docs/accuracy.md): kernels run 43 % of the time and fill the SMs for 33 %; the process keeps a
# core busy, no thread of it saturated. The other readings are those of a quiet job.
SMALL_STEPS = Signals(
    seconds=10.0, utilization=0.333, nvml_utilization=0.433, sm_occupancy=0.1, tensor_active=0.02,
    fp32_active=0.05, fp64_active=0.0, dram_active=0.23, flops_utilization=0.02, pcie_bytes_per_second=0.11e9,
    nvlink_bytes_per_second=None, nvlink_busy_ratio=None, sm_clock_ratio=1.0, throttle={}, processes=1,
    process_shares={1: 0.33}, memory_held_bytes=2 * 2**30, cpu_ratio=0.955, busiest_thread_cpu_ratio=0.53,
    children=0, children_cpu_ratio=0.0, threads_in_disk_wait=0.0, io_read_bytes_per_second=0.0, iowait_ratio=0.0,
    driver_major=580, cuda_version=(13, 0), pcie_width=16, pcie_width_max=16, power_limit_ratio=1.0,
    source_quality="gpm",
)


def named(**changes) -> str:
    return classify(replace(SMALL_STEPS, **changes), Thresholds()).cause


def test_small_kernels_with_a_core_of_host_work_over_several_threads_are_launch_bound():
    assert named() == "launch_bound"


def test_the_same_host_work_beside_kernels_that_fill_the_sms_is_not_named_launch_bound():
    assert named(nvml_utilization=0.35) == "unknown"


def test_small_kernels_beside_a_quiet_host_are_not_named_launch_bound():
    # A lightly loaded model server: bursts of work, then waiting for requests.
    assert named(utilization=0.11, nvml_utilization=0.16, cpu_ratio=0.15, busiest_thread_cpu_ratio=0.15) != "launch_bound"


def test_kernels_running_nearly_all_the_time_are_not_input_starved_though_a_thread_spins():
    # The launching thread spins on CUDA's full queue: it reads saturated, yet it waits for the GPU.
    assert named(utilization=0.5, nvml_utilization=0.98, cpu_ratio=1.0, busiest_thread_cpu_ratio=0.99) == "launch_bound"


def test_a_saturated_thread_while_the_gpu_mostly_waits_is_input_starved():
    assert named(utilization=0.05, nvml_utilization=0.05, cpu_ratio=1.0, busiest_thread_cpu_ratio=0.99) == "input_starved"


def _mixed_run() -> list:
    """Ticks of several scenarios in turn, one a second: processes come and go (idle has none,
    contention two), PCIe and SM activity drop from busy to exactly 0, and some ticks do not know
    some values, a throttle reason or an extra process's share."""
    from flopwatch.judge.signals import Peers
    from flopwatch.model import GpuProcess

    scenarios = ["healthy", "contention", "idle", "thermal_throttled", "held_idle", "input_starved", "contention"]
    ticks = [t for i, name in enumerate(scenarios) for t in _ticks(name, 40, start=40.0 * i)]
    out = []
    for i, t in enumerate(ticks):
        sample, figures, peers = t.sample, t.figures, Peers()
        if i % 7 == 3:
            figures = replace(figures, dram_active=None, throttle_fractions={"sw_power_cap": 0.5})
        if i % 11 == 5:
            extra = GpuProcess(pid=7, used_memory_bytes=None, sm_ratio=None if i % 2 else 0.4, memory_ratio=None)
            sample = replace(sample, nvml_utilization=None, processes=(*sample.processes, extra))
        if i % 5 == 0:
            peers = Peers(gpus=3, below=i % 4)
        out.append(Tick(sample, figures, t.host, peers))
    return out


def _mean_from_scratch(ticks, get):
    known = [(v, max(t.sample.interval_seconds, 1e-6)) for t in ticks if (v := get(t)) is not None]
    return sum(v * w for v, w in known) / sum(w for _, w in known) if known else None


def _signals_from_scratch(ticks) -> dict:
    """The means signals() reports, each computed over the whole window anew."""
    pids = ticks[-1].pids

    def mean(get):
        return _mean_from_scratch(ticks, get)

    def share(t, pid):
        return next((p.sm_ratio for p in t.sample.processes if p.pid == pid), None)

    out = {
        "seconds": sum(max(t.sample.interval_seconds, 1e-6) for t in ticks),
        "utilization": mean(lambda t: t.figures.utilization),
        "nvml_utilization": mean(lambda t: t.sample.nvml_utilization),
        "dram_active": mean(lambda t: t.figures.dram_active),
        "pcie_bytes_per_second": mean(lambda t: t.sample.pcie_tx_bytes_per_second)
        + mean(lambda t: t.sample.pcie_rx_bytes_per_second),
        "peers_below_ratio": mean(lambda t: t.peers.below / t.peers.gpus if t.peers.gpus else None),
        "cpu_ratio": mean(lambda t: t.sums_for(pids).cpu_ratio) or 0.0,
        "busiest_thread_cpu_ratio": mean(lambda t: t.sums_for(pids).busiest_thread_cpu_ratio) or 0.0,
    }
    for reason in {r for t in ticks for r in t.figures.throttle_fractions}:
        out["throttle", reason] = mean(lambda t: t.figures.throttle_fractions.get(reason))
    for pid in pids:
        out["share", pid] = mean(lambda t: share(t, pid)) or 0.0
    return out


def _reported(s) -> dict:
    out = {name: getattr(s, name) for name in (
        "seconds", "utilization", "nvml_utilization", "dram_active", "pcie_bytes_per_second",
        "peers_below_ratio", "cpu_ratio", "busiest_thread_cpu_ratio")}
    out.update({("throttle", reason): v for reason, v in s.throttle.items()})
    out.update({("share", pid): v for pid, v in s.process_shares.items()})
    return out


def test_the_running_means_equal_means_computed_over_the_whole_window_anew():
    from flopwatch.judge.signals import signals

    window, kept = TickWindow(), []
    for i, tick in enumerate(_mixed_run()):
        if i in (100, 101, 230):  # a read error: the agent starts the window afresh
            window.clear()
            kept = []
        window.append(tick, 12.0)
        now = tick.sample.timestamp
        kept = [t for t in kept if now - t.sample.timestamp <= 12.0] + [tick]
        assert _reported(signals(window)) == approx_numbers(_signals_from_scratch(kept), rel=1e-9), i


def test_a_tick_made_of_the_last_ticks_process_readings_takes_its_sums():
    [first] = _ticks("input_starved", 1)
    later = first.sample.timestamp + 1.0  # the readers hand back the very same process readings
    tick = Tick(replace(first.sample, timestamp=later), first.figures, replace(first.host, timestamp=later), like=first)
    assert tick.process_sums is first.process_sums and tick.pids is first.pids


def test_a_tick_whose_host_readings_are_new_sums_them_again():
    [first] = _ticks("input_starved", 1)
    busier = {pid: replace(p, cpu_ratio=(p.cpu_ratio or 0.0) + 1.0) for pid, p in first.host.processes.items()}
    tick = Tick(first.sample, first.figures, replace(first.host, processes=busier), like=first)
    assert tick.process_sums.cpu_ratio == pytest.approx(first.process_sums.cpu_ratio + len(first.pids))


def finding(base: Signals = SMALL_STEPS, **changes) -> Finding:
    return classify(replace(base, **changes), Thresholds())


# Case 1 of the H200 readings: a training loop on a host whose cores other processes keep busy
# (load twice the cores). SM activity 0.001; its feeding thread wants a core, runs half of one and
# waits on the run queue for the rest.
CPU_CONTENDED = replace(
    SMALL_STEPS, utilization=0.001, nvml_utilization=0.001, tensor_active=0.0, dram_active=0.0, flops_utilization=0.0,
    pcie_bytes_per_second=2e6, process_shares={1: 0.0}, cpu_ratio=0.55, busiest_thread_cpu_ratio=0.5,
    thread_demand_ratio=0.98, thread_wait_ratio=0.48, cpu_pressure_ratio=0.97, load_per_core=2.0,
    host_cpu_busy_ratio=1.0, cpu_count=16,
)


def test_a_thread_that_wants_a_core_and_waits_for_one_is_input_starved_with_the_proof():
    found = finding(CPU_CONTENDED)
    assert (found.cause, found.severity) == ("input_starved", "page")
    assert (found.evidence["thread_run_cores"], found.evidence["thread_wait_cores"]) == (0.5, 0.48)
    assert (found.evidence["cpu_pressure"], found.evidence["load_per_core"]) == (0.97, 2.0)
    assert found.evidence["other_processes_cpu_cores"] == 15.45
    assert "other processes" in found.summary and "cores" in found.advice


def test_loader_workers_waiting_on_the_run_queue_are_input_starved_by_a_loaded_host():
    found = finding(CPU_CONTENDED, thread_demand_ratio=0.1, thread_wait_ratio=0.0, busiest_thread_cpu_ratio=0.1,
                    children=4, children_cpu_ratio=1.6, children_wait_ratio=1.8)
    assert found.cause == "input_starved" and found.evidence["loader_wait_cores"] == 1.8


def test_a_thread_that_gets_its_core_is_input_starved_by_its_own_work_not_the_host():
    found = finding(CPU_CONTENDED, busiest_thread_cpu_ratio=0.99, thread_demand_ratio=1.0, thread_wait_ratio=0.01)
    assert found.cause == "input_starved" and "thread_wait_cores" not in found.evidence


def test_a_thread_that_waits_for_a_cpu_but_wants_little_is_not_input_starved():
    assert finding(CPU_CONTENDED, thread_demand_ratio=0.5, thread_wait_ratio=0.3).cause == "unknown"


def test_a_busy_job_on_a_loaded_host_gets_no_finding():
    assert finding(CPU_CONTENDED, utilization=0.92, nvml_utilization=1.0, tensor_active=0.7) is None


def test_a_launch_thread_waiting_for_a_cpu_beside_kernels_that_fill_the_sms_stays_launch_bound():
    assert finding(CPU_CONTENDED, utilization=0.5, nvml_utilization=0.98) .cause == "launch_bound"


# Case 2: a loop reading each batch with O_DIRECT, 1.5 GB/s from the disk and over PCIe, 0.08 core,
# 820 MB of GPU memory held; host iowait over 16 cores stays under 0.2. A kernel without PSI or
# delay accounting: the bytes are all there is.
DISK_DIRECT_READ = replace(
    SMALL_STEPS, utilization=0.01, nvml_utilization=0.01, tensor_active=0.0, dram_active=0.0, flops_utilization=0.0,
    pcie_bytes_per_second=1.5e9, process_shares={1: 0.01}, memory_held_bytes=820 * 10**6, cpu_ratio=0.08,
    busiest_thread_cpu_ratio=0.07, thread_demand_ratio=0.08, thread_wait_ratio=0.0,
    io_read_bytes_per_second=1.5e9, iowait_ratio=0.06,
)


def test_a_process_reading_gigabytes_a_second_with_little_cpu_is_io_bound_not_idle():
    found = finding(DISK_DIRECT_READ)
    assert (found.cause, found.evidence["storage_bytes_per_second"]) == ("io_bound", 1.5e9)


def test_writing_to_storage_counts_as_much_as_reading():
    assert finding(DISK_DIRECT_READ, io_read_bytes_per_second=0.0, io_write_bytes_per_second=1.5e9).cause == "io_bound"


def test_loader_workers_reading_from_storage_make_their_job_io_bound():
    assert finding(DISK_DIRECT_READ, io_read_bytes_per_second=0.0, children=4, children_cpu_ratio=0.2,
                   children_io_bytes_per_second=1.5e9).cause == "io_bound"


def test_io_pressure_while_the_process_reads_is_io_bound_though_iowait_is_spread_over_many_cores():
    found = finding(DISK_DIRECT_READ, io_read_bytes_per_second=40e6, pcie_bytes_per_second=40e6, io_pressure_ratio=0.9)
    assert found.cause == "io_bound" and found.evidence["io_pressure"] == 0.9


def test_threads_delayed_on_block_io_by_delay_accounting_are_io_bound():
    found = finding(DISK_DIRECT_READ, io_read_bytes_per_second=5e6, pcie_bytes_per_second=5e6, blkio_delay_ratio=0.9)
    assert found.cause == "io_bound" and found.evidence["blkio_delay_threads"] == 0.9


def test_reading_page_cached_data_on_a_saturated_thread_is_input_starved_not_io_bound():
    # Page-cache hits are not storage bytes; what the disk does give, a CPU-bound thread decodes.
    assert finding(DISK_DIRECT_READ, io_read_bytes_per_second=300e6, pcie_bytes_per_second=0.2e9, cpu_ratio=1.0,
                   busiest_thread_cpu_ratio=0.99, thread_demand_ratio=1.0).cause == "input_starved"


def test_pcie_traffic_many_times_the_disk_s_is_host_transfer_bound():
    assert finding(DISK_DIRECT_READ, pcie_bytes_per_second=9.5e9, io_read_bytes_per_second=150e6, cpu_ratio=1.0,
                   busiest_thread_cpu_ratio=0.6, thread_demand_ratio=0.6).cause == "host_transfer_bound"


def test_a_notebook_holding_memory_with_no_io_stays_held_idle():
    assert finding(DISK_DIRECT_READ, io_read_bytes_per_second=0.0, pcie_bytes_per_second=0.0, utilization=0.0,
                   nvml_utilization=0.0, cpu_ratio=0.01).cause == "held_idle"


# The probe's light-traffic server on an H200 (docs/runs/h200-probe-round6-2026-12-01.log): a burst of
# big bf16 GEMMs per request, then waiting; the kernels fill the SMs while they run.
LIGHT_SERVER = replace(SMALL_STEPS, utilization=0.113, nvml_utilization=0.155, tensor_active=0.11, dram_active=0.03,
                       pcie_bytes_per_second=2.9e6, cpu_ratio=0.15, busiest_thread_cpu_ratio=0.15,
                       thread_demand_ratio=0.15, thread_wait_ratio=0.0)


def test_a_server_with_little_traffic_is_a_low_demand_ticket():
    found = finding(LIGHT_SERVER)
    assert (found.cause, found.severity) == ("low_demand", "ticket")


def test_small_kernels_that_cannot_fill_the_sms_are_not_low_demand():
    assert finding(LIGHT_SERVER, nvml_utilization=0.3).cause == "launch_bound"


def test_a_quiet_process_waiting_for_a_cpu_is_not_low_demand():
    assert finding(LIGHT_SERVER, thread_wait_ratio=0.3).cause != "low_demand"


def test_a_quiet_process_streaming_from_storage_is_not_low_demand():
    assert finding(LIGHT_SERVER, io_read_bytes_per_second=50e6, iowait_ratio=0.3).cause == "io_bound"


# Two small-batch MLP trainers time-slicing one GPU under the threshold, each thread at a core: their
# kernels keep the SMs busy enough that each waits for the other's turns.
TWO_TRAINERS = replace(SMALL_STEPS, utilization=0.35, nvml_utilization=1.0, sm_occupancy=0.15, processes=2,
                       process_shares={1: 0.0, 2: 0.0}, cpu_ratio=2.0, busiest_thread_cpu_ratio=1.0,
                       thread_demand_ratio=1.0, thread_wait_ratio=0.0)
# Two batch-1 decode loops on one H100, each alone at SM 0.03 and kernel time 0.22, its thread at a
# core: together SM 0.07, NVML's kernel time 0.99, each at 0.93-0.97 of its pace alone.
TWO_DECODE_LOOPS = replace(TWO_TRAINERS, utilization=0.07, nvml_utilization=0.99, sm_occupancy=0.01)


def test_two_processes_with_real_sm_shares_are_contention_before_launch_bound():
    assert finding(TWO_TRAINERS, process_shares={1: 0.15, 2: 0.14}).cause == "contention"


def test_two_processes_launching_work_whose_shares_nvml_did_not_report_are_contention():
    found = finding(TWO_TRAINERS, unknown_shares=frozenset({1, 2}), process_cpu={1: 1.0, 2: 1.0})
    assert found.cause == "contention" and found.evidence["launching_without_share"] == "1 ? 1.00 cores, 2 ? 1.00 cores"


def test_two_processes_each_launching_at_a_core_with_real_shares_are_contention():
    found = finding(TWO_TRAINERS, process_shares={1: 0.15, 2: 0.14}, process_cpu={1: 1.0, 2: 0.98})
    assert found.cause == "contention"


def test_launch_bound_loops_sharing_a_gpu_whose_sms_stay_idle_are_launch_bound_with_the_sharing_contributing():
    found = finding(TWO_DECODE_LOOPS, process_shares={1: 0.5, 2: 0.5}, process_cpu={1: 1.0, 2: 1.0})
    assert found.cause == "launch_bound"
    assert "contention" in [c.cause for c in found.contributing]


def test_two_quiet_servers_sharing_a_gpu_are_low_demand_with_the_sharing_contributing():
    # Each wakes for a burst now and then: their turns seldom meet, and consolidating them is the
    # fix that giving each its own GPU would undo.
    found = finding(LIGHT_SERVER, processes=2, process_shares={1: 0.08, 2: 0.07}, process_cpu={1: 0.08, 2: 0.07})
    assert found.cause == "low_demand"
    assert [c.cause for c in found.contributing] == ["contention"]

def test_one_process_launching_beside_a_quiet_one_stays_launch_bound():
    assert finding(TWO_TRAINERS, unknown_shares=frozenset({1, 2}), process_cpu={1: 1.0, 2: 0.01}).cause == "launch_bound"


def test_a_loader_worker_holding_a_context_is_not_a_second_job_on_the_gpu():
    from flopwatch.judge.signals import signals
    from flopwatch.model import GpuProcess

    ticks = []
    for t in _ticks("launch_bound", 5):
        main_pid = t.sample.processes[0].pid
        worker = GpuProcess(pid=main_pid + 1, used_memory_bytes=500 * 2**20, sm_ratio=None, memory_ratio=None)
        gpu = (replace(t.sample.processes[0], sm_ratio=None), worker)
        host = {main_pid: t.host.processes[main_pid],
                main_pid + 1: replace(t.host.processes[main_pid], pid=main_pid + 1, ppid=main_pid)}
        ticks.append(Tick(replace(t.sample, processes=gpu), t.figures, replace(t.host, processes=host)))
    s = signals(_window(ticks))
    assert s.unknown_shares == {main_pid, main_pid + 1} and set(s.process_cpu) == {main_pid}
    assert classify(s, Thresholds()).cause == "launch_bound"


def test_a_main_thread_seen_in_disk_wait_on_most_ticks_is_io_bound():
    found = finding(DISK_DIRECT_READ, io_read_bytes_per_second=5e6, pcie_bytes_per_second=5e6,
                    main_thread_disk_wait_ratio=0.8)
    assert found.cause == "io_bound" and found.evidence["main_thread_disk_wait"] == 0.8


# -- contributing causes ---------------------------------------------------------------------------

# Two batch-1 decode servers on one GPU, over the threshold (the H100 corpus's busy_decode_server x2:
# util 0.71): DRAM-bound, and two processes each with a real share of the GPU.
TWO_DECODERS = replace(
    SMALL_STEPS, utilization=0.71, nvml_utilization=0.9, tensor_active=0.05, dram_active=0.75,
    flops_utilization=0.04, processes=2, process_shares={1: 0.45, 2: 0.44}, cpu_ratio=1.9,
    busiest_thread_cpu_ratio=0.95)


def test_memory_bound_decoders_sharing_a_gpu_name_the_sharing_as_contributing():
    found = finding(TWO_DECODERS)
    assert (found.cause, found.severity) == ("memory_bound", "ticket")
    assert [c.cause for c in found.contributing] == ["contention"]
    assert "sm_shares" in found.contributing[0].evidence


def test_a_gpu_shared_under_the_threshold_names_what_each_job_suffers_from_beside_the_sharing():
    found = finding(utilization=0.2, nvml_utilization=0.9, dram_active=0.1, processes=2,
                    process_shares={1: 0.45, 2: 0.44})
    assert found.cause == "contention"
    assert [c.cause for c in found.contributing] == ["launch_bound"]


# A batch-1 eager decode at SM 0.5 (the H100 corpus's llama_decode_half_busy): the GPU waits on
# Python's launches half the time, and its GEMVs read DRAM the whole time they run.
HALF_BUSY_DECODE = replace(SMALL_STEPS, utilization=0.51, nvml_utilization=0.86, sm_occupancy=0.07,
                           tensor_active=0.015, dram_active=0.54, flops_utilization=0.016,
                           cpu_ratio=1.0, busiest_thread_cpu_ratio=0.99)


def test_a_decode_whose_kernels_read_dram_all_they_run_has_memory_bound_contributing():
    # (The counters read input_starved: a thread at a core while the GPU waits; the stacks say
    # launching, judge/stackclass.py. The contribution is the kernels' either way.)
    found = finding(HALF_BUSY_DECODE)
    assert [c.cause for c in found.contributing] == ["memory_bound"]
    assert found.contributing[0].evidence["dram_active_over_sm_active"] == 1.06


def test_a_decode_the_gpu_barely_runs_is_memory_bound_beside_its_launches_too():
    # The 8B decode with cuDNN attention: SM 0.07, DRAM 0.08.
    found = finding(HALF_BUSY_DECODE, utilization=0.07, nvml_utilization=0.9, dram_active=0.08)
    assert [c.cause for c in found.contributing] == ["memory_bound"]


def test_kernels_that_read_dram_a_fraction_of_the_time_they_run_are_not_memory_bound():
    # A starved ResNet's convolutions: DRAM 0.65 of SM activity.
    assert finding(HALF_BUSY_DECODE, dram_active=0.33).contributing == ()


def test_a_gpu_that_runs_almost_nothing_is_not_called_memory_bound_however_its_dram_reads():
    # At SM 0.01 a compile's odd kernel reads DRAM 0.9 of it: too little runs to name a limit.
    assert finding(HALF_BUSY_DECODE, utilization=0.01, nvml_utilization=0.9, dram_active=0.01).contributing == ()


def test_one_job_alone_has_no_contributing_cause():
    assert finding().contributing == ()


def test_at_most_two_causes_contribute():
    found = finding(TWO_DECODERS, driver_major=470, pcie_width=8, power_limit_ratio=0.7, sm_clock_ratio=0.6,
                    throttle={"sw_power_cap": 0.9})
    assert len(found.contributing) == 2
