"""Shared by the benchmarks: where flopwatch is, starting an agent, measuring a process from
outside, and the output format (a short table, then one ``name: value unit (target …)`` line)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
AGENT_DIR = ROOT / "agent"
# The benchmarks measure the source tree, installed or not, and start the test suite's servers.
sys.path[:0] = [str(AGENT_DIR), str(ROOT)]

from tests.servers import Missing, free_port  # noqa: E402

MB = 1e6


# What the measured tools import (the agent, nvitop-exporter), whose bytecode is compiled first, as
# `pip install` leaves it: a process that compiles its imports from source keeps the compiler's heap
# (pynvml's 8,000 lines alone leave ~14 MB resident).
MEASURED_IMPORTS = ("flopwatch", "pynvml", "prometheus_client", "apscheduler", "tzlocal", "psutil", "click",
                    "sqlalchemy", "alembic", "mako", "nvitop", "nvitop_exporter")


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(AGENT_DIR), env.get("PYTHONPATH")) if p)
    return env


def compile_imports(names: Iterable[str] = MEASURED_IMPORTS) -> None:
    """Compile the bytecode of ``names`` (those importable here), beside their sources, before
    anything is measured."""
    paths = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            paths += list(spec.submodule_search_locations or [spec.origin])
    subprocess.run([sys.executable, "-m", "compileall", "-q", *paths], stdout=subprocess.DEVNULL, check=False)


def start_agent(args: Sequence[str], port: int, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """``flopwatch run`` on loopback with no history store (unless ``args`` name one), ready to be
    scraped; ``env`` adds to the environment."""
    command = [sys.executable, "-m", "flopwatch", "run", "--listen", f"127.0.0.1:{port}", "--history", "none",
               "--log-level", "warning", *args]
    env = {**agent_env(), **(env or {})}
    # The token push endpoint has a fixed default port: another agent on this machine holds it.
    env.setdefault("FLOPWATCH_TOKENS_PUSH_LISTEN", f"127.0.0.1:{free_port()}")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_ready(process, f"http://127.0.0.1:{port}/-/ready")
    return process


def history_store_url() -> str:
    """The default configuration's history store, in a new SQLite file of a new temporary folder."""
    return f"sqlite:///{tempfile.mkdtemp(prefix='flopwatch-bench-')}/history.db"


