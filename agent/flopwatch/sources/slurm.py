"""Which Slurm job holds each GPU of this node: ``squeue --json``, on its own scheduler job.

squeue runs from an argument list with a timeout, never a shell, every ``refresh_interval_seconds``;
a tick takes the last answer. On a failure (squeue missing, slurmctld down or slow, an answer that
is not squeue's JSON) the last good answer is kept and one warning is logged until it changes.

Each running or suspended job lists, per node, the GRES it was given: ``gpu:2(IDX:0-1)``
(``gres_detail``, in the order of the job's nodes). IDX is the position of the device in this
node's gres.conf, and gres.conf names GPUs by their device files, ``/dev/nvidia<minor>``; with the
usual ``File=/dev/nvidia[0-7]`` (and with ``AutoDetect=nvml``, which lists them in that order) IDX i
is the GPU whose NVML minor number is i. ``gres_minor_numbers`` says otherwise where gres.conf
lists the files in another order.

Slurm 22.05's squeue ignores ``--nodelist`` and ``--states`` with ``--json`` and lists every job of
the cluster: one RPC to slurmctld per refresh per node. Later releases filter on the controller.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from flopwatch.config import ConfigError
from flopwatch.model import Allocation

log = logging.getLogger(__name__)

DEFAULT_CONF = "/etc/slurm/slurm.conf"
# Jobs whose GRES are still theirs: a suspended job keeps its GPUs.
HOLDING_STATES = frozenset({"RUNNING", "SUSPENDED"})
_GPU_GRES = re.compile(r"^gpu(?::[^:(]+)?(?::\d+)?\(IDX:([^)]*)\)")


class SlurmAnswerError(ValueError):
    """squeue answered something that is not its JSON."""


@dataclass(frozen=True, slots=True)
class SlurmAnswer:
    """The last squeue answer the agent made sense of, and whether the last call succeeded."""

    holders: Mapping[int, Allocation] = field(default_factory=dict)  # by the GPU's minor number
    ok: bool = False
    seconds: float = 0.0  # how long the last call took
    answered: bool = False  # some call succeeded: ``holders`` is Slurm's word, kept through failures


def gres_indices(detail: str) -> list[int]:
    """The GPU indices of one node's GRES string: ``gpu:a100:2(IDX:0,2-3)`` → [0, 2, 3]; [] for
    other GRES (``shard``, ``mps``) or a GPU count without indices (``IDX:N/A``)."""
    indices: list[int] = []
    for part in re.split(r",(?=[a-z])", detail):
        m = _GPU_GRES.match(part.strip())
        if m is None or m.group(1) == "N/A":
            continue
        for span in m.group(1).split(","):
            first, _, last = span.partition("-")
            indices.extend(range(int(first), int(last or first) + 1))
    return indices


def _number(value: Any) -> float | None:
    """A number as squeue writes it: plain (22.05) or ``{"set", "infinite", "number"}`` (23.02 on)."""
    if isinstance(value, Mapping):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _states(job: Mapping[str, Any]) -> set[str]:
    state = job.get("job_state")
    return {state} if isinstance(state, str) else set(state or ())


def _job_nodes(job: Mapping[str, Any]) -> list[str]:
    """The job's nodes in the order of its ``gres_detail``."""
    resources = job.get("job_resources") or {}
    allocated = resources.get("allocated_nodes")  # 22.05
    if allocated is None:
        allocated = (resources.get("nodes") or {}).get("allocation") if isinstance(resources.get("nodes"), Mapping) \
            else None  # 23.11 on
    if allocated:
        return [str(n.get("nodename") or n.get("name") or "") for n in allocated]
    return [str(job.get("nodes") or "")]  # one node: its name, which is the whole node list


