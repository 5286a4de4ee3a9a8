from flopwatch.judge.ledger import Charge, WasteLedger


def test_a_tick_of_a_named_segment_is_charged_to_its_cause_at_once():
    ledger = WasteLedger(hold_seconds=15.0)
    assert ledger.tick(1.0, 1.0, under=True, named=True, cause="input_starved") == (Charge(1.0, "input_starved", 1.0),)
    assert ledger.totals == {"input_starved": 1.0}


def test_a_new_segments_ticks_wait_for_its_name_then_take_it():
    ledger = WasteLedger(hold_seconds=15.0)
    assert ledger.tick(1.0, 1.0, under=True, named=False, cause="idle") == ()
    assert ledger.tick(2.0, 1.0, under=True, named=False, cause="idle") == ()
    settled = ledger.tick(3.0, 1.0, under=True, named=True, cause="starting")
    assert [c.timestamp for c in settled] == [1.0, 2.0, 3.0]
    assert ledger.totals == {"starting": 3.0}


def test_ticks_over_the_threshold_are_never_charged():
    ledger = WasteLedger(hold_seconds=15.0)
    assert ledger.tick(1.0, 1.0, under=False, named=True, cause="memory_bound") == ()
    assert ledger.totals == {}


def test_a_tick_under_the_threshold_with_no_cause_found_is_unknown_once_its_hold_passes():
    ledger = WasteLedger(hold_seconds=3.0)
    assert ledger.tick(1.0, 1.0, under=True, named=True, cause=None) == ()
    assert ledger.tick(4.0, 1.0, under=False, named=True, cause=None) == (Charge(1.0, "unknown", 1.0),)


def test_ticks_under_the_threshold_at_the_end_of_a_healthy_segment_join_the_segment_that_follows():
    ledger = WasteLedger(hold_seconds=15.0)
    for t in (1.0, 2.0, 3.0):  # the regime tracker sees the new side only after a few ticks
        ledger.tick(t, 1.0, under=True, named=True, cause=None)
    assert ledger.new_segment(start=1.0) == ()
    assert ledger.tick(6.0, 1.0, under=True, named=True, cause="checkpointing") == tuple(
        Charge(t, "checkpointing", 1.0) for t in (1.0, 2.0, 3.0, 6.0))


def test_ticks_under_the_threshold_before_a_new_segments_start_join_it_when_the_old_had_no_cause():
    # A checkpoint's first second, then the training step still running: the tracker's stretch
    # of ticks all under the threshold starts after that burst.
    ledger = WasteLedger(hold_seconds=15.0)
    ledger.tick(1.0, 1.0, under=True, named=True, cause=None)
    ledger.tick(2.0, 1.0, under=False, named=True, cause=None)
    ledger.tick(3.0, 1.0, under=True, named=True, cause=None)
    assert ledger.new_segment(start=3.0) == ()
    assert ledger.tick(4.0, 1.0, under=True, named=True, cause="checkpointing") == tuple(
        Charge(t, "checkpointing", 1.0) for t in (1.0, 3.0, 4.0))


def test_a_new_segment_charges_the_ticks_from_before_its_start_to_the_old_segments_cause():
    ledger = WasteLedger(hold_seconds=15.0)
    ledger.tick(1.0, 1.0, under=True, named=False, cause=None)
    ledger.tick(2.0, 1.0, under=True, named=False, cause=None)
    assert ledger.new_segment(start=2.0, cause="idle") == (Charge(1.0, "idle", 1.0),)
    assert [w.timestamp for w in ledger.pending] == [2.0]


def test_the_hold_is_bounded():
    ledger = WasteLedger(hold_seconds=3.0)
    for t in range(3):
        ledger.tick(float(t), 1.0, under=True, named=False, cause=None)
    assert ledger.tick(3.0, 1.0, under=True, named=False, cause=None) == (Charge(0.0, "unknown", 1.0),)


def test_settling_charges_every_waiting_tick_unnamed_ones_to_unknown():
    ledger = WasteLedger(hold_seconds=15.0)
    ledger.tick(1.0, 1.0, under=True, named=False, cause=None)
    assert ledger.settle() == (Charge(1.0, "unknown", 1.0),)
    assert ledger.pending == []


def test_totals_only_grow():
    ledger = WasteLedger(hold_seconds=15.0)
    seen = []
    for t, cause in enumerate(["a", None, "a", "b"]):
        ledger.tick(float(t), 1.0, under=True, named=cause is not None, cause=cause)
        seen.append(sum(ledger.totals.values()))
    assert seen == sorted(seen)


def test_ticks_waiting_when_a_segment_ends_go_to_the_cause_it_was_given():
    ledger = WasteLedger(hold_seconds=15.0)
    ledger.tick(1.0, 1.0, under=True, named=False, cause="checkpointing")  # waiting for the next stack sample
    ledger.tick(2.0, 1.0, under=True, named=False, cause="checkpointing")
    assert ledger.new_segment(start=2.0, cause="checkpointing") == (Charge(1.0, "checkpointing", 1.0),)


