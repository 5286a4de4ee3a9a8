"""Comparing a mapping of readings where some are absent (None)."""

import pytest


def approx_numbers(expected: dict, rel: float) -> dict:
    """Expected with each number compared within rel and each None exactly.

    pytest.approx on a whole mapping refuses None from pytest 9.2 on; per value it works in every version.
    """
    return {key: None if value is None else pytest.approx(value, rel=rel) for key, value in expected.items()}
