"""The tables recovery owns: ``recovery`` (the seed's, one row per task),
``recoverable_backups`` (what ``BackupUploaded`` told it exists) and ``drills`` (the weekly
proof that each host's newest image backup still becomes a disk), plus outbox and inbox.

A task's row is its whole state machine: the state and the step inside it, progress, the
references to what it created (an object in the import bucket, an import task, an AMI or a
local image) so a failure can remove them, and the lease of the worker running it. The
passphrase a request may bring is never stored, here or anywhere.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime
from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()

ID = 32  # opaque 128-bit ids in hex, as every service's
FOREIGN_ID = 64  # ids other services hand out: room beyond today's 32
SHA256_HEX = 64
MESSAGE = 500
REASON = 1000


class Base(DeclarativeBase):
    metadata = metadata


class RecoveryRow(Base):
    __tablename__ = "recovery"
    __table_args__ = (
        Index("ix_recovery_user_created", "user_id", "created_at", "id"),
        Index("ix_recovery_state_lease", "state", "lease_until"),
    )

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(FOREIGN_ID))
    backup_id: Mapped[str] = mapped_column(String(FOREIGN_ID))
    host_id: Mapped[str] = mapped_column(String(FOREIGN_ID))
    host: Mapped[str] = mapped_column(String(255))
    snapshot_id: Mapped[str] = mapped_column(String(SHA256_HEX))
    target: Mapped[str] = mapped_column(String(16))  # aws | local
    format: Mapped[str] = mapped_column(String(8))  # raw | vhd | vmdk
    instance_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The seed's columns: state and progress in percent, chunks to fetch and fetched.
    state: Mapped[str] = mapped_column(String(16))
    total_progress: Mapped[int] = mapped_column(Integer, default=0)
    state_progress: Mapped[int] = mapped_column(Integer, default=0)
    no_downloads: Mapped[int] = mapped_column(Integer, default=0)
    no_completed: Mapped[int] = mapped_column(Integer, default=0)
    # How far inside the state (domain.ASSEMBLE … LAUNCH): what a resumed task skips.
    step: Mapped[str | None] = mapped_column(String(16), nullable=True)
    state_message: Mapped[str] = mapped_column(String(MESSAGE), default="")
    failure_reason: Mapped[str | None] = mapped_column(String(REASON), nullable=True)
    # Logical size of the disk, and bytes of it that hold data (not holes).
    disk_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    data_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # What the task created, so that a failure leaves nothing behind.
    staged_ref: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    import_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    image_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    image_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    image_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX), nullable=True)
    instance_id: Mapped[str | None] = mapped_column(String(FOREIGN_ID), nullable=True)
    # A failed task whose leftovers (objects, import task, image) are still to be removed.
    cleanup_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    # The worker running the task and until when its claim holds; claims so far.
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Every event about the task shares the request's correlation id.
    correlation_id: Mapped[str] = mapped_column(String(36))
    created_at = mapped_column(UTCDateTime, nullable=False)
    updated_at = mapped_column(UTCDateTime, nullable=False)
    finished_at = mapped_column(UTCDateTime, nullable=True)


class RecoverableBackupRow(Base):
    """A backup the backup service reported uploaded: who owns it, where it lives, whether
    it holds a disk image. A recovery can start only from one of these."""

    __tablename__ = "recoverable_backups"
    __table_args__ = (Index("ix_recoverable_backups_user", "user_id", "completed_at"),)

    backup_id: Mapped[str] = mapped_column(String(FOREIGN_ID), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(FOREIGN_ID))
    host_id: Mapped[str] = mapped_column(String(FOREIGN_ID))
    host: Mapped[str] = mapped_column(String(255))
    snapshot_id: Mapped[str] = mapped_column(String(SHA256_HEX))
    kind: Mapped[str] = mapped_column(String(16))
    is_image: Mapped[bool] = mapped_column(Boolean)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    completed_at = mapped_column(UTCDateTime, nullable=False)
    received_at = mapped_column(UTCDateTime, nullable=False)


class DrillRow(Base):
    """One recovery drill: a host's newest image backup assembled in scratch, verified and
    thrown away (drills.py). One per host per ``BackupsVerifyDue`` tick, whoever handles
    the tick and however often it is delivered: the unique key says so."""

    __tablename__ = "drills"
    __table_args__ = (
        UniqueConstraint("host_id", "scheduled_for", name="uq_drills_host_tick"),
        Index("ix_drills_user_created", "user_id", "created_at", "id"),
        Index("ix_drills_state_lease", "state", "lease_until"),
    )

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(FOREIGN_ID))
    host_id: Mapped[str] = mapped_column(String(FOREIGN_ID))
    host: Mapped[str] = mapped_column(String(255))
    backup_id: Mapped[str] = mapped_column(String(FOREIGN_ID))
    snapshot_id: Mapped[str] = mapped_column(String(SHA256_HEX))
    # The tick that asked for it: with host_id, what makes a drill happen once.
    scheduled_for = mapped_column(UTCDateTime, nullable=False)
    # domain.DRILL_*: pending, running, then passed, failed or skipped.
    state: Mapped[str] = mapped_column(String(16))
    # True passed, False failed; None while it runs, or skipped (nothing was proven).
    ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Why it failed or was skipped, in plain words.
    reason: Mapped[str | None] = mapped_column(String(REASON), nullable=True)
    # What was verified: the disk's size, its bytes in stored chunks, the chunks.
    disk_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    data_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    chunks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The worker running it and until when its claim holds; claims so far.
    runner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The tick's correlation id, carried by DrillPassed/DrillFailed.
    correlation_id: Mapped[str] = mapped_column(String(36))
    created_at = mapped_column(UTCDateTime, nullable=False)
    started_at = mapped_column(UTCDateTime, nullable=True)
    finished_at = mapped_column(UTCDateTime, nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Double, nullable=True)


outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
