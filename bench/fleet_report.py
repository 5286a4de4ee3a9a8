"""Fleet reports over a month of rollups: ``flopwatch report`` against a PostgreSQL holding what
--nodes × --gpus GPUs write in --days (hour buckets) and their last --minute-days (minute buckets).

The rows are made in the database (generate_series), shaped as the agents' rollups: each GPU's
utilization, energy, waste and cause, jobs of --hosts-per-job nodes lasting --job-hours (a job
spanning several hosts is one job), forty users. Then it times ``flopwatch report`` (the command,
start-up included; wall seconds, and CPU seconds of the command and the database together) for a day, a week and 30 days, grouped by job, user and host, first with the
rollups' time index (migration 0003), then without it; and prints the bytes a GPU-day takes at
each rollup level.

    python3 bench/fleet_report.py [--nodes 64] [--gpus 8] [--days 30] [--minute-days 7]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

import common
from common import ROOT, CpuMeter, final, postgres_server, process_tree, table

from flopwatch.history.store import HistoryStore  # noqa: E402

END = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the end of the synthesized month
CAUSES = ["input_starved", "held_idle", "idle", "memory_bound", "launch_bound", "communication_bound"]


def synthesize(sql, table_name: str, width: int, start: float, nodes: int, gpus: int,
               hosts_per_job: int, job_hours: float) -> None:
    """A rollup level's rows for every host, GPU and bucket from ``start`` to END."""
    causes = "ARRAY[" + ",".join(f"'{c}'" for c in CAUSES) + "]"
    sql(f"""
        INSERT INTO {table_name} (host, ts, gpu, samples, utilization, utilization_max, sm_occupancy,
            tensor_active, dram_active, flops_utilization, flops_utilization_max, memory_turnover_per_second,
            power_watts, power_watts_max, memory_used_bytes_max, energy_joules, wasted_seconds, tokens,
            cause, cause_samples, job)
        SELECT 'node' || lpad(n::text, 3, '0'), ts, g, {width},
            u, least(1, u + 0.1), u * 0.8, u * 0.6, 0.3, u * 0.4, u * 0.5, 2.0,
            150 + 500 * u, 700, 60e9, (150 + 500 * u) * {width},
            CASE WHEN u < 0.6 THEN {width} ELSE 0 END, NULL,
            CASE WHEN u < 0.6 THEN ({causes})[1 + (n + job_slot) % {len(CAUSES)}] END,
            CASE WHEN u < 0.6 THEN {width} ELSE 0 END,
            'slurm:' || (job_slot * 1000 + n / {hosts_per_job})
        FROM generate_series(0, {nodes - 1}) AS n,
             generate_series({start:.0f}::bigint, {END - width:.0f}::bigint, {width}) AS ts,
             generate_series(0, {gpus - 1}) AS g,
             LATERAL (SELECT floor(ts / ({job_hours} * 3600))::bigint AS job_slot) AS j,
             LATERAL (SELECT CASE WHEN (n + job_slot) % 5 = 0 THEN 0.25 ELSE 0.85 END
                             + 0.1 * sin(ts / 977.0 + g) AS u) AS v
    """)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def run_report(url: str, since: str, group_by: str, until: str | None = None,
               server_cpu: CpuMeter | None = None) -> tuple[float, float, dict]:
    """``flopwatch report`` as a user runs it: (wall seconds, CPU seconds of the command and of
    ``server_cpu``'s processes, the JSON report)."""
    command = [sys.executable, "-m", "flopwatch", "report", "--history", url, "--since", since,
               *(["--until", until] if until else []), "--group-by", group_by, "--format", "json"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = server_cpu.sample() if server_cpu else 0.0
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "agent")})
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    cpu += (server_cpu.sample() - server) if server_cpu else 0.0
    if out.returncode != 0:
        raise SystemExit(f"flopwatch report failed: {out.stderr[-2000:]}")
    return took, cpu, json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--days", type=int, default=30, help="hour buckets for this many days")
    parser.add_argument("--minute-days", type=int, default=7, help="minute buckets for the last days")
    parser.add_argument("--hosts-per-job", type=int, default=4)
    parser.add_argument("--job-hours", type=float, default=6.0)
    args = parser.parse_args()

    with postgres_server("flopwatch-fleet-report-") as server:
        run(server, args)


