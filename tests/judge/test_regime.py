from flopwatch.judge.regime import Change, RegimeTracker
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
