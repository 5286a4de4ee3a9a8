"""judge/calibration.py: factors fitted from timed products, stored per model and driver, resolved per card."""

import pytest

from flopwatch.judge.calibration import (CalibrationError, Calibrations, Factors, Timing, fit, from_document,
                                         to_document)

SHAPE = (8192, 8192, 8192)


def test_a_precisions_factor_is_timed_over_modeled():
    # The H200's bf16 8192³ product: 666.0 TFLOP/s timed, the counters' model at factor 1.0 said 754.
    assert fit([Timing("bf16", SHAPE, 666.0e12, 754.0e12)]) == {"bf16": pytest.approx(0.8833, abs=1e-4)}


def test_two_sizes_of_one_precision_give_their_median():
    timings = [Timing("fp16", SHAPE, 0.90, 1.0), Timing("fp16", (4096,) * 3, 0.86, 1.0),
               Timing("fp16", (16384,) * 3, 0.89, 1.0)]
    assert fit(timings) == {"fp16": pytest.approx(0.89)}


def test_a_precision_the_counters_read_nothing_for_is_left_out():
    assert fit([Timing("fp8", SHAPE, 1.2e15, 0.0), Timing("tf32", SHAPE, 3e14, None)]) == {}


def test_the_tensor_pipes_factor_is_the_mean_of_bf16_and_fp16_and_fp8_tf32_are_not_applied():
    factors = Factors({"bf16": 0.88, "fp16": 0.90, "fp8": 1.7, "tf32": 0.45, "fp32": 1.01})
    assert (factors.tensor, factors.fp32) == (pytest.approx(0.89), 1.01)


def test_fp32_is_1_where_it_was_not_measured():
    assert Factors({"bf16": 0.9}).fp32 == 1.0


def test_stored_factors_survive_the_document_round_trip():
    stored = {("H100 SXM", "580.159.04"): Factors({"bf16": 0.98, "fp32": 1.0}, "2026-12-06")}
    assert from_document(to_document(stored)) == stored


def test_a_document_of_another_version_is_refused():
    with pytest.raises(CalibrationError, match="version 1"):
        from_document({"version": 7, "entries": []})


def test_an_entry_without_its_driver_is_refused_naming_the_entry():
    with pytest.raises(CalibrationError, match="entry 0"):
        from_document({"version": 1, "entries": [{"model": "H100 SXM", "factors": {"bf16": 0.9}}]})


def test_an_absurd_factor_is_refused_naming_its_precision():
    with pytest.raises(CalibrationError, match="bf16"):
        from_document({"version": 1, "entries": [{"model": "H100 SXM", "driver": "580", "factors": {"bf16": 0.0}}]})


def test_a_card_resolves_to_its_stored_factor_then_the_shipped_one_then_none():
    stored = Calibrations({("H100 SXM", "580"): Factors({"bf16": 0.97})})
    assert stored.resolve("NVIDIA H100 80GB HBM3", "580").state == "stored"
    assert stored.resolve("NVIDIA H100 80GB HBM3", "590").state == "shipped"
    assert stored.resolve("NVIDIA A100-SXM4-80GB", "580").state == "uncalibrated"
    assert stored.resolve("Mystery Accelerator 9000", "580") is None


def test_a_stored_entry_with_fp32_alone_does_not_replace_the_shipped_tensor_factor():
    stored = Calibrations({("H200 SXM", "580"): Factors({"fp32": 1.0})})
    assert stored.resolve("NVIDIA H200", "580").peaks.tensor_active_efficiency == 0.887
