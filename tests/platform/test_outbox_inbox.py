"""The transactional outbox and the inbox (DESIGN.md §2) on real databases and buses: an
event leaves only if its change committed, survives a broker outage, and has one effect
however often it is delivered."""

import asyncio
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from shared.bus import create_bus
from shared.bus.port import Outgoing
from shared.db import Database
from shared.events import TokensExpiryDue, envelope_for, utcnow
from shared.inbox import Dispatcher, inbox_table
from shared.outbox import Outbox, outbox_table
from tests.harness import delete_queues, settings_for
from tests.support import TcpProxy, eventually

metadata = MetaData()
notes = Table("notes", metadata, Column("id", Integer, primary_key=True),
              Column("text", String(100)))
effects = Table("effects", metadata, Column("event_id", String(36), primary_key=True),
                Column("count", Integer))
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)


class World:
    """One producer/consumer pair on a database and a bus, as a service would have."""

    def __init__(self, db, bus, queue):
        self.db, self.bus, self.queue = db, bus, queue
        self.outbox = Outbox(outbox, db, bus, poll_seconds=0.1)
        self.deliveries = 0

    async def count_effect(self, ctx, event):
        key = str(ctx.envelope.id)
        row = await ctx.session.scalar(select(effects.c.count).where(effects.c.event_id == key))
        if row is None:
            await ctx.session.execute(effects.insert().values(event_id=key, count=1))
        else:
            await ctx.session.execute(
                effects.update().where(effects.c.event_id == key).values(count=row + 1))

    async def start_consumer(self):
        async def counting(envelope):
            self.deliveries += 1
            await dispatcher.handle(envelope)

        dispatcher = Dispatcher(service_name="test", runtime=None, db=self.db, bus=self.bus,
                                outbox=self.outbox, inbox=inbox,
                                handlers={TokensExpiryDue: self.count_effect},
                                queue_prefix=self.queue)
        patterns = [TokensExpiryDue.routing_key()]
        await self.bus.subscribe(dispatcher.queue, patterns, counting)

    async def effect_counts(self):
        async with self.db.sessions() as s:
            return dict((await s.execute(select(effects.c.event_id, effects.c.count))).all())


@pytest.fixture(params=["embedded", "mariadb"])
async def world(request, tmp_path, unique):
    settings = settings_for(request.param, tmp_path, unique)
    db = Database(settings.database_url_for("outboxtest"))
    await db.create_database()
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    bus_url = settings.bus_url.get_secret_value() if settings.bus_url else None
    bus = create_bus(bus_url, prefetch=4, retry_delays=(0.05,), exchange=settings.bus.exchange)
    await bus.connect()
    w = World(db, bus, settings.bus.queue_prefix)
    w.settings = settings
    yield w
    await w.outbox.stop()
    await bus.close()
    if not db.is_sqlite:
        await db.drop_database()
    else:
        await db.dispose()
    await delete_queues(settings.model_copy(update={"bus": settings.bus.model_copy(
        update={"retry_delays": (0.05,)})}), ["test"])


def tick():
    return TokensExpiryDue(scheduled_for=utcnow())


async def test_event_leaves_only_if_its_change_committed(world):
    await world.start_consumer()
    world.outbox.start()
    with pytest.raises(RuntimeError):
        async with world.db.transaction() as session:
            await session.execute(notes.insert().values(text="rolled back"))
            await world.outbox.add(session, tick())
            raise RuntimeError("the change failed")
    async with world.db.transaction() as session:
        await session.execute(notes.insert().values(text="kept"))
        kept = await world.outbox.add(session, tick())
    await eventually(lambda: world.deliveries >= 1)
    await asyncio.sleep(0.3)
    assert await world.effect_counts() == {str(kept.id): 1}
    assert world.deliveries == 1
    assert await world.outbox.pending() == 0


async def outbox_ids(world):
    async with world.db.sessions() as s:
        return list((await s.scalars(select(outbox.c.event_id).order_by(outbox.c.seq))).all())


