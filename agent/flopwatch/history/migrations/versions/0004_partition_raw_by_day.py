"""PostgreSQL: ``gpu_raw`` and ``process_samples`` partitioned by day, so that retention drops a
day's partition instead of deleting its rows one by one (SQLite: nothing changes).

Each table is renamed, made again partitioned under its name, given a partition for each day its
rows span, copied and dropped. The copy holds the raw tables locked: agents' rows wait in their
buffers meanwhile, so on a large database shorten the raw retention first, or migrate in a quiet
hour. Names and columns stay, so agents one version behind write on.

Revision ID: 0004
Revises: 0003
"""

from alembic import op
from sqlalchemy import text

from flopwatch.history.store import DAY, make_partitions

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

KEYS = {"gpu_raw": "host, ts, gpu", "process_samples": "process_id, ts, gpu"}
FOREIGN_KEY = "ALTER TABLE process_samples ADD FOREIGN KEY (process_id) REFERENCES processes (id)"


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name != "postgresql":
        return
    for table, key in KEYS.items():
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_unpartitioned")
        op.execute(f"ALTER TABLE {table}_unpartitioned RENAME CONSTRAINT {table}_pkey TO {table}_unpartitioned_pkey")
        op.execute(f"CREATE TABLE {table} (LIKE {table}_unpartitioned INCLUDING DEFAULTS) PARTITION BY RANGE (ts)")
        op.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({key})")
    op.execute(FOREIGN_KEY)
    days = set()
    for table in KEYS:
        days |= set(connection.execute(text(
            f"SELECT DISTINCT floor(ts / {DAY:.0f}) * {DAY:.0f} FROM {table}_unpartitioned")).scalars())
    make_partitions(connection, sorted(days))
    for table in KEYS:
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_unpartitioned")
        op.execute(f"DROP TABLE {table}_unpartitioned")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, key in KEYS.items():
        op.execute(f"CREATE TABLE {table}_plain (LIKE {table} INCLUDING DEFAULTS)")
        op.execute(f"INSERT INTO {table}_plain SELECT * FROM {table}")
        op.execute(f"DROP TABLE {table}")  # with its partitions
        op.execute(f"ALTER TABLE {table}_plain RENAME TO {table}")
        op.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({key})")
    op.execute(FOREIGN_KEY)
