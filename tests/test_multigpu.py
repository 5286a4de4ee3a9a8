"""Several GPUs of one node: NVLink per link, one job across GPUs, and communication_bound told
apart from input_starved (the job's GPUs waiting on collectives together vs CPU-bound loaders)."""

import dataclasses
import json

import pynvml
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.commands.cli import main
from flopwatch.config import Config
from flopwatch.judge.diagnose import classify
from flopwatch.judge.signals import Peers, Signals, job_peers, loader_saturated_pids
from flopwatch.model import GpuInfo, GpuSample, GpuState, HostProcess, HostSample, ProcessView
from flopwatch.sources.nvml import NvmlSource
from flopwatch.sources.simulated import SimulatedNvml
from flopwatch.thresholds import Thresholds


def simulated_agent(scenario: str, gpus: int, seconds: int = 15):
    """An agent over ``gpus`` simulated GPUs of one scenario, ticked once a virtual second."""
    config = Config()
    config.agent.simulate = [scenario]
    config.agent.simulate_gpus = gpus
    clock, wall = VirtualClock(0.0), VirtualClock(1.8e9)
    built = build_agent(config, clock=clock, wall_clock=wall)
    for _ in range(seconds):
        clock.now += 1.0
        wall.now += 1.0
        built.agent.tick()
    return built


def read_twice(lib: SimulatedNvml, now: list[float]) -> GpuSample:
    source = NvmlSource(lib, clock=lambda: now[0], wall_clock=lambda: now[0])
    now[0] += 1.0
    source.read()
    now[0] += 2.0
    return source.read()[0]


# -- NVLink per link ---------------------------------------------------------------------------

def test_an_sxm_card_reports_its_18_links_and_they_add_up_to_the_total():
    now = [0.0]
    sample = read_twice(SimulatedNvml(["communication_bound"], clock=lambda: now[0]), now)
    assert [link.link for link in sample.nvlink_links] == list(range(18))
    assert sum(link.tx_bytes_per_second for link in sample.nvlink_links) == pytest.approx(sample.nvlink_tx_bytes_per_second)
    assert sum(link.rx_bytes_per_second for link in sample.nvlink_links) == pytest.approx(sample.nvlink_rx_bytes_per_second)


def test_link_bytes_count_every_second_between_ticks():
    now = [0.0]
    sample = read_twice(SimulatedNvml(["communication_bound"], clock=lambda: now[0]), now)
    link = sample.nvlink_links[0]
    # The first tick covered 1 s and the second 2 s, each at its own rate.
    assert link.tx_bytes > 2.0 * link.tx_bytes_per_second
    assert link.tx_bytes == pytest.approx(3.0 * 225e9 / 18, rel=0.1)


def test_a_card_without_nvlink_has_no_links():
    now = [0.0]
    lib = SimulatedNvml(["healthy"], clock=lambda: now[0])
    lib.fail(0, "nvmlDeviceGetNvLinkState", code=pynvml.NVML_ERROR_NOT_SUPPORTED)
    sample = read_twice(lib, now)
    assert sample.nvlink_links == ()
    assert sample.sm_active is not None


def test_metrics_count_bytes_per_gpu_and_link():
    text = generate_latest(simulated_agent("communication_bound", 2, seconds=3).exporter.registry()).decode()
    lines = [line for line in text.splitlines() if line.startswith("flopwatch_nvlink_tx_bytes_total{")]
    assert len(lines) == 2 * 18
    assert any('gpu="1"' in line and 'link="17"' in line for line in lines)
    assert all(float(line.split()[-1]) > 0 for line in lines)


# -- one job across GPUs -----------------------------------------------------------------------

def test_a_job_with_a_rank_on_each_gpu_shows_the_same_job_on_every_gpu():
    state = simulated_agent("communication_bound", 4).agent.state
    processes = [g.processes for g in state.gpus]
    assert all(len(p) == 1 for p in processes)
    assert len({p[0].pid for p in processes}) == 4
    assert {p[0].job for p in processes} == {"alice:train.py"}


def test_a_data_parallel_job_waiting_on_all_reduce_is_communication_bound_on_every_gpu():
    state = simulated_agent("communication_bound", 8).agent.state
    findings = [g.finding for g in state.gpus]
    assert [f.cause for f in findings] == ["communication_bound"] * 8
    assert all(f.evidence["job_gpus"] == 8 and f.evidence["peers_below_ratio"] == 1.0 for f in findings)


