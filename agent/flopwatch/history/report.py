"""What a period or a job cost and wasted, and why: history rows summed into a ``Report``.

The database does the summing: for each slice of the range, one ``GROUP BY`` returns for each
host, GPU, job and cause the sums the figures need (samples, utilization × samples, joules, wasted
seconds, tokens), another the same sums for each plot bucket and cause over all GPUs. A month of
a 64-node fleet is then a few thousand cells, whatever the level read, and the rest is arithmetic
on plain values (``build_report``).

With ``--job``, the report also says who held a multi-GPU job back and for how long: the fleet
judge's verdicts as it kept them in ``job_verdicts`` (one row per straggler rank and stretch),
clipped to the range.

GPU-hours count samples × the agents' tick (``[agent].interval_seconds``); waste is what the
agents recorded: each tick under the utilization threshold, charged to the cause diagnosed then
(``unknown`` when none was), as ``flopwatch_wasted_gpu_seconds_total`` counts it. In a minute or
hour bucket all its waste goes to the bucket's dominant cause.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from sqlalchemy import Float, Integer, and_, case, cast, func, inspect, literal, or_, select, type_coerce
from sqlalchemy.engine import Connection

from flopwatch.history import schema as schema
from flopwatch.judge.diagnose import ADVICE, SUMMARY
from flopwatch.history.store import DAY, LEVELS, HistoryError, _describe, open_engine, sqlite_path

HOUR = 3600.0
KWH = 3.6e6  # joules
NO_JOB = "(no job)"
NO_USER = "(no user)"
GROUPINGS = ("job", "user", "host", "gpu")
# The finest level a report reads for a range of this length at most: raw ticks keep causes
# exact, rollups keep months cheap.
_LEVEL_MAX_SECONDS = {"raw": DAY, "minute": 62 * DAY}
# ... and for this many rows at most (GPUs × range ÷ the level's width): a node's day of raw ticks
# (8 × 86,400), a fleet's day of minutes (512 × 1,440), its month of hours (bench/fleet_report.py).
_LEVEL_MAX_ROWS = 1_000_000
_LEVEL_WIDTH = {"raw": 1.0, "minute": 60.0}
PLOT_BUCKETS = 150  # points on the time axis, whatever the range: enough to see a shift change, few enough to read
SLICES = 50  # queries a long range is read in (the progress bar's steps)
TOP_JOBS = 10


@dataclass(frozen=True)
class Prices:
    per_gpu_hour: float = 0.0
    per_kwh: float = 0.0
    currency: str = "USD"


@dataclass
class Cell:
    """Sums over the rows of one host, GPU, job and cause, or of one plot bucket and cause."""

    samples: float = 0.0
    utilization_sum: float = 0.0  # utilization × samples, over samples that had one
    utilization_samples: float = 0.0
    flops_sum: float = 0.0
    flops_samples: float = 0.0
    energy_joules: float | None = None
    wasted_seconds: float = 0.0
    tokens: float | None = None
    token_energy_joules: float = 0.0  # energy of the samples that counted tokens

    def add(self, other: Cell) -> None:
        # Spelled out: a fleet's report adds a few hundred thousand cells.
        self.samples += other.samples
        self.utilization_sum += other.utilization_sum
        self.utilization_samples += other.utilization_samples
        self.flops_sum += other.flops_sum
        self.flops_samples += other.flops_samples
        self.wasted_seconds += other.wasted_seconds
        self.token_energy_joules += other.token_energy_joules
        self.energy_joules = _add(self.energy_joules, other.energy_joules)
        self.tokens = _add(self.tokens, other.tokens)


@dataclass(frozen=True)
class CellKey:
    host: str
    gpu: int
    job: str | None
    cause: str | None


@dataclass(frozen=True)
class Usage:
    """The figures of the whole report or of one group (a job, a user, a GPU)."""

    name: str
    gpu_hours: float
    mean_utilization: float | None
    mean_flops_utilization: float | None
    wasted_gpu_hours: float  # GPU-hours below the utilization threshold
    wasted_by_cause: dict[str, float]  # GPU-hours, largest first; sums to wasted_gpu_hours
    energy_kwh: float | None
    tokens: float | None
    joules_per_token: float | None
    cost: float  # GPU-hours and energy at the configured prices
    wasted_cost: float  # the wasted GPU-hours at the price per GPU-hour

    @property
    def wasted_share(self) -> float:
        return self.wasted_gpu_hours / self.gpu_hours if self.gpu_hours else 0.0

    @property
    def top_cause(self) -> str | None:
        return next(iter(self.wasted_by_cause), None)


@dataclass(frozen=True)
class CauseWaste:
    cause: str
    wasted_gpu_hours: float
    share: float  # of all wasted GPU-hours
    wasted_cost: float
    summary: str
    advice: str
    top_stack: str | None = None  # the culprit's stack when this cause was last found with one
    contributing: tuple[str, ...] = ()  # causes found beside it in the range


@dataclass(frozen=True)
class Point:
    """One plot bucket over all GPUs in the report."""

    ts: float
    gpus: int
    utilization: float | None
    flops_utilization: float | None
    power_watts: float | None  # all GPUs together: mean power per GPU × GPUs
    energy_kwh: float | None
    wasted_share_by_cause: dict[str, float]  # of the bucket's GPU time


@dataclass(frozen=True)
class HeldBackTime:
    """How long one culprit held a job back over the range, as the fleet judge found it: a
    straggler rank with its own cause, or (host, GPU and rank None) the job's own all-reduce."""

    verdict: str
    cause: str
    host: str | None
    gpu: int | None
    rank: int | None
    seconds: float
    held_gpu_seconds: float  # what the other ranks waited meanwhile


