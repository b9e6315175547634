"""Alembic, per service: each service keeps its revisions in ``services/<name>/migrations``
and its own ``alembic_version`` table in its own database. Revisions are written by hand
(see docs/operations.md); ``env.py`` of each service is one call to :func:`run_env`."""

from __future__ import annotations

from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData

from shared.db import Database


def _config(script_location: Path, connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["connection"] = connection
    return config


async def upgrade(db: Database, script_location: Path, revision: str = "head") -> None:
    await db.create_database()
    async with db.engine.begin() as conn:
        await conn.run_sync(
            lambda sync: command.upgrade(_config(script_location, sync), revision)
        )


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


def head_revision(script_location: Path) -> str | None:
    return ScriptDirectory.from_config(_config(script_location)).get_current_head()


def create_outbox_and_inbox_v1() -> None:
    """The outbox and inbox tables as every service's first revision creates them. Frozen:
    a later change to them is a new revision (and a new helper), never an edit here."""
    import sqlalchemy as sa
    from alembic import op

    from shared.db import UTCDateTime

    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("routing_key", sa.String(200), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_outbox_sent_at", "outbox", ["sent_at"])
    op.create_table(
        "inbox",
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("handled_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )


def run_env(metadata: MetaData) -> None:
    """Body of every service's ``migrations/env.py``."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `reclo migrate`, which passes a connection")
    # Batch mode lets ALTER TABLE work on SQLite too (copy-and-move).
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