def history_store_args() -> list[str]:
    """``flopwatch run`` options for that store."""
    return ["--history", history_store_url()]


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the agent exited with {process.returncode}: {process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    stop(process)
    raise SystemExit(f"the agent did not answer {url} within {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants so far: the live ones', and the children
    it has reaped (a py-spy run that came and went between two reads still counts)."""
    return sum(cpu_parts(pid))


def cpu_parts(pid: int) -> tuple[float, float]:
    """(the process's own CPU seconds, its descendants' — live and reaped) so far."""
    own = children = 0.0
    for i, p in enumerate(tree(pid)):
        try:
            t = p.cpu_times()
        except Exception:  # a child that just exited
            continue
        if i == 0:
            own, children = t.user + t.system, children + t.children_user + t.children_system
        else:
            children += t.user + t.system
    return own, children


def _status_kib(pid: int, *fields: str) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name = line.split(":", 1)[0]
                if name in fields:
                    out[name] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def peak_rss_bytes(pid: int) -> int:
    """The high-water mark of resident memory (VmHWM), summed over the process tree."""
    return sum(_status_kib(p.pid, "VmHWM").get("VmHWM", 0) for p in tree(pid))


def rss_parts(pid: int) -> tuple[int, int, int]:
    """The process's own VmHWM and VmRSS, and its live descendants' VmHWM summed (py-spy while it
    samples a stack, say): the agent's own memory apart from what it runs beside it."""
    root, *children = tree(pid) or [None]
    own = _status_kib(pid, "VmHWM", "VmRSS") if root is not None else {}
    return own.get("VmHWM", 0), own.get("VmRSS", 0), sum(_status_kib(c.pid, "VmHWM").get("VmHWM", 0) for c in children)


def rss_by_mapping(pid: int, count: int = 8) -> list[tuple[str, float]]:
    """The process's resident MB by what is mapped (a library's file, [heap], [anon]), largest
    first: where its own RSS goes."""
    sizes: dict[str, int] = {}
    name = "[anon]"
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                field, _, rest = line.partition(" ")
                if "-" in field and not field.endswith(":"):  # a mapping's header: range perms offset dev inode [path]
                    parts = rest.split(None, 4)
                    name = parts[4].strip() if len(parts) > 4 else "[anon]"
                elif field == "Rss:":
                    sizes[name] = sizes.get(name, 0) + int(rest.split()[0]) * 1024
    except OSError:
        return []
    return [(n, b / MB) for n, b in sorted(sizes.items(), key=lambda kv: -kv[1])[:count]]


def measure(process: subprocess.Popen, seconds: float) -> dict:
    """Steady-state cost of a running process over ``seconds``: CPU share of one core (its tree's,
    and its own apart from its children's, e.g. py-spy),
    peak RSS of the tree, and apart: the process's own (VmHWM; VmRSS sampled each second, its
    largest) and its children's (the largest sum of their VmHWM seen at a sample)."""
    (own_start, children_start), wall_start = cpu_parts(process.pid), time.monotonic()
    peak = own_hwm = own_rss = children = 0
    deadline = wall_start + seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited early with {process.returncode}")
        peak = max(peak, peak_rss_bytes(process.pid))
        hwm, rss, kids = rss_parts(process.pid)
        own_hwm, own_rss, children = max(own_hwm, hwm), max(own_rss, rss), max(children, kids)
    mappings = rss_by_mapping(process.pid)
    own_end, children_end = cpu_parts(process.pid)
    own_cpu, children_cpu = own_end - own_start, children_end - children_start
    cpu = own_cpu + children_cpu
    wall = time.monotonic() - wall_start
    return {"cpu_seconds": cpu, "wall_seconds": wall, "core_percent": 100.0 * cpu / wall,
            "own_core_percent": 100.0 * own_cpu / wall, "children_cpu_seconds": children_cpu,
            "peak_rss_mb": peak / MB,
            "own_peak_rss_mb": own_hwm / MB, "own_max_rss_mb": own_rss / MB, "children_peak_rss_mb": children / MB,
            "own_rss_by_mapping": mappings}


@contextlib.contextmanager
def postgres_server(prefix: str, durable: bool = False) -> Iterator:
    """The test suite's PostgreSQL (tests/servers/postgres.py), started in a new temporary folder."""
    from tests.servers import postgres

    try:
        bindir = postgres.bindir()
    except Missing as missing:
        raise SystemExit(str(missing)) from None
    with postgres.started(bindir, prefix, durable) as server:
        yield server


def sql(url: str, query: str, params: Sequence | None = None) -> list[tuple]:
    """One statement's rows, on a connection of its own (autocommit) to a SQLAlchemy PostgreSQL URL."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as connection:
        cursor = connection.execute(query, params)
        return cursor.fetchall() if cursor.description else []


class CpuMeter:
    """CPU seconds of a changing set of processes (backends come and go, a server restarts), from
    samples of each one's own and reaped children's CPU: a backend that lived between two samples
    is counted in its parent's children time."""

    def __init__(self, pids: Callable[[], Iterable[int]]):
        import psutil

        self._psutil = psutil
        self._pids = pids
        self._last: dict[int, tuple[float, int]] | None = None  # pid → (CPU, parent); None: no baseline yet
        self.seconds = 0.0

    def sample(self) -> float:
        seen: dict[int, tuple[float, int]] = {}
        for pid in self._pids():
            try:
                process = self._psutil.Process(pid)
                t = process.cpu_times()
                seen[pid] = (t.user + t.system + t.children_user + t.children_system, process.ppid())
            except self._psutil.Error:
                continue
        if self._last is not None:
            # A pid new since the last sample started since: all its CPU is in the window.
            self.seconds += sum(cpu - self._last.get(pid, (0.0, 0))[0] for pid, (cpu, _) in seen.items())
            # One that ended with its parent still here: the parent's children time now holds it.
            self.seconds -= sum(cpu for pid, (cpu, parent) in self._last.items() if pid not in seen and parent in seen)
        self._last = seen
        return self.seconds


def process_tree(pid: int | None) -> list[int]:
    """A process's pid and its descendants'."""
    return [p.pid for p in tree(pid)] if pid is not None else []


class Timed:
    """A source whose reads' CPU time (every thread of the process) is counted."""

    def __init__(self, source):
        self.source = source
        self.name = source.name
        self.seconds = 0.0

    def read(self, *args):
        start = time.process_time()
        try:
            return self.source.read(*args)
        finally:
            self.seconds += time.process_time() - start


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def final(name: str, value: str, target: str) -> None:
    """The last line of every benchmark: ``name: value unit (target …)``."""
    print(f"{name}: {value} (target {target})")


def scrape(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def metric_value(text: bytes, name: str) -> float | None:
    """The first sample of ``name`` in a Prometheus exposition."""
    for line in text.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def has_nvidia_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return count > 0
    except Exception:
        return False


def skip_without_gpu() -> None:
    if not has_nvidia_gpu():
        print("skipped: no NVIDIA GPU")
        raise SystemExit(0)


# A GPU process for the per-process readers to find: bf16 matmuls in bursts (1.5 s on, 1.5 s
# off, so power moves), until its parent goes away.
LOAD_SCRIPT = """
import os, sys, time, torch
parent = os.getppid()
a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
b = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
while os.getppid() == parent:
    until = time.monotonic() + 1.5
    while time.monotonic() < until:
        for _ in range(20):
            c = a @ b
        torch.cuda.synchronize()
    time.sleep(1.5)
"""


def has_torch_cuda() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("torch") is not None
    except Exception:
        return False


def start_gpu_load() -> subprocess.Popen | None:
    """A background GPU process (needs torch), or None where torch is missing."""
    if not has_torch_cuda():
        print("note: torch not importable, no GPU load: per-process readings will be empty")
        return None
    process = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT], stdout=subprocess.DEVNULL)
    time.sleep(8.0)  # CUDA context up and the first bursts running
    if process.poll() is not None:
        print(f"note: the GPU load exited with {process.returncode}; per-process readings will be empty")
        return None
    return process


def install_wheels(wheels_dir: str | None) -> str | None:
    """``pip install --target`` every wheel of ``wheels_dir`` (no index, no deps); the folder to
    put on PYTHONPATH, or None."""
    if not wheels_dir:
        return None
    wheels = sorted(str(p) for p in Path(wheels_dir).glob("*.whl"))
    if not wheels:
        return None
    target = Path(wheels_dir).resolve() / "_site"
    if not target.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                        "--disable-pip-version-check", "--root-user-action=ignore",
                        "--target", str(target), *wheels], check=True)
    sys.path.append(str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(target)) if p)
    return str(target)
