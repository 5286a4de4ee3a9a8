"""History store cost: bytes per GPU-day at 1 Hz per level, the 30-day × 8-GPU projection, and
the write cost per tick as a share of a 1 s tick.

    python3 bench/store_bench.py [--gpus 8] [--minutes 60]

Writes ``--minutes`` of 1 Hz ticks for ``--gpus`` GPUs (1–4 processes each, values varying every
tick as real ones do) into SQLite in a temporary directory, flushing every 5 s and rolling up
every minute as the agent does, and times record + flush + rollup. Raw bytes are what the run's
second half adds, so a short run does not count its tables' first pages as growth. Minute and
hour rows are then repeated over whole days to measure their size, since one run yields too few
of them. Last, the CPU of the flush that first meets a node's processes: one tick of --gpus ×
--new-processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "agent"), str(ROOT)]

from flopwatch.history import schema  # noqa: E402
from flopwatch.history.store import HistoryStore, Retention  # noqa: E402
from tests.store_ticks import starved, tick  # noqa: E402

DAY = 86_400
START = 1_767_225_600.0  # 2026-01-01, so timestamps have today's magnitude
RAW_TABLES = ("gpu_raw", "process_samples", "processes", "gpus", "findings", "job_spans")


def varied(state, i: int):
    """The same tick with readings that change every second and every GPU, as real ones do."""
    out = []
    for g in state.gpus:
        figures = g.figures
        wave = 0.5 + 0.45 * math.sin(i / 37.0 + figures.index)
        figures = dataclasses.replace(
            figures, utilization=wave, sm_occupancy=wave * 0.61, tensor_active=wave * 0.43,
            dram_active=0.2 + wave * 0.3, flops_utilization=wave * 0.37,
            memory_turnover_per_second=9.0 + wave * 3.7, power_watts=180.0 + 500.0 * wave,
            energy_joules_delta=180.0 + 500.0 * wave + 0.013 * i)
        processes = tuple(dataclasses.replace(p, sm_ratio=wave / len(g.processes))
                          for p in g.processes[: 1 + figures.index % 4])
        out.append(dataclasses.replace(g, figures=figures, processes=processes))
    return dataclasses.replace(state, gpus=tuple(out))


def table_bytes(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = connection.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
    sizes: dict[str, int] = {}
    for name, size in rows:
        # Indexes count towards their table (sqlite_autoindex_<table>_N, ix_<table>_...).
        owner = next((t.name for t in schema.metadata.sorted_tables
                      if name == t.name or f"_{t.name}_" in f"_{name}"), name)
        sizes[owner] = sizes.get(owner, 0) + size
    return sizes


def repeat_rollups(path: Path, table: str, width: float, days: float) -> float:
    """Copy the buckets one run made over ``days`` of time; returns the GPU-days they cover."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute(f"SELECT * FROM {table}").fetchall()
        gpus = sorted({row[2] for row in rows})
        first = min(row[1] for row in rows)
        connection.execute(f"DELETE FROM {table}")
        connection.executemany(
            f"INSERT INTO {table} VALUES ({','.join('?' * len(rows[0]))})",
            [(template[0], first + n * width, gpu, *template[3:])
             for n in range(int(days * DAY / width))
             for gpu in gpus
             for template in [rows[(n * len(gpus) + gpu) % len(rows)]]])
    return days * len(gpus)


def first_processes_flush(gpus: int, processes: int) -> float:
    """CPU seconds of the one flush that writes ``gpus`` × ``processes`` processes new to the database."""
    with tempfile.TemporaryDirectory() as tmp:
        store = HistoryStore(f"sqlite:///{tmp}/history.db", "gpu-node-017", clock=lambda: START)
        assert store.flush(), store.last_error  # the schema, before the clock starts
        store.record(tick(START, gpus=gpus, processes=processes))
        began = time.process_time()
        assert store.flush(), store.last_error
        spent = time.process_time() - began
        store.close()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--new-processes", type=int, default=128, help="per GPU, for the first flush")
    args = parser.parse_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.db"
        clock = [START]
        store = HistoryStore(f"sqlite:///{path}", "gpu-node-017", retention=Retention(),
                             clock=lambda: clock[0])
        spent = {"record": 0.0, "flush": 0.0, "rollup": 0.0}
        half = seconds // 2
        for i in range(seconds):
            if i == half:
                # Raw size is what the second half adds: each table and index starts with whole
                # pages, which a short run would otherwise count as its growth.
                raw_at_half = table_bytes(path)
            ts = START + i + 0.137  # ticks are not on whole seconds
            finding = starved() if (i // 300) % 3 == 2 else None  # a cause now and then
            state = varied(tick(ts, gpus=args.gpus, processes=4, finding=finding), i)
            began = time.perf_counter()
            store.record(state)
            spent["record"] += time.perf_counter() - began
            if i % 5 == 4:
                began = time.perf_counter()
                assert store.flush(), store.last_error
                spent["flush"] += time.perf_counter() - began
            if i % 60 == 59:
                began = time.perf_counter()
                assert store.rollup(ts + 1), store.last_error
                spent["rollup"] += time.perf_counter() - began
        store.close()

        raw_at_end = table_bytes(path)
        raw_sizes = {t: raw_at_end.get(t, 0) - raw_at_half.get(t, 0) for t in RAW_TABLES}
        raw_gpu_days = args.gpus * (seconds - half) / DAY
        per_day = {"raw": sum(raw_sizes.values()) / raw_gpu_days}
        for level, table, width, days in (("minute", "gpu_minute", 60.0, 1.0),
                                          ("hour", "gpu_hour", 3600.0, 30.0)):
            covered = repeat_rollups(path, table, width, days)
            per_day[level] = table_bytes(path)[table] / covered

    retention = Retention()
    horizon = 30
    projection = 8 * sum(per_day[level] * min(horizon, days) for level, days in (
        ("raw", retention.raw_days), ("minute", retention.minute_days), ("hour", retention.hour_days)))
    per_tick = sum(spent.values()) / seconds  # the tick is 1 s
    print(f"{args.gpus} GPUs, 1-4 processes each, {args.minutes} min at 1 Hz, SQLite {sqlite3.sqlite_version}")
    print(f"{'level':8} {'bytes/GPU-day':>14} {'kept (days)':>12}")
    for level, days in (("raw", retention.raw_days), ("minute", retention.minute_days),
                        ("hour", retention.hour_days)):
        print(f"{level:8} {per_day[level]:>14,.0f} {days:>12g}")
    print("raw tables (the second half's growth): " + ", ".join(
        f"{t} {raw_sizes[t] / raw_gpu_days / 1e6:.2f} MB/GPU-day" for t in RAW_TABLES if raw_sizes[t]))
    for name, value in spent.items():
        print(f"{name:8} {value / seconds * 1e3:8.3f} ms per tick ({args.gpus} GPUs)")
    first = first_processes_flush(args.gpus, args.new_processes)
    print(f"first flush of {args.gpus} x {args.new_processes} new processes: {first * 1e3:.1f} ms of CPU")
    print(f"projection 30 days x 8 GPUs: {projection / 1e9:.3f} GB (target <= 1 GB)")
    print(f"store_write_cost_per_tick: {per_tick * 100:.3f} % of a 1 s tick (target <= 5 %)")


if __name__ == "__main__":
    main()
