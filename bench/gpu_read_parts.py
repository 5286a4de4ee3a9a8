"""Where one GPU's read costs more than the floor: the floor, the floor reading the fields of its
answers the agent reads, NvmlGpu.read and NvmlSource.read, in rotating order, evenly spaced.

With ``--counter-interval 0`` every step reads the costly counters each round, and with
``--back-to-back`` the four follow one another: the energy counter's CPU (milliseconds) then
shows how much it depends on how recently the GPU's counter was read.

    python3 bench/gpu_read_parts.py [--seconds 40] [--period 0.1] [--counter-interval 1e9] [--back-to-back]
"""

from __future__ import annotations

import argparse
import gc
import time

from common import final, skip_without_gpu, start_gpu_load, stop, table
from gpu_tick_floor import Floor, cpu_of


def read_parts(seconds: float, period: float, counter_interval: float,
               back_to_back: bool = False) -> dict[str, tuple[float, int]]:
    import pynvml
    from flopwatch.sources.nvml import NvmlSource

    source = NvmlSource(counter_interval_seconds=counter_interval)
    gpu = source.gpus[0]
    floor = Floor(pynvml, 0, counter_interval)
    steps = {
        "floor": floor.tick,
        "floor + answers read": lambda: floor.tick(read_answers=True),
        "NvmlGpu.read": lambda: gpu.read(time.time()),
        "NvmlSource.read (one GPU)": source.read,
    }
    for _ in range(5):
        for step in steps.values():
            step()
    gc.freeze()
    names = list(steps)
    cpu = dict.fromkeys(names, 0.0)
    rounds = 0
    next_at = time.monotonic()
    deadline = next_at + seconds
    while time.monotonic() < deadline:
        for name in names[rounds % len(names):] + names[:rounds % len(names)]:
            cpu[name] += cpu_of(steps[name])
            if not back_to_back:
                next_at += period / len(names)
                time.sleep(max(next_at - time.monotonic(), 0.0))
        if back_to_back:
            next_at += period
            time.sleep(max(next_at - time.monotonic(), 0.0))
        rounds += 1
    source.close()
    return {name: (cpu[name], rounds) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--period", type=float, default=0.1, help="seconds between rounds")
    parser.add_argument("--counter-interval", type=float, default=1e9,
                        help="seconds between costly counter reads; 0: every round")
    parser.add_argument("--back-to-back", action="store_true",
                        help="a round's steps one after another, then the rest of the period idle")
    parser.add_argument("--no-load", action="store_true", help="do not start a GPU process")
    args = parser.parse_args()
    skip_without_gpu()
    load = None if args.no_load else start_gpu_load()
    try:
        parts = read_parts(args.seconds, args.period, args.counter_interval, args.back_to_back)
    finally:
        if load is not None:
            stop(load)
    floor_cpu, rounds = parts["floor"]
    print(f"GPU 0, {rounds} rounds every {args.period:g} s, costly counters every {args.counter_interval:g} s")
    print(table(["step", "CPU ms/read", "× floor"],
                [[name, 1000 * cpu / n, cpu / floor_cpu] for name, (cpu, n) in parts.items()]))
    read_cpu = parts["NvmlGpu.read"][0]
    final("gpu_read_above_floor", f"{1000 * (read_cpu - floor_cpu) / rounds:.3f} ms a read above the floor", "none")


if __name__ == "__main__":
    main()
