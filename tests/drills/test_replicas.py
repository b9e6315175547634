"""Two recovery replicas on one MariaDB database and one RabbitMQ queue, and a weekly tick
delivered three times (the same event redelivered, and the same tick sent again, as two
scheduler replicas might): one drill per host, each run by one replica, each reported
once; a damaged backup among them fails naming its pack."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from services.recovery.tables import DrillRow
from shared.events import RecoveriesReconcileDue, envelope_for, utcnow
from shared.settings import RecoverySettings
from tests import infra
from tests.drills.helpers import DrillEvents, corrupt_a_chunk, tick, week
from tests.harness import settings_for
from tests.recovery.helpers import image_backup, kms_key, make_disk
from tests.support import eventually

HOSTS = 3


async def test_two_replicas_drill_each_host_once(tmp_path, unique, aws_credentials, lifetimes):
    settings = settings_for("mariadb", tmp_path, unique, recovery=RecoverySettings(
        kms_enabled=True, aws_endpoint=infra.s3_endpoint(), min_free_bytes=0,
        lease_seconds=5.0))
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=3)
    one = await lifetimes.start(settings, ["recovery"])
    two = await lifetimes.start(settings, ["recovery"])
    backups = [await image_backup(one, "customer", disk, kms=kms_key()) for _ in range(HOSTS)]
    damaged = backups[0]
    pack_id, _ = await corrupt_a_chunk(settings, one.key, damaged)
    events = await DrillEvents().start(one.bus)

    sunday = tick(week(0))
    await asyncio.gather(one.bus.publish(sunday), two.bus.publish(tick(week(0))),
                         one.bus.publish(sunday))
    db = one.runtimes["recovery"].db

    async def all_done():
        # Sweeps on both replicas (RabbitMQ hands each to one): drills not taken by the
        # replica that handled the tick are taken by whichever has a free slot.
        await two.bus.publish(envelope_for(RecoveriesReconcileDue(scheduled_for=utcnow())))
        async with db.sessions() as session:
            rows = (await session.scalars(select(DrillRow))).all()
        return rows if len(rows) == HOSTS and all(
            r.state in ("passed", "failed") for r in rows) else None

    rows = await eventually(all_done, timeout=40, interval=0.3)
    by_host = {r.host_id: r for r in rows}
    assert sorted(by_host) == sorted(b.host_id for b in backups)
    assert all(r.attempts == 1 for r in rows)  # claimed once: never by both replicas
    assert by_host[damaged.host_id].state == "failed"
    assert f"corrupt blob in pack {pack_id}" in by_host[damaged.host_id].reason
    assert {r.state for r in rows if r.host_id != damaged.host_id} == {"passed"}

    await eventually(lambda: len(events.seen) >= HOSTS, timeout=10)
    await asyncio.sleep(0.5)  # room for a duplicate to show up, were there one
    assert sorted((e.payload["host_id"], e.type) for e in events.seen) == sorted(
        (r.host_id, "DrillFailed" if r.host_id == damaged.host_id else "DrillPassed")
        for r in rows)
    passed = {e.payload["host_id"]: e.payload for e in events.seen if e.type == "DrillPassed"}
    for host_id, payload in passed.items():  # kept to the digit (a DOUBLE, not a FLOAT)
        assert payload["duration_seconds"] == by_host[host_id].duration_seconds > 0
