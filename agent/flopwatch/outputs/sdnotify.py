"""The systemd notification protocol (sd_notify(3)): READY, STATUS, WATCHDOG, RELOADING, STOPPING.

A datagram of ``KEY=value`` lines to the AF_UNIX socket named by $NOTIFY_SOCKET ("@name" is an
abstract socket). Outside systemd the variable is unset and every call is a no-op returning False.
A failed send is logged and swallowed: notifying must never stop the agent. ``Notifier`` is the
agent sink that pets the watchdog after each completed tick.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Mapping

log = logging.getLogger(__name__)


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one notification; True if it was handed to the service manager."""
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        log.warning("systemd notification %r to %s failed: %s", state.split("\n")[0], path, e)
        return False
    return True


def ready(environ: Mapping[str, str] | None = None) -> bool:
    return notify("READY=1", environ)


def status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    """A one-line summary that ``systemctl status`` shows."""
    return notify("STATUS=" + " ".join(text.split()), environ)


def watchdog(environ: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", environ)


def reloading(environ: Mapping[str, str] | None = None) -> bool:
    """Announce a configuration reload; send ready() when it is done."""
    # MONOTONIC_USEC lets systemd ≥ 253 (Type=notify-reload) match this message to the reload.
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}", environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", environ)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds within which systemd expects WATCHDOG=1 from this process, or None if it doesn't."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000


class Notifier:
    """A sink that tells systemd the agent is alive: WATCHDOG=1 and a STATUS line after every
    completed tick, so a sampling loop stuck in NVML stops petting the watchdog and is restarted."""

    name = "systemd"

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.environ = dict(os.environ if environ is None else environ)
        self._status = ""

    def record(self, state: Any) -> None:
        watchdog(self.environ)
        text = summary(state)
        if text != self._status:
            self._status = text
            status(text, self.environ)


def summary(state: Any) -> str:
    """One line for ``systemctl status``: the GPUs, and which are under-used and why."""
    under = [f"gpu{g.sample.info.index} {g.finding.cause}" for g in state.gpus
             if g.below_threshold and g.finding is not None]
    lost = [f"gpu{g.sample.info.index}" for g in state.gpus if g.sample.error is not None]
    parts = [f"{len(state.gpus)} GPU(s)", "under-used: " + ", ".join(under) if under else "none under-used"]
    if lost:
        parts.append("unreadable: " + ", ".join(lost))
    return "; ".join(parts)
