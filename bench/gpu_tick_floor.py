"""What one tick costs on a real GPU, against the floor: the same NVML calls in a bare loop.

(a) floor: per GPU, exactly the NVML calls NvmlGpu.read makes (one GPM sample and one metrics
    request with the active NVLink links' metrics, utilization, memory, power, SM and memory
    clocks, temperature, clock-event reasons, compute processes; the energy counter, throttle
    field values, process utilization and PCIe link width every counter interval, as the agent
    reads them), on the calling thread, nothing else.
(b) flopwatch: Agent.tick() as `flopwatch run` makes it with its default configuration: each GPU
    read on the tick's thread, the host read (/proc, every counter interval), derive, diagnosis
    (every evaluation interval), token accounting, process views, and the history store's sink
    (a SQLite file in a temporary folder) queueing the tick's rows. Writing them is the store's
    own job, every few seconds, not the tick's, and is counted by gpu_agent_cost.py.
Both run once a period, half a period apart, in alternating order, at the agent's cadence (1 s)
and then ten times faster, where the 30 s diagnosis window holds ten times the ticks. CPU is process_time
(user + system of every thread of this process). A /metrics render is not part of a tick: the
server renders once per scrape (every 15 s or so), so it is reported on its own. Then (c): the
energy counter read every tick and every counter interval, side by side: CPU per tick and joules.

    python3 bench/gpu_tick_floor.py [--seconds 300] [--fast-seconds 30] [--energy-seconds 40] [--profile]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import Timed, final, history_store_url, skip_without_gpu, start_gpu_load, stop, table
from flopwatch.sources import counter_period
from flopwatch.sources.nvml import GPM_RATES, GPM_RATIOS, THROTTLE_FIELDS, gpm_results

TARGET_RATIO = 1.3
FAST_PERIOD = 0.1
SCRAPE_SECONDS = 15.0


class Floor:
    """The NVML calls of one GPU's read, each guarded as the product guards them, and nothing more."""

    def __init__(self, pynvml, index: int, counter_interval_seconds: float):
        n = self.nvml = pynvml
        self.handle = n.nvmlDeviceGetHandleByIndex(index)
        self.counter_interval_seconds = counter_interval_seconds
        self.metric_ids = [getattr(n, c) for c in {**GPM_RATIOS, **GPM_RATES}.values() if hasattr(n, c)]
        for link in range(getattr(n, "NVML_NVLINK_MAX_LINKS", 0)):  # the active links, as at open
            names = (f"NVML_GPM_METRIC_NVLINK_L{link}_TX_PER_SEC", f"NVML_GPM_METRIC_NVLINK_L{link}_RX_PER_SEC")
            if not all(hasattr(n, name) for name in names):
                break
            if self._try(n.nvmlDeviceGetNvLinkState, self.handle, link) == n.NVML_FEATURE_ENABLED:
                self.metric_ids += [getattr(n, name) for name in names]
        self.field_ids = [getattr(n, c) for c in THROTTLE_FIELDS.values() if hasattr(n, c)]
        self.request = n.c_nvmlGpmMetricsGet_t()  # set up once, as the agent's
        self.request.version = n.NVML_GPM_METRICS_GET_VERSION
        self.request.numMetrics = len(self.metric_ids)
        for i, metric_id in enumerate(self.metric_ids):
            self.request.metrics[i].metricId = metric_id
        self.previous = self._gpm_sample()
        self.counters_period = counter_period(time.monotonic(), counter_interval_seconds)
        self.counter_reads = 0
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

    def tick(self, read_answers: bool = False) -> None:
        """The calls; with ``read_answers``, also the fields of their answers the agent reads."""
        n, h = self.nvml, self.handle
        metrics = None
        if self.previous is not None:
            current = self._gpm_sample()
            if current is not None:
                self.request.sample1, self.request.sample2 = self.previous, current
                metrics = self._try(n.nvmlGpmMetricsGet, self.request)
                self._try(n.nvmlGpmSampleFree, self.previous)
                self.previous = current
        rates = self._try(n.nvmlDeviceGetUtilizationRates, h)
        memory = self._try(n.nvmlDeviceGetMemoryInfo, h)
        self._try(n.nvmlDeviceGetPowerUsage, h)
        self._try(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM)
        self._try(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM)
        self._try(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU)
        self._try(n.nvmlDeviceGetCurrentClocksEventReasons, h)
        processes = self._try(n.nvmlDeviceGetComputeRunningProcesses, h)
        if read_answers:
            if metrics is not None:
                gpm_results(metrics, len(self.metric_ids))
            _ = rates.gpu if rates is not None else None, memory.used if memory is not None else None
            _ = {p.pid: p.usedGpuMemory for p in processes or []}
        period = counter_period(time.monotonic(), self.counter_interval_seconds)
        if period != self.counters_period:
            # The costly counters, on the first tick of each counter period, as the agent reads them.
            self.counters_period = period
            self.counter_reads += 1
            self._try(n.nvmlDeviceGetTotalEnergyConsumption, h)
            if self.field_ids:
                self._try(n.nvmlDeviceGetFieldValues, h, self.field_ids)
            samples = self._try(n.nvmlDeviceGetProcessUtilization, h, self.last_seen)
            for s in samples or []:
                self.last_seen = max(self.last_seen, s.timeStamp)
            self._try(n.nvmlDeviceGetCurrPcieLinkWidth, h)


