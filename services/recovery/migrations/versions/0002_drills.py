"""drills: the weekly recovery drills' results

Revision ID: recovery_0002
Revises: recovery_0001
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "recovery_0002"
down_revision = "recovery_0001"


def upgrade() -> None:
    op.create_table(
        "drills",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("host_id", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("backup_id", sa.String(64), nullable=False),
        sa.Column("snapshot_id", sa.String(64), nullable=False),
        sa.Column("scheduled_for", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=True),
        sa.Column("reason", sa.String(1000), nullable=True),
        sa.Column("disk_bytes", sa.BigInteger(), nullable=True),
        sa.Column("data_bytes", sa.BigInteger(), nullable=True),
        sa.Column("chunks", sa.Integer(), nullable=True),
        sa.Column("runner", sa.String(128), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("correlation_id", sa.String(36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("duration_seconds", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("host_id", "scheduled_for", name="uq_drills_host_tick"),
    )
    op.create_index("ix_drills_user_created", "drills", ["user_id", "created_at", "id"])
    op.create_index("ix_drills_state_lease", "drills", ["state", "lease_until"])


def downgrade() -> None:
    op.drop_table("drills")
