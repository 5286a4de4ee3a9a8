"""Tick cost and memory against GPUs and processes per GPU, on the simulated source.

Each point runs in a fresh interpreter: an agent over ``SimulatedNvml`` on a virtual clock (no
sleeping) ticks until its 30 s diagnosis window is full, then --ticks more are timed. Columns:
CPU per tick and its parts (GPU source, host source, the rest: derive, diagnose, process views),
one /metrics render, and resident memory. Cost should grow linearly in GPUs × processes: the last
column is the marginal cost of one GPU·process over the same GPU count with the fewest processes,
which is flat when the growth is linear. That base is a second agent in the same interpreter,
ticked in turn with the point's, so the difference is not the machine's speed moving between
points (on a shared VM it moves by tens of percent from one minute to the next).

Ticked back to back, a tick finds its code and data in the CPU's caches; on a node it runs once a
second, after other work has replaced them. ``--evict-caches`` writes a buffer larger than the
last-level cache between timed ticks, so the figures are those of a cold tick, as on a real GPU
node (docs/performance.md compares the two with an H200's).

    python3 bench/scale_curve.py [--gpus 1,2,4,8,16] [--processes 1,8,64,128,512] [--ticks 100] [--evict-caches]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import MB, Timed, final, table

WARMUP_SECONDS = 31  # one diagnosis window (30 s) and a tick, so the window is full when timing starts
EVICT_BYTES = 64 * 2**20  # more than the last-level cache of the machines this runs on


def simulated_agent(gpus: int, processes: int) -> tuple:
    """An agent over ``SimulatedNvml`` on its own virtual clock, its window full: (built, its timed
    GPU and host sources, a function that ticks it)."""
    from flopwatch.commands.build import VirtualClock, build_agent
    from flopwatch.config import Config

    config = Config()
    config.agent.simulate = ["healthy"]
    config.agent.simulate_gpus = gpus
    config.agent.simulate_processes = processes
    clock, wall = VirtualClock(0.0), VirtualClock(1.7e9)
    built = build_agent(config, clock=clock, wall_clock=wall)
    agent = built.agent
    agent.gpu_source = gpu = Timed(agent.gpu_source)
    agent.host_source = host = Timed(agent.host_source)
    interval = config.agent.interval_seconds

    def tick() -> None:
        clock.now += interval
        wall.now += interval
        agent.tick()

    for _ in range(int(WARMUP_SECONDS / interval)):
        tick()
    return built, gpu, host, tick


def one_point(gpus: int, processes: int, ticks: int, evict: bool = False, base_processes: int | None = None) -> dict:
    """CPU per tick of one point, its render and RSS; with ``base_processes``, also what it adds over
    that many processes per GPU, the two agents ticked in turn so both see the machine's same minutes."""
    from prometheus_client import generate_latest

    built, gpu, host, tick = simulated_agent(gpus, processes)
    registry = built.exporter.registry()
    start = time.process_time()
    renders = 5
    for _ in range(renders):
        generate_latest(registry)
    render = (time.process_time() - start) / renders
    with open("/proc/self/status") as f:  # before the base agent is built: this point's alone
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    steps = [tick]
    if base_processes is not None:
        steps.append(simulated_agent(gpus, base_processes)[3])
    gpu.seconds = host.seconds = 0.0
    sweep = bytearray(EVICT_BYTES) if evict else None
    spent = [0.0, 0.0]
    for i in range(ticks):
        for which in (range(len(steps)) if i % 2 else reversed(range(len(steps)))):
            if sweep is not None:
                sweep[::64] = bytes(len(sweep) // 64)  # a write to every cache line
            start = time.process_time()
            steps[which]()
            spent[which] += time.process_time() - start
    total = spent[0] / ticks
    added = (spent[0] - spent[1]) / ticks if base_processes is not None else None
    return {"tick": total, "gpu": gpu.seconds / ticks, "host": host.seconds / ticks, "render": render, "rss": rss,
            "added": added}


def run_point(gpus: int, processes: int, ticks: int, evict: bool, base_processes: int | None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", f"{gpus},{processes}", "--ticks", str(ticks),
                          *(["--evict-caches"] if evict else []),
                          *(["--base", str(base_processes)] if base_processes is not None else [])],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def fit(points: list[tuple[int, int, float]]) -> tuple[float, float, float, float]:
    """Least squares of ms = a + b·GPUs + c·GPU·procs over (GPUs, GPU·procs, ms) points, on
    relative errors (each point weighted by 1/ms, so small points count); also the largest
    residual relative to its point."""
    xs = [(1.0 / ms, g / ms, n / ms) for g, n, ms in points]
    ys = [1.0 for _ in points]
    ata = [[sum(x[i] * x[j] for x in xs) for j in range(3)] for i in range(3)]
    aty = [sum(x[i] * y for x, y in zip(xs, ys)) for i in range(3)]
    a, b, c = _solve(ata, aty)
    worst = max(abs(a + b * g + c * n - ms) / ms for g, n, ms in points)
    return a, b, c, worst


def _solve(m: list[list[float]], v: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (3 unknowns, no numpy needed)."""
    rows = [row[:] + [x] for row, x in zip(m, v)]
    n = len(rows)
    for i in range(n):
        pivot = max(range(i, n), key=lambda r: abs(rows[r][i]))
        rows[i], rows[pivot] = rows[pivot], rows[i]
        for r in range(i + 1, n):
            f = rows[r][i] / rows[i][i]
            rows[r] = [x - f * y for x, y in zip(rows[r], rows[i])]
    out = [0.0] * n
    for i in reversed(range(n)):
        out[i] = (rows[i][n] - sum(rows[i][j] * out[j] for j in range(i + 1, n))) / rows[i][i]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", default="1,2,4,8,16")
    parser.add_argument("--processes", default="1,8,64,128,512", help="processes per GPU")
    parser.add_argument("--ticks", type=int, default=100, help="timed ticks per point")
    parser.add_argument("--evict-caches", action="store_true",
                        help="evict the CPU's caches before each timed tick, as a second of other work does")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--base", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        gpus, processes = map(int, args.one.split(","))
        print(json.dumps(one_point(gpus, processes, args.ticks, args.evict_caches, args.base)))
        return

    gpu_counts = [int(v) for v in args.gpus.split(",")]
    process_counts = sorted(int(v) for v in args.processes.split(","))
    rows, marginals = [], []
    started = time.monotonic()
    fewest = process_counts[0]
    for g in gpu_counts:
        for p in process_counts:
            r = run_point(g, p, args.ticks, args.evict_caches, fewest if p > fewest else None)
            marginal = None
            if r["added"] is not None:
                added = g * (p - fewest)
                marginal = 1e6 * r["added"] / added
                marginals.append((g * p, r["added"], added))
            rows.append([g, p, g * p, 1e3 * r["tick"], 1e3 * r["gpu"], 1e3 * r["host"],
                         1e3 * (r["tick"] - r["gpu"] - r["host"]), 1e3 * r["render"], r["rss"] / MB,
                         "" if marginal is None else round(marginal, 1)])
    print(f"simulated source, virtual clock, CPU per tick over {args.ticks} ticks with a full window, "
          f"{'caches evicted before each' if args.evict_caches else 'back to back'} "
          f"({time.monotonic() - started:.0f} s)")
    print(table(["GPUs", "procs/GPU", "GPU·procs", "tick ms", "gpu src ms", "host ms", "rest ms", "render ms",
                 "RSS MB", "µs/GPU·proc"], rows))
    if len(set(gpu_counts)) > 1 and len(process_counts) > 1:  # else the fit has no unique answer
        fixed, per_gpu, per_unit, worst = fit([(r[0], r[2], r[3]) for r in rows])
        print(f"least squares: tick ms ≈ {fixed:.3f} + {per_gpu:.3f}·GPUs + {1000 * per_unit:.2f} µs·GPU·procs; "
              f"largest residual {100 * worst:.0f} % of the point")
    # Linear growth: the marginal cost of a GPU·process is the same for few and for many. Each
    # side's cost is its added CPU over its added GPU·processes, summed: a point that adds 7 of
    # them differs from its base by less than the noise, and a plain mean of the points' own
    # ratios would weigh it as much as one that adds thousands.
    large = [(spent, added) for n, spent, added in marginals if n >= 512]
    small = [(spent, added) for n, spent, added in marginals if n < 512]
    if large and small:
        small_us, large_us = (1e6 * sum(s for s, _ in side) / sum(a for _, a in side) for side in (small, large))
        ratio = large_us / small_us
        verdict = "linear" if 0.5 <= ratio <= 1.5 else "NOT linear"
        print(f"marginal µs per GPU·process: {small_us:.1f} below 512, {large_us:.1f} at 512 and above → {verdict}")
        final("scale_curve", f"{ratio:.2f}× marginal cost per GPU·process, large over small ({verdict})",
              "≈ 1×: linear")
    else:
        final("scale_curve", "n/a (need points below and at or above 512 GPU·processes)", "≈ 1×: linear")


if __name__ == "__main__":
    main()
