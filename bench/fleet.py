"""A fleet on one machine: N simulated nodes × 8 GPUs, one PostgreSQL, one Prometheus remote-writing
into VictoriaMetrics, all real processes on loopback, measured from outside.

Starts PostgreSQL (initdb in a temporary folder, durable settings), VictoriaMetrics, Prometheus
(scraping every agent every --scrape-interval, remote_write into VictoriaMetrics, the rules in
alerts/), then N ``flopwatch run --simulate <scenario> --simulate-gpus 8`` agents, each with its
own host name (FLOPWATCH_AGENT_HOSTNAME), writing history to the one database. After --warmup
seconds it measures for --seconds: PostgreSQL's ingest (rows/s, its CPU, WAL bytes), bytes per
GPU-day of each table level, each agent's flush time and buffer high-water, the agents' CPU,
Prometheus's series per node, series churn and scrape duration, VictoriaMetrics' disk per GPU-day,
every query of dashboards/fleet.json against VictoriaMetrics, and ``flopwatch report --since 1d``
by job, user and host. Faults, if asked: PostgreSQL restarted (--pg-restart-at), VictoriaMetrics
down (--vm-down-at, --vm-down-seconds). Prints a table, then one line per target.

    python3 bench/fleet.py [--nodes 64] [--gpus 8] [--processes 4] [--seconds 600] [--interval 1]
        [--pg-restart-at 60] [--vm-down-at 200 --vm-down-seconds 300] [--backfill-hours 24]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from common import (ROOT, CpuMeter, final, metric_value, postgres_server, process_tree, scrape, sql, start_agent,
                    stop, table)
from fleet_report import run_report

from flopwatch.config import HistoryConfig
from flopwatch.history.store import BACKOFF_INTERVALS
from tests.servers.prometheus import Prometheus, Server

# One scenario per node (its 8 GPUs run one job): half healthy or data-parallel, the rest each cause.
MIX = ["healthy", "communication_bound", "healthy", "input_starved", "healthy", "held_idle", "memory_bound",
       "healthy", "launch_bound", "idle", "communication_bound", "no_tensor_cores", "healthy", "power_capped",
       "io_bound", "contention"]
DAY = 86_400.0
FLUSH_SECONDS = HistoryConfig().flush_interval_seconds
TOKEN_PUSH_SECONDS = 5.0
TABLES = ("gpu_raw", "process_samples", "processes", "gpus", "findings", "job_spans", "gpu_minute", "gpu_hour")


class VictoriaMetrics(Server):
    """Single-node VictoriaMetrics, its storage in the work folder."""

    name = "victoria-metrics"

    def command(self) -> list[str]:
        return ["/usr/bin/victoria-metrics", f"-storageDataPath={self.workdir / 'data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=1y", "-search.latencyOffset=0s",
                "-loggerLevel=ERROR"]


class RemoteWritingPrometheus(Prometheus):
    """The test suite's Prometheus, also remote-writing everything it scrapes and records."""

    def __init__(self, workdir: Path, targets: list[str], remote_write_url: str, scrape_interval: str,
                 rule_files: Iterable[Path]):
        super().__init__(workdir, targets, rule_files=list(rule_files), scrape_interval=scrape_interval)
        config = json.loads(self.config_path.read_text())
        config["remote_write"] = [{"url": remote_write_url}]
        self.config_path.write_text(json.dumps(config, indent=2))


