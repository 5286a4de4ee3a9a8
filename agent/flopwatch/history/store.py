"""History store: every tick kept in SQL (SQLite or PostgreSQL), rolled up, queryable.

A GPU's processes get rows when their readings are new (NVML's per-process shares are read every
counter interval, and whenever a process appears or its memory moves); a reading holds until the
next row. Everything else gets a row every tick.

The sampling thread only calls ``HistoryStore.record``, which turns a tick into rows and appends
them to a bounded in-memory buffer; it never touches the database. The daemon's scheduler calls
``flush`` every ``flush_interval_seconds`` (one transaction per batch), ``rollup`` every minute
and ``retain`` every hour. While the database is down, full or read-only, rows wait in the buffer
(oldest dropped and counted past ``buffer_rows``) and ``up`` is False; the next flush that works
writes them. The scheduler then retries after a jittered, doubling delay (one flush interval, up to
``BACKOFF_INTERVALS`` of them), so a restarted database shared by a fleet is not met by every
agent at once, every interval. ``close`` flushes what is left (SIGTERM).

Each agent rolls up and retains only its own host's rows, so many nodes can share one database.
On PostgreSQL the raw tables are partitioned by day instead: one agent at a time (an advisory
lock) makes the next days' partitions and drops the days past the raw retention, for all hosts.
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import os
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from sqlalchemy import create_engine, delete, event, exists, func, inspect, select, text, update
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from flopwatch.history import schema as schema
from flopwatch.config import ConfigError, HistoryConfig
from flopwatch.model import AgentState, Finding
from flopwatch.judge.evidence import contributing_document, evidence_document
from flopwatch.judge.ledger import Charge

log = logging.getLogger(__name__)

URL_SETTING = "--history / [history].url"
# One transaction writes at most this many buffered rows, so catching up after an outage is a
# series of bounded transactions rather than one huge one.
BATCH_ROWS = 20_000
DAY = 86_400.0
# While the database is down the scheduler's retries back off up to this many flush intervals
# (a minute at the default 5 s): a buffer of 200,000 rows lasts hours, so nothing is lost by waiting.
BACKOFF_INTERVALS = 12
# PostgreSQL advisory lock of schema work: migrations, and the partitions of the raw tables.
SCHEMA_LOCK = 0x666C6F70  # "flop"
# Day partitions made ahead of the writers: today's and this many more.
DAYS_AHEAD = 2
# Bounds of the write-latency histogram, seconds.
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Kinds of buffered rows.
_GPU, _RAW, _PROC, _OPEN, _CLOSE, _AMEND, _RECLAIM = range(7)

_MEAN = ("utilization", "sm_occupancy", "tensor_active", "dram_active", "flops_utilization",
         "memory_turnover_per_second", "power_watts")
_MAX = ("utilization_max", "flops_utilization_max", "power_watts_max", "memory_used_bytes_max")
_SUM = ("energy_joules", "tokens")


@dataclass(frozen=True)
class Retention:
    """How long each level is kept, in days."""

    raw_days: float = 7.0
    minute_days: float = 90.0
    hour_days: float = 730.0


def open_engine(url: str) -> Engine:
    """An engine for a SQLAlchemy URL; a URL that cannot work is a ConfigError naming the setting."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"bad history URL for {URL_SETTING}: {url!r} is not a SQLAlchemy URL") from None
    # psycopg 3 is the PostgreSQL driver flopwatch ships with; SQLAlchemy's default is psycopg2.
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    shown = parsed.render_as_string(hide_password=True)
    options: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":
        options["connect_args"] = {"connect_timeout": 5}
    elif parsed.get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": 10, "check_same_thread": False}
    try:
        engine = create_engine(parsed, **options)
    except NoSuchModuleError:
        raise ConfigError(f"bad history URL for {URL_SETTING}: unknown database kind in {shown!r}") from None
    except ImportError as e:
        hint = " (pip install 'flopwatch[postgres]')" if "psycopg" in str(e) else ""
        raise ConfigError(
            f"bad history URL for {URL_SETTING}: the driver for {shown!r} is not installed: {e}{hint}"
        ) from None
    except (ArgumentError, TypeError, ValueError) as e:
        raise ConfigError(f"bad history URL for {URL_SETTING}: {shown!r}: {e}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        # Python's sqlite3 commits each CREATE TABLE on its own; a kill -9 between the tables and
        # the schema version then left a file the store refuses. BEGIN ourselves, so a
        # transaction, DDL included, is whole or absent (SQLAlchemy's pysqlite recipe).
        event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN"))
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # the driver's own BEGIN off: see open_engine
    cursor = dbapi_connection.cursor()
    try:
        # WAL: readers never block the writer and a killed writer leaves a consistent file;
        # NORMAL sync keeps every committed transaction across a process crash.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    except Exception:  # a read-only file cannot switch journal mode; reading still works
        pass
    finally:
        cursor.close()


def sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None (another database, or in memory)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _read_only_files(path: Path | None) -> list[str]:
    """The files of a SQLite database that exist and this process may not write. SQLite gives
    its -wal and -shm files the database's mode, so they can stay read-only after it is fixed."""
    if path is None:
        return []
    files = (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
    return [str(f) for f in files if f.exists() and not os.access(f, os.W_OK)]


def _create_sqlite_file(path: Path) -> None:
    """Create the database file with its directory, readable by the owner's group only."""
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o640))
        os.chmod(path, 0o640)  # whatever the umask


