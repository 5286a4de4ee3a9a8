"""A GPU whose work changes is judged segment by segment: each side of a change has its own
verdict, and its waste is charged to it (simulated GPUs whose scenario is switched mid-run)."""

import logging
import math

import pytest
from collections import Counter
from dataclasses import replace

from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.config import Config
from flopwatch.history.report import read_history
from flopwatch.history.store import HistoryStore, query_history
from flopwatch.config import StacksConfig
from flopwatch.thresholds import Thresholds
from flopwatch.model import StackProfile, StackShare
from flopwatch.sources import simulated
from flopwatch.sources.stacks import StackSampler
from tests.sources.test_stacks import counting, stand_in


def agent(first: str, sinks=(), stacks=None, before_tick=None, settle_seconds=0.0):
    """The agent built on a simulated GPU starting on scenario ``first`` (its ``lib`` switches the
    scenario), ticked ``run(seconds)`` at a time; ``stacks`` makes its stack reader from the wall
    clock; ``before_tick(wall_seconds)`` runs before each tick.
    A segment's ticks are charged once it is named (``settle_seconds``: that long after, as the
    agent does by default), so the totals at a moment hold every tick before it."""
    config = Config()
    config.agent.simulate = [first]
    config.diagnosis.charge_settle_seconds = settle_seconds
    clock, wall = VirtualClock(0.0), VirtualClock(1.8e9)
    built = build_agent(config, clock=clock, wall_clock=wall, sinks=list(sinks))
    if stacks is not None:
        built.agent.stacks = stacks(wall)

    def run(seconds: int):
        state = None
        for _ in range(seconds):
            clock.now += 1.0
            wall.now += 1.0
            if before_tick is not None:
                before_tick(wall.now)
            state = built.agent.tick()
        return state.gpus[0]
    return built, run


def sampling(script, made: list):
    """agent()'s ``stacks``: a sampler running ``script`` as py-spy, kept in ``made`` for the test."""
    def stacks(wall):
        made.append(StackSampler(StacksConfig(), binary=script, clock=wall, wall_clock=wall, ptrace_check=lambda: None))
        return made[0]
    return stacks


def test_a_job_that_starts_on_an_idle_gpu_is_charged_to_its_own_cause_not_to_idle():
    built, run = agent("idle")
    run(40)
    built.lib.set_scenario(0, "input_starved")
    gpu = run(30)
    assert gpu.finding.cause == "input_starved"
    # Every tick of the job under the threshold (its loader stalls three seconds in four) is its own.
    assert gpu.wasted_seconds == {"idle": 40.0, "input_starved": 22.0}


def test_a_healthy_run_after_a_stall_loses_the_stalls_finding_within_seconds():
    built, run = agent("input_starved")
    run(40)
    built.lib.set_scenario(0, "healthy")
    gpu = run(10)
    assert gpu.finding is None
    assert not gpu.below_threshold


def test_a_change_of_activity_on_the_same_side_of_the_threshold_is_named_alone():
    # The same process, starved, then holding its memory and doing nothing: under the threshold
    # throughout. Its CPU is read every 10 s, so the change shows within two reads.
    built, run = agent("input_starved")
    run(40)
    built.lib.set_scenario(0, "held_idle")
    gpu = run(25)
    assert gpu.finding.cause == "held_idle"
    assert gpu.wasted_seconds.get("unknown", 0.0) == 0.0


def test_a_change_of_activity_seen_late_takes_the_ticks_since_it_began_for_its_own_cause():
    # A loader waiting on storage, then the same process launching tiny kernels. Host evidence is
    # read every 10 s, so the change shows at the read at 50 s and is confirmed at a second
    # evaluation, 10 s later: the ticks from 50 s on wait that long, and take the new cause.
    charges = []
    built, run = agent("io_bound", settle_seconds=Thresholds().charge_settle_seconds)
    run(40)
    built.lib.set_scenario(0, "launch_bound")
    for _ in range(40):
        charges += run(1).charges
    assert {c.cause for c in charges if c.timestamp - 1.8e9 > 50} == {"launch_bound"}


