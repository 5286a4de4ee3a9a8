"""Time ``flopwatch report`` on a 30-day, 8-GPU history in PostgreSQL.

    python3 bench/report_bench.py [--days 30] [--gpus 8]

Starts a throwaway PostgreSQL (Debian's binaries, as the tests do) and fills it with what an
agent with default retention leaves after ``--days`` at 1 Hz: minute and hour rollups for the
whole range and raw ticks for the last day. Raw ticks for a month would be ~20 M rows to write
for a benchmark of reading rollups, so only the last day is written raw (retention keeps 7); its
minute rows are rolled up from those ticks with the store's own ``aggregate``, and the earlier
minutes are written directly. The workload: each GPU runs a series of 2–30 h jobs of twelve
users, each job healthy, starved, notebook-held, memory- or launch- or communication-bound, with
idle gaps between.

Then times the command as a user runs it (a fresh ``python -m flopwatch report`` process, so
start-up and imports count) for ``--since 30d`` in JSON (minute level), the same range at the
hour level, ``--since 1d`` (raw ticks), and ``--since 30d`` as an HTML page.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "agent"), str(ROOT)]

from flopwatch.history import schema  # noqa: E402
from flopwatch.history.store import HistoryStore, aggregate  # noqa: E402
from tests.servers import Missing  # noqa: E402
from tests.servers.postgres import PostgresServer, bindir as postgres_bindir  # noqa: E402

DAY = 86_400
# cause (None: healthy) → utilization, flops utilization, power W, tokens per second, weight
PROFILES = {
    None: (0.93, 0.42, 640.0, 4000.0, 6),
    "input_starved": (0.30, 0.14, 260.0, 1200.0, 2),
    "held_idle": (0.0, 0.0, 115.0, 0.0, 1),
    "memory_bound": (0.90, 0.12, 480.0, 2500.0, 1),
    "launch_bound": (0.05, 0.01, 130.0, 0.0, 1),
    "communication_bound": (0.35, 0.20, 300.0, 0.0, 1),
}
IDLE = (0.0, 0.0, 70.0, 0.0)
THRESHOLD = 0.6


def segments(rng: random.Random, start: float, end: float, gpu: int, jobs: list) -> list[tuple]:
    """(start, end, job, cause, profile) pieces for one GPU: jobs with idle gaps between."""
    out, t = [], start
    causes = list(PROFILES)
    while t < end:
        length = rng.uniform(2, 30) * 3600
        cause = rng.choices(causes, weights=[p[4] for p in PROFILES.values()])[0]
        job = f"slurm:{100_000 + len(jobs)}"
        jobs.append((job, f"user{rng.randrange(12):02d}", gpu, t, min(t + length, end)))
        out.append((t, min(t + length, end), job, cause, PROFILES[cause][:4]))
        t += length
        gap = rng.uniform(0, 3) * 3600
        if gap > 600 and t < end:
            out.append((t, min(t + gap, end), None, "idle", IDLE))
            t += gap
    return out


def tick_values(rng: random.Random, profile: tuple, cause: str | None) -> tuple:
    util, flops, power, tokens = profile
    u = min(1.0, max(0.0, util + rng.uniform(-0.06, 0.06))) if util else 0.0
    f = min(1.0, max(0.0, flops * (u / util))) if util else 0.0
    return u, f, power * (0.9 + 0.2 * rng.random()), tokens, u < THRESHOLD


def minute_row(host: str, gpu: int, ts: float, rng: random.Random, piece: tuple) -> dict:
    _, _, job, cause, profile = piece
    u, f, power, tokens, below = tick_values(rng, profile, cause)
    return {"host": host, "gpu": gpu, "ts": ts, "samples": 60, "utilization": u, "utilization_max": min(1.0, u + 0.05),
            "sm_occupancy": u * 0.5, "tensor_active": f, "dram_active": 0.3 * u, "flops_utilization": f,
            "flops_utilization_max": f, "memory_turnover_per_second": 9.0 * u, "power_watts": power,
            "power_watts_max": power * 1.05, "memory_used_bytes_max": (60 if job else 0) * 2**30,
            "energy_joules": power * 60, "wasted_seconds": 60.0 if below else 0.0,
            "tokens": tokens * 60 if tokens else None, "cause": cause, "cause_samples": 60 if cause else 0,
            "job": job}


def raw_row(host: str, gpu: int, ts: float, rng: random.Random, piece: tuple) -> dict:
    _, _, job, cause, profile = piece
    u, f, power, tokens, below = tick_values(rng, profile, cause)
    return {"host": host, "gpu": gpu, "ts": ts, "utilization": u, "sm_occupancy": u * 0.5, "tensor_active": f,
            "dram_active": 0.3 * u, "flops_utilization": f, "memory_turnover_per_second": 9.0 * u,
            "power_watts": power, "energy_joules": power, "memory_used_bytes": (60 if job else 0) * 2**30,
            "cause": cause, "below_threshold": below, "wasted_seconds": 1.0 if below else 0.0,
            "tokens": tokens or None, "job": job}


def copy_rows(connection, table, rows: list[dict]) -> None:  # noqa: ANN001
    """COPY rows into a table, converting fixed-point columns as the schema's type does."""
    names = [c.name for c in table.columns]
    fixed = {c.name: c.type.scale for c in table.columns if isinstance(c.type, schema.Fixed)}
    with connection.cursor() as cursor, cursor.copy(
            f"COPY {table.name} ({', '.join(f'{chr(34)}{n}{chr(34)}' for n in names)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([round(row[n] * fixed[n]) if n in fixed and row[n] is not None else row[n]
                            for n in names])


