from flopwatch.judge.regime import Change, GpuTick, RegimeTracker, phase_onset
from flopwatch.thresholds import Thresholds

TH = Thresholds()  # threshold 0.6, regime_change_seconds 5, regime_margin 0.1
JOB = frozenset({100})


def feed(tracker, utilizations, pids=JOB, start=0.0):
    return [tracker.observe(start + i, 1.0, u, pids, TH) for i, u in enumerate(utilizations)]


def test_the_first_tick_starts_a_segment_without_a_change():
    assert RegimeTracker().observe(0.0, 1.0, 0.9, JOB, TH) is None


def test_a_process_that_starts_or_ends_starts_a_segment_at_once():
    tracker = RegimeTracker()
    feed(tracker, [0.0] * 10, pids=frozenset())
    assert tracker.observe(10.0, 1.0, 0.0, JOB, TH) == Change(10.0, "processes")
    assert tracker.observe(11.0, 1.0, 0.0, frozenset(), TH) == Change(11.0, "processes")


def test_a_stall_that_lasts_starts_a_segment_where_it_began():
    tracker = RegimeTracker()
    changes = feed(tracker, [0.95] * 10 + [0.05] * 6)
    assert [c for c in changes if c] == [Change(10.0, "utilization")]


def test_a_job_that_stalls_and_runs_in_turn_faster_than_the_stretch_stays_one_segment():
    tracker = RegimeTracker()
    assert not any(feed(tracker, [0.95, 0.95, 0.1, 0.1] * 10))


def test_a_mean_that_only_grazes_the_threshold_is_no_change():
    tracker = RegimeTracker()
    assert not any(feed(tracker, [0.65] * 10 + [0.55] * 10))


def test_recovery_after_a_stall_is_a_change_too():
    tracker = RegimeTracker()
    changes = feed(tracker, [0.05] * 10 + [0.95] * 6)
    assert [c.reason for c in changes if c] == ["utilization"]


# -- where a phase named after another began, by the GPU's own counters --------------------------

def ticks(*readings: tuple[float, int], start: float = 10.0) -> list[GpuTick]:
    """One tick a second from ``start`` of (utilization, GiB of GPU memory used)."""
    return [GpuTick(start + i, 1.0, u, u < 0.6, gib * 2**30) for i, (u, gib) in enumerate(readings)]


def test_weights_loading_begin_where_the_gpus_memory_first_steps_up():
    # An H100 lifecycle run: imports with the CUDA context (1.1 GB), then 6.7 GB of weights at once.
    starting_then_loading = ticks((0.0, 1), (0.0, 1), (0.0, 1), (0.0, 8), (0.0, 8), (0.0, 10))
    assert phase_onset("loading_weights", starting_then_loading, 9.0, 15.0, TH) == 12.0


def test_an_evaluation_begins_where_kernels_start_on_a_gpu_that_ran_none():
    checkpoint_then_eval = ticks((0.0, 28), (0.0, 28), (0.72, 28), (0.24, 28), (0.0, 28), (0.23, 28))
    assert phase_onset("evaluating", checkpoint_then_eval, 9.0, 15.0, TH) == 11.0


def test_an_exit_begins_after_the_last_tick_that_ran_kernels():
    eval_then_exit = ticks((0.2, 28), (0.0, 28), (0.2, 28), (0.48, 28), (0.0, 28), (0.0, 27))
    assert phase_onset("exiting", eval_then_exit, 9.0, 15.0, TH) == 13.0


def test_a_change_outside_the_two_samples_or_a_phase_with_no_mark_of_its_own_places_nothing():
    steps = ticks((0.0, 1), (0.0, 1), (0.0, 8), (0.5, 8), (0.0, 8))
    assert phase_onset("loading_weights", steps, 12.0, 15.0, TH) is None  # the step came before the earlier sample
    assert phase_onset("compiling", steps, 9.0, 15.0, TH) is None
    assert phase_onset("exiting", ticks((0.0, 8), (0.0, 8)), 9.0, 15.0, TH) is None  # no kernels ran since


def test_the_tick_the_kernels_stop_in_is_the_new_phases_when_they_filled_under_half_of_it():
    # An H100 lifecycle run: training at 0.92, then the tick torch.save began in at 0.19.
    training_then_checkpoint = ticks((0.92, 28), (0.92, 28), (0.19, 28), (0.0, 28), (0.0, 28))
    assert phase_onset("checkpointing", training_then_checkpoint, 9.0, 15.0, TH) == 11.0
    # and an evaluation at 0.24 whose last tick ran 0.10: the exit's
    eval_then_exit = ticks((0.24, 28), (0.24, 28), (0.10, 28), (0.0, 28))
    assert phase_onset("exiting", eval_then_exit, 9.0, 15.0, TH) == 11.0


def test_the_tick_the_kernels_start_in_is_the_phase_befores_when_they_filled_under_half_of_it():
    checkpoint_then_eval = ticks((0.0, 28), (0.0, 28), (0.08, 28), (0.24, 28), (0.25, 28))
    assert phase_onset("evaluating", checkpoint_then_eval, 9.0, 15.0, TH) == 12.0