def test_the_history_charges_each_tick_as_the_counter_did(tmp_path):
    url = f"sqlite:///{tmp_path}/history.db"
    store = HistoryStore(url, "node1")
    built, run = agent("idle", sinks=[store])
    run(20)
    built.lib.set_scenario(0, "input_starved")
    run(20)
    built.lib.set_scenario(0, "held_idle")
    gpu = run(25)
    store.close()
    rows = query_history(url, 0, 2e9, level="raw")
    charged: dict[str, float] = {}
    for row in rows:
        if row.wasted_seconds:
            charged[row.cause] = charged.get(row.cause, 0.0) + row.wasted_seconds
    assert charged == {cause: seconds for cause, seconds in gpu.wasted_seconds.items()}


def test_an_agent_stopping_writes_the_ticks_still_settling_with_their_verdict(tmp_path):
    url = f"sqlite:///{tmp_path}/history.db"
    built, run = agent("input_starved", sinks=[HistoryStore(url, "node1")], settle_seconds=10.0)
    run(40)
    built.lib.set_scenario(0, "idle")  # the job exits
    run(10)
    built.agent.close()  # the idle segment is named, its last ticks not yet charged
    rows = query_history(url, 0, 2e9, level="raw")
    assert {row.cause for row in rows if row.ts > 1.8e9 + 40} == {"idle"}


def test_a_healthy_job_that_starts_to_stall_charges_the_stall_from_its_first_tick_to_its_cause():
    # The regime tracker needs a few ticks on the new side to see the change: those ticks wait in
    # the healthy segment, then join the new one, instead of going to `unknown`.
    built, run = agent("healthy")
    run(40)
    built.lib.set_scenario(0, "input_starved")
    gpu = run(30)
    assert gpu.finding.cause == "input_starved"
    assert set(gpu.wasted_seconds) == {"input_starved"}


class ScriptedStacks:
    """Stacks taken at once when asked for, in the phase the job is in at that moment."""

    def __init__(self, wall, phase_at):
        self.wall, self.phase_at, self.profiles = wall, phase_at, {}

    FRAMES = {"loading_weights": ("from_pretrained (transformers/modeling_utils.py:4000)", "/srv/job.py"),
              "compiling": ("_compile (torch/_dynamo/convert_frame.py:900)", "/site-packages/torch/_dynamo/convert_frame.py"),
              "training": ("_engine_run_backward (torch/autograd/graph.py:825)", "/site-packages/torch/autograd/graph.py"),
              "forward only": ("forward (torch/nn/modules/linear.py:125)", "/site-packages/torch/nn/modules/linear.py"),
              "checkpointing": ("_save (torch/serialization.py:900)", "/site-packages/torch/serialization.py"),
              "starting": ("_find_and_load (<frozen importlib._bootstrap>:1176)", "<frozen importlib._bootstrap>"),
              "exiting": ("shutdown_compile_workers (torch/_inductor/async_compile.py:130)",
                          "/site-packages/torch/_inductor/async_compile.py")}

    def request(self, key, pids, new_segment=False, phase=False):
        frame, path = self.FRAMES[self.phase_at(self.wall.now)]
        stacks = tuple(StackShare(1.0, (frame,), "MainThread", pid, (path,)) for pid in pids)
        self.profiles[key] = StackProfile(tuple(pids), 40, stacks, stacks, timestamp=self.wall.now, seconds=2.0)
        return True

    def latest(self, key):
        return self.profiles.get(key)

    def taking(self, key):
        return False


