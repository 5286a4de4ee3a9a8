"""The first history schema: raw ticks, minute and hour rollups, processes, findings, job spans.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_CLUSTERED = {"sqlite_with_rowid": False}


def _gpu_tick_key() -> list:
    return [
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("ts", sa.Float, primary_key=True),
        sa.Column("gpu", sa.SmallInteger, primary_key=True),
    ]


def _span_key() -> list:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("gpu", sa.SmallInteger, nullable=False),
        sa.Column("start_ts", sa.Float, nullable=False),
        sa.Column("end_ts", sa.Float),
    ]


def upgrade() -> None:
    op.create_table(
        "gpus",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("gpu", sa.SmallInteger, primary_key=True),
        sa.Column("uuid", sa.String(96), primary_key=True),
        sa.Column("name", sa.String(255)),
        sa.Column("first_ts", sa.Float, nullable=False),
    )
    # Readings are fixed-point integers (store_schema.Fixed): ratios in 1e-4, watts and joules
    # in 1e-2.
    op.create_table(
        "gpu_raw",
        *_gpu_tick_key(),
        *[sa.Column(name, sa.Integer) for name in (
            "utilization", "sm_occupancy", "tensor_active", "dram_active", "flops_utilization",
            "memory_turnover_per_second", "power_watts", "energy_joules",
        )],
        sa.Column("memory_used_bytes", sa.BigInteger),
        sa.Column("cause", sa.String(32)),
        sa.Column("below_threshold", sa.Boolean, nullable=False),
        sa.Column("wasted_seconds", sa.Float, nullable=False),
        sa.Column("tokens", sa.Float),
        sa.Column("job", sa.String(255)),
        **_CLUSTERED,
    )
    for name in ("gpu_minute", "gpu_hour"):
        op.create_table(
            name,
            *_gpu_tick_key(),
            sa.Column("samples", sa.Integer, nullable=False),
            *[sa.Column(column, sa.Float) for column in (
                "utilization", "utilization_max", "sm_occupancy", "tensor_active", "dram_active",
                "flops_utilization", "flops_utilization_max", "memory_turnover_per_second",
                "power_watts", "power_watts_max",
            )],
            sa.Column("memory_used_bytes_max", sa.BigInteger),
            sa.Column("energy_joules", sa.Float),
            sa.Column("wasted_seconds", sa.Float, nullable=False),
            sa.Column("tokens", sa.Float),
            sa.Column("cause", sa.String(32)),
            sa.Column("cause_samples", sa.Integer, nullable=False),
            sa.Column("job", sa.String(255)),
            **_CLUSTERED,
        )
    op.create_table(
        "processes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("job", sa.String(255)),
        sa.Column("user", sa.String(255)),
        sa.Column("cmdline", sa.Text, nullable=False),
        sa.Column("first_ts", sa.Float, nullable=False),
    )
    op.create_index("ix_processes_job", "processes", ["job"])
    op.create_index("ix_processes_host_first_ts", "processes", ["host", "first_ts"])
    op.create_table(
        "process_samples",
        sa.Column("process_id", sa.Integer, sa.ForeignKey("processes.id"), primary_key=True),
        sa.Column("ts", sa.Float, primary_key=True),
        sa.Column("gpu", sa.SmallInteger, primary_key=True),
        sa.Column("sm_ratio", sa.Integer),
        sa.Column("memory_bytes", sa.BigInteger),
        **_CLUSTERED,
    )
    op.create_table(
        "findings",
        *_span_key(),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("confidence", sa.Float),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("advice", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
    )
    op.create_index("ix_findings_host_gpu_start", "findings", ["host", "gpu", "start_ts"])
    op.create_index("ix_findings_cause_start", "findings", ["cause", "start_ts"])
    op.create_table("job_spans", *_span_key(), sa.Column("job", sa.String(255), nullable=False))
    op.create_index("ix_job_spans_host_gpu_start", "job_spans", ["host", "gpu", "start_ts"])
    op.create_index("ix_job_spans_job_start", "job_spans", ["job", "start_ts"])


def downgrade() -> None:
    for name in ("job_spans", "findings", "process_samples", "processes", "gpu_hour",
                 "gpu_minute", "gpu_raw", "gpus"):
        op.drop_table(name)
