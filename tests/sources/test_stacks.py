"""The stack sampler: py-spy run off the tick, at most once per process per period, stopped when it
hangs, and a plain reason where stacks cannot be had; and the agent attaching what it found."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from flopwatch.outputs.alerting import STACKS_ANNOTATION_CHARS, annotations
from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.config import Config, StacksConfig
from flopwatch.model import Finding, StackProfile, StackShare
from flopwatch.sources.stacks import StackSampler, find_py_spy, parse_records, ptrace_denied, read_source_line
from flopwatch.judge.evidence import evidence_document
from flopwatch.judge.stackclass import read_stacks
from flopwatch.outputs.status_document import status_document
from flopwatch.commands.tables import status_table
from tests.store_ticks import tick

needs_py_spy = pytest.mark.skipif(find_py_spy() is None, reason="needs py-spy (pip install py-spy)")
FAST = StacksConfig(duration_seconds=1.0, rate_hz=50, timeout_seconds=20.0)


def stand_in(tmp_path: Path, body: str) -> str:
    """An executable in py-spy's place: ``body`` is Python with ``args`` (its argv) and ``out``."""
    script = tmp_path / "py-spy"
    script.write_text(f"#!{sys.executable}\nimport sys, time\nargs = sys.argv\n"
                      f"out = args[args.index('--output') + 1]\n{textwrap.dedent(body)}")
    script.chmod(0o755)
    return str(script)


def counting(tmp_path: Path) -> tuple[str, Path]:
    """A stand-in that records each pid it is asked for and writes one stack of it."""
    calls = tmp_path / "calls"
    binary = stand_in(tmp_path, f"""
        pid = args[args.index('--pid') + 1]
        open({str(calls)!r}, 'a').write(pid + '\\n')
        open(out, 'w').write(f'process {{pid}}:"python3 x.py";thread ({{pid}}): MainThread;<module> (/x.py:1) 20\\n')
    """)
    return binary, calls


def test_a_process_is_sampled_again_only_after_the_minimum_interval(tmp_path):
    binary, calls = counting(tmp_path)
    clock = VirtualClock(0.0)
    sampler = StackSampler(StacksConfig(min_interval_seconds=600.0), binary=binary, clock=clock,
                           ptrace_check=lambda: None)
    for now in (0.0, 599.0, 600.0):
        clock.now = now
        sampler.request(0, [4242])
        assert sampler.wait(30)
    assert calls.read_text().split() == ["4242", "4242"]


def test_a_new_segment_of_the_gpus_work_samples_a_process_again_sooner(tmp_path):
    binary, calls = counting(tmp_path)
    clock = VirtualClock(0.0)
    sampler = StackSampler(StacksConfig(min_interval_seconds=600.0, segment_interval_seconds=30.0), binary=binary,
                           clock=clock, ptrace_check=lambda: None)
    for now, new_segment in ((0.0, False), (10.0, True), (40.0, True), (50.0, False)):
        clock.now = now
        sampler.request(0, [4242], new_segment=new_segment)
        assert sampler.wait(30)
    assert calls.read_text().split() == ["4242", "4242"]  # at 0 s, and at 40 s for the new segment



def test_a_new_segment_asked_for_before_its_sample_is_due_is_told_to_ask_again(tmp_path):
    # The last sample, 4 s old, is of the work before the change: it does not serve the new segment.
    binary, calls = counting(tmp_path)
    clock = VirtualClock(0.0)
    sampler = StackSampler(StacksConfig(segment_interval_seconds=10.0), binary=binary, clock=clock,
                           ptrace_check=lambda: None)
    sampler.request(0, [4242])
    assert sampler.wait(30)
    answers = []
    for now in (4.0, 9.0, 10.0):
        clock.now = now
        answers.append(sampler.request(0, [4242], new_segment=True))
        assert sampler.wait(30)
    assert answers == [False, False, True]
    assert calls.read_text().split() == ["4242", "4242"]


def sampled_at(tmp_path, requests) -> list[float]:
    """The times a counting stand-in was run for ``requests``: (time, new_segment, phase) each."""
    binary, calls = counting(tmp_path)
    clock = VirtualClock(0.0)
    sampler = StackSampler(StacksConfig(min_interval_seconds=600.0, segment_interval_seconds=10.0,
                                        phase_interval_seconds=10.0), binary=binary, clock=clock, ptrace_check=lambda: None)
    taken = []
    for now, new_segment, phase in requests:
        clock.now = now
        before = len(calls.read_text().split()) if calls.exists() else 0
        sampler.request(0, [4242], new_segment=new_segment, phase=phase)
        assert sampler.wait(30)
        if len(calls.read_text().split()) > before:
            taken.append(now)
    return taken