class SampledOverTime(ScriptedStacks):
    """As py-spy is run: a sample spans the ``seconds`` after it is asked for (two, or four for two
    processes read one after the other), in the phases the job passes through meanwhile, and is
    there at the first tick after; asked again, a process is due after the sampler's waits (a
    phase's turn 2.5 s, a new segment 10 s, else 600 s)."""

    def __init__(self, wall, phase_at, seconds=2):
        super().__init__(wall, phase_at)
        self.asked, self.last, self.seconds = {}, -math.inf, seconds

    def request(self, key, pids, new_segment=False, phase=False):
        if key in self.asked:
            return False
        if self.wall.now - self.last < (2.5 if phase else 10.0 if new_segment else 600.0):
            return not (phase or new_segment)
        self.asked[key], self.last = (self.wall.now, tuple(pids)), self.wall.now
        return True

    def latest(self, key):
        if key in self.asked and self.wall.now >= self.asked[key][0] + self.seconds:
            start, pids = self.asked.pop(key)
            seen = Counter(self.phase_at(start + (i + 0.5) * self.seconds / 20) for i in range(20))
            stacks = tuple(StackShare(n / 20, (self.FRAMES[phase][0],), "MainThread", pid, (self.FRAMES[phase][1],))
                           for phase, n in seen.most_common() for pid in pids)
            self.profiles[key] = StackProfile(pids, 40, stacks, stacks, timestamp=start + self.seconds,
                                              seconds=self.seconds)
        return self.profiles.get(key)

    def taking(self, key):
        return key in self.asked


def checkpoint(seconds: int, counters: str):
    """Healthy training for 40 s, then a checkpoint of ``seconds`` that the counters read as
    ``counters``, then training again; the waste charged 30 s later."""
    built, run = agent("healthy", stacks=lambda wall: SampledOverTime(
        wall, lambda now: "checkpointing" if 40 < now - 1.8e9 <= 40 + seconds else "training"))
    run(40)
    built.lib.set_scenario(0, counters)
    run(seconds)
    built.lib.set_scenario(0, "healthy")
    return run(30).wasted_seconds


def test_a_checkpoint_over_before_its_segment_is_named_is_seen_by_a_sample_taken_as_the_gpu_fell_idle():
    # Named after five ticks, then two seconds of py-spy: a sample asked for then sees the steps
    # running again. The one taken at the first tick under the threshold saw the checkpoint.
    assert checkpoint(5, "host_transfer_bound") == {"checkpointing": 5.0}


def test_a_sample_taken_once_the_gpu_is_busy_again_does_not_name_the_wait_before_it():
    # The checkpoint's reads come in bursts: its segment starts after the first burst, three
    # seconds after the sample taken at the first tick under, and is named as the checkpoint
    # ends; the stacks taken then show training, with the GPU busy, which says nothing of why it
    # waited (here it said launch_bound).
    assert checkpoint(8, "io_bound") == {"checkpointing": 7.0}


def test_a_checkpoint_too_short_to_be_a_segment_is_charged_to_the_phase_its_dip_sample_saw():
    # Six seconds of bursty writes: never five ticks in a row under the threshold, so the
    # healthy segment goes on; its ticks under it went `unknown` before.
    assert checkpoint(6, "io_bound") == {"checkpointing": 5.0}


def test_a_healthy_jobs_short_stall_whose_dip_sample_shows_no_phase_is_not_charged_to_one():
    built, run = agent("healthy", stacks=lambda wall: SampledOverTime(wall, lambda now: "training"))
    run(40)
    built.lib.set_scenario(0, "io_bound")
    run(6)
    built.lib.set_scenario(0, "healthy")
    assert run(30).wasted_seconds == {"unknown": 5.0}


def test_a_page_on_the_gpus_own_work_shows_each_sharers_stacks_and_keeps_its_cause():
    # Two jobs time-slicing the GPU, one of them compiling: the page is about both jobs' code.
    _, run = agent("contention", stacks=lambda wall: ScriptedStacks(wall, lambda now: "compiling"))
    gpu = run(40)
    assert gpu.finding.cause == "contention"
    assert len(gpu.finding.stacks.pids) == 2