def test_nvlink_busy_share_is_the_traffic_over_the_cards_datasheet_nvlink_bandwidth():
    # 225 GB/s each way on an H100 SXM (900 GB/s over all links, both ways).
    finding = simulated_agent("communication_bound", gpus=2).agent.state.gpus[0].finding
    assert finding.evidence["nvlink_busy_ratio"] == pytest.approx(450 / 900, abs=0.02)


def test_a_data_parallel_job_starved_by_its_loaders_is_input_starved_on_every_gpu():
    state = simulated_agent("input_starved", 4).agent.state
    assert [g.finding.cause for g in state.gpus] == ["input_starved"] * 4


def test_a_healthy_data_parallel_job_is_silent_on_every_gpu():
    state = simulated_agent("healthy", 8).agent.state
    assert [g.finding for g in state.gpus] == [None] * 8
    assert all(g.sample.nvlink_tx_bytes_per_second > 0 for g in state.gpus)


def test_status_simulates_a_job_across_eight_gpus():
    result = CliRunner().invoke(main, ["status", "--simulate", "communication_bound", "--simulate-gpus", "8",
                                       "--window", "10", "--json"])
    assert result.exit_code == 0, result.output
    gpus = json.loads(result.output)["gpus"]
    assert [g["finding"]["cause"] for g in gpus] == ["communication_bound"] * 8
    assert {g["processes"][0]["job"] for g in gpus} == {"alice:train.py"}


# -- peers: the pure cross-GPU signal ----------------------------------------------------------

def gpu_state(index: int, jobs: list[str], below: bool) -> GpuState:
    info = GpuInfo(index=index, uuid=f"GPU-{index}", name="H100", pci_bus_id="", memory_total_bytes=0,
                   driver_version="580", cuda_driver_version="13.0", max_sm_clock_mhz=None, max_memory_clock_mhz=None,
                   memory_bus_width_bits=None, power_limit_watts=None, default_power_limit_watts=None,
                   gpm_supported=True)
    views = tuple(ProcessView(pid=100 * index + k, job=job, user="alice", cmdline="", sm_ratio=0.1, memory_bytes=1,
                              cpu_ratio=1.0) for k, job in enumerate(jobs))
    return GpuState(sample=GpuSample(info=info, timestamp=0.0, interval_seconds=1.0, source_quality="gpm"),
                    figures=None, finding=None, below_threshold=below, wasted_seconds={}, processes=views)


def host_with(*processes: HostProcess) -> HostSample:
    return HostSample(timestamp=0.0, cpu_count=32, cpu_busy_ratio=0.2, iowait_ratio=0.0,
                      processes={p.pid: p for p in processes})


def test_peers_are_the_other_gpus_of_the_same_job_and_how_many_were_below():
    peers = job_peers([gpu_state(0, ["a"], True), gpu_state(1, ["a"], True), gpu_state(2, ["a"], False),
                       gpu_state(3, ["b"], True), gpu_state(4, [], True)], frozenset())
    assert peers[0] == Peers(gpus=2, below=1)
    assert peers[2] == Peers(gpus=2, below=2)
    assert peers[3] == Peers() and peers[4] == Peers()


def test_a_peer_whose_loader_workers_each_use_a_full_core_counts_as_starved():
    # GPU 0's rank (pid 0) has two workers at 1.9 cores together; GPU 1's (pid 100) at 1.0.
    host = host_with(HostProcess(pid=0, name="python", children=2, children_cpu_ratio=1.9),
                     HostProcess(pid=100, name="python", children=2, children_cpu_ratio=1.0))
    peers = job_peers([gpu_state(0, ["a"], True), gpu_state(1, ["a"], True)], loader_saturated_pids(host, 0.8))
    assert (peers[1].starved, peers[0].starved) == (1, 0)


# -- the rule, with plain values ---------------------------------------------------------------

# A rank under the threshold whose NCCL kernels keep NVML's kernel time high, CPU quiet, one other
# GPU of the job, itself under the threshold.
RANK = Signals(
    seconds=30.0, utilization=0.2, nvml_utilization=0.8, sm_occupancy=0.1, tensor_active=0.1, fp32_active=0.02,
    fp64_active=0.0, dram_active=0.1, flops_utilization=0.05, pcie_bytes_per_second=0.2e9,
    nvlink_bytes_per_second=0.1e9, nvlink_busy_ratio=0.0001, sm_clock_ratio=1.0, throttle={}, processes=1, process_shares={1: 0.2},
    memory_held_bytes=40 * 2**30, cpu_ratio=1.0, busiest_thread_cpu_ratio=0.5, children=4, children_cpu_ratio=0.4,
    threads_in_disk_wait=0.0, io_read_bytes_per_second=0.0, iowait_ratio=0.0, driver_major=580, cuda_version=(13, 0), pcie_width=None,
    pcie_width_max=16, power_limit_ratio=1.0, source_quality="gpm", job_gpus=1,
    peers_below_ratio=1.0,
)


