"""Garbage collection: deleting what no kept backup needs any more, host by host.

For each host marked due (a forget, a retention run):
1. forgotten backups: their catalogue record, then their snapshot object (a rebuild never
   resurrects a backup whose snapshot is gone);
2. packs: the host's objects are listed in key order, a page at a time; a pack (`data/`)
   is deleted when no complete backup references it, no open session was given a URL for
   it, and it is older than the grace period. Each page is decided and deleted with the
   host row locked, so a commit (which takes the same lock to check what it reuses) never
   interleaves with a deletion. Memory holds one page, never the repository;
3. index files that declared their packs (ObjectSpec.packs) and whose packs are all gone.

A host without any complete backup is left alone: with nothing to keep, a mistake in the
tables (a wiped catalogue not yet rebuilt) must not empty a customer's repository.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from services.backup import domain
from services.backup.queries import keys_in_open_sessions, lock_host, referenced_packs
from services.backup.tables import BackupRow, HostRow, IndexPackRow
from shared.events import utcnow
from shared.logs import get_logger
from shared.objectstore.base import BATCH

log = get_logger(__name__)

# Forgotten backups and index files are handled in pages of this many rows.
ROWS_PER_PAGE = 200


@dataclass
class HostReport:
    host_id: str
    snapshots_deleted: int = 0
    packs_deleted: int = 0
    indexes_deleted: int = 0
    bytes_deleted: int = 0
    storage_bytes: int = 0
    skipped: str | None = None


@dataclass
class Report:
    hosts: list[HostReport] = field(default_factory=list)

    @property
    def packs_deleted(self) -> int:
        return sum(h.packs_deleted for h in self.hosts)


async def collector(service) -> None:
    """Background loop: collect when woken (after a forget commits) or every poll period."""
    while True:
        # asyncio.timeout, not wait_for (which can swallow a cancellation on Python 3.11).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(service.settings.gc_poll_seconds):
                await service.gc_wake.wait()
        service.gc_wake.clear()
        try:
            await collect(service)
        except Exception:
            log.exception("garbage collection failed; retried at the next wake-up")


async def collect(service, *, now: datetime | None = None) -> Report:
    """Collect every host marked due. Hosts are claimed one at a time (compare-and-clear of
    `gc_due_at`), so replicas running side by side share the work instead of repeating it."""
    report = Report()
    after = ""
    while True:
        async with service.db.sessions() as session:
            due = (await session.execute(
                select(HostRow.id, HostRow.gc_due_at)
                .where(HostRow.gc_due_at.is_not(None), HostRow.id > after)
                .order_by(HostRow.id).limit(ROWS_PER_PAGE))).all()
        if not due:
            return report
        for host_id, marked_at in due:
            after = host_id
            async with service.db.transaction() as session:
                claimed = await session.execute(
                    update(HostRow).where(HostRow.id == host_id, HostRow.gc_due_at == marked_at)
                    .values(gc_due_at=None))
            if claimed.rowcount != 1:
                continue  # another replica took it
            try:
                report.hosts.append(await collect_host(service, host_id, now=now))
            except Exception:
                # Due again, so the next wake-up retries it; the other hosts go on.
                log.exception("garbage collection of a host failed", host_id=host_id)
                async with service.db.transaction() as session:
                    await session.execute(update(HostRow).where(
                        HostRow.id == host_id, HostRow.gc_due_at.is_(None)).values(gc_due_at=utcnow()))


async def collect_host(service, host_id: str, *, now: datetime | None = None) -> HostReport:
    report = HostReport(host_id)
    async with service.db.sessions() as session:
        host = await session.get(HostRow, host_id)
    if host is None:
        report.skipped = "no such host"
        return report
    store = service.host_store(host.user_id, host.id)
    await _delete_forgotten(service, store, host, report)
    async with service.db.sessions() as session:
        kept = await session.scalar(select(func.count()).select_from(BackupRow).where(
            BackupRow.host_id == host.id, BackupRow.status == "complete"))
    if not kept:
        report.skipped = "no complete backup: nothing is deleted"
        return report
    cutoff = (now or utcnow()) - timedelta(seconds=service.settings.gc_grace_seconds)
    await _delete_packs(service, store, host, cutoff, report)
    await _delete_indexes(service, store, host, report)
    log.info("garbage collected", host_id=host.id, packs=report.packs_deleted,
             snapshots=report.snapshots_deleted, indexes=report.indexes_deleted,
             bytes=report.bytes_deleted)
    return report


async def _delete_forgotten(service, store, host: HostRow, report: HostReport) -> None:
    while True:
        async with service.db.sessions() as session:
            rows = (await session.execute(
                select(BackupRow.id, BackupRow.snapshot_id)
                .where(BackupRow.host_id == host.id, BackupRow.status == "forgotten",
                       BackupRow.objects_deleted_at.is_(None))
                .order_by(BackupRow.id).limit(ROWS_PER_PAGE))).all()
        if not rows:
            return
        # The record first: a crash in between leaves a snapshot without a record, which
        # the next run deletes, never a record that a rebuild would resurrect.
        await store.delete_many([domain.catalog_key(r.id) for r in rows])
        await store.delete_many([domain.snapshot_key(r.snapshot_id) for r in rows if r.snapshot_id])
        async with service.db.transaction() as session:
            await session.execute(
                update(BackupRow).where(BackupRow.id.in_([r.id for r in rows]))
                .values(objects_deleted_at=utcnow()))
        report.snapshots_deleted += len(rows)


async def _delete_packs(service, store, host: HostRow, cutoff: datetime, report: HostReport) -> None:
    total = 0
    after: str | None = None
    while True:
        page = await store.list_page("", after, BATCH)
        if not page:
            break
        after = page[-1].key
        packs = {info.key: info for info in page if domain.pack_id_of(info.key)}
        doomed: list[str] = []
        async with service.db.transaction() as session:
            if not await _still_has_backups(session, host.id):
                return  # the host or its catalogue went away meanwhile: keep everything
            if packs:
                ids = {domain.pack_id_of(k): k for k in packs}
                keep = {domain.pack_key(p) for p in await referenced_packs(session, host.id, list(ids))}
                keep |= await keys_in_open_sessions(session, host.id, list(packs))
                doomed = [k for k, info in packs.items() if k not in keep and info.modified <= cutoff]
                # Deleted while the lock is held: a commit checking the packs it reuses waits.
                await store.delete_many(doomed)
        gone = set(doomed)
        report.packs_deleted += len(doomed)
        report.bytes_deleted += sum(packs[k].size for k in doomed)
        total += sum(info.size for info in page if info.key not in gone)
        if len(page) < BATCH:
            break
    report.storage_bytes = total
    async with service.db.transaction() as session:
        await session.execute(update(HostRow).where(HostRow.id == host.id).values(storage_bytes=total))


async def _still_has_backups(session, host_id: str) -> bool:
    """Locks the host row; True if the host still exists with a complete backup."""
    if await lock_host(session, host_id) is None:
        return False
    return bool(await session.scalar(select(func.count()).select_from(BackupRow).where(
        BackupRow.host_id == host_id, BackupRow.status == "complete")))


async def _delete_indexes(service, store, host: HostRow, report: HostReport) -> None:
    after = ""
    while True:
        async with service.db.sessions() as session:
            index_ids = (await session.scalars(
                select(IndexPackRow.index_id).distinct()
                .where(IndexPackRow.host_id == host.id, IndexPackRow.index_id > after)
                .order_by(IndexPackRow.index_id).limit(ROWS_PER_PAGE))).all()
            if not index_ids:
                return
            after = index_ids[-1]
            declared = (await session.execute(
                select(IndexPackRow.index_id, IndexPackRow.pack_id)
                .where(IndexPackRow.host_id == host.id, IndexPackRow.index_id.in_(index_ids)))).all()
        packs_of: dict[str, list[str]] = {}
        for index_id, pack_id in declared:
            packs_of.setdefault(index_id, []).append(pack_id)
        all_packs = sorted({p for packs in packs_of.values() for p in packs})
        sizes = await service.sizes(store, [domain.pack_key(p) for p in all_packs])
        present = {p for p in all_packs if sizes[domain.pack_key(p)] is not None}
        doomed = [i for i, packs in packs_of.items() if not present.intersection(packs)]
        if not doomed:
            continue
        async with service.db.transaction() as session:
            if not await _still_has_backups(session, host.id):
                return
            # An index uploaded by a session still open describes packs it may yet commit.
            busy = await keys_in_open_sessions(session, host.id, [f"{domain.INDEX_PREFIX}{i}" for i in doomed])
            doomed = [i for i in doomed if f"{domain.INDEX_PREFIX}{i}" not in busy]
            await store.delete_many([f"{domain.INDEX_PREFIX}{i}" for i in doomed])
            await session.execute(IndexPackRow.__table__.delete().where(
                IndexPackRow.host_id == host.id, IndexPackRow.index_id.in_(doomed)))
        report.indexes_deleted += len(doomed)
