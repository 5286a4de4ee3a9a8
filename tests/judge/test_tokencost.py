"""What a token costs, from plain values: attribution to GPUs and the per-token figures."""

import pytest

from flopwatch.model import GpuFigures, GpuInfo, GpuSample, GpuState, ProcessView, TokenCount
from flopwatch.judge.tokencost import CostWindow, Prices, TokenAccount, WindowEntry, token_figures
from tests.approx import approx_numbers


def _gpu(index: int, processes: dict[int, str], t: float, joules: float = 300.0, flops: float | None = 5e14) -> GpuState:
    info = GpuInfo(index=index, uuid=f"GPU-{index}", name="NVIDIA H100 80GB HBM3", pci_bus_id="", memory_total_bytes=80 << 30,
                   driver_version="580.95.05", cuda_driver_version="13.0", max_sm_clock_mhz=1980,
                   max_memory_clock_mhz=2619, memory_bus_width_bits=5120, power_limit_watts=700,
                   default_power_limit_watts=700, gpm_supported=True)
    sample = GpuSample(info=info, timestamp=t, interval_seconds=1.0, source_quality="gpm")
    figures = GpuFigures(
        index=index, uuid=info.uuid, timestamp=t, interval_seconds=1.0, source_quality="gpm", utilization=0.9,
        sm_occupancy=None, tensor_active=None, dram_active=None, fp32_active=None, fp64_active=None, fp16_active=None,
        flops_utilization=None, achieved_flops_per_second=flops, dram_bytes_per_second=None,
        memory_turnover_per_second=None, power_watts=joules, energy_joules=None, energy_joules_delta=joules,
        sm_clock_ratio=None, memory_used_bytes=None, memory_total_bytes=80 << 30,
    )
    views = tuple(ProcessView(pid=pid, job=job, user=None, cmdline="", sm_ratio=None, memory_bytes=None, cpu_ratio=None)
                  for pid, job in processes.items())
    return GpuState(sample=sample, figures=figures, finding=None, below_threshold=False, wasted_seconds={},
                    processes=views)


def _window(*entries: WindowEntry) -> CostWindow:
    window = CostWindow()
    for entry in entries:
        window.append(entry)
    return window


def _row(key: str, prompt: int = 0, generated: int = 0, job: str | None = None, pids=(), source: str = "push"):
    return TokenCount(source, key, job, frozenset(pids), prompt, generated)


def test_joules_gpu_seconds_tflop_and_cost_per_token_over_the_window():
    window = _window(*(WindowEntry(t, 1.0, 400.0, 5e14, 500.0) for t in range(10)))
    figures = token_figures(window, {}, Prices(per_gpu_hour=3.6, per_kwh=0.36))
    assert figures.joules_per_token == pytest.approx(0.8)
    assert figures.gpu_seconds_per_1k_tokens == pytest.approx(2.0)
    assert figures.tflop_per_token == pytest.approx(1.0)
    assert figures.tokens_per_second == pytest.approx(500.0)
    # 10 s at 3.6/h = 0.01, plus 4000 J at 0.36/kWh = 0.0004, over 5000 tokens, per million.
    assert figures.cost_per_1m_tokens == pytest.approx((0.01 + 0.0004) / 5000 * 1e6)


def test_no_tokens_means_no_per_token_figures_not_infinity():
    figures = token_figures(_window(WindowEntry(0, 1.0, 400.0, 5e14, 0.0)), {}, Prices(per_gpu_hour=3.6))
    assert (figures.joules_per_token, figures.gpu_seconds_per_1k_tokens, figures.cost_per_1m_tokens) == (None, None, None)


def test_without_a_price_there_is_no_cost_and_without_flops_no_tflop():
    figures = token_figures(_window(WindowEntry(0, 1.0, 400.0, None, 10.0)), {}, Prices())
    assert (figures.cost_per_1m_tokens, figures.tflop_per_token) == (None, None)


def test_tokens_go_to_the_gpu_that_runs_their_pid():
    account = TokenAccount()
    gpus = [_gpu(0, {10: "a"}, 1.0), _gpu(1, {20: "b"}, 1.0)]
    out = account.advance([_row("x", generated=100, pids=[20])], gpus, 1.0)
    assert (out[0].totals, out[1].totals) == ({}, {("push", "b", "generated"): 100})


