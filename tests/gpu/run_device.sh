#!/usr/bin/env bash
# The real-GPU suite in one go: doctor's JSON, then every tests/gpu test with its tables printed.
# Usage (on a GPU machine, from the repository root): tests/gpu/run_device.sh [OUTDIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/flopwatch-gpu}}
mkdir -p "$out"
export PYTHONPATH="$PWD/agent${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv
python3 -m flopwatch doctor --json | tee "$out/doctor.json"
python3 -m pytest -q -s -p no:cacheprovider --durations=0 tests/gpu 2>&1 | tee "$out/gpu.log"
