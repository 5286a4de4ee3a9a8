"""The history database's tables, as of the newest migration (migrations/versions/).

Storage shapes the schema: at 1 Hz a GPU writes 86,400 raw rows a day, so the per-second tables
(``gpu_raw``, ``process_samples``) hold numbers and short keys only, clustered on their primary
key (SQLite ``WITHOUT ROWID``) so they need no second index. What does not change every second
lives once: GPU identity in ``gpus``, a process's job, user and command line in ``processes``,
which job ran on which GPU when in ``job_spans`` (the index behind ``--job``), and each cause
from its start to its end in ``findings``.

Times are Unix seconds (float). A change here needs a new migration; ``SCHEMA_REVISION`` names
the newest one. Revisions are numbered in order ("0001", "0002", …) and only add (tables, nullable
columns, indexes): during a rolling upgrade, agents one version behind keep writing to a database
the newer ones migrated. On PostgreSQL, 0004 rebuilt the raw tables partitioned by day under the
same names and columns, so older agents write on there too.
"""

from __future__ import annotations

import math

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
)



class Fixed(TypeDecorator):
    """A reading kept as an integer number of ``1/scale`` units. In SQLite a ratio to 1e-4 then
    takes 2 bytes instead of a REAL's 8, which is most of what a raw row weighs."""

    impl = Integer
    cache_ok = True

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def process_bind_param(self, value, dialect):  # noqa: ANN001, ANN201 (SQLAlchemy's hook)
        # A reading that is not a number is one the source could not give: NULL, never an error
        # that would hold every row queued behind it.
        return None if value is None or not math.isfinite(value) else round(value * self.scale)

    def process_result_value(self, value, dialect):  # noqa: ANN001, ANN201
        return None if value is None else value / self.scale


RATIO = Fixed(10_000)  # 0.01 % steps
HUNDREDTHS = Fixed(100)  # watts, joules per tick