class Unreadable(ScriptedStacks):
    """py-spy cannot read the job, for ``reason``, at the tries ``when(try, wall seconds after 1.8e9)`` says."""

    def __init__(self, wall, phase_at, when, reason):
        super().__init__(wall, phase_at)
        self.when, self.reason, self.tries = when, reason, 0

    def request(self, key, pids, new_segment=False, phase=False):
        self.tries += 1
        if not self.when(self.tries, self.wall.now - 1.8e9):
            return super().request(key, pids, new_segment, phase)
        self.profiles[key] = StackProfile(tuple(pids), 0, unavailable=self.reason, timestamp=self.wall.now)
        return True


def test_a_job_py_spy_could_not_read_at_first_is_asked_for_again_and_its_phase_named():
    # (seconds into its imports, its first two tries)
    _, run = agent("held_idle", stacks=lambda wall: Unreadable(
        wall, lambda now: "loading_weights", lambda tries, _: tries <= 2, "not a Python process"))
    gpu = run(30)
    assert gpu.finding.cause == "loading_weights"


def asked_for_a_new_verdict(first: str, phase_at, seconds: int):
    """After ``seconds`` on scenario ``first``, the counters' verdict turns to io_bound: the
    (new_segment, phase) each stack request was made with then, and the finding."""
    asks = []

    class Recording(ScriptedStacks):
        def request(self, key, pids, new_segment=False, phase=False):
            asks.append((new_segment, phase))
            return super().request(key, pids, new_segment, phase)

    built, run = agent(first, settle_seconds=Thresholds().charge_settle_seconds,
                       stacks=lambda wall: Recording(wall, phase_at))
    gpu = run(seconds)
    per = built.agent._gpus[0]
    asks.clear()
    finding = built.agent._with_stacks(per, gpu.sample, replace(per.diagnosis.finding, cause="io_bound"), True)
    return asks, finding


def test_a_new_verdict_within_a_segment_asks_for_stacks_of_its_own():
    # Host counters read every 10 s can turn the whole window's verdict at once, with no change
    # of activity seen: the new verdict's stacks are asked for as a new segment's are.
    assert asked_for_a_new_verdict("input_starved", lambda now: "forward only", 30)[0] == [(True, False)]


def test_a_new_verdict_while_a_phase_is_named_asks_for_stacks_at_the_phases_pace():
    # An H100 lifecycle run: a job's GPU work changed 2 s after its loading phase's last sample;
    # asked as a new segment's, the next sample was 10 s away, and the counters' io_bound was
    # charged until the next turn's sample named the tokenizer the job went on to. The phase may
    # have ended: its stacks are due a phase's half turn after the last.
    assert asked_for_a_new_verdict("held_idle", lambda now: "loading_weights", 31)[0] == [(True, True)]


def test_a_new_verdict_in_the_tick_a_phase_sample_came_is_read_against_that_sample():
    # An H100 lifecycle run: a phase sample came in the tick the counters' verdict turned (an
    # evaluation's end, its exit's child read as a loader); asking anew set it aside, py-spy then
    # waited 14 s on the exiting process, and the evaluation's last 3 s went to the new verdict.
    asks, finding = asked_for_a_new_verdict("held_idle", lambda now: "loading_weights", 30)
    assert asks == [] and finding.cause == "loading_weights"


def test_a_phase_that_follows_another_is_charged_from_the_nearer_stack_sample():
    # A job holding the GPU idle loads its weights, then compiles from 33 s on; stacks are taken
    # again every 5 s while a phase is named. The ticks from 33 s on are nearer the sample at
    # 35 s (compiling) than the one at 30 s, and wait for it.
    _, run = agent("held_idle", stacks=lambda wall: ScriptedStacks(
        wall, lambda now: "loading_weights" if now - 1.8e9 <= 33 else "compiling"))
    gpu = run(60)
    assert gpu.finding.cause == "compiling"
    assert gpu.wasted_seconds == {"loading_weights": 32.0, "compiling": 28.0}


