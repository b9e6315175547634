"""RabbitMQ acknowledges handled deliveries several with one frame (shared/bus/rabbitmq.py,
``_Acknowledger``): never one whose handler has not returned. What a crash leaves is what
shows it: after the connection dies, only the unfinished deliveries come again."""

import asyncio

import pytest

from shared.bus import create_bus
from shared.events import TokensExpiryDue, envelope_for, utcnow
from tests.bus.conftest import RETRY_DELAYS, delete_queues
from tests.support import eventually

PATTERN = "scheduler.tokens_expiry_due"


def tick():
    return envelope_for(TokensExpiryDue(scheduled_for=utcnow()))


@pytest.fixture
async def buses(rabbitmq_url, unique):
    """Connected buses made on demand; closed and their queues removed afterwards."""
    made = []

    async def make():
        bus = create_bus(rabbitmq_url, prefetch=20, retry_delays=RETRY_DELAYS,
                         exchange=f"test.{unique}.events")
        await bus.connect()
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.close()
    await delete_queues(rabbitmq_url, f"test.{unique}")


async def redelivered_after_a_crash(buses, queue):
    """Subscribe anew, as a restarted consumer would; the ids it is given."""
    again = []

    async def record(env):
        again.append(env.id)

    await (await buses()).subscribe(queue, [PATTERN], record)
    await asyncio.sleep(0.5)  # whatever the broker still holds arrives by then
    return again


async def test_delivery_still_being_handled_is_not_covered_by_the_acks_after_it(buses, unique):
    queue = f"test.{unique}.a"
    sent = [tick() for _ in range(6)]
    slow_ids = {sent[0].id, sent[3].id}
    handled, release = [], asyncio.Event()

    async def handler(env):
        if env.id in slow_ids:
            await release.wait()  # never, here: the process dies first
        handled.append(env.id)

    consumer = await buses()
    await consumer.subscribe(queue, [PATTERN], handler)
    for envelope in sent:
        await consumer.publish(envelope)
    await eventually(lambda: len(handled) == 4)
    await asyncio.sleep(0.3)  # the acknowledgements are written before the close frame
    await consumer.close()

    again = await redelivered_after_a_crash(buses, queue)
    assert sorted(again) == sorted(slow_ids)


async def test_retried_and_dead_lettered_deliveries_among_handled_ones(buses, unique):
    """Deliveries acked on their own (moved to a retry or the dead queue) in between
    handled ones: every delivery settles once, none comes again after a crash."""
    queue = f"test.{unique}.a"
    sent = [tick() for _ in range(10)]
    flaky_id, broken_id = sent[2].id, sent[6].id
    attempts: dict = {}

    async def handler(env):
        attempts[env.id] = attempts.get(env.id, 0) + 1
        if env.id == broken_id or (env.id == flaky_id and attempts[env.id] == 1):
            raise RuntimeError("not this time")

    consumer = await buses()
    await consumer.subscribe(queue, [PATTERN], handler)
    for envelope in sent:
        await consumer.publish(envelope)
    letters = []

    async def dead():
        letters.extend(await consumer.dead_letters(queue))
        return letters

    await eventually(dead)
    await eventually(lambda: attempts.get(flaky_id) == 2)
    await asyncio.sleep(0.3)
    await consumer.close()

    assert len(letters) == 1 and letters[0].attempts == 1 + len(RETRY_DELAYS)
    assert attempts == {e.id: 1 for e in sent} | {flaky_id: 2,
                                                  broken_id: 1 + len(RETRY_DELAYS)}
    assert await redelivered_after_a_crash(buses, queue) == []