@dataclass(frozen=True)
class Report:
    since: float
    until: float
    level: str
    interval_seconds: float
    utilization_threshold: float
    prices: Prices
    group_by: str
    job: str | None
    gpu: str | None
    host: str | None
    hosts: list[str]
    gpus: int
    total: Usage
    groups: list[Usage]
    causes: list[CauseWaste]
    top_jobs: list[Usage]
    series: list[Point]
    step_seconds: float
    users: dict[str, str] = field(default_factory=dict)  # job → user
    held_back: list[HeldBackTime] = field(default_factory=list)  # with a job: by the judge, longest first
    reclaim: list[dict[str, Any]] = field(default_factory=list)  # reclaim_actions' rows of the range, oldest first

    @property
    def empty(self) -> bool:
        return self.total.gpu_hours == 0 and self.total.wasted_gpu_hours == 0


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """What to report on."""

    since: float
    until: float
    gpu: str | None = None
    job: str | None = None
    host: str | None = None
    level: str | None = None  # None: by the range's length


@dataclass
class Read:
    """What the database gave for a query."""

    level: str
    origin: float
    step: float
    cells: dict[CellKey, Cell]  # the whole range's
    points: dict[tuple[int, str | None], Cell]  # by plot bucket and cause, over every GPU read
    users: dict[str, str]
    stacks: dict[str, str] = field(default_factory=dict)  # cause → its latest finding's stack summary
    contributing: dict[str, tuple[str, ...]] = field(default_factory=dict)  # cause → causes found beside it
    held_back: list[HeldBackTime] = field(default_factory=list)


def choose_level(since: float, until: float, gpus: int = 1) -> str:
    span = until - since
    return next((level for level, limit in _LEVEL_MAX_SECONDS.items()
                 if span <= limit and gpus * span / _LEVEL_WIDTH[level] <= _LEVEL_MAX_ROWS), "hour")


def job_range(url: str, job: str, now: float) -> tuple[float, float] | None:
    """When a job ran, from its first start to its last end (``now`` if it still runs)."""
    spans = schema.job_spans
    with _connected(url) as connection:
        start, end, running = connection.execute(select(
            func.min(spans.c.start_ts), func.max(spans.c.end_ts),
            func.count().filter(spans.c.end_ts.is_(None))).where(spans.c.job == job)).one()
    if start is None:
        return None
    return start, now if running else end


