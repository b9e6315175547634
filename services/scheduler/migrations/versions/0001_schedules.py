"""schedules, outbox, inbox

Revision ID: scheduler_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime
from shared.migrations import create_outbox_and_inbox_v1

revision = "scheduler_0001"
down_revision = None


def upgrade() -> None:
    create_outbox_and_inbox_v1()
    op.create_table(
        "schedules",
        sa.Column("job", sa.String(100), nullable=False),
        sa.Column("cron", sa.String(100), nullable=True),
        sa.Column("since", UTCDateTime(), nullable=False),
        sa.Column("last_scheduled_for", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("job"),
    )


def downgrade() -> None:
    op.drop_table("schedules")
    op.drop_table("inbox")
    op.drop_table("outbox")
