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
from collections import deque
from typing import Any, Callable, Iterable, Mapping, Protocol

from flopwatch.config import Config
from flopwatch.judge.calibration import Calibrations
from flopwatch.judge.derive import SHIPPED, derive
from flopwatch.judge.diagnose import PHASES, DiagnosisState, diagnose, primary
from flopwatch.judge.ledger import Charge, WasteLedger
from flopwatch.judge.regime import Change, GpuTick, RegimeTracker, phase_onset
from flopwatch.judge.signals import Peers, Tick, TickWindow, job_peers, loader_saturated_pids, signals
from flopwatch.judge.stackclass import (HOST_SIDE, TRAINING_SEEN, GpuDuring, StackReading, corroborate,
                                        gpu_during, phase_shown, phase_turn, read_stacks, stack_summary)
from flopwatch.judge.tokencost import Prices, TokenAccount
from flopwatch.model import (AgentState, Allocation, Finding, GpuFigures, GpuSample, GpuState, HostSample, Holding,
                             PodContainer, ProcessView, StackProfile, TokenCount)
from flopwatch.thresholds import Thresholds

log = logging.getLogger(__name__)

_ALONE = Peers()  # a GPU sharing no job with another
_DIP = "dip"  # what a sample is asked for when a healthy segment's GPU falls under the threshold


def _busy(during: GpuDuring | None) -> bool:
    return during is not None and during.busy


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
    def request(self, key: int, pids: Iterable[int], new_segment: bool = False, phase: bool = False) -> bool: ...

    def latest(self, key: int) -> StackProfile | None: ...

    def taking(self, key: int) -> bool: ...


class PodReader(Protocol):
    name: str
    answer: Any  # sources.pod_resources.PodAnswer: holders by device id, ok, seconds


class PodOwnerReader(Protocol):
    name: str
    answer: Any  # sources.pod_metadata.OwnerAnswer: owners by (namespace, pod), ok, seconds


class SlurmReader(Protocol):
    name: str
    answer: Any  # sources.slurm.SlurmAnswer: holders by GPU minor number, ok, seconds, answered


class Sink(Protocol):
    """Also, where it keeps ticks: ``settle(charges by GPU index)``, the last charges at stop."""

    name: str

    def record(self, state: AgentState) -> None: ...


