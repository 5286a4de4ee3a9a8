"""The host side of a tick (psutil and /proc): host CPU and iowait, and for each GPU process its
CPU use, busiest thread, threads in disk wait, data-loader children, RSS and I/O rates.

Everything here is a counter except the thread states, so it is read every
``counter_interval_seconds``, as NVML's costly counters are, and carried between reads: a rate over
ten seconds gives the diagnosis window the same mean as ten rates over one, and a training
process's ~20 threads cost two dozen /proc reads each time (a sixth of a tick's CPU on an H100
node when read every tick). A process seen for the first time is read at once and again on the next tick, so its
rates are known from its second tick."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import psutil

from flopwatch.model import HostProcess, HostSample, Identity
from flopwatch.sources.redact import redact_cmdline
from flopwatch.sources import counter_period
from flopwatch.sources.identity import JOB_RULES, check_rules, job_name, read_identity
from flopwatch.sources.procfs import (BLKIO_TICKS, PAGE_SIZE, PPID, RSS_PAGES, STATE, STATES, STIME, Pressure, ProcFiles, SchedStat,
                                      blkio_seconds, child_pids, cpu_seconds, host_cpu_ticks, io_bytes, load_average, pressure, schedstat,
                                      stat_fields)

# Listing descendants scans all of /proc; loader workers live for the whole job, so a fresh list
# every few seconds is enough (their CPU is still read every tick).
CHILDREN_REFRESH_SECONDS = 10.0
# A share of ticks in disk wait needs a few ticks: one snapshot is not a share.
MIN_STATE_TICKS = 3


@dataclass(frozen=True)
class _Who:
    """Who a process is: read once, on first sight (it does not change under the process)."""

    name: str
    user: str | None
    cmdline: str  # redacted
    identity: Identity
    job: str


@dataclass
class _Seen:
    """What the previous tick saw of one process, to turn counters into rates."""

    process: psutil.Process
    at: float
    cpu_seconds: float
    thread_cpu_seconds: dict[int, float]
    thread_sched: dict[int, SchedStat]
    blkio_seconds: float | None
    children: list[int]
    children_listed_at: float
    children_cpu_seconds: dict[int, float]
    children_wait_seconds: dict[int, float]
    children_io_bytes: dict[int, int]
    io_read_bytes: int | None
    io_write_bytes: int | None
    who: _Who


class Cadence:
    """A host read on the first tick of each counter period, the tick the GPU reader reads its
    costly counters, and carried between: the very same sample, whose timestamp says when it was
    read. A pid not asked for before is read at once, and again on the next tick (its rates need
    two reads)."""

    def __init__(self, read: Callable[[set[int], float], HostSample], interval_seconds: float,
                 clock: Callable[[], float]):
        self._read = read
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._asked: set[int] = set()  # the pids of the last read
        self._period: float | None = None  # the counter period of the last read; None: read next tick
        self._last: HostSample | None = None

    def read(self, pids: Iterable[int], timestamp: float) -> HostSample:
        period = counter_period(self.clock(), self.interval_seconds)
        pids = set(pids)
        new = not pids <= self._asked
        last = self._last
        if last is not None and period == self._period and not new:
            if pids == self._asked:
                return last
            return replace(last, processes={pid: p for pid, p in last.processes.items() if pid in pids})
        self._asked = pids
        self._period = None if new else period
        self._last = self._read(pids, timestamp)
        return self._last


class HostSource:
    name = "host"

    def __init__(self, clock: Callable[[], float] = time.monotonic, proc_root: str = "/proc",
                 job_rules: Iterable[str] = JOB_RULES, counter_interval_seconds: float = 10.0):
        self.clock = clock
        self.proc_root = proc_root
        self.job_rules = check_rules(job_rules)
        self._seen: dict[int, _Seen] = {}
        self._files = ProcFiles()
        me = os.getpid()
        self._children_files = os.path.exists(f"{proc_root}/{me}/task/{me}/children")
        self._cpu_ticks = host_cpu_ticks(self._files.read(f"{proc_root}/stat"))
        self._cpu_count = psutil.cpu_count() or 1
        self._pressure: dict[str, tuple[float, Pressure | None]] = {
            kind: (clock(), self._read_pressure(kind)) for kind in ("cpu", "io")}
        self._cadence = Cadence(self._read_now, counter_interval_seconds, clock)
        self._states: dict[int, list[int]] = {}  # pid → [ticks seen, ticks in disk wait] since its last read

    def read(self, pids: Iterable[int], timestamp: float) -> HostSample:
        pids = set(pids)
        self._tally_states(pids)
        return self._cadence.read(pids, timestamp)

    def _tally_states(self, pids: set[int]) -> None:
        """Each tick, whether each process's main thread is in disk wait: one kept file read a
        process, so a wait that lasts most of a period shows, where the period's one snapshot of
        every thread would see it at best once."""
        for pid in pids:
            stat = self._files.read(f"{self.proc_root}/{pid}/stat")
            if stat is not None:
                tally = self._states.setdefault(pid, [0, 0])
                tally[0] += 1
                tally[1] += stat_fields(stat, 1)[STATE] == b"D"

    def _read_now(self, pids: set[int], timestamp: float) -> HostSample:
        now = self.clock()
        cpu_busy, iowait = self._host_cpu()
        processes = {}
        alive = set()
        for pid in pids:
            proc = self._read_process(pid, now)
            if proc is not None:
                processes[pid] = proc
                alive.add(pid)
        for pid in set(self._seen) - alive:
            del self._seen[pid]
        for pid in set(self._states) - alive:
            del self._states[pid]
        cpu_some, _ = self._pressure_ratios("cpu", now)
        io_some, io_full = self._pressure_ratios("io", now)
        load = load_average(self._files.read(f"{self.proc_root}/loadavg"))
        self._files.sweep()
        return HostSample(timestamp=timestamp, cpu_count=self._cpu_count, cpu_busy_ratio=cpu_busy,
                          iowait_ratio=iowait, processes=processes, cpu_pressure_ratio=cpu_some,
                          io_pressure_ratio=io_some, io_full_pressure_ratio=io_full,
                          load_per_core=load / self._cpu_count if load is not None else None)

    def close(self) -> None:
        self._files.close()

    def _host_cpu(self) -> tuple[float | None, float | None]:
        """The host's busy and iowait shares since the last tick, from /proc/stat's first line."""
        now = host_cpu_ticks(self._files.read(f"{self.proc_root}/stat"))
        before, self._cpu_ticks = self._cpu_ticks, now
        if now is None or before is None:
            return None, None
        total = now.total - before.total
        if total <= 0:
            return None, None
        idle, iowait = now.idle - before.idle, now.iowait - before.iowait
        return 1.0 - (idle + iowait) / total, iowait / total

    def _read_pressure(self, kind: str) -> Pressure | None:
        return pressure(self._files.read(f"{self.proc_root}/pressure/{kind}"))

    def _pressure_ratios(self, kind: str, now: float) -> tuple[float | None, float | None]:
        """PSI's some and full shares since the last read, from its µs counters (exact, where the
        avg10 figures are decaying averages)."""
        at, before = self._pressure[kind]
        current = self._read_pressure(kind)
        self._pressure[kind] = (now, current)
        if current is None or before is None or now <= at:
            return None, None
        some = min(max(current.some_seconds - before.some_seconds, 0.0) / (now - at), 1.0)
        full = None
        if current.full_seconds is not None and before.full_seconds is not None:
            full = min(max(current.full_seconds - before.full_seconds, 0.0) / (now - at), 1.0)
        return some, full

    def _descendants(self, process: psutil.Process) -> list[int]:
        """Every descendant's pid. The kernel's per-thread children files name them for a few
        reads; without those files, psutil scans every process on the node."""
        if not self._children_files:
            return [c.pid for c in _safe(lambda: process.children(recursive=True)) or []]
        found: list[int] = []
        todo = [process.pid]
        while todo:
            kids = child_pids(todo.pop(), self._files.read, self.proc_root)
            found += kids
            todo += kids
        return found

    def _threads(self, pid: int) -> tuple[dict[int, float], dict[int, SchedStat], int, float | None]:
        """Per thread, from /proc/PID/task: CPU seconds and the scheduler's counters; how many threads
        wait on disk now; their block-I/O delay summed (None where the kernel keeps no such count)."""
        cpu: dict[int, float] = {}
        sched: dict[int, SchedStat] = {}
        disk_wait = 0
        blkio: float | None = None
        task_dir = f"{self.proc_root}/{pid}/task"
        try:
            tids = os.listdir(task_dir)
        except OSError:
            return cpu, sched, 0, None
        for tid in tids:
            stat = self._files.read(f"{task_dir}/{tid}/stat")
            if stat is None:
                continue
            fields = stat_fields(stat, BLKIO_TICKS + 1)
            if fields[STATE] == b"D":
                disk_wait += 1
            cpu[int(tid)] = cpu_seconds(fields)
            delay = blkio_seconds(fields)
            if delay is not None:
                blkio = (blkio or 0.0) + delay
            counters = schedstat(self._files.read(f"{task_dir}/{tid}/schedstat"))
            if counters is not None:
                sched[int(tid)] = counters
        return cpu, sched, disk_wait, blkio

    def _read_process(self, pid: int, now: float) -> HostProcess | None:
        seen = self._seen.get(pid)
        stat = self._files.read(f"{self.proc_root}/{pid}/stat")
        if stat is None:
            return None
        fields = stat_fields(stat)
        state = fields[STATE].decode()
        if state in ("Z", "X"):
            return None
        try:
            process = seen.process if seen is not None else psutil.Process(pid)
            who = seen.who if seen is not None else self._who(pid, process)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:
            return HostProcess(pid=pid, name="?", state="unknown")
        cpu = cpu_seconds(fields)
        ticks, in_disk_wait = self._states.pop(pid, (0, 0))
        io_read, io_write = io_bytes(self._files.read(f"{self.proc_root}/{pid}/io"))
        thread_cpu, thread_sched, disk_wait, blkio = self._threads(pid)
        if seen is not None and now - seen.children_listed_at < CHILDREN_REFRESH_SECONDS:
            children, listed_at = seen.children, seen.children_listed_at
        else:
            children, listed_at = self._descendants(process), now
        children_cpu = {c: v for c in children if (v := self._cpu_seconds(c)) is not None}
        # A worker's own schedstat is its main thread's: where a loader worker does its work.
        children_wait = {c: counters.wait_seconds for c in children
                         if (counters := schedstat(self._files.read(f"{self.proc_root}/{c}/schedstat"))) is not None}
        children_io = {c: v for c in children if (v := self._io_total(c)) is not None}
        self._seen[pid] = _Seen(process, now, cpu, thread_cpu, thread_sched, blkio, children, listed_at, children_cpu,
                                children_wait, children_io, io_read, io_write, who)
        cpu_ratio = busiest = children_ratio = read_rate = write_rate = None
        demand = wait = children_wait_ratio = children_io_rate = blkio_ratio = None
        if seen is not None and now > seen.at:
            dt = now - seen.at
            cpu_ratio = max(cpu - seen.cpu_seconds, 0.0) / dt
            deltas = [v - seen.thread_cpu_seconds.get(tid, v) for tid, v in thread_cpu.items()]
            busiest = max(deltas, default=0.0) / dt
            demand, wait = _most_demanding(thread_sched, seen.thread_sched, dt)
            # Only children seen both times count: a new worker's lifetime CPU is not this tick's.
            children_ratio = sum(max(v - seen.children_cpu_seconds[c], 0.0) for c, v in children_cpu.items()
                                 if c in seen.children_cpu_seconds) / dt
            if children_wait:
                children_wait_ratio = sum(max(v - seen.children_wait_seconds[c], 0.0) for c, v in children_wait.items()
                                          if c in seen.children_wait_seconds) / dt
            if children_io:
                children_io_rate = sum(max(v - seen.children_io_bytes[c], 0) for c, v in children_io.items()
                                       if c in seen.children_io_bytes) / dt
            # Counters still at zero are delay accounting switched off (kernel.task_delayacct), not no wait.
            if blkio and seen.blkio_seconds is not None:
                blkio_ratio = max(blkio - seen.blkio_seconds, 0.0) / dt
            if io_read is not None and seen.io_read_bytes is not None:
                read_rate = max(io_read - seen.io_read_bytes, 0) / dt
            if io_write is not None and seen.io_write_bytes is not None:
                write_rate = max(io_write - seen.io_write_bytes, 0) / dt
        return HostProcess(
            pid=pid, name=who.name, user=who.user, cmdline=who.cmdline, state=STATES.get(state, state),
            cpu_ratio=cpu_ratio, busiest_thread_cpu_ratio=busiest, thread_demand_ratio=demand,
            thread_wait_ratio=wait, threads=len(thread_cpu), threads_in_disk_wait=disk_wait,
            blkio_delay_ratio=blkio_ratio,
            main_thread_disk_wait_ratio=in_disk_wait / ticks if ticks >= MIN_STATE_TICKS else None, children=len(children), children_cpu_ratio=children_ratio,
            children_wait_ratio=children_wait_ratio, ppid=int(fields[PPID]),
            rss_bytes=int(fields[RSS_PAGES]) * PAGE_SIZE, io_read_bytes_per_second=read_rate,
            io_write_bytes_per_second=write_rate, children_io_bytes_per_second=children_io_rate, job=who.job,
            identity=who.identity,
        )

    def _cpu_seconds(self, pid: int) -> float | None:
        stat = self._files.read(f"{self.proc_root}/{pid}/stat")
        return cpu_seconds(stat_fields(stat, STIME + 1)) if stat is not None else None

    def _io_total(self, pid: int) -> int | None:
        """Bytes read and written from storage; None where /proc/PID/io is not ours to read."""
        read, write = io_bytes(self._files.read(f"{self.proc_root}/{pid}/io"))
        return read + write if read is not None and write is not None else None

    def _who(self, pid: int, process: psutil.Process) -> _Who:
        name = process.name()
        user = _safe(process.username)
        identity = read_identity(pid, self.proc_root)
        return _Who(name, user, redact_cmdline(_safe(process.cmdline) or []), identity,
                    job_name(self.job_rules, identity, user, name))


def _most_demanding(now: dict[int, SchedStat], before: dict[int, SchedStat],
                    dt: float) -> tuple[float | None, float | None]:
    """The run + run-queue wait (cores) of the thread that wanted a CPU most, and its wait; None
    without schedstat. Threads seen only once are left out: their counters are lifetimes."""
    best: tuple[float, float] | None = None
    for tid, c in now.items():
        b = before.get(tid)
        if b is None:
            continue
        run, wait = max(c.run_seconds - b.run_seconds, 0.0), max(c.wait_seconds - b.wait_seconds, 0.0)
        if best is None or run + wait > best[0]:
            best = (run + wait, wait)
    if best is None:
        return None, None
    return best[0] / dt, best[1] / dt


def _safe(fn: Callable) -> object:
    try:
        return fn()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return None
