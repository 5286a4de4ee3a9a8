"""Each process's rank in a distributed job, and the rank on each GPU's job span: a job spread
over many nodes has one name and a rank per GPU, which the fleet judge reads, starting from
the open spans (indexed).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("processes", "job_spans"):
        op.add_column(table, sa.Column("rank", sa.Integer))
    op.create_index("ix_job_spans_end", "job_spans", ["end_ts"])


def downgrade() -> None:
    op.drop_index("ix_job_spans_end", table_name="job_spans")
    for table in ("processes", "job_spans"):
        op.drop_column(table, "rank")