@pytest.mark.parametrize("seconds, compiling_from, loading_ticks", [
    (2, 31.3, 31), (2, 35.7, 36), (2, 36.5, 37),
    (4, 31.3, 31), (4, 33.7, 34), (4, 36.5, 37),  # two processes read one after the other
])
def test_a_phase_turn_a_sample_holds_is_placed_where_the_thread_passed_from_one_phase_to_the_next(
        seconds, compiling_from, loading_ticks):
    # A job loads its weights, then compiles: neither marks the GPU's counters. The sample taken
    # across the turn holds both phases, the earlier one's share first: a tick is loading's if its
    # middle came before the turn (halfway between two samples 5 s apart was up to 2.5 s off). The
    # turn is placed within the seconds the sample really took, not the 2 s one process takes.
    _, run = agent("held_idle", settle_seconds=10.0, stacks=lambda wall: SampledOverTime(
        wall, lambda now: "loading_weights" if now - 1.8e9 <= compiling_from else "compiling", seconds=seconds))
    assert run(70).wasted_seconds == {"loading_weights": loading_ticks, "compiling": 60 - loading_ticks}


def test_a_phase_keeps_its_ticks_when_the_next_phase_is_named_before_they_settle():
    # As above, with waste settling 10 s after each tick (the default): the ticks the loading
    # sample spoke for stay loading's when the compiling sample comes within their settle.
    _, run = agent("held_idle", settle_seconds=Thresholds().charge_settle_seconds, stacks=lambda wall: ScriptedStacks(
        wall, lambda now: "loading_weights" if now - 1.8e9 <= 33 else "compiling"))
    gpu = run(70)
    assert gpu.wasted_seconds == {"loading_weights": 32.0, "compiling": 28.0}


def test_a_checkpoints_first_seconds_before_a_last_burst_of_steps_are_the_checkpoints():
    # Healthy training until 40 s, then a checkpoint written for 12 s: its first two ticks come
    # before one more burst of work, after which the GPU stays under the threshold.
    built, run = agent("healthy", stacks=lambda wall: ScriptedStacks(
        wall, lambda now: "checkpointing" if 40 < now - 1.8e9 <= 52 else "training"))
    run(40)
    built.lib.set_scenario(0, "io_bound")
    run(12)
    built.lib.set_scenario(0, "healthy")
    assert run(30).wasted_seconds == {"checkpointing": 10.0}


def test_a_training_job_whose_stacks_turn_to_the_forward_pass_only_is_evaluating():
    # Launch-bound training (backward passes in its stacks) until 30 s; then its loop runs the
    # model forward only, the GPU waiting as storage is written beside it.
    built, run = agent("launch_bound", stacks=lambda wall: ScriptedStacks(
        wall, lambda now: "training" if now - 1.8e9 <= 30 else "forward only"))
    assert run(30).finding.cause == "launch_bound"
    built.lib.set_scenario(0, "io_bound")
    gpu = run(30)
    assert (gpu.finding.cause, gpu.finding.evidence["stacks_corrected_from"]) == ("evaluating", "io_bound")


def test_a_job_seen_training_while_healthy_that_then_runs_its_model_forward_only_is_evaluating():
    # Healthy training (backward passes in its stacks, sampled once while healthy) until 40 s; then
    # its loop runs the model forward only, the GPU waiting, as after a checkpoint.
    built, run = agent("healthy", stacks=lambda wall: ScriptedStacks(
        wall, lambda now: "training" if now - 1.8e9 <= 40 else "forward only"))
    assert run(40).finding is None
    built.lib.set_scenario(0, "io_bound")
    gpu = run(30)
    assert (gpu.finding.cause, gpu.finding.evidence["stacks_corrected_from"]) == ("evaluating", "io_bound")


def no_kernels(monkeypatch, name: str, like: str) -> None:
    """Scenario ``name``: ``like``'s, with no kernel on the SMs (a checkpoint's copies, an exit)."""
    monkeypatch.setitem(simulated.SCENARIOS, name, replace(simulated.SCENARIOS[like], sm_active=0.0, sm_occupancy=0.0,
                                                           nvml_utilization=0.0, tensor_active=0.0, hmma_active=0.0,
                                                           burst_period_seconds=0.0))


