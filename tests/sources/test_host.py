"""The host source over real processes started by the test."""

import os
import re
import subprocess
import sys
import time

import pytest

from flopwatch.sources.host import HostSource
from flopwatch.sources.procfs import CLOCK_TICKS

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


# Pinned to one core, a spinning process and its twin: each always runnable, each on the CPU about
# half the time and waiting on the run queue for the rest.
SPIN_ON_CPU0 = "import os\nos.sched_setaffinity(0, {0})\nwhile True: pass\n"


def test_a_thread_that_shares_its_core_wants_the_whole_core_and_waits_for_part_of_it():
    procs = [subprocess.Popen([sys.executable, "-c", SPIN_ON_CPU0]) for _ in range(2)]
    try:
        time.sleep(0.3)
        seen = _read_twice(procs[0].pid)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert seen.thread_demand_ratio == pytest.approx(1.0, abs=0.15)
    assert seen.thread_wait_ratio > 0.25
    assert seen.busiest_thread_cpu_ratio < 0.8  # by its CPU time alone, it would not look CPU-bound


def _write(root, path: str, text: str) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "r+" if target.exists() else "w") as f:  # the same file: readers keep it open
        f.truncate(0)
        f.write(text)


def _proc_at(root, pid: int, cpu_ticks: int, run_s: float, wait_s: float, blkio_ticks: int, psi_cpu_us: int,
             psi_io_us: int, read_bytes: int) -> None:
    """A /proc with one single-threaded process, in the kernel's formats."""
    stat = f"{pid} (python) S 1" + " 0" * 9 + f" {cpu_ticks} 0" + " 0" * 8 + " 1000" + " 0" * 17 + f" {blkio_ticks} 0 0\n"
    _write(root, f"{pid}/stat", stat)
    _write(root, f"{pid}/task/{pid}/stat", stat)
    _write(root, f"{pid}/task/{pid}/schedstat", f"{int(run_s * 1e9)} {int(wait_s * 1e9)} 100\n")
    _write(root, f"{pid}/io", f"rchar: 0\nwchar: 0\nread_bytes: {read_bytes}\nwrite_bytes: 0\n")
    _write(root, "stat", "cpu  100 0 50 800 40 0 10 0 0 0\n")
    _write(root, "loadavg", "32.00 24.10 12.02 33/1200 4242\n")
    _write(root, "pressure/cpu", f"some avg10=90.00 avg60=0 avg300=0 total={psi_cpu_us}\nfull avg10=0 avg60=0 avg300=0 total=0\n")
    _write(root, "pressure/io", f"some avg10=0 avg60=0 avg300=0 total={psi_io_us}\nfull avg10=0 avg60=0 avg300=0 total={psi_io_us // 2}\n")


def _host_over(root, pid: int, without: tuple[str, ...] = ()) -> tuple[HostSource, list[float]]:
    """A host source over a /proc whose counters all start at zero (less the files ``without``),
    read once, and the clock it reads."""
    _proc_at(root, pid, cpu_ticks=0, run_s=0.0, wait_s=0.0, blkio_ticks=0, psi_cpu_us=0, psi_io_us=0, read_bytes=0)
    for path in without:
        (root / path).unlink()
    now = [0.0]
    host = HostSource(clock=lambda: now[0], proc_root=str(root), counter_interval_seconds=10.0)
    host.read([pid], 0.0)
    return host, now


def test_scheduling_pressure_and_block_io_are_rates_over_the_counter_interval(tmp_path):
    pid = os.getpid()  # psutil names the process; the figures come from the files
    host, now = _host_over(tmp_path, pid)
    now[0] = 10.0
    ticks = int(5.0 * CLOCK_TICKS)
    _proc_at(tmp_path, pid, cpu_ticks=ticks, run_s=5.0, wait_s=4.5, blkio_ticks=2 * CLOCK_TICKS, psi_cpu_us=9_000_000,
             psi_io_us=3_000_000, read_bytes=15_000_000_000)
    sample = host.read([pid], 10.0)
    seen = sample.processes[pid]
    assert (seen.thread_demand_ratio, seen.thread_wait_ratio) == pytest.approx((0.95, 0.45))
    assert seen.blkio_delay_ratio == pytest.approx(0.2)
    assert seen.io_read_bytes_per_second == pytest.approx(1.5e9)
    assert (sample.cpu_pressure_ratio, sample.io_pressure_ratio, sample.io_full_pressure_ratio) == pytest.approx((0.9, 0.3, 0.15))
    assert sample.load_per_core == pytest.approx(32.0 / sample.cpu_count)


def test_block_io_delay_counters_at_zero_are_unknown_not_no_wait(tmp_path):
    # Delay accounting is off unless kernel.task_delayacct is set: the counters then stay at zero.
    pid = os.getpid()
    host, now = _host_over(tmp_path, pid)
    now[0] = 10.0
    assert host.read([pid], 10.0).processes[pid].blkio_delay_ratio is None


def test_without_schedstat_or_psi_the_figures_are_unknown(tmp_path):
    pid = os.getpid()
    host, now = _host_over(tmp_path, pid, without=(f"{pid}/task/{pid}/schedstat", "pressure/cpu", "pressure/io"))
    now[0] = 10.0
    sample = host.read([pid], 10.0)
    assert (sample.processes[pid].thread_demand_ratio, sample.processes[pid].thread_wait_ratio) == (None, None)
    assert (sample.cpu_pressure_ratio, sample.io_pressure_ratio) == (None, None)


def test_the_main_thread_s_disk_wait_is_a_share_of_the_ticks_between_counter_reads(tmp_path):
    pid = os.getpid()
    host, now = _host_over(tmp_path, pid)
    host.read([pid], 1.0)  # a process seen first is read again on its second tick
    for t in range(2, 11):
        now[0] = float(t)
        state = "S" if t in (4, 8) else "D"
        _write(tmp_path, f"{pid}/stat", re.sub(r"\) [SD] ", f") {state} ", (tmp_path / f"{pid}/stat").read_text()))
        sample = host.read([pid], float(t))
    # Ticks 2 to 10: nine states, two of them sleeping.
    assert sample.processes[pid].main_thread_disk_wait_ratio == pytest.approx(7 / 9)
