"""What the agent costs at 1 Hz on 8 simulated GPUs × 128 processes, measured from outside.

Starts ``flopwatch run --simulate healthy --simulate-gpus 8 --simulate-processes 128``, waits
until it serves /metrics, then for --seconds reads the process's CPU seconds and its peak RSS
(VmHWM) as the kernel counts them. A Prometheus-like scrape every --scrape-every seconds is part of
the cost, as it is in production. Without a history store, unless --history-store: then the
default configuration's, in a new SQLite file.

    python3 bench/sim_agent_cost.py [--seconds 60] [--gpus 8] [--processes 128] [--scrape-every 15] [--history-store]
"""

from __future__ import annotations

import argparse
import threading
import time

from common import final, free_port, history_store_args, measure, metric_value, scrape, start_agent, stop, table

TARGET_CORE_PERCENT = 1.0
TARGET_RSS_MB = 80.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--processes", type=int, default=128, help="processes per GPU")
    parser.add_argument("--scrape-every", type=float, default=15.0, help="seconds between scrapes; 0: none")
    parser.add_argument("--history-store", action="store_true", help="with the history store (a new SQLite file)")
    args = parser.parse_args()

    port = free_port()
    started = time.monotonic()
    agent = start_agent(["--simulate", "healthy", "--simulate-gpus", str(args.gpus),
                         "--simulate-processes", str(args.processes),
                         *(history_store_args() if args.history_store else [])], port)
    startup = time.monotonic() - started
    url = f"http://127.0.0.1:{port}/metrics"
    done = threading.Event()

    def scraper() -> None:
        while args.scrape_every > 0 and not done.wait(args.scrape_every):
            scrape(url)

    thread = threading.Thread(target=scraper, daemon=True)
    try:
        ticks_before = metric_value(scrape(url), "flopwatch_ticks_total") or 0
        thread.start()
        cost = measure(agent, args.seconds)
        done.set()
        ticks = (metric_value(scrape(url), "flopwatch_ticks_total") or 0) - ticks_before
    finally:
        done.set()
        stop(agent)

    store = "with the history store" if args.history_store else "no history store"
    print(f"flopwatch run, simulated {args.gpus} GPUs × {args.processes} processes, {store}, {args.seconds:.0f} s "
          f"at 1 Hz, scrape every {args.scrape_every:g} s (start-up to ready: {startup:.1f} s)")
    print(table(
        ["ticks", "CPU s", "% of one core", "CPU ms/tick", "peak RSS MB"],
        [[int(ticks), cost["cpu_seconds"], cost["core_percent"], 1000 * cost["cpu_seconds"] / max(ticks, 1),
          cost["peak_rss_mb"]]],
    ))
    final("sim_agent_cost", f"{cost['core_percent']:.2f} % of one core, {cost['peak_rss_mb']:.0f} MB",
          f"≤ {TARGET_CORE_PERCENT:g} %, ≤ {TARGET_RSS_MB:g} MB")


if __name__ == "__main__":
    main()