def gpu_holders(document: Any, node: str, minor_numbers: tuple[int, ...] = ()) -> dict[int, Allocation]:
    """GPU minor number → the job holding it on ``node``, from squeue's JSON document."""
    if not isinstance(document, Mapping) or not isinstance(document.get("jobs"), list):
        raise SlurmAnswerError("no 'jobs' list in squeue's answer")
    holders: dict[int, Allocation] = {}
    for job in document["jobs"]:
        if not isinstance(job, Mapping) or not _states(job) & HOLDING_STATES:
            continue
        details = job.get("gres_detail") or []
        nodes = _job_nodes(job)
        if node not in nodes or nodes.index(node) >= len(details):
            continue
        limit = _number(job.get("time_limit"))
        allocation = Allocation(
            scheduler="slurm", job=f"slurm:{job.get('job_id')}", user=str(job.get("user_name") or ""),
            account=str(job.get("account") or ""), partition=str(job.get("partition") or ""),
            started_at=_number(job.get("start_time")) or None,
            time_limit_seconds=limit * 60.0 if limit is not None else None)
        for index in gres_indices(str(details[nodes.index(node)])):
            holders[minor_numbers[index] if index < len(minor_numbers) else index] = allocation
    return holders


class SlurmReader:
    """Runs squeue on its own job; ``answer`` is the latest, swapped whole so a tick never sees half."""

    name = "slurm"

    def __init__(self, squeue: str, node: str, *, slurm_conf: str = "", minor_numbers: tuple[int, ...] = (),
                 refresh_interval_seconds: float = 30.0, timeout_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.node = node
        # Newer squeue filters on the controller; 22.05 ignores both and answers every job.
        self.command = [squeue, "--json", f"--nodelist={node}", "--states=RUNNING,SUSPENDED"]
        self.env = {**os.environ, "SLURM_CONF": slurm_conf} if slurm_conf else None
        self.minor_numbers = minor_numbers
        self.refresh_interval_seconds = refresh_interval_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self.answer = SlurmAnswer()
        self._failing: str | None = None  # the failure last warned about

    @classmethod
    def from_config(cls, slurm: Any) -> SlurmReader | None:
        """The reader the configuration asks for, or None when it is off (``auto``: on where squeue is
        on the PATH and a slurm.conf exists)."""
        squeue = slurm.squeue
        if squeue in ("", "off"):
            return None
        if squeue == "auto":
            conf = slurm.conf or os.environ.get("SLURM_CONF") or DEFAULT_CONF
            squeue = shutil.which("squeue") or ""
            if not squeue or not os.path.exists(conf):
                return None
        try:
            minor_numbers = tuple(int(n) for n in slurm.gres_minor_numbers)
        except ValueError:
            raise ConfigError(f"bad value for [slurm].gres_minor_numbers: {slurm.gres_minor_numbers!r} "
                              "(minor numbers, e.g. [\"0\", \"1\"])") from None
        return cls(squeue, slurm.node_name or socket.gethostname().split(".")[0], slurm_conf=slurm.conf,
                   minor_numbers=minor_numbers,
                   refresh_interval_seconds=slurm.refresh_interval_seconds, timeout_seconds=slurm.timeout_seconds)

    def jobs(self) -> list[tuple[Callable[[], None], float]]:
        return [(self.refresh, self.refresh_interval_seconds)]

    def refresh(self) -> None:
        """Run squeue once; on failure keep the last answer (a slurmctld restart should not make
        every held GPU look free) and say so once."""
        start = self.clock()
        holders, ok = self.answer.holders, False
        try:
            done = subprocess.run(self.command, capture_output=True, timeout=self.timeout_seconds, env=self.env,
                                  check=False)
            if done.returncode != 0:
                self._failed("exit", f"exit {done.returncode}: {done.stderr.decode(errors='replace').strip()[:300]}")
            else:
                holders, ok = gpu_holders(json.loads(done.stdout), self.node, self.minor_numbers), self._recovered()
        except subprocess.TimeoutExpired:
            self._failed("timeout", f"no answer in {self.timeout_seconds:g} s ([slurm].timeout_seconds)")
        except OSError as e:
            self._failed("oserror", f"cannot run it ([slurm].squeue): {e}")
        except (ValueError, TypeError, AttributeError) as e:  # JSONDecodeError and SlurmAnswerError are ValueErrors
            self._failed("answer", f"not squeue's JSON: {e}")
        self.answer = SlurmAnswer(holders, ok, self.clock() - start, answered=ok or self.answer.answered)

    def _failed(self, kind: str, message: str) -> None:
        if kind != self._failing:
            log.warning("slurm (%s): %s (GPUs keep the jobs last read; warned once until it changes)",
                        " ".join(self.command), message)
            self._failing = kind

    def _recovered(self) -> bool:
        if self._failing is not None:
            log.info("slurm (%s) answers again", self.command[0])
            self._failing = None
        return True