def read_history(url: str, query: Query, progress: Callable[[int, int], None] | None = None) -> Read:
    """Sum the rows of the query's range in the database; ``progress(done, total)`` after each slice."""
    with _connected(url) as connection:
        keys = _gpu_keys(connection, query)
        first = LEVELS.index(query.level or choose_level(query.since, query.until, _gpu_count(connection, keys)))
        # Retention may have removed the finer level's rows for the range: fall back to coarser.
        for level in (query.level,) if query.level else LEVELS[first:]:
            read = _read_level(connection, level, query, keys, progress)
            if read.cells:
                break
        read.users = _users(connection, {k.job for k in read.cells if k.job})
        read.stacks, read.contributing = _notes(connection, query, {(k.host, k.gpu) for k in read.cells})
        read.held_back = _held_back(connection, query)
        return read


def reclaim_actions(url: str, since: float, until: float, host: str | None = None) -> list[dict[str, Any]]:
    """The reclaim decisions and actions of the range, oldest first ([] before schema 0005)."""
    table = schema.reclaim_actions
    with _connected(url) as connection:
        if not inspect(connection).has_table(table.name):
            return []
        query = select(table).where(table.c.ts >= since, table.c.ts < until).order_by(table.c.ts, table.c.id)
        if host is not None:
            query = query.where(table.c.host == host)
        return [dict(row._mapping) for row in connection.execute(query)]


class _connected:
    """A connection to a flopwatch history database, or a HistoryError saying why not."""

    def __init__(self, url: str) -> None:
        self.engine = open_engine(url)
        path = sqlite_path(self.engine.url)
        if path is not None and not path.exists():
            raise HistoryError(f"no history database at {path}")

    def __enter__(self) -> Connection:
        try:
            self.connection = self.engine.connect()
            if not inspect(self.connection).has_table(schema.gpu_raw.name):
                shown = self.engine.url.render_as_string(hide_password=True)
                raise HistoryError(f"{shown} holds no flopwatch history")
        except HistoryError:
            self.engine.dispose()
            raise
        except Exception as e:
            self.engine.dispose()
            raise HistoryError(f"cannot read history: {_describe(e)}") from None
        return self.connection

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        self.connection.close()
        self.engine.dispose()
        if error is not None and not isinstance(error, HistoryError):
            raise HistoryError(f"cannot read history: {_describe(error)}") from None


def _gpu_keys(connection: Connection, query: Query) -> list[tuple[str, int | None]]:
    """(host, GPU) pairs to read; GPU None for all of a host's. A UUID names its host and index."""
    gpus = schema.gpus
    hosts = query.host and [query.host] or list(connection.execute(
        select(gpus.c.host).distinct().order_by(gpus.c.host)).scalars())
    if query.gpu is None:
        return [(h, None) for h in hosts]
    if query.gpu.isdigit():
        return [(h, int(query.gpu)) for h in hosts]
    return [(row.host, row.gpu) for row in connection.execute(
        select(gpus.c.host, gpus.c.gpu).where(gpus.c.uuid == query.gpu)) if row.host in hosts]


def _gpu_count(connection: Connection, keys: list[tuple[str, int | None]]) -> int:
    gpus = schema.gpus
    known = {(row.host, row.gpu) for row in connection.execute(select(gpus.c.host, gpus.c.gpu).distinct())}
    hosts = {h for h, g in keys if g is None}
    return sum(1 for h, g in known if h in hosts or (h, g) in keys)


