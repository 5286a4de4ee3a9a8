"""Soak: the agent on simulated GPUs for a long run with a fault every few seconds, to show that
memory, file descriptors, threads and CPU stay flat and ticks keep their cadence.

    python3 bench/soak.py [--minutes 30] [--gpus 8] [--processes 128] [--interval 1] [--fault-every 20]
                          [--flap-every 60] [--alertmanager]

Runs the agent in this process (the product path of ``flopwatch run`` minus the process boundary:
build_agent, the scheduler, the HTTP server, a SQLite history store, and with --alertmanager the
Alertmanager sink posting to a real Alertmanager on loopback) and scrapes /metrics and
/api/v1/status every interval. Faults take turns, one at a time, on a rotating GPU: GPU lost,
power NotSupported, an NVML call blocking for the fault's length, malformed HTTP requests, slow
clients holding connections open. With --flap-every, half the GPUs swap between a healthy job and
one under the threshold each period, so findings and alerts start and end all run long. Prints
RSS, open file descriptors, threads and the CPU share of the last minute each minute, the first
and last values (the first after a warm-up), RSS growth over the second half of the run, and a
final line.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "agent"), str(ROOT)]

import pynvml  # noqa: E402

from flopwatch.history.store import HistoryStore  # noqa: E402
from flopwatch.outputs.alerting import AlertmanagerSink, StoreOutbox  # noqa: E402
from flopwatch.sources.simulated import SCENARIOS  # noqa: E402
from tests.faults import live  # noqa: E402
from tests.servers.prometheus import Alertmanager, start_alertmanager  # noqa: E402

MIB = 2**20


@dataclass
class Reading:
    seconds: float
    rss_bytes: int
    fds: int
    threads: int
    python_blocks: int  # objects Python holds: flat here and RSS growing would point at C memory
    ticks: int
    cpu_seconds: float  # this process's user + system time so far


@dataclass
class SoakResult:
    first: Reading
    last: Reading
    ticks: int
    expected_ticks: int
    max_tick_gap_seconds: float
    faults: int
    ticks_with_two_gpus_down: int
    dropped_rows: int
    readings: list[Reading]
    flaps: int = 0
    alerts_received: int = 0

    def rss_growth_mib_per_hour(self) -> float:
        """Least-squares slope of RSS over the readings of the run's second half."""
        half = [r for r in self.readings if r.seconds >= self.last.seconds / 2]
        if len(half) < 2:
            return 0.0
        mean_t = sum(r.seconds for r in half) / len(half)
        mean_rss = sum(r.rss_bytes for r in half) / len(half)
        num = sum((r.seconds - mean_t) * (r.rss_bytes - mean_rss) for r in half)
        den = sum((r.seconds - mean_t) ** 2 for r in half)
        return num / den * 3600 / MIB if den else 0.0


