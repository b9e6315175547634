"""Drills run in the background and survive their worker. The backups are on S3 (moto)
behind a slow line, so a drill is still reading when the test acts:

- while a drill runs, recovery's consumer goes on handling events (a new backup is known
  at once): the tick's handler only records the drill;
- the process running a drill stops dead; its scratch disk goes with it; after the lease
  lapses the reconcile sweep of a new process runs the drill again, and it passes, once.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from services.recovery.tables import DrillRow
from shared.events import RecoveriesReconcileDue, envelope_for, utcnow
from shared.settings import BackupSettings, RecoverySettings
from tests import infra
from tests.drills.helpers import DrillEvents, tick, week
from tests.harness import settings_for
from tests.recovery.helpers import (
    announce_backup,
    image_backup,
    kms_key,
    known_to_recovery,
    make_disk,
)
from tests.support import eventually, files_under

SERVICES = ["recovery"]
LEASE = 1.0


async def drill_rows(stack) -> list[DrillRow]:
    async with stack.runtimes["recovery"].db.sessions() as session:
        return list((await session.scalars(select(DrillRow))).all())


def scratch_files(stack) -> list[str]:
    root = stack.settings.data_dir / "recovery" / "scratch" / "drills"
    return files_under(root)


async def test_a_drill_runs_in_the_background_and_survives_its_worker(
        tmp_path, unique, slow_s3, lifetimes):
    settings = settings_for(
        "embedded", tmp_path, unique, s3_endpoint=slow_s3.url,
        backup=BackupSettings(key_prefix=f"t{unique}/"),
        recovery=RecoverySettings(kms_enabled=True, aws_endpoint=infra.s3_endpoint(),
                                  lease_seconds=LEASE, min_free_bytes=0,
                                  download_concurrency=1))
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=5)
    first = await lifetimes.start(settings, SERVICES)
    # The agent writes to S3 directly, not through the test's slow line.
    writer = settings.model_copy(update={"s3_endpoint": infra.s3_endpoint()})
    backup = await image_backup(first, "customer", disk, writer=writer, kms=kms_key())

    await first.bus.publish(tick(week(0)))
    await eventually(lambda: scratch_files(first), timeout=15)  # the disk is being written
    # The consumer is free meanwhile: a backup announced now is recorded at once.
    other = await announce_backup(first.bus, user_id="customer", host_id="another-host",
                                  snapshot_id=backup.snapshot_id)
    await known_to_recovery(first, other)
    [running] = await drill_rows(first)
    assert running.state == "running" and running.attempts == 1

    await lifetimes.stop(first)  # the process dies mid-drill
    [stopped] = await drill_rows(first)
    assert stopped.state == "running" and stopped.runner is not None
    assert scratch_files(first) == []  # its scratch disk went with it

    second = await lifetimes.start(settings, SERVICES)
    events = await DrillEvents().start(second.bus)
    sweep = RecoveriesReconcileDue(scheduled_for=utcnow())
    await second.bus.publish(envelope_for(sweep))  # too early: the lease still holds
    await asyncio.sleep(LEASE)
    await second.bus.publish(envelope_for(RecoveriesReconcileDue(scheduled_for=utcnow())))

    async def passed():
        [row] = await drill_rows(second)
        assert row.state in ("running", "passed"), (row.state, row.reason)
        return row if row.state == "passed" else None

    row = await eventually(passed, timeout=30)
    assert row.attempts == 2 and row.ok is True and row.runner is None
    assert row.backup_id == backup.backup_id
    [event] = await eventually(lambda: events.of(row.id))
    assert event["type"] == "DrillPassed"
    assert scratch_files(second) == []
