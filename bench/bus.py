"""Event throughput through the whole delivery path: outbox table → relay → broker →
consumer → inbox table (one transaction per event, as every handler runs).

    .venv/bin/python bench/bus.py [--embedded] [--events 5000]

Default: MariaDB on 127.0.0.1:3306 and RabbitMQ on 127.0.0.1:5672, under throw-away names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika  # noqa: E402
from sqlalchemy import MetaData  # noqa: E402

from shared.bus import create_bus  # noqa: E402
from shared.db import Database  # noqa: E402
from shared.events import TokensExpiryDue, utcnow  # noqa: E402
from shared.inbox import Dispatcher, inbox_table  # noqa: E402
from shared.logs import configure_logging  # noqa: E402
from shared.outbox import Outbox, outbox_table  # noqa: E402

metadata = MetaData()
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)


async def run(embedded: bool, events: int, batch: int) -> dict:
    tag = f"benchbus{os.getpid()}"
    if embedded:
        folder = tempfile.mkdtemp(prefix="reclo-bench-")
        db = Database(f"sqlite+aiosqlite:///{folder}/bench.db")
        bus_url = None
    else:
        db = Database(f"mysql+aiomysql://root@127.0.0.1:3306/{tag}")
        bus_url = "amqp://guest:guest@127.0.0.1:5672/"
    await db.create_database()
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    bus = create_bus(bus_url, prefetch=64, retry_delays=(1.0,), exchange=f"{tag}.events")
    await bus.connect()
    relay = Outbox(outbox, db, bus, poll_seconds=0.05)
    done = asyncio.Event()
    handled = 0

    async def on_tick(ctx, event):
        nonlocal handled
        handled += 1
        if handled == events:
            done.set()

    dispatcher = Dispatcher(service_name="consumer", runtime=None, db=db, bus=bus, outbox=relay,
                            inbox=inbox, handlers={TokensExpiryDue: on_tick}, queue_prefix=tag)
    await dispatcher.start()
    relay.start()
    started = time.perf_counter()
    for first in range(0, events, batch):
        async with db.transaction() as session:
            for _ in range(min(batch, events - first)):
                await relay.add(session, TokensExpiryDue(scheduled_for=utcnow()))
    written = time.perf_counter() - started
    await asyncio.wait_for(done.wait(), timeout=600)
    elapsed = time.perf_counter() - started
    await relay.stop()
    await bus.close()
    if embedded:
        await db.dispose()
    else:
        await db.drop_database()
        connection = await aio_pika.connect(bus_url)
        channel = await connection.channel()
        for name in (f"{tag}.consumer", f"{tag}.consumer.dead", f"{tag}.consumer.retry.1000ms"):
            await channel.queue_delete(name, if_unused=False, if_empty=False)
        await channel.exchange_delete(f"{tag}.events")
        await connection.close()
    return {"mode": "sqlite+in-process" if embedded else "mariadb+rabbitmq",
            "events": events, "seconds": round(elapsed, 2),
            "events_per_second": round(events / elapsed), "write_seconds": round(written, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedded", action="store_true")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    configure_logging("warning")
    print(json.dumps(asyncio.run(run(args.embedded, args.events, args.batch))))


if __name__ == "__main__":
    main()