SCHEMA_REVISION = "0007"
VERSION_TABLE = "flopwatch_schema_version"
# Alembic's version table, laid out as Alembic makes it, so that a new database can be marked
# current without loading Alembic (which would stay in the agent's memory, ~11 MB, for good).
version_table = Table(VERSION_TABLE, MetaData(), Column("version_num", String(32), nullable=False),
                      PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"))

metadata = MetaData()

# SQLite stores these without a hidden rowid: the primary key is the table, so a row costs only
# its values (PostgreSQL ignores the option).
_CLUSTERED = {"sqlite_with_rowid": False}
# On PostgreSQL the per-second tables are partitioned by day (store.py makes the partitions), so
# retention drops a day at once instead of deleting rows; their keys hold ``ts``, as it must.
_BY_DAY = {**_CLUSTERED, "postgresql_partition_by": "RANGE (ts)"}
PARTITIONED = ("gpu_raw", "process_samples")


def _gpu_tick_key() -> list[Column]:
    """(host, ts, gpu): each host's rows arrive in key order, so pages fill up completely."""
    return [
        Column("host", String(255), primary_key=True),
        Column("ts", Float, primary_key=True),
        Column("gpu", SmallInteger, primary_key=True),
    ]


gpus = Table(
    "gpus",
    metadata,
    Column("host", String(255), primary_key=True),
    Column("gpu", SmallInteger, primary_key=True),
    Column("uuid", String(96), primary_key=True),
    Column("name", String(255)),
    Column("first_ts", Float, nullable=False),
)

gpu_raw = Table(
    "gpu_raw",
    metadata,
    *_gpu_tick_key(),
    Column("utilization", RATIO),
    Column("sm_occupancy", RATIO),
    Column("tensor_active", RATIO),
    Column("dram_active", RATIO),
    Column("flops_utilization", RATIO),
    Column("memory_turnover_per_second", RATIO),
    Column("power_watts", HUNDREDTHS),
    Column("energy_joules", HUNDREDTHS),  # this tick's delta
    Column("memory_used_bytes", BigInteger),
    Column("cause", String(32)),
    Column("below_threshold", Boolean, nullable=False),  # the finding is a page, not a ticket
    Column("wasted_seconds", Float, nullable=False),
    Column("tokens", Float),
    Column("job", String(255)),
    **_BY_DAY,
)


def _rollup_table(name: str) -> Table:
    """A rollup level: one row per host, GPU and bucket (``ts`` is the bucket's start)."""
    return Table(
        name,
        metadata,
        *_gpu_tick_key(),
        Column("samples", Integer, nullable=False),
        Column("utilization", Float),
        Column("utilization_max", Float),
        Column("sm_occupancy", Float),
        Column("tensor_active", Float),
        Column("dram_active", Float),
        Column("flops_utilization", Float),
        Column("flops_utilization_max", Float),
        Column("memory_turnover_per_second", Float),
        Column("power_watts", Float),
        Column("power_watts_max", Float),
        Column("memory_used_bytes_max", BigInteger),
        Column("energy_joules", Float),
        Column("wasted_seconds", Float, nullable=False),
        Column("tokens", Float),
        Column("cause", String(32)),  # the cause of most samples in the bucket
        Column("cause_samples", Integer, nullable=False),
        Column("job", String(255)),
        # A fleet's report reads all hosts' buckets of a range (migration 0003).
        Index(f"ix_{name}_ts", "ts"),
        **_CLUSTERED,
    )


gpu_minute = _rollup_table("gpu_minute")
gpu_hour = _rollup_table("gpu_hour")

processes = Table(
    "processes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("job", String(255)),
    Column("user", String(255)),
    Column("cmdline", Text, nullable=False),
    Column("first_ts", Float, nullable=False),
    Column("rank", Integer),  # its rank in a distributed job (migration 0005)
    Index("ix_processes_job", "job"),
    Index("ix_processes_host_first_ts", "host", "first_ts"),
)

# The one table without a host column: its process_id names a process of one host, and a host
# string would be 40 % of each row (the largest table by far).
process_samples = Table(
    "process_samples",
    metadata,
    Column("process_id", Integer, ForeignKey("processes.id"), primary_key=True),
    Column("ts", Float, primary_key=True),
    Column("gpu", SmallInteger, primary_key=True),
    Column("sm_ratio", RATIO),
    Column("memory_bytes", BigInteger),
    **_BY_DAY,
)


def _span_columns() -> list:
    """Columns of a table of intervals on one GPU; ``end_ts`` is NULL while it lasts."""
    return [
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("host", String(255), nullable=False),
        Column("gpu", SmallInteger, nullable=False),
        Column("start_ts", Float, nullable=False),
        Column("end_ts", Float),
    ]


findings = Table(
    "findings",
    metadata,
    *_span_columns(),
    Column("cause", String(32), nullable=False),
    Column("severity", String(8), nullable=False),
    Column("confidence", Float),
    Column("evidence", Text, nullable=False),  # JSON object
    Column("advice", Text, nullable=False),
    Column("summary", Text, nullable=False),
    Index("ix_findings_host_gpu_start", "host", "gpu", "start_ts"),
    Index("ix_findings_cause_start", "cause", "start_ts"),
)

job_spans = Table(
    "job_spans",
    metadata,
    *_span_columns(),
    Column("job", String(255), nullable=False),
    # The rank of the job's process on this GPU (migration 0005): the fleet judge's who-is-who.
    Column("rank", Integer),
    Index("ix_job_spans_host_gpu_start", "host", "gpu", "start_ts"),
    Index("ix_job_spans_job_start", "job", "start_ts"),
    Index("ix_job_spans_end", "end_ts"),  # the open spans (NULL): the fleet judge's jobs now (0005)
)

# The fleet judge's verdicts that held a job back (migration 0006): one row per straggler rank
# (or, for a job bound by its all-reduce, per job) and stretch of passes the verdict held, from
# the first window that showed it to the last pass; `flopwatch report --job` adds them up.
job_verdicts = Table(
    "job_verdicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job", String(255), nullable=False),
    Column("verdict", String(32), nullable=False),  # straggler or communication_bound
    Column("cause", String(32), nullable=False),  # the straggler's own cause, or the verdict
    Column("host", String(255)),  # the straggler's; NULL without one
    Column("gpu", SmallInteger),
    Column("rank", Integer),
    Column("start_ts", Float, nullable=False),
    Column("end_ts", Float, nullable=False),  # the last pass that found it
    Column("held_gpu_seconds", Float, nullable=False),  # what the other ranks waited meanwhile
    Index("ix_job_verdicts_job_start", "job", "start_ts"),
    Index("ix_job_verdicts_end", "end_ts"),  # the judge's open stretches, and retention
)

alerts_outbox = Table(
    "alerts_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", String(255), nullable=False),
    Column("created_ts", Float, nullable=False),
    Column("payload", Text, nullable=False),  # JSON, as the alerting sink will post it
    Column("sent_ts", Float),
    Column("attempts", Integer, nullable=False, default=0),
    Index("ix_alerts_outbox_host_sent", "host", "sent_ts"),
)

# Every reclaim decision (dry-run too) and every action taken on it: who, what, why, when.
reclaim_actions = Table(
    "reclaim_actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", String(255), nullable=False),
    Column("ts", Float, nullable=False),
    Column("scheduler", String(32), nullable=False),
    Column("job", String(255), nullable=False),
    Column("user", String(255)),
    Column("account", String(255)),
    Column("partition", String(255)),
    Column("action", String(64), nullable=False),  # "scancel"
    Column("mode", String(16), nullable=False),  # "dry-run" or "on"
    Column("cause", String(64), nullable=False),
    Column("held_seconds", Float, nullable=False),
    Column("outcome", Text, nullable=False),  # "dry-run", "decided", "done", "failed: …", "gave up: …"
    Index("ix_reclaim_actions_ts", "ts"),
)

ROLLUP_LEVELS = {"minute": (gpu_minute, 60.0), "hour": (gpu_hour, 3600.0)}
