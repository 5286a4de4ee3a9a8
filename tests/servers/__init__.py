"""Real servers that the tests and the benchmarks start on loopback: PostgreSQL (``postgres``),
Prometheus and Alertmanager (``prometheus``), a kubelet's pod-resources endpoint (``kubelet``), a single-node Slurm
(``slurm``).

Plain Python without pytest, so that bench/ runs where pytest is not installed; tests/fixtures.py
wraps them as fixtures and turns ``Missing`` into a skip with the same message.
"""

from __future__ import annotations

import socket


class Missing(RuntimeError):
    """A server's binaries are not installed here; the message names them and what installs them."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
