"""A 20-second soak (bench/soak.py runs the long one): with faults of every kind coming and going,
the agent ends holding as many file descriptors as it started with."""

from bench import soak


def test_a_short_soak_with_faults_ends_with_the_file_descriptors_it_started_with():
    result = soak.soak(20, gpus=4, processes=16, interval=0.2, fault_every=2.0, report=print)
    assert result.faults >= len(soak.Faults.kinds_in_turn)  # every kind of fault ran
    assert result.last.fds == result.first.fds
    assert result.ticks_with_two_gpus_down == 0 and result.dropped_rows == 0
