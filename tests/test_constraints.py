"""The dependency sets the suite runs against agree with pyproject.toml."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_oldest_set_pins_each_direct_dependency_at_its_lower_bound_in_pyproject():
    generated = subprocess.run([sys.executable, str(ROOT / "scripts/lower-bounds")], capture_output=True, text=True,
                               check=True, timeout=60).stdout
    assert (ROOT / "constraints/oldest.txt").read_text() == generated
