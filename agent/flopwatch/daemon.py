"""The agent: one tick (sources → derive → diagnose → sinks) on an APScheduler interval job.

Sources and sinks are each timed and guarded by the same wrapper, so one failing collector is a
``0`` on ``flopwatch_collector_success{collector}`` and a log line, never a lost tick.

GPUs are read on the tick's thread, so an NVML call that blocks holds its tick. The scheduler
then starts the next tick beside it (one blocked tick per GPU at most: a GPU being read is not
read again); a tick that a later one began during its reads is dropped when they return.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Protocol

from flopwatch.config import Config
from flopwatch.judge.allocation import Holding
from flopwatch.judge.derive import derive
from flopwatch.judge.diagnose import (DiagnosisState, Peers, Tick, TickWindow, diagnose, job_peers, loader_saturated_pids,
                                      waste_seconds)
from flopwatch.model import (AgentState, Allocation, Finding, GpuFigures, GpuSample, GpuState, HostSample, PodContainer, ProcessView,
                             StackProfile, TokenCount)
from flopwatch.judge.stackclass import corroborate
from flopwatch.judge.tokencost import Prices, TokenAccount

log = logging.getLogger(__name__)

_ALONE = Peers()  # a GPU sharing no job with another
# Causes on the host's side of the GPU: the culprit's Python stacks can say what it does instead.
HOST_SIDE = frozenset({"input_starved", "launch_bound", "io_bound", "host_transfer_bound", "held_idle",
                       "low_demand", "unknown"})


class GpuSource(Protocol):
    name: str

    def read(self) -> list[GpuSample]: ...


class HostReader(Protocol):
    name: str

    def read(self, pids: Iterable[int], timestamp: float) -> HostSample: ...


class TokenReader(Protocol):
    name: str

    def snapshot(self) -> tuple[TokenCount, ...]: ...


class StackReader(Protocol):
    def request(self, key: int, pids: Iterable[int]) -> None: ...

    def latest(self, key: int) -> StackProfile | None: ...


class PodReader(Protocol):
    name: str
    answer: Any  # sources.pod_resources.PodAnswer: holders by device id, ok, seconds


class SlurmReader(Protocol):
    name: str
    answer: Any  # sources.slurm.SlurmAnswer: holders by GPU minor number, ok, seconds, answered


class Sink(Protocol):
    name: str

    def record(self, state: AgentState) -> None: ...


class _PerGpu:
    """What the agent carries from tick to tick for one GPU."""

    def __init__(self) -> None:
        self.previous: GpuSample | None = None
        self.window = TickWindow()
        self.pending: list[tuple[GpuSample, GpuFigures, HostSample, Peers, Holding | None]] = []  # since the last evaluation
        # The process views and what they were made of: the readers hand back the very same
        # processes while nothing changed, and so are the views.
        self.views: tuple[tuple, Mapping, tuple[ProcessView, ...]] = ((), {}, ())
        self.diagnosis = DiagnosisState()
        # By cause; replaced, never changed, when it grows: the states handed out keep theirs.
        self.wasted: dict[str, float] = {}
        self.stacks_asked: tuple[str, tuple[int, ...]] | None = None  # (cause, pids) a sample was asked for
        # The processes the culprits were picked from, and them: the same until NVML's next read.
        self.culprits: tuple[tuple, tuple[int, ...]] = ((), ())
        # The diagnosis's finding and the stacks it was corroborated with, and the result.
        self.corroborated: tuple[Finding | None, StackProfile | None, Finding | None] = (None, None, None)


class Agent:
    def __init__(
        self,
        config: Config,
        gpu_source: GpuSource,
        host_source: HostReader,
        sinks: Iterable[Sink] = (),
        *,
        tokens: TokenReader | None = None,
        stacks: StackReader | None = None,
        pods: PodReader | None = None,
        slurm: SlurmReader | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.gpu_source = gpu_source
        self.host_source = host_source
        self.sinks = list(sinks)
        self.tokens = tokens
        self.stacks = stacks
        self.pods = pods
        self.slurm = slurm
        t = config.tokens
        self.token_account = TokenAccount(t.window_seconds, Prices(t.price_per_gpu_hour, t.price_per_kwh))
        self.clock = clock
        self.wall_clock = wall_clock
        self.hostname = config.agent.node_name()
        self.state: AgentState | None = None
        self._gpus: dict[int, _PerGpu] = {}
        self._ticks = 0
        self._begun = 0  # ticks started; a tick publishes only if none began after it
        self._closed = False
        self._lock = threading.Lock()  # one tick publishes at a time
        self._evaluated_at = -math.inf
        self._saturated: tuple[Mapping | None, frozenset[int]] = (None, frozenset())
        self.last_tick_at: float | None = None

    def _timed(self, name: str, success: dict, seconds: dict, fn: Callable, *args: Any) -> Any:
        start = self.clock()
        try:
            result = fn(*args)
            success[name] = True
            return result
        except Exception:
            log.exception("collector %s failed", name)
            success[name] = False
            return None
        finally:
            seconds[name] = self.clock() - start

    def tick(self) -> AgentState:
        """Read, derive, diagnose and publish; the state published last."""
        with self._lock:
            self._begun += 1
            mine = self._begun
        success: dict[str, bool] = {}
        seconds: dict[str, float] = {}
        timestamp = self.wall_clock()
        samples = self._timed(self.gpu_source.name, success, seconds, self.gpu_source.read) or []
        with self._lock:
            if mine != self._begun or self._closed:
                # A later tick began while this one waited on an NVML call: these readings are older.
                log.info("a tick held up %.1f s by an NVML call is dropped", self.wall_clock() - timestamp)
                return self.state
            return self._publish(timestamp, samples, success, seconds)

    def _publish(self, timestamp: float, samples: list[GpuSample], success: dict[str, bool],
                 seconds: dict[str, float]) -> AgentState:
        pids = {p.pid for s in samples for p in s.processes}
        host = self._timed(self.host_source.name, success, seconds, self.host_source.read, pids, timestamp)
        host = host or HostSample(timestamp=timestamp, cpu_count=0, cpu_busy_ratio=None, iowait_ratio=None)
        # Whether a job's other GPUs are under-used too is known from the previous tick.
        peers = job_peers(self.state.gpus, self._loader_saturated(self.state.host)) if self.state is not None else {}
        now = self.clock()
        evaluate = now - self._evaluated_at >= self.config.diagnosis.evaluation_interval_seconds
        if evaluate:
            self._evaluated_at = now
        holders: Mapping[str, tuple[PodContainer, ...]] = {}
        jobs: Mapping[int, Allocation] = {}
        # Whether a scheduler has said who holds the GPUs (then a GPU nobody holds is free), and
        # whether it is Slurm (which answers for every process).
        scheduled = slurm_says = False
        # Read on their own jobs: a tick only takes the last answers.
        if self.pods is not None:
            answer = self.pods.answer
            holders, success[self.pods.name], seconds[self.pods.name] = answer.holders, answer.ok, answer.seconds
            scheduled = answer.ok or bool(answer.holders)
        if self.slurm is not None:
            answer = self.slurm.answer
            jobs, success[self.slurm.name], seconds[self.slurm.name] = answer.holders, answer.ok, answer.seconds
            slurm_says = answer.answered
            scheduled = scheduled or slurm_says
        gpus = tuple(self._advance(sample, host, peers.get(sample.info.index, _ALONE), evaluate, pods,
                                   _holding(jobs.get(sample.info.minor_number), pods, slurm_says) if scheduled else None)
                     for sample in samples for pods in (holders.get(sample.info.uuid, ()),))
        if self.tokens is not None:
            counts = self._timed(self.tokens.name, success, seconds, self.tokens.snapshot) or ()
            figures = self.token_account.advance(counts, gpus, timestamp)
            if figures:
                # Built anew rather than with dataclasses.replace, which looks up the fields each call.
                gpus = tuple(GpuState(sample=g.sample, figures=g.figures, finding=g.finding,
                                      below_threshold=g.below_threshold, wasted_seconds=g.wasted_seconds,
                                      processes=g.processes, tokens=figures.get(g.sample.info.index),
                                      window=g.window, pods=g.pods, allocation=g.allocation) for g in gpus)
        self._ticks += 1
        self.state = AgentState(
            hostname=self.hostname, timestamp=timestamp, ticks=self._ticks, gpus=gpus, host=host,
            collector_success=success, collector_seconds=seconds,
            unattributed_tokens=dict(self.token_account.unattributed),
        )
        for sink in self.sinks:
            self._timed(sink.name, success, seconds, sink.record, self.state)
        self.last_tick_at = self.clock()
        return self.state

    def _loader_saturated(self, host: HostSample) -> frozenset[int]:
        # Host readings are handed back unchanged between their counter reads: so is this.
        if self._saturated[0] is not host.processes:
            self._saturated = (host.processes, loader_saturated_pids(host, self.config.diagnosis.cpu_saturated_ratio))
        return self._saturated[1]

    def _advance(self, sample: GpuSample, host: HostSample, peers: Peers, evaluate: bool,
                 pods: tuple[PodContainer, ...], holding: Holding | None) -> GpuState:
        th = self.config.diagnosis
        per = self._gpus.get(sample.info.index)
        if per is None:
            per = self._gpus[sample.info.index] = _PerGpu()
        if sample.error is not None:
            per.previous = None
            per.window.clear()
            per.pending.clear()
            per.diagnosis = DiagnosisState()
            return GpuState(sample=sample, figures=None, finding=None, below_threshold=False,
                            wasted_seconds=per.wasted, pods=pods, allocation=holding and holding.allocation)
        figures = derive(sample, per.previous)
        per.previous = sample
        per.pending.append((sample, figures, host, peers, holding))
        if evaluate:
            # Ticks enter the window together and are diagnosed once: run once a second, each
            # tick's pass over the window and its rules costs several times what it does in a batch.
            last = per.window.ticks.last if len(per.window) else None
            for parts in per.pending:
                last = Tick(*parts, like=last)
                per.window.append(last, th.window_seconds)
            per.pending.clear()
            per.diagnosis = diagnose(per.window, th, per.diagnosis)
        finding = self._with_stacks(per, sample, per.diagnosis.finding)
        # A GPU no job holds and nothing runs on is spare capacity, not waste.
        free = holding is not None and holding.free and not sample.processes
        waste = None if free else waste_seconds(figures, finding, th)
        if waste is not None:
            cause, wasted = waste
            per.wasted = {**per.wasted, cause: per.wasted.get(cause, 0.0) + wasted}
        return GpuState(
            sample=sample, figures=figures, finding=finding, below_threshold=waste is not None,
            wasted_seconds=per.wasted, processes=self._views(per, sample, host), window=per.diagnosis.window,
            pods=pods, allocation=holding and holding.allocation,
        )

    def _with_stacks(self, per: _PerGpu, sample: GpuSample, finding: Finding | None) -> Finding | None:
        """The finding, corroborated by its processes' stacks where a host-side cause is current:
        asked for once per cause and set of processes, taken off this thread, attached when done."""
        if self.stacks is None or finding is None or finding.cause not in HOST_SIDE:
            return finding
        if per.culprits[0] is not sample.processes:
            per.culprits = (sample.processes, _culprits(sample))
        pids = per.culprits[1]
        if per.stacks_asked != (finding.cause, pids):
            per.stacks_asked = (finding.cause, pids)
            self.stacks.request(sample.info.index, pids)
        profile = self.stacks.latest(sample.info.index)
        if profile is not None and (not set(profile.pids) <= set(pids) or
                                    sample.timestamp - profile.timestamp > self.config.stacks.min_interval_seconds):
            profile = None  # another job's, or too old to speak for this one
        seen, seen_profile, result = per.corroborated
        if seen is not finding or seen_profile is not profile:
            result = corroborate(finding, profile)
            per.corroborated = (finding, profile, result)
        return result

    @staticmethod
    def _views(per: _PerGpu, sample: GpuSample, host: HostSample) -> tuple[ProcessView, ...]:
        processes, host_processes, views = per.views
        if sample.processes is not processes or host.processes is not host_processes:
            views = _process_views(sample, host)
            per.views = (sample.processes, host.processes, views)
        return views

    @property
    def blocked(self) -> bool:
        """Whether a tick is inside an NVML call now."""
        return bool(getattr(self.gpu_source, "blocked", False))

    def close(self) -> None:
        with self._lock:  # a tick publishing finishes first; one still reading is dropped
            self._closed = True
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing %s failed", sink.name)
        for source in (self.tokens, self.gpu_source, self.host_source, self.stacks):
            closer = getattr(source, "close", None)
            if closer is not None:
                closer()


def _holding(job: Allocation | None, pods: tuple[PodContainer, ...], slurm_says: bool) -> Holding:
    """Who holds one GPU: its Slurm job, else its pod (the first, where time-slicing gives it to several)."""
    allocation = job or (Allocation("kubernetes", pods[0].job, namespace=pods[0].namespace) if pods else None)
    return Holding(allocation, frozenset({p.job for p in pods} | ({job.job} if job else set())), slurm_says)


def _culprits(sample: GpuSample) -> tuple[int, ...]:
    """The GPU's two processes most likely to explain it: the busiest on the SMs, then the
    largest holders of memory."""
    ranked = sorted(sample.processes, key=lambda p: (-(p.sm_ratio or 0.0), -(p.used_memory_bytes or 0), p.pid))
    return tuple(p.pid for p in ranked[:2])


def _process_views(sample: GpuSample, host: HostSample) -> tuple[ProcessView, ...]:
    views = []
    for p in sample.processes:
        h = host.processes.get(p.pid)
        views.append(ProcessView(
            pid=p.pid,
            job=(h.job if h is not None and h.job else f"pid:{p.pid}"),
            user=h.user if h is not None else None,
            cmdline=h.cmdline if h is not None else "",
            sm_ratio=p.sm_ratio,
            memory_bytes=p.used_memory_bytes,
            cpu_ratio=h.cpu_ratio if h is not None else None,
            identity=h.identity if h is not None else None,
        ))
    return tuple(views)


def schedule(agent: Agent, interval_seconds: float) -> Any:
    """Start the tick, and the sinks' own periodic jobs (flush, rollup, retention), on a
    background scheduler; returns it (``shutdown()`` to stop)."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    # A tick blocked in NVML holds a thread and its GPU, and the next tick starts beside it: at
    # most one blocked tick per GPU, and one running.
    ticks = len(agent.state.gpus) + 1 if agent.state is not None else 2
    jobs = [(agent.tick, interval_seconds, ticks)]
    # Sinks' own work, the token scraper and the pod-resources reader run on their own jobs: a slow
    # one never delays a tick.
    for part in (*agent.sinks, agent.tokens, agent.pods, agent.slurm):
        jobs += [(fn, seconds, 1) for fn, seconds in getattr(part, "jobs", list)()]
    scheduler = BackgroundScheduler(daemon=True, executors={
        "default": ThreadPoolExecutor(sum(instances for _, _, instances in jobs))})
    for fn, seconds, instances in jobs:
        # APScheduler wants a whole number of seconds of grace; a late tick runs once, not twice.
        scheduler.add_job(fn, "interval", seconds=seconds, max_instances=instances, coalesce=True,
                          misfire_grace_time=max(math.ceil(seconds), 1))
    scheduler.start()
    return scheduler
