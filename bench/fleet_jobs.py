"""The fleet judge at work: real `flopwatch run --simulate` agents playing ranks of multi-node
jobs into one real PostgreSQL, `flopwatch judge` paging a real Alertmanager, and three faults.

17 nodes × 8 GPUs: four jobs of three or four nodes each with one straggler of its own cause
(a starved loader, a host whose CPUs other work holds, a power cap, a second process on its
GPU), one job whose ranks all wait on the network, one healthy job. Reports the seconds from a
job's start to its page, the pages per job (exactly one per unhealthy job, none for the healthy
one) through a judge restart, a PostgreSQL restart and a node's agent killed mid-job (its ranks
then "unknown"), and the judge's CPU and query time.

    python bench/fleet_jobs.py            # about 4 minutes on two cores
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (agent_env, cpu_seconds, final, free_port, postgres_server, start_agent, stop,  # noqa: E402
                          table)
from tests.fixtures_prometheus import start_alertmanager  # noqa: E402

GPUS = 8
WAIT = "communication_bound"
# job id → (nodes, the straggler's scenario or None, its GPU on the job's second node)
JOBS = {
    "101": (4, "input_starved"),
    "102": (3, "cpu_contended"),
    "103": (3, "power_capped"),
    "104": (3, "contention"),
    "105": (2, None),  # every rank waits: the network is slow
    "106": (2, "healthy"),  # the healthy job: every GPU healthy
}
EXPECTED = {"101": "input_starved", "102": "input_starved", "103": "power_capped", "104": "contention",
            "105": "communication_bound"}
STRAGGLER_GPU = 3
KILLED_NODE = ("101", 2)  # a node of job 101 that is not its straggler's
TARGET_SECONDS = 60.0


def node_scenarios(job: str, node: int) -> str:
    _, scenario = JOBS[job]
    if scenario == "healthy":
        return f"healthy*{GPUS}"
    if scenario is None or node != 1:
        return f"{WAIT}*{GPUS}"
    return f"{WAIT}*{STRAGGLER_GPU},{scenario},{WAIT}*{GPUS - STRAGGLER_GPU - 1}"


def pages(am) -> dict[str, list[dict]]:
    by_job: dict[str, list[dict]] = {}
    for a in am.alerts():
        if a["labels"]["alertname"].startswith("GPUJob"):
            by_job.setdefault(a["labels"]["exported_job"], []).append(a["labels"])
    return by_job


def start_judge(url: str, am_url: str, log_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flopwatch", "judge", "--from-store", url, "--alertmanager", am_url],
                            env=agent_env(), stdout=subprocess.DEVNULL, stderr=open(log_path, "a"))


def check_pages(am, when: str) -> list[str]:
    found = pages(am)
    problems = [f"{when}: slurm:{j} has {len(found.get('slurm:' + j, []))} pages" for j in EXPECTED
                if len(found.get("slurm:" + j, [])) != 1]
    problems += [f"{when}: the healthy job paged" for _ in found.get("slurm:106", [])]
    problems += [f"{when}: slurm:{j} pages for {found['slurm:' + j][0]['cause']}, not {cause}"
                 for j, cause in EXPECTED.items() if len(found.get("slurm:" + j, [])) == 1
                 and found["slurm:" + j][0]["cause"] != cause]
    return problems


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="flopwatch-fleet-jobs-"))
    judge_log = workdir / "judge.log"
    agents: dict[tuple[str, int], subprocess.Popen] = {}
    problems: list[str] = []
    with postgres_server("flopwatch-fleet-jobs-", durable=True) as pg, start_alertmanager(workdir) as am:
        url = pg.url()
        started_at: dict[str, float] = {}
        for job, (nodes, _) in JOBS.items():
            world = nodes * GPUS
            for node in range(nodes):
                env = {"FLOPWATCH_AGENT_HOSTNAME": f"j{job}-node{node}", "FLOPWATCH_STACKS_ENABLED": "false"}
                agents[(job, node)] = start_agent(
                    ["--simulate", node_scenarios(job, node), "--simulate-job", job, "--simulate-rank",
                     str(node * GPUS), "--simulate-world-size", str(world), "--history", url], free_port(), env)
            started_at[job] = time.time()
        print(f"{len(agents)} agents × {GPUS} GPUs started", flush=True)
        judge = start_judge(url, am.url, judge_log)
        judge_cpu_start, judge_wall_start = 0.0, time.monotonic()
        paged_after: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(paged_after) < len(EXPECTED):
            for job_label, labels in pages(am).items():
                job = job_label.split(":")[1]
                if job not in paged_after and labels[0]["cause"] == EXPECTED.get(job):
                    paged_after[job] = time.time() - started_at[job]
            time.sleep(1.0)
        problems += [f"slurm:{j} paged after {s:.0f} s" for j, s in paged_after.items() if s > TARGET_SECONDS]
        problems += [f"slurm:{j} never paged for {c}" for j, c in EXPECTED.items() if j not in paged_after]
        time.sleep(20)
        problems += check_pages(am, "steady")

        # Fault 1: the judge restarted.
        judge_cpu_start += cpu_seconds(judge.pid)
        judge.send_signal(signal.SIGTERM)
        judge.wait(timeout=30)
        judge = start_judge(url, am.url, judge_log)
        time.sleep(25)
        problems += check_pages(am, "after the judge's restart")

        # Fault 2: PostgreSQL restarted under the agents and the judge.
        pg.stop()
        time.sleep(10)
        pg.start()
        time.sleep(30)
        problems += check_pages(am, "after PostgreSQL's restart")

        # Fault 3: one node's agent killed mid-job: its ranks become unknown, the page stays.
        agents[KILLED_NODE].kill()
        time.sleep(45)
        problems += check_pages(am, "after a node's agent was killed")
        jobs = json.loads(subprocess.run([sys.executable, "-m", "flopwatch", "jobs", "--from-store", url, "--json",
                                          "--job", "slurm:101"], env=agent_env(), capture_output=True, text=True,
                                         check=True).stdout)
        killed_host = f"j{KILLED_NODE[0]}-node{KILLED_NODE[1]}"
        states = {r["state"] for r in jobs[0]["ranks"] if r["host"] == killed_host}
        if states != {"unknown"}:
            problems.append(f"the killed node's ranks are {states}, not unknown")
        judge_cpu = judge_cpu_start + cpu_seconds(judge.pid)
        judge_wall = time.monotonic() - judge_wall_start
        stop(judge)
        for process in agents.values():
            stop(process)
    passes = [(int(m.group(1)), float(m.group(2)), float(m.group(3)))
              for m in re.finditer(r"pass jobs=(\d+) query_seconds=([\d.]+) pass_seconds=([\d.]+)", judge_log.read_text())]
    queries = sorted(q for _, q, _ in passes)
    p50, p99 = queries[len(queries) // 2], queries[min(len(queries) - 1, int(len(queries) * 0.99))]
    nodes = len(agents)
    print(table(["job", "straggler cause", "paged after s"],
                [[f"slurm:{j}", EXPECTED[j], f"{paged_after.get(j, float('nan')):.0f}"] for j in EXPECTED]))
    print(f"judge: {len(passes)} passes, {judge_cpu:.1f} CPU-s over {judge_wall:.0f} s "
          f"({100 * judge_cpu / judge_wall:.2f} % of a core); query p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
          f"for {nodes} nodes × {GPUS} GPUs")
    scale = 1000 / nodes
    print(f"projected to 1,000 nodes (rows read grow with the GPUs): query p50 ≈ {p50 * scale:.2f} s a pass, "
          f"CPU ≈ {100 * judge_cpu / judge_wall * scale:.1f} % of a core")
    for p in problems:
        print("PROBLEM:", p)
    final("fleet_jobs_worst_seconds_to_page", f"{max(paged_after.values(), default=float('nan')):.0f}",
          f"<= {TARGET_SECONDS:.0f} s, one page per unhealthy job, none for the healthy one")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