def _read_level(connection: Connection, level: str, query: Query, keys: list[tuple[str, int | None]],
                progress: Callable[[int, int], None] | None) -> Read:
    table, width = (schema.gpu_raw, 1.0) if level == "raw" else schema.ROLLUP_LEVELS[level]
    step = max(width, math.ceil((query.until - query.since) / PLOT_BUCKETS / width) * width)
    origin = math.floor(query.since / step) * step
    buckets = max(1, math.ceil((query.until - origin) / step))
    per_slice = math.ceil(buckets / SLICES)
    slices = math.ceil(buckets / per_slice)
    read = Read(level, origin, step, {}, {}, {})
    # Every host's every GPU in a rollup: the range alone selects (their time index); raw ticks
    # are keyed by host first.
    chosen = None if query.host is None and query.gpu is None and level != "raw" else keys
    for n in range(slices):
        start = origin + n * per_slice * step
        end = min(start + per_slice * step, query.until)
        low = max(start, math.floor(query.since / width) * width)
        if keys:
            _read_slice(connection, read, table, level, low, end, chosen, query.job)
        if progress is not None:
            progress(n + 1, slices)
    return read


def _read_slice(connection: Connection, read: Read, table: Any, level: str, low: float, high: float,
                keys: list[tuple[str, int | None]] | None, job: str | None) -> None:
    """Add one slice's sums to ``read``: by host, GPU, job and cause for the figures, by plot bucket
    and cause for the plot. Two small answers, not one by GPU and bucket: a fleet's day would be
    512 GPUs × 150 buckets of rows for Python to add up."""
    sums, where = _sums(table, level), [table.c.ts >= low, table.c.ts < high]
    if keys is not None:
        where.append(or_(*(table.c.host == h if g is None else and_(table.c.host == h, table.c.gpu == g)
                           for h, g in keys)))
    if job is not None:
        where.append(table.c.job == job)
    position = (table.c.ts - read.origin) / read.step
    # Bucket numbers are never negative, so truncation is the floor; PostgreSQL's cast rounds.
    bucket = (func.floor(position) if connection.dialect.name == "postgresql" else cast(position, Integer)).label("bucket")
    by_gpu = (table.c.host, table.c.gpu, table.c.job, table.c.cause)
    for row in connection.execute(select(*by_gpu, *sums).where(*where).group_by(*by_gpu)):
        read.cells.setdefault(CellKey(row.host, row.gpu, row.job, row.cause), Cell()).add(_cell(row))
    for row in connection.execute(select(bucket, table.c.cause, *sums).where(*where).group_by(bucket, table.c.cause)):
        read.points[(int(row.bucket), row.cause)] = _cell(row)


def _sums(table: Any, level: str) -> list[Any]:
    """The sums a Cell holds, as columns over ``table``'s rows."""
    raw = level == "raw"

    def value(name: str) -> Any:
        column = table.c[name]
        if raw and isinstance(column.type, schema.Fixed):
            # Summed as stored integers, scaled once: the type's per-row conversion does not
            # apply to an aggregate.
            return type_coerce(column, Integer) * (1.0 / column.type.scale)
        return type_coerce(column, Float)

    samples = literal(1) if raw else table.c.samples

    def weighted(name: str) -> tuple[Any, Any]:
        v = value(name)
        return func.sum(v * samples), func.sum(case((v.is_(None), 0), else_=samples))

    utilization, utilization_samples = weighted("utilization")
    flops, flops_samples = weighted("flops_utilization")
    energy, tokens = value("energy_joules"), table.c.tokens
    return [
        func.sum(samples).label("samples"),
        utilization.label("utilization_sum"), utilization_samples.label("utilization_samples"),
        flops.label("flops_sum"), flops_samples.label("flops_samples"),
        func.sum(energy).label("energy_joules"),
        func.sum(type_coerce(table.c.wasted_seconds, Float)).label("wasted_seconds"),
        func.sum(tokens).label("tokens"),
        func.sum(case((tokens.is_(None), 0.0), else_=energy)).label("token_energy_joules"),
    ]


