"""What one tick costs on a real GPU, against the floor: the same NVML calls in a bare loop.

(a) floor: per GPU, exactly the calls NvmlGpu.read makes (GPM sample + metrics, utilization,
    memory, power, SM and memory clocks, temperature, clock-event reasons, throttle field values,
    compute processes; the energy counter, throttle field values and process utilization every
    5 s, as the agent reads them), nothing else.
(b) flopwatch: Agent.tick() (NvmlSource.read, host read, derive, diagnose) and one /metrics render.
Both tick every --period seconds, in alternating blocks; CPU per tick is process_time (user +
system, all threads), wall per tick is perf_counter. Then (c): two readers side by side, one
reading the energy counter every tick and one every 5 s (power integrated between): CPU per tick
and the joules each counted.

    python3 bench/gpu_tick_floor.py [--ticks 300] [--period 0.1] [--energy-seconds 40]
"""

from __future__ import annotations

import argparse
import time

from common import final, skip_without_gpu, start_gpu_load, stop, table

TARGET_RATIO = 1.3
ENERGY_INTERVAL_SECONDS = 5.0


class Floor:
    """The NVML calls of one tick, each guarded as the product guards them, and nothing more."""

    def __init__(self, pynvml, index: int):
        from flopwatch.sources.nvml import GPM_RATES, GPM_RATIOS, THROTTLE_FIELDS

        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.gpm_ids = [getattr(pynvml, c) for c in {**GPM_RATIOS, **GPM_RATES}.values() if hasattr(pynvml, c)]
        self.field_ids = [getattr(pynvml, c) for c in THROTTLE_FIELDS.values() if hasattr(pynvml, c)]
        self.previous = self._gpm_sample()
        self.counters_at = time.monotonic()
        self.last_seen = 0

    def _try(self, fn, *args):
        try:
            return fn(*args)
        except self.nvml.NVMLError:
            return None

    def _gpm_sample(self):
        sample = self._try(self.nvml.nvmlGpmSampleAlloc)
        if sample is None or self._try(self.nvml.nvmlGpmSampleGet, self.handle, sample) is None:
            return None
        return sample

    def tick(self) -> None:
        n, h = self.nvml, self.handle
        if self.previous is not None:
            current = self._gpm_sample()
            if current is not None:
                request = n.c_nvmlGpmMetricsGet_t()
                request.version = n.NVML_GPM_METRICS_GET_VERSION
                request.numMetrics = len(self.gpm_ids)
                request.sample1, request.sample2 = self.previous, current
                for i, metric_id in enumerate(self.gpm_ids):
                    request.metrics[i].metricId = metric_id
                self._try(n.nvmlGpmMetricsGet, request)
                self._try(n.nvmlGpmSampleFree, self.previous)
                self.previous = current
        self._try(n.nvmlDeviceGetUtilizationRates, h)
        self._try(n.nvmlDeviceGetMemoryInfo, h)
        self._try(n.nvmlDeviceGetPowerUsage, h)
        self._try(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM)
        self._try(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM)
        self._try(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU)
        self._try(n.nvmlDeviceGetCurrentClocksEventReasons, h)
        self._try(n.nvmlDeviceGetComputeRunningProcesses, h)
        now = time.monotonic()
        if now - self.counters_at >= ENERGY_INTERVAL_SECONDS:
            # The costly counters, at the agent's cadence for them.
            self.counters_at = now
            self._try(n.nvmlDeviceGetTotalEnergyConsumption, h)
            if self.field_ids:
                self._try(n.nvmlDeviceGetFieldValues, h, self.field_ids)
            samples = self._try(n.nvmlDeviceGetProcessUtilization, h, self.last_seen)
            for s in samples or []:
                self.last_seen = max(self.last_seen, s.timeStamp)


def timed_block(step, ticks: int, period: float) -> tuple[float, float]:
    """CPU and wall seconds spent in ``step`` over ``ticks`` ticks, one every ``period``."""
    cpu = wall = 0.0
    next_at = time.monotonic()
    for _ in range(ticks):
        next_at += period
        c0, w0 = time.process_time(), time.perf_counter()
        step()
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        time.sleep(max(next_at - time.monotonic(), 0.0))
    return cpu, wall


