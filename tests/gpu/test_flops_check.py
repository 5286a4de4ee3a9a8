"""The flops check's own arithmetic, without a GPU: what it reads is averaged over time."""

import pytest

from tests.gpu.flops_check import _mean


def test_a_span_of_milliseconds_weighs_its_milliseconds_beside_half_second_ones():
    # Six half-second spans of tensor-pipe activity 0.93, then the loop's closing read 5 ms later,
    # too soon for the counters to see the work.
    assert round(_mean([0.93] * 6 + [0.0], [0.5] * 6 + [0.005]), 3) == 0.928


def test_spans_without_a_value_are_left_out_not_counted_as_zero():
    assert _mean([None, 0.5, 0.7], [0.5, 0.5, 1.5]) == pytest.approx(0.65)
