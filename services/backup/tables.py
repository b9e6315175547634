"""The tables backup owns: ``hosts``, ``backups`` and ``uploads`` (the seed's two and the
hosts they belong to), the packs each backup references (retention), the packs declared
index files describe (garbage collection of index files), plus outbox and inbox.

Every object key in these tables is relative to its host's prefix in the bucket
(``<user id>/<host id>/``), as the agent names it.
"""

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime
from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()

ID = 32  # opaque 128-bit ids in hex, as auth's
SHA256_HEX = 64
KEY = 255  # the longest repository key is data/xx/<64 hex>: 72 characters


class Base(DeclarativeBase):
    metadata = metadata


class HostRow(Base):
    """A protected server: one per user and host name, created by its agent's first session."""

    __tablename__ = "hosts"
    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_hosts_user_name"),)

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(ID))
    name: Mapped[str] = mapped_column(String(255))
    created_at = mapped_column(UTCDateTime, nullable=False)
    last_backup_at = mapped_column(UTCDateTime, nullable=True)
    last_backup_id: Mapped[str | None] = mapped_column(String(ID), nullable=True)
    last_failure_at = mapped_column(UTCDateTime, nullable=True)
    # Set when the overdue check flags the host, cleared by its next successful backup: one
    # BackupOverdue event per episode.
    overdue_since = mapped_column(UTCDateTime, nullable=True, index=True)
    # The host's own retention policy (JSON RetentionPolicy); None: the configured default.
    retention: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Bytes of the host's objects as of the last commit or garbage collection.
    storage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # Set when the host may have garbage (backups forgotten, a retention run); cleared by
    # the collector that takes it.
    gc_due_at = mapped_column(UTCDateTime, nullable=True, index=True)


class BackupRow(Base):
    """One backup session and, once committed, the backup it made (the seed's ``backups``)."""

    __tablename__ = "backups"
    __table_args__ = (
        Index("ix_backups_host_started", "host_id", "started_at", "id"),
        Index("ix_backups_user_started", "user_id", "started_at", "id"),
        Index("ix_backups_status_activity", "status", "last_activity_at"),
    )

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(ID))
    host_id: Mapped[str] = mapped_column(String(ID), ForeignKey("hosts.id"))
    kind: Mapped[str] = mapped_column(String(16))  # full | incremental
    status: Mapped[str] = mapped_column(String(16))  # uploading | complete | failed | forgotten
    is_image: Mapped[bool] = mapped_column(Boolean, default=False)
    snapshot_id: Mapped[str | None] = mapped_column(String(SHA256_HEX), nullable=True)
    parent_snapshot_id: Mapped[str | None] = mapped_column(String(SHA256_HEX), nullable=True)
    # JSON list of SourceSpec; "[]" for backups rebuilt from the bucket (paths stay out of it).
    sources: Mapped[str] = mapped_column(Text)
    # sha256 of the sorted sources: retention keeps the newest backups per group of sources.
    source_group: Mapped[str] = mapped_column(String(SHA256_HEX))
    stats: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON SnapshotStats
    # Bytes this backup stored in the bucket (its new packs, index files and snapshot).
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at = mapped_column(UTCDateTime, nullable=False)
    last_activity_at = mapped_column(UTCDateTime, nullable=False)
    completed_at = mapped_column(UTCDateTime, nullable=True)
    forgotten_at = mapped_column(UTCDateTime, nullable=True)
    # When the snapshot object and catalogue record of a forgotten backup were deleted.
    objects_deleted_at = mapped_column(UTCDateTime, nullable=True)


class UploadRow(Base):
    """An object a session was given a PUT URL for (the seed's ``uploads``); checked at commit."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_host_key", "host_id", "key"),)

    backup_id: Mapped[str] = mapped_column(String(ID), ForeignKey("backups.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(KEY), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(ID))
    size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # presigned | stored
    created_at = mapped_column(UTCDateTime, nullable=False)
    stored_at = mapped_column(UTCDateTime, nullable=True)


class BackupPackRow(Base):
    """A pack a backup's snapshot needs: kept while any kept backup references it."""

    __tablename__ = "backup_packs"
    __table_args__ = (Index("ix_backup_packs_host_pack", "host_id", "pack_id"),)

    backup_id: Mapped[str] = mapped_column(String(ID), ForeignKey("backups.id"), primary_key=True)
    pack_id: Mapped[str] = mapped_column(String(SHA256_HEX), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(ID))


class IndexPackRow(Base):
    """A pack an index file describes, as the agent declared it when asking for the URL.
    An index file whose packs are all gone can be deleted; undeclared ones are kept."""

    __tablename__ = "index_packs"

    host_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    index_id: Mapped[str] = mapped_column(String(SHA256_HEX), primary_key=True)
    pack_id: Mapped[str] = mapped_column(String(SHA256_HEX), primary_key=True)


outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
