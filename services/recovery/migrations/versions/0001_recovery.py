"""recovery, recoverable_backups, outbox, inbox

Revision ID: recovery_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime
from shared.migrations import create_outbox_and_inbox_v1

revision = "recovery_0001"
down_revision = None


def upgrade() -> None:
    create_outbox_and_inbox_v1()
    op.create_table(
        "recovery",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("backup_id", sa.String(64), nullable=False),
        sa.Column("host_id", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("snapshot_id", sa.String(64), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("instance_type", sa.String(32), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("total_progress", sa.Integer(), nullable=False),
        sa.Column("state_progress", sa.Integer(), nullable=False),
        sa.Column("no_downloads", sa.Integer(), nullable=False),
        sa.Column("no_completed", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(16), nullable=True),
        sa.Column("state_message", sa.String(500), nullable=False),
        sa.Column("failure_reason", sa.String(1000), nullable=True),
        sa.Column("disk_bytes", sa.BigInteger(), nullable=True),
        sa.Column("data_bytes", sa.BigInteger(), nullable=True),
        sa.Column("staged_ref", sa.String(1024), nullable=True),
        sa.Column("import_ref", sa.String(255), nullable=True),
        sa.Column("image_ref", sa.String(255), nullable=True),
        sa.Column("image_bytes", sa.BigInteger(), nullable=True),
        sa.Column("image_sha256", sa.String(64), nullable=True),
        sa.Column("instance_id", sa.String(64), nullable=True),
        sa.Column("cleanup_pending", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("correlation_id", sa.String(36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_recovery_user_created", "recovery", ["user_id", "created_at", "id"])
    op.create_index("ix_recovery_state_lease", "recovery", ["state", "lease_until"])
    op.create_table(
        "recoverable_backups",
        sa.Column("backup_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("host_id", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("snapshot_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("is_image", sa.Boolean(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("backup_id"),
    )
    op.create_index("ix_recoverable_backups_user", "recoverable_backups",
                    ["user_id", "completed_at"])


def downgrade() -> None:
    op.drop_table("recoverable_backups")
    op.drop_table("recovery")
    op.drop_table("inbox")
    op.drop_table("outbox")
