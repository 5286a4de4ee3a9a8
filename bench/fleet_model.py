"""The paper model: a fleet of 1,000 and 10,000 nodes from the per-node figures bench/fleet.py and
bench/fleet_report.py measured (pass yours; the defaults are docs/scale.md's run).

Arithmetic only: rows a second, bytes a day, connections, series and samples, for the central
design (every agent writes raw ticks to one PostgreSQL) and for the one that takes over (raw ticks
kept on the node, minute rollups shipped).

    python3 bench/fleet_model.py [--rows-per-node-second 11.6] [--wal-per-gpu-day-mb 43.9] ...
"""

from __future__ import annotations

import argparse

from common import table

DAY = 86_400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--rows-per-node-second", type=float, default=11.6, help="PostgreSQL rows inserted")
    parser.add_argument("--wal-per-gpu-day-mb", type=float, default=43.9)
    parser.add_argument("--raw-per-gpu-day-mb", type=float, default=22.7, help="gpu_raw + process_samples")
    parser.add_argument("--minute-per-gpu-day-kb", type=float, default=432.0)
    parser.add_argument("--hour-per-gpu-day-kb", type=float, default=7.2)
    parser.add_argument("--pg-core-per-krows", type=float, default=0.086,
                        help="PostgreSQL cores busy per 1,000 rows/s inserted")
    parser.add_argument("--series-per-node", type=float, default=716.0)
    parser.add_argument("--scrape-interval", type=float, default=15.0)
    parser.add_argument("--vm-bytes-per-sample", type=float, default=7.2,
                        help="long-term store, on disk (a 10-minute run's, index included: an upper bound)")
    parser.add_argument("--flush-seconds", type=float, default=5.0)
    args = parser.parse_args()

    rows = []
    for nodes in (64, 1_000, 10_000):
        gpus = nodes * args.gpus_per_node
        raw_rows = nodes * args.rows_per_node_second
        minute_rows = gpus / 60
        raw_kept = gpus * args.raw_per_gpu_day_mb * 1e6 * 7
        rollups_kept = gpus * (args.minute_per_gpu_day_kb * 1e3 * 90 + args.hour_per_gpu_day_kb * 1e3 * 730)
        series = nodes * args.series_per_node
        samples = series / args.scrape_interval
        rows.append((
            f"{nodes:,}", f"{gpus:,}",
            f"{raw_rows:,.0f}", f"{args.pg_core_per_krows * raw_rows / 1e3:.2f}",
            f"{nodes / args.flush_seconds:,.0f}",
            f"{gpus * args.wal_per_gpu_day_mb / 1e3:,.0f} GB",
            f"{(raw_kept + rollups_kept) / 1e12:,.2f} TB",
            f"{gpus * DAY * 7 / 1e9:,.1f} G",
            f"{minute_rows:,.0f}", f"{rollups_kept / 1e12:,.2f} TB",
            f"{series / 1e6:,.2f} M", f"{samples / 1e3:,.0f} k",
            f"{samples * DAY * args.vm_bytes_per_sample / 1e9:,.0f} GB",
        ))
    print(table(["nodes", "GPUs", "raw rows/s", "PG cores", "flushes/s", "WAL/day", "DB at retention",
                 "gpu_raw rows kept", "rollup rows/s", "DB, rollups only", "series", "samples/s",
                 "long-term store/day"], rows))


if __name__ == "__main__":
    main()
