"""Event throughput through the whole delivery path: outbox table → relay → broker →
consumer → inbox table, each event handled with its inbox row in a transaction as every
service handler runs.

    .venv/bin/python bench/bus.py [--events 5000] [--per-transaction 1] [--producers 32]
                                  [--prefetch 128] [--batch-limit 100] [--embedded]
                                  [--loop uvloop|asyncio]

Default: MariaDB on 127.0.0.1:3306 and RabbitMQ on 127.0.0.1:5672, under throw-away names,
with two processes as two services would be: this one writes the events (``--producers``
concurrent transactions of ``--per-transaction`` events each) and runs the outbox relay; a
child process (``--consume``, started by this one) is the consumer with its own database.
``--embedded``: SQLite and the in-process bus, everything in this one process (the bus can't
cross processes). Prints one JSON line: events/s from the first write to the last event
handled, the time to write and to relay, each process's CPU seconds (``cpu_seconds_run``:
from the first write to the end, without start-up) and the load average before and after.
Both processes run on uvloop, as the services do where it is installed (`reclo serve`);
``--loop asyncio`` for asyncio's own loop (the figures before 2026-11-26 night).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika  # noqa: E402
from sqlalchemy import MetaData  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from shared.bus import create_bus  # noqa: E402
from shared.db import Database  # noqa: E402
from shared.events import TokensExpiryDue, utcnow  # noqa: E402
from shared.inbox import Dispatcher, inbox_table  # noqa: E402
from shared.http.loop import run as loop_run  # noqa: E402
from shared.logs import configure_logging  # noqa: E402
from shared.outbox import Outbox, outbox_table  # noqa: E402

metadata = MetaData()
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
MARIADB = "mysql+aiomysql://root@127.0.0.1:3306/"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
# The machine's load as the run begins (the figures depend on what else runs).
LOAD_BEFORE = [round(x, 2) for x in os.getloadavg()]


async def fresh_database(url: str) -> Database:
    db = Database(url)
    await db.create_database()
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return db


async def start_consumer(db: Database, bus, tag: str, batch_limit: int) -> Dispatcher:
    """The consumer service, whose handler has no effect of its own: what is measured is the
    delivery path and the inbox row each event commits."""

    async def on_tick(ctx, event):
        pass

    dispatcher = Dispatcher(service_name="consumer", runtime=None, db=db, bus=bus,
                            outbox=Outbox(outbox, db, bus), inbox=inbox,
                            handlers={TokensExpiryDue: on_tick}, queue_prefix=tag,
                            batch_limit=batch_limit)
    await dispatcher.start()
    return dispatcher


async def wait_handled(db: Database, events: int) -> None:
    """Until ``events`` inbox rows committed: the consumer's own record of what it handled."""
    while True:
        async with db.sessions() as session:
            if await session.scalar(select(func.count()).select_from(inbox)) >= events:
                return
        await asyncio.sleep(0.05)