def build(url: str, days: int, gpus: int, end: float) -> dict[str, int]:
    import psycopg

    HistoryStore(url, "node01").engine.dispose()  # creates the schema
    rng = random.Random(7)
    start = end - days * DAY
    raw_from = end - DAY
    jobs: list = []
    minutes, raws = [], []
    for gpu in range(gpus):
        for piece in segments(rng, start, end, gpu, jobs):
            t0, t1 = piece[0], piece[1]
            for ts in range(math.ceil(t0 / 60) * 60, min(int(t1), int(raw_from)), 60):
                minutes.append(minute_row("node01", gpu, float(ts), rng, piece))
            for ts in range(max(math.ceil(t0), int(raw_from)), int(t1)):
                raws.append(raw_row("node01", gpu, float(ts), rng, piece))
    minutes += aggregate(raws, 60.0, raw=True)
    hours = aggregate(minutes, 3600.0, raw=False)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as connection:
        copy_rows(connection, schema.gpu_raw, raws)
        copy_rows(connection, schema.gpu_minute, minutes)
        copy_rows(connection, schema.gpu_hour, hours)
        copy_rows(connection, schema.gpus, [
            {"host": "node01", "gpu": g, "uuid": f"GPU-{g:08d}", "name": "NVIDIA H100 80GB HBM3", "first_ts": start}
            for g in range(gpus)])
        copy_rows(connection, schema.job_spans, [
            {"id": n + 1, "host": "node01", "gpu": gpu, "start_ts": t0, "end_ts": t1, "job": job}
            for n, (job, _, gpu, t0, t1) in enumerate(jobs)])
        copy_rows(connection, schema.processes, [
            {"id": n + 1, "host": "node01", "pid": 1000 + n, "job": job, "user": user,
             "cmdline": "python train.py", "first_ts": t0} for n, (job, user, _, t0, _) in enumerate(jobs)])
        connection.execute("ANALYZE")
    return {"raw": len(raws), "minute": len(minutes), "hour": len(hours), "jobs": len(jobs)}


def timed(url: str, *args: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "agent")}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "flopwatch", "report", "--history", url, "--no-progress", *args],
                            capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - started, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--html", type=Path, help="Keep the 30-day HTML page here.")
    args = parser.parse_args()
    try:
        bindir = postgres_bindir()
    except Missing as missing:
        sys.exit(str(missing))
    root = Path(tempfile.mkdtemp(prefix="flopwatch-report-bench-"))
    server = PostgresServer(bindir, root)
    server.start()
    try:
        url = server.url()
        end = math.floor(time.time() / 60) * 60  # whole minutes: raw and minute rows meet at a bucket edge
        started = time.perf_counter()
        counts = build(url, args.days, args.gpus, end)
        print(f"history: {args.days} days x {args.gpus} GPUs in PostgreSQL: {counts['minute']:,} minute rows, "
              f"{counts['hour']:,} hour rows, {counts['raw']:,} raw rows (last day), {counts['jobs']} jobs "
              f"(built in {time.perf_counter() - started:.0f} s)")
        html = root / "report.html"
        runs = [
            (f"--since {args.days}d --format json", ["--since", f"{args.days}d", "--format", "json"]),
            (f"--since {args.days}d --format json --level hour",
             ["--since", f"{args.days}d", "--format", "json", "--level", "hour"]),
            ("--since 1d --format json (raw ticks)", ["--since", "1d", "--format", "json"]),
            (f"--since {args.days}d --format html", ["--since", f"{args.days}d", "--format", "html", "-o", str(html)]),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "agent")}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flopwatch", "version"], env=env, check=True, capture_output=True)
        results = [("(start-up alone: flopwatch version)", time.perf_counter() - started)]
        for label, argv in runs:
            seconds = min(timed(url, *argv)[0] for _ in range(3))
            results.append((label, seconds))
        _, out = timed(url, "--since", f"{args.days}d", "--format", "json")
        doc = json.load(io.StringIO(out))
        print(f"report: level {doc['level']}, {doc['total']['gpu_hours']:,.0f} GPU-hours, "
              f"{doc['total']['wasted_gpu_hours']:,.0f} wasted, {len(doc['groups'])} jobs, "
              f"{len(doc['series']['points'])} plot points")
        print(f"{'flopwatch report …':<48} {'best of 3, s':>12}")
        for label, seconds in results:
            print(f"{label:<48} {seconds:>12.2f}")
        if args.html:
            shutil.copy(html, args.html)
        print(f"report_{args.days}d_{args.gpus}gpu_postgres: {results[1][1]:.2f} s (no target)")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
