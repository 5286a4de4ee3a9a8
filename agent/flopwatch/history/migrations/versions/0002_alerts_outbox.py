"""Durable outbox for alerts: the alerting sink queues a notification here and marks it sent.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("created_ts", sa.Float, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("sent_ts", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False),
    )
    op.create_index("ix_alerts_outbox_host_sent", "alerts_outbox", ["host", "sent_ts"])


def downgrade() -> None:
    op.drop_table("alerts_outbox")