async def test_events_of_a_transaction_are_written_together_at_its_commit(world):
    async with world.db.transaction() as session:
        added = [await world.outbox.add(session, tick()) for _ in range(5)]
        # Held until the commit, then one multi-row insert (shared/outbox.py).
        assert await session.scalar(select(func.count()).select_from(outbox)) == 0
    assert await outbox_ids(world) == [str(e.id) for e in added]


async def test_event_of_a_rolled_back_transaction_stays_out_of_the_sessions_next_one(world):
    """The rollback of a transaction that never reached the database (nothing but the
    held event) still forgets the event."""
    async with world.db.sessions() as session:
        with pytest.raises(RuntimeError):
            async with session.begin():
                await world.outbox.add(session, tick())
                raise RuntimeError("the change failed")
        async with session.begin():
            kept = await world.outbox.add(session, tick())
    assert await outbox_ids(world) == [str(kept.id)]


async def test_rolled_back_savepoint_takes_its_event_along(world):
    async with world.db.transaction() as session:
        before = await world.outbox.add(session, tick())
        with pytest.raises(RuntimeError):
            async with session.begin_nested():
                await world.outbox.add(session, tick())
                raise RuntimeError("the inner change failed")
        after = await world.outbox.add(session, tick())
    assert sorted(await outbox_ids(world)) == sorted([str(before.id), str(after.id)])


async def test_an_event_added_outside_a_savepoint_survives_the_savepoints_end(world):
    """Releasing a savepoint is not the commit: the held event must not be written inside
    it, or rolling back an enclosing savepoint (or a failed release) would take it."""
    async with world.db.transaction() as session:
        outer = await world.outbox.add(session, tick())
        with pytest.raises(RuntimeError):
            async with session.begin_nested():
                async with session.begin_nested():
                    await session.execute(notes.insert().values(text="inner"))
                raise RuntimeError("the enclosing savepoint fails after the inner one ended")
    async with world.db.transaction() as session:
        await session.execute(notes.insert().values(id=7, text="taken"))
    async with world.db.transaction() as session:
        duplicate = await world.outbox.add(session, tick())
        with pytest.raises(Exception):  # the usual "insert unless present" savepoint
            async with session.begin_nested():
                await session.execute(notes.insert().values(id=7, text="again"))
    assert await outbox_ids(world) == [str(outer.id), str(duplicate.id)]


async def test_a_rollback_before_any_database_work_still_forgets_the_event(world):
    async with world.db.sessions() as session:
        await world.outbox.add(session, tick())
        await session.rollback()  # nothing reached the database
        kept = await world.outbox.add(session, tick())
        await session.commit()
    async with world.db.sessions() as session:
        await world.outbox.add(session, tick())
        await session.close()
        await session.commit()
    assert await outbox_ids(world) == [str(kept.id)]


async def test_redelivered_event_has_one_effect(world):
    await world.start_consumer()
    envelope = envelope_for(tick())
    for _ in range(3):
        await world.bus.publish(envelope)
    await eventually(lambda: world.deliveries == 3)
    await asyncio.sleep(0.2)
    assert await world.effect_counts() == {str(envelope.id): 1}


