"""The NVML reader, driven by the simulated library through the same calls as a real GPU."""

import threading
import time

import pynvml
import pytest

from flopwatch.sources.nvml import NvmlSource, gpm_results
from flopwatch.sources.simulated import SimulatedHost, SimulatedNvml


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def source(*scenarios, faults=(), counter_interval_seconds=5.0):
    clock = Clock()
    lib = SimulatedNvml(list(scenarios), clock=clock, wall_clock=clock)
    for index, function, code in faults:
        lib.fail(index, function, code)
    return NvmlSource(lib, clock=clock, wall_clock=clock, counter_interval_seconds=counter_interval_seconds), lib, clock


def read(src, clock, seconds=1.0):
    clock.now += seconds
    return src.read()


def test_gpm_readings_are_ratios_and_bytes_per_second():
    src, _, clock = source("host_transfer_bound")
    gpu = read(src, clock)[0]
    assert gpu.source_quality == "gpm"
    assert 0.0 <= gpu.sm_active <= 1.0
    assert gpu.pcie_rx_bytes_per_second == pytest.approx(9.5e9, rel=0.05)


class NanOccupancy(SimulatedNvml):
    """A driver that answers NaN for SM occupancy over some sample pairs."""

    def nvmlGpmMetricsGet(self, request):
        super().nvmlGpmMetricsGet(request)
        for i in range(request.numMetrics):
            if request.metrics[i].metricId == pynvml.NVML_GPM_METRIC_SM_OCCUPANCY:
                request.metrics[i].value = float("nan")
        return request


def test_a_gpm_metric_answered_as_nan_is_one_the_gpu_could_not_say():
    clock = Clock()
    src = NvmlSource(NanOccupancy(["healthy"], clock=clock, wall_clock=clock), clock=clock, wall_clock=clock)
    gpu = read(src, clock)[0]
    assert gpu.sm_occupancy is None
    assert gpu.sm_active == pytest.approx(0.96, abs=0.1) and gpu.source_quality == "gpm"


def test_without_gpm_utilization_falls_back_to_nvml_and_is_marked_coarse():
    src, _, clock = source("healthy", faults=[(0, "nvmlGpmQueryDeviceSupport", pynvml.NVML_ERROR_NOT_SUPPORTED)])
    gpu = read(src, clock)[0]
    assert gpu.source_quality == "coarse"
    assert gpu.sm_active == gpu.nvml_utilization
    assert gpu.tensor_active is None and "gpm" in gpu.unsupported


