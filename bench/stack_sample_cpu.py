"""What one stack sample costs the node's CPU: py-spy's CPU seconds per sample of a job.

The job is the GPU load the other benchmarks run (bf16 matmuls in bursts; needs torch and a GPU)
or, without them, a Python process busy in a loop. Each round samples it as the agent does
(``record_args``: 2 s at 20 Hz, non-blocking, idle threads; no ``--subprocesses`` for a job
without children) and as it did before, looking for children anyway; in alternating order, then
again with --extra-processes sleeping processes started beside it, as a node's other processes
(py-spy looks for children by reading every process's stat file ten times a second). CPU is
user + system time of the reaped py-spy process. Beside it, the agent's own CPU to learn whether
the job has children before each sample: the kernel's children files, and psutil's scan of every
process (what it used before).

    PYTHONPATH=agent python3 bench/stack_sample_cpu.py [--rounds 5] [--extra-processes 1000]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import psutil

from common import final, has_nvidia_gpu, has_torch_cuda, start_gpu_load, stop, table

from flopwatch.config import StacksConfig
from flopwatch.sources.stacks import find_py_spy, has_children, record_args

BUSY = """
import sys, time
sys.version  # py-spy reads the version Python fills in when first asked
print("ready", flush=True)
while True:
    sum(i * i for i in range(10000))
"""


AGENT = "as the agent samples it (no children: none looked for)"
BEFORE = "looking for children (before)"


def start_job() -> tuple[subprocess.Popen, str]:
    if has_nvidia_gpu() and has_torch_cuda():
        load = start_gpu_load()
        if load is not None:
            return load, "GPU load (bf16 matmuls in bursts, torch)"
    job = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
    job.stdout.readline()
    return job, "a Python loop"


def sample_cpu_seconds(args: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"py-spy failed: {done.stderr.strip().splitlines()[:1]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def lookup_cpu_ms(look: Callable[[], object], times: int = 20) -> float:
    started = time.process_time()
    for _ in range(times):
        look()
    return (time.process_time() - started) / times * 1000


def processes_on_node() -> int:
    return sum(name.isdigit() for name in os.listdir("/proc"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--extra-processes", type=int, default=1000)
    args = parser.parse_args()
    binary = find_py_spy()
    if binary is None:
        print("skipped: py-spy is not installed")
        return
    settings = StacksConfig()
    job, what = start_job()
    extra: list[subprocess.Popen] = []
    rows, lookups, per_sample = [], [], {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, "raw")
            for crowd in (0, args.extra_processes):
                while len(extra) < crowd:
                    extra.append(subprocess.Popen(["sleep", "3600"]))
                node = processes_on_node()
                ways = {AGENT: record_args(binary, job.pid, settings, out, children=False),
                        BEFORE: record_args(binary, job.pid, settings, out, children=True)}
                seconds: dict[str, list[float]] = {name: [] for name in ways}
                for round_ in range(args.rounds):
                    order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
                    for name in order:
                        seconds[name].append(sample_cpu_seconds(ways[name]))
                lookups.append((node, lookup_cpu_ms(lambda: has_children(job.pid)),
                                lookup_cpu_ms(lambda: psutil.Process(job.pid).children())))
                for name, values in seconds.items():
                    per_sample[(crowd, name)] = statistics.median(values)
                    rows.append((node, name, min(values), statistics.median(values), max(values)))
    finally:
        for process in extra:
            process.kill()
            process.wait()
        stop(job)
    print(f"job: {what}; py-spy {settings.duration_seconds:g} s at {settings.rate_hz} Hz, {args.rounds} rounds")
    print(table(("processes on the node", "sampled", "CPU s min", "median", "max"), rows))
    print(table(("processes on the node", "has children? CPU ms (children files)", "psutil's scan"), lookups))
    agent, before = per_sample[(args.extra_processes, AGENT)], per_sample[(args.extra_processes, BEFORE)]
    final("stack_sample_cpu", f"{agent:.3f} CPU s a sample as the agent takes it, {before:.3f} looking for "
          f"children, with {args.extra_processes} more processes on the node", "as small as it can be")


if __name__ == "__main__":
    main()