def test_a_process_py_spy_cannot_read_as_python_yet_is_tried_again_ever_less_often(tmp_path):
    # As a job seconds into its imports can read: py-spy finds no version, the process lives on.
    calls = tmp_path / "calls"
    binary = stand_in(tmp_path, f"""
        open({str(calls)!r}, 'a').write(str(time.monotonic()) + '\\n')
        print('Error: Failed to find python version from target process', file=sys.stderr)
        sys.exit(1)
    """)
    clock = VirtualClock(0.0)
    sampler = StackSampler(StacksConfig(duration_seconds=2.0, min_interval_seconds=600.0), binary=binary,
                           clock=clock, ptrace_check=lambda: None)
    pid = os.getpid()  # a process that exists
    tried = []
    for now in range(0, 40):
        clock.now = float(now)
        before = len(calls.read_text().split()) if calls.exists() else 0
        sampler.request(0, [pid])
        assert sampler.wait(30)
        if len(calls.read_text().split()) > before:
            tried.append(now)
    assert tried == [0, 2, 6, 14, 30]
    assert sampler.latest(0).unavailable == "not a Python process"


def test_a_process_read_after_a_failed_try_is_sampled_at_the_usual_pace_again(tmp_path):
    attempts = tmp_path / "attempts"
    binary = stand_in(tmp_path, f"""
        pid = args[args.index('--pid') + 1]
        with open({str(attempts)!r}, 'a') as f:
            f.write('x')
        if len(open({str(attempts)!r}).read()) == 1:
            print('Error: Failed to find python version from target process', file=sys.stderr)
            sys.exit(1)
        open(out, 'w').write(f'process {{pid}}:"python3 x.py";thread ({{pid}}): MainThread;<module> (/x.py:1) 20\\n')
    """)
    clock = VirtualClock(0.0)
    sampler = StackSampler(StacksConfig(duration_seconds=2.0, min_interval_seconds=600.0), binary=binary,
                           clock=clock, ptrace_check=lambda: None)
    for now in (0.0, 2.0, 4.0, 8.0):
        clock.now = now
        sampler.request(0, [os.getpid()])
        assert sampler.wait(30)
    assert len(attempts.read_text()) == 2  # failed at 0 s, read at 2 s; then not before 602 s
    assert sampler.latest(0).samples == 20


def test_a_job_whose_work_keeps_changing_is_sampled_ever_less_often(tmp_path):
    # A new segment every 5 s: each early sample doubles the wait for the next.
    requests = [(0.0, False, False)] + [(float(t), True, False) for t in range(5, 200, 5)]
    assert sampled_at(tmp_path, requests) == [0.0, 10.0, 30.0, 70.0, 150.0]


def test_after_a_calm_stretch_a_new_segment_is_sampled_soon_again(tmp_path):
    requests = [(0.0, False, False), (10.0, True, False), (100.0, True, False), (110.0, True, False)]
    assert sampled_at(tmp_path, requests) == [0.0, 10.0, 100.0, 110.0]


def test_a_named_phase_is_sampled_every_phase_interval_whatever_came_before(tmp_path):
    requests = [(0.0, False, False), (10.0, True, False), (20.0, True, False)] + \
               [(float(t), False, True) for t in range(30, 80, 10)]
    assert sampled_at(tmp_path, requests) == [0.0, 10.0, 30.0, 40.0, 50.0, 60.0, 70.0]


def test_a_phase_asked_for_soon_after_the_last_sample_is_still_taken_in_its_turn(tmp_path):
    # A sample at 18 s (a new segment), the phase's turns asked for at 25 s and 30 s, 40 s: none skipped.
    requests = [(18.0, True, False), (25.0, False, True), (30.0, False, True), (40.0, False, True)]
    assert sampled_at(tmp_path, requests) == [18.0, 25.0, 30.0, 40.0]


