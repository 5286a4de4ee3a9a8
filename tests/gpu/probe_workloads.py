"""Workloads outside the suite's expectations, with the agent's readings and what it names in each
window: regimes where a cause rests on a single rule, measured before the suite expects anything
of them. Run from the repository root on a node with a GPU and PyTorch:

    PYTHONPATH=agent python3 -m tests.gpu.probe_workloads [WORKLOAD ...]
"""

import sys
from collections import Counter

from tests.gpu.gpus import report
from tests.gpu.test_real_gpu import READINGS_HEADER, _measure, readings_row

PROBED = ("small_batch_training", "light_traffic_server")

if __name__ == "__main__":
    lines = [READINGS_HEADER]
    for name in sys.argv[1:] or PROBED:
        run = _measure(name, 1)
        causes = Counter(c or "none" for c in run.causes)
        lines += [readings_row(name, run), f"    windows: {dict(causes)}; last evidence: {run.evidence}"]
        print("\n".join(lines[-2:]), flush=True)
    report(lines, "probe_workloads.txt")
