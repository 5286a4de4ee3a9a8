"""/proc files read every tick through descriptors kept open.

``pread`` on a kept descriptor costs a quarter of open, read and close (a training process has
dozens of threads, each with a stat file read every tick), and a descriptor stays bound to the
task it was opened for: once that task is gone, reads fail rather than answer for a new process
that reused its pid.
"""

from __future__ import annotations

import os
import resource
from typing import Callable, NamedTuple

# /proc/PID/stat after the ")" that ends the command name: 0-based indexes of the fields used
# (delayacct_blkio_ticks is the stat's field 42).
STATE, PPID, UTIME, STIME, RSS_PAGES, BLKIO_TICKS = 0, 1, 11, 12, 21, 39
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# psutil's names for the states, so HostProcess.state reads the same as before.
STATES = {"R": "running", "S": "sleeping", "D": "disk-sleep", "T": "stopped", "t": "tracing-stop",
          "Z": "zombie", "X": "dead", "I": "idle", "P": "parked", "W": "waking", "K": "wake-kill"}


class ProcFiles:
    """Descriptors of the /proc files read this tick and the last. Past a quarter of the open-files
    limit, files are opened, read and closed each time, so the agent never runs out of them."""

    def __init__(self, limit: int | None = None):
        self.limit = limit if limit is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4
        self._fds: dict[str, int] = {}
        self._used: set[str] = set()

    def read(self, path: str) -> bytes | None:
        """The file's content, or None when it cannot be read (the task is gone, no permission)."""
        self._used.add(path)
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            if len(self._fds) >= self.limit:
                try:
                    return os.pread(fd, 4096, 0)
                except OSError:
                    return None
                finally:
                    os.close(fd)
            self._fds[path] = fd
        try:
            return os.pread(fd, 4096, 0)
        except OSError:
            os.close(self._fds.pop(path))
            return None

    def sweep(self) -> None:
        """Close the descriptors of files not read since the last sweep (tasks gone, processes
        no longer on a GPU)."""
        for path in self._fds.keys() - self._used:
            os.close(self._fds.pop(path))
        self._used = set()

    def close(self) -> None:
        self._used = set()
        self.sweep()


def child_pids(pid: int, read: Callable[[str], bytes | None], proc_root: str = "/proc") -> list[int]:
    """The process's children, from the kernel's per-thread children files (a few reads, where
    psutil scans every process on the node); none where the process is gone."""
    task_dir = f"{proc_root}/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return []
    return [int(child) for tid in tids for child in (read(f"{task_dir}/{tid}/children") or b"").split()]


def read_once(path: str, limit: int = -1) -> bytes | None:
    """A /proc file's content (up to ``limit`` bytes), opened, read and closed; None when it
    cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def stat_fields(data: bytes, needed: int = RSS_PAGES + 1) -> list[bytes]:
    """The first ``needed`` fields of /proc/PID/stat after the command name (which may hold
    spaces and ")"); the rest stay unsplit, in one last item."""
    return data[data.rfind(b")") + 2:].split(None, needed)


def cpu_seconds(fields: list[bytes]) -> float:
    return (int(fields[UTIME]) + int(fields[STIME])) / CLOCK_TICKS


def blkio_seconds(fields: list[bytes]) -> float | None:
    """Time the task waited for block I/O, by delay accounting; None where the stat lacks it."""
    return int(fields[BLKIO_TICKS]) / CLOCK_TICKS if len(fields) > BLKIO_TICKS else None


class SchedStat(NamedTuple):
    """/proc/PID/task/TID/schedstat: the scheduler's counters for one thread."""

    run_seconds: float  # on a CPU
    wait_seconds: float  # runnable, waiting on a run queue for a CPU
    timeslices: int


def schedstat(data: bytes | None) -> SchedStat | None:
    """The three counters, or None where the kernel has no schedstat (CONFIG_SCHED_INFO off)."""
    if not data:
        return None
    values = data.split()
    if len(values) < 3:
        return None
    return SchedStat(int(values[0]) / 1e9, int(values[1]) / 1e9, int(values[2]))


class Pressure(NamedTuple):
    """PSI totals: seconds in which some (and all) non-idle tasks were stalled on the resource."""

    some_seconds: float
    full_seconds: float | None  # /proc/pressure/cpu's "full" is 0 before 5.13 and meaningless system-wide


def pressure(data: bytes | None) -> Pressure | None:
    """The ``total=`` counters (µs) of a /proc/pressure file; None where the kernel has no PSI."""
    if not data:
        return None
    totals = {}
    for line in data.splitlines():
        kind, _, rest = line.partition(b" ")
        for item in rest.split():
            if item.startswith(b"total="):
                totals[kind] = int(item[6:]) / 1e6
    if b"some" not in totals:
        return None
    return Pressure(totals[b"some"], totals.get(b"full"))


def load_average(data: bytes | None) -> float | None:
    """The one-minute load average: runnable tasks (and those in disk wait), averaged."""
    if not data:
        return None
    return float(data.split()[0])


def io_bytes(data: bytes | None) -> tuple[int | None, int | None]:
    """read_bytes and write_bytes from /proc/PID/io (None where it cannot be read)."""
    if data is None:
        return None, None
    values = dict(line.split(b": ", 1) for line in data.splitlines() if b": " in line)
    read, write = values.get(b"read_bytes"), values.get(b"write_bytes")
    return (int(read) if read is not None else None, int(write) if write is not None else None)


class HostCpuTicks(NamedTuple):
    total: int  # guest time is already in user and nice, so not added again
    idle: int
    iowait: int


def host_cpu_ticks(data: bytes | None) -> HostCpuTicks | None:
    """The whole host's CPU time from /proc/stat's first line (user nice system idle iowait irq
    softirq steal guest guest_nice), in clock ticks."""
    if data is None:
        return None
    values = [int(v) for v in data[:data.find(b"\n")].split()[1:9]]
    return HostCpuTicks(sum(values), values[3], values[4] if len(values) > 4 else 0)
