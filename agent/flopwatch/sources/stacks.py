"""Python stacks of a GPU's processes, sampled with py-spy without stopping them.

py-spy reads the target's memory (process_vm_readv), which needs the right to ptrace it: root,
or CAP_SYS_PTRACE where ``kernel.yama.ptrace_scope`` is 1 or 2; never where it is 3. Sampling
runs on one background thread, a few dozen samples over ~2 s, at most once per process in
``min_interval_seconds``: the tick only asks, and reads what the last sample left.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import psutil

from flopwatch.config import StacksConfig
from flopwatch.model import StackProfile, StackShare
from flopwatch.sources.procfs import child_pids, read_once

log = logging.getLogger(__name__)
# py-spy reads the interpreter's version from a buffer Python fills when it is first asked for
# (sys.version), else from the binary's path: a Python job seconds into its imports, run by a
# python3 without the version in its path, can read as this for a while.
NOT_PYTHON = "not a Python process"
_REMEMBERED_PROCESSES = 256  # past this many, those sampled over min_interval_seconds ago are forgotten

CAP_SYS_PTRACE = 19
GRANT = "run as root or grant CAP_SYS_PTRACE (systemd: AmbientCapabilities=CAP_SYS_PTRACE)"

# process 8322:"python3 train.py";thread (8322): MainThread;<module> (/x/train.py:10);step (/x/train.py:7) 39
# A child's line names its parents first: the pid that counts is the last one. A command line
# may hold newlines and quotes, so a record runs until the next line that starts one (a run that
# looked for no children names no process: its records start at the thread).
_RECORD_START = re.compile(r'\n(?=process \d+:"|thread \()')
# A thread with no Python frame (a main thread once its script has returned, the interpreter
# finalizing) is its name and the count alone: ``thread (8322): MainThread 12``.
_LINE = re.compile(r'^(?:process (?P<pid>\d+):".*?";(?=thread \(|process ))*'
                   r'(?:thread \((?P<tid>[0-9a-fx]+)\)(?:: (?P<thread>[^;\n]*?))?(?:;|(?= \d+$)))?'
                   r'(?P<frames>[^\n]*?) ?(?P<count>\d+)$', re.S)
_FRAME = re.compile(r'^(?P<fn>.*) \((?P<path>[^()]*):(?P<line>\d+)\)$')
_SHORTEN = re.compile(r'^.*/(?:site-packages|dist-packages|lib/python3\.\d+)/')


def find_py_spy() -> str | None:
    """The py-spy binary: the one installed beside this Python first (the wheel's script), then PATH."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / "py-spy"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("py-spy")


def ptrace_denied(status_path: str = "/proc/self/status",
                  scope_path: str = "/proc/sys/kernel/yama/ptrace_scope") -> str | None:
    """Why this process may not read other processes' memory, or None if it may."""
    try:
        scope = int(Path(scope_path).read_text())
    except (OSError, ValueError):
        scope = 0  # no Yama: the classic rule, same user or CAP_SYS_PTRACE
    if scope >= 3:
        return "kernel.yama.ptrace_scope is 3: no process may be sampled until reboot"
    capable = False
    try:
        for line in Path(status_path).read_text().splitlines():
            if line.startswith("CapEff:"):
                capable = bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
    except (OSError, ValueError, IndexError):
        pass
    if capable or scope == 0:
        return None  # scope 0: a process of the same user can still be read; py-spy says if not
    return f"no CAP_SYS_PTRACE and kernel.yama.ptrace_scope is {scope}: {GRANT}"


def _display(fn: str, path: str, line: str) -> str:
    short = _SHORTEN.sub("", path)
    return f"{fn} ({short if short != path else os.path.basename(path)}:{line})"


def parse_raw(text: str, pids: Iterable[int], settings: StacksConfig = StacksConfig(),
              source_line: Callable[[int, str, int], str] = lambda pid, path, line: "") -> StackProfile:
    """A StackProfile from py-spy's ``--format raw`` output (collapsed stacks, outermost frame
    first, a count last). ``source_line(pid, path, line)`` reads an innermost frame's code."""
    pids = tuple(pids)
    return parse_records([(pids[0] if pids else 0, text)], pids, settings, source_line)


# A thread whose one stack holds this share of its samples did not move while it was sampled.
_PARKED_SHARE = 0.95


def parse_records(outputs: Sequence[tuple[int, str]], pids: Iterable[int], settings: StacksConfig = StacksConfig(),
                  source_line: Callable[[int, str, int], str] = lambda pid, path, line: "") -> StackProfile:
    """parse_raw over several py-spy runs, each ``(pid, output)``: a run without ``--subprocesses``
    names no process in its records, which are the pid's it read."""
    pids = tuple(pids)
    counts: Counter[tuple[int, str, tuple[str, ...]]] = Counter()
    per_thread: Counter[tuple[int, str]] = Counter()
    for read_pid, record in ((pid, r) for pid, text in outputs for r in _RECORD_START.split(text)):
        m = _LINE.match(record.strip())
        if m is None:
            continue
        pid = int(m["pid"]) if m["pid"] else read_pid
        # Threads are named by the threading module, which a script need not import.
        thread = (m["thread"] or ("MainThread" if m["tid"] == str(pid) else m["tid"]) or "").strip()
        frames = tuple(reversed([f for f in m["frames"].split(";") if f]))
        count = int(m["count"])
        counts[(pid, thread, frames)] += count
        per_thread[(pid, thread)] += count
    stacks = []
    for (pid, thread, frames), count in counts.items():
        share = count / per_thread[(pid, thread)]
        parsed = [_FRAME.match(f) for f in frames]
        shown = tuple(_display(m["fn"], m["path"], m["line"]) if m else f for m, f in zip(parsed, frames))
        paths = tuple(m["path"] if m else "" for m in parsed)
        code = source_line(pid, parsed[0]["path"], int(parsed[0]["line"])) if parsed and parsed[0] else ""
        stacks.append(StackShare(share=round(share, 3), frames=shown, thread=thread, pid=pid, paths=paths,
                                 code=code))
    # The GPU processes' main threads lead: they are the ones that feed the GPU. Their other threads
    # (autograd's, which runs a backward pass and compiles it; a loader's pin thread) come next, then
    # their children's main threads (loader and compile workers). A thread that stood on one line
    # for the whole sample was parked in a wait (a queue's feeder, a progress bar's monitor, a
    # compile pool's timer, a worker waiting for its next task): it comes after those at work. A
    # child's other threads only ferry its results back or watch its parent (a compile pool's
    # watchdog, at 100 % in every compile worker): shown, they would push a worker's real work out.
    parked = {(s.pid, s.thread) for s in stacks if s.share >= _PARKED_SHARE}

    def rank(s: StackShare) -> int:
        """0 a GPU process's main thread; 1 its other threads, 2 its children's main threads, at
        work; 3 its children's, 4 its own, parked; 5 a child's other thread (not shown)."""
        own, main = s.pid in pids, s.thread == "MainThread"
        if own and main:
            return 0
        if not (own or main):
            return 5
        return (4 if own else 3) if (s.pid, s.thread) in parked else (1 if own else 2)

    stacks.sort(key=lambda s: (rank(s), -s.share))
    shown = [s for s in stacks if s.share >= settings.min_share and rank(s) < 5][:settings.top_stacks]
    return StackProfile(pids=pids, samples=sum(per_thread.values()), stacks=tuple(shown), sampled=tuple(stacks))


def read_source_line(pid: int, path: str, line: int, limit: int = 200) -> str:
    """One line of a process's source file, read through its root (its container's files), or
    its working directory where the path is relative."""
    if not path or path.startswith("<") or line < 1:
        return ""  # <string>, <frozen ...>: no file
    try:
        with open(f"/proc/{pid}/root{path}" if path.startswith("/") else f"/proc/{pid}/cwd/{path}", "rb") as f:
            for number, text in enumerate(f, 1):
                if number == line:
                    return text[:limit].decode("utf-8", "replace").strip()
    except OSError:
        pass
    return ""


def _why(pid: int, stderr: str, returncode: int) -> str:
    """py-spy's complaint in the agent's words (its first ``Error:`` line otherwise)."""
    text = stderr.lower()
    if "permission denied" in text or "operation not permitted" in text:
        return f"py-spy may not read the process: {GRANT}"
    if "check that the process is running" in text or "no such process" in text:
        return "the process has exited"
    if "failed to find python version" in text or "no python processes found" in text:
        return NOT_PYTHON if os.path.exists(f"/proc/{pid}") else "the process has exited"
    error = next((line for line in stderr.splitlines() if line.startswith("Error:")), None)
    return f"py-spy failed: {(error or f'exit status {returncode}')[:120]}"


def record_args(binary: str, pid: int, settings: StacksConfig, output: str, children: bool) -> list[str]:
    """py-spy's arguments for one sample of ``pid``: without stopping it, idle threads too, each
    thread apart, in raw form; its children too where it has any (DataLoader workers, compile
    workers). py-spy finds children by reading every process's stat file ten times a second: on a
    node of a thousand processes that is most of a sample's CPU, for a job with none to find."""
    return [binary, "record", "--pid", str(pid), "--duration", str(max(int(round(settings.duration_seconds)), 1)),
            "--rate", str(settings.rate_hz), "--nonblocking", "--idle", "--threads",
            *(["--subprocesses"] if children else []), "--full-filenames", "--format", "raw", "--output", output]


def has_children(pid: int) -> bool:
    """Whether the process has child processes now (False where it is gone: py-spy says so): from
    the kernel's children files where it keeps them, else psutil, which scans every process."""
    if os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        return bool(child_pids(pid, read_once))
    try:
        return bool(psutil.Process(pid).children())
    except psutil.Error:
        return False


class StackSampler:
    """Samples processes' stacks on one background thread; ``request`` never waits."""

    def __init__(self, settings: StacksConfig = StacksConfig(), *, binary: str | None = None,
                 unavailable: str | None = None, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, ptrace_check: Callable[[], str | None] = ptrace_denied):
        self.settings = settings
        self.binary = binary or find_py_spy()
        self.clock = clock
        self.wall_clock = wall_clock
        # A reason that holds for every process is found once, and logged once.
        self.unavailable = unavailable or (None if self.binary else "py-spy is not installed") or ptrace_check()
        self._logged: set[str] = set()
        self._sampled_at: dict[int, float] = {}
        self._segment_wait: dict[int, float] = {}  # per process: the wait a new segment allows now
        self._retry_wait: dict[int, float] = {}  # per process py-spy did not read as Python: when to try again
        self._latest: dict[int, StackProfile] = {}
        self._queue: queue.Queue[tuple[int, tuple[int, ...]] | None] = queue.Queue()
        self._pending: set[int] = set()
        self._lock = threading.Condition()  # notified when a sample is taken
        self._thread: threading.Thread | None = None
        if self.unavailable and unavailable is None:
            self._log_once(self.unavailable)

    def request(self, key: int, pids: Iterable[int], new_segment: bool = False, phase: bool = False) -> bool:
        """Ask for a sample of ``pids`` (up to two: the GPU's busiest) under ``key`` (a GPU index).
        ``new_segment``: the GPU's work changed since their last sample, which allows a shorter
        wait; ``phase``: a phase of the job's life is named, sampled again each
        ``phase_interval_seconds`` turn to see it end. False while a sample under ``key`` is
        still being taken, or a new segment's or a phase's sample is not yet due: ask again."""
        pids = tuple(pids)[:2]
        now = self.clock()
        with self._lock:
            if self.unavailable:
                last = self._latest.get(key)
                if last is None or last.pids != pids:  # the same answer kept, however often asked
                    self._latest[key] = StackProfile(pids=pids, samples=0, unavailable=self.unavailable,
                                                     timestamp=self.wall_clock())
                return True
            if key in self._pending:
                return False
            due = tuple(p for p in pids if now - self._sampled_at.get(p, -float("inf")) >= self._wait(p, new_segment, phase))
            if not due:
                # The last sample serves the same segment; a new segment, or a phase's next turn,
                # needs one of its own, due later: ask again.
                return not (phase or new_segment)
            if len(self._sampled_at) > _REMEMBERED_PROCESSES:
                self._forget(now)
            for pid in due:
                if new_segment and not phase:
                    self._back_off(pid, now)
                self._sampled_at[pid] = now
            self._pending.add(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="flopwatch-stacks", daemon=True)
                self._thread.start()
        self._queue.put((key, due))
        return True

    def _wait(self, pid: int, new_segment: bool, phase: bool) -> float:
        s = self.settings
        if pid in self._retry_wait:
            return self._retry_wait[pid]
        if phase:
            # The agent asks once a turn; a turn's request that comes a few seconds after the last
            # turn's sample must not wait for the turn after (every 10 s instead of 5).
            return s.phase_interval_seconds / 2
        if new_segment:
            return self._segment_wait.get(pid, s.segment_interval_seconds)
        return s.min_interval_seconds

    def _back_off(self, pid: int, now: float) -> None:
        """A job whose work changes again soon after its last early sample (one that alternates
        every few seconds) is sampled ever less often on each change — the wait doubles, up to
        ``min_interval_seconds`` — instead of having py-spy attached a fifth of the time; after a
        calm stretch the wait starts over."""
        s = self.settings
        last = self._sampled_at.get(pid)
        if last is None or now - last >= s.min_interval_seconds:
            return
        wait = self._segment_wait.get(pid, s.segment_interval_seconds)
        self._segment_wait[pid] = min(2 * wait, s.min_interval_seconds) if now - last < 2 * wait \
            else s.segment_interval_seconds

    def _retry_later(self, pid: int, failed: bool) -> None:
        """A process not read as Python is tried again after ``duration_seconds``, the wait
        doubling on each failure up to ``min_interval_seconds``: one that is not Python costs a
        few quick failures, then one each ``min_interval_seconds``."""
        with self._lock:
            if not failed:
                self._retry_wait.pop(pid, None)
                return
            wait = self._retry_wait.get(pid)
            s = self.settings
            self._retry_wait[pid] = min(2 * wait, s.min_interval_seconds) if wait else s.duration_seconds

    def _forget(self, now: float) -> None:
        """Processes last sampled a whole ``min_interval_seconds`` ago are due again whatever they
        did: what was kept of them goes (pids come and go for as long as the agent runs)."""
        for pid in [p for p, t in self._sampled_at.items() if now - t >= self.settings.min_interval_seconds]:
            del self._sampled_at[pid]
            self._segment_wait.pop(pid, None)
            self._retry_wait.pop(pid, None)

    def latest(self, key: int) -> StackProfile | None:
        """The last profile taken under ``key``, or None."""
        return self._latest.get(key)

    def taking(self, key: int) -> bool:
        """Whether a sample asked for under ``key`` is still being taken."""
        return key in self._pending

    @property
    def busy(self) -> bool:
        """Whether a sample asked for is still being taken."""
        return bool(self._pending)

    def wait(self, timeout: float) -> bool:
        """Wait until the samples asked for are taken (or ``timeout`` passes); whether they were."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending, timeout)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            key, pids = item
            try:
                profile = self.sample(pids)
            except Exception as e:  # a sampler that fails must not take the agent's thread with it
                log.exception("stack sample failed")
                profile = StackProfile(pids=pids, samples=0, unavailable=f"stack sample failed: {e}")
            with self._lock:
                self._latest[key] = profile
                self._pending.discard(key)
                self._lock.notify_all()

    def sample(self, pids: tuple[int, ...]) -> StackProfile:
        """Record each of ``pids`` (and its children) for ``duration_seconds``; blocks that long."""
        outputs, reasons, warnings = [], [], []
        # The sample spans what py-spy read, not the parsing after: its phases are placed in time.
        started = self.wall_clock()
        for pid in pids:
            text, reason, warning = self._record(pid)
            self._retry_later(pid, reason == NOT_PYTHON)
            if reason:
                reasons.append(reason)
                if reason != "the process has exited":
                    self._log_once(reason)
            else:
                outputs.append((pid, text))
            if warning:
                warnings.append(warning)
        ended = self.wall_clock()
        profile = parse_records(outputs, pids, self.settings, read_source_line) if outputs else None
        if profile is not None and not any(s.pid in pids for s in profile.sampled):
            # py-spy read only the processes' children (once on an H100, mid-evaluation): nothing
            # of what the GPU's own processes do. py-spy says why only in a warning.
            why = "py-spy read none of the process's own threads" + (f" ({warnings[0]})" if warnings else "")
            profile, reasons = None, [*reasons, why]
        if profile is None:
            return StackProfile(pids=pids, samples=0, unavailable=reasons[0] if reasons else "nothing sampled",
                                timestamp=ended, seconds=ended - started)
        return replace(profile, timestamp=ended, seconds=ended - started)

    def _record(self, pid: int) -> tuple[str, str | None, str | None]:
        """py-spy's raw output for ``pid`` and its children, or why there is none; and its first
        warning (a process it could not read while it read the others is only a warning)."""
        s = self.settings
        with tempfile.TemporaryDirectory(prefix="flopwatch-stacks-") as folder:
            out = os.path.join(folder, "raw")
            args = record_args(self.binary, pid, s, out, children=has_children(pid))
            try:
                done = subprocess.run(args, capture_output=True, text=True, timeout=s.timeout_seconds,
                                      stdin=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
            except subprocess.TimeoutExpired:
                return "", f"py-spy did not finish within {s.timeout_seconds:g} s", None
            except OSError as e:
                return "", f"py-spy could not run: {e.strerror or e}", None
            warning = next((line.split("] ", 1)[-1][:160] for line in done.stderr.splitlines() if " WARN " in line), None)
            if done.returncode != 0 or not os.path.exists(out):
                return "", _why(pid, done.stderr, done.returncode), warning
            with open(out, encoding="utf-8", errors="replace") as f:
                return f.read(), None, warning

    def _log_once(self, message: str) -> None:
        if message and message not in self._logged:
            self._logged.add(message)
            log.warning("python stacks unavailable: %s", message)
