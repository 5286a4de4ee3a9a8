"""The ``slurm`` fixture: a real single-node Slurm (tests/servers/slurm.py) for a test module."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.servers.slurm import SlurmCluster, SlurmUnavailable


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    """Three GRES GPUs, matched to three simulated GPUs by minor number."""
    try:
        cluster = SlurmCluster(gpus=3).__enter__()
    except SlurmUnavailable as e:
        pytest.skip(f"Slurm does not run here: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