def cpu_of(step) -> float:
    start = time.process_time()
    step()
    return time.process_time() - start


@dataclass
class Interleaved:
    ticks: int
    floor_cpu: float
    agent_cpu: float
    # The pairs that open a counter period, where both sides read the costly counters:
    # (which side went first, the floor's CPU, the agent's CPU).
    counter_pairs: list[tuple[str, float, float]] = field(default_factory=list)


def interleaved(floor_tick, agent_tick, seconds: float, period: float, counter_interval: float = 0.0) -> Interleaved:
    """Both steps once a period, half a period apart, in alternating order. Not back to back: the
    energy counter's cost depends on how long ago it was last read, so a read right after the
    other side's would cost it what the other did not pay. For the same reason the side that reads
    the costly counters first in a counter period alternates too: a period holds an even number of
    ticks, so by tick parity alone one side would go first in every period of a run."""
    ticks = max(int(seconds / period), 2)
    next_at = time.monotonic()
    if counter_interval > 0:  # a quarter period into a counter period: its first pair holds both reads
        next_at = (counter_period(next_at, counter_interval) + 1) * counter_interval + period / 4
        time.sleep(max(next_at - time.monotonic(), 0.0))
    run = Interleaved(ticks, 0.0, 0.0)
    last_period = None
    for i in range(ticks):
        counters = counter_period(next_at, counter_interval) if counter_interval > 0 else 0
        order = (("floor", floor_tick), ("agent", agent_tick))[::1 if (i + counters) % 2 else -1]
        spent = {}
        for name, step in order:
            spent[name] = cpu_of(step)
            next_at += period / 2
            time.sleep(max(next_at - time.monotonic(), 0.0))
        run.floor_cpu += spent["floor"]
        run.agent_cpu += spent["agent"]
        if counter_interval > 0 and counters != last_period:  # the first pair opens one too
            run.counter_pairs.append((order[0][0], spent["floor"], spent["agent"]))
        last_period = counters
    return run


def counter_pairs_by_order(name: str, pairs: list[tuple[str, float, float]]) -> list:
    """Mean CPU of the counter-reading ticks, each side, by whether it read first or second."""
    rows = []
    for side, cpu_at in (("floor", 1), ("agent", 2)):
        row = [name if side == "floor" else "", side]
        for first in (True, False):
            picked = [p[cpu_at] for p in pairs if (p[0] == side) == first]
            row += [len(picked), 1000 * sum(picked) / len(picked) if picked else float("nan")]
        rows.append(row)
    return rows


