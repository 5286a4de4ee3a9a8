"""`flopwatch doctor` and the unit's memory sandbox on a real NVIDIA GPU.

Run with -s to see the doctor's JSON (the record of what this machine is).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gpu.gpus import needs_gpus

pytestmark = needs_gpus(1)

TESTS = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(TESTS.parent / "agent")}


def test_doctor_reads_every_check_from_the_real_driver():
    result = subprocess.run([sys.executable, "-m", "flopwatch", "doctor", "--json"], capture_output=True,
                            text=True, env=ENV, timeout=120)
    print(result.stdout)
    assert result.returncode in (0, 1), result.stderr
    document = json.loads(result.stdout)
    checks = {(c["name"], c["gpu"]): c for c in document["checks"]}
    assert checks[("driver", None)]["status"] == "pass"
    assert checks[("cuda", None)]["status"] == "pass"
    assert int(checks[("gpus", None)]["value"]) >= 1
    # A data-center card answers these; "not supported" here would mean a reader bug.
    for name in ("pcie_link", "power_limit", "clock_events", "ecc"):
        assert checks[(name, 0)]["value"] != "not supported", name
    assert (result.returncode == 1) == any(c["status"] == "fail" for c in document["checks"])


def test_nvml_works_without_writable_executable_memory():
    # The unit sets MemoryDenyWriteExecute=yes; NVML (through ctypes) must live with it.
    code = ("import pynvml\n"
            "from flopwatch.sources.nvml import NvmlSource\n"
            "from flopwatch.sources import sysfacts\n"
            "facts = sysfacts.read_facts(pynvml)\n"
            "assert facts.gpus and facts.nvml_error is None, facts\n"
            "source = NvmlSource(None)\n"
            "print(len(source.read()))\n")
    result = subprocess.run([sys.executable, str(TESTS / "mdwe.py"), "-c", code], capture_output=True,
                            text=True, env=ENV, timeout=120)
    if result.returncode == 77:
        pytest.skip("the kernel cannot refuse writable+executable memory (PR_SET_MDWE needs Linux 6.3)")
    assert result.returncode == 0, result.stderr