def job_end(monkeypatch, phases, steps, settle_seconds=0.0, idle_seconds=20):
    """A healthy job's last phases on a simulated GPU: after 40 s of training, ``steps`` ((scenario,
    seconds), …: ``eval_loop`` busy 0.2, ``saving`` and ``exit`` with no kernels), then its process
    gone; its stacks as py-spy takes them, in ``phases`` ((until second, phase), …); the waste by
    cause ``idle_seconds`` later."""
    monkeypatch.setitem(simulated.SCENARIOS, "eval_loop", replace(simulated.SCENARIOS["io_bound"], burst_period_seconds=0.0))
    no_kernels(monkeypatch, "saving", "host_transfer_bound")
    no_kernels(monkeypatch, "exit", "eval_loop")
    built, run = agent("healthy", settle_seconds=settle_seconds, stacks=lambda wall: SampledOverTime(
        wall, lambda now: next(phase for until, phase in phases if now - 1.8e9 <= until)))
    run(40)
    for scenario, seconds in steps:
        built.lib.set_scenario(0, scenario)
        run(seconds)
    built.lib.set_scenario(0, "idle")
    return run(idle_seconds).wasted_seconds


def test_an_evaluations_last_seconds_are_not_charged_to_the_exit_whose_sample_follows_them(monkeypatch):
    # An H100 lifecycle run: an evaluation loop (the GPU busy 0.2) ends, the job exits for 2-3 s (no
    # kernel), its process leaves. The exit's sample, asked at the next phase turn, speaks for the
    # ticks after the last kernel, not for the evaluation's last ticks waiting for it.
    phases = ((40, "training"), (70, "forward only"), (math.inf, "exiting"))
    assert job_end(monkeypatch, phases, (("eval_loop", 30), ("exit", 3))) == \
        {"evaluating": 30.0, "exiting": 3.0, "idle": 20.0}


def test_a_job_whose_exit_no_sample_saw_is_charged_exiting_from_its_last_kernels_to_leaving(monkeypatch):
    # An H100 lifecycle run: an evaluation loop ends and the job exits within a phase turn: the
    # last sample showed the evaluation, and no sample saw the exit. The ticks after its last
    # kernels, before its process left, were its exit, not its evaluation.
    phases = ((40, "training"), (math.inf, "forward only"))
    assert job_end(monkeypatch, phases, (("eval_loop", 30), ("exit", 2)), settle_seconds=10.0, idle_seconds=30) == \
        {"evaluating": 30.0, "exiting": 2.0, "idle": 20.0}  # (10 s still settling)


def test_a_checkpoint_then_an_evaluation_then_the_exit_each_take_their_own_ticks(monkeypatch):
    # The end of an H100 lifecycle run's first job: training, an 11 s checkpoint, a 20 s
    # evaluation loop, a 3 s exit.
    phases = ((40, "training"), (51, "checkpointing"), (71, "forward only"), (math.inf, "exiting"))
    assert job_end(monkeypatch, phases, (("saving", 11), ("eval_loop", 20), ("exit", 3)), settle_seconds=10.0,
                   idle_seconds=30) == {"checkpointing": 11.0, "evaluating": 20.0, "exiting": 3.0, "idle": 20.0}


@pytest.mark.parametrize("loading_from", [30, 31, 34])
def test_a_jobs_weights_begin_loading_where_the_gpus_memory_steps_up_not_halfway_between_samples(
        monkeypatch, loading_from):
    # A job's process appears at 20 s with its CUDA context (1 GB), imports, then loads 7 GB of
    # weights onto the GPU at once; stack samples come a phase turn (5 s) apart.
    held = simulated.SCENARIOS["held_idle"]
    for name, gib in (("imports", 1), ("weights", 8)):
        monkeypatch.setitem(simulated.SCENARIOS, name,
                            replace(held, processes=(replace(held.processes[0], memory_bytes=gib * 2**30),)))
    built, run = agent("idle", settle_seconds=10.0, stacks=lambda wall: SampledOverTime(
        wall, lambda now: "starting" if now - 1.8e9 <= loading_from else "loading_weights"))
    run(20)
    built.lib.set_scenario(0, "imports")
    run(loading_from - 20)
    built.lib.set_scenario(0, "weights")
    run(15)
    built.lib.set_scenario(0, "idle")
    assert run(20).wasted_seconds == {"idle": 30.0, "starting": loading_from - 20, "loading_weights": 15.0}