def _cell(row: Any) -> Cell:
    def number(name: str) -> float:
        return float(getattr(row, name) or 0.0)

    def maybe(name: str) -> float | None:
        v = getattr(row, name)
        return None if v is None else float(v)

    return Cell(samples=number("samples"), utilization_sum=number("utilization_sum"),
                utilization_samples=number("utilization_samples"), flops_sum=number("flops_sum"),
                flops_samples=number("flops_samples"), energy_joules=maybe("energy_joules"),
                wasted_seconds=number("wasted_seconds"), tokens=maybe("tokens"),
                token_energy_joules=number("token_energy_joules"))


def _users(connection: Connection, jobs: set[str]) -> dict[str, str]:
    """Each job's user: the one owning most of its processes."""
    if not jobs:
        return {}
    p = schema.processes
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for row in connection.execute(select(p.c.job, p.c.user, func.count().label("n")).where(
            p.c.job.in_(sorted(jobs)), p.c.user.is_not(None)).group_by(p.c.job, p.c.user)):
        counts[row.job][row.user] += row.n
    return {job: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for job, c in counts.items()}


# Findings read for their stacks and contributing causes, newest first: enough for each cause in a
# busy range.
STACK_FINDINGS = 500


def _notes(connection: Connection, query: Query,
           gpus: set[tuple[str, int]]) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """For each cause, the stack summary of its newest finding on the report's GPUs in the range
    (with a job: while the job ran there) that has one, and the causes found contributing beside it."""
    if not gpus:
        return {}, {}
    f, spans = schema.findings, schema.job_spans
    where = [f.c.start_ts < query.until, or_(f.c.end_ts.is_(None), f.c.end_ts >= query.since),
             or_(f.c.evidence.like('%"stack_summary"%'), f.c.evidence.like('%"contributing"%')),
             or_(*(and_(f.c.host == host, f.c.gpu == gpu) for host, gpu in sorted(gpus)))]
    if query.job is not None:
        where.append(select(spans.c.id).where(
            spans.c.host == f.c.host, spans.c.gpu == f.c.gpu, spans.c.job == query.job,
            spans.c.start_ts <= f.c.start_ts, or_(spans.c.end_ts.is_(None), spans.c.end_ts >= f.c.start_ts)).exists())
    found: dict[str, str] = {}
    beside: dict[str, dict[str, None]] = defaultdict(dict)  # an ordered set: newest first
    for row in connection.execute(select(f.c.cause, f.c.evidence).where(*where)
                                  .order_by(f.c.start_ts.desc()).limit(STACK_FINDINGS)):
        evidence = json.loads(row.evidence)
        summary = evidence.get("stack_summary")
        if summary and row.cause not in found:
            found[row.cause] = summary
        for contribution in evidence.get("contributing") or ():
            beside[row.cause][contribution["cause"]] = None
    return found, {cause: tuple(causes) for cause, causes in beside.items()}


def _held_back(connection: Connection, query: Query) -> list[HeldBackTime]:
    """The judge's verdicts on the query's job in its range, by culprit, longest first; a row the
    range cuts counts its share of the waiting. None for a database without the table (0005)."""
    t = schema.job_verdicts
    if query.job is None or not inspect(connection).has_table(t.name):
        return []
    sums: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in connection.execute(select(t).where(t.c.job == query.job, t.c.start_ts < query.until,
                                                  t.c.end_ts > query.since)):
        length = row.end_ts - row.start_ts
        inside = min(row.end_ts, query.until) - max(row.start_ts, query.since)
        entry = sums[(row.verdict, row.cause, row.host, row.gpu, row.rank)]
        entry[0] += inside
        entry[1] += row.held_gpu_seconds * (inside / length if length > 0 else 1.0)
    return sorted((HeldBackTime(*key, seconds, held) for key, (seconds, held) in sums.items()),
                  key=lambda h: (-h.seconds, h.rank if h.rank is not None else -1, h.cause))


# -- summing ---------------------------------------------------------------------------------


