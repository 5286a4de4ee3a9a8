"""derive.py: figures from one sample, with plain values."""

import pytest

from flopwatch.judge.calibration import Calibrations, Factors
from flopwatch.judge.derive import derive
from flopwatch.judge.peaks import H100_SXM_TENSOR_EFFICIENCY
from flopwatch.model import GpuInfo, GpuSample

H100 = GpuInfo(index=0, uuid="GPU-0", name="NVIDIA H100 80GB HBM3", pci_bus_id="0", memory_total_bytes=80 * 2**30,
               driver_version="580.1", cuda_driver_version="13.0", max_sm_clock_mhz=1980, max_memory_clock_mhz=2619,
               memory_bus_width_bits=5120, power_limit_watts=700, default_power_limit_watts=700, gpm_supported=True)

H200 = GpuInfo(**{**{f: getattr(H100, f) for f in H100.__slots__}, "name": "NVIDIA H200"})

H100_FACTOR = H100_SXM_TENSOR_EFFICIENCY[0]  # the factor shipped for the H100 SXM


def sample(info=H100, **readings):
    base = dict(info=info, timestamp=100.0, interval_seconds=1.0, source_quality="gpm", sm_active=0.9,
                tensor_active=0.5, hmma_active=0.5, fp32_active=0.0, fp64_active=0.0, fp16_active=0.0,
                dram_active=0.5, sm_clock_mhz=1830.0, power_watts=500.0)
    base.update(readings)
    return GpuSample(**base)


def test_utilization_is_sm_active():
    assert derive(sample(sm_active=0.42)).utilization == 0.42


def test_flops_utilization_is_tensor_activity_at_spec_clock_times_what_an_active_cycle_delivers():
    # Half the tensor pipe at the datasheet clock: half the dense bf16 peak, times what an active
    # cycle of a timed bf16 product delivered against the datasheet's rate on an H100 SXM (shipped).
    assert derive(sample()).flops_utilization == pytest.approx(0.5 * H100_FACTOR)


def test_an_h200_uses_the_factor_measured_on_an_h200():
    assert derive(sample(info=H200)).flops_utilization == pytest.approx(0.5 * 0.887)


def test_a_factor_stored_for_this_model_and_driver_wins_over_the_shipped_one():
    stored = Calibrations({("H100 SXM", "580.1"): Factors({"bf16": 0.95, "fp16": 0.97})})
    assert derive(sample(), calibrations=stored).flops_utilization == pytest.approx(0.5 * 0.96)


def test_a_factor_stored_under_another_driver_is_not_used():
    stored = Calibrations({("H100 SXM", "550.0"): Factors({"bf16": 0.5})})
    assert derive(sample(), calibrations=stored).flops_utilization == pytest.approx(0.5 * H100_FACTOR)


def test_a_bf16_product_timed_at_0_673_of_peak_on_an_h200_reads_within_0_03():
    # tests/gpu/test_flops_gpu.py, 8192³ bf16: tensor pipe 0.936 active at 1489 MHz, timed 0.673.
    figures = derive(sample(info=H200, tensor_active=0.936, hmma_active=0.936, sm_clock_mhz=1489.0))
    assert figures.flops_utilization == pytest.approx(0.673, abs=0.03)


def test_flops_utilization_scales_with_the_sm_clock():
    assert derive(sample(sm_clock_mhz=915.0)).flops_utilization == pytest.approx(0.25 * H100_FACTOR)


def test_fp32_pipe_counts_at_its_own_peak_at_the_clock_its_datasheet_figure_is_quoted_at():
    # Hopper's 66.9 TFLOP/s FP32 is at 1980 MHz, the tensor figures at 1830.
    figures = derive(sample(tensor_active=0.0, hmma_active=0.0, fp32_active=1.0, sm_clock_mhz=1980.0))
    assert figures.flops_utilization == pytest.approx(66.9 / 989.4)


def test_an_fp32_product_timed_at_51_tflops_on_an_h200_reads_its_timed_rate():
    # tests/gpu/test_flops_gpu.py, FP32 8192³ on an H200: FP32 pipe 0.765 active at 1980 MHz, 51.1 TFLOP/s
    # timed; scaled from 1830 MHz it read 0.056 against a timed 0.052.
    figures = derive(sample(info=H200, tensor_active=0.0, hmma_active=0.0, fp32_active=0.765, sm_clock_mhz=1980.0))
    assert figures.flops_utilization == pytest.approx(51.1 / 989.4, abs=0.001)


def test_unknown_model_has_no_flops_utilization():
    unknown = GpuInfo(**{**{f: getattr(H100, f) for f in H100.__slots__}, "name": "Mystery Accelerator 9000"})
    assert derive(sample(info=unknown)).flops_utilization is None


def test_missing_pipe_metrics_give_no_flops_utilization():
    figures = derive(sample(tensor_active=None, hmma_active=None, fp32_active=None, fp64_active=None, fp16_active=None))
    assert figures.flops_utilization is None


def test_coarse_source_has_no_flops_utilization():
    assert derive(sample(source_quality="coarse")).flops_utilization is None


def test_memory_turnover_is_bytes_moved_over_capacity():
    figures = derive(sample(dram_active=0.5))
    assert figures.dram_bytes_per_second == pytest.approx(0.5 * 3350e9)
    assert figures.memory_turnover_per_second == pytest.approx(0.5 * 3350e9 / (80 * 2**30))


def test_missing_dram_metric_gives_no_turnover():
    assert derive(sample(dram_active=None)).memory_turnover_per_second is None


def test_energy_delta_comes_from_the_counter():
    before = sample(energy_joules=1000.0)
    after = sample(energy_joules=1512.5)
    assert derive(after, before).energy_joules_delta == pytest.approx(512.5)


def test_throttle_fractions_are_counter_deltas_over_the_interval():
    before = sample(throttle_seconds={"sw_power_cap": 10.0})
    after = sample(throttle_seconds={"sw_power_cap": 10.25}, interval_seconds=0.5)
    assert derive(after, before).throttle_fractions == {"sw_power_cap": pytest.approx(0.5)}


def test_throttle_totals_handed_back_unchanged_are_zero_fractions_of_every_reason():
    totals = {"sw_power_cap": 10.0, "hw_slowdown": 2.0}
    before, after = sample(throttle_seconds=totals), sample(throttle_seconds=totals)
    assert derive(after, before).throttle_fractions == {"sw_power_cap": 0.0, "hw_slowdown": 0.0}


def test_first_sample_has_no_throttle_fractions_or_energy_delta():
    figures = derive(sample(energy_joules=5.0, throttle_seconds={"sw_power_cap": 1.0}))
    assert figures.throttle_fractions == {} and figures.energy_joules_delta is None


def test_sm_clock_ratio_is_against_the_maximum():
    assert derive(sample(sm_clock_mhz=990.0)).sm_clock_ratio == pytest.approx(0.5)