def floor_vs_agent(seconds: float, fast_seconds: float, profile: bool) -> tuple[list, list, float]:
    import pynvml
    from flopwatch.commands.build import build_agent, run_sinks
    from flopwatch.config import Config
    from prometheus_client import generate_latest

    config = Config()
    config.history.url = history_store_url()
    built = build_agent(config, sinks=run_sinks(config))
    agent = built.agent
    agent.gpu_source = gpu = Timed(agent.gpu_source)
    agent.host_source = host = Timed(agent.host_source)
    registry = built.exporter.registry()
    floors = [Floor(pynvml, i, config.agent.counter_interval_seconds) for i in range(pynvml.nvmlDeviceGetCount())]

    def floor_tick() -> None:
        for f in floors:
            f.tick()

    agent_counter_reads = 0

    def agent_tick() -> None:
        nonlocal agent_counter_reads
        before = [g.counters_period for g in nvml_gpus]
        agent.tick()
        agent_counter_reads += sum(g.counters_period != b for g, b in zip(nvml_gpus, before))

    for _ in range(3):  # warm both paths (first GPM sample, psutil caches, first process list)
        floor_tick()
        agent.tick()
    gc.freeze()  # as `flopwatch run` does after its first tick
    nvml_gpus = [g for g in gpu.source.gpus if g is not None]
    rows, pair_rows = [], []
    ratio = float("nan")
    for name, period, span in (("agent's cadence", config.agent.interval_seconds, seconds),
                               ("10× faster", FAST_PERIOD, fast_seconds)):
        gpu.seconds = host.seconds = 0.0
        floor_reads, agent_counter_reads = sum(f.counter_reads for f in floors), 0
        run = interleaved(floor_tick, agent_tick, span, period, config.agent.counter_interval_seconds)
        ticks, floor_cpu, agent_cpu = run.ticks, run.floor_cpu, run.agent_cpu
        floor_reads = sum(f.counter_reads for f in floors) - floor_reads
        rest = agent_cpu - gpu.seconds - host.seconds
        window = len(agent._gpus[0].window) if agent._gpus else 0
        label = f"{name}: every {period:g} s, {window} ticks in the window, costly counters read " \
                f"{floor_reads} × (floor) and {agent_counter_reads} × (flopwatch), " \
                f"the floor first {sum(p[0] == 'floor' for p in run.counter_pairs)} times"
        rows += [
            [label, "floor: the NVML calls alone", ticks, 1000 * floor_cpu / ticks, ""],
            ["", "flopwatch: Agent.tick()", ticks, 1000 * agent_cpu / ticks, agent_cpu / floor_cpu],
            ["", "  NVML reads (NvmlSource.read)", "", 1000 * gpu.seconds / ticks, gpu.seconds / floor_cpu],
            ["", "  host (psutil, /proc)", "", 1000 * host.seconds / ticks, ""],
            ["", "  derive, diagnose, tokens, views", "", 1000 * rest / ticks, ""],
        ]
        pair_rows += counter_pairs_by_order(f"every {period:g} s", run.counter_pairs)
        if name == "agent's cadence":
            ratio = agent_cpu / floor_cpu
    renders = 20
    render = sum(cpu_of(lambda: generate_latest(registry)) for _ in range(renders)) / renders
    rows.append(["a /metrics render, once per scrape", f"per tick at a scrape every {SCRAPE_SECONDS:g} s", "",
                 1000 * render * config.agent.interval_seconds / SCRAPE_SECONDS, ""])
    rows.append(["", "one render", renders, 1000 * render, ""])
    for g in agent.state.gpus:  # what was really read: GPM or coarse, and what the driver refused
        s = g.sample
        print(f"GPU {s.info.index} {s.info.name}: source {s.source_quality}, {len(s.processes)} process(es), "
              f"{len(s.nvlink_links)} active NVLink link(s), unsupported: {', '.join(s.unsupported) or 'none'}")
    if profile:
        print_profile(agent, gpu.source, floors)
    agent.close()
    shutil.rmtree(Path(config.history.url.removeprefix("sqlite:///")).parent, ignore_errors=True)
    print(f"(a) floor vs (b) flopwatch, {len(floors)} GPU(s), once a period each, alternating order")
    return rows, pair_rows, ratio