def build_report(read: Read, query: Query, *, interval_seconds: float, utilization_threshold: float,
                 prices: Prices, group_by: str = "job") -> Report:
    """The report's figures from what ``read_history`` summed. Pure."""
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPINGS)}, not {group_by!r}")
    # Summed in one fixed order, so every format and every run gives the same last digits.
    cells = dict(sorted(read.cells.items(), key=lambda kv: _order(kv[0])))

    def usage(name: str, keys: Iterable[CellKey]) -> Usage:
        return _usage(name, [(k, cells[k]) for k in keys], interval_seconds, prices)

    def name_of(key: CellKey, grouping: str) -> str:
        if grouping == "gpu":
            return f"{key.host}:{key.gpu}"
        if grouping == "host":
            return key.host
        if grouping == "user":
            return read.users.get(key.job or "", NO_USER)
        return key.job or NO_JOB

    def grouped(grouping: str) -> list[Usage]:
        members: dict[str, list[CellKey]] = defaultdict(list)
        for key in cells:
            members[name_of(key, grouping)].append(key)
        return [usage(name, keys) for name, keys in members.items()]

    total = usage("total", cells)
    groups = sorted(grouped(group_by), key=lambda u: (-u.gpu_hours, u.name))
    jobs = groups if group_by == "job" else grouped("job")
    top_jobs = sorted((u for u in jobs if u.wasted_gpu_hours > 0 and u.name != NO_JOB),
                      key=lambda u: (-u.wasted_gpu_hours, u.name))[:TOP_JOBS]
    causes = [CauseWaste(cause, hours, hours / total.wasted_gpu_hours, hours * prices.per_gpu_hour,
                         SUMMARY.get(cause, cause), ADVICE.get(cause, ""), read.stacks.get(cause),
                         read.contributing.get(cause, ()))
              for cause, hours in total.wasted_by_cause.items()]
    return Report(
        since=query.since, until=query.until, level=read.level, interval_seconds=interval_seconds,
        utilization_threshold=utilization_threshold, prices=prices, group_by=group_by, job=query.job,
        gpu=query.gpu, host=query.host, hosts=sorted({k.host for k in cells}),
        gpus=len({(k.host, k.gpu) for k in cells}), total=total, groups=groups, causes=causes,
        top_jobs=top_jobs, series=_series(read, query, interval_seconds), step_seconds=read.step,
        users={job: user for job, user in sorted(read.users.items())}, held_back=read.held_back,
    )


def _usage(name: str, cells: list[tuple[CellKey, Cell]], interval_seconds: float, prices: Prices) -> Usage:
    sums = Cell()
    wasted: dict[str, float] = defaultdict(float)
    for key, cell in cells:
        sums.add(cell)
        if cell.wasted_seconds:
            wasted[_cause(key.cause)] += cell.wasted_seconds / HOUR
    gpu_hours = sums.samples * interval_seconds / HOUR
    wasted_gpu_hours = sums.wasted_seconds / HOUR
    energy_kwh = None if sums.energy_joules is None else sums.energy_joules / KWH
    return Usage(
        name=name, gpu_hours=gpu_hours,
        mean_utilization=_ratio(sums.utilization_sum, sums.utilization_samples),
        mean_flops_utilization=_ratio(sums.flops_sum, sums.flops_samples),
        wasted_gpu_hours=wasted_gpu_hours,
        wasted_by_cause=dict(sorted(wasted.items(), key=lambda kv: (-kv[1], kv[0]))),
        energy_kwh=energy_kwh, tokens=sums.tokens,
        joules_per_token=_ratio(sums.token_energy_joules, sums.tokens or 0.0),
        cost=gpu_hours * prices.per_gpu_hour + (energy_kwh or 0.0) * prices.per_kwh,
        wasted_cost=wasted_gpu_hours * prices.per_gpu_hour,
    )


