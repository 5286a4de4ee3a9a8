"""Does time-slicing slow loops that launch small kernels? Each workload alone, then two copies of
it on the GPU, timed by their own steps while `flopwatch status --window 8 --json` reads the same
seconds: each process's steps a second beside the workload's alone, and what the counters read
(SM activity, NVML's kernel time, the processes' shares, the cause). A GEMM loop that fills the GPU
is the control: two copies should each run at about half speed. From the repository root on a GPU
machine: ``python3 -m tests.gpu.probe_sharing OUTDIR`` (~3 min; OUTDIR/sharing.jsonl, one line a run).

Whether sharers slow each other where the GPU mostly waits on their Python is what the contention
rule's SM bar (``contention_min_sm_active``) rests on: on an H100 (2026-12-08,
docs/runs/h100-sharing-probe-2026-12-08.*) two batch-1 decoders at SM 0.07 together ran at 0.93 and
0.97 of their pace alone, two MLP trainers at 0.72 at 0.62 each."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tests.gpu.corpus import contributing_causes, go, launch, slug, start_status, status_result, stop, wait_ready

WORKLOADS = ("llama_greedy_decode", "eager_small_inference", "small_batch_training", "tiny_kernels", "shared_matmul")
WINDOW_SECONDS = 8.0


def counts(steps: Path) -> dict[int, tuple[float, int]]:
    """Each process's last written (wall seconds, steps)."""
    out = {}
    for path in steps.glob("*.steps"):
        seconds, n = path.read_text().split()
        out[int(path.stem)] = (float(seconds), int(n))
    return out


def run(key: str, out: Path) -> dict:
    steps = out / "steps" / slug(key)
    steps.mkdir(parents=True, exist_ok=True)
    os.environ["FLOPWATCH_WORKLOAD_STEPS_DIR"] = str(steps)
    started = launch(key, out / "logs")
    go(started)
    try:
        failure = wait_ready(started.procs, out / "logs", key, timeout=120)
        if failure:
            return {"key": key, "error": failure}
        time.sleep(3)
        before = counts(steps)
        gpu = status_result(start_status(WINDOW_SECONDS), WINDOW_SECONDS)
        after = counts(steps)
    finally:
        stop(started.procs)
    rates = {pid: (after[pid][1] - before[pid][1]) / (after[pid][0] - before[pid][0])
             for pid in after if pid in before and after[pid][0] > before[pid][0]}
    finding = gpu.get("finding") or {}
    return {"key": key, "steps_per_second": rates, "utilization": gpu.get("utilization"),
            "nvml_utilization": gpu.get("nvml_utilization"),
            "processes": [(p.get("pid"), p.get("sm_ratio"), p.get("cpu_ratio")) for p in gpu.get("processes", [])],
            "cause": finding.get("cause"), "contributing": contributing_causes(finding),
            "evidence": finding.get("evidence"), "error": gpu.get("error")}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'workload':28} {'copies':>6} {'steps/s each':>22} {'vs alone':>14} {'util':>5} {'nvml':>5}  cause",
          flush=True)
    with open(out / "sharing.jsonl", "w") as log:
        for name in WORKLOADS:
            alone = None
            for copies, key in ((1, name), (2, f"{name} x2")):
                result = run(key, out)
                log.write(json.dumps(result, default=str) + "\n")
                log.flush()
                rates = sorted(result.get("steps_per_second", {}).values())
                if copies == 1 and rates:
                    alone = rates[0]
                each = " ".join(f"{r:.1f}" for r in rates)
                versus = " ".join(f"{r / alone:.2f}" for r in rates) if alone else "-"
                util, nvml = (result.get(k) for k in ("utilization", "nvml_utilization"))
                print(f"{name:28} {copies:>6} {each:>22} {versus:>14} {util or 0:5.2f} {nvml or 0:5.2f}  "
                      f"{result.get('cause')} {result.get('contributing') or ''} {result.get('error') or ''}",
                      flush=True)


if __name__ == "__main__":
    main()
