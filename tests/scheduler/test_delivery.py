"""Ticks leave the scheduler and reach their consumers: a listener on the bus (RabbitMQ, or the
in-process bus in embedded mode), and auth, whose TokensExpiryDue handler does its work."""

import asyncio
import secrets
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.auth.tables import TokenRow, UserRow, inbox as auth_inbox
from services.embedded import Stack
from shared.runtime import make_bus
from shared.bus import create_bus
from shared.db import Database
from shared.events import payload_of, utcnow
from tests.scheduler.helpers import FakeClock, at, delete_queues, emitted, replica
from tests.support import eventually

START = at("2025-01-05T04:00:30")


async def _listen(bus, queue: str) -> list:
    received = []

    async def handler(envelope):
        received.append(envelope)

    await bus.subscribe(queue, ["scheduler.#"], handler)
    return received


async def test_ticks_arrive_at_a_consumer_with_their_scheduled_time(settings, backend, unique):
    clock = FakeClock(START)
    shared_bus = make_bus(settings) if backend == "sqlite" else None  # one process, one bus
    listener = shared_bus or make_bus(settings)
    await listener.connect()
    queue = f"{settings.bus.queue_prefix}.listener"
    received = await _listen(listener, queue)
    replicas = [replica(settings, clock, shared_bus), replica(settings, clock, shared_bus)]
    await replicas[0].migrate()
    await replicas[0].context.tick(START)
    try:
        for runtime in replicas:
            await runtime.bus.connect()
            await runtime.start(host="127.0.0.1", port=0)
        for instant in (at("2025-01-05T04:01:00"), at("2025-01-05T04:02:00")):
            clock.set(instant)
            await asyncio.gather(*(r.context.tick(instant) for r in replicas))

        ours = {event_id for _, _, event_id in await emitted(settings)}
        assert len(ours) == 4

        def mine():
            # The exchange is shared: keep only the events this test's scheduler emitted.
            return [e for e in received if str(e.id) in ours]

        await eventually(lambda: {str(e.id) for e in mine()} == ours)
        await asyncio.sleep(0.3)  # room for a duplicate to show
        ticks = sorted((e.type, payload_of(e).scheduled_for) for e in mine())
        assert ticks == [
            ("InstancesCleanupDue", at("2025-01-05T04:02:00")),
            ("RecoveriesReconcileDue", at("2025-01-05T04:01:00")),
            ("RecoveriesReconcileDue", at("2025-01-05T04:02:00")),
            ("TokensExpiryDue", at("2025-01-05T04:01:00")),
        ]
        assert all(e.routing_key.startswith("scheduler.") for e in mine())
    finally:
        for runtime in replicas:
            await runtime.stop()
        for bus in {id(r.bus): r.bus for r in replicas}.values():
            await bus.close()
        await listener.close()
        await delete_queues(settings, [queue])


# The in-process bus cannot be unreachable: this one is about RabbitMQ.
@pytest.mark.parametrize("backend", ["mariadb"])
async def test_ticks_emitted_while_the_broker_is_unreachable_arrive_later(settings):
    clock = FakeClock(START)
    # Nothing listens on port 1: this replica's broker is "down" the whole time.
    down = create_bus("amqp://guest:guest@127.0.0.1:1/", prefetch=1, retry_delays=(0.05,))
    cut_off = replica(settings, clock, down)
    await cut_off.migrate()
    cut_off.outbox.start()  # its relay keeps failing
    await cut_off.context.tick(START)
    await cut_off.context.tick(at("2025-01-05T04:01:00"))
    await asyncio.sleep(0.3)
    assert await cut_off.outbox.pending() == 2
    await cut_off.stop()

    listener = make_bus(settings)
    await listener.connect()
    queue = f"{settings.bus.queue_prefix}.listener"
    received = await _listen(listener, queue)
    back = replica(settings, clock)  # the broker is back: any replica's relay sends them
    await back.bus.connect()
    back.outbox.start()
    try:
        ours = {event_id for _, _, event_id in await emitted(settings)}
        await eventually(lambda: {str(e.id) for e in received} >= ours)
        assert sorted(payload_of(e).scheduled_for for e in received if str(e.id) in ours) == [
            at("2025-01-05T04:01:00"), at("2025-01-05T04:01:00")]
        assert await back.outbox.pending() == 0
    finally:
        await back.stop()
        await back.bus.close()
        await listener.close()
        await delete_queues(settings, [queue])


async def test_auth_deactivates_expired_sessions_when_the_tick_reaches_it(settings, backend):
    clock = FakeClock(START)
    stack = Stack(settings, ["auth", "scheduler"])
    scheduler, auth = stack.runtimes["scheduler"], stack.runtimes["auth"]
    scheduler.context.clock = clock
    try:
        await stack.migrate()
        # Ticks from other tests' schedulers may reach this auth (the exchange is shared):
        # the tokens kept outlive any real time, the expired one is older than this tick.
        real_now = utcnow()
        async with auth.db.transaction() as session:
            session.add(UserRow(id="u1", username="alice", username_key="alice",
                                password_hash="-", active=True, created_at=START,
                                updated_at=START))
            await session.flush()  # the tokens refer to it
            for token_id, kind, expires in [
                ("expired", "session", at("2025-01-05T04:00:00")),
                ("fresh", "session", real_now + timedelta(days=30)),
                ("agent", "agent", None),
            ]:
                session.add(TokenRow(id=token_id, user_id="u1",
                                     token_hash=secrets.token_hex(32), kind=kind,
                                     host="h1" if kind == "agent" else None, active=True,
                                     created_at=START, expires_at=expires))
        await scheduler.context.tick(START)  # the jobs start at 04:00:30
        await stack.start()
        clock.set(at("2025-01-05T04:01:00"))
        assert "TokensExpiryDue" in {t.type_name() for t in await scheduler.context.tick()}
        [tick_id] = [i for kind, _, i in await emitted(settings) if kind == "TokensExpiryDue"]

        async def tokens():
            async with auth.db.sessions() as session:
                rows = (await session.scalars(select(TokenRow))).all()
                return {row.id: (row.active, row.deactivated_reason) for row in rows}

        async def handled():
            async with auth.db.sessions() as session:
                return await session.scalar(
                    select(auth_inbox.c.event_type).where(auth_inbox.c.event_id == tick_id))

        # This tick reached auth and was handled. (On RabbitMQ, other tests' TokensExpiryDue
        # reach this auth too and may deactivate the expired token first; on the in-process
        # bus nothing else can, so there this tick alone did it.)
        assert await eventually(handled) == "TokensExpiryDue"
        assert await tokens() == {"expired": (False, "expired"), "fresh": (True, None),
                                  "agent": (True, None)}
    finally:
        await stack.stop()
        if settings.database_url is not None:
            await Database(settings.database_url_for("auth")).drop_database()
        await delete_queues(settings, [f"{settings.bus.queue_prefix}.auth"])