def cause(**changes) -> tuple[str, str | None]:
    finding = classify(dataclasses.replace(RANK, **changes), Thresholds())
    return finding.cause, finding.evidence.get("via")


def test_nvlink_busy_a_large_share_of_the_time_while_the_sms_wait_is_communication_bound():
    assert cause(nvlink_bytes_per_second=400e9, nvlink_busy_ratio=0.44) == ("communication_bound", "nvlink")


def test_on_a_card_of_unknown_nvlink_bandwidth_nvlink_traffic_while_the_sms_wait_is_communication_bound():
    assert cause(nvlink_bytes_per_second=80e9, nvlink_busy_ratio=None) == ("communication_bound", "nvlink")


def test_ranks_starved_by_their_loaders_are_input_starved_though_their_all_reduce_crosses_nvlink():
    # Each step still all-reduces its gradients: 40 GB/s, under 5 % of the card's NVLink bandwidth.
    assert cause(nvlink_bytes_per_second=40e9, nvlink_busy_ratio=0.044, children_cpu_ratio=3.9)[0] == "input_starved"


def test_pcie_traffic_while_every_gpu_of_the_job_waits_in_nccl_is_communication_bound():
    assert cause(nvlink_bytes_per_second=None, pcie_bytes_per_second=20e9) == ("communication_bound", "pcie")


def test_the_same_pcie_traffic_on_a_single_gpu_job_is_host_transfer_bound():
    assert cause(nvlink_bytes_per_second=None, pcie_bytes_per_second=20e9, job_gpus=0,
                 peers_below_ratio=None)[0] == "host_transfer_bound"


def test_pcie_traffic_while_the_other_gpus_are_busy_is_host_transfer_bound():
    assert cause(pcie_bytes_per_second=20e9, peers_below_ratio=0.0)[0] == "host_transfer_bound"


def test_every_gpu_of_the_job_waiting_in_nccl_with_little_traffic_is_communication_bound():
    assert cause() == ("communication_bound", "waiting")


def test_saturated_loaders_with_little_traffic_are_input_starved_though_the_ranks_wait_together():
    assert cause(children_cpu_ratio=3.9)[0] == "input_starved"


# A rank over the threshold only because NCCL's blocks count as active: the small-batch DDP reading
# on two H100s joined by 18 NVLink links (step 15.3 ms, ~6 ms of it all-reduce).
NVLINK_RANK = dict(utilization=0.67, nvml_utilization=1.0, dram_active=0.67, flops_utilization=0.015,
                   tensor_active=0.013, nvlink_bytes_per_second=287e9, nvlink_busy_ratio=0.30)


def test_a_busy_rank_moving_gradients_a_large_share_of_the_time_gets_a_communication_ticket():
    finding = classify(dataclasses.replace(RANK, **NVLINK_RANK), Thresholds())
    assert (finding.cause, finding.severity, finding.evidence["via"]) == ("communication_bound", "ticket", "nvlink")


def test_the_same_traffic_share_beside_busy_sms_is_not_communication_bound():
    finding = classify(dataclasses.replace(RANK, **{**NVLINK_RANK, "utilization": 0.95, "dram_active": 0.3}),
                       Thresholds())
    assert finding is None


def test_a_busy_rank_whose_all_reduce_hides_behind_compute_is_healthy():
    # The large-batch reading: NVLink at 1.4 % of its capacity.
    finding = classify(dataclasses.replace(RANK, **{**NVLINK_RANK, "utilization": 0.99, "dram_active": 0.3,
                                                    "nvlink_bytes_per_second": 13.4e9, "nvlink_busy_ratio": 0.014}),
                       Thresholds())
    assert finding is None


def test_a_rank_waiting_in_nccl_on_a_peer_starved_by_its_loaders_is_input_starved():
    # The faster rank of a starved DDP job: its own workers idle on a full prefetch queue, its main
    # thread spins in a CUDA sync, NCCL's kernels wait for the slow rank.
    assert cause(busiest_thread_cpu_ratio=0.82, children_cpu_ratio=1.4, peer_starved_ratio=1.0)[0] == "input_starved"


def test_a_rank_waiting_in_nccl_with_no_starved_peer_stays_communication_bound():
    assert cause(peer_starved_ratio=0.0) == ("communication_bound", "waiting")


def test_without_other_gpus_kernel_time_far_over_sm_activity_stays_launch_bound():
    assert cause(job_gpus=0, peers_below_ratio=None)[0] == "launch_bound"
