#!/usr/bin/env bash
# The GPU benchmarks in one batch: tick cost against the NVML floor, agent cost beside
# nvidia-smi and nvitop's exporter, GPU overhead. The tick alone runs 300 s at 1 Hz (6.4 minutes
# in all on an H200), so where a command may run 10 minutes at most, run the three one by one.
#   bench/gpu_all.sh [WHEELS_DIR] [SECONDS_PER_TOOL]
# WHEELS_DIR: wheels installed with pip --target first (APScheduler, tzlocal, nvitop,
# nvitop-exporter) where the machine lacks them.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
wheels="${1:-}"
seconds="${2:-30}"
wheel_args=()
[ -n "$wheels" ] && wheel_args=(--wheels-dir "$wheels")
status=0
run() {
  echo "== $*"
  python3 "$@" || status=1
  echo
}
if [ -n "$wheels" ]; then
  # gpu_tick_floor builds the agent in-process: make the wheels importable there too.
  python3 -c "import sys; sys.path.insert(0, '$here'); from common import install_wheels; install_wheels('$wheels')"
  export PYTHONPATH="$(cd "$wheels" && pwd)/_site${PYTHONPATH:+:$PYTHONPATH}"
fi
run "$here/gpu_tick_floor.py"
run "$here/gpu_agent_cost.py" --seconds "$seconds" "${wheel_args[@]}"
run "$here/gpu_overhead.py" "${wheel_args[@]}"
exit $status
