"""Two recovery workers (two processes' worth: each its own database engine and RabbitMQ
connection) on one MariaDB database never hold one task at once: they race for the same
tasks with SKIP LOCKED and each gets its own, sweeps while they work steal nothing, and
every task is claimed exactly once and completes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from sqlalchemy import select

from services.recovery import domain
from services.recovery.tables import RecoveryRow
from shared.events import RecoveriesReconcileDue, envelope_for, utcnow
from shared.format import Source
from shared.format.snapshot import IMAGE
from shared.settings import RecoverySettings
from tests import infra
from tests.harness import settings_for
from tests.recovery.helpers import kms_key, make_disk, sha256_of, write_backup
from tests.support import eventually

TASKS = 6
EACH = 3  # max_concurrent: both workers together have room for every task


async def add_tasks(db, user_id: str, host_id: str, snapshot_id: str, n: int) -> list[str]:
    """Tasks as the API records them (requested, nobody holds them yet)."""
    now = utcnow()
    ids = [domain.new_id() for _ in range(n)]
    async with db.transaction() as session:
        for i in ids:
            session.add(RecoveryRow(
                id=i, user_id=user_id, backup_id=uuid.uuid4().hex, host_id=host_id,
                host="fileserver", snapshot_id=snapshot_id, target="local", format="raw",
                state=domain.PENDING, total_progress=0, state_progress=0, no_downloads=0,
                no_completed=0, state_message="", cleanup_pending=False, attempts=0,
                correlation_id=str(uuid.uuid4()), created_at=now, updated_at=now))
    return ids


async def test_two_workers_never_hold_one_task(tmp_path, unique, aws_credentials, lifetimes):
    settings = settings_for("mariadb", tmp_path, unique, recovery=RecoverySettings(
        kms_enabled=True, aws_endpoint=infra.s3_endpoint(), max_concurrent=EACH,
        lease_seconds=2.0, min_free_bytes=0, progress_interval_seconds=0.05))
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=4)
    one = await lifetimes.start(settings, ["recovery"])
    two = await lifetimes.start(settings, ["recovery"])
    workers = {"one": one.runtimes["recovery"].context.worker,
               "two": two.runtimes["recovery"].context.worker}
    db = one.runtimes["recovery"].db
    user_id, host_id = uuid.uuid4().hex, uuid.uuid4().hex
    snapshot = await write_backup(settings, one.key, user_id, host_id,
                                  [Source(str(disk), IMAGE)], kms=kms_key())
    ids = await add_tasks(db, user_id, host_id, snapshot, TASKS)

    held: dict[str, set[str]] = {"one": set(), "two": set()}
    overlaps: list[str] = []

    async def watch() -> None:
        while True:
            now = {name: set(w.runs) for name, w in workers.items()}
            overlaps.extend(now["one"] & now["two"])
            for name in now:
                held[name] |= now[name]
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        taken = await asyncio.gather(workers["one"].claim_due(), workers["two"].claim_due())
        assert set(taken[0]).isdisjoint(taken[1])
        assert sorted(taken[0] + taken[1]) == sorted(ids)
        assert len(taken[0]) == len(taken[1]) == EACH
        # Sweeps while they work (RabbitMQ hands each to one of them) take nothing held.
        for _ in range(5):
            await one.bus.publish(envelope_for(RecoveriesReconcileDue(scheduled_for=utcnow())))
            await asyncio.sleep(0.1)

        async def all_finishing():
            async with db.sessions() as session:
                rows = (await session.scalars(
                    select(RecoveryRow).where(RecoveryRow.id.in_(ids)))).all()
            assert all(r.state != domain.FAILED for r in rows), [r.failure_reason for r in rows]
            return rows if all(r.state == domain.FINISHING for r in rows) else None

        rows = await eventually(all_finishing, timeout=60)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    assert overlaps == []
    assert held["one"] == set(taken[0]) and held["two"] == set(taken[1])
    assert [r.attempts for r in rows] == [1] * TASKS
    assert {r.image_sha256 for r in rows} == {sha256_of(disk)}
