import aio_pika
import pytest

from shared.bus import create_bus

RETRY_DELAYS = (0.05, 0.1)


@pytest.fixture(params=["inprocess", "rabbitmq"])
async def bus(request, unique):
    """Each conformance test runs once per adapter; queues are removed afterwards."""
    url = request.getfixturevalue("rabbitmq_url") if request.param == "rabbitmq" else None
    bus = create_bus(url, prefetch=4, retry_delays=RETRY_DELAYS, exchange=f"test.{unique}.events")
    await bus.connect()
    yield bus
    await bus.close()
    if url:
        await delete_queues(url, f"test.{unique}")


async def delete_queues(url: str, prefix: str) -> None:
    """Queues of one test all start with its prefix: delete them and their retry/dead ones."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for suffix in ("a", "b", "c"):
            name = f"{prefix}.{suffix}"
            for q in [name, f"{name}.dead",
                      *(f"{name}.retry.{int(d * 1000)}ms" for d in RETRY_DELAYS)]:
                await channel.queue_delete(q, if_unused=False, if_empty=False)
        await channel.exchange_delete(f"{prefix}.events")
    finally:
        await connection.close()