async def test_event_committed_while_broker_unreachable_arrives_once(mariadb_url, rabbitmq_url,
                                                                    tmp_path, unique):
    """Cut the broker connection between commit and publish; restore it; the event arrives
    exactly once at the consumer's effect."""
    settings = settings_for("mariadb", tmp_path, unique)
    db = Database(settings.database_url_for("outboxtest"))
    await db.create_database()
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    broker = urlsplit(rabbitmq_url)
    proxy = TcpProxy(broker.hostname, broker.port or 5672)
    await proxy.start()
    proxied = urlunsplit(broker._replace(netloc=f"{broker.username}:{broker.password}"
                                                f"@127.0.0.1:{proxy.port}"))
    producer_bus = create_bus(proxied, prefetch=4, retry_delays=(0.05,),
                              exchange=settings.bus.exchange)
    consumer_bus = create_bus(rabbitmq_url, prefetch=4, retry_delays=(0.05,),
                              exchange=settings.bus.exchange)
    await producer_bus.connect()
    await consumer_bus.connect()
    producer = World(db, producer_bus, settings.bus.queue_prefix)
    consumer = World(db, consumer_bus, settings.bus.queue_prefix)
    try:
        await consumer.start_consumer()
        await proxy.cut()
        # Meanwhile a batch fails rather than waiting for the reconnect (the relay would
        # hold its transaction and row locks all along).
        outcome = await asyncio.wait_for(producer_bus.publish_many(
            [Outgoing(tick().routing_key, b"{}")] * 3), timeout=20)
        assert len(outcome) == 3 and all(isinstance(r, Exception) for r in outcome)
        async with db.transaction() as session:
            await session.execute(notes.insert().values(text="during the outage"))
            sent = await producer.outbox.add(session, tick())
        producer.outbox.start()
        await asyncio.sleep(1.5)
        assert await producer.outbox.pending() == 1
        assert consumer.deliveries == 0
        await proxy.restore()
        await eventually(lambda: consumer.deliveries >= 1, timeout=30)
        async def all_sent():
            return await producer.outbox.pending() == 0

        await eventually(all_sent, timeout=30)
        await asyncio.sleep(0.5)
        assert await consumer.effect_counts() == {str(sent.id): 1}
    finally:
        await producer.outbox.stop()
        await proxy.cut()
        await producer_bus.close()
        await consumer_bus.close()
        await db.drop_database()
        await delete_queues(settings.model_copy(update={"bus": settings.bus.model_copy(
            update={"retry_delays": (0.05,)})}), ["test"])


async def test_two_relays_publish_each_event_once(mariadb_url, rabbitmq_url, tmp_path, unique):
    """Replicas relay the same outbox concurrently; row locks keep them off each other's rows."""
    settings = settings_for("mariadb", tmp_path, unique)
    db = Database(settings.database_url_for("outboxtest"))
    await db.create_database()
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    bus = create_bus(rabbitmq_url, prefetch=50, retry_delays=(0.05,),
                     exchange=settings.bus.exchange)
    await bus.connect()
    world = World(db, bus, settings.bus.queue_prefix)
    second = Outbox(outbox, db, bus, poll_seconds=0.05)
    try:
        await world.start_consumer()
        async with db.transaction() as session:
            for _ in range(300):
                await world.outbox.add(session, tick())
        await asyncio.gather(world.outbox.relay_once(), second.relay_once(),
                             world.outbox.relay_once(), second.relay_once())
        world.outbox.start()
        second.start()
        await eventually(lambda: world.deliveries >= 300, timeout=30)
        await asyncio.sleep(0.5)
        assert world.deliveries == 300
        counts = await world.effect_counts()
        assert len(counts) == 300 and set(counts.values()) == {1}
        async with db.sessions() as s:
            assert await s.scalar(select(func.count()).select_from(outbox)
                                  .where(outbox.c.sent_at.is_(None))) == 0
    finally:
        await world.outbox.stop()
        await second.stop()
        await bus.close()
        await db.drop_database()
        await delete_queues(settings.model_copy(update={"bus": settings.bus.model_copy(
            update={"retry_delays": (0.05,)})}), ["test"])


# Deliveries that arrive together are handled in one transaction (shared/inbox.py).

class Batches:
    """Handlers for the batch tests: counts effects in the database like ``World``, fails
    for chosen events, and counts the consumer's commits."""

    def __init__(self, world):
        self.world = world
        self.failing: dict[str, Exception] = {}
        self.commits = 0

    async def handler(self, ctx, event):
        await self.world.count_effect(ctx, event)
        error = self.failing.get(str(ctx.envelope.id))
        if error is not None:
            raise error

    def dispatcher(self):
        from sqlalchemy import event as sa_event

        def committed(_conn):
            self.commits += 1

        sa_event.listen(self.world.db.engine.sync_engine, "commit", committed)
        return Dispatcher(service_name="test", runtime=None, db=self.world.db,
                          bus=self.world.bus, outbox=self.world.outbox, inbox=inbox,
                          handlers={TokensExpiryDue: self.handler},
                          queue_prefix=self.world.queue)


async def test_deliveries_arriving_together_share_one_commit(world):
    batches = Batches(world)
    dispatcher = batches.dispatcher()
    envelopes = [envelope_for(tick()) for _ in range(20)]
    await asyncio.gather(*(dispatcher.handle(e) for e in envelopes))
    assert await world.effect_counts() == {str(e.id): 1 for e in envelopes}
    assert batches.commits < len(envelopes)


