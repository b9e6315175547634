"""notification settings and deliveries

Revision ID: auth_0002
Revises: auth_0001
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "auth_0002"
down_revision = "auth_0001"


def upgrade() -> None:
    op.create_table(
        "notification_settings",
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("webhook_url", sa.String(2048), nullable=True),
        sa.Column("webhook_secret", sa.String(64), nullable=True),
        sa.Column("previous_secret", sa.String(64), nullable=True),
        sa.Column("previous_secret_until", UTCDateTime(), nullable=True),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("events", sa.String(512), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "notification_deliveries",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("target", sa.String(2048), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", "channel", name="uq_notification_deliveries_event"),
    )
    op.create_index("ix_notification_deliveries_due", "notification_deliveries",
                    ["state", "next_attempt_at"])
    op.create_index("ix_notification_deliveries_user", "notification_deliveries",
                    ["user_id", "created_at", "id"])
    op.create_index("ix_notification_deliveries_finished", "notification_deliveries",
                    ["finished_at"])


def downgrade() -> None:
    op.drop_table("notification_deliveries")
    op.drop_table("notification_settings")
