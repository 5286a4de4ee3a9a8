"""CPU cost of each NVML call the agent makes per tick, on this machine's GPU 0 (a busy one if
a workload runs). Prints a table, then the agent's own tick profiled (top functions)."""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

import pynvml as n  # noqa: E402

from flopwatch.sources import nvml as reader  # noqa: E402


def cost(fn, *args, repeat: int = 50) -> float:
    start = time.process_time()
    for _ in range(repeat):
        try:
            fn(*args)
        except n.NVMLError:
            pass
    return (time.process_time() - start) / repeat * 1e6


def main() -> None:
    n.nvmlInit()
    h = n.nvmlDeviceGetHandleByIndex(0)
    throttle_ids = [getattr(n, c) for c in reader.THROTTLE_FIELDS.values()]
    prev, cur = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
    n.nvmlGpmSampleGet(h, prev)

    def gpm() -> None:
        n.nvmlGpmSampleGet(h, cur)
        req = n.c_nvmlGpmMetricsGet_t()
        req.version = n.NVML_GPM_METRICS_GET_VERSION
        req.numMetrics = 13
        req.sample1, req.sample2 = prev, cur
        for i, m in enumerate([1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 60, 61]):
            req.metrics[i].metricId = m
        n.nvmlGpmMetricsGet(req)

    rows = [
        ("GPM sample + metrics", cost(gpm)),
        ("utilization rates", cost(n.nvmlDeviceGetUtilizationRates, h)),
        ("memory info", cost(n.nvmlDeviceGetMemoryInfo, h)),
        ("power", cost(n.nvmlDeviceGetPowerUsage, h)),
        ("energy counter", cost(n.nvmlDeviceGetTotalEnergyConsumption, h, repeat=10)),
        ("clock SM", cost(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM)),
        ("temperature", cost(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU)),
        ("clock event reasons", cost(n.nvmlDeviceGetCurrentClocksEventReasons, h)),
        ("field values (throttle counters)", cost(n.nvmlDeviceGetFieldValues, h, throttle_ids)),
        ("compute processes", cost(n.nvmlDeviceGetComputeRunningProcesses, h)),
        ("process utilization", cost(n.nvmlDeviceGetProcessUtilization, h, int((time.time() - 1) * 1e6))),
    ]
    print(f"{'NVML call':34} {'CPU us/call':>11}")
    for name, us in rows:
        print(f"{name:34} {us:11.0f}")

    from flopwatch.config import Config
    from flopwatch.daemon import Agent
    from flopwatch.sources.host import HostSource

    agent = Agent(Config(), reader.NvmlSource(), HostSource())
    for _ in range(3):
        agent.tick()
        time.sleep(0.2)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(20):
        agent.tick()
        time.sleep(0.05)
    profile.disable()
    print("\nagent tick, 20 ticks, top functions by own time:")
    pstats.Stats(profile).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
