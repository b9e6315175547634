"""hosts, backups, uploads, backup_packs, index_packs, outbox, inbox

Revision ID: backup_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime
from shared.migrations import create_outbox_and_inbox_v1

revision = "backup_0001"
down_revision = None


def upgrade() -> None:
    create_outbox_and_inbox_v1()
    op.create_table(
        "hosts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_backup_at", UTCDateTime(), nullable=True),
        sa.Column("last_backup_id", sa.String(32), nullable=True),
        sa.Column("last_failure_at", UTCDateTime(), nullable=True),
        sa.Column("overdue_since", UTCDateTime(), nullable=True),
        sa.Column("retention", sa.Text(), nullable=True),
        sa.Column("storage_bytes", sa.BigInteger(), nullable=False),
        sa.Column("gc_due_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "name", name="uq_hosts_user_name"),
    )
    op.create_index("ix_hosts_overdue_since", "hosts", ["overdue_since"])
    op.create_index("ix_hosts_gc_due_at", "hosts", ["gc_due_at"])
    op.create_table(
        "backups",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("host_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("is_image", sa.Boolean(), nullable=False),
        sa.Column("snapshot_id", sa.String(64), nullable=True),
        sa.Column("parent_snapshot_id", sa.String(64), nullable=True),
        sa.Column("sources", sa.Text(), nullable=False),
        sa.Column("source_group", sa.String(64), nullable=False),
        sa.Column("stats", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("agent_version", sa.String(64), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("last_activity_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("forgotten_at", UTCDateTime(), nullable=True),
        sa.Column("objects_deleted_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_backups_host_started", "backups", ["host_id", "started_at", "id"])
    op.create_index("ix_backups_user_started", "backups", ["user_id", "started_at", "id"])
    op.create_index("ix_backups_status_activity", "backups", ["status", "last_activity_at"])
    op.create_table(
        "uploads",
        sa.Column("backup_id", sa.String(32), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("host_id", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("stored_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["backup_id"], ["backups.id"]),
        sa.PrimaryKeyConstraint("backup_id", "key"),
    )
    op.create_index("ix_uploads_host_key", "uploads", ["host_id", "key"])
    op.create_table(
        "backup_packs",
        sa.Column("backup_id", sa.String(32), nullable=False),
        sa.Column("pack_id", sa.String(64), nullable=False),
        sa.Column("host_id", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(["backup_id"], ["backups.id"]),
        sa.PrimaryKeyConstraint("backup_id", "pack_id"),
    )
    op.create_index("ix_backup_packs_host_pack", "backup_packs", ["host_id", "pack_id"])
    op.create_table(
        "index_packs",
        sa.Column("host_id", sa.String(32), nullable=False),
        sa.Column("index_id", sa.String(64), nullable=False),
        sa.Column("pack_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("host_id", "index_id", "pack_id"),
    )


def downgrade() -> None:
    op.drop_table("index_packs")
    op.drop_table("backup_packs")
    op.drop_table("uploads")
    op.drop_table("backups")
    op.drop_table("hosts")
    op.drop_table("inbox")
    op.drop_table("outbox")
