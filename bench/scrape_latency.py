"""/metrics latency under concurrent scrapers, on loopback.

Starts ``flopwatch run`` on simulated GPUs, then --scrapers threads each request /metrics over a
kept-alive connection for --seconds, back to back (the worst case: ten Prometheus servers scraping
as fast as they can), and reports p50/p99/max latency. One run with 1 GPU, one with 8 GPUs × 128
processes.

    python3 bench/scrape_latency.py [--seconds 20] [--scrapers 10]
"""

from __future__ import annotations

import argparse
import http.client
import threading
import time

from common import final, free_port, start_agent, stop, table

TARGET_P99_MS = 20.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def hammer(port: int, seconds: float, scrapers: int) -> tuple[list[float], int, int]:
    """Latencies in seconds of every request, the response size and the error count."""
    latencies: list[list[float]] = [[] for _ in range(scrapers)]
    errors = [0] * scrapers
    size = [0]
    start = threading.Barrier(scrapers)

    def scraper(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        start.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            began = time.perf_counter()
            try:
                connection.request("GET", "/metrics")
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            latencies[i].append(time.perf_counter() - began)
            size[0] = len(body)
        connection.close()

    threads = [threading.Thread(target=scraper, args=(i,)) for i in range(scrapers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [v for per in latencies for v in per], size[0], sum(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per configuration")
    parser.add_argument("--scrapers", type=int, default=10)
    args = parser.parse_args()

    rows = []
    worst = 0.0
    for gpus, processes in ((1, 1), (8, 128)):
        port = free_port()
        agent = start_agent(["--simulate", "healthy", "--simulate-gpus", str(gpus),
                             "--simulate-processes", str(processes)], port)
        try:
            latencies, size, errors = hammer(port, args.seconds, args.scrapers)
        finally:
            stop(agent)
        p99 = 1000 * percentile(latencies, 0.99)
        worst = max(worst, p99)
        rows.append([f"{gpus} × {processes}", len(latencies), len(latencies) / args.seconds, size / 1000,
                     1000 * percentile(latencies, 0.5), p99, 1000 * max(latencies), errors])
    print(f"{args.scrapers} concurrent scrapers back to back for {args.seconds:g} s each, loopback, agent ticking at 1 Hz")
    print(table(["GPUs × procs", "requests", "req/s", "body kB", "p50 ms", "p99 ms", "max ms", "errors"], rows))
    final("scrape_latency_p99", f"{worst:.1f} ms", f"≤ {TARGET_P99_MS:g} ms")


if __name__ == "__main__":
    main()
