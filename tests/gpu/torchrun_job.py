"""A real torchrun job (two ranks on one GPU over gloo, tests/gpu/gloo_job.py) under a real
`flopwatch run --history sqlite:…`: what the agent reads of each rank, what the history keeps, and
what torchrun really put in each worker's environment, side by side.

    PYTHONPATH=agent python3 -m tests.gpu.torchrun_job DIR      # ~1 min; DIR/torchrun.txt, DIR/*.log
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, select

from flopwatch.history.schema import job_spans, processes
from tests.agent_process import wait_for
from tests.gpu.gpus import wait_until_free
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
GPU = 0
TRUTH_KEYS = ("TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class RankSeen:
    pid: int
    environ: dict[str, str]  # what torchrun gave the worker (the truth)
    job: str | None  # the agent's job name for it
    identity: dict  # the agent's identity of it
    history_job: str | None = None
    history_rank: int | None = None


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)
    return {k: pairs[k] for k in TRUTH_KEYS if k in pairs}


def wait_until(predicate, timeout: float, what: str) -> None:
    if not wait_for(predicate, timeout, every=0.5):
        raise TimeoutError(f"no {what} after {timeout:.0f} s")


def status(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=5) as r:
            return json.load(r)
    except OSError:
        return {}


def ranks_seen(port: int) -> list[dict]:
    """The processes on the GPU that the agent's status gives a rank."""
    gpu = next((g for g in status(port).get("gpus", []) if g["index"] == GPU), {"processes": []})
    return [p for p in gpu["processes"] if (p.get("identity") or {}).get("rank") is not None]


def stop_job(job: subprocess.Popen, workers: list[int]) -> None:
    """torchrun starts each worker in a session of its own: SIGTERM to torchrun, which stops them,
    then SIGKILL to any worker left, so no rank outlives the job on the GPU."""
    job.terminate()
    try:
        job.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run(out: Path, measure_seconds: float = 15.0) -> list[RankSeen]:
    wait_until_free(GPU)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "history.db"
    db.unlink(missing_ok=True)
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", FLOPWATCH_TOKENS_PUSH_LISTEN="127.0.0.1:0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "agent"), str(REPO), os.environ.get("PYTHONPATH")])))
    with open(out / "agent.log", "w") as log:
        agent = subprocess.Popen([sys.executable, "-m", "flopwatch", "run", "--listen", f"127.0.0.1:{port}",
                                  "--history", f"sqlite:///{db}"], cwd=REPO, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    with open(out / "job.log", "w") as log:
        job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                str(REPO / "tests/gpu/gloo_job.py")], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: (out / "job.log").read_text().count("ready") >= 2 or job.poll() is not None, 180, "ready")
        if job.poll() is not None:
            raise RuntimeError(f"the job exited {job.returncode}: {(out / 'job.log').read_text()[-1500:]}")
        wait_until(lambda: len(ranks_seen(port)) >= 2, 60, "two ranks in the agent's status")
        time.sleep(measure_seconds)
        seen = [RankSeen(p["pid"], environ_of(p["pid"]), p["job"], p["identity"]) for p in ranks_seen(port)]
    finally:
        stop_job(job, [int(m) for m in re.findall(r"pid (\d+) ready", (out / "job.log").read_text())])
        time.sleep(3.0)  # the agent sees the job's processes go
        os.killpg(agent.pid, signal.SIGTERM)  # a clean stop flushes the history
        agent.wait(timeout=60)
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as c:
        rows = {pid: (name, rank) for pid, name, rank in c.execute(select(processes.c.pid, processes.c.job, processes.c.rank))}
        spans = [tuple(r) for r in c.execute(select(job_spans.c.gpu, job_spans.c.job, job_spans.c.rank))]
    for r in seen:
        r.history_job, r.history_rank = rows.get(r.pid, (None, None))
    jobs_cmd = subprocess.run([sys.executable, "-m", "flopwatch", "jobs", "--history", f"sqlite:///{db}", "--json"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    lines = [f"{'pid':>8} {'RANK':>4} {'LOCAL_RANK':>10} {'WORLD_SIZE':>10} {'TORCHELASTIC_RUN_ID':<38} "
             f"{'agent rank':>10} {'agent job':<48} {'history rank':>12} history job"]
    for r in sorted(seen, key=lambda r: r.environ.get("RANK", "")):
        e = r.environ
        lines.append(f"{r.pid:>8} {e.get('RANK', '-'):>4} {e.get('LOCAL_RANK', '-'):>10} {e.get('WORLD_SIZE', '-'):>10} "
                     f"{e.get('TORCHELASTIC_RUN_ID', '-'):<38} {r.identity.get('rank')!s:>10} {r.job!s:<48} "
                     f"{r.history_rank!s:>12} {r.history_job}")
    lines += ["", f"job spans in the history (gpu, job, rank): {spans}",
              f"`flopwatch jobs --json` (exit {jobs_cmd.returncode}): {jobs_cmd.stdout.strip() or jobs_cmd.stderr.strip()}"]
    (out / "torchrun.txt").write_text("\n".join(lines) + "\n")
    (out / "ranks.json").write_text(json.dumps([r.__dict__ for r in seen], indent=2))
    print("\n".join(lines))
    return seen


if __name__ == "__main__":
    run(Path(sys.argv[1] if len(sys.argv) > 1 else "torchrun-out"))