def test_an_unsupported_metric_is_none_and_named():
    src, _, clock = source("healthy", faults=[(0, "nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_NOT_SUPPORTED)])
    gpu = read(src, clock)[0]
    assert gpu.power_watts is None and "power_watts" in gpu.unsupported


def test_a_lost_gpu_is_marked_and_the_others_read_on():
    src, lib, clock = source("healthy", "healthy")
    read(src, clock)
    lib.fail(1, "*", pynvml.NVML_ERROR_GPU_IS_LOST)
    samples = read(src, clock)
    assert samples[0].error is None and samples[0].sm_active is not None
    assert samples[1].error is not None and samples[1].sm_active is None


def test_a_recovered_gpu_comes_back_without_a_restart():
    src, lib, clock = source("healthy", "healthy")
    lib.fail(1, "*", pynvml.NVML_ERROR_GPU_IS_LOST)
    read(src, clock)
    lib.heal(1)
    read(src, clock)
    assert read(src, clock)[1].error is None


def test_energy_between_counter_reads_follows_power_and_lands_on_the_counter():
    src, lib, clock = source("healthy", counter_interval_seconds=5.0)
    start = lib.nvmlDeviceGetTotalEnergyConsumption(lib.nvmlDeviceGetHandleByIndex(0)) / 1000.0
    totals = [read(src, clock).pop().energy_joules for _ in range(10)]
    counter = lib.nvmlDeviceGetTotalEnergyConsumption(lib.nvmlDeviceGetHandleByIndex(0)) / 1000.0 - start
    assert totals == sorted(totals)  # a counter never goes backwards
    assert totals[-1] == pytest.approx(counter, rel=0.01)


def test_throttle_time_comes_from_the_reason_counters():
    src, _, clock = source("power_capped")
    first = read(src, clock)[0].throttle_seconds["sw_power_cap"]
    second = read(src, clock, seconds=2.0)[0].throttle_seconds["sw_power_cap"]
    assert second - first == pytest.approx(2.0)


def test_throttle_totals_are_handed_back_unchanged_while_no_reason_is_active():
    src, lib, clock = source("idle", counter_interval_seconds=10.0)
    first = read(src, clock)[0].throttle_seconds
    assert read(src, clock)[0].throttle_seconds is first
    lib.set_scenario(0, "power_capped")
    moved = read(src, clock)[0].throttle_seconds
    assert moved is not first and moved["sw_power_cap"] == pytest.approx(first["sw_power_cap"] + 1.0)


def test_per_process_memory_and_sm_share_are_read():
    src, _, clock = source("contention")
    processes = read(src, clock)[0].processes
    assert len(processes) == 2
    assert all(p.used_memory_bytes == 30 * 2**30 and p.sm_ratio > 0 for p in processes)


def test_processes_read_anew_are_handed_back_unchanged_on_the_ticks_after():
    src, _, clock = source("contention", counter_interval_seconds=5.0)
    read(src, clock, seconds=5.0)  # the counters, process shares among them, are read on this tick
    fresh = read(src, clock, seconds=5.0)[0].processes
    assert read(src, clock)[0].processes is fresh
    assert read(src, clock)[0].processes is fresh


def test_a_link_trained_narrower_than_its_maximum_is_read():
    src, _, clock = source("system")
    gpu = read(src, clock)[0]
    assert (gpu.pcie_link_width, gpu.info.pcie_link_width_max) == (4, 16)


def test_gpm_results_are_read_from_pynvml_s_own_structure():
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.metrics[0].nvmlReturn, request.metrics[0].value = 0, 87.5
    request.metrics[1].nvmlReturn, request.metrics[1].value = pynvml.NVML_ERROR_NOT_SUPPORTED, 0.0
    request.metrics[2].value = 1234.0
    assert gpm_results(request, 3) == [(0, 87.5), (pynvml.NVML_ERROR_NOT_SUPPORTED, 0.0), (0, 1234.0)]


def test_a_process_that_appears_between_counter_reads_has_an_sm_share_at_once():
    src, lib, clock = source("healthy", counter_interval_seconds=10.0)
    read(src, clock)
    lib.set_scenario(0, "contention")
    processes = read(src, clock)[0].processes
    assert len(processes) >= 2 and all(p.sm_ratio is not None for p in processes)


def test_a_gpu_whose_read_has_not_returned_is_marked_timed_out_and_not_called_again():
    src, lib, clock = source("healthy", "healthy")
    read(src, clock)
    lib.fail(1, "nvmlDeviceGetPowerUsage", code=None, block_seconds=2.0)
    blocked = threading.Thread(target=src.read)  # the tick the scheduler started first
    blocked.start()
    while not lib.blocked_calls:
        time.sleep(0.01)
    samples = read(src, clock)  # the tick started beside it
    assert samples[0].error is None
    assert samples[1].error.startswith("timeout")
    assert src.blocked
    blocked.join()
    lib.heal(1)
    assert lib.blocked_calls[(1, "nvmlDeviceGetPowerUsage")] == 1
    assert read(src, clock)[1].error is None and not src.blocked


def test_the_gpu_and_host_readers_read_their_counters_on_the_same_ticks():
    src, lib, clock = source("contention", counter_interval_seconds=10.0)
    host = SimulatedHost(lib, counter_interval_seconds=10.0)
    clock.now = 3.5  # started between two periods
    gpu_changed, host_changed = [], []
    last_gpu = last_host = None
    for _ in range(30):
        gpu = read(src, clock)[0].processes
        sample = host.read({p.pid for p in gpu}, clock.now)
        gpu_changed.append(gpu is not last_gpu)
        host_changed.append(sample is not last_host)
        last_gpu, last_host = gpu, sample
    # After the host's first two reads (a new process's rates need two), both change together.
    assert gpu_changed[2:] == host_changed[2:] and sum(gpu_changed[2:]) == 3


def test_processes_have_no_sm_share_where_nvml_cannot_report_them():
    # A call that fails says nothing: two jobs time-slicing must not read as two that ran nothing.
    src, lib, clock = source("contention")
    lib.fail(0, "nvmlDeviceGetProcessUtilization", code=pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert [p.sm_ratio for p in read(src, clock)[0].processes] == [None, None]


def test_processes_with_no_sample_since_the_last_read_ran_nothing():
    src, lib, clock = source("contention")
    lib.fail(0, "nvmlDeviceGetProcessUtilization", code=pynvml.NVML_ERROR_NOT_FOUND)
    assert [p.sm_ratio for p in read(src, clock)[0].processes] == [0.0, 0.0]
