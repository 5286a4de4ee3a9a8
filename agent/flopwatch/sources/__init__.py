"""Read: everything the agent learns of the world, one reader per file.

NVML (``nvml``, or the simulated GPUs of ``simulated`` through the same code), the host's
processes and their jobs (``host``, ``procfs``, ``identity``, ``redact``), the culprit's Python
stacks (``stacks``), token counts (``tokens``), the kubelet's pod-resources (``pod_resources``) and
the node facts ``doctor`` checks (``sysfacts``). A reader returns typed records of ``model`` and
never judges them. May import: ``model``, ``config``, ``thresholds``, ``httpbase``; no other stage.
"""

from __future__ import annotations

import math


def counter_period(now: float, interval_seconds: float) -> float:
    """Which counter interval ``now`` falls in, counted from the clock's zero; a new one every
    tick where the interval is 0. The GPU reader and the host reader read their costly counters
    on the first tick of each period, so both read on the same tick and a GPU's process readings
    change once a period, not once for each."""
    return math.floor(now / interval_seconds) if interval_seconds > 0 else now