def migrate(connection: Connection) -> None:
    """Bring the schema to ``SCHEMA_REVISION``: create it in an empty database, upgrade an old one."""
    if connection.dialect.name == "postgresql":
        # One agent of a fleet migrates at a time; the others then find the schema current.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
    inspector = inspect(connection)
    if inspector.has_table(schema.VERSION_TABLE):
        revision = connection.execute(text(f"SELECT version_num FROM {schema.VERSION_TABLE}")).scalar()
        if revision == schema.SCHEMA_REVISION:
            return
        if revision > schema.SCHEMA_REVISION:
            # A newer agent of the fleet migrated first. Migrations only add (tables, nullable
            # columns, indexes), so this one writes on; Alembic would refuse an unknown revision.
            log.info("history schema %s is newer than this agent's %s; writing on", revision,
                     schema.SCHEMA_REVISION)
            return
        _upgrade(connection)
    elif inspector.has_table(schema.gpu_raw.name):
        raise RuntimeError("the database has flopwatch tables but no schema version; refusing to guess")
    else:
        # A new database gets the current tables in one step and is marked current (Alembic's
        # advice), so old migrations never run on it.
        schema.metadata.create_all(connection)
        schema.version_table.create(connection)
        connection.execute(schema.version_table.insert().values(version_num=schema.SCHEMA_REVISION))


def _upgrade(connection: Connection) -> None:
    # Imported here: Alembic is only needed when the schema changes, not in the running agent.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "flopwatch.history:migrations")
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


# -- PostgreSQL's day partitions ---------------------------------------------------------------


