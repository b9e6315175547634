"""Several auth replicas share the deliveries without sending one twice: claims are taken
with SELECT … FOR UPDATE SKIP LOCKED on MariaDB (SQLite has one writer and no row locks,
so this is MariaDB's test), and a claim that lapsed is taken over exactly once."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.auth.notifications.delivery import Sender
from services.auth.notifications.errors import DeliveryError
from services.auth.tables import NotificationDeliveryRow, NotificationSettingsRow, UserRow
from shared.runtime import make_bus
from services.registry import builders
from shared.db import Database
from shared.events import utcnow
from tests.notifications.conftest import notify_settings
from tests.support import eventually


@pytest.fixture
async def auth_db(tmp_path, unique, webhooks):
    settings = notify_settings("mariadb", tmp_path, unique, None)
    runtime = builders()["auth"](settings, make_bus(settings), b"k" * 32)
    await runtime.migrate()
    yield settings, runtime.db
    await runtime.db.drop_database()


async def add_deliveries(db: Database, url_for, count: int) -> list[str]:
    now = utcnow()
    async with db.transaction() as session:
        session.add(UserRow(id="u" * 32, username="u", username_key="u", password_hash="x",
                            active=True, created_at=now, updated_at=now))
        await session.flush()
        session.add(NotificationSettingsRow(user_id="u" * 32, webhook_url=url_for(0),
                                            webhook_secret="whsec_test", created_at=now,
                                            updated_at=now))
        rows = [NotificationDeliveryRow(
            id=f"{n:032d}", user_id="u" * 32, event_id=f"{n:036d}", event_type="BackupFailed",
            channel="webhook", target=url_for(0),
            payload=json.dumps({"type": "BackupFailed", "id": f"{n:036d}", "data": {}}),
            state="pending", attempts=0, next_attempt_at=now, created_at=now)
            for n in range(count)]
        session.add_all(rows)
    return [r.id for r in rows]


async def test_two_replicas_claim_disjoint_sets(auth_db, webhooks):
    settings, db = auth_db
    ids = await add_deliveries(db, lambda n: webhooks.url("/one"), 40)
    other_db = Database(settings.database_url_for("auth"))
    a, b = Sender(settings.auth, db), Sender(settings.auth, other_db)
    try:
        claimed: list[str] = []
        while True:
            (got_a, _), (got_b, _) = await asyncio.gather(a.claim(7), b.claim(7))
            if not got_a and not got_b:
                break
            claimed += [c.id for c in got_a + got_b]
        assert sorted(claimed) == sorted(ids)  # every one, once
        async with db.sessions() as session:
            rows = (await session.scalars(select(NotificationDeliveryRow))).all()
        assert {(r.state, r.attempts) for r in rows} == {("sending", 1)}
        assert all(r.next_attempt_at > utcnow() + timedelta(seconds=30) for r in rows)
    finally:
        await other_db.dispose()


async def test_a_locked_row_is_skipped_not_waited_for(auth_db, webhooks):
    settings, db = auth_db
    ids = await add_deliveries(db, lambda n: webhooks.url("/x"), 3)
    sender = Sender(settings.auth, db)
    other_db = Database(settings.database_url_for("auth"))
    try:
        async with other_db.transaction(read_committed=True) as holder:
            await holder.execute(select(NotificationDeliveryRow)
                                 .where(NotificationDeliveryRow.id == ids[0]).with_for_update())
            claims, _ = await asyncio.wait_for(sender.claim(10), timeout=5)
            assert [c.id for c in claims] == [ids[1]]  # one per destination, not the locked one
    finally:
        await other_db.dispose()


async def test_a_lapsed_claim_is_taken_over_and_the_late_outcome_ignored(auth_db, webhooks):
    settings, db = auth_db
    [only] = await add_deliveries(db, lambda n: webhooks.url("/y"), 1)
    first = Sender(settings.auth, db)
    [claim], _ = await first.claim(1)
    assert (await first.claim(1))[0] == []  # claimed: nobody else takes it meanwhile
    # Another replica, after the claim's lease ran out (the first replica hung or died).
    later = Sender(settings.auth, db, clock=lambda: utcnow() + first.lease + timedelta(seconds=1))
    [again], _ = await later.claim(1)
    assert again.id == only and again.attempts == 2
    # The first replica's outcome comes too late to count.
    await first.finish(claim, DeliveryError("boom"))
    async with db.sessions() as session:
        row = await session.get(NotificationDeliveryRow, only)
    assert (row.state, row.attempts, row.last_error) == ("sending", 2, None)
    await later.finish(again, None)
    async with db.sessions() as session:
        row = await session.get(NotificationDeliveryRow, only)
    assert (row.state, row.attempts) == ("delivered", 2)


async def test_two_running_replicas_send_each_delivery_once(auth_db, webhooks):
    settings, db = auth_db
    count = 30
    # Each to its own path of one receiver, so both replicas can send in parallel.
    paths = [f"/r{n}" for n in range(count)]
    ids = await add_deliveries(db, lambda n: webhooks.url("/r0"), count)
    async with db.transaction() as session:
        for n, delivery_id in enumerate(ids):
            row = await session.get(NotificationDeliveryRow, delivery_id)
            row.target = webhooks.url(paths[n])
    # The sender sends where the settings say: give each delivery its own user and URL.
    now = utcnow()
    async with db.transaction() as session:
        for n, delivery_id in enumerate(ids):
            user = f"{n:032x}"
            session.add(UserRow(id=user, username=user, username_key=user, password_hash="x",
                                active=True, created_at=now, updated_at=now))
            await session.flush()
            session.add(NotificationSettingsRow(user_id=user, webhook_url=webhooks.url(paths[n]),
                                                webhook_secret="whsec_t", created_at=now,
                                                updated_at=now))
            row = await session.get(NotificationDeliveryRow, delivery_id)
            row.user_id = user
    other_db = Database(settings.database_url_for("auth"))
    replicas = [Sender(settings.auth, db), Sender(settings.auth, other_db)]
    tasks = [asyncio.create_task(r.run()) for r in replicas]
    try:
        await eventually(lambda: len(webhooks.received) >= count, timeout=15)
        await asyncio.sleep(0.3)  # time for a duplicate to show up, if there were one
        sent = Counter(h.headers["X-Reclo-Delivery"] for h in webhooks.received)
        assert sorted(sent) == sorted(ids) and set(sent.values()) == {1}
        async with db.sessions() as session:
            states = Counter((await session.scalars(
                select(NotificationDeliveryRow.state))).all())
        assert states == {"delivered": count}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await other_db.dispose()


async def test_old_finished_deliveries_are_pruned(auth_db, webhooks):
    settings, db = auth_db
    ids = await add_deliveries(db, lambda n: webhooks.url("/z"), 4)
    now = utcnow()
    finished = {ids[0]: now - timedelta(days=31), ids[1]: now - timedelta(days=29),
                ids[2]: None}  # ids[2] still pending, ids[3] pending too
    async with db.transaction() as session:
        for delivery_id, when in finished.items():
            row = await session.get(NotificationDeliveryRow, delivery_id)
            row.state, row.finished_at = ("failed", when) if when else ("pending", None)
    assert await Sender(settings.auth, db).prune() == 1
    async with db.sessions() as session:
        left = set((await session.scalars(select(NotificationDeliveryRow.id))).all())
    assert left == set(ids[1:])