def test_what_is_kept_of_processes_sampled_long_ago_is_let_go():
    # Short-lived processes one after another, each sampled once (a failing stand-in answers fast).
    clock = VirtualClock(0.0)
    sampler = StackSampler(StacksConfig(min_interval_seconds=600.0), binary="/bin/false", clock=clock,
                           ptrace_check=lambda: None)
    for pid in range(300):
        clock.now = float(pid)
        sampler.request(0, [10_000 + pid])
        assert sampler.wait(30)
    clock.now = 1000.0
    sampler.request(0, [99_999])
    assert sampler.wait(30)
    assert list(sampler._sampled_at) == [99_999]

def test_a_new_process_on_the_gpu_is_sampled_while_the_old_one_waits_its_turn(tmp_path):
    binary, calls = counting(tmp_path)
    clock = VirtualClock(0.0)
    sampler = StackSampler(binary=binary, clock=clock, ptrace_check=lambda: None)
    sampler.request(0, [4242])
    assert sampler.wait(30)
    clock.now = 5.0
    sampler.request(0, [4242, 5151])
    assert sampler.wait(30)
    assert calls.read_text().split() == ["4242", "5151"]
    assert sampler.latest(0).pids == (5151,)


def test_py_spy_that_hangs_is_stopped_at_the_timeout_and_says_so(tmp_path):
    binary = stand_in(tmp_path, "time.sleep(60)")
    sampler = StackSampler(StacksConfig(timeout_seconds=0.5), binary=binary, ptrace_check=lambda: None)
    assert sampler.sample((4242,)).unavailable == "py-spy did not finish within 0.5 s"


def test_a_missing_py_spy_is_logged_once_and_every_profile_says_why(tmp_path, caplog):
    sampler = StackSampler(binary=str(tmp_path / "absent"), ptrace_check=lambda: None)
    with caplog.at_level(logging.WARNING, logger="flopwatch.sources.stacks"):
        first, second = sampler.sample((4242,)), sampler.sample((5151,))
    assert first.unavailable == second.unavailable == "py-spy could not run: No such file or directory"
    assert len(caplog.records) == 1


def test_without_cap_sys_ptrace_under_yama_scope_1_the_reason_names_the_grant(tmp_path):
    status, scope = tmp_path / "status", tmp_path / "scope"
    status.write_text("Name:\tflopwatch\nCapEff:\t0000000000000000\n")
    scope.write_text("1\n")
    assert "AmbientCapabilities=CAP_SYS_PTRACE" in ptrace_denied(str(status), str(scope))


def test_cap_sys_ptrace_is_enough_under_yama_scope_2(tmp_path):
    status, scope = tmp_path / "status", tmp_path / "scope"
    status.write_text("CapEff:\t0000000000080000\n")  # bit 19
    scope.write_text("2\n")
    assert ptrace_denied(str(status), str(scope)) is None


def test_yama_scope_3_forbids_sampling_whatever_the_capabilities(tmp_path):
    status, scope = tmp_path / "status", tmp_path / "scope"
    status.write_text("CapEff:\t000001ffffffffff\n")
    scope.write_text("3\n")
    assert ptrace_denied(str(status), str(scope)).startswith("kernel.yama.ptrace_scope is 3")


def test_an_unavailable_sampler_answers_at_once_without_running_anything():
    sampler = StackSampler(unavailable="simulated", wall_clock=lambda: 1.8e9)
    sampler.request(3, [100000])
    assert (sampler.latest(3).unavailable, sampler.latest(3).timestamp) == ("simulated", 1.8e9)



def test_a_phase_spread_over_many_short_stacks_is_read_from_every_stack_sampled(tmp_path):
    # Twenty imports, each its own stack of 5 %: the eight shown hold 40 %, all of them 100 %.
    binary = stand_in(tmp_path, """
        lines = [f'process 7:"python3 job.py";thread (7): MainThread;<module> (/job.py:1);'
                 f'_find_and_load (<frozen importlib._bootstrap>:1360);<module> (/site-packages/m{i}.py:1) 1'
                 for i in range(20)]
        open(out, 'w').write('\\n'.join(lines) + '\\n')
    """)
    profile = StackSampler(StacksConfig(), binary=binary, ptrace_check=lambda: None).sample((7,))
    assert (len(profile.stacks), len(profile.sampled)) == (8, 20)
    assert read_stacks(profile).share("main", "starting") == 1.0