def test_a_sample_that_reads_none_of_the_jobs_threads_leaves_the_phase_the_last_one_saw():
    # An H100 lifecycle run: the evaluation's second sample held only the compile workers' stacks,
    # and its 20 s went to the counters' input_starved.
    built, run = agent("healthy", stacks=lambda wall: Unreadable(
        wall, lambda now: "training" if now - 1.8e9 <= 40 else "forward only", lambda _, seconds: seconds >= 50,
        "py-spy read none of the process's own threads"))
    run(40)
    built.lib.set_scenario(0, "io_bound")
    gpu = run(30)
    assert gpu.finding.cause == "evaluating"
    assert set(gpu.wasted_seconds) == {"evaluating"}


class FirstCompiledStep(ScriptedStacks):
    """A compiled model's first step after its compile: the main thread waits in backward while
    autograd's own thread compiles the backward graph for a fifth of the sample."""

    def request(self, key, pids, new_segment=False, phase=False):
        if self.phase_at(self.wall.now) != "first step":
            return super().request(key, pids, new_segment, phase)
        backward, compile_ = self.FRAMES["training"], self.FRAMES["compiling"]
        stacks = tuple(s for pid in pids for s in (
            StackShare(1.0, (backward[0],), "MainThread", pid, (backward[1],)),
            StackShare(0.2, (compile_[0],), "Thread-3", pid, (compile_[1],)),
            StackShare(0.8, (backward[0],), "Thread-3", pid, (backward[1],))))
        self.profiles[key] = StackProfile(tuple(pids), 40, stacks, stacks, timestamp=self.wall.now, seconds=2.0)
        return True


def test_a_compile_named_by_its_stacks_goes_on_while_a_thread_still_compiles_in_the_first_step():
    _, run = agent("held_idle", stacks=lambda wall: FirstCompiledStep(
        wall, lambda now: "compiling" if now - 1.8e9 <= 30 else "first step"))
    assert run(40).wasted_seconds == {"compiling": 40.0}


def test_a_phase_goes_on_from_the_sample_before_through_a_verdict_given_without_stacks():
    # An H100 lifecycle run: a compile named by its stacks; while the next sample was taken the
    # verdict stood without stacks (io_bound); the next showed a thread still compiling.
    class Held(FirstCompiledStep):
        held = False

        def request(self, key, pids, new_segment=False, phase=False):
            return not self.held and super().request(key, pids, new_segment, phase)

    stacks = []
    built, run = agent("held_idle", stacks=lambda wall: stacks.append(Held(
        wall, lambda now: "compiling" if now - 1.8e9 <= 30 else "first step")) or stacks[0])
    gpu = run(30)
    assert gpu.finding.cause == "compiling"
    per, sampler = built.agent._gpus[0], stacks[0]
    pids = sampler.profiles[0].pids
    sampler.held, sampler.profiles[0] = True, replace(sampler.profiles[0], pids=(1,))  # no stacks of these processes
    counters = replace(per.diagnosis.finding, cause="io_bound")
    assert built.agent._with_stacks(per, gpu.sample, counters, True).cause == "io_bound"
    sampler.held, sampler.wall.now = False, sampler.wall.now + 5
    sampler.request(0, pids)  # the first compiled step: the main thread in backward
    result = built.agent._with_stacks(per, gpu.sample, replace(counters), True)
    assert (result.cause, result.evidence["stacks_say"]) == ("compiling", "a thread still 20% compiling the model")


