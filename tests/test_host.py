"""The host source over real processes started by the test."""

import os
import subprocess
import sys
import time

import pytest

from flopwatch.sources.host import HostSource

# The worker stops once its parent is gone: killing the parent leaves a daemon child running.
SPIN_CHILD = (
    "import multiprocessing as m, os, time\n"
    "def spin(parent):\n    while os.getppid() == parent: pass\n"
    "if __name__ == '__main__':\n    m.Process(target=spin, args=(os.getpid(),), daemon=True).start()\n    time.sleep(60)\n"
)
SPIN_MAIN = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"


@pytest.fixture
def process(request):
    proc = subprocess.Popen([sys.executable, "-c", request.param])
    yield proc
    proc.kill()
    proc.wait()


def _read_twice(pid: int):
    host = HostSource()
    host.read([pid], time.time())
    time.sleep(1.0)  # CPU use is a rate: it needs two readings a real second apart
    return host.read([pid], time.time()).processes[pid]


@pytest.mark.parametrize("process", [SPIN_CHILD], indirect=True)
def test_loader_workers_show_as_children_cpu(process):
    time.sleep(0.5)
    seen = _read_twice(process.pid)
    # The worker does the work, the main process sleeps (ratios, so a loaded machine still agrees).
    assert seen.children == 1 and seen.children_cpu_ratio > 0
    assert seen.children_cpu_ratio > 5 * seen.busiest_thread_cpu_ratio


@pytest.mark.parametrize("process", [SPIN_MAIN], indirect=True)
def test_a_busy_main_thread_shows_as_the_busiest_thread(process):
    seen = _read_twice(process.pid)
    assert seen.children == 0 and seen.cpu_ratio > 0
    assert seen.busiest_thread_cpu_ratio == pytest.approx(seen.cpu_ratio, rel=0.2)


def test_a_process_that_is_gone_is_left_out():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert proc.pid not in HostSource().read([proc.pid], time.time()).processes


def test_within_a_counter_period_a_process_is_carried_and_a_new_one_is_read_at_once():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        now = [0.0]
        host = HostSource(clock=lambda: now[0], counter_interval_seconds=10.0)
        me = os.getpid()

        def read(t: float, *pids: int):
            now[0] = t
            return host.read(pids, t).processes

        read(0.0, me)  # first sight, and again on the next tick: its rates are known from then
        second = read(1.0, me)[me]
        assert second.cpu_ratio is not None
        assert read(2.0, me)[me] is second  # carried until the next counter period (every 10 s)
        assert sleeper.pid in read(3.0, me, sleeper.pid)  # a new process is read at once
        fourth = read(4.0, me, sleeper.pid)
        assert fourth[sleeper.pid].cpu_ratio is not None
        assert read(9.0, me, sleeper.pid)[me] is fourth[me]
        assert read(10.0, me, sleeper.pid)[me] is not fourth[me]  # the period's first tick
    finally:
        sleeper.kill()
        sleeper.wait()
