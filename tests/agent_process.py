"""Start a real `flopwatch run` subprocess on a free loopback port, for tests that need one."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from tests.servers import free_port

AGENT_SRC = str(Path(__file__).resolve().parents[1] / "agent")


def flopwatch(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run a flopwatch command to completion."""
    return subprocess.run([sys.executable, "-m", "flopwatch", *args], capture_output=True, text=True,
                          env=agent_env(env), timeout=60, **kwargs)


def agent_env(extra: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=AGENT_SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra or {})
    return env


@contextlib.contextmanager
def running_agent(*args: str, env: dict | None = None, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`flopwatch run ARGS --listen 127.0.0.1:PORT`, ready to scrape; yields (base URL, process)."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flopwatch", "run", "--listen", f"127.0.0.1:{port}", *args],
                            env=agent_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"agent did not start: {proc.stdout.read()}") from None
                time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def wait_for(predicate, timeout: float = 30.0, every: float = 0.2):
    """Poll a real server until ``predicate()`` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)
