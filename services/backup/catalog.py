"""The catalogue's copy in the bucket, and rebuilding the catalogue from it.

On commit the service writes one plain-JSON record per backup to
``<user id>/<host id>/catalog/<backup id>.json``: ids, times, kind, sizes, counts and the
packs the backup references; no file names or paths (those stay inside the encrypted
snapshot). Agents can neither read nor write ``catalog/`` (their keys don't match it). A
forgotten backup's record is deleted with its snapshot, so the records in the bucket are
exactly the kept backups, and `rebuild` can restore the hosts, backups and pack
references (what retention needs) from the bucket alone: after losing the database, or to
move a deployment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select

from services.backup import domain
from services.backup.queries import insert_ignoring_duplicates
from services.backup.tables import BackupPackRow, BackupRow, HostRow
from shared.format.errors import ObjectExists
from shared.logs import get_logger
from shared.objectstore import BucketStore

log = get_logger(__name__)

RECORD_VERSION = 1
_ID = re.compile(r"^[0-9a-f]{32}$")


def record_for(backup: BackupRow, host: HostRow, packs: list[str]) -> bytes:
    doc = {
        "version": RECORD_VERSION,
        "backup_id": backup.id,
        "user_id": backup.user_id,
        "host_id": host.id,
        "host": host.name,
        "host_created_at": host.created_at.isoformat(),
        "kind": backup.kind,
        "is_image": backup.is_image,
        "snapshot_id": backup.snapshot_id,
        "parent_snapshot_id": backup.parent_snapshot_id,
        "source_group": backup.source_group,
        "agent_version": backup.agent_version,
        "started_at": backup.started_at.isoformat(),
        "completed_at": backup.completed_at.isoformat(),
        "size_bytes": backup.size_bytes,
        "stats": json.loads(backup.stats) if backup.stats else None,
        "packs": packs,
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


async def write_record(store: BucketStore, backup: BackupRow, host: HostRow, packs: list[str]) -> None:
    """Store the record (in the host's scope). A retried commit replaces its own record: the
    service may rewrite what only it writes."""
    key = domain.catalog_key(backup.id)
    data = record_for(backup, host, packs)
    try:
        await store.put(key, data)
    except ObjectExists:
        await store.delete(key)
        await store.put(key, data)


@dataclass
class RebuildReport:
    hosts: int = 0
    backups: int = 0
    skipped: list[str] = field(default_factory=list)  # records that did not parse or fit


async def rebuild(db, store: BucketStore) -> RebuildReport:
    """Recreate missing hosts, backups and pack references from the records in the bucket.

    Rows that exist are left as they are, so running it on a live catalogue only adds what
    is missing. Failed sessions and forgotten backups have no record and don't come back;
    neither do the sources' paths (backups come back with `sources: []`)."""
    report = RebuildReport()
    for user_id in await store.children():
        if not _ID.fullmatch(user_id):
            continue
        for host_id in await store.children(f"{user_id}/"):
            if not _ID.fullmatch(host_id):
                continue
            host_store = store.scoped(domain.host_prefix(user_id, host_id))
            async for info in host_store.scan(domain.CATALOG_PREFIX):
                try:
                    record = json.loads(await host_store.get(info.key))
                    added_host, added_backup = await _restore(db, record, user_id, host_id)
                except (ValueError, KeyError, TypeError) as e:
                    report.skipped.append(f"{user_id}/{host_id}/{info.key}: {e}")
                    continue
                report.hosts += added_host
                report.backups += added_backup
    await _refresh_hosts(db)
    log.info("catalogue rebuilt", hosts=report.hosts, backups=report.backups,
             skipped=len(report.skipped))
    return report


async def _restore(db, record: dict, user_id: str, host_id: str) -> tuple[bool, bool]:
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"unsupported record version {record.get('version')!r}")
    if record["user_id"] != user_id or record["host_id"] != host_id:
        raise ValueError("the record does not belong where it is stored")
    backup_id = str(record["backup_id"])
    if not _ID.fullmatch(backup_id) or record["kind"] not in ("full", "incremental"):
        raise ValueError("malformed record")
    completed = datetime.fromisoformat(record["completed_at"])
    packs = [str(p) for p in record["packs"]]
    async with db.transaction() as session:
        added_host = False
        if await session.get(HostRow, host_id) is None:
            session.add(HostRow(id=host_id, user_id=user_id, name=str(record["host"]),
                                created_at=datetime.fromisoformat(record["host_created_at"]),
                                storage_bytes=0))
            await session.flush()
            added_host = True
        if await session.get(BackupRow, backup_id) is not None:
            return added_host, False
        session.add(BackupRow(
            id=backup_id, user_id=user_id, host_id=host_id, kind=record["kind"], status="complete",
            is_image=bool(record["is_image"]), snapshot_id=str(record["snapshot_id"]),
            parent_snapshot_id=record.get("parent_snapshot_id"), sources="[]",
            source_group=str(record["source_group"]),
            stats=json.dumps(record["stats"]) if record.get("stats") is not None else None,
            size_bytes=int(record["size_bytes"]), agent_version=str(record.get("agent_version", "")),
            started_at=datetime.fromisoformat(record["started_at"]), last_activity_at=completed,
            completed_at=completed))
        await session.flush()
        await insert_ignoring_duplicates(session, BackupPackRow.__table__, [
            {"backup_id": backup_id, "pack_id": p, "host_id": host_id} for p in dict.fromkeys(packs)])
    return added_host, True


async def _refresh_hosts(db) -> None:
    """Each host's last backup and (until the next garbage collection measures it) storage,
    from its complete backups."""
    async with db.transaction() as session:
        hosts = (await session.scalars(select(HostRow))).all()
        for host in hosts:
            last = (await session.execute(
                select(BackupRow.id, BackupRow.completed_at)
                .where(BackupRow.host_id == host.id, BackupRow.status == "complete")
                .order_by(BackupRow.completed_at.desc(), BackupRow.id.desc()).limit(1))).first()
            if last is not None and (host.last_backup_at is None or last.completed_at > host.last_backup_at):
                host.last_backup_at, host.last_backup_id = last.completed_at, last.id
            if not host.storage_bytes:
                host.storage_bytes = await session.scalar(
                    select(func.coalesce(func.sum(BackupRow.size_bytes), 0))
                    .where(BackupRow.host_id == host.id, BackupRow.status == "complete"))
