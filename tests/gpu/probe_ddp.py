"""Every DDP variant on this machine's GPUs, with the agent's readings: which of them wait on the
interconnect, and how the agent names it. Run from the repository root on a node with 2+ GPUs:

    PYTHONPATH=agent python3 -m tests.gpu.probe_ddp [VARIANT ...]
"""

import sys

from tests.gpu.ddp import PCIE_ONLY, measure, table
from tests.gpu.gpus import report

VARIANTS = {
    "small": ("small", {}),
    "starved": ("starved", {}),
    "large": ("large", {}),
    "fp32": ("small", {"FLOPWATCH_DDP_PARAMS": "fp32"}),
    "pcie": ("small", PCIE_ONLY),
    "large-pcie": ("large", PCIE_ONLY),
}

if __name__ == "__main__":
    runs = {}
    for label in sys.argv[1:] or VARIANTS:
        batch, env = VARIANTS[label]
        runs[label] = measure(batch, env=env)
        print("\n".join(table({label: runs[label]})[:4]), flush=True)
    report(table(runs), "ddp_variants.txt")
