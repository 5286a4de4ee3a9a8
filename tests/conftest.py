import sys
from pathlib import Path

# Tests run against the source tree even before `pip install .`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

pytest_plugins = ["tests.fixtures_prometheus", "tests.fixtures_postgres", "tests.slurm_plugin"]