class _PerGpu:
    """What the agent carries from tick to tick for one GPU."""

    def __init__(self, hold_seconds: float, settle_seconds: float) -> None:
        self.previous: GpuSample | None = None
        self.window = TickWindow()
        self.recent = TickWindow()  # the last regime_change_seconds, judged alone to see a change of activity
        self.pending: list[tuple[GpuSample, GpuFigures, HostSample, Peers, Holding | None]] = []  # since the last evaluation
        # The process views and what they were made of: the readers hand back the very same
        # processes while nothing changed, and so are the views.
        self.views: tuple[tuple, Mapping, tuple[ProcessView, ...]] = ((), {}, ())
        self.diagnosis = DiagnosisState()
        self.regime = RegimeTracker()
        self.named = False  # whether the current segment has been judged
        self.ledger = WasteLedger(hold_seconds, settle_seconds)
        # (cause, pids, the segment's start, the turn while in a phase) a sample was last asked for
        self.stacks_asked: tuple[str | None, tuple[int, ...], float | None, int | None] | None = None
        self.stacks_pending = False  # asked for this segment and not yet taken
        self.asking = False  # a sample asked for and not yet begun: the last tick's ask was not taken
        self.stacks_asked_at = -math.inf  # the tick a new cause or segment asked for stacks at
        self.dip_at = -math.inf  # the tick a healthy segment's GPU last fell under the threshold at, sampled
        # The processes the culprits were picked from, and them: the same until NVML's next read.
        self.culprits: tuple[tuple, tuple[int, ...]] = ((), ())
        # The diagnosis's finding and the stacks it was corroborated with, and the result.
        self.corroborated: tuple[Finding | None, StackProfile | None, Finding | None] = (None, None, None)
        self.cause_in_force: str | None = None  # the cause the last tick was charged by, if any
        self.trained: frozenset[int] = frozenset()  # processes on the GPU whose stacks showed them training
        self.scripts: frozenset[int] = frozenset()  # and those seen running a script (not embedded)
        # The last profile read, the processes then known to run a script, and its reading: a
        # profile is read as it comes, then again to corroborate the verdict and for a dip's phase.
        self.read: tuple[StackProfile | None, frozenset[int], StackReading | None] = (None, frozenset(), None)
        # The last ticks, as long as a stack sample can take (it is read against the ticks it
        # spanned), and the last profile read with the GPU while it was taken.
        self.ticks: deque[GpuTick] = deque()
        self.during: tuple[StackProfile | None, GpuDuring | None] = (None, None)
        self.spoke: tuple[StackProfile | None, GpuDuring | None] = (None, None)  # the last taken as it waited
        self.dip_phase: tuple[StackProfile | None, str | None] = (None, None)  # a dip's sample and the phase it saw
        # The last three samples that named a phase of the job's life or none (corroborated, or
        # taken with the GPU at work), in the order taken: a phase may go on from one to the next.
        self.samples_named: tuple[tuple[StackProfile, str | None], ...] = ()
        # A phase the stacks named after another, where the GPU's counters or a sample placed its
        # start: (that moment, the phase before's name), for the ledger at this tick.
        self.handover: tuple[float, str] | None = None


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
        pod_owners: PodOwnerReader | None = None,
        calibrations: Calibrations = SHIPPED,
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
        self.pod_owners = pod_owners
        self.calibrations = calibrations
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
        owners: Mapping[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        if self.pod_owners is not None:
            answer = self.pod_owners.answer
            owners, success[self.pod_owners.name] = answer.owners, answer.ok
            seconds[self.pod_owners.name] = answer.seconds
        if self.slurm is not None:
            answer = self.slurm.answer
            jobs, success[self.slurm.name], seconds[self.slurm.name] = answer.holders, answer.ok, answer.seconds
            slurm_says = answer.answered
            scheduled = scheduled or slurm_says
        gpus = tuple(self._advance(sample, host, peers.get(sample.info.index, _ALONE), evaluate, pods,
                                   _holding(jobs.get(sample.info.minor_number), pods, slurm_says, owners)
                                   if scheduled else None)
                     for sample in samples for pods in (holders.get(sample.info.uuid, ()),))
        if self.tokens is not None:
            counts = self._timed(self.tokens.name, success, seconds, self.tokens.snapshot) or ()
            figures = self.token_account.advance(counts, gpus, timestamp)
            if figures:
                # Built anew rather than with dataclasses.replace, which looks up the fields each call.
                gpus = tuple(GpuState(sample=g.sample, figures=g.figures, finding=g.finding,
                                      below_threshold=g.below_threshold, wasted_seconds=g.wasted_seconds,
                                      processes=g.processes, tokens=figures.get(g.sample.info.index),
                                      window=g.window, pods=g.pods, charges=g.charges,
                                      charge_pending=g.charge_pending, allocation=g.allocation) for g in gpus)
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
            per = self._gpus[sample.info.index] = _PerGpu(th.charge_hold_seconds, th.charge_settle_seconds)
        if sample.error is not None:
            per.previous = None
            per.window.clear()
            per.recent.clear()
            per.pending.clear()
            per.diagnosis = DiagnosisState()
            per.regime = RegimeTracker()
            per.named = False
            return GpuState(sample=sample, figures=None, finding=None, below_threshold=False,
                            wasted_seconds=per.ledger.totals, pods=pods, charges=per.ledger.settle(),
                            allocation=holding and holding.allocation)
        figures = derive(sample, per.previous, self.calibrations)
        per.previous = sample
        per.pending.append((sample, figures, host, peers, holding))
        charges: tuple[Charge, ...] = ()
        pids = frozenset(p.pid for p in sample.processes)
        before, since = per.regime.pids, per.regime.since
        change = per.regime.observe(sample.timestamp, figures.interval_seconds, figures.utilization, pids, th)
        if change is not None:
            if before is not None and not before <= pids:
                self._exited(per, since)
            charges = self._new_segment(per, change, th)
            evaluate = True  # its ticks since the change (back-dated: several) may name it at once
        # A new segment is judged each tick until named, as soon as it has min_window_seconds: a
        # new job's first phase, named at the next turn of the evaluation cadence instead, waited up
        # to that long more for its name and its phase's stack samples. (Past that age the cadence
        # has judged it anyway: a GPU whose window never fills is not judged every tick.)
        young = per.regime.started is not None and \
            sample.timestamp - per.regime.started < th.min_window_seconds + th.evaluation_interval_seconds
        evaluate = evaluate or (young and not per.named)
        if evaluate:
            # Ticks enter the window together and are diagnosed once: run once a second, each
            # tick's pass over the window and its rules costs several times what it does in a batch.
            self._enter(per, th, since=-math.inf)
            per.diagnosis = diagnose(per.window, th, per.diagnosis)
            per.named = per.named or per.diagnosis.window is not None
            change = self._activity_change(per, th)
            if change is not None:
                charges += self._new_segment(per, change, th)
                per.diagnosis = diagnose(per.window, th, per.diagnosis)
                per.named = per.diagnosis.window is not None
        # A GPU no job holds and nothing runs on is spare capacity, not waste.
        free = holding is not None and holding.free and not sample.processes
        under = not free and figures.utilization is not None and figures.utilization < th.utilization_threshold
        per.ticks.append(GpuTick(sample.timestamp, figures.interval_seconds, figures.utilization, under,
                                 sample.memory_used_bytes))
        while sample.timestamp - per.ticks[0].timestamp > self.config.stacks.timeout_seconds:
            per.ticks.popleft()
        finding = self._with_stacks(per, sample, per.diagnosis.finding, under)
        # A host-side verdict waits for the stacks asked for it (a few seconds): they may name
        # the phase the counters cannot tell; in a phase, the ticks nearer the next sample than
        # the last wait for it.
        named = per.named and not per.stacks_pending
        if finding is not None:
            cause, until = finding.cause, self._phase_until(per, finding, sample)
        elif per.named:  # healthy, its ticks under the threshold too few to be a segment: a phase?
            cause, until = self._dip_phase(per)
        else:
            cause, until = None, math.inf
        if per.handover is not None:
            boundary, before = per.handover
            per.handover = None
            if named and cause in PHASES:
                per.ledger.hand_over(boundary, before, cause, until)
        charges += per.ledger.tick(sample.timestamp, figures.interval_seconds, under, named, cause, until)
        per.cause_in_force = finding.cause if per.named and finding is not None else None
        return GpuState(
            sample=sample, figures=figures, finding=finding, below_threshold=under,
            wasted_seconds=per.ledger.totals, processes=self._views(per, sample, host), window=per.diagnosis.window,
            pods=pods, charges=charges, charge_pending=under and not any(c.timestamp == sample.timestamp for c in charges),
            allocation=holding and holding.allocation,
        )

    @staticmethod
    def _enter(per: _PerGpu, th: Thresholds, since: float) -> None:
        """The ticks waiting since the last evaluation (those from ``since`` on) enter the window
        and the recent stretch."""
        last = per.window.ticks.last if len(per.window) else None
        for parts in per.pending:
            if parts[0].timestamp >= since:
                last = Tick(*parts, like=last)
                per.window.append(last, th.window_seconds)
                per.recent.append(last, th.regime_change_seconds)
        per.pending.clear()

    @staticmethod
    def _activity_change(per: _PerGpu, th: Thresholds) -> Change | None:
        """Whether the last stretch, judged alone, says something else than the segment's verdict."""
        if not per.named or per.recent.ticks.weight < 0.9 * th.regime_change_seconds:
            return None
        recent = primary(signals(per.recent), th)  # its cause is all that is compared
        current = per.diagnosis.finding
        return per.regime.compare(per.recent.ticks.first.sample.timestamp, recent.cause if recent else None,
                                  current.cause if current else None)

    def _exited(self, per: _PerGpu, since: float) -> None:
        """A job left the GPU: its ticks after its last kernels, still waiting, were its exit. The
        verdict they wait with is the work's before them (an evaluation, a loop's stalls), the
        stretch too short to be judged alone; a phase the stacks saw run without kernels there (a
        last checkpoint) stands."""
        if per.cause_in_force in PHASES and per.cause_in_force != "evaluating":
            return
        stopped = phase_onset("exiting", per.ticks, since, math.inf, self.config.diagnosis)
        if stopped is not None:
            per.ledger.hand_over(stopped, per.cause_in_force, "exiting")

    @staticmethod
    def _new_segment(per: _PerGpu, change: Change, th: Thresholds) -> tuple[Charge, ...]:
        """Judge the GPU's ticks from ``change.start`` on alone: what came before leaves the window, and
        its verdict goes with it where the processes it spoke of have gone."""
        Agent._enter(per, th, since=change.start)
        for window in (per.window, per.recent):
            window.ticks.expire(lambda tick: tick.sample.timestamp < change.start)
        # Across the threshold the old verdict stands only until the new side is judged, which
        # replaces it at once (diagnose holds a cause only on one side of the threshold).
        kept = per.diagnosis.finding if change.reason == "utilization" else None
        per.diagnosis = DiagnosisState(finding=kept)
        per.named = False
        # The ticks still waiting from before the change are the old segment's, named or not.
        return per.ledger.new_segment(change.start, per.cause_in_force)

    def _with_stacks(self, per: _PerGpu, sample: GpuSample, finding: Finding | None, under: bool) -> Finding | None:
        """The finding, corroborated by its processes' stacks where a host-side cause is current
        (shown beside any other page): asked for once per cause, set of processes and segment,
        taken off this thread, attached when done. A phase of a job's life passes: while one is
        named, they are asked for again every ``phase_interval_seconds`` to see it end."""
        per.stacks_pending = False
        # A job's first seconds (imports, CUDA start-up) are often over by the time its segment is
        # named, and py-spy takes seconds more: new processes under the threshold are sampled at once.
        starting = finding is None and not per.named and under and bool(sample.processes)
        # A healthy job is sampled too, once a segment until it is seen training: a job that trained
        # and then runs its model forward only, the GPU waiting, is evaluating.
        healthy = finding is None and per.named and not under and bool(sample.processes) and \
            not {p.pid for p in sample.processes} <= per.trained
        # So is a healthy job's GPU falling under the threshold: a checkpoint or an evaluation of a
        # few seconds is over by the time its segment is named (five ticks) and py-spy is done.
        dip = finding is None and per.named and under and bool(sample.processes)
        # Every page shows whose code it is about: a decode loop's line beside memory_bound, the
        # sharers' beside contention; the stacks judge only a host-side cause.
        judged = finding is None or finding.cause in HOST_SIDE
        paged = finding is not None and (judged or finding.severity == "page")
        if self.stacks is None or not (starting or healthy or dip or paged):
            return finding
        if per.culprits[0] is not sample.processes:
            per.culprits = (sample.processes, _culprits(sample))
        pids = per.culprits[1]
        in_phase = per.corroborated[2] is not None and per.corroborated[2].cause in PHASES
        turn = math.floor(sample.timestamp / self.config.stacks.phase_interval_seconds) if in_phase else None
        asked = (finding.cause if finding is not None else _DIP if dip else None, pids, per.regime.started, turn)
        before = per.stacks_asked
        # A new verdict within a segment is a change of work as much as a new segment: its stacks
        # are taken anew (a job's loading then compiling both read input_starved by the counters).
        # The segment's first verdict is what a sample taken before it was named was for; so is
        # a dip's sample the segment's that the dip began (seen ticks later, and started a few
        # ticks later still where a last burst of work followed the dip: judge/regime.py).
        started = per.regime.since
        if started - self.config.diagnosis.regime_change_seconds <= per.dip_at:
            started = min(started, per.dip_at)
        dipped_into = before is not None and before[0] == _DIP and per.dip_at >= started
        changed = before is not None and (before[1] != asked[1] or (before[2] != asked[2] and not dipped_into) or
                                          before[0] not in (None, _DIP, asked[0]))
        # A sample that failed (py-spy could not read the process yet) is asked for again; the
        # sampler says when it is due.
        last = self.stacks.latest(sample.info.index)
        failed = last is not None and last.unavailable is not None and before == asked
        # In a phase, a change of work may be the phase's end: it is sampled at the phase's pace,
        # not after a new segment's longer wait (meanwhile the counters' verdict was charged); but a
        # sample of the segment that came in this very tick saw the work up to now, and a new one
        # would set it aside for one of a job that may be leaving (an H100 lifecycle run: an
        # evaluation ended, the job's exit started a child, the counters read input_starved; py-spy
        # then waited 14 s on the exiting process and the evaluation's last ticks went unread).
        just_read = changed and turn is not None and before[3] == turn and last is not None and \
            last.unavailable is None and last.timestamp >= started and \
            last.timestamp > sample.timestamp - per.ticks[-1].seconds
        if just_read:
            per.stacks_asked = asked
        elif (before != asked or failed) and self.stacks.request(
                sample.info.index, pids, new_segment=changed or asked[0] == _DIP,
                phase=before is not None and turn is not None and (before[3] != turn or changed)):
            per.stacks_asked = asked  # else a sample is still being taken: asked again next tick
            if before is None or changed or asked[0] == _DIP:
                per.stacks_asked_at = sample.timestamp
            if asked[0] == _DIP:
                per.dip_at = sample.timestamp
        per.asking = per.stacks_asked != asked
        latest = profile = self.stacks.latest(sample.info.index)
        if latest is not None and per.during[0] is not latest:
            # What the GPU did while the sample was taken, not over the whole window: a phase's
            # end, or a job's input stalls beside its launches, are read against the same seconds.
            per.during = (latest, gpu_during(per.ticks, latest.started, latest.timestamp))
            if latest.unavailable is None and not _busy(per.during[1]):
                per.spoke = per.during
            if latest.sampled:
                reading = self._read(per, latest)
                # The top stack beside the reading: what an activity the reading calls "other" was.
                log.debug("GPU %d: stacks of %s: %s; %s", sample.info.index, latest.pids, reading,
                          stack_summary(latest))
                # Remembered while they stay on the GPU: run forward only later, they are evaluating.
                on_gpu = {p.pid for p in sample.processes}
                per.trained = frozenset(p for p in per.trained if p in on_gpu) | \
                    (frozenset(latest.pids) if reading.training >= TRAINING_SEEN else frozenset())
                per.scripts = frozenset(p for p in per.scripts if p in on_gpu) | reading.scripts
                # A sample of the job taken with the GPU at work is a link of the chain of phases
                # naming none: no phase named before it goes on past it (a compile, then training,
                # then a checkpoint: the checkpoint follows the training, not the compile).
                if _busy(per.during[1]) and set(latest.pids) <= set(pids):
                    per.samples_named = _linked(per.samples_named, latest, None)
        if per.spoke[0] is not None and (_busy(per.during[1]) or (latest is not None and latest.unavailable)):
            # Taken while the GPU was busy, it shows what kept it busy, not why it waited; one that
            # could not read the processes (py-spy read only their children) shows nothing: the last
            # sample that saw the GPU wait speaks for its ticks under the threshold.
            profile = per.spoke[0]
        taking = self.stacks.taking(sample.info.index)
        if profile is not None and (not set(profile.pids) <= set(pids) or
                                    sample.timestamp - profile.timestamp > self.config.stacks.min_interval_seconds or
                                    profile.timestamp < started or
                                    (taking and (profile.unavailable is not None or
                                                 profile.timestamp < per.stacks_asked_at))):
            # another job's, too old, from before the GPU's work changed; or, while the next is
            # taken, a failed one or one taken for the verdict before
            profile = None
        # A sample being taken is waited for where there is none and it may change the verdict (in
        # a phase, _phase_until says which ticks wait for the next).
        per.stacks_pending = profile is None and taking and judged
        return self._corroborated(per, finding, profile)

    def _corroborated(self, per: _PerGpu, finding: Finding | None, profile: StackProfile | None) -> Finding | None:
        """The finding corroborated by ``profile``, which may show the phase the sample before it
        named going on; a phase named after another hands the ticks over to it where its start is
        placed (_phase_start)."""
        seen, seen_profile, result = per.corroborated
        if seen is finding and seen_profile is profile:
            return result
        reading = self._read(per, profile) if profile is not None and profile.sampled else None
        during = per.during[1] if profile is per.during[0] else per.spoke[1]
        # The phase the sample before this one named (of the same processes), which this one may
        # show going on; a verdict given without stacks between them (while one was taken)
        # does not break the chain.
        earlier = [entry for entry in per.samples_named if entry[0] is not profile
                   and entry[0].timestamp <= profile.timestamp] if profile is not None else []
        prior = earlier[-1] if earlier else None
        going_on = prior[1] if prior is not None and prior[0].pids == profile.pids else None
        result = corroborate(finding, profile, reading,
                             trained=profile is not None and bool(per.trained.intersection(profile.pids)),
                             during=during if profile is not None else None, going_on=going_on)
        if reading is not None and result is not None:
            phase = result.cause if result.cause in PHASES else None
            per.samples_named = _linked(per.samples_named, profile, phase)
            if going_on is not None and phase not in (None, going_on):
                onset = self._phase_start(per, phase, profile, going_on, prior[0])
                per.handover = (onset, going_on) if onset is not None else None
        per.corroborated = (finding, profile, result)
        return result

    def _phase_start(self, per: _PerGpu, phase: str, profile: StackProfile, before: str,
                     prior: StackProfile) -> float | None:
        """Where ``phase``, named by ``profile`` after ``before`` (named by ``prior``), began: where the
        GPU's counters mark it; else where a sample holding both phases (this one, or the one
        before) shows the thread passed from one to the next; else None (the turn stays halfway
        between the two samples)."""
        onset = phase_onset(phase, per.ticks, prior.started, profile.timestamp, self.config.diagnosis)
        if onset is not None:
            return onset
        for taken in (profile, prior):
            turned = phase_turn(self._read(per, taken), before, phase)
            if turned is not None:
                return taken.started + turned * taken.seconds
        return None

    @staticmethod
    def _read(per: _PerGpu, profile: StackProfile) -> StackReading:
        """read_stacks(profile, per.scripts), once for the same profile and scripts."""
        if per.read[0] is not profile or per.read[1] != per.scripts:
            per.read = (profile, per.scripts, read_stacks(profile, per.scripts))
        return per.read[2]

    def _dip_phase(self, per: _PerGpu) -> tuple[str | None, float]:
        """In a healthy segment, the phase its last dip's stack sample saw, and the last tick it
        speaks for: a stretch under the threshold too short to be a segment of its own (a
        checkpoint of a few seconds, its writes in bursts) is that phase's for one phase turn after
        the sample's middle — were it a segment, its stacks would have been taken again by then."""
        profile, during = per.spoke
        if profile is None or not profile.sampled or profile.timestamp < per.dip_at or \
                per.dip_at < per.regime.since:
            return None, math.inf
        if per.dip_phase[0] is not profile:
            shown = phase_shown(self._read(per, profile), during.under_share if during is not None else 1.0)
            per.dip_phase = (profile, shown[0] if shown is not None else None)
        return per.dip_phase[1], profile.middle + self.config.stacks.phase_interval_seconds

    def _phase_until(self, per: _PerGpu, finding: Finding | None, sample: GpuSample) -> float:
        """In a named phase, the last tick its stack sample speaks for: stacks are taken again at
        each ``phase_interval_seconds`` turn, and a tick nearer the next sample (asked for or
        being taken now, or due at the next turn) than the last waits for it — the phase may have
        changed."""
        if self.stacks is None or finding is None or finding.cause not in PHASES or finding.stacks is None:
            return math.inf
        interval = self.config.stacks.phase_interval_seconds
        last = finding.stacks.middle
        following = sample.timestamp if per.asking or self.stacks.taking(sample.info.index) else \
            (math.floor(sample.timestamp / interval) + 1) * interval
        return (last + following) / 2

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
            # The ticks still waiting for their segment's name or to settle are charged as they
            # stand (their verdict, else their segment's), not left for a sink to guess.
            settled = {index: per.ledger.settle(per.cause_in_force) for index, per in self._gpus.items()}
        for sink in self.sinks:
            for method, args in (("settle", (settled,)), ("close", ())):
                call = getattr(sink, method, None)
                if call is not None:
                    try:
                        call(*args)
                    except Exception:
                        log.exception("%s of %s failed", method, sink.name)
        for source in (self.tokens, self.gpu_source, self.host_source, self.stacks):
            closer = getattr(source, "close", None)
            if closer is not None:
                closer()


def _holding(job: Allocation | None, pods: tuple[PodContainer, ...], slurm_says: bool,
             owners: Mapping[tuple[str, str], tuple[tuple[str, str], ...]]) -> Holding:
    """Who holds one GPU: its Slurm job, else its pod (the first, where time-slicing gives it to several)."""
    allocation = job or (Allocation("kubernetes", pods[0].job, namespace=pods[0].namespace,
                                    owner_metadata=owners.get((pods[0].namespace, pods[0].pod), ()))
                         if pods else None)
    return Holding(allocation, frozenset({p.job for p in pods} | ({job.job} if job else set())), slurm_says)


def _linked(named: tuple[tuple[StackProfile, str | None], ...], profile: StackProfile,
            phase: str | None) -> tuple[tuple[StackProfile, str | None], ...]:
    """The last three samples read, in the order they were taken, with ``profile`` naming ``phase``."""
    entries = [entry for entry in named if entry[0] is not profile] + [(profile, phase)]
    return tuple(sorted(entries, key=lambda entry: entry[0].timestamp))[-3:]


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
    for part in (*agent.sinks, agent.tokens, agent.pods, agent.pod_owners, agent.slurm):
        jobs += [(fn, seconds, 1) for fn, seconds in getattr(part, "jobs", list)()]
    scheduler = BackgroundScheduler(daemon=True, executors={
        "default": ThreadPoolExecutor(sum(instances for _, _, instances in jobs))})
    for fn, seconds, instances in jobs:
        # APScheduler wants a whole number of seconds of grace; a late tick runs once, not twice.
        scheduler.add_job(fn, "interval", seconds=seconds, max_instances=instances, coalesce=True,
                          misfire_grace_time=max(math.ceil(seconds), 1))
    scheduler.start()
    return scheduler