def listen_ports(count: int) -> list[int]:
    """Free ports below the kernel's ephemeral range: a port picked long before it is bound could
    meanwhile be taken by one of the many connections the fleet opens."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    found: list[int] = []
    port = random.randrange(10_000, low - 4 * count)
    while len(found) < count:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                found.append(port)
            except OSError:
                pass
        port += 1
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass
class Figures:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (what, value, note)
    targets: list[tuple[str, bool, str, str]] = field(default_factory=list)  # (name, ok, value, target)

    def add(self, what: str, value: str, note: str = "") -> None:
        self.rows.append((what, value, note))
        print(f"  {what}: {value} {note}", flush=True)

    def target(self, name: str, ok: bool, value: str, target: str) -> None:
        self.targets.append((name, ok, value, target))


class Fleet:
    def __init__(self, args: argparse.Namespace, work: Path, pg: Any):
        self.args = args
        self.work = work
        self.pg = pg
        self.vm = VictoriaMetrics(work / "vm")
        ports = listen_ports(2 * args.nodes)
        self.ports, self.push_ports = ports[:args.nodes], ports[args.nodes:]
        rules = [ROOT / "alerts" / "flopwatch.rules.yml", *sorted((ROOT / "alerts").glob("*.recording.yml"))]
        self.prom = RemoteWritingPrometheus(work / "prom", [f"127.0.0.1:{p}" for p in self.ports],
                                            f"{self.vm.url}/api/v1/write", f"{args.scrape_interval:g}s", rules)
        self.agents: list[subprocess.Popen] = []
        self.url = ""

    # -- servers ----------------------------------------------------------------------------

    def start(self) -> None:
        self.started_unix = time.time()
        self.url = self.pg.url()
        self.vm.start()
        self.prom.start()
        for i, port in enumerate(self.ports):
            env = {"FLOPWATCH_AGENT_HOSTNAME": f"node{i:03d}", "FLOPWATCH_AGENT_SEED": str(i),
                   "FLOPWATCH_AGENT_INTERVAL_SECONDS": str(self.args.interval),
                   "FLOPWATCH_TOKENS_PUSH_LISTEN": f"127.0.0.1:{self.push_ports[i]}"}
            self.agents.append(start_agent(
                ["--simulate", MIX[i % len(MIX)], "--simulate-gpus", str(self.args.gpus),
                 "--simulate-processes", str(self.args.processes), "--history", self.url], port, env))
            if (i + 1) % 16 == 0:
                print(f"  {i + 1} agents up", flush=True)

    def stop_agents(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                agent.terminate()
        for agent in self.agents:
            stop(agent)  # waits; SIGTERM flushes each one's buffer

    def stop(self) -> None:
        self.stop_agents()
        for server in (self.prom, self.vm):
            server.stop()

    def push_tokens(self, done: threading.Event) -> None:
        """The healthy nodes serve a model: every GPU's rank pushes its tokens, as TokenClient does."""
        from flopwatch.client import TokenClient

        # The simulator numbers a GPU's processes from 100,000 + 1,000 × its index.
        clients = [TokenClient(f"http://127.0.0.1:{port}", job="alice:train.py", pid=100_000 + gpu * 1000,
                               timeout=2.0)
                   for i, port in enumerate(self.push_ports) if MIX[i % len(MIX)] == "healthy"
                   for gpu in range(self.args.gpus)]
        while not done.wait(TOKEN_PUSH_SECONDS):
            for client in clients:
                client.add(prompt_tokens=2000 * int(TOKEN_PUSH_SECONDS), generated_tokens=500 * int(TOKEN_PUSH_SECONDS))
                client.flush()

    def pg_pids(self) -> list[int]:
        pidfile = self.pg.data / "postmaster.pid"
        try:
            return process_tree(int(pidfile.read_text().split("\n", 1)[0]))
        except (OSError, ValueError):
            return []

    def sql(self, query: str) -> list[tuple]:
        return sql(self.url, query)

    # -- readings ---------------------------------------------------------------------------

    def pg_counters(self) -> dict[str, float]:
        """Cumulative: rows inserted (in all and by table), updated, deleted; WAL bytes; commits."""
        found = {"inserted": 0.0, "updated": 0.0, "deleted": 0.0}
        # A day partition's rows count under its table.
        for name, inserted, updated, deleted in self.sql(
                "SELECT coalesce(p.relname, s.relname), sum(n_tup_ins)::float8, sum(n_tup_upd)::float8,"
                " sum(n_tup_del)::float8"
                " FROM pg_stat_user_tables s LEFT JOIN pg_inherits i ON i.inhrelid = s.relid"
                " LEFT JOIN pg_class p ON p.oid = i.inhparent GROUP BY 1"):
            found[name] = float(inserted)
            found["inserted"] += inserted
            found["updated"] += updated
            found["deleted"] += deleted
        (found["wal"],), = self.sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
        (found["commits"],), = self.sql("SELECT xact_commit::float8 FROM pg_stat_database WHERE datname = current_database()")
        return found

    def agent_metrics(self) -> list[dict[str, float]]:
        """Per agent: the store's and the tick's figures from its /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        found = []
        for port in self.ports:
            values: dict[str, float] = {}
            try:
                text = scrape(f"http://127.0.0.1:{port}/metrics").decode()
            except OSError:
                found.append(values)
                continue
            for family in text_string_to_metric_families(text):
                if family.name.startswith("flopwatch_store") or family.name == "flopwatch_ticks":
                    for s in family.samples:
                        key = s.name + (f"{{le={s.labels['le']}}}" if "le" in s.labels else "")
                        values[key] = s.value
            found.append(values)
        return found

    def promql(self, base: str, expr: str, at: float | None = None) -> tuple[list, float]:
        """An instant query's result and the seconds it took."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        started = time.perf_counter()
        with urllib.request.urlopen(f"{base}/api/v1/query?" + urllib.parse.urlencode(params), timeout=60) as r:
            answer = json.loads(r.read())
        return answer["data"]["result"], time.perf_counter() - started

    def promql_range(self, base: str, expr: str, start: float, end: float, step: float) -> tuple[list, float]:
        params = {"query": expr, "start": f"{start:.0f}", "end": f"{end:.0f}", "step": f"{step:.0f}"}
        started = time.perf_counter()
        with urllib.request.urlopen(f"{base}/api/v1/query_range?" + urllib.parse.urlencode(params), timeout=60) as r:
            answer = json.loads(r.read())
        return answer["data"]["result"], time.perf_counter() - started

    def own_metric(self, name: str) -> float:
        """Prometheus's own metric, from its /metrics (it does not scrape itself here)."""
        return metric_value(scrape(f"{self.prom.url}/metrics"), name) or 0.0

    def scalar(self, base: str, expr: str, at: float | None = None) -> float:
        result, _ = self.promql(base, expr, at)
        return float(result[0]["value"][1]) if result else float("nan")


