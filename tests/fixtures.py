"""The servers of tests/servers as pytest fixtures (a plugin named in conftest.py), and the rule that
a test needing a server whose binaries are not installed here is skipped with ``Missing``'s message."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest

from tests.servers import Missing, postgres
from tests.servers.prometheus import Alertmanager, WebhookReceiver, start_alertmanager
from tests.servers.slurm import SlurmCluster, SlurmUnavailable


@contextlib.contextmanager
def _skipped_when_missing() -> Iterator[None]:
    try:
        yield
    except Missing as missing:
        pytest.skip(str(missing))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """Fixtures start servers here."""
    with _skipped_when_missing():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Tests start servers (and look up promtool or amtool) here."""
    with _skipped_when_missing():
        return (yield)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    with postgres.started(postgres.bindir()) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server) -> str:
    return postgres_server.url()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: WebhookReceiver) -> Iterator[Alertmanager]:
    """A running Alertmanager that notifies ``webhook``."""
    with start_alertmanager(tmp_path, webhook.url) as am:
        yield am


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