def test_the_gpu_processs_own_threads_are_shown_before_its_workers_and_a_workers_watchdog_not_at_all():
    # A compiled model's first backward: the main thread waits in it, autograd's thread compiles it
    # (in many short stacks); three compile workers each have a watchdog thread at 100 %.
    main = 'process 7:"python3 train.py";thread (7): MainThread;<module> (/train.py:1);backward (/t/autograd.py:9) 90'
    autograd = [f'process 7:"python3 train.py";thread (0x7f01);backward (/t/aot.py:3);'
                f'lower_{i} (/t/_inductor/x.py:{i}) 10' for i in range(9)]
    workers = [line for pid in (20, 21, 22) for line in (
        f'process {pid}:"python3 -m compile_worker";thread ({pid}): MainThread;get (/q.py:1) 90',
        f'process {pid}:"python3 -m compile_worker";thread (0x{pid}): Thread-2 (run);run (/utils.py:30) 90')]
    profile = parse_records([(7, "\n".join(workers + [main] + autograd))], (7,))
    assert [(s.pid, s.thread) for s in profile.stacks] == [(7, "MainThread")] + [(7, "0x7f01")] * 7
    assert all(s.thread != "Thread-2 (run)" for s in profile.stacks)
    assert len(profile.sampled) == 16


def test_threads_parked_in_a_wait_are_shown_after_the_threads_at_work():
    # A ResNet fed by two JPEG workers: the main thread waits on them; its queue feeder and pin
    # thread, and a third worker between tasks, stood on one line for the whole sample.
    job = 'process 7:"python3 train.py";thread (7): MainThread;<module> (/train.py:1)'
    lines = [f"{job};_next_data (/dl.py:5);wait (/threading.py:359) 35", f"{job};backward (/t/autograd.py:9) 5",
             'process 7:"python3 train.py";thread (0x71): QueueFeederThread;_feed (/q.py:251);wait (/threading.py:355) 40',
             'process 7:"python3 train.py";thread (0x72): Thread-1 (_pin_memory_loop);select (/selectors.py:415) 40',
             'process 22:"python3 train.py";thread (22): MainThread;_worker_loop (/w.py:3);get (/q.py:1) 40']
    lines += [f'process {pid}:"python3 train.py";thread ({pid}): MainThread;_worker_loop (/w.py:3);'
              f'__getitem__ (/data.py:20);{fn} (/pil.py:{line}) {n}'
              for pid in (20, 21) for fn, line, n in (("decode", 10, 24), ("resized_crop", 30, 16))]
    profile = parse_records([(7, "\n".join(lines))], (7,))
    shown = [(s.pid, s.thread, s.frames[0].split(" ")[0]) for s in profile.stacks]
    assert shown == [(7, "MainThread", "wait"), (7, "MainThread", "backward"),
                     (20, "MainThread", "decode"), (21, "MainThread", "decode"),
                     (20, "MainThread", "resized_crop"), (21, "MainThread", "resized_crop"),
                     (22, "MainThread", "get"), (7, "QueueFeederThread", "wait")]


# -- the real py-spy on real processes -----------------------------------------------------------

BUSY = """
def spin_in_a_known_function():
    total = 0
    while True:
        for i in range(1000):
            total += i * i

print("ready", flush=True)
spin_in_a_known_function()
"""


@pytest.fixture
def busy_child():
    child = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    yield child
    child.kill()
    child.wait()


@needs_py_spy
@pytest.mark.slow
def test_py_spy_finds_the_function_a_real_process_is_busy_in(busy_child):
    profile = StackSampler(FAST).sample((busy_child.pid,))
    assert profile.unavailable is None
    top = profile.stacks[0]
    assert (top.pid, top.thread) == (busy_child.pid, "MainThread")
    # One stack per line of the loop: together they hold nearly every sample.
    assert sum(s.share for s in profile.stacks if s.frames[0].startswith("spin_in_a_known_function (<string>:")) >= 0.9
    assert profile.samples >= 20


def test_a_sample_that_read_only_the_processes_children_says_it_read_none_of_their_threads(tmp_path):
    # Seen once on an H100, mid-evaluation: py-spy's output held the compile workers' stacks alone.
    binary = stand_in(tmp_path, """
        pid = args[args.index('--pid') + 1]
        open(out, 'w').write(f'process {pid}:"python3 x.py";process 9:"python3 worker.py";'
                             f'thread (9): MainThread;_recv_msg (/torch/_inductor/pool.py:76) 20\\n')
    """)
    profile = StackSampler(FAST, binary=binary, ptrace_check=lambda: None).sample((os.getpid(),))
    assert profile.unavailable == "py-spy read none of the process's own threads"


