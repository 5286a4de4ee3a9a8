"""Every DDP variant on this machine's GPUs, with the agent's readings: which of them wait on the
interconnect, and how the agent names it. Run from the repository root on a node with 2+ GPUs:

    PYTHONPATH=agent python3 -m tests.gpu.probe_ddp
"""

from tests.gpu.ddp import PCIE_ONLY, measure, table
from tests.gpu.gpus import report

VARIANTS = {
    "small": ("small", {}),
    "large": ("large", {}),
    "small fp32": ("small", {"FLOPWATCH_DDP_PARAMS": "fp32"}),
    "small pcie": ("small", PCIE_ONLY),
    "large pcie": ("large", PCIE_ONLY),
}

if __name__ == "__main__":
    runs = {}
    for label, (batch, env) in VARIANTS.items():
        runs[label] = measure(batch, env=env)
        print("\n".join(table({label: runs[label]})[:4]), flush=True)
    report(table(runs), "ddp_variants.txt")