def print_profile(agent, source, floors, ticks: int = 300) -> None:
    """Where the time goes, every 0.1 s: one GPU's read, alone and as the tick makes it, against
    the floor; then the Python profiles of a tick (its calling thread) and of a read."""
    import cProfile
    import pstats

    gpu = source.gpus[0]
    steps = {"floor": floors[0].tick, "NvmlGpu.read, inline": lambda: gpu.read(time.time()),
             "NvmlSource.read, as the tick makes it": source.read}
    cpu = {name: interleaved(step, lambda: None, ticks * FAST_PERIOD, FAST_PERIOD).floor_cpu for name, step in steps.items()}
    print(table(["one GPU", "CPU ms/read"], [[name, 1000 * c / ticks] for name, c in cpu.items()]))
    for name, step in (("Agent.tick", agent.tick), ("NvmlGpu.read", lambda: gpu.read(time.time()))):
        profiler = cProfile.Profile(time.process_time)  # CPU, not the waits for the reader thread
        next_at = time.monotonic()
        for _ in range(ticks):
            next_at += FAST_PERIOD
            profiler.runcall(step)
            time.sleep(max(next_at - time.monotonic(), 0.0))
        print(f"{name}, {ticks} calls every {FAST_PERIOD:g} s, by own CPU time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def energy_cadence(seconds: float, period: float, counter_interval: float) -> list:
    from flopwatch.sources.nvml import NvmlSource

    every_tick = NvmlSource(counter_interval_seconds=0.0)
    cadence = NvmlSource(counter_interval_seconds=counter_interval)
    cpu = {"every tick": 0.0, f"every {counter_interval:g} s": 0.0}
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
    cadence.close()
    rows = []
    reference = sum(s.energy_joules or 0.0 for s in last["every tick"])
    for name in cpu:
        joules = sum(s.energy_joules or 0.0 for s in last[name])
        rows.append([name, ticks, 1000 * cpu[name] / ticks, joules,
                     100.0 * (joules - reference) / reference if reference else float("nan")])
    print(f"(c) the energy counter read every tick vs every {counter_interval:g} s, {seconds:g} s at "
          f"{1 / period:g} Hz, same GPUs, same time (the every-tick total is the counter's own)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Long: the costly counters (the energy counter alone ~6 ms of CPU, varying by milliseconds)
    # come once every 10 s; runs of 120 s, a dozen reads a side, spread from 1.12× to 1.44×.
    parser.add_argument("--seconds", type=float, default=300.0, help="at the agent's cadence")
    parser.add_argument("--fast-seconds", type=float, default=30.0, help=f"at one tick every {FAST_PERIOD:g} s")
    parser.add_argument("--energy-seconds", type=float, default=40.0)
    parser.add_argument("--profile", action="store_true", help="then profile 300 fast ticks of the agent")
    parser.add_argument("--no-load", action="store_true", help="do not start a GPU process")
    args = parser.parse_args()
    skip_without_gpu()
    from flopwatch.config import Config

    load = None if args.no_load else start_gpu_load()
    try:
        rows, pair_rows, ratio = floor_vs_agent(args.seconds, args.fast_seconds, args.profile)
        print(table(["cadence", "path", "ticks", "CPU ms/tick", "× floor"], rows))
        print("\nthe ticks that read the costly counters, by whether the side read them first or second")
        print(table(["cadence", "side", "first", "CPU ms", "second", "CPU ms"], pair_rows))
        print()
        agent = Config().agent
        print(table(["energy read", "ticks", "CPU ms/tick", "joules", "diff %"],
                    energy_cadence(args.energy_seconds, agent.interval_seconds, agent.counter_interval_seconds)))
    finally:
        if load is not None:
            stop(load)
    final("gpu_tick_ratio", f"{ratio:.2f}× the NVML floor's CPU per tick at the agent's cadence", f"≤ {TARGET_RATIO:g}×")


if __name__ == "__main__":
    main()
