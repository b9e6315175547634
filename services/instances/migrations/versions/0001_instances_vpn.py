"""instances, vpn_environments, vpn_peers, outbox, inbox

Revision ID: instances_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime
from shared.migrations import create_outbox_and_inbox_v1

revision = "instances_0001"
down_revision = None


def upgrade() -> None:
    create_outbox_and_inbox_v1()
    op.create_table(
        "vpn_environments",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("routed_cidrs", sa.String(1024), nullable=False),
        sa.Column("vpc_id", sa.String(64), nullable=True),
        sa.Column("gateway_group_id", sa.String(64), nullable=True),
        sa.Column("machine_group_id", sa.String(64), nullable=True),
        sa.Column("gateway_instance_id", sa.String(64), nullable=True),
        sa.Column("gateway_public_key", sa.String(64), nullable=True),
        sa.Column("endpoint", sa.String(300), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("ready_at", UTCDateTime(), nullable=True),
        sa.Column("retired_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "provider", "generation"),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("recovery_id", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("provider_instance_id", sa.String(64), nullable=True),
        sa.Column("image_ref", sa.String(1024), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("instance_type", sa.String(32), nullable=True),
        sa.Column("environment_id", sa.String(32), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("ready_at", UTCDateTime(), nullable=True),
        sa.Column("stopped_at", UTCDateTime(), nullable=True),
        sa.Column("terminated_at", UTCDateTime(), nullable=True),
        sa.Column("image_released_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["environment_id"], ["vpn_environments.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("recovery_id"),
    )
    op.create_index("ix_instances_user", "instances", ["user_id", "created_at", "id"])
    op.create_index("ix_instances_state", "instances", ["state", "stopped_at"])
    op.create_table(
        "vpn_peers",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("environment_id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("instance_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=True),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("address", sa.String(45), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["environment_id"], ["vpn_environments.id"]),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("environment_id", "public_key"),
        sa.UniqueConstraint("environment_id", "address"),
    )
    op.create_index("ix_vpn_peers_instance", "vpn_peers", ["instance_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_table("vpn_peers")
    op.drop_table("instances")
    op.drop_table("vpn_environments")
    op.drop_table("inbox")
    op.drop_table("outbox")
