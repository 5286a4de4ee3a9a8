"""The scripted lifecycle's reader (tests/gpu/lifecycle.py) on plain segments and charges."""

from tests.gpu.lifecycle import Charge, Segment, finding_lines, score

SEGMENTS = [Segment(0.0, "idle", "-"), Segment(10.0, "loading_weights", "first"), Segment(20.0, "training", "first")]


def test_a_tick_belongs_to_the_segment_holding_the_middle_of_its_interval():
    lines = score(SEGMENTS, [Charge(10.4, 1.0, "idle"), Charge(11.0, 1.0, "loading_weights")])
    assert "charged to a cause other than the segment's label: 0 s = 0.0% (target ≤ 5 %)" in lines


def test_unknown_and_other_causes_are_shares_of_the_below_threshold_seconds():
    charges = [Charge(12.0, 1.0, "loading_weights"), Charge(13.0, 1.0, "unknown"), Charge(14.0, 1.0, "io_bound"),
               Charge(15.0, 1.0, "loading_weights")]
    lines = score(SEGMENTS, charges)
    assert "charged to unknown: 1 s = 25.0% (target ≤ 5 %)" in lines
    assert "charged to a cause other than the segment's label: 2 s = 50.0% (target ≤ 5 %)" in lines


def test_any_charge_in_a_healthy_training_segment_is_wrong():
    lines = score(SEGMENTS, [Charge(25.0, 1.0, "launch_bound")])
    assert "charged to a cause other than the segment's label: 1 s = 100.0% (target ≤ 5 %)" in lines


def test_each_finding_is_listed_from_the_first_phase_with_its_evidence_but_not_its_frames():
    rows = [(112.0, 131.5, "io_bound", 0.7, '{"io_write_bytes_per_second": 2.1e8, "stacks": [{"frames": ["f"]}]}')]
    assert finding_lines(rows, origin=100.0) == ['  12.0–  31.5 io_bound (0.7): {"io_write_bytes_per_second": 210000000.0}']
