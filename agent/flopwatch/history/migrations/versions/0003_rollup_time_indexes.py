"""Rollups indexed by time alone: a fleet report reads every host's buckets of a range, which the
(host, ts, gpu) key can only serve host by host.

On a large database, build them first without blocking the writers
(``CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_gpu_minute_ts ON gpu_minute (ts)``, the same for
``gpu_hour``); this migration then finds them there.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("gpu_minute", "gpu_hour"):
        op.create_index(f"ix_{table}_ts", table, ["ts"], if_not_exists=True)


def downgrade() -> None:
    for table in ("gpu_minute", "gpu_hour"):
        op.drop_index(f"ix_{table}_ts", table_name=table)
