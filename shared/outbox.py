"""The transactional outbox (DESIGN.md §2).

A service adds its events to its own ``outbox`` table in the transaction that changes its
state, so an event exists if and only if the change committed. The relay publishes unsent
rows in order, with publisher confirms, and only then marks them sent: a broker outage
delays events, never drops them; a crash between publish and mark re-publishes, which the
consumers' inbox absorbs.

Order is that of the rows: transactions in commit order, and a transaction's events in the
order added, except that an event added inside a savepoint is written at once and so goes
before the enclosing transaction's events held for its commit. No consumer relies on the
order of two events of one transaction (each handler is idempotent and order-free).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event as sa_event,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from shared.bus import Bus
from shared.bus.port import Outgoing
from shared.db import Database, UTCDateTime
from shared.events import Envelope, Event, envelope_for, utcnow
from shared.logs import get_logger

log = get_logger(__name__)

# Rows published per transaction of the relay: large enough to keep up with bursts, small
# enough that a slow broker doesn't hold row locks for long.
RELAY_BATCH = 200


def outbox_table(metadata: MetaData) -> Table:
    return Table(
        "outbox",
        metadata,
        Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
               autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("routing_key", String(200), nullable=False),
        Column("envelope", Text, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("sent_at", UTCDateTime, nullable=True, index=True),
    )


# In a session's ``info``: the rows each outbox holds for the commit, and the outboxes the
# transaction wrote to (whose relays to wake once it committed).
_HELD = "outbox-held"
_WROTE = "outbox-wrote"


def _write_held_rows(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released, not the commit: a later rollback would take them
    held = session.info.pop(_HELD, None)
    if held:
        for outbox, rows in held.items():
            # Inside the async session's greenlet: the statement is awaited there.
            session.execute(outbox.table.insert(), rows)
        session.info.setdefault(_WROTE, set()).update(held)


def _wake_relays(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: the events are not committed yet
    for outbox in session.info.pop(_WROTE, ()):
        outbox.wake()


def _forget_held_rows(session: Session, ended: SessionTransaction) -> None:
    # Whatever ends the root transaction (commit, rollback, even one that never reached
    # the database, close) ends what it held; after a commit they were written already.
    # A savepoint's end keeps them: they were added outside it.
    if ended.parent is None:
        session.info.pop(_HELD, None)
        session.info.pop(_WROTE, None)


# Once for every session of the process (listening per session costs more than the insert
# it saves); sessions without outbox rows pay a dictionary lookup per commit.
sa_event.listen(Session, "before_commit", _write_held_rows)
sa_event.listen(Session, "after_commit", _wake_relays)
sa_event.listen(Session, "after_transaction_end", _forget_held_rows)


class Outbox:
    def __init__(self, table: Table, db: Database, bus: Bus, *, poll_seconds: float = 1.0):
        self.table = table
        self.db = db
        self.bus = bus
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def add(
        self,
        session: AsyncSession,
        event: Event,
        *,
        causation: Envelope | None = None,
        correlation_id: uuid.UUID | None = None,
    ) -> Envelope:
        """Record ``event`` in the caller's transaction; the relay publishes it after commit.

        The row is written just before the transaction commits, together with the other
        events the transaction added (one multi-row insert instead of a round trip per
        event), so the transaction itself does not see it in the table. Inside a savepoint
        it is written at once, so that rolling the savepoint back takes it along."""
        envelope = envelope_for(event, causation=causation, correlation_id=correlation_id)
        row = {"event_id": str(envelope.id), "routing_key": envelope.routing_key,
               "envelope": envelope.model_dump_json(), "created_at": envelope.occurred_at}
        info = session.sync_session.info
        if not session.in_transaction():
            # Begun now (no database work yet), so that whatever ends it ends the event.
            session.sync_session.begin()
        if session.in_nested_transaction():
            await session.execute(self.table.insert(), [row])
            info.setdefault(_WROTE, set()).add(self)
        else:
            info.setdefault(_HELD, {}).setdefault(self, []).append(row)
        return envelope

    def wake(self) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch of unsent events; returns how many were published."""
        async with self.db.transaction(read_committed=True) as session:
            query = (
                select(self.table.c.seq, self.table.c.event_id, self.table.c.routing_key,
                       self.table.c.envelope)
                .where(self.table.c.sent_at.is_(None))
                .order_by(self.table.c.seq)
                .limit(RELAY_BATCH)
            )
            if self.db.supports_row_locks:
                # Several replicas may relay at once; each takes rows the others don't hold.
                query = query.with_for_update(skip_locked=True)
            rows = (await session.execute(query)).all()
            if not rows:
                return 0
            # All publishes of a batch are in flight at once: a broker confirms persistent
            # messages only after its (batched) disk sync, so one at a time would cap the
            # relay at a few hundred events per second.
            results = await self.bus.publish_many(
                [Outgoing(row.routing_key, row.envelope.encode(), row.event_id) for row in rows])
            sent = [row.seq for row, result in zip(rows, results, strict=True) if result is None]
            # Mark what the broker confirmed, even if other publishes of the batch failed.
            if sent:
                await session.execute(
                    update(self.table).where(self.table.c.seq.in_(sent)).values(sent_at=utcnow())
                )
            failed = next((r for r in results if r is not None), None)
            if failed is not None and not sent:
                raise failed
            return len(sent)

    async def pending(self) -> int:
        async with self.db.sessions() as session:
            return await session.scalar(
                select(func.count()).select_from(self.table)
                .where(self.table.c.sent_at.is_(None))
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()  # before reading, so a commit during the read wakes us again
            try:
                published = await self.relay_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                published = 0
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("outbox relay failed, will retry", error=str(exc) or
                                type(exc).__name__, failures=failures)
            if published:
                continue  # there may be more behind this batch
            backoff = min(self.poll_seconds * (2 ** min(failures, 5)), 30.0)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the
            # cancellation that stop() sends when the wake comes at the same moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