def test_no_phase_goes_on_past_a_sample_that_saw_the_job_at_work():
    # A compile named by its stacks, then healthy training (sampled once, the GPU busy), then a
    # stall whose sample shows a thread 20 % in the compiler beside the backward pass: a recompile
    # within training, not the compile going on through the training.
    built, run = agent("held_idle", stacks=lambda wall: FirstCompiledStep(
        wall, lambda now: "compiling" if now - 1.8e9 <= 30 else "training" if now - 1.8e9 <= 60 else "first step"))
    assert run(30).finding.cause == "compiling"
    built.lib.set_scenario(0, "healthy")
    run(30)
    built.lib.set_scenario(0, "launch_bound")
    assert run(30).finding.cause == "launch_bound"


def test_a_new_jobs_first_seconds_are_seen_by_a_stack_sample_taken_as_its_process_appears(tmp_path):
    # The job's process appears at 21 s, imports until 23 s, then loads its weights. Its segment
    # is named seconds later; the sample taken as it appeared saw it start. (py-spy's stand-in
    # writes the frames of the phase the job is in when it runs; each tick waits for the last.)
    phase = tmp_path / "phase"
    script = stand_in(tmp_path, f"""
        pid = args[args.index('--pid') + 1]
        frame = open({str(phase)!r}).read()
        open(out, 'w').write(f'process {{pid}}:"python3 job.py";thread ({{pid}}): MainThread;<module> (/srv/job.py:1);'
                             + frame + ' 40\\n')
    """)
    frames = {"starting": "_find_and_load (<frozen importlib._bootstrap>:1360)",
              "loading_weights": "from_pretrained (/usr/lib/python3/site-packages/transformers/modeling_utils.py:4000)"}
    sampler: list[StackSampler] = []

    def before_tick(wall_seconds: float) -> None:
        sampler[0].wait(30)
        phase.write_text(frames["starting" if wall_seconds - 1.8e9 <= 23 else "loading_weights"])

    built, run = agent("idle", stacks=sampling(script, sampler), before_tick=before_tick)
    run(20)
    built.lib.set_scenario(0, "held_idle")
    gpu = run(20)
    assert gpu.finding.cause == "loading_weights"
    # Its first 3 s, those it imported: named at once, its phase is sampled again in the next
    # turn, and the edge falls between the two samples; the last 2 s wait for the next (a tick
    # is a sample's when its middle is nearer it than the next).
    assert gpu.wasted_seconds == {"idle": 20.0, "starting": 3.0, "loading_weights": 15.0}


def test_a_stall_that_begins_seconds_after_the_jobs_last_sample_gets_a_sample_of_its_own(tmp_path):
    # The healthy job was sampled at 3 s; its launches stall from 6 s. The sample from before the
    # change does not speak for the stall, and the next one is due 10 s after it, not never.
    script, _ = counting(tmp_path)
    sampler: list[StackSampler] = []
    built, run = agent("healthy", stacks=sampling(script, sampler),
                       before_tick=lambda _: sampler[0].wait(30) if sampler else None)
    run(5)
    built.lib.set_scenario(0, "launch_bound")
    gpu = run(20)
    assert gpu.finding.cause == "launch_bound"
    assert gpu.finding.stacks.timestamp - 1.8e9 > 6


def test_the_debug_log_shows_a_stack_samples_top_stack_beside_its_reading(tmp_path, caplog):
    # A reading of "other" says only that no activity was recognised: the line names what ran.
    script = stand_in(tmp_path, """
        pid = args[args.index('--pid') + 1]
        open(out, 'w').write(f'process {pid}:"python3 job.py";thread ({pid}): MainThread;'
                             '<module> (/srv/job.py:1);spin (/srv/job.py:9) 40\\n')
    """)
    sampler: list[StackSampler] = []
    caplog.set_level(logging.DEBUG, logger="flopwatch.daemon")
    _, run = agent("held_idle", stacks=sampling(script, sampler),
                   before_tick=lambda wall_seconds: sampler[0].wait(30))
    run(20)
    lines = [r.getMessage() for r in caplog.records if "stacks of" in r.getMessage()]
    assert lines and "'other': 1.0" in lines[0] and "100 % in spin" in lines[0]
