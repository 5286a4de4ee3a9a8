"""Reclaim decisions and actions: every dry-run decision and every scancel, with who, why and when.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reclaim_actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("scheduler", sa.String(32), nullable=False),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("user", sa.String(255)),
        sa.Column("account", sa.String(255)),
        sa.Column("partition", sa.String(255)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("cause", sa.String(64), nullable=False),
        sa.Column("held_seconds", sa.Float, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
    )
    op.create_index("ix_reclaim_actions_ts", "reclaim_actions", ["ts"])


def downgrade() -> None:
    op.drop_table("reclaim_actions")
