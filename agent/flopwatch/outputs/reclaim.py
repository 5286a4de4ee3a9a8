"""Reclaim, only when asked: end a Slurm job whose every GPU on this node has been held unused.

A sink. Each tick it notes, per Slurm job, since when all its GPUs here have had a reclaiming
finding (``[reclaim].causes``: ``held_unused``, ``held_idle``); once that lasts ``after_seconds``, the
job is older than ``min_job_age_seconds`` and its partition and user are allow-listed, it decides
— once per job. ``dry-run`` records and logs the decision; ``on`` also queues ``scancel <job>``, run
from an argument list with a timeout on its own scheduler job, tried again with backoff on failure:
the tick never waits on it. Every decision and every attempt goes to the history.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from flopwatch.config import ReclaimConfig
from flopwatch.model import AgentState, Allocation

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 5.0


@dataclass
class _Cancel:
    job: Allocation
    row: dict[str, Any]  # the decision's history row, copied for each attempt
    attempts: int = 0
    next_at: float = 0.0


def _allowed(value: str, allowed: list[str]) -> bool:
    return "*" in allowed or value in allowed


class Reclaimer:
    name = "reclaim"

    def __init__(self, config: ReclaimConfig, history: Callable[[Mapping[str, Any]], None] | None = None,
                 slurm_conf: str = "", clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.config = config
        self.env = {**os.environ, "SLURM_CONF": slurm_conf} if slurm_conf else None  # as squeue's ([slurm].conf)
        self.history = history
        self.clock = clock
        self.wall_clock = wall_clock
        self._since: dict[str, float] = {}  # job → since when all its GPUs here are held unused
        self._decided: set[str] = set()
        self._queue: list[_Cancel] = []

    def jobs(self) -> list[tuple[Callable[[], None], float]]:
        return [(self.act, 1.0)] if self.config.slurm == "on" else []

    def record(self, state: AgentState) -> None:
        held: dict[str, tuple[Allocation, str]] = {}
        busy: set[str] = set()
        for g in state.gpus:
            a = g.allocation
            if a is None or a.scheduler != "slurm":
                continue
            if g.finding is not None and g.finding.cause in self.config.causes:
                held.setdefault(a.job, (a, g.finding.cause))
            else:
                busy.add(a.job)
        now = state.timestamp
        self._since = {job: self._since.get(job, now) for job in held if job not in busy}
        for job, since in self._since.items():
            allocation, cause = held[job]
            if job not in self._decided and self._due(allocation, now - since, now):
                self._decide(allocation, cause, now - since, now)

    def _due(self, a: Allocation, held_seconds: float, now: float) -> bool:
        c = self.config
        return (held_seconds >= c.after_seconds and a.started_at is not None
                and now - a.started_at >= c.min_job_age_seconds
                and _allowed(a.partition, c.partitions) and _allowed(a.user, c.users))

    def _decide(self, a: Allocation, cause: str, held_seconds: float, now: float) -> None:
        self._decided.add(a.job)
        mode = self.config.slurm
        row = {"ts": now, "scheduler": "slurm", "job": a.job, "user": a.user, "account": a.account,
               "partition": a.partition, "action": "scancel", "mode": mode, "cause": cause,
               "held_seconds": round(held_seconds, 1)}
        log.warning("reclaim (%s): scancel %s of %s (partition %s): %s for %.0f s", mode, a.job, a.user or "?",
                    a.partition or "?", cause, held_seconds)
        self._write({**row, "outcome": "dry-run" if mode == "dry-run" else "decided"})
        if mode == "on":
            self._queue.append(_Cancel(a, row))

    def act(self) -> None:
        """Run the scancels that are due; a failure waits twice as long as the last before the next try."""
        for cancel in [c for c in self._queue if c.next_at <= self.clock()]:
            cancel.attempts += 1
            outcome = self._scancel(cancel.job.job.removeprefix("slurm:"))
            if outcome == "done" or cancel.attempts >= self.config.attempts:
                self._queue.remove(cancel)
                outcome = outcome if outcome == "done" else f"gave up: {outcome}"
            else:
                cancel.next_at = self.clock() + FIRST_RETRY_SECONDS * 2 ** (cancel.attempts - 1)
            self._write({**cancel.row, "ts": self.wall_clock(), "outcome": outcome})

    def _scancel(self, job_id: str) -> str:
        try:
            done = subprocess.run([self.config.scancel, job_id], capture_output=True, env=self.env,
                                  timeout=self.config.timeout_seconds, check=False)
        except subprocess.TimeoutExpired:
            return f"failed: no answer in {self.config.timeout_seconds:g} s"
        except OSError as e:
            return f"failed: {e}"
        if done.returncode != 0:
            return f"failed: exit {done.returncode}: {done.stderr.decode(errors='replace').strip()[:200]}"
        return "done"

    def _write(self, row: Mapping[str, Any]) -> None:
        if self.history is not None:
            self.history(row)
