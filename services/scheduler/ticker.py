"""The scheduler's engine: each tick, in one transaction, it locks the jobs' rows, emits
every tick that is owed through the outbox and records it as emitted.

Exactly once across replicas: on MariaDB the rows are read ``FOR UPDATE``, so a replica that
comes second waits for the first to commit and then finds the tick already recorded; on
SQLite every transaction is ``BEGIN IMMEDIATE``, so ticks serialize the same way. The event
and the record of it commit together: a crash emits both or neither.

The clock is a plain callable so tests can drive time; the loop only decides when to call
:meth:`Ticker.tick` again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from services.scheduler.domain import Job, settled_until
from services.scheduler.tables import schedules
from shared.db import Database
from shared.events import Tick, utcnow
from shared.logs import get_logger
from shared.outbox import Outbox

log = get_logger(__name__)

Clock = Callable[[], datetime]

# After a failed tick (database unreachable) the loop retries sooner than its usual sleep
# bound, doubling from this up to that bound.
FIRST_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class ScheduleView:
    """One job as operators see it (``GET /internal/schedules``)."""

    job: str
    cron: str | None
    enabled: bool
    since: datetime | None
    last_scheduled_for: datetime | None
    next_scheduled_for: datetime | None


class Ticker:
    def __init__(self, *, db: Database, outbox: Outbox, jobs: Sequence[Job],
                 off: Sequence[str] = (), clock: Clock = utcnow,
                 max_sleep_seconds: float = 30.0) -> None:
        self.db = db
        self.outbox = outbox
        self.jobs = list(jobs)
        self.off = list(off)
        self.clock = clock
        self.max_sleep_seconds = max_sleep_seconds
        # Jobs known to have their row; rows are only ever added, so this only grows.
        self._rows_exist: set[str] = set()

    def now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the scheduler's clock must give timezone-aware UTC times")
        return now.astimezone(UTC)

    async def tick(self, now: datetime | None = None) -> list[Tick]:
        """Emit every tick owed at ``now`` (default: the clock), each at most once however
        many replicas call this at the same moment; returns the ticks this call emitted."""
        now = self.now() if now is None else now.astimezone(UTC)
        await self._ensure_rows(now)
        emitted: list[Tick] = []
        running = {job.name: job for job in self.jobs}
        async with self.db.transaction() as session:
            query = (select(schedules)
                     .where(schedules.c.job.in_([*running, *self.off]))
                     .order_by(schedules.c.job))  # one lock order for every replica
            if self.db.supports_row_locks:
                query = query.with_for_update()
            for row in (await session.execute(query)).all():
                job = running.get(row.job)
                cron = job.cron if job is not None else None
                if row.cron != cron:
                    # Switched on, off or to another schedule: it starts again from now, so
                    # the old schedule's past occurrences are not emitted under the new one.
                    await session.execute(
                        update(schedules).where(schedules.c.job == row.job)
                        .values(cron=cron, since=now, updated_at=now))
                    log.info("schedule changed", job=row.job, cron=cron, was=row.cron)
                    continue
                if job is None:
                    continue
                due = job.due(settled_until=settled_until(row.since, row.last_scheduled_for),
                              now=now)
                if due is None:
                    continue
                event = job.event(scheduled_for=due)
                await self.outbox.add(session, event)
                await session.execute(
                    update(schedules).where(schedules.c.job == row.job)
                    .values(last_scheduled_for=due, updated_at=now))
                emitted.append(event)
        for event in emitted:
            log.info("tick emitted", job=event.type_name(),
                     scheduled_for=event.scheduled_for.isoformat())
        return emitted

    async def _ensure_rows(self, now: datetime) -> None:
        """A job seen for the first time gets its row, starting from now (no back-fill).
        Each insert is its own transaction: when two replicas race, the second's insert
        waits for the first's and fails on the primary key, which is the outcome wanted."""
        missing = [job for job in self.jobs if job.name not in self._rows_exist]
        if not missing:
            return
        async with self.db.sessions() as session:
            existing = set((await session.scalars(
                select(schedules.c.job).where(schedules.c.job.in_([j.name for j in missing]))
            )).all())
        for job in missing:
            if job.name not in existing:
                with contextlib.suppress(IntegrityError):
                    async with self.db.transaction() as session:
                        await session.execute(schedules.insert().values(
                            job=job.name, cron=job.cron, since=now,
                            last_scheduled_for=None, updated_at=now))
                    log.info("job started", job=job.name, cron=job.cron,
                             since=now.isoformat())
            self._rows_exist.add(job.name)

    def seconds_until_due(self, now: datetime) -> float:
        """How long the loop may sleep: until the next occurrence of any job, bounded."""
        if not self.jobs:
            return self.max_sleep_seconds
        soonest = min(job.next_after(now) for job in self.jobs)
        return min(max((soonest - now).total_seconds(), 0.0), self.max_sleep_seconds)

    async def run(self) -> None:
        """The background loop: a tick at start (which emits what downtime missed), then one
        at each due time."""
        failures = 0
        while True:
            try:
                await self.tick()
                failures = 0
                wait = self.seconds_until_due(self.now())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                wait = min(FIRST_RETRY_SECONDS * 2 ** min(failures - 1, 10),
                           self.max_sleep_seconds)
                log.warning("scheduler tick failed, will retry", failures=failures,
                            retry_in=wait, error=str(exc) or type(exc).__name__)
            await asyncio.sleep(wait)

    async def overview(self, now: datetime | None = None) -> list[ScheduleView]:
        now = self.now() if now is None else now.astimezone(UTC)
        async with self.db.sessions() as session:
            rows = {row.job: row for row in (await session.execute(select(schedules))).all()}
        views = []
        for job in self.jobs:
            row = rows.get(job.name)
            if row is None or row.cron != job.cron:
                # Not ticked under this schedule yet: it will start from its first tick.
                since, last, upcoming = None, None, job.next_after(now)
            else:
                since, last = row.since, row.last_scheduled_for
                upcoming = job.next_due(settled_until=settled_until(since, last), now=now)
            views.append(ScheduleView(job.name, job.cron, True, since, last, upcoming))
        for name in self.off:
            row = rows.get(name)
            views.append(ScheduleView(name, None, False, None,
                                      row.last_scheduled_for if row else None, None))
        return sorted(views, key=lambda view: view.job)