def maintain_partitions(connection: Connection, now: float, raw_cutoff: float | None = None) -> bool:
    """Make the raw tables' DEFAULT partition and the days' from today's on, and drop the days
    wholly before ``raw_cutoff`` (with the DEFAULT partition's rows before it). Only one agent of
    a fleet needs to: False, doing nothing, while another holds the lock."""
    if not connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK}).scalar():
        return False
    # A partition's DDL locks its parent against every writer: wait briefly, else try next time.
    connection.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
    today = math.floor(now / DAY) * DAY
    make_partitions(connection, [today + n * DAY for n in range(DAYS_AHEAD + 1)])
    if raw_cutoff is None:
        return True
    for table in schema.PARTITIONED:
        for name in connection.execute(text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = CAST(:table AS regclass)"), {"table": table}).scalars():
            day = _partition_day(table, name)
            if day is not None and day + DAY <= raw_cutoff:
                connection.exec_driver_sql(f"DROP TABLE {name}")
        connection.execute(text(f"DELETE FROM {table}_default WHERE ts < :cutoff"), {"cutoff": raw_cutoff})
    return True


def make_partitions(connection: Connection, days: Iterable[float]) -> None:
    """Create, where missing, each raw table's DEFAULT partition and one partition for each UTC
    day starting at ``days``. A day that fails (its rows already in DEFAULT, a lock not had) is
    logged and left: its rows go to DEFAULT, which retention empties row by row."""
    for table in schema.PARTITIONED:
        statements = [f"CREATE TABLE IF NOT EXISTS {table}_default PARTITION OF {table} DEFAULT"]
        statements += [f"CREATE TABLE IF NOT EXISTS {table}_{_day_suffix(day)} PARTITION OF {table}"
                       f" FOR VALUES FROM ({day:.0f}) TO ({day + DAY:.0f})" for day in days]
        for statement in statements:
            try:
                with connection.begin_nested():
                    connection.exec_driver_sql(statement)
            except DBAPIError as e:
                log.warning("history partition not made (%s): %s", statement, _describe(e))


def _day_suffix(day: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(day))


def _partition_day(table: str, name: str) -> float | None:
    """The UTC day a partition made by ``make_partitions`` holds; None for any other table."""
    suffix = name[len(table) + 1:]
    if not (name.startswith(f"{table}_") and len(suffix) == 8 and suffix.isdigit()):
        return None
    return float(calendar.timegm(time.strptime(suffix, "%Y%m%d")))


class _SpanTracker:
    """Turns a per-tick value per GPU (a cause, a job) into open/close events when it changes, and
    an amend of the open span when only its ``detail`` does (stacks sampled after it opened)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._current: dict[int, Any] = {}
        self._detail: dict[int, Any] = {}

    def update(self, gpu: int, ts: float, key: Any, row: Callable[[], dict], detail: Any = None) -> list[tuple]:
        first = gpu not in self._current
        if not first and self._current[gpu] == key:
            if key is None or self._detail.get(gpu) is detail:
                return []
            self._detail[gpu] = detail
            return [(_AMEND, (self.table, gpu, row()))]
        self._current[gpu] = key
        self._detail[gpu] = detail
        # On first sight, a span left open by a previous run is closed where its data ends.
        events: list[tuple] = [(_CLOSE, (self.table, gpu, ts, first))]
        if key is not None:
            events.append((_OPEN, (self.table, {"gpu": gpu, "start_ts": ts, **row()})))
        return events


class HistoryStore:
    """The history sink. ``record`` is cheap and thread-safe; the rest run on the scheduler."""

    name = "store"

    def __init__(
        self,
        url: str,
        host: str,
        buffer_rows: int = 200_000,
        flush_interval_seconds: float = 5.0,
        *,
        retention: Retention = Retention(),
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.engine = open_engine(url)
        self.url = self.engine.url.render_as_string(hide_password=True)
        self.host = host
        self.buffer_rows = max(1, buffer_rows)
        self.flush_interval_seconds = flush_interval_seconds
        self.retention = retention
        self._clock = clock
        self._jitter = jitter
        self._buffer: deque[tuple] = deque()
        # Raw rows of ticks under the threshold whose cause waits for their segment's name
        # (judge/ledger.py), by (GPU, the sample's timestamp): written once it is settled.
        self._held: dict[tuple[int, float], tuple] = {}
        self._lock = threading.Lock()  # guards the buffer, the counters and the dirty mark
        self._write_lock = threading.Lock()  # one writer at a time: flush, rollup, retain
        self._dropped = 0
        self._pending_max = 0
        self._failures = 0  # in a row; the backoff's exponent
        self._retry_at = -math.inf
        self._attempts = 0
        self._flush_seconds = [0] * (len(FLUSH_BUCKETS) + 1)  # by bucket, not cumulative
        self._flush_seconds_sum = 0.0
        self._up = False
        self._last_error: str | None = None
        self._schema_ready = False
        self._known_gpus: set[tuple[int, str]] = set()
        self._process_ids: dict[tuple, int] = {}
        # By GPU, the process views last written and their job. The agent hands back the same
        # views while NVML and /proc say nothing new (their shares are read every counter
        # interval), and a row a second for each would repeat them: 1024 a second on 8 × 128.
        self._processes_written: dict[int, tuple[tuple, str | None, int | None]] = {}
        self._findings = _SpanTracker(schema.findings)
        self._jobs = _SpanTracker(schema.job_spans)
        self._dirty_since: float | None = None  # oldest raw ts written since the last rollup
        self._rollup_resumed = False
        read_only = _read_only_files(sqlite_path(self.engine.url))
        if read_only:
            log.warning("history database %s is read-only: history will not be written", ", ".join(read_only))
        self._connect()

    @classmethod
    def from_config(cls, config: HistoryConfig, host: str, **kwargs: Any) -> HistoryStore:
        retention = Retention(config.retention_raw_days, config.retention_minute_days,
                              config.retention_hour_days)
        return cls(config.url, host, config.buffer_rows, config.flush_interval_seconds,
                   retention=retention, **kwargs)

    def jobs(self) -> list[tuple[Callable[[], Any], float]]:
        """What the scheduler runs for this sink, and how often (seconds)."""
        return [(self.flush_when_due, self.flush_interval_seconds), (self.rollup, 60.0), (self.retain, 3600.0)]

    # -- state -------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """Whether the last attempt to reach the database worked."""
        return self._up

    @property
    def dropped_rows_total(self) -> int:
        return self._dropped

    @property
    def pending_rows(self) -> int:
        return len(self._buffer)

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def retry_at(self) -> float:
        """When the scheduler's next flush will try the database (the clock's time; -inf: now)."""
        return self._retry_at

    def collect(self) -> Iterator[Any]:
        """Prometheus families for the exporter to chain with its own."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        yield GaugeMetricFamily("flopwatch_store_up",
                                "1 if the last write to the history database worked", value=int(self._up))
        yield CounterMetricFamily("flopwatch_store_dropped_rows",
                                  "History rows dropped because the buffer was full",
                                  value=self._dropped)
        yield GaugeMetricFamily("flopwatch_store_pending_rows",
                                "History rows waiting in memory to be written", value=len(self._buffer))
        yield GaugeMetricFamily("flopwatch_store_pending_rows_max",
                                "The most history rows that have waited in memory at once since start",
                                value=self._pending_max)
        yield CounterMetricFamily("flopwatch_store_connect_attempts",
                                  "Flushes that tried the history database (with the backoff, "
                                  "fewer than flush intervals while it is down)", value=self._attempts)
        counts, total = [], 0
        for bound, count in zip((*FLUSH_BUCKETS, math.inf), self._flush_seconds):
            total += count
            counts.append((str(bound) if bound != math.inf else "+Inf", total))
        yield HistogramMetricFamily("flopwatch_store_flush_seconds",
                                    "Time one flush took to write its rows, committed or not",
                                    buckets=counts, sum_value=self._flush_seconds_sum)

    def _mark(self, error: BaseException | None) -> None:
        if error is None:
            if not self._up and self._last_error is not None:
                log.info("history store %s is back; %d rows pending", self.url, len(self._buffer))
            self._up, self._last_error = True, None
            self._failures, self._retry_at = 0, -math.inf
            return
        self._failures += 1
        delay = self.flush_interval_seconds * min(2 ** (self._failures - 1), BACKOFF_INTERVALS)
        # Half to all of the delay: agents that lost the database together come back spread out.
        self._retry_at = self._clock() + delay * (0.5 + 0.5 * self._jitter())
        # A failed connection can be stuck where only a new one gets out (SQLite opens a file it
        # may not write read-only and stays so after the permissions are fixed): start afresh.
        self.engine.dispose()
        message = _describe(error)
        read_only = _read_only_files(sqlite_path(self.engine.url))
        if read_only:
            message = f"database file {', '.join(read_only)} is read-only: {message}"
        if self._up or message != self._last_error:
            log.warning("history store %s is down, rows are kept in memory: %s", self.url, message)
        self._up, self._last_error = False, message

    def _connect(self) -> bool:
        try:
            if not self._schema_ready:
                path = sqlite_path(self.engine.url)
                if path is not None:
                    _create_sqlite_file(path)
                with self.engine.begin() as connection:
                    migrate(connection)
                    if connection.dialect.name == "postgresql":
                        maintain_partitions(connection, self._clock())
                self._schema_ready = True
                self._mark(None)
        except Exception as e:  # any failure leaves the store down, never the agent
            self._mark(e)
            return False
        return True

    # -- the sampling side -------------------------------------------------------------------

    def record(self, state: AgentState, tokens_by_gpu: Mapping[int, float] | None = None) -> None:
        """Queue one tick. A GPU under the utilization threshold wastes its whole interval, charged
        to the cause the agent settled for it; ``tokens_by_gpu`` gives tokens processed this tick."""
        timestamp = state.timestamp
        rows: list[tuple] = []
        for g in state.gpus:
            sample, figures, finding = g.sample, g.figures, g.finding
            index = sample.info.index
            rows += self._charged(index, g.charges)
            if figures is None:  # the GPU could not be read this tick
                continue
            gpu = figures.index
            if (gpu, figures.uuid) not in self._known_gpus:
                self._known_gpus.add((gpu, figures.uuid))
                rows.append((_GPU, {"host": self.host, "gpu": gpu, "uuid": figures.uuid,
                                    "name": sample.info.name, "first_ts": timestamp}))
            written = self._processes_written.get(gpu)
            if written is not None and written[0] is g.processes:
                job, rank = written[1], written[2]  # the same readings handed back: their rows hold
            else:
                job = rank = None
                for process in sorted(g.processes, key=lambda p: -(p.sm_ratio or 0.0)):
                    process_rank = process.identity.rank if process.identity else None
                    identity = (process.pid, process.job, process.user, process.cmdline, process_rank)
                    if job is None:
                        job, rank = process.job, process_rank
                    rows.append((_PROC, (identity, {
                        "ts": timestamp, "gpu": gpu,
                        "sm_ratio": process.sm_ratio, "memory_bytes": process.memory_bytes})))
                self._processes_written[gpu] = (g.processes, job, rank)
            if job is None and g.allocation is not None:
                job = g.allocation.job  # a GPU its job or pod holds without a process still wastes its time
            below = g.below_threshold
            raw = {
                "host": self.host, "gpu": gpu, "ts": timestamp,
                "utilization": figures.utilization, "sm_occupancy": figures.sm_occupancy,
                "tensor_active": figures.tensor_active, "dram_active": figures.dram_active,
                "flops_utilization": figures.flops_utilization,
                "memory_turnover_per_second": figures.memory_turnover_per_second,
                "power_watts": figures.power_watts, "energy_joules": figures.energy_joules_delta,
                "memory_used_bytes": figures.memory_used_bytes,
                "cause": finding.cause if finding else None,
                "below_threshold": below,
                "wasted_seconds": figures.interval_seconds if below else 0.0,
                "tokens": (tokens_by_gpu or {}).get(gpu, g.tokens.tokens_this_tick if g.tokens else None),
                "job": job,
            }
            own = next((c for c in g.charges if c.timestamp == sample.timestamp), None)
            if own is not None:
                raw.update(cause=own.cause, wasted_seconds=own.seconds)
            if g.charge_pending:
                self._held[(gpu, sample.timestamp)] = (_RAW, raw)
            else:
                rows.append((_RAW, raw))
            rows += self._findings.update(
                gpu, timestamp, (finding.cause, finding.severity) if finding else None,
                lambda: _finding_row(finding), finding.stacks if finding else None)
            rows += self._jobs.update(gpu, timestamp, (job, rank) if job else None,
                                      lambda: {"job": job, "rank": rank})
        with self._lock:
            self._buffer.extend(rows)
            self._trim()

    def _charged(self, gpu: int, charges: Iterable[Charge]) -> list[tuple]:
        """The held rows of ``gpu``'s ticks these charges settle, with their cause."""
        rows = []
        for charge in charges:
            held = self._held.pop((gpu, charge.timestamp), None)
            if held is not None:
                rows.append((_RAW, {**held[1], "cause": charge.cause, "wasted_seconds": charge.seconds}))
        return rows

    def settle(self, charges: Mapping[int, Iterable[Charge]]) -> None:
        """The agent's last charges as it stops, by GPU index: its held ticks, written with close()."""
        with self._lock:
            for gpu, settled in charges.items():
                self._buffer.extend(self._charged(gpu, settled))
            self._trim()

    def record_reclaim(self, row: Mapping[str, Any]) -> None:
        """One reclaim decision or action (outputs/reclaim.py), written with the next flush."""
        with self._lock:
            self._buffer.append((_RECLAIM, {"host": self.host, **row}))

    def _trim(self) -> None:
        self._pending_max = max(self._pending_max, len(self._buffer))
        over = len(self._buffer) - self.buffer_rows
        for _ in range(over):
            self._buffer.popleft()
        if over > 0:
            self._dropped += over

    # -- the scheduler side ------------------------------------------------------------------

    def flush_when_due(self) -> bool:
        """The scheduler's flush: while the database is down, only once its backoff has passed."""
        if self._clock() < self._retry_at:
            return False
        return self.flush()

    def flush(self) -> bool:
        """Write what is buffered, one transaction per batch. False if the database is down."""
        with self._write_lock:
            self._attempts += 1
            started = time.perf_counter()
            try:
                return self._flush()
            finally:
                self._time_flush(time.perf_counter() - started)

    def _time_flush(self, seconds: float) -> None:
        self._flush_seconds_sum += seconds
        self._flush_seconds[next((i for i, bound in enumerate(FLUSH_BUCKETS) if seconds <= bound),
                                 len(FLUSH_BUCKETS))] += 1

    def _flush(self) -> bool:
        if not self._connect():
            return False
        while True:
            with self._lock:
                batch = [self._buffer.popleft() for _ in range(min(BATCH_ROWS, len(self._buffer)))]
            if not batch:
                self._mark(None)
                return True
            try:
                with self.engine.begin() as connection:
                    new_ids, oldest = self._write(connection, batch)
            except Exception as e:  # the rows go back to wait for the next flush
                with self._lock:
                    self._buffer.extendleft(reversed(batch))
                    self._trim()
                self._mark(e)
                return False
            self._process_ids.update(new_ids)
            if oldest is not None:
                with self._lock:
                    self._dirty_since = min(oldest, self._dirty_since or oldest)

    def _write(self, connection: Connection, batch: list[tuple]) -> tuple[dict, float | None]:
        by_kind: dict[int, list] = {_GPU: [], _RAW: [], _PROC: [], _RECLAIM: []}
        spans = []
        for kind, row in batch:
            (spans if kind in (_OPEN, _CLOSE, _AMEND) else by_kind[kind]).append((kind, row))
        _insert_ignore(connection, schema.gpus, [row for _, row in by_kind[_GPU]])
        if by_kind[_RECLAIM]:
            connection.execute(schema.reclaim_actions.insert(), [row for _, row in by_kind[_RECLAIM]])
        raw = [row for _, row in by_kind[_RAW]]
        _insert_ignore(connection, schema.gpu_raw, raw)
        first_seen: dict[tuple, float] = {}  # processes new to the database, in the batch's order
        for _, (identity, sample) in by_kind[_PROC]:
            if identity not in self._process_ids:
                first_seen.setdefault(identity, sample["ts"])
        new_ids = self._insert_processes(connection, first_seen)
        ids = self._process_ids
        _insert_ignore(connection, schema.process_samples, [
            {"process_id": ids.get(identity) or new_ids[identity], **sample} for _, (identity, sample) in by_kind[_PROC]])
        for kind, event_row in spans:
            if kind == _OPEN:
                table, row = event_row
                connection.execute(table.insert().values(host=self.host, **row))
            elif kind == _AMEND:
                table, gpu, row = event_row
                connection.execute(update(table).where(
                    table.c.host == self.host, table.c.gpu == gpu, table.c.end_ts.is_(None)).values(**row))
            else:
                self._close_span(connection, *event_row)
        return new_ids, min((row["ts"] for row in raw), default=None)

    def _insert_processes(self, connection: Connection, first_seen: dict[tuple, float]) -> dict[tuple, int]:
        """The new processes' ids. One statement for all where the database returns the ids in
        the rows' order, not a statement each (bench/store_bench.py: a first flush of 8 × 128)."""
        rows = [{"host": self.host, "pid": pid, "job": job, "user": user, "cmdline": cmdline, "first_ts": ts,
                 "rank": rank} for (pid, job, user, cmdline, rank), ts in first_seen.items()]
        insert = schema.processes.insert()
        if len(rows) > 1 and connection.dialect.insert_executemany_returning_sort_by_parameter_order:
            ids = connection.execute(insert.returning(schema.processes.c.id, sort_by_parameter_order=True), rows)
            return dict(zip(first_seen, ids.scalars()))
        return {identity: connection.execute(insert, row).inserted_primary_key[0]
                for identity, row in zip(first_seen, rows)}

    def _close_span(self, connection: Connection, table: Any, gpu: int, ts: float, stale: bool) -> None:
        end: Any = ts
        if stale:
            raw = schema.gpu_raw
            end = func.coalesce(select(func.max(raw.c.ts)).where(
                raw.c.host == self.host, raw.c.gpu == gpu, raw.c.ts < ts).scalar_subquery(),
                table.c.start_ts)
        connection.execute(update(table).where(
            table.c.host == self.host, table.c.gpu == gpu, table.c.end_ts.is_(None)).values(end_ts=end))

    def rollup(self, now: float | None = None) -> bool:
        """Recompute the minute and hour buckets that new raw rows touched (idempotent)."""
        now = self._clock() if now is None else now
        with self._write_lock:
            return self._rollup(now)

    def _rollup(self, now: float) -> bool:
        with self._lock:
            start, self._dirty_since = self._dirty_since, None
        try:
            with self.engine.begin() as connection:
                if not self._rollup_resumed:
                    start = _min(start, self._resume_point(connection))
                    self._rollup_resumed = True
                if start is not None:
                    # Buckets whose raw rows retention has removed cannot be rebuilt.
                    start = max(start, now - self.retention.raw_days * DAY)
                    for (source, _), (target, width) in (
                        ((schema.gpu_raw, 1.0), schema.ROLLUP_LEVELS["minute"]),
                        (schema.ROLLUP_LEVELS["minute"], schema.ROLLUP_LEVELS["hour"]),
                    ):
                        self._rebuild(connection, source, target, width, start)
        except Exception as e:
            with self._lock:
                self._dirty_since = _min(start, self._dirty_since)
            self._mark(e)
            return False
        return True

    def _resume_point(self, connection: Connection) -> float | None:
        """Where rollups stopped in an earlier run: the last minute bucket, else the first raw row."""
        minute, raw = schema.gpu_minute, schema.gpu_raw
        last = connection.execute(select(func.max(minute.c.ts)).where(minute.c.host == self.host)).scalar()
        if last is not None:
            return last
        return connection.execute(select(func.min(raw.c.ts)).where(raw.c.host == self.host)).scalar()

    def _rebuild(self, connection: Connection, source: Any, target: Any, width: float, start: float) -> None:
        start = math.floor(start / width) * width
        rows = connection.execute(select(source).where(
            source.c.host == self.host, source.c.ts >= start).order_by(source.c.ts, source.c.gpu))
        buckets = aggregate((row._mapping for row in rows), width, raw=source is schema.gpu_raw)
        connection.execute(delete(target).where(target.c.host == self.host, target.c.ts >= start))
        _insert_ignore(connection, target, buckets)

    def retain(self, now: float | None = None) -> bool:
        """Delete this host's rows older than each level's retention; on PostgreSQL, drop the
        raw tables' days past it instead (see ``maintain_partitions``)."""
        now = self._clock() if now is None else now
        raw_cutoff = now - self.retention.raw_days * DAY
        span_cutoff = now - self.retention.hour_days * DAY
        s = schema
        partitioned = self.engine.dialect.name == "postgresql"
        try:
            with self._write_lock:
                if partitioned:
                    self._maintain_partitions(now, raw_cutoff)
                with self.engine.begin() as connection:
                    self._delete_old(connection, now, raw_cutoff, span_cutoff, partitioned)
                    gone = set(connection.execute(select(s.processes.c.id).where(
                        s.processes.c.host == self.host, s.processes.c.first_ts < raw_cutoff,
                        ~exists().where(s.process_samples.c.process_id == s.processes.c.id))).scalars())
                    if gone:
                        connection.execute(delete(s.processes).where(s.processes.c.id.in_(gone)))
        except Exception as e:
            self._mark(e)
            return False
        self._process_ids = {k: v for k, v in self._process_ids.items() if v not in gone}
        return True

    def _maintain_partitions(self, now: float, raw_cutoff: float) -> None:
        # Its own short transaction: dropping a day locks the raw tables against every writer.
        try:
            with self.engine.begin() as connection:
                maintain_partitions(connection, now, raw_cutoff)
        except DBAPIError as e:  # a lock not had in time: the next hour's retention tries again
            log.warning("history partitions not maintained this time: %s", _describe(e))

    def _delete_old(self, connection: Connection, now: float, raw_cutoff: float, span_cutoff: float,
                    partitioned: bool) -> None:
        s = schema
        levels = [(s.gpu_minute, self.retention.minute_days), (s.gpu_hour, self.retention.hour_days)]
        for table, days in levels if partitioned else [(s.gpu_raw, self.retention.raw_days), *levels]:
            connection.execute(delete(table).where(table.c.host == self.host, table.c.ts < now - days * DAY))
        if not partitioned:
            mine = select(s.processes.c.id).where(s.processes.c.host == self.host)
            connection.execute(delete(s.process_samples).where(
                s.process_samples.c.process_id.in_(mine), s.process_samples.c.ts < raw_cutoff))
        for table in (s.findings, s.job_spans):
            connection.execute(delete(table).where(table.c.host == self.host, table.c.end_ts < span_cutoff))
        connection.execute(delete(s.alerts_outbox).where(
            s.alerts_outbox.c.host == self.host, s.alerts_outbox.c.sent_ts < raw_cutoff))

    def close(self) -> bool:
        """Flush what is buffered and release the connections. On SIGTERM, call it from the main
        flow once sampling has stopped, not inside the signal handler: the handler may have
        interrupted ``record`` while it held the buffer's lock."""
        with self._lock:  # ticks no charge settled (the agent did not say) are written as they were read
            self._buffer.extend(self._held.values())
            self._held.clear()
        flushed = self.flush()
        if not flushed:
            log.warning("history store: %d rows could not be written before exit", len(self._buffer))
        self.engine.dispose()
        return flushed

    # -- the alerts outbox (written synchronously by the alerting sink) ----------------------

    def outbox_enqueue(self, payload: Mapping[str, Any], now: float | None = None) -> int:
        """Keep one notification durably until it is sent; returns its id. Raises if the DB is down."""
        with self.engine.begin() as connection:
            return connection.execute(schema.alerts_outbox.insert().values(
                host=self.host, created_ts=self._clock() if now is None else now,
                payload=json.dumps(payload, default=str), attempts=0)).inserted_primary_key[0]

    def outbox_pending(self, limit: int = 100) -> list[tuple[int, dict]]:
        """This host's unsent notifications, oldest first, as (id, payload)."""
        box = schema.alerts_outbox
        with self.engine.connect() as connection:
            rows = connection.execute(select(box.c.id, box.c.payload).where(
                box.c.host == self.host, box.c.sent_ts.is_(None)).order_by(box.c.id).limit(limit))
            return [(row.id, json.loads(row.payload)) for row in rows]

    def outbox_mark(self, ids: Iterable[int], sent: bool, now: float | None = None) -> None:
        """Count an attempt on each notification; ``sent`` ones leave the queue."""
        box = schema.alerts_outbox
        values: dict[str, Any] = {"attempts": box.c.attempts + 1}
        if sent:
            values["sent_ts"] = self._clock() if now is None else now
        with self.engine.begin() as connection:
            connection.execute(update(box).where(box.c.id.in_(list(ids))).values(**values))