async def produce(db: Database, relay: Outbox, events: int, per_transaction: int,
                  producers: int) -> None:
    """``producers`` concurrent writers, each committing ``per_transaction`` events at a time,
    as many request handlers of a service would."""
    transactions = [min(per_transaction, events - first)
                    for first in range(0, events, per_transaction)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for size in transactions:
        queue.put_nowait(size)

    async def writer() -> None:
        while not queue.empty():
            size = queue.get_nowait()
            async with db.transaction() as session:
                for _ in range(size):
                    await relay.add(session, TokensExpiryDue(scheduled_for=utcnow()))

    await asyncio.gather(*(writer() for _ in range(producers)))


async def wait_relayed(relay: Outbox) -> None:
    while await relay.pending():
        await asyncio.sleep(0.05)


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return round(usage.ru_utime + usage.ru_stime, 2)


async def run_embedded(args) -> dict:
    folder = tempfile.mkdtemp(prefix="reclo-bench-")
    producer_db = await fresh_database(f"sqlite+aiosqlite:///{folder}/producer.db")
    consumer_db = await fresh_database(f"sqlite+aiosqlite:///{folder}/consumer.db")
    bus = create_bus(None, prefetch=args.prefetch, retry_delays=(1.0,))
    await bus.connect()
    await start_consumer(consumer_db, bus, "bench", args.batch_limit)
    relay = Outbox(outbox, producer_db, bus, poll_seconds=0.05)
    relay.start()
    cpu_before = cpu_seconds(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await produce(producer_db, relay, args.events, args.per_transaction, args.producers)
    written = time.perf_counter() - started
    await wait_relayed(relay)
    relayed = time.perf_counter() - started
    await asyncio.wait_for(wait_handled(consumer_db, args.events), timeout=600)
    elapsed = time.perf_counter() - started
    cpu_run = cpu_seconds(resource.RUSAGE_SELF) - cpu_before
    await relay.stop()
    await bus.close()
    await producer_db.dispose()
    await consumer_db.dispose()
    return {"cpu_seconds": cpu_seconds(resource.RUSAGE_SELF),
            "cpu_seconds_run": round(cpu_run, 2),
            **figures(args, "sqlite+in-process", elapsed, written, relayed)}


async def run_two_processes(args) -> dict:
    tag = f"benchbus{os.getpid()}"
    producer_db = await fresh_database(f"{MARIADB}{tag}_producer")
    bus = create_bus(RABBITMQ, prefetch=args.prefetch, retry_delays=(1.0,),
                     exchange=f"{tag}.events")
    await bus.connect()
    consumer = subprocess.Popen(
        [sys.executable, __file__, "--consume", tag, "--events", str(args.events),
         "--prefetch", str(args.prefetch), "--batch-limit", str(args.batch_limit),
         "--loop", args.loop],
        stdout=subprocess.PIPE, text=True)
    try:
        if consumer.stdout.readline().strip() != "ready":
            raise RuntimeError("the consumer process did not start")
        relay = Outbox(outbox, producer_db, bus, poll_seconds=0.05)
        relay.start()
        cpu_before = cpu_seconds(resource.RUSAGE_SELF)
        started = time.time()
        await produce(producer_db, relay, args.events, args.per_transaction, args.producers)
        written = time.time() - started
        await wait_relayed(relay)
        relayed = time.time() - started
        await relay.stop()
        producer_cpu = cpu_seconds(resource.RUSAGE_SELF)
        producer_cpu_run = producer_cpu - cpu_before
        report = json.loads(await asyncio.to_thread(consumer.stdout.readline))
        consumer.wait(timeout=60)
    finally:
        if consumer.poll() is None:
            consumer.kill()
        await bus.close()
        await producer_db.drop_database()
        await delete_topology(tag)
    return {"cpu_seconds": {"producer": producer_cpu, "consumer": report["cpu_seconds"]},
            "cpu_seconds_run": {"producer": round(producer_cpu_run, 2),
                                "consumer": report["cpu_seconds_run"]},
            **figures(args, "mariadb+rabbitmq", report["finished"] - started, written,
                      relayed)}


async def consume(args) -> None:
    """The child process: handle ``--events`` events, then say when the last was handled."""
    tag = args.consume
    db = await fresh_database(f"{MARIADB}{tag}_consumer")
    bus = create_bus(RABBITMQ, prefetch=args.prefetch, retry_delays=(1.0,),
                     exchange=f"{tag}.events")
    await bus.connect()
    await start_consumer(db, bus, tag, args.batch_limit)
    cpu_ready = cpu_seconds(resource.RUSAGE_SELF)
    print("ready", flush=True)
    await asyncio.wait_for(wait_handled(db, args.events), timeout=600)
    finished = time.time()
    cpu_run = cpu_seconds(resource.RUSAGE_SELF) - cpu_ready
    await bus.close()
    await db.drop_database()
    print(json.dumps({"finished": finished, "cpu_seconds": cpu_seconds(resource.RUSAGE_SELF),
                      "cpu_seconds_run": round(cpu_run, 2)}),
          flush=True)


async def delete_topology(tag: str) -> None:
    connection = await aio_pika.connect(RABBITMQ)
    try:
        channel = await connection.channel()
        for name in (f"{tag}.consumer", f"{tag}.consumer.dead", f"{tag}.consumer.retry.1000ms"):
            await channel.queue_delete(name, if_unused=False, if_empty=False)
        await channel.exchange_delete(f"{tag}.events")
    finally:
        await connection.close()


def figures(args, mode: str, elapsed: float, written: float, relayed: float) -> dict:
    return {"mode": mode, "events": args.events, "per_transaction": args.per_transaction,
            "producers": args.producers, "prefetch": args.prefetch,
            "batch_limit": args.batch_limit, "loop": args.loop, "seconds": round(elapsed, 2),
            "events_per_second": round(args.events / elapsed),
            "write_seconds": round(written, 2), "relayed_seconds": round(relayed, 2),
            "load_average_before": LOAD_BEFORE,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedded", action="store_true")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--per-transaction", type=int, default=1,
                        help="events each producer transaction commits")
    parser.add_argument("--producers", type=int, default=32,
                        help="producer transactions in flight at once")
    parser.add_argument("--prefetch", type=int, default=128)
    parser.add_argument("--batch-limit", type=int, default=100,
                        help="most events the consumer handles per transaction (1: no batching)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop of both processes (services run on uvloop where installed)")
    parser.add_argument("--consume", metavar="TAG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("warning")
    run = loop_run if args.loop == "uvloop" else asyncio.run
    if args.consume:
        run(consume(args))
    elif args.embedded:
        print(json.dumps(run(run_embedded(args))))
    else:
        print(json.dumps(run(run_two_processes(args))))


if __name__ == "__main__":
    main()
