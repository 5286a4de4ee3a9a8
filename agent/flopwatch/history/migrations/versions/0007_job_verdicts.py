"""The fleet judge's verdicts that held a job back, for `flopwatch report --job`: which rank
held the others back, with what cause, for how long and at what cost in their waiting.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_verdicts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("gpu", sa.SmallInteger),
        sa.Column("rank", sa.Integer),
        sa.Column("start_ts", sa.Float, nullable=False),
        sa.Column("end_ts", sa.Float, nullable=False),
        sa.Column("held_gpu_seconds", sa.Float, nullable=False),
    )
    op.create_index("ix_job_verdicts_job_start", "job_verdicts", ["job", "start_ts"])
    op.create_index("ix_job_verdicts_end", "job_verdicts", ["end_ts"])


def downgrade() -> None:
    op.drop_table("job_verdicts")