def _finding_row(finding: Finding) -> dict:
    evidence = evidence_document(finding)
    if finding.contributing:
        evidence["contributing"] = contributing_document(finding)
    return {"cause": finding.cause, "severity": finding.severity, "confidence": finding.confidence,
            "evidence": json.dumps(evidence, default=str, sort_keys=True),
            "advice": finding.advice, "summary": finding.summary}


def _insert_ignore(connection: Connection, table: Any, rows: list[dict]) -> None:
    """Insert rows, skipping any already there (a batch retried after an unacknowledged commit)."""
    if not rows:
        return
    name = connection.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        connection.execute(table.insert(), rows)
        return
    connection.execute(insert(table).on_conflict_do_nothing(), rows)


def _describe(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    return f"{type(original).__name__}: {str(original).strip().splitlines()[0] if str(original) else ''}"


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def aggregate(rows: Iterable[Mapping[str, Any]], width: float, raw: bool) -> list[dict]:
    """Roll rows (raw ticks, or finer buckets) into buckets ``width`` seconds long.

    Means are weighted by samples; energy, waste and tokens are summed; the cause is the one of
    most samples, and so is the job.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        row = _as_bucket(row) if raw else row
        groups.setdefault((row["host"], row["gpu"], math.floor(row["ts"] / width) * width), []).append(row)
    return [_combine(host, gpu, ts, members) for (host, gpu, ts), members in groups.items()]


def _as_bucket(raw: Mapping[str, Any]) -> dict:
    """A raw tick in the shape of a one-sample bucket."""
    return {**raw, "samples": 1, "utilization_max": raw["utilization"],
            "flops_utilization_max": raw["flops_utilization"], "power_watts_max": raw["power_watts"],
            "memory_used_bytes_max": raw["memory_used_bytes"],
            "cause_samples": 1 if raw["cause"] else 0}


def _combine(host: str, gpu: int, ts: float, rows: list[Mapping[str, Any]]) -> dict:
    bucket: dict[str, Any] = {"host": host, "gpu": gpu, "ts": ts,
                              "samples": sum(r["samples"] for r in rows),
                              "wasted_seconds": sum(r["wasted_seconds"] for r in rows)}
    for name in _MEAN:
        known = [(r[name], r["samples"]) for r in rows if r[name] is not None]
        weight = sum(w for _, w in known)
        bucket[name] = sum(v * w for v, w in known) / weight if weight else None
    for name in _MAX:
        bucket[name] = max((r[name] for r in rows if r[name] is not None), default=None)
    for name in _SUM:
        known_values = [r[name] for r in rows if r[name] is not None]
        bucket[name] = sum(known_values) if known_values else None
    causes: Counter[str] = Counter()
    jobs: Counter[str] = Counter()
    for r in rows:
        if r["cause"]:
            causes[r["cause"]] += r["cause_samples"]
        if r["job"]:
            jobs[r["job"]] += r["samples"]
    bucket["cause"], bucket["cause_samples"] = _most(causes) or (None, 0)
    bucket["job"] = (_most(jobs) or (None, 0))[0]
    return bucket


def _most(counts: Counter[str]) -> tuple[str, int] | None:
    """The most frequent key; ties go to the first in name order, so rebuilds are stable."""
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0])) if counts else None


# -- reading -----------------------------------------------------------------------------------

LEVELS = ("raw", "minute", "hour")
# The finest level whose rows for the range stay a readable number (per GPU).
_LEVEL_MAX_SECONDS = {"raw": 2 * 3600.0, "minute": 7 * DAY}


@dataclass(frozen=True)
class HistoryRow:
    """One GPU over one tick (level ``raw``) or one bucket (``minute``, ``hour``; ``ts`` = start)."""

    level: str
    host: str
    gpu: int
    uuid: str | None
    ts: float
    samples: int
    utilization: float | None
    utilization_max: float | None
    flops_utilization: float | None
    sm_occupancy: float | None
    tensor_active: float | None
    dram_active: float | None
    memory_turnover_per_second: float | None
    power_watts: float | None
    power_watts_max: float | None
    memory_used_bytes_max: int | None
    energy_joules: float | None
    wasted_seconds: float
    tokens: float | None
    cause: str | None
    job: str | None


class HistoryError(Exception):
    """The history cannot be read (no database there, not a flopwatch database, unreachable)."""


def choose_level(since: float, until: float) -> str:
    span = until - since
    return next((level for level, limit in _LEVEL_MAX_SECONDS.items() if span <= limit), "hour")


def query_history(
    url: str,
    since: float,
    until: float,
    gpu: int | str | None = None,
    job: str | None = None,
    host: str | None = None,
    level: str | None = None,
) -> list[HistoryRow]:
    """Rows between ``since`` and ``until`` (Unix seconds), from the best level for the range:
    the finest one that fits the range's length and has rows. ``gpu`` is an index or a UUID."""
    engine = open_engine(url)
    path = sqlite_path(engine.url)
    if path is not None and not path.exists():
        raise HistoryError(f"no history database at {path}")
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(schema.gpu_raw.name):
                raise HistoryError(f"{engine.url.render_as_string(hide_password=True)} holds no flopwatch history")
            first = LEVELS.index(level or choose_level(since, until))
            for candidate in LEVELS[first:] if level is None else (level,):
                rows = _read_level(connection, candidate, since, until, gpu, job, host)
                if rows:
                    return rows
            return []
    except HistoryError:
        raise
    except Exception as e:
        raise HistoryError(f"cannot read history: {_describe(e)}") from None
    finally:
        engine.dispose()


def _read_level(connection: Connection, level: str, since: float, until: float,
                gpu: int | str | None, job: str | None, host: str | None) -> list[HistoryRow]:
    s = schema
    table, width = (s.gpu_raw, 1.0) if level == "raw" else s.ROLLUP_LEVELS[level]
    uuids: dict[tuple[str, int], str] = {}
    for row in connection.execute(select(s.gpus).order_by(s.gpus.c.first_ts)):
        uuids[(row.host, row.gpu)] = row.uuid  # the newest UUID at an index wins
    ranges = _key_ranges(connection, since, until, gpu, job, host, uuids)
    found: dict[tuple, Mapping] = {}
    for key_host, key_gpu, start, end in ranges:
        query = select(table).where(table.c.ts >= math.floor(start / width) * width, table.c.ts <= end)
        if key_host is not None:
            query = query.where(table.c.host == key_host)
        if key_gpu is not None:
            query = query.where(table.c.gpu == key_gpu)
        if job is not None and level == "raw":
            query = query.where(table.c.job == job)
        for row in connection.execute(query):
            found[(row.host, row.gpu, row.ts)] = row._mapping
    names = {f.name for f in fields(HistoryRow)} - {"level", "uuid"}
    result = []
    for key in sorted(found, key=lambda k: (k[2], k[0], k[1])):
        row = _as_bucket(found[key]) if level == "raw" else found[key]
        result.append(HistoryRow(level=level, uuid=uuids.get(key[:2]), **{n: row[n] for n in names}))
    return result


def _key_ranges(connection: Connection, since: float, until: float, gpu: int | str | None,
                job: str | None, host: str | None, uuids: Mapping[tuple[str, int], str]
                ) -> list[tuple[str | None, int | None, float, float]]:
    """(host, gpu, start, end) ranges to read: one, or one per span of the job on a GPU."""
    gpu_keys: list[tuple[str | None, int | None]] = [(host, None)]
    if isinstance(gpu, int) or (isinstance(gpu, str) and gpu.isdigit()):
        gpu_keys = [(host, int(gpu))]
    elif gpu is not None:
        gpu_keys = [key for key, uuid in uuids.items() if uuid == gpu and host in (None, key[0])]
    if job is None:
        return [(h, g, since, until) for h, g in gpu_keys]
    spans = schema.job_spans
    rows = connection.execute(select(spans).where(
        spans.c.job == job, spans.c.start_ts <= until,
        (spans.c.end_ts.is_(None)) | (spans.c.end_ts >= since)))
    return [(row.host, row.gpu, max(since, row.start_ts), min(until, row.end_ts or until))
            for row in rows
            if any(h in (None, row.host) and g in (None, row.gpu) for h, g in gpu_keys)]