def test_tokens_with_only_a_job_go_to_the_gpus_running_that_job_split_evenly():
    account = TokenAccount()
    gpus = [_gpu(0, {10: "slurm:5"}, 1.0), _gpu(1, {11: "slurm:5"}, 1.0), _gpu(2, {12: "other"}, 1.0)]
    out = account.advance([_row("x", prompt=300, job="slurm:5")], gpus, 1.0)
    assert [sum(out[i].totals.values()) for i in range(3)] == [150, 150, 0]


def test_unmatched_tokens_go_to_a_single_gpu_but_not_to_one_of_several():
    single = TokenAccount()
    assert single.advance([_row("x", generated=7)], [_gpu(0, {}, 1.0)], 1.0)[0].totals == {("push", "", "generated"): 7}
    several = TokenAccount()
    out = several.advance([_row("x", generated=7, job="nobody")], [_gpu(0, {}, 1.0), _gpu(1, {}, 1.0)], 1.0)
    assert sum(out[0].totals.values()) + sum(out[1].totals.values()) == 0
    assert several.unattributed == {("push", "nobody", "generated"): 7}


def test_a_last_flush_after_the_process_left_the_gpu_still_lands_on_it():
    account = TokenAccount(pid_memory_seconds=60)
    account.advance([], [_gpu(0, {}, 1.0), _gpu(1, {20: "b"}, 1.0)], 1.0)
    out = account.advance([_row("x", generated=50, pids=[20])], [_gpu(0, {}, 2.0), _gpu(1, {}, 2.0)], 2.0)
    assert out[1].totals == {("push", "b", "generated"): 50}


def test_only_the_tokens_added_since_the_last_tick_enter_the_window():
    account = TokenAccount(window_seconds=3)
    rows = [_row("x", generated=n, pids=[10]) for n in (100, 100, 400, 400, 400, 400)]
    for t, row in enumerate(rows, start=1):
        out = account.advance([row], [_gpu(0, {10: "a"}, float(t))], float(t))
    assert out[0].totals == {("push", "a", "generated"): 400}
    assert out[0].joules_per_token is None  # no tokens in the last 3 s
    out = account.advance([_row("x", generated=700, pids=[10])], [_gpu(0, {10: "a"}, 7.0)], 7.0)
    assert out[0].joules_per_token == pytest.approx(900 / 300)  # 3 ticks of 300 J, 300 tokens


def test_a_tick_without_energy_blanks_joules_per_token_until_it_leaves_the_window():
    account = TokenAccount(window_seconds=3)
    joules = [300.0, None, 300.0, 300.0, 300.0]
    per_token = []
    for t, j in enumerate(joules, start=1):
        out = account.advance([_row("x", generated=100 * t, pids=[10])], [_gpu(0, {10: "a"}, float(t), joules=j)], float(t))
        per_token.append(out[0].joules_per_token)
    assert per_token == [3.0, None, None, None, 3.0]


def test_the_running_totals_equal_sums_over_the_whole_window_anew():
    entries = [WindowEntry(float(t), 0.1 + t % 3 / 10, None if t % 17 == 4 else 1e4 * (t % 7) + 0.3,
                           5e14 * (t % 5) if t < 200 else 1e3 + t % 2, float(t % 11)) for t in range(600)]
    window, kept = CostWindow(), []
    for entry in entries:
        window.append(entry)
        window.expire(entry.timestamp, 60.0)
        kept = [e for e in kept if entry.timestamp - e.timestamp < 60.0] + [entry]
        expected = {key: None if any(getattr(e, key) is None for e in kept) else sum(getattr(e, key) for e in kept)
                    for key in ("seconds", "tokens", "joules", "flop")}
        assert {key: window.total(key) for key in expected} == approx_numbers(expected, rel=1e-9)


def test_no_figures_until_a_token_source_has_counted_something_then_the_window_starts():
    account = TokenAccount(window_seconds=60)
    assert account.advance([], [_gpu(0, {10: "a"}, 1.0)], 1.0) == {}
    out = account.advance([_row("x", generated=5, pids=[10])], [_gpu(0, {10: "a"}, 2.0)], 2.0)
    assert out[0].tokens_per_second == pytest.approx(5 / out[0].window_seconds)
    assert out[0].window_seconds == pytest.approx(1.0)
