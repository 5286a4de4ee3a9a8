"""An agent on simulated GPUs running in this process: the product path of ``flopwatch run``
(build_agent, the scheduler, the HTTP server) minus the process boundary, so a test can inject
NVML faults into the running agent's library and read what it exports."""

from __future__ import annotations

import collections
import os
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterable

from prometheus_client.parser import text_string_to_metric_families

from flopwatch.commands.build import build_agent
from flopwatch.config import Config
from flopwatch.daemon import schedule
from flopwatch.model import AgentState
from flopwatch.outputs.server import MetricsServer
from flopwatch.outputs.status_document import status_document
from tests.agent_process import wait_for


class TickLog:
    """A sink that keeps, for each recent tick, its count and every GPU's error (None if read)."""

    name = "ticklog"

    def __init__(self, keep: int = 10_000) -> None:
        self.ticks: collections.deque[tuple[int, float, dict[int, str | None]]] = collections.deque(maxlen=keep)

    def record(self, state: AgentState) -> None:
        self.ticks.append((state.ticks, time.monotonic(), {g.sample.info.index: g.sample.error for g in state.gpus}))

    def since(self, tick: int) -> list[dict[int, str | None]]:
        return [errors for n, _, errors in list(self.ticks) if n > tick]

    @property
    def last(self) -> int:
        return self.ticks[-1][0] if self.ticks else 0


@dataclass
class LiveAgent:
    agent: Any
    lib: Any
    server: MetricsServer
    scheduler: Any
    ticks: TickLog
    sinks: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.status, response.read().decode()

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """The /metrics page as {(sample name, sorted labels): value}."""
        _, text = self.get("/metrics")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def gpu_up(self) -> dict[str, float]:
        return {dict(labels)["gpu"]: value for (name, labels), value in self.metrics().items()
                if name == "flopwatch_gpu_up"}

    def wait_ticks(self, count: int, timeout: float = 30.0) -> list[dict[int, str | None]]:
        """The GPUs' errors in the next ``count`` ticks."""
        start = self.ticks.last
        wait_for(lambda: self.ticks.last >= start + count, timeout)
        return self.ticks.since(start)[:count]

    def stop(self) -> None:
        if not self.scheduler.running:
            return
        self.scheduler.shutdown(wait=True)
        self.server.shutdown()
        self.server.server_close()
        self.agent.close()


def simulated_config(scenarios: list[str], *, gpus_per_scenario: int = 1, processes: int = 1,
                     interval: float = 0.2) -> Config:
    config = Config()
    config.agent.simulate = list(scenarios)
    config.agent.simulate_gpus = gpus_per_scenario
    config.agent.simulate_processes = processes
    config.agent.interval_seconds = interval
    config.agent.listen = "127.0.0.1:0"
    config.history.url = "none"
    return config


def start(config: Config, sinks: Iterable[Any] = (), keep_ticks: int = 10_000) -> LiveAgent:
    """Build, tick once, schedule and serve, as ``flopwatch run`` does; the last ``keep_ticks`` are logged."""
    ticks = TickLog(keep_ticks)
    sinks = [*sinks, ticks]
    built = build_agent(config, sinks=sinks)
    agent = built.agent
    server = MetricsServer(config.agent.listen, built.exporter.registry(),
                           lambda: status_document(agent.state, agent.hostname))
    agent.tick()
    scheduler = schedule(agent, config.agent.interval_seconds)
    server.start()
    return LiveAgent(agent, built.lib, server, scheduler, ticks, sinks)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
