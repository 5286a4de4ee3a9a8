"""A real single-node Slurm cluster (Debian's slurm-wlm: slurmctld and slurmd) on loopback ports.

    with SlurmCluster(gpus=3) as slurm:
        job = slurm.submit(gpus=2)             # a batch job holding GPUs 0 and 1, running `sleep`
        slurm.squeue()                         # squeue --json's answer

No systemd, no cgroups, no munge: ``auth/none``, ``proctrack/linuxproc``, ``task/none`` (what
Slurm 22.05 runs without privileges it lacks in a container). The GPUs are simulated: gres.conf
names ``<dir>/dev/nvidia<i>``, links to /dev/null (with ``AutoDetect=off`` slurmd only checks
that each is a character device), so GRES index i is the simulated GPU whose minor number is i. What this loses
against a real node: slurmd does not confine a job to its GPUs (no cgroup devices), and nothing
sets CUDA_VISIBLE_DEVICES that a GPU would honour.

Used by the test suite through tests/slurm_plugin.py; it imports no pytest.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

NODE = "flopwatch-node"  # slurmd -N: the node's name in Slurm, whatever the host's
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


class SlurmUnavailable(RuntimeError):
    """slurm-wlm is not installed, or its daemons do not start here (the message says why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """slurmctld and slurmd in a temporary directory (short: slurmd's sockets live there)."""

    def __init__(self, gpus: int = 2, ready_seconds: float = 30.0):
        missing = [b for b in BINARIES if shutil.which(b) is None]
        if missing:
            raise SlurmUnavailable(f"{', '.join(missing)} not installed (apt-get install slurm-wlm)")
        self.gpus = gpus
        self.ready_seconds = ready_seconds
        self.user = getpass.getuser()
        self.root = Path(tempfile.mkdtemp(prefix="slurm-"))
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._daemons: list[subprocess.Popen] = []
        self._jobs: list[str] = []

    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _write_config(self) -> None:
        (self.root / "state").mkdir()
        (self.root / "spool").mkdir()
        devices = self.root / "dev"
        devices.mkdir()
        for i in range(self.gpus):
            (devices / f"nvidia{i}").symlink_to("/dev/null")  # slurmd wants a character device
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=flopwatch",
            f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            f"SlurmUser={self.user}", f"SlurmdUser={self.user}",
            "AuthType=auth/none", "CredType=cred/none",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/slurmctld.log", f"SlurmdLogFile={r}/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "MpiDefault=none",
            "SwitchType=switch/none", "ReturnToService=2", "SchedulerParameters=sched_interval=1",
            "SlurmdParameters=config_overrides",  # the CPUs below, whatever the host has
            "GresTypes=gpu",
            # Every test job gets one CPU; the GPUs are what is shared.
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs=16 Gres=gpu:{self.gpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName=gpu Nodes={NODE} MaxTime=INFINITE State=UP",
            "",
        ]))
        (self.root / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={NODE} Name=gpu File={devices}/nvidia[0-{self.gpus - 1}]\n")

    def start(self) -> None:
        self._write_config()
        for argv in (["slurmctld", "-D", "-c", "-i"], ["slurmd", "-D", "-N", NODE]):
            name = argv[0]
            with open(self.root / f"{name}.out", "wb") as out:
                self._daemons.append(subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                      start_new_session=True))
        deadline = time.monotonic() + self.ready_seconds
        while time.monotonic() < deadline:
            for daemon in self._daemons:
                if daemon.poll() is not None:
                    raise SlurmUnavailable(f"{daemon.args[0]} exited {daemon.returncode}: {self.logs()}")
            state = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
            if state.startswith("idle"):
                return
            time.sleep(0.3)
        raise SlurmUnavailable(f"node not idle after {self.ready_seconds:g} s: {self.logs()}")

    def logs(self) -> str:
        return " | ".join(f"{p.name}: {p.read_text(errors='replace')[-1500:]}"
                          for p in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")) if p.exists())

    def run(self, *argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=check)

    def submit(self, gpus: int, *, name: str = "job", account: str = "", partition: str = "",
               time_limit_minutes: int | None = None, command: str = "sleep 3600") -> str:
        """A batch job holding ``gpus`` GPUs, running; its id."""
        argv = ["sbatch", "--parsable", f"--gres=gpu:{gpus}", f"--job-name={name}", "--output=/dev/null",
                f"--chdir={self.root}", f"--wrap={command}"]
        argv += [f"--account={account}"] if account else []
        argv += [f"--partition={partition}"] if partition else []
        argv += [f"--time={time_limit_minutes}"] if time_limit_minutes else []
        job = self.run(*argv).stdout.strip().split(";")[0]
        self._jobs.append(job)
        deadline = time.monotonic() + self.ready_seconds
        while self.state(job) != "RUNNING":
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"job {job} is {self.state(job)!r}, not running: {self.logs()}")
            time.sleep(0.2)
        return job

    def state(self, job: str) -> str:
        """RUNNING, PENDING, …; "" once Slurm has forgotten it."""
        return self.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.strip()

    def cancel(self, job: str) -> None:
        self.run("scancel", job)
        deadline = time.monotonic() + 10.0
        while self.state(job) not in ("", "CANCELLED") and time.monotonic() < deadline:
            time.sleep(0.2)

    def squeue(self) -> Any:
        return json.loads(self.run("squeue", "--json").stdout)

    def stop(self) -> None:
        if self._jobs and all(d.poll() is None for d in self._daemons):
            self.run("scancel", *self._jobs, check=False)
            deadline = time.monotonic() + 10.0
            while any(self.state(j) for j in self._jobs) and time.monotonic() < deadline:
                time.sleep(0.2)
        for daemon in reversed(self._daemons):
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(10)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        self._daemons.clear()
        shutil.rmtree(self.root, ignore_errors=True)

