"""What the agent costs at 1 Hz on a real GPU, beside the tools people run now, each alone.

For --seconds each, one at a time, measured from outside (CPU seconds of the process tree over
the window, reaped children included, as a share of one core; peak RSS: the process's own VmHWM
and the largest VmRSS sampled each second, apart from its children's, e.g. py-spy while the agent
samples a stack, and the tree's):
  flopwatch run            real NVML at 1 Hz, everything on (GPM, per-process, host), energy
                           counter every 10 s (the default), no history store; again reading
                           the counters every tick; and again as the default configuration
                           runs it, with the history store (a new SQLite file; SQLAlchemy and
                           the first start's schema stamp are resident from then on)
  nvidia-smi --query-gpu   7 coarse fields, -l 1
  nvidia-smi dmon          its default set, every second
  nvitop-exporter          --interval 1, if importable (wheels from --wheels-dir)
A GPU process (bf16 matmuls in bursts) runs throughout so the per-process readers have one to read.

    python3 bench/gpu_agent_cost.py [--seconds 60] [--wheels-dir DIR] [--tools 'every 10 s,nvitop']
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time

from common import (agent_env, compile_imports, final, free_port, history_store_args, install_wheels, measure,
                    skip_without_gpu, start_agent, start_gpu_load, stop, table, wait_ready)

TARGET_CORE_PERCENT = 0.5
TARGET_RSS_MB = 60.0
QUERY = "utilization.gpu,utilization.memory,memory.used,power.draw,temperature.gpu,clocks.sm,clocks.mem"
DEFAULT_AGENT = "flopwatch run (counters every 10 s)"  # the one the targets are for
SETTLE_SECONDS = 3.0  # after start-up, before the window: imports and first reads are not steady state


def flopwatch(energy_every_tick: bool = False, history: bool = False):
    def start() -> subprocess.Popen:
        if energy_every_tick:
            os.environ["FLOPWATCH_AGENT_COUNTER_INTERVAL_SECONDS"] = "0"
        try:
            return start_agent(["--interval", "1", *(history_store_args() if history else [])], free_port())
        finally:
            os.environ.pop("FLOPWATCH_AGENT_COUNTER_INTERVAL_SECONDS", None)
    return start


def command(*argv: str):
    def start() -> subprocess.Popen:
        return subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return start


def nvitop_exporter() -> subprocess.Popen:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "nvitop_exporter", "--bind-address", "127.0.0.1",
                                "--port", str(port), "--interval", "1"],
                               env=agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_ready(process, f"http://127.0.0.1:{port}/metrics")
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per tool")
    parser.add_argument("--wheels-dir", help="wheels to install (pip --target) first: APScheduler, nvitop, …")
    parser.add_argument("--no-load", action="store_true", help="do not start a GPU process")
    parser.add_argument("--only-flopwatch", action="store_true", help="measure flopwatch alone, not the others")
    parser.add_argument("--tools", help="only the tools whose names contain one of these comma-separated words, "
                                        "e.g. 'every 10 s,nvitop' (the default agent beside nvitop-exporter)")
    args = parser.parse_args()
    skip_without_gpu()
    install_wheels(args.wheels_dir)
    compile_imports()  # as installed: bytecode compiled, for the agent and the tools beside it

    tools = [(DEFAULT_AGENT, flopwatch()),
             ("flopwatch run (counters every tick)", flopwatch(energy_every_tick=True)),
             ("flopwatch run (+ SQLite history store)", flopwatch(history=True))]
    smi = None if args.only_flopwatch else shutil.which("nvidia-smi")
    if smi:
        tools += [("nvidia-smi --query-gpu (7 fields) -l 1", command(smi, f"--query-gpu={QUERY}", "--format=csv", "-l", "1")),
                  ("nvidia-smi dmon", command(smi, "dmon"))]
    skipped = [] if smi else ["nvidia-smi: skipped: not installed"]
    if args.only_flopwatch:
        skipped = []
    elif importlib.util.find_spec("nvitop_exporter") is not None:
        tools.append(("nvitop-exporter --interval 1", nvitop_exporter))
    else:
        skipped.append("nvitop-exporter: skipped: not installed")

    if args.tools:
        words = [w.strip() for w in args.tools.split(",") if w.strip()]
        tools = [(name, start) for name, start in tools if any(w in name for w in words)]
    load = None if args.no_load else start_gpu_load()
    rows, results = [], {}
    try:
        for name, start in tools:
            try:
                process = start()
            except (SystemExit, OSError) as e:  # one tool that cannot start does not end the comparison
                skipped.append(f"{name}: failed to start: {str(e)[-300:]}")
                continue
            try:
                time.sleep(SETTLE_SECONDS)
                cost = measure(process, args.seconds)
            finally:
                stop(process)
            results[name] = cost
            rows.append([name, cost["cpu_seconds"], cost["core_percent"], cost["own_core_percent"],
                         cost["children_cpu_seconds"], cost["own_peak_rss_mb"], cost["own_max_rss_mb"],
                         cost["children_peak_rss_mb"], cost["peak_rss_mb"]])
    finally:
        if load is not None:
            stop(load)
    print(f"each alone for {args.seconds:g} s at 1 Hz, measured from outside (CPU of the process tree; RSS of the "
          "process alone, of its children, of the tree)")
    print(table(["tool", "CPU s", "% of one core", "own % of one core", "children CPU s", "own VmHWM MB",
                 "own VmRSS max MB", "children VmHWM MB", "tree VmHWM MB"], rows))
    for line in skipped:
        print(line)
    target = f"≤ {TARGET_CORE_PERCENT:g} %, ≤ {TARGET_RSS_MB:g} MB"
    ours = results.get(DEFAULT_AGENT)
    if ours is None:
        final("gpu_agent_cost", f"not measured: {DEFAULT_AGENT} failed to start or was left out", target)
    else:
        print(f"{DEFAULT_AGENT}: its own resident MB by mapping at the window's end: "
              + ", ".join(f"{name} {mb:.1f}" for name, mb in ours["own_rss_by_mapping"]))
        nvitop = results.get("nvitop-exporter --interval 1")
        beside = (f", {ours['core_percent'] / nvitop['core_percent']:.2f}× nvitop-exporter's CPU"
                  if nvitop and nvitop["core_percent"] > 0 else "")
        final("gpu_agent_cost", f"{ours['core_percent']:.2f} % of one core ({ours['own_core_percent']:.2f} % its own, "
              f"{ours['children_cpu_seconds']:.2f} CPU s its py-spy children){beside}, {ours['own_peak_rss_mb']:.0f} MB of "
              f"its own (children {ours['children_peak_rss_mb']:.0f} MB) without the history store", target)


if __name__ == "__main__":
    main()
