"""Does sampling slow the GPU? A bf16 training-like loop with the agent off and on, alternated.

The loop: a forward matmul and two backward-like matmuls on 8192² bf16 matrices, run for blocks
of a fixed number of iterations (calibrated to ~--block-seconds). Blocks alternate A (no agent)
and B (``flopwatch run`` at 1 Hz on real NVML, started before the block and stopped after it),
--pairs times. The slowdown is mean(B)/mean(A) − 1; the noise is the spread of the A blocks among
themselves (their standard deviation over their mean): a slowdown inside it is not measurable.

    python3 bench/gpu_overhead.py [--pairs 4] [--block-seconds 10] [--size 8192] [--wheels-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import final, free_port, install_wheels, skip_without_gpu, start_agent, stop, table

TARGET_PERCENT = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--block-seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--wheels-dir", help="wheels to install (pip --target) first: APScheduler, …")
    args = parser.parse_args()
    skip_without_gpu()
    install_wheels(args.wheels_dir)
    import torch

    n = args.size
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, n, device="cuda", dtype=torch.bfloat16) / n**0.5

    def step() -> None:
        y = x @ w  # forward
        y @ w.T  # gradient of the input
        x.T @ y  # gradient of the weights

    def run(iterations: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    run(20)  # cuBLAS heuristics, clocks up
    per_step = run(200) / 200
    iterations = max(int(args.block_seconds / per_step), 10)
    flops = 3 * 2 * n**3 * iterations

    rows, times = [], {"A": [], "B": []}
    for pair in range(args.pairs):
        for label in ("A", "B"):
            agent = start_agent(["--interval", "1"], free_port()) if label == "B" else None
            try:
                if agent is not None:
                    time.sleep(2.0)  # past start-up, into steady 1 Hz sampling
                seconds = run(iterations)
            finally:
                if agent is not None:
                    stop(agent)
            times[label].append(seconds)
            rows.append([pair + 1, "agent on" if agent is not None else "off", seconds, flops / seconds / 1e12])
    a, b = statistics.mean(times["A"]), statistics.mean(times["B"])
    slowdown = 100.0 * (b / a - 1.0)
    noise = 100.0 * statistics.stdev(times["A"]) / a if len(times["A"]) > 1 else float("nan")
    spread = 100.0 * (max(times["A"]) - min(times["A"])) / a
    print(f"{torch.cuda.get_device_name()}: {iterations} iterations a block (3 bf16 {n}² matmuls each), "
          f"{args.pairs} A/B pairs")
    print(table(["pair", "agent", "seconds", "TFLOP/s"], rows))
    print(f"slowdown {slowdown:+.3f} %; noise: A blocks' std {noise:.3f} % of their mean, spread (max−min) {spread:.3f} %")
    final("gpu_overhead", f"{slowdown:+.2f} % slowdown (A-vs-A noise ±{noise:.2f} %)", f"< {TARGET_PERCENT:g} %")


if __name__ == "__main__":
    main()