def run(server: Any, args: argparse.Namespace) -> None:
    url = server.url()
    HistoryStore(url, "schema").engine.dispose()  # the schema, as an agent makes it

    def sql(query: str, params: tuple | None = None) -> list[tuple]:
        return common.sql(url, query, params)
    gpus = args.nodes * args.gpus
    started = time.perf_counter()
    synthesize(sql, "gpu_hour", 3600, END - args.days * 86_400, args.nodes, args.gpus, args.hosts_per_job,
               args.job_hours)
    synthesize(sql, "gpu_minute", 60, END - args.minute_days * 86_400, args.nodes, args.gpus,
               args.hosts_per_job, args.job_hours)
    sql("INSERT INTO gpus (host, gpu, uuid, name, first_ts) SELECT 'node' || lpad(n::text, 3, '0'), g, "
        "'GPU-' || n || '-' || g, 'NVIDIA H100', 0 FROM generate_series(0, %s) n, generate_series(0, %s) g",
        (args.nodes - 1, args.gpus - 1))
    sql("INSERT INTO processes (host, pid, job, \"user\", cmdline, first_ts) "
        "SELECT DISTINCT ON (job, host) host, 1000, job, 'user' || (abs(hashtext(job)) % 40), 'python train.py', ts "
        "FROM gpu_hour WHERE gpu = 0")
    sql("VACUUM ANALYZE")
    made = time.perf_counter() - started
    sizes = {}
    for name, width in (("gpu_minute", 60), ("gpu_hour", 3600)):
        (size, rows), = sql(f"SELECT pg_total_relation_size('{name}'), count(*) FROM {name}")
        sizes[name] = (rows, size, size / rows * 86_400 / width)
    (jobs,), = sql("SELECT count(DISTINCT job) FROM gpu_hour")
    print(f"{gpus} GPUs on {args.nodes} nodes: {args.days} days of hours, {args.minute_days} of minutes, "
          f"{jobs} jobs of {args.hosts_per_job} nodes × {args.job_hours:g} h; made in {made:.0f} s")
    print(table(["level", "rows", "MB", "bytes per GPU-day"],
                [(n, r, s / 1e6, b) for n, (r, s, b) in sizes.items()]))
    print()

    postgres = CpuMeter(lambda: process_tree(int((server.data / "postmaster.pid").read_text().split()[0])))
    postgres.sample()
    rows, worst = [], {}
    for indexed in (True, False):
        if not indexed:
            for name in ("gpu_minute", "gpu_hour"):
                sql(f"DROP INDEX ix_{name}_ts")
        for days in (1, 7, 30):
            for group_by in ("job", "user", "host"):
                took, cpu, r = run_report(url, iso(END - days * 86_400), group_by, iso(END), postgres)
                rows.append(("yes" if indexed else "no", f"{days} d", group_by, r["level"], len(r["hosts"]),
                             r["gpus"], len(r["groups"]), f"{r['total']['gpu_hours']:.0f}", took, cpu))
                if indexed:
                    worst[days] = max(worst.get(days, 0.0), took)
                print(f"  {rows[-1]}", flush=True)
    print(table(["time index", "range", "group by", "level", "hosts", "GPUs", "groups", "GPU-hours", "seconds",
                 "CPU s"], rows))
    final("fleet_report_1d", f"{worst[1]:.1f} s", "≤ 5 s")
    final("fleet_report_30d", f"{worst[30]:.1f} s", "≤ 10 s")


if __name__ == "__main__":
    main()