def test_a_verdict_settles_only_the_ticks_it_speaks_for_the_later_ones_wait_for_the_next():
    ledger = WasteLedger(hold_seconds=15.0)
    for t in (1.0, 2.0, 3.0):
        ledger.tick(t, 1.0, under=True, named=False, cause=None)
    # until 2.2: the ticks whose middle comes before it (0.5, 1.5; not 2.5)
    settled = ledger.tick(4.0, 1.0, under=True, named=True, cause="loading_weights", until=2.2)
    assert [(c.timestamp, c.cause) for c in settled] == [(1.0, "loading_weights"), (2.0, "loading_weights")]
    settled = ledger.tick(5.0, 1.0, under=True, named=True, cause="compiling")
    assert [(c.timestamp, c.cause) for c in settled] == [(3.0, "compiling"), (4.0, "compiling"), (5.0, "compiling")]


def test_a_tick_straddling_the_halfway_point_between_two_samples_goes_with_its_middle():
    ledger = WasteLedger(hold_seconds=15.0)
    ledger.tick(3.0, 1.0, under=True, named=False, cause=None)  # 2.0–3.0
    settled = ledger.tick(4.0, 1.0, under=False, named=True, cause="loading_weights", until=2.7)
    assert [(c.timestamp, c.cause) for c in settled] == [(3.0, "loading_weights")]


def test_a_tick_keeps_the_verdict_it_was_given_when_a_later_one_of_its_segment_differs():
    ledger = WasteLedger(hold_seconds=15.0, settle_seconds=10.0)
    ledger.tick(1.0, 1.0, under=True, named=True, cause="starting")
    ledger.tick(2.0, 1.0, under=True, named=True, cause="loading_weights", until=1.5)  # the next phase's sample
    settled = ledger.tick(12.0, 1.0, under=True, named=True, cause="loading_weights")
    assert [(c.timestamp, c.cause) for c in settled] == [(1.0, "starting"), (2.0, "loading_weights")]


def test_a_new_segment_takes_its_ticks_from_the_verdict_they_were_given_before_it_was_seen():
    ledger = WasteLedger(hold_seconds=15.0, settle_seconds=10.0)
    for t in (1.0, 2.0, 3.0):
        ledger.tick(t, 1.0, under=True, named=True, cause="io_bound")
    assert ledger.new_segment(start=2.0, cause="io_bound") == (Charge(1.0, "io_bound", 1.0),)
    settled = ledger.tick(13.0, 1.0, under=True, named=True, cause="launch_bound")
    assert [(c.timestamp, c.cause) for c in settled] == [(2.0, "launch_bound"), (3.0, "launch_bound")]


def test_a_phase_the_stacks_placed_a_tick_in_keeps_it_when_a_change_of_activity_is_dated_before_it():
    # Stacks saw the checkpoint until 3.5 s; the counters see the evaluation after it on a 5 s
    # stretch and start its segment at the stretch's first tick, 2 s.
    ledger = WasteLedger(hold_seconds=15.0, settle_seconds=10.0)
    for t in (1.0, 2.0, 3.0):
        ledger.tick(t, 1.0, under=True, named=True, cause="checkpointing", until=3.5)
    ledger.tick(4.0, 1.0, under=True, named=False, cause=None)
    assert ledger.new_segment(start=2.0, cause="checkpointing") == (Charge(1.0, "checkpointing", 1.0),)
    settled = ledger.tick(14.0, 1.0, under=True, named=True, cause="evaluating")
    assert [(c.timestamp, c.cause) for c in settled] == [(2.0, "checkpointing"), (3.0, "checkpointing"),
                                                         (4.0, "evaluating")]


def test_a_phase_the_gpus_counters_place_before_the_halfway_point_takes_the_ticks_after_its_start():
    # A checkpoint's sample (middle 13 s) spoke for the ticks to 15 s, halfway to the next (middle
    # 17 s, evaluating); the GPU's kernels started again in the tick ending at 15 s.
    ledger = WasteLedger(hold_seconds=15.0, settle_seconds=10.0)
    for t in (13.0, 14.0, 15.0):
        ledger.tick(t, 1.0, under=True, named=True, cause="checkpointing", until=15.0)
    ledger.tick(16.0, 1.0, under=True, named=True, cause="checkpointing", until=15.0)
    ledger.hand_over(14.0, "checkpointing", "evaluating", until=19.0)
    assert [(w.timestamp, w.cause) for w in ledger.pending] == [
        (13.0, "checkpointing"), (14.0, "checkpointing"), (15.0, "evaluating"), (16.0, "evaluating")]


def test_ticks_waiting_before_a_phases_start_on_the_gpus_counters_are_the_phase_befores():
    ledger = WasteLedger(hold_seconds=15.0, settle_seconds=10.0)
    ledger.tick(13.0, 1.0, under=True, named=True, cause="starting", until=13.5)
    for t in (14.0, 15.0, 16.0):  # after the halfway point: waiting for the next sample
        ledger.tick(t, 1.0, under=True, named=True, cause="starting", until=13.5)
    ledger.hand_over(15.0, "starting", "loading_weights")
    assert [w.cause for w in ledger.pending] == ["starting", "starting", "starting", "loading_weights"]