async def test_failing_handler_in_a_batch_fails_alone(world):
    from shared.events import MalformedMessage

    batches = Batches(world)
    dispatcher = batches.dispatcher()
    envelopes = [envelope_for(tick()) for _ in range(10)]
    broken, malformed = envelopes[3], envelopes[7]
    batches.failing[str(broken.id)] = RuntimeError("database briefly away")
    batches.failing[str(malformed.id)] = MalformedMessage("payload makes no sense")
    results = await asyncio.gather(*(dispatcher.handle(e) for e in envelopes),
                                   return_exceptions=True)
    assert isinstance(results[3], RuntimeError)
    assert isinstance(results[7], MalformedMessage)
    assert [r for i, r in enumerate(results) if i not in (3, 7)] == [None] * 8
    # The others committed once each (their rolled-back first run left nothing); the
    # failing ones left no effect and no inbox row, so their retry will run them.
    assert await world.effect_counts() == {
        str(e.id): 1 for e in envelopes if e not in (broken, malformed)}
    batches.failing.clear()
    await dispatcher.handle(broken)
    assert (await world.effect_counts())[str(broken.id)] == 1


async def test_same_event_twice_in_a_batch_has_one_effect(world):
    batches = Batches(world)
    dispatcher = batches.dispatcher()
    twice = envelope_for(tick())
    others = [envelope_for(tick()) for _ in range(5)]
    await asyncio.gather(*(dispatcher.handle(e) for e in [twice, *others, twice, twice]))
    assert await world.effect_counts() == {str(e.id): 1 for e in [twice, *others]}


async def test_failing_event_among_many_is_dead_lettered_and_the_rest_handled(world):
    """Through the bus (both adapters): a burst with one event whose handler always fails."""
    batches = Batches(world)
    dispatcher = batches.dispatcher()
    envelopes = [envelope_for(tick()) for _ in range(30)]
    broken = envelopes[11]
    batches.failing[str(broken.id)] = ValueError("no such host 42")
    await world.bus.subscribe(dispatcher.queue, [TokensExpiryDue.routing_key()],
                              dispatcher.handle)
    for envelope in envelopes:
        await world.bus.publish(envelope)
    letters = []

    async def dead():
        letters.extend(await world.bus.dead_letters(dispatcher.queue))
        return letters

    await eventually(dead)
    assert [letter.reason for letter in letters] == ["ValueError: no such host 42"]
    assert letters[0].attempts == 2
    assert await world.effect_counts() == {str(e.id): 1 for e in envelopes if e is not broken}


async def test_a_batch_under_way_when_the_service_stops_rolls_back_and_frees_the_database(world):
    """Closing the bus cancels only the consumers waiting on a batch; stopping the
    dispatcher ends the batch itself, before the service's database is disposed."""
    batches = Batches(world)
    dispatcher = batches.dispatcher()
    entered, release = asyncio.Event(), asyncio.Event()
    finished = []

    async def slow(ctx, event):
        await world.count_effect(ctx, event)
        entered.set()
        await release.wait()
        finished.append(ctx.envelope.id)

    dispatcher.handlers[TokensExpiryDue.type_name()] = (TokensExpiryDue, slow)
    envelopes = [envelope_for(tick()) for _ in range(3)]
    consumers = [asyncio.create_task(dispatcher.handle(e)) for e in envelopes]
    await asyncio.wait_for(entered.wait(), 10)
    for consumer in consumers:  # what closing the bus does
        consumer.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)

    await dispatcher.stop()
    release.set()
    await asyncio.sleep(0.1)
    assert finished == []  # the handler did not outlive the stop
    # Its transaction rolled back and let go of the database: a writer gets in at once
    # (SQLite has one writer; a lingering batch would hold it).
    async with world.db.transaction() as session:
        await session.execute(effects.insert().values(event_id="after", count=1))
        assert await session.scalar(select(func.count()).select_from(inbox)) == 0
    assert await world.effect_counts() == {"after": 1}
