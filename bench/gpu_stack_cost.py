"""What sampling a job's Python stacks costs the job: a PyTorch training loop, sampled and not.

The job, in its own process: a bf16 MLP (4 × 2048² layers, batch 512), forward, backward and
AdamW each step, its loss read with .item() every 10 steps, as a training loop logs; it prints
its step count every 0.1 s. Blocks alternate A (left alone) and B (sampled back to back, each
sample exactly as the agent takes one: ``StackSampler.sample``, py-spy for 2 s at 20 Hz,
non-blocking, idle threads and subprocesses included), --pairs times. The slowdown while sampled
is 1 − rate(B)/rate(A); the agent samples a process at most once per ``min_interval_seconds``
(600 s), so what a job pays over time is that slowdown × the share of time under a sample. The
noise is the A blocks' spread among themselves (their standard deviation over their mean).

    PYTHONPATH=agent python3 bench/gpu_stack_cost.py [--pairs 5] [--block-seconds 7] [--py-spy PATH]
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import subprocess
import sys
import threading
import time

from common import final, skip_without_gpu, table

from flopwatch.config import StacksConfig
from flopwatch.sources.stacks import StackSampler, find_py_spy

TARGET_PERCENT = 1.0

JOB = """
import sys, time, torch
torch.manual_seed(0)
layers = []
for _ in range(4):
    layers += [torch.nn.Linear(2048, 2048), torch.nn.GELU()]
model = torch.nn.Sequential(*layers).cuda().to(torch.bfloat16)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(512, 2048, device="cuda", dtype=torch.bfloat16)

def train_step(step):
    loss = model(x).float().pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if step % 10 == 0:
        return loss.item()

steps, reported = 0, time.monotonic()
while True:
    train_step(steps)
    steps += 1
    now = time.monotonic()
    if now - reported >= 0.1:
        print(f"{now} {steps}", flush=True)
        reported = now
"""


class StepLog:
    """The job's (monotonic time, steps so far) lines, read as they come."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.times: list[float] = []
        self.steps: list[int] = []
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            t, n = line.split()
            self.times.append(float(t))
            self.steps.append(int(n))

    def rate(self, start: float, end: float) -> float:
        """Steps per second between the first report after ``start`` and the last before ``end``."""
        i = bisect.bisect_left(self.times, start)
        j = bisect.bisect_right(self.times, end) - 1
        return (self.steps[j] - self.steps[i]) / (self.times[j] - self.times[i])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--block-seconds", type=float, default=7.0)
    parser.add_argument("--py-spy", default=find_py_spy(), help="the py-spy binary (default: beside python, then PATH)")
    args = parser.parse_args()
    skip_without_gpu()
    if not args.py_spy:
        print("skipped: no py-spy (pip install py-spy, or --py-spy PATH)")
        return
    settings = StacksConfig()
    sampler = StackSampler(settings, binary=args.py_spy)
    if sampler.unavailable:
        print(f"skipped: {sampler.unavailable}")
        return
    job = subprocess.Popen([sys.executable, "-c", JOB], stdout=subprocess.PIPE, text=True)
    try:
        log = StepLog(job)
        time.sleep(10.0)  # CUDA context, cuBLAS heuristics, clocks up
        if job.poll() is not None or not log.steps:
            raise SystemExit(f"the training job did not start (exit status {job.poll()})")
        rows, rates, samples = [], {"A": [], "B": []}, []
        for pair in range(args.pairs):
            for label in ("A", "B"):
                start = time.monotonic()
                while time.monotonic() - start < args.block_seconds:
                    if label == "B":
                        profile = sampler.sample((job.pid,))
                        samples.append(profile)
                    else:
                        time.sleep(0.1)
                end = time.monotonic()
                rate = log.rate(start, end)
                rates[label].append(rate)
                rows.append([pair + 1, "sampled" if label == "B" else "alone", round(end - start, 1), rate])
    finally:
        job.kill()
        job.wait()
    failed = [p.unavailable for p in samples if p.unavailable]
    if failed:
        raise SystemExit(f"sampling failed: {failed[0]}")
    a, b = statistics.mean(rates["A"]), statistics.mean(rates["B"])
    slowdown = 100.0 * (1.0 - b / a)
    noise = 100.0 * statistics.stdev(rates["A"]) / a if len(rates["A"]) > 1 else float("nan")
    duty = settings.duration_seconds / settings.min_interval_seconds
    top = samples[-1].stacks[0]
    print(f"{args.pairs} A/B pairs of {args.block_seconds:g} s; {len(samples)} samples of "
          f"{settings.duration_seconds:g} s at {settings.rate_hz} Hz, {samples[-1].samples} stacks in the last; "
          f"its top: {top.share:.0%} in {top.frames[0]}")
    print(table(["pair", "job", "seconds", "steps/s"], rows))
    print(f"while sampled: {slowdown:+.3f} % steps/s; at the agent's rate ({settings.duration_seconds:g} s every "
          f"{settings.min_interval_seconds:g} s at most): {slowdown * duty:+.4f} %; A blocks' std {noise:.3f} % of their mean")
    final("gpu_stack_cost", f"{slowdown:+.2f} % slower while sampled, {slowdown * duty:+.3f} % over time "
          f"(A-vs-A noise ±{noise:.2f} %)", f"< {TARGET_PERCENT:g} %")


if __name__ == "__main__":
    main()
