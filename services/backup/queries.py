"""The queries that several of backup's rooms ask: what protects a pack from garbage
collection, and inserting rows that may already be there. Each takes a bounded batch of
ids, so no caller ever holds every pack of a repository in memory."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Table, select
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services.backup.tables import BackupPackRow, BackupRow, HostRow, UploadRow

# Rows per INSERT and ids per IN (...): well below every database's parameter limit
# (SQLite's is 32766), large enough that a commit of thousands of packs takes few trips.
BATCH = 500


def batches(items: Sequence, size: int = BATCH) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


async def insert_ignoring_duplicates(session: AsyncSession, table: Table, rows: list[dict]) -> None:
    """Insert rows, silently skipping those whose primary key exists (a retried request,
    a catalogue rebuilt over rows that survived)."""
    if not rows:
        return
    if session.bind.dialect.name == "sqlite":
        statement = sqlite.insert(table).on_conflict_do_nothing()
    else:
        first = next(iter(table.primary_key.columns))
        statement = mysql.insert(table)
        statement = statement.on_duplicate_key_update({first.name: statement.inserted[first.name]})
    for chunk in batches(rows):
        await session.execute(statement, list(chunk))


async def lock_host(session: AsyncSession, host_id: str) -> HostRow | None:
    """The host row, locked until the transaction ends (and read afresh: what an earlier
    unlocked read of this session saw may be stale): commits and garbage collection of one
    host take turns (SQLite's single writer does the same by itself)."""
    return await session.scalar(select(HostRow).where(HostRow.id == host_id).with_for_update()
                                .execution_options(populate_existing=True))


async def referenced_packs(session: AsyncSession, host_id: str, pack_ids: Sequence[str]) -> set[str]:
    """Those of pack_ids that a complete (kept) backup of the host references."""
    found: set[str] = set()
    for chunk in batches(list(pack_ids)):
        rows = await session.scalars(
            select(BackupPackRow.pack_id).distinct()
            .join(BackupRow, BackupRow.id == BackupPackRow.backup_id)
            .where(BackupPackRow.host_id == host_id, BackupPackRow.pack_id.in_(chunk),
                   BackupRow.status == "complete"))
        found.update(rows)
    return found


async def keys_in_open_sessions(session: AsyncSession, host_id: str, keys: Sequence[str]) -> set[str]:
    """Those of keys a backup session of the host that is still uploading was given a URL for."""
    found: set[str] = set()
    for chunk in batches(list(keys)):
        rows = await session.scalars(
            select(UploadRow.key).distinct()
            .join(BackupRow, BackupRow.id == UploadRow.backup_id)
            .where(UploadRow.host_id == host_id, UploadRow.key.in_(chunk),
                   BackupRow.status == "uploading"))
        found.update(rows)
    return found