def connect_attempts(agents: list[dict[str, float]]) -> float:
    return sum(a.get("flopwatch_store_connect_attempts_total", 0.0) for a in agents)


def percentile_from_buckets(buckets: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding the q-th quantile of a cumulative histogram."""
    total = buckets.get(float("inf"), 0.0)
    for bound in sorted(buckets):
        if total and buckets[bound] >= q * total:
            return bound
    return float("nan")


def backfill(fleet: Fleet, before: float, hours: float, step: float) -> int:
    """Give every series the fleet dashboard reads a history in VictoriaMetrics for ``hours`` up to
    ``before`` (when the agents started), as if they had run a day: gauges at their present value,
    counters rising at their present rate (and resetting when the agents started, as a restart
    does). Returns the samples written."""
    names = sorted({name for _, expr, _ in dashboard_queries(60)
                    for name in re.findall(r"[a-z_:]*flopwatch_[a-z_:]+(?=\{)", expr)})
    now = time.time()
    query = urllib.parse.urlencode([("match[]", "{__name__=~\"%s\"}" % "|".join(names)), ("start", f"{before:.0f}")])
    with urllib.request.urlopen(f"{fleet.vm.url}/api/v1/export?{query}", timeout=300) as r:
        series = [json.loads(line) for line in r]
    stamps = [int(1000 * (before - hours * 3600 + i * step)) for i in range(int(hours * 3600 / step))]
    written = 0
    lines = []
    for s in series:
        value, first = s["values"][-1], s["timestamps"][0] / 1000
        counter = s["metric"]["__name__"].endswith("_total")
        rate = value / max(s["timestamps"][-1] / 1000 - first, step) if counter else 0.0
        origin = stamps[0] / 1000
        values = [rate * (t / 1000 - origin) for t in stamps] if counter else [value] * len(stamps)
        lines.append(json.dumps({"metric": s["metric"], "values": values, "timestamps": stamps}))
        written += len(stamps)
        if len(lines) >= 500:
            _import(fleet.vm.url, lines)
            lines = []
    _import(fleet.vm.url, lines)
    print(f"  backfilled {written} samples of {len(series)} series in {time.time() - now:.0f} s", flush=True)
    return written


def _import(url: str, lines: list[str]) -> None:
    if lines:
        request = urllib.request.Request(f"{url}/api/v1/import", data="\n".join(lines).encode(), method="POST")
        urllib.request.urlopen(request, timeout=300).read()


def time_panels(fleet: Fleet, figures: Figures, span: int, end: float, label: str) -> tuple[float, list[str]]:
    """Every panel's query against VictoriaMetrics over ``span`` seconds to ``end``, as Grafana sends
    it (instant, or a range of ~250 points): the slowest, and the panels that came back empty."""
    slowest, empty = 0.0, []
    for title, expr, instant in dashboard_queries(span):
        if instant:
            result, took = fleet.promql(fleet.vm.url, expr, end)
        else:
            result, took = fleet.promql_range(fleet.vm.url, expr, end - span, end, max(span // 250, 15))
        slowest = max(slowest, took)
        if not result:
            empty.append(title)
        figures.add(f"panel over {label}: {title[:28]}", f"{1e3 * took:.0f} ms",
                    f"{'instant' if instant else 'range'}, {len(result)} series; {expr[:60]}")
    return slowest, empty


def dashboard_queries(range_seconds: int) -> list[tuple[str, str, bool]]:
    """(panel, query, instant) for every target of dashboards/fleet.json, variables as "All" and the range."""
    board = json.loads((ROOT / "dashboards" / "fleet.json").read_text())

    def panels(node: dict) -> Iterable[dict]:
        for p in node.get("panels") or []:
            yield p
            yield from panels(p)

    found = []
    for panel in panels(board):
        for t in panel.get("targets") or []:
            expr = (t["expr"].replace('=~"$instance"', '=~".*"').replace('=~"$job"', '=~".*"')
                    .replace("$__range", f"{range_seconds}s").replace("$__rate_interval", "1m"))
            found.append((panel.get("title", ""), expr, bool(t.get("instant"))))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=8, help="simulated GPUs per node")
    parser.add_argument("--processes", type=int, default=4, help="processes per GPU")
    parser.add_argument("--interval", type=float, default=1.0, help="the agents' tick, seconds")
    parser.add_argument("--scrape-interval", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=90.0, help="seconds after the last agent is up")
    parser.add_argument("--seconds", type=float, default=600.0, help="the measured window")
    parser.add_argument("--pg-restart-at", type=float, help="seconds into the window: PostgreSQL stopped, then started")
    parser.add_argument("--pg-down-seconds", type=float, default=20.0)
    parser.add_argument("--vm-down-at", type=float, help="seconds into the window: VictoriaMetrics stopped")
    parser.add_argument("--vm-down-seconds", type=float, default=300.0)
    parser.add_argument("--backfill-hours", type=float, default=24.0,
                        help="then give the dashboard's series this much history and time its queries again")
    parser.add_argument("--backfill-step", type=float, default=60.0, help="seconds between backfilled points")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = parser.parse_args()

    with postgres_server("flopwatch-fleet-pg-", durable=True) as pg:
        run(args, pg)


def run(args: argparse.Namespace, pg: Any) -> None:
    work = Path(tempfile.mkdtemp(prefix="flopwatch-fleet-"))
    fleet = Fleet(args, work, pg)
    figures = Figures()
    gpus = args.nodes * args.gpus
    print(f"fleet: {args.nodes} nodes × {args.gpus} GPUs × {args.processes} processes, tick {args.interval:g} s, "
          f"scrape {args.scrape_interval:g} s, window {args.seconds:.0f} s; work in {work}", flush=True)
    done = threading.Event()
    try:
        started = time.monotonic()
        fleet.start()
        print(f"  all up in {time.monotonic() - started:.0f} s; warming up {args.warmup:.0f} s", flush=True)
        pusher = threading.Thread(target=fleet.push_tokens, args=(done,), daemon=True)
        pusher.start()
        time.sleep(args.warmup)
        measure(fleet, figures, args, gpus)
    finally:
        done.set()
        fleet.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(["figure", "value", "note"], figures.rows))
    for name, ok, value, target in figures.targets:
        print(f"{'PASS' if ok else 'FAIL'} ", end="")
        final(name, value, target)


def measure(fleet: Fleet, figures: Figures, args: argparse.Namespace, gpus: int) -> None:
    pg_cpu = CpuMeter(fleet.pg_pids)
    agent_cpu = CpuMeter(lambda: [a.pid for a in fleet.agents])
    prom_cpu = CpuMeter(lambda: process_tree(fleet.prom._process.pid if fleet.prom._process else None))
    vm_cpu = CpuMeter(lambda: process_tree(fleet.vm._process.pid if fleet.vm._process else None))
    meters = (pg_cpu, agent_cpu, prom_cpu, vm_cpu)
    for m in meters:
        m.sample()
    before = fleet.pg_counters()
    agents_before = fleet.agent_metrics()
    churn_before = fleet.own_metric("prometheus_tsdb_head_series_created_total")
    busy0, total0 = machine_busy()
    wall0 = time.monotonic()
    events: dict[str, float] = {}
    outage_attempts: list[float] = []
    pg_restart = args.pg_restart_at
    vm_down = args.vm_down_at
    while (elapsed := time.monotonic() - wall0) < args.seconds:
        time.sleep(1.0)
        for m in meters:
            m.sample()
        if pg_restart is not None and elapsed >= pg_restart and "pg_stop" not in events:
            outage_attempts.append(connect_attempts(fleet.agent_metrics()))
            events["pg_stop"] = time.time()
            fleet.pg.stop()
            print(f"  PostgreSQL stopped at {elapsed:.0f} s", flush=True)
            time.sleep(args.pg_down_seconds)
            outage_attempts.append(connect_attempts(fleet.agent_metrics()))
            fleet.pg.start()
            events["pg_start"] = time.time()
            print(f"  PostgreSQL started after {args.pg_down_seconds:.0f} s", flush=True)
        if "pg_start" in events and "pg_all_up" not in events:
            if all(m.get("flopwatch_store_up") == 1 for m in fleet.agent_metrics()):
                events["pg_all_up"] = time.time()
        if vm_down is not None and elapsed >= vm_down and "vm_stop" not in events:
            fleet.vm.stop()
            events["vm_stop"] = time.time()
            print(f"  VictoriaMetrics stopped at {elapsed:.0f} s", flush=True)
        if "vm_stop" in events and "vm_start" not in events and time.time() - events["vm_stop"] >= args.vm_down_seconds:
            fleet.vm.start()
            events["vm_start"] = time.time()
            print(f"  VictoriaMetrics started after {args.vm_down_seconds:.0f} s", flush=True)
    wall = time.monotonic() - wall0
    unix1 = time.time()
    busy1, total1 = machine_busy()
    for m in meters:
        m.sample()
    after = fleet.pg_counters()
    agents_after = fleet.agent_metrics()
    churn_after = fleet.own_metric("prometheus_tsdb_head_series_created_total")

    # -- PostgreSQL ---------------------------------------------------------------------------
    gpu_days = gpus * wall / DAY
    # The statistics survive a restart: a fast shutdown writes them.
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    figures.add("agents' ticks", f"{args.nodes} × {args.gpus} GPUs", f"{args.processes} processes a GPU, {args.interval:g} s")
    figures.add("PostgreSQL rows inserted /s", f"{d['inserted'] / wall:.0f}", f"gpu_raw {d['gpu_raw'] / wall:.0f}/s; "
                f"updated {d['updated'] / wall:.1f}/s, deleted {d['deleted'] / wall:.0f}/s (rollup rebuilds)")
    figures.add("PostgreSQL commits /s", f"{d['commits'] / wall:.1f}")
    pg_core = 100 * pg_cpu.seconds / wall
    figures.add("PostgreSQL CPU", f"{pg_core:.1f} % of a core", "all its processes, from /proc")
    wal_per_day = d["wal"] / wall * DAY
    figures.add("WAL", f"{d['wal'] / wall / 1e3:.0f} kB/s", f"{wal_per_day / 1e9:.1f} GB/day, "
                f"{d['wal'] / gpu_days / 1e6:.1f} MB per GPU-day")
    # A partitioned table's bytes are its partitions'.
    sizes = {t: fleet.sql(f"SELECT coalesce(sum(pg_total_relation_size(relid)), pg_total_relation_size('{t}'))"
                          f"::float8, (SELECT count(*) FROM {t}) FROM pg_partition_tree('{t}')")[0] for t in TABLES}
    per_gpu_day = {}
    for t, (size, count) in sizes.items():
        # Bytes a row (indexes included) × rows a GPU-day: a level's buckets by their width, the
        # raw tables as the window wrote them.
        width = {"gpu_minute": 60.0, "gpu_hour": 3600.0}.get(t)
        rows_per_gpu_day = DAY / width if width else d.get(t, 0.0) / gpu_days
        per_gpu_day[t] = size / max(count, 1) * rows_per_gpu_day
    raw_day = per_gpu_day["gpu_raw"] + per_gpu_day["process_samples"]
    figures.add("table+index bytes per GPU-day", f"raw {raw_day / 1e6:.1f} MB", f"(gpu_raw {per_gpu_day['gpu_raw'] / 1e6:.1f}, "
                f"process_samples {per_gpu_day['process_samples'] / 1e6:.2f}); minute "
                f"{per_gpu_day['gpu_minute'] / 1e3:.0f} kB, hour {per_gpu_day['gpu_hour'] / 1e3:.1f} kB")
    kept = raw_day * 7 + per_gpu_day["gpu_minute"] * 90 + per_gpu_day["gpu_hour"] * 730
    figures.add("database per GPU at default retention", f"{kept / 1e9:.2f} GB", "7 d raw, 90 d minutes, 730 d hours")
    figures.add("table sizes", ", ".join(f"{t} {s / 1e6:.0f} MB" for t, (s, _) in sizes.items() if s > 1e6), "")

    # -- agents ------------------------------------------------------------------------------
    flush_p99, flush_mean, high_water, dropped, stalled = [], [], [], 0.0, []
    for i, (a0, a1) in enumerate(zip(agents_before, agents_after)):
        buckets = {float(k.split("=")[1].rstrip("}")): v - a0.get(k, 0.0)
                   for k, v in a1.items() if k.startswith("flopwatch_store_flush_seconds_bucket")}
        flush_p99.append(percentile_from_buckets(buckets, 0.99))
        count = a1.get("flopwatch_store_flush_seconds_count", 0) - a0.get("flopwatch_store_flush_seconds_count", 0)
        flush_mean.append((a1.get("flopwatch_store_flush_seconds_sum", 0) - a0.get("flopwatch_store_flush_seconds_sum", 0))
                          / max(count, 1))
        high_water.append(a1.get("flopwatch_store_pending_rows_max", 0))
        dropped += a1.get("flopwatch_store_dropped_rows_total", 0)
        ticks = a1.get("flopwatch_ticks_total", 0) - a0.get("flopwatch_ticks_total", 0)
        if ticks < 0.9 * wall / args.interval:
            stalled.append(f"node{i:03d}:{ticks:.0f}")
    figures.add("agent flush time", f"mean {1e3 * sum(flush_mean) / len(flush_mean):.0f} ms",
                f"p99 bucket ≤ {max(flush_p99):g} s (worst agent); one every {FLUSH_SECONDS:g} s")
    figures.add("agent buffer high-water", f"max {max(high_water):.0f} rows", f"median {sorted(high_water)[len(high_water) // 2]:.0f}")
    figures.add("agent CPU", f"{100 * agent_cpu.seconds / wall / args.nodes:.2f} % of a core each",
                f"{100 * agent_cpu.seconds / wall:.0f} % all {args.nodes}")
    machine = 100 * (busy1 - busy0) / (total1 - total0)
    figures.add("machine CPU busy", f"{machine:.0f} %", "all cores, everything on the machine")
    figures.add("Prometheus CPU", f"{100 * prom_cpu.seconds / wall:.1f} % of a core")
    figures.add("VictoriaMetrics CPU", f"{100 * vm_cpu.seconds / wall:.1f} % of a core")
    figures.target("fleet_no_agent_stalled", not stalled and dropped == 0,
                   f"{len(stalled)} stalled, {dropped:.0f} rows dropped", "0 and 0")
    figures.target("fleet_agent_flush_p99", max(flush_p99) <= 1.0, f"{max(flush_p99):g} s", "≤ 1 s")

    # -- PostgreSQL restart ------------------------------------------------------------------
    if len(outage_attempts) == 2:
        attempts = outage_attempts[1] - outage_attempts[0]
        plain = args.nodes * args.pg_down_seconds / FLUSH_SECONDS
        back = events.get("pg_all_up", float("nan")) - events["pg_start"]
        figures.add("PostgreSQL restart: flushes tried while down", f"{attempts:.0f}",
                    f"{plain:.0f} at one a flush interval; all {args.nodes} agents writing again "
                    f"{back:.0f} s after the start")
        # By construction an agent is back at most the longest delay and one flush after the start:
        # its last failed try may come just before it.
        bound = (BACKOFF_INTERVALS + 1) * FLUSH_SECONDS
        figures.target("fleet_pg_restart_reconnects", attempts <= plain and back <= bound,
                       f"{attempts:.0f} attempts, all back in {back:.0f} s", f"≤ {plain:.0f}, ≤ {bound:.0f} s")

    # -- Prometheus --------------------------------------------------------------------------
    p = fleet.prom.url
    per_node = [float(r["value"][1]) for r in fleet.promql(p, 'count by (instance) ({job="flopwatch"})')[0]]
    head = fleet.own_metric("prometheus_tsdb_head_series")
    figures.add("Prometheus series per node", f"{sum(per_node) / max(len(per_node), 1):.0f}",
                f"max {max(per_node):.0f}; head {head:.0f} in all (with recording rules, Prometheus' own)")
    created = churn_after - churn_before
    figures.add("series churn", f"{created / wall * DAY / args.nodes:.0f} new series per node-day",
                f"{created:.0f} created in the window; process series are bounded by [attribution].top_processes a GPU")
    scrape_avg = fleet.scalar(p, 'avg(avg_over_time(scrape_duration_seconds{job="flopwatch"}[5m]))')
    scrape_max = fleet.scalar(p, 'max(max_over_time(scrape_duration_seconds{job="flopwatch"}[5m]))')
    scrape_p99 = fleet.scalar(p, 'quantile(0.99, quantile_over_time(0.99, scrape_duration_seconds{job="flopwatch"}[5m]))')
    figures.add("scrape duration", f"mean {scrape_avg * 1e3:.1f} ms",
                f"p99 {scrape_p99 * 1e3:.0f} ms, max {scrape_max * 1e3:.0f} ms over the last 5 min")
    samples = fleet.scalar(p, 'sum(scrape_samples_scraped{job="flopwatch"})')
    figures.add("samples ingested /s", f"{samples / args.scrape_interval:.0f}", f"{samples:.0f} a scrape round")
    figures.target("fleet_scrape_duration", scrape_max <= 1.0, f"{scrape_max * 1e3:.0f} ms", "≤ 1 s")

    # -- VictoriaMetrics ---------------------------------------------------------------------
    v = fleet.vm.url
    if "vm_stop" in events and "vm_start" in events:
        # Prometheus keeps its WAL and resends; compare the outage's samples in both stores.
        time.sleep(30)
        span = int(events["vm_start"] - events["vm_stop"])
        expr = f'sum(count_over_time(up{{job="flopwatch"}}[{span}s]))'
        in_prom = fleet.scalar(p, expr, events["vm_start"])
        in_vm = fleet.scalar(v, expr, events["vm_start"])
        pending = fleet.own_metric("prometheus_remote_storage_samples_pending")
        figures.add("VictoriaMetrics down: samples of the outage", f"{in_vm:.0f} in VM",
                    f"{in_prom:.0f} in Prometheus; {pending:.0f} still pending")
        figures.target("fleet_vm_catch_up", in_prom > 0 and in_vm >= 0.99 * in_prom,
                       f"{100 * in_vm / in_prom:.1f} %", "≥ 99 % of the outage's samples")
    urllib.request.urlopen(f"{v}/internal/force_flush", timeout=30).read()
    time.sleep(2)
    disk = sum(f.stat().st_size for f in (fleet.vm.workdir / "data").rglob("*") if f.is_file())
    stored = fleet.scalar(v, 'sum(count_over_time({job="flopwatch"}[1y]))')
    figures.add("VictoriaMetrics disk", f"{disk / gpu_days / 1e6:.2f} MB per GPU-day",
                f"{disk / 1e6:.0f} MB for {stored:.0f} samples ({disk / max(stored, 1):.2f} B/sample); "
                "a short run carries its index, a long one compresses further")
    slowest, empty = time_panels(fleet, figures, int(wall), unix1, "the run")
    if args.backfill_hours:
        backfill(fleet, fleet.started_unix, args.backfill_hours, args.backfill_step)
        day_slowest, day_empty = time_panels(fleet, figures, int(args.backfill_hours * 3600), unix1,
                                             f"{args.backfill_hours:g} h")
        slowest, empty = max(slowest, day_slowest), empty + day_empty
    figures.target("fleet_dashboard_queries", slowest <= 1.0 and not empty,
                   f"slowest {1e3 * slowest:.0f} ms, {len(empty)} empty", "each ≤ 1 s with data")

    # -- reports -----------------------------------------------------------------------------
    worst = 0.0
    for group_by in ("job", "user", "host"):
        took, cpu, report = run_report(fleet.url, "1d", group_by, server_cpu=pg_cpu)
        worst = max(worst, took)
        figures.add(f"report --since 1d --group-by {group_by}", f"{took:.1f} s",
                    f"{cpu:.1f} CPU s; level {report['level']}, {len(report['hosts'])} hosts, {report['gpus']} GPUs, "
                    f"{len(report['groups'])} groups")
    figures.target("fleet_report_1d", worst <= 5.0, f"{worst:.1f} s", "≤ 5 s")

    # -- nothing lost: after SIGTERM's last flush, every tick an agent counted has its rows ----
    last = fleet.agent_metrics()
    fleet.stop_agents()
    written = dict(fleet.sql("SELECT host, count(*) FROM gpu_raw GROUP BY host"))
    short = [f"node{i:03d}" for i, m in enumerate(last)
             if written.get(f"node{i:03d}", 0) < m.get("flopwatch_ticks_total", 0) * args.gpus]
    figures.add("ticks written", f"{sum(written.values()) / args.gpus:.0f} ticks",
                f"{len(short)} agents with fewer rows than ticks counted before SIGTERM")
    figures.target("fleet_nothing_lost", not short, f"{len(short)} agents short", "0")


if __name__ == "__main__":
    main()