def _series(read: Read, query: Query, interval_seconds: float) -> list[Point]:
    by_bucket: dict[int, list[tuple[str | None, Cell]]] = defaultdict(list)
    for (bucket, cause), cell in sorted(read.points.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        by_bucket[bucket].append((cause, cell))
    points = []
    for bucket in sorted(by_bucket):
        sums, wasted = Cell(), defaultdict(float)
        for cause, cell in by_bucket[bucket]:
            sums.add(cell)
            wasted[_cause(cause)] += cell.wasted_seconds
        seconds = sums.samples * interval_seconds
        energy = sums.energy_joules
        start = read.origin + bucket * read.step
        # GPU-seconds over the seconds of the bucket in the range: the GPUs it saw, on average.
        covered = min(start + read.step, query.until) - max(start, query.since)
        gpus = round(seconds / covered) if covered > 0 else 0
        points.append(Point(
            ts=start, gpus=gpus,
            utilization=_ratio(sums.utilization_sum, sums.utilization_samples),
            flops_utilization=_ratio(sums.flops_sum, sums.flops_samples),
            # Per GPU-second, so a bucket the range cuts short does not look like a power drop.
            power_watts=None if energy is None or not seconds else energy / seconds * gpus,
            energy_kwh=None if energy is None else energy / KWH,
            wasted_share_by_cause={c: w / seconds for c, w in sorted(wasted.items()) if w and seconds},
        ))
    return points


def _order(key: CellKey) -> tuple:
    return key.host, key.gpu, key.job or "", key.cause or ""


def _cause(cause: str | None) -> str:
    # The agent charges waste before any diagnosis to "unknown" (judge/ledger.py).
    return cause or "unknown"


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _add(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else a + b


def as_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON values (``--format json``)."""
    def usage(u: Usage) -> dict[str, Any]:
        return {"name": u.name, "gpu_hours": u.gpu_hours, "mean_utilization": u.mean_utilization,
                "mean_flops_utilization": u.mean_flops_utilization, "wasted_gpu_hours": u.wasted_gpu_hours,
                "wasted_share": u.wasted_share, "wasted_by_cause": u.wasted_by_cause,
                "energy_kwh": u.energy_kwh, "tokens": u.tokens, "joules_per_token": u.joules_per_token,
                "cost": u.cost, "wasted_cost": u.wasted_cost}

    return {
        "since": report.since, "until": report.until, "level": report.level, "empty": report.empty,
        "filters": {"job": report.job, "gpu": report.gpu, "host": report.host},
        "hosts": report.hosts, "gpus": report.gpus, "interval_seconds": report.interval_seconds,
        "utilization_threshold": report.utilization_threshold,
        "prices": {"per_gpu_hour": report.prices.per_gpu_hour, "per_kwh": report.prices.per_kwh,
                   "currency": report.prices.currency},
        "total": usage(report.total),
        "causes": [{"cause": c.cause, "wasted_gpu_hours": c.wasted_gpu_hours, "share": c.share,
                    "wasted_cost": c.wasted_cost, "summary": c.summary, "advice": c.advice,
                    "top_stack": c.top_stack, "contributing": list(c.contributing)}
                   for c in report.causes],
        "group_by": report.group_by, "groups": [usage(u) for u in report.groups],
        "top_jobs": [usage(u) for u in report.top_jobs],
        "users": report.users,
        "held_back": [{"verdict": h.verdict, "cause": h.cause, "host": h.host, "gpu": h.gpu, "rank": h.rank,
                       "seconds": h.seconds, "held_gpu_seconds": h.held_gpu_seconds} for h in report.held_back],
        "reclaim": [{k: v for k, v in a.items() if k != "id"} for a in report.reclaim],
        "series": {"step_seconds": report.step_seconds, "points": [
            {"ts": p.ts, "gpus": p.gpus, "utilization": p.utilization,
             "flops_utilization": p.flops_utilization, "power_watts": p.power_watts,
             "energy_kwh": p.energy_kwh, "wasted_share_by_cause": p.wasted_share_by_cause}
            for p in report.series]},
    }