def floor_vs_agent(ticks: int, period: float) -> tuple[list, float]:
    import pynvml
    from flopwatch.cli import build_agent
    from flopwatch.config import Config
    from prometheus_client import generate_latest

    config = Config()
    built = build_agent(config)
    registry = built.exporter.registry()
    floors = [Floor(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]

    def floor_tick() -> None:
        for f in floors:
            f.tick()

    render_cpu = [0.0]

    def agent_tick() -> None:
        built.agent.tick()
        start = time.process_time()
        generate_latest(registry)
        render_cpu[0] += time.process_time() - start

    totals = {"floor": [0.0, 0.0], "flopwatch": [0.0, 0.0]}
    blocks = 4
    for _ in range(2):  # warm both paths (first GPM sample, psutil caches)
        floor_tick()
        agent_tick()
    render_cpu[0] = 0.0
    for _ in range(blocks):
        for name, step in (("floor", floor_tick), ("flopwatch", agent_tick)):
            cpu, wall = timed_block(step, ticks // blocks, period)
            totals[name][0] += cpu
            totals[name][1] += wall
    for g in built.agent.state.gpus:  # what was really read: GPM or coarse, and what the driver refused
        s = g.sample
        print(f"GPU {s.info.index} {s.info.name}: source {s.source_quality}, {len(s.processes)} process(es), "
              f"unsupported: {', '.join(s.unsupported) or 'none'}")
    built.agent.close()
    n = (ticks // blocks) * blocks
    rows = [[name, n, 1000 * cpu / n, 1000 * wall / n] for name, (cpu, wall) in totals.items()]
    ratio = totals["flopwatch"][0] / totals["floor"][0]
    rows.append(["ratio", "", ratio, totals["flopwatch"][1] / totals["floor"][1]])
    # Prometheus renders once per scrape (every 15 s or so), not every tick: the tick alone too.
    tick_only = totals["flopwatch"][0] - render_cpu[0]
    rows.append(["ratio, tick without render", "", tick_only / totals["floor"][0], ""])
    gpus = len(floors)
    print(f"(a) floor vs (b) flopwatch, {gpus} GPU(s), {n} ticks each every {period:g} s, alternating blocks")
    return rows, ratio


def energy_cadence(seconds: float, period: float) -> list:
    from flopwatch.sources.nvml import NvmlSource

    every_tick = NvmlSource(counter_interval_seconds=0.0)
    cadence = NvmlSource(counter_interval_seconds=ENERGY_INTERVAL_SECONDS)
    cpu = {"every tick": 0.0, f"every {ENERGY_INTERVAL_SECONDS:g} s": 0.0}
    last: dict[str, list] = {}
    ticks = 0
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        next_at += period
        for name, source in zip(cpu, (every_tick, cadence)):
            c0 = time.process_time()
            last[name] = source.read()
            cpu[name] += time.process_time() - c0
        ticks += 1
        time.sleep(max(next_at - time.monotonic(), 0.0))
    every_tick.close()
    rows = []
    reference = sum(s.energy_joules or 0.0 for s in last["every tick"])
    for name in cpu:
        joules = sum(s.energy_joules or 0.0 for s in last[name])
        rows.append([name, ticks, 1000 * cpu[name] / ticks, joules,
                     100.0 * (joules - reference) / reference if reference else float("nan")])
    print(f"(c) the energy counter read every tick vs every {ENERGY_INTERVAL_SECONDS:g} s, {seconds:g} s at "
          f"{1 / period:g} Hz, same GPUs, same time (the every-tick total is the counter's own)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=300, help="per path")
    parser.add_argument("--period", type=float, default=0.1, help="seconds between ticks")
    parser.add_argument("--energy-seconds", type=float, default=40.0)
    parser.add_argument("--no-load", action="store_true", help="do not start a GPU process")
    args = parser.parse_args()
    skip_without_gpu()

    load = None if args.no_load else start_gpu_load()
    try:
        rows, ratio = floor_vs_agent(args.ticks, args.period)
        print(table(["path", "ticks", "CPU ms/tick", "wall ms/tick"], rows))
        print()
        print(table(["energy read", "ticks", "CPU ms/tick", "joules", "diff %"],
                    energy_cadence(args.energy_seconds, args.period)))
    finally:
        if load is not None:
            stop(load)
    final("gpu_tick_ratio", f"{ratio:.2f}× the NVML floor's CPU per tick", f"≤ {TARGET_RATIO:g}×")


if __name__ == "__main__":
    main()