def test_a_sample_spans_py_spys_reads_of_each_process_not_the_parsing_after(tmp_path):
    binary, _ = counting(tmp_path)
    wall = iter([100.0, 104.0, 109.0])  # before the first read, after the second, after parsing
    profile = StackSampler(FAST, binary=binary, wall_clock=lambda: next(wall), ptrace_check=lambda: None).sample(
        (4242, 4343))
    assert (profile.started, profile.timestamp, profile.seconds) == (100.0, 104.0, 4.0)


@pytest.fixture
def parent_and_lone():
    """A process with a child, and one without."""
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen(['sleep', '30']); print('ready', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    parent.stdout.readline()
    lone = subprocess.Popen(["sleep", "30"])
    yield parent, lone
    kill_with_children(parent, lone)


def kill_with_children(*processes: subprocess.Popen) -> None:
    """Each process killed after its children: a parent killed first leaves them running (a busy
    child spinning past the test)."""
    for process in processes:
        for child in psutil.Process(process.pid).children():
            child.kill()
        process.kill()
        process.wait()


def test_py_spy_looks_for_children_only_in_a_process_that_has_some(tmp_path, parent_and_lone):
    # py-spy's search for children reads every process on the node ten times a second.
    parent, lone = parent_and_lone
    asked = tmp_path / "asked"
    binary = stand_in(tmp_path, f"""
        pid = args[args.index('--pid') + 1]
        open({str(asked)!r}, 'a').write(f"{{pid}} {{'--subprocesses' in args}}\\n")
        open(out, 'w').write(f'thread ({{pid}}): MainThread;<module> (/x.py:1) 20\\n')
    """)
    StackSampler(FAST, binary=binary, ptrace_check=lambda: None).sample((parent.pid, lone.pid))
    assert asked.read_text().split("\n")[:2] == [f"{parent.pid} True", f"{lone.pid} False"]


def test_stacks_read_without_children_are_their_own_processes(tmp_path):
    # py-spy names no process in its records when it looks for no children.
    binary = stand_in(tmp_path, """
        pid = args[args.index('--pid') + 1]
        open(out, 'w').write(f'thread ({pid}): MainThread;step (/job{pid}.py:3) 20\\n')
    """)
    profile = StackSampler(FAST, binary=binary, ptrace_check=lambda: None).sample((4242, 4343))
    assert {(s.pid, s.frames[0]) for s in profile.stacks} == {(4242, "step (job4242.py:3)"),
                                                            (4343, "step (job4343.py:3)")}


def test_py_spys_warning_of_why_it_could_not_read_the_process_is_kept_with_the_reason(tmp_path):
    binary = stand_in(tmp_path, """
        pid = args[args.index('--pid') + 1]
        print(f'[2026-12-07T09:23:33Z WARN  py_spy::sampler] Failed to get stack trace from {pid}: Bad address '
              f'(os error 14)', file=sys.stderr)
        open(out, 'w').write(f'process {pid}:"python3 x.py";process 9:"python3 worker.py";'
                             f'thread (9): MainThread;_recv_msg (/torch/_inductor/pool.py:76) 20\\n')
    """)
    pid = os.getpid()
    profile = StackSampler(FAST, binary=binary, ptrace_check=lambda: None).sample((pid,))
    assert profile.unavailable == (f"py-spy read none of the process's own threads "
                                   f"(Failed to get stack trace from {pid}: Bad address (os error 14))")


BUSY_CHILD = """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", sys.argv[1]]).wait()
"""


@needs_py_spy
@pytest.mark.slow
def test_py_spy_reads_a_busy_child_of_a_process_and_a_lone_process_each_under_its_own_pid(busy_child):
    parent = subprocess.Popen([sys.executable, "-c", BUSY_CHILD, BUSY], stdout=subprocess.PIPE, text=True)
    try:
        parent.stdout.readline()
        [child] = psutil.Process(parent.pid).children()
        profile = StackSampler(FAST).sample((parent.pid, busy_child.pid))
        busy = {s.pid for s in profile.sampled if s.frames and s.frames[0].startswith("spin_in_a_known_function")}
        assert busy == {child.pid, busy_child.pid}
    finally:
        kill_with_children(parent)


@needs_py_spy
@pytest.mark.parametrize("exit_work", [
    "atexit.register(time.sleep, 10)",  # a C function run at exit: the main thread has no Python frame
    "threading.Thread(target=time.sleep, args=(10,)).start()",  # joined by threading._shutdown
])
def test_a_real_process_that_has_finished_its_script_is_read_as_exiting(exit_work):
    child = subprocess.Popen([sys.executable, "-c", f"import atexit, threading, time; {exit_work}; print('done')"],
                             stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # its script's last line: the rest is the interpreter exiting
        # (as the agent knows it from the samples it took while the script ran)
        assert read_stacks(StackSampler(FAST).sample((child.pid,)), ran_script=(child.pid,)).main["exiting"] >= 0.9
    finally:
        child.kill()
        child.wait()


@needs_py_spy
def test_a_pid_that_does_not_exist_says_the_process_has_exited():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert StackSampler(FAST).sample((child.pid,)).unavailable == "the process has exited"


@needs_py_spy
def test_a_process_that_is_not_python_says_so():
    child = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.2)  # until sleep has replaced the forked interpreter
        assert StackSampler(FAST).sample((child.pid,)).unavailable == "not a Python process"
    finally:
        child.kill()
        child.wait()


# -- the agent ----------------------------------------------------------------------------------

def simulated(scenario: str, seconds: int = 12, stacks=None):
    """An agent over one simulated GPU, ticked ``seconds`` virtual seconds, and a way to tick on."""
    config = Config()
    config.agent.simulate = [scenario]
    clock, wall = VirtualClock(0.0), VirtualClock(1.8e9)
    built = build_agent(config, clock=clock, wall_clock=wall)
    if stacks is not None:
        built.agent.stacks = stacks(clock, wall)

    def run(n: int):
        for _ in range(n):
            clock.now += 1.0
            wall.now += 1.0
            built.agent.tick()
        return built.agent.state

    run(seconds)
    return built.agent, run


def test_simulated_gpus_say_their_stacks_are_simulated():
    agent, run = simulated("input_starved")
    assert agent.state.gpus[0].finding.stacks.unavailable == "simulated"


def test_a_healthy_job_is_sampled_once_in_its_segment_and_still_has_no_finding(tmp_path):
    # Once, to learn whether it trains (what a later stall running its model forward only is).
    binary, calls = counting(tmp_path)
    agent, run = simulated("healthy", stacks=lambda clock, wall: StackSampler(
        binary=binary, clock=clock, wall_clock=wall, ptrace_check=lambda: None))
    for _ in range(60):
        agent.stacks.wait(30)
        run(1)
    assert agent.state.gpus[0].finding is None
    assert len(calls.read_text().split()) == 1


def test_the_agent_goes_on_and_its_finding_says_why_when_py_spy_cannot_run(tmp_path):
    agent, run = simulated("held_idle", stacks=lambda clock, wall: StackSampler(
        binary=str(tmp_path / "absent"), clock=clock, wall_clock=wall, ptrace_check=lambda: None))
    assert agent.stacks.wait(30)
    state = run(1)
    assert state.gpus[0].finding.cause == "held_idle"
    assert state.gpus[0].finding.stacks.unavailable == "py-spy could not run: No such file or directory"


# -- where stacks show ---------------------------------------------------------------------------

PROFILE = StackProfile(pids=(4242,), samples=40, stacks=(
    StackShare(share=0.62, frames=("encode (prep.py:88)", "collate (train.py:41)"), thread="MainThread", pid=4242,
               paths=("/home/ada/prep.py", "/home/ada/train.py"), code='key = "s3cr3t"; encode(text)'),))
STARVED = Finding(cause="input_starved", severity="page", confidence=0.75, evidence={"utilization": 0.2},
                  advice="More workers.", summary="GPU starved", stacks=PROFILE)


def test_status_json_carries_the_top_frames_and_a_summary_but_no_source_code():
    doc = evidence_document(STARVED)
    assert doc["stacks"] == [{"share": 0.62, "frames": ["encode (prep.py:88)", "collate (train.py:41)"],
                              "thread": "MainThread", "pid": 4242}]
    assert doc["stack_summary"] == "62 % in encode (prep.py:88) ← collate (train.py:41)"
    assert "s3cr3t" not in json.dumps(doc) and "/home/ada" not in json.dumps(doc)


def test_the_status_table_shows_the_stack_under_the_finding():
    agent, run = simulated("input_starved")
    table = status_table(status_document(agent.state))
    assert "  stacks unavailable: simulated" in table.splitlines()


def test_the_alerts_stacks_annotation_is_one_short_line():
    long = replace(PROFILE, stacks=(replace(PROFILE.stacks[0], frames=("f" * 400 + " (x.py:1)",)),))
    text = annotations(tick(0.0, finding=replace(STARVED, stacks=long)).gpus[0], "http://node1:9765/")["stacks"]
    assert len(text) == STACKS_ANNOTATION_CHARS and text.startswith("62 % in fff") and "\n" not in text


def test_the_alerts_evidence_line_holds_plain_figures_only():
    finding = replace(STARVED, evidence={"utilization": 0.2, "stack_activities": {"main": {"tokenizing": 0.62}}})
    assert annotations(tick(0.0, finding=finding).gpus[0], "http://node1:9765/")["evidence"] == "utilization=0.2"


def test_the_alert_says_why_stacks_are_missing():
    finding = replace(STARVED, stacks=StackProfile(pids=(1,), samples=0, unavailable="simulated"))
    assert annotations(tick(0.0, finding=finding).gpus[0], "")["stacks"] == "unavailable: simulated"


def test_the_agent_publishes_the_cause_the_culprits_stacks_support(tmp_path):
    # py-spy's stand-in answers for the simulated process: its main thread runs the model's forward.
    forward = ("<module> (/home/ada/train.py:60);_call_impl (/usr/lib/python3.11/site-packages/torch/nn/modules/module.py:1747);"
               "forward (/usr/lib/python3.11/site-packages/torch/nn/modules/linear.py:125)")
    binary = stand_in(tmp_path, f"""
        pid = args[args.index('--pid') + 1]
        open(out, 'w').write(f'process {{pid}}:"python3 train.py";thread ({{pid}}): MainThread;{forward} 40\\n')
    """)
    agent, run = simulated("input_starved", stacks=lambda clock, wall: StackSampler(
        binary=binary, clock=clock, wall_clock=wall, ptrace_check=lambda: None))
    assert agent.stacks.wait(30)
    gpu = run(5).gpus[0]  # the scenario's GPU is busy in bursts: some of these seconds are under the threshold
    assert (gpu.finding.cause, gpu.finding.evidence["stacks_corrected_from"]) == ("launch_bound", "input_starved")
    assert gpu.finding.stacks.stacks[0].frames[0] == "forward (torch/nn/modules/linear.py:125)"
    assert "launch_bound" in gpu.wasted_seconds


def test_a_source_line_is_read_through_the_process_root_or_its_working_directory(tmp_path):
    (tmp_path / "prep.py").write_text("import os\nchunk = os.read(fd, 1 << 20)\n")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], cwd=tmp_path)
    try:
        assert read_source_line(child.pid, str(tmp_path / "prep.py"), 2) == "chunk = os.read(fd, 1 << 20)"
        assert read_source_line(child.pid, "prep.py", 2) == "chunk = os.read(fd, 1 << 20)"
        assert read_source_line(child.pid, "<string>", 2) == ""
    finally:
        child.kill()
        child.wait()


def test_a_phases_turn_that_comes_too_soon_after_the_last_sample_is_asked_for_again(tmp_path):
    # A sample at 53 s, the next turn at 55 s: not due until 55.5 s, the agent is told to ask again.
    binary, calls = counting(tmp_path)
    clock = VirtualClock(53.0)
    sampler = StackSampler(StacksConfig(phase_interval_seconds=5.0), binary=binary, clock=clock,
                           ptrace_check=lambda: None)
    assert sampler.request(0, [os.getpid()], new_segment=True)
    assert sampler.wait(30)
    clock.now = 55.0
    assert sampler.request(0, [os.getpid()], phase=True) is False
    clock.now = 56.0
    assert sampler.request(0, [os.getpid()], phase=True) is True
    assert sampler.wait(30)
    assert len(calls.read_text().split()) == 2
