"""The agent as systemd runs it: the notify protocol over a real datagram socket, SIGHUP reload,
SIGTERM exit 0, and a watchdog that stops being petted when sampling is stuck."""

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flopwatch import config as config_mod
from flopwatch.outputs import sdnotify
from flopwatch.commands.build import build_agent

AGENT_DIR = Path(__file__).resolve().parents[1] / "agent"


class NotifySocket:
    """systemd's end of the notification socket."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def receive(self, timeout: float = 30.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def until(self, wanted: str, timeout: float = 30.0) -> list[str]:
        """Messages up to and including the first that starts with ``wanted``."""
        seen = []
        while not seen or not seen[-1].startswith(wanted):
            seen.append(self.receive(timeout))
        return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


@pytest.fixture
def agent_process(tmp_path, notify):
    """``flopwatch run`` on a simulated GPU, as systemd would start it."""
    config = tmp_path / "config.toml"
    config.write_text("[diagnosis]\n")
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "PYTHONPATH": str(AGENT_DIR),
           "WATCHDOG_USEC": "30000000"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flopwatch", "run", "--config", str(config), "--simulate", "healthy",
         "--listen", "127.0.0.1:0", "--history", "none", "--interval", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    process.config_path = config
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_the_agent_says_ready_then_pets_the_watchdog_and_stops_with_exit_0(agent_process, notify):
    notify.until("READY=1")
    assert "WATCHDOG=1" in notify.until("WATCHDOG=1")
    agent_process.send_signal(signal.SIGTERM)
    notify.until("STOPPING=1")
    assert agent_process.wait(timeout=30) == 0


def test_sighup_with_a_bad_config_keeps_the_running_one(agent_process, notify):
    notify.until("READY=1")
    agent_process.config_path.write_text("[diagnosis]\nno_such_threshold = 1\n")
    agent_process.send_signal(signal.SIGHUP)
    assert any(m.startswith("RELOADING=1") for m in notify.until("READY=1"))
    assert "WATCHDOG=1" in notify.until("WATCHDOG=1")  # still sampling
    agent_process.send_signal(signal.SIGTERM)
    output, _ = agent_process.communicate(timeout=30)
    assert agent_process.returncode == 0
    assert "reload failed, keeping the running configuration" in output
    assert "no_such_threshold" in output


def test_sighup_applies_a_good_config(agent_process, notify):
    notify.until("READY=1")
    agent_process.config_path.write_text("[diagnosis]\nutilization_threshold = 0.5\n")
    agent_process.send_signal(signal.SIGHUP)
    notify.until("RELOADING=1")
    notify.until("READY=1")
    agent_process.send_signal(signal.SIGTERM)
    output, _ = agent_process.communicate(timeout=30)
    assert "configuration reloaded" in output


def test_a_stuck_tick_does_not_pet_the_watchdog(notify):
    config = config_mod.Config()
    config.agent.simulate = ["healthy"]
    agent = build_agent(config, sinks=[sdnotify.Notifier({"NOTIFY_SOCKET": notify.path})]).agent
    source, gate = agent.gpu_source, threading.Event()

    class Stuck:
        name = source.name

        def read(self):
            gate.wait()
            return source.read()

    agent.gpu_source = Stuck()
    tick = threading.Thread(target=agent.tick)
    tick.start()
    with pytest.raises(TimeoutError):
        notify.receive(timeout=0.5)
    gate.set()
    assert notify.receive() == "WATCHDOG=1"
    tick.join()
    agent.close()