class Faults:
    """The fault schedule: each ``start`` injects the next kind on the next GPU; ``end`` undoes it."""

    kinds_in_turn = ("_lost", "_not_supported", "_blocked", "_bad_requests", "_slow_clients")

    def __init__(self, agent: live.LiveAgent, gpus: int, hold_seconds: float) -> None:
        self.agent = agent
        self.hold_seconds = hold_seconds
        kinds = [getattr(self, name) for name in self.kinds_in_turn]
        self._next = zip(itertools.cycle(kinds), itertools.cycle(range(gpus)))
        self._undo: Callable[[], None] | None = None
        self.count = 0

    def start(self) -> None:
        kind, gpu = next(self._next)
        self._undo = kind(gpu)
        self.count += 1

    def end(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    def _heal(self, gpu: int) -> Callable[[], None]:
        return lambda: self.agent.lib.heal(gpu)

    def _lost(self, gpu: int) -> Callable[[], None]:
        self.agent.lib.fail(gpu)
        return self._heal(gpu)

    def _not_supported(self, gpu: int) -> Callable[[], None]:
        self.agent.lib.fail(gpu, "nvmlDeviceGetPowerUsage", code=pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._heal(gpu)

    def _blocked(self, gpu: int) -> Callable[[], None]:
        self.agent.lib.fail(gpu, "nvmlDeviceGetUtilizationRates", code=None, block_seconds=self.hold_seconds)
        return self._heal(gpu)

    def _bad_requests(self, gpu: int) -> Callable[[], None]:
        for request in (b"\x00\xff garbage\r\n\r\n", b"GET /metrics HTTP/9.9\r\n\r\n",
                        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"BREW /metrics HTTP/1.1\r\n\r\n"):
            with socket.create_connection(self.agent.server.server_address[:2], timeout=10) as s:
                s.sendall(request)
                s.recv(1024)
        return lambda: None

    def _slow_clients(self, gpu: int) -> Callable[[], None]:
        held = []
        for _ in range(20):
            s = socket.create_connection(self.agent.server.server_address[:2], timeout=10)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            held.append(s)

        def close() -> None:
            for s in held:
                s.close()
        return close


class TickStats:
    """A sink that counts ticks in constant memory (a soak's own growth would read as the agent's):
    the last tick and when it came, the longest gap, and the ticks with two GPUs down."""

    name = "tickstats"

    def __init__(self) -> None:
        self.last = 0
        self.last_at: float | None = None
        self.max_gap = 0.0
        self.two_down = 0

    def record(self, state) -> None:
        now = time.monotonic()
        if self.last_at is not None:
            self.max_gap = max(self.max_gap, now - self.last_at)
        self.last, self.last_at = state.ticks, now
        self.two_down += sum(g.sample.error is not None for g in state.gpus) > 1


class Flaps:
    """Half the GPUs (the odd ones) swap between a healthy job and one under the threshold, in turn
    through the causes, so findings, pages and their ends keep coming."""

    under = ("input_starved", "memory_bound", "held_idle", "launch_bound", "io_bound", "contention")

    def __init__(self, agent: live.LiveAgent, gpus: int) -> None:
        self.agent = agent
        self.gpus = [g for g in range(gpus) if g % 2]
        self.baseline = {g: agent.lib.scenario_of(g) for g in self.gpus}
        self._causes = itertools.cycle(self.under)
        self.healthy = False
        self.count = 0

    def flip(self) -> None:
        self.healthy = not self.healthy
        for g in self.gpus:
            self.agent.lib.set_scenario(g, "healthy" if self.healthy else next(self._causes))
        self.count += 1


def reading(started: float, agent: live.LiveAgent) -> Reading:
    return Reading(time.monotonic() - started, live.rss_bytes(), live.open_fds(), threading.active_count(),
                   sys.getallocatedblocks(), agent.ticks.last, sum(os.times()[:2]))  # the log keeps the last ticks


def soak(seconds: float, *, gpus: int = 8, processes: int = 128, interval: float = 1.0,
         fault_every: float = 20.0, flap_every: float = 0.0, alertmanager: bool = False, history: bool = True,
         report: Callable[[str], None] = print) -> SoakResult:
    # Whatever ran before in this process (a test suite) may still hold descriptors its garbage
    # would close mid-run: collect it first, so the counts are the agent's alone.
    gc.collect()
    scenarios = list(itertools.islice(itertools.cycle(SCENARIOS), gpus))
    config = live.simulated_config(scenarios, processes=processes, interval=interval)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        config.history.url = f"sqlite:///{tmp}/history.db"
        store = HistoryStore.from_config(config.history, "soak")
        sinks: list = [store] if history else []
        am = None
        if alertmanager:
            am = stack.enter_context(start_alertmanager(Path(tmp)))
            config.alerting.alertmanager_urls = [am.url]
            config.diagnosis.alert_after_seconds = 30.0
            sinks.append(AlertmanagerSink(config, outbox=StoreOutbox(store) if history else None).start())
        stats = TickStats()
        agent = live.start(config, sinks=[*sinks, stats], keep_ticks=60)
        try:
            return _run(agent, stats, store, seconds, gpus, interval, fault_every, flap_every, am, report)
        finally:
            agent.stop()


def _run(agent: live.LiveAgent, stats: TickStats, store: HistoryStore, seconds: float, gpus: int, interval: float,
         fault_every: float, flap_every: float, am: Alertmanager | None, report: Callable[[str], None]) -> SoakResult:
    started = time.monotonic()
    first_tick = stats.last
    stats.max_gap = stats.two_down = 0
    faults = Faults(agent, gpus, hold_seconds=min(fault_every / 2, 10.0))
    flaps = Flaps(agent, gpus)
    next_flap = started + flap_every if flap_every > 0 else float("inf")
    readings: list[Reading] = []
    alerts_seen: set[tuple] = set()
    previous = reading(started, agent)
    # The first reading waits until the store has flushed and every kind of fault has run once.
    warm_up = min(max(seconds / 10, 2 * store.flush_interval_seconds), seconds / 2)
    first: Reading | None = None
    next_fault, next_report = started + fault_every / 4, started + 60.0
    fault_active = False
    while (now := time.monotonic()) < started + seconds:
        if now >= next_fault:
            if fault_active:
                faults.end()
                next_fault += fault_every / 2
            else:
                faults.start()
                next_fault += fault_every / 2
            fault_active = not fault_active
        if now >= next_flap:
            flaps.flip()
            next_flap += flap_every
        if first is None and now - started >= warm_up and not fault_active:
            first = reading(started, agent)
            report(_line("first", first))
        if now >= next_report:
            r = reading(started, agent)
            readings.append(r)
            report(_line("at", r, previous))
            previous = r
            next_report += 60.0
            if am is not None:
                alerts_seen |= {(a["labels"].get("gpu"), a["labels"].get("cause"), a["startsAt"]) for a in am.alerts()}
        # Scraped after the readings, so no scrape's connection is open while they are taken.
        agent.get("/metrics")
        agent.get("/api/v1/status")
        time.sleep(max(interval - (time.monotonic() - now), 0.0))
    faults.end()
    live.wait_for(lambda: not any(t.name.startswith("nvml-gpu") for t in threading.enumerate()), timeout=30)
    store.flush()
    last = reading(started, agent)
    readings.append(last)
    report(_line("last", last, previous))
    return SoakResult(
        first=first or last, last=last, ticks=stats.last - first_tick,
        expected_ticks=int(seconds / interval),
        max_tick_gap_seconds=stats.max_gap,
        faults=faults.count,
        ticks_with_two_gpus_down=stats.two_down,
        dropped_rows=store.dropped_rows_total, readings=readings, flaps=flaps.count,
        alerts_received=len(alerts_seen),
    )


def _line(label: str, r: Reading, before: Reading | None = None) -> str:
    cpu = ""
    if before is not None and r.seconds > before.seconds:
        cpu = f"  cpu {100 * (r.cpu_seconds - before.cpu_seconds) / (r.seconds - before.seconds):5.1f} %"
    return (f"{label:>5} t={r.seconds:7.1f}s  rss {r.rss_bytes / MIB:6.1f} MiB  fds {r.fds:3d}  "
            f"threads {r.threads:3d}  python blocks {r.python_blocks}  ticks {r.ticks}{cpu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--processes", type=int, default=128, help="processes per GPU")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks")
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds from one fault to the next")
    parser.add_argument("--flap-every", type=float, default=0.0,
                        help="seconds between swaps of the odd GPUs' jobs (healthy / under the threshold); 0: off")
    parser.add_argument("--alertmanager", action="store_true", help="post alerts to a real Alertmanager on loopback")
    parser.add_argument("--no-history", action="store_true", help="without the SQLite history store")
    args = parser.parse_args()
    print(f"soak: {args.gpus} GPUs x {args.processes} processes, interval {args.interval:g} s, "
          f"{'no history, ' if args.no_history else ''}"
          f"{args.minutes:g} min, a fault every {args.fault_every:g} s (held half of that)", flush=True)
    r = soak(args.minutes * 60, gpus=args.gpus, processes=args.processes, interval=args.interval,
             fault_every=args.fault_every, flap_every=args.flap_every, alertmanager=args.alertmanager,
             history=not args.no_history,
             report=lambda line: print(line, flush=True))
    print(f"soak done: {r.ticks} ticks (expected {r.expected_ticks}), max tick gap {r.max_tick_gap_seconds:.2f} s, "
          f"{r.faults} faults, ticks with two GPUs down {r.ticks_with_two_gpus_down}, "
          f"history rows dropped {r.dropped_rows}, "
          f"rss {r.first.rss_bytes / MIB:.1f} -> {r.last.rss_bytes / MIB:.1f} MiB, fds {r.first.fds} -> {r.last.fds}, "
          f"python blocks {r.first.python_blocks} -> {r.last.python_blocks}, "
          f"threads {r.first.threads} -> {r.last.threads}, {r.flaps} flaps, {r.alerts_received} alerts received, "
          f"rss growth over the second half {r.rss_growth_mib_per_hour():+.2f} MiB/hour",
          flush=True)


if __name__ == "__main__":
    main()
