"""The fleet judge at work: real `flopwatch run --simulate` agents playing ranks of multi-node
jobs into one real PostgreSQL, `flopwatch judge` paging a real Alertmanager, and three faults.

17 nodes × 8 GPUs: four jobs of three or four nodes each with one straggler of its own cause
(a starved loader, a host whose CPUs other work holds, a power cap, a second process on its
GPU), one job whose ranks all wait on the network, one healthy job. Reports the seconds from a
job's start to its page, the pages per job (exactly one per unhealthy job, none for the healthy
one) through a judge restart, a PostgreSQL restart and a node's agent killed mid-job (its ranks
then "unknown"), the judge's CPU, query and pass time, the size of its /metrics (the Grafana job
view's series) and what `flopwatch report --job` says held the first job back.

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

from bench.common import (agent_env, cpu_seconds, final, free_port, postgres_server, scrape,  # noqa: E402
                          start_agent, stop, table)
from tests.servers.prometheus import start_alertmanager  # noqa: E402

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


def start_judge(url: str, am_url: str, log_path: Path, listen: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flopwatch", "judge", "--from-store", url, "--alertmanager", am_url,
                             "--listen", listen], env=agent_env(), stdout=subprocess.DEVNULL, stderr=open(log_path, "a"))


def stragglers_served(listen: str) -> tuple[dict[str, str], int, int]:
    """The judge's /metrics: each job's straggler cause, the series and the bytes."""
    text = scrape(f"http://{listen}/metrics").decode()
    found = {}
    for m in re.finditer(r'^flopwatch_job_straggler\{([^}]*)\} 1', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        found[labels["job"].split(":")[1]] = labels["cause"]
    for m in re.finditer(r'^flopwatch_job_verdict\{([^}]*)\} 1', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels["verdict"] == WAIT:
            found[labels["job"].split(":")[1]] = WAIT
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return found, series, len(text.encode())


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
        listen = f"127.0.0.1:{free_port()}"
        judge = start_judge(url, am.url, judge_log, listen)
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
        served, metric_series, metric_bytes = stragglers_served(listen)
        problems += [f"/metrics says slurm:{j} {served.get(j)}, not {c}" for j, c in EXPECTED.items()
                     if served.get(j) != c]

        # Fault 1: the judge restarted.
        judge_cpu_start += cpu_seconds(judge.pid)
        judge.send_signal(signal.SIGTERM)
        judge.wait(timeout=30)
        judge = start_judge(url, am.url, judge_log, listen)
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
        report = json.loads(subprocess.run([sys.executable, "-m", "flopwatch", "report", "--history", url, "--job",
                                            "slurm:101", "--format", "json"], env=agent_env(), capture_output=True,
                                           text=True, check=True).stdout)
        held = report["held_back"][0] if report["held_back"] else {}
        straggler = ("j101-node1", STRAGGLER_GPU, GPUS + STRAGGLER_GPU, "input_starved")
        if (held.get("host"), held.get("gpu"), held.get("rank"), held.get("cause")) != straggler:
            problems.append(f"report --job slurm:101 says {held or 'nothing'} held it back, not {straggler}")
        judge_cpu = judge_cpu_start + cpu_seconds(judge.pid)
        judge_wall = time.monotonic() - judge_wall_start
        stop(judge)
        for process in agents.values():
            stop(process)
    passes = [(int(m.group(1)), float(m.group(2)), float(m.group(3)))
              for m in re.finditer(r"pass jobs=(\d+) query_seconds=([\d.]+) pass_seconds=([\d.]+)", judge_log.read_text())]
    queries = sorted(q for _, q, _ in passes)
    p50, p99 = queries[len(queries) // 2], queries[min(len(queries) - 1, int(len(queries) * 0.99))]
    whole = sorted(w for _, _, w in passes)  # the queries, the verdicts' rows written, the pages posted
    pass_p50 = whole[len(whole) // 2]
    nodes = len(agents)
    print(table(["job", "straggler cause", "paged after s"],
                [[f"slurm:{j}", EXPECTED[j], f"{paged_after.get(j, float('nan')):.0f}"] for j in EXPECTED]))
    print(f"judge: {len(passes)} passes, {judge_cpu:.1f} CPU-s over {judge_wall:.0f} s "
          f"({100 * judge_cpu / judge_wall:.2f} % of a core); query p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"whole pass p50 {pass_p50 * 1000:.0f} ms for {nodes} nodes × {GPUS} GPUs; /metrics {metric_series} series, "
          f"{metric_bytes / 1024:.0f} KiB")
    print(f"report --job slurm:101: rank {held.get('rank')} ({held.get('host')} GPU {held.get('gpu')}, "
          f"{held.get('cause')}) held it back {held.get('seconds', 0):.0f} s; the others waited "
          f"{held.get('held_gpu_seconds', 0) / 3600:.2f} GPU-hours")
    scale = 1000 / nodes
    print(f"projected to 1,000 nodes (rows read grow with the GPUs): query p50 ≈ {p50 * scale:.2f} s a pass, "
          f"CPU ≈ {100 * judge_cpu / judge_wall * scale:.1f} % of a core, /metrics ≈ {metric_series * scale:,.0f} series "
          f"({metric_bytes * scale / 2**20:.1f} MiB)")
    for p in problems:
        print("PROBLEM:", p)
    final("fleet_jobs_worst_seconds_to_page", f"{max(paged_after.values(), default=float('nan')):.0f}",
          f"<= {TARGET_SECONDS:.0f} s, one page per unhealthy job, none for the healthy one")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
