"""The recovery worker of one process: which tasks it holds, and its claims on them.

A task is run by whoever holds its lease (``lease_owner``, ``lease_until``). A worker takes
a lease only on a task nobody holds or whose lease lapsed, under ``SELECT … FOR UPDATE SKIP
LOCKED`` on MariaDB (SQLite has one writer at a time anyway), so two workers never run one
task. It renews its leases every third of ``lease_seconds`` while it works; a worker that
dies stops renewing, and after the lease lapses the reconcile sweep hands the task to
another worker, which goes on from the task's last recorded step.

Each held task runs as its own asyncio task (a :class:`~services.recovery.pipeline.Run`),
at most ``max_concurrent`` at once, so event handlers only claim and return. Stopping the
process cancels the runs without touching their rows: a stop and a crash look alike, and
both are resumed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession

from services.recovery import domain
from services.recovery.chores import Chores
from services.recovery.keys import PassphraseVault
from services.recovery.pipeline import Run, code_path
from services.recovery.tables import RecoveryRow
from shared.events import utcnow
from shared.logs import get_logger

log = get_logger(__name__)

# Failed tasks whose leftovers one sweep removes: the rest wait for the next sweep.
CLEANUPS_PER_SWEEP = 20
# Unlocked candidates looked at per free slot: others' sweeps may take some meanwhile.
CANDIDATES_PER_SLOT = 4


def claimable(now: datetime):
    """Tasks with work to do (or leftovers to remove) that nobody holds now."""
    unheld = or_(RecoveryRow.lease_owner.is_(None), RecoveryRow.lease_until < now)
    has_work = or_(RecoveryRow.state.in_(domain.WORKING),
                   and_(RecoveryRow.state == domain.FAILED, RecoveryRow.cleanup_pending.is_(True)))
    return and_(has_work, unheld)


class Worker:
    def __init__(self, service) -> None:
        self.service = service
        self.db = service.db
        self.settings = service.settings
        # Unique per process and start: a restarted process must not think it still holds
        # what its previous life held.
        self.id = f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.vault = PassphraseVault()
        self.runs: dict[str, asyncio.Task] = {}
        self.slots = asyncio.Semaphore(self.settings.max_concurrent)
        self._interrupted: set[str] = set()
        self._relaunch: set[str] = set()
        self._chores = Chores("worker chore failed; the reconcile sweep makes up for it")
        # Runs that are removing a failed task's leftovers: its failed state is expected.
        self.cleaning: set[str] = set()

    # --- claiming ----------------------------------------------------------------------

    def capacity(self) -> int:
        return max(0, self.settings.max_concurrent - len(self.runs))

    def take(self, row: RecoveryRow, now: datetime) -> None:
        """Make this worker the holder of ``row`` (the caller's transaction commits it)."""
        row.lease_owner = self.id
        row.lease_until = domain.lease_expiry(now, self.settings.lease_seconds)
        row.attempts += 1

    async def claim(self, recovery_id: str) -> bool:
        """Take one task if nobody holds it and this worker has room; start it."""
        if recovery_id in self.runs or self.capacity() == 0:
            return False
        async with self.db.transaction(read_committed=True) as session:
            row = await session.scalar(self._locking(
                select(RecoveryRow).where(RecoveryRow.id == recovery_id, claimable(utcnow()))))
            if row is None:
                return False
            self.take(row, utcnow())
        self.launch(recovery_id)
        return True

    async def claim_due(self) -> list[str]:
        """The reconcile sweep: tasks whose holder is gone (or that nobody took yet), as many
        as this worker has room for, plus failed ones still to be cleaned up (a few quick
        calls each: they need no free slot)."""
        now = utcnow()
        taken: list[str] = []
        async with self.db.transaction(read_committed=True) as session:
            for states, room in ((domain.WORKING, self.capacity()),
                                 ((domain.FAILED,), CLEANUPS_PER_SWEEP)):
                if room == 0:
                    continue
                # Candidates first, unlocked; then each locked alone by its key. One locking
                # query with ORDER BY … LIMIT would lock every row it sorts (InnoDB sorts
                # after locking), leaving nothing for the other workers to skip to.
                candidates = (await session.scalars(
                    select(RecoveryRow.id).where(claimable(now), RecoveryRow.state.in_(states))
                    .order_by(RecoveryRow.created_at).limit(room * CANDIDATES_PER_SLOT))).all()
                got = 0
                for recovery_id in candidates:
                    if got == room:
                        break
                    if recovery_id in self.runs:
                        continue
                    row = await session.scalar(self._locking(select(RecoveryRow).where(
                        RecoveryRow.id == recovery_id, claimable(now))))
                    if row is not None:
                        self.take(row, now)
                        taken.append(row.id)
                        got += 1
        for recovery_id in taken:
            self.launch(recovery_id)
        return taken

    def _locking(self, query):
        return query.with_for_update(skip_locked=True) if self.db.supports_row_locks else query

    def fail(self, session: AsyncSession, row: RecoveryRow, reason: str) -> None:
        """Mark a task failed from outside its run (cancel, timeout, launch failure), in the
        caller's transaction; its leftovers are then removed by whoever runs it (it
        notices at its next checkpoint or lease renewal), else by this worker after commit."""
        now = utcnow()
        running_elsewhere = (row.lease_owner is not None and row.lease_owner != self.id
                             and row.lease_until is not None and row.lease_until > now)
        row.state = domain.FAILED
        row.failure_reason = reason[:1000]
        row.cleanup_pending = True
        row.updated_at = row.finished_at = now
        if running_elsewhere:
            return
        if row.lease_owner == self.id and row.id in self.runs:
            self.interrupt_after_commit(session, row.id)
            return
        self.take(row, now)
        self.launch_after_commit(session, [row.id])

    # --- running -----------------------------------------------------------------------

    def launch(self, recovery_id: str) -> None:
        if recovery_id in self.runs:
            # Claimed again while its last run is still winding down (it released the lease
            # a moment ago): start over once that run has ended, not never.
            self._relaunch.add(recovery_id)
            return
        self.runs[recovery_id] = asyncio.create_task(self._run(recovery_id),
                                                     name=f"recovery:{recovery_id}")

    def after_commit(self, session: AsyncSession,
                     work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``work`` in its own task once the caller's transaction commits: an event
        handler must not wait on a second transaction inside its own (SQLite has a single
        writer), nor hold its transaction open for slow work. Lost with a crash between the
        commit and the run, which the next reconcile sweep makes up for."""
        sa_event.listen(session.sync_session, "after_commit",
                        lambda _s: self._chores.spawn(work()), once=True)

    async def sweep(self) -> None:
        """The reconcile sweep of this worker: take what nobody holds, tidy the scratch."""
        taken = await self.claim_due()
        await self.sweep_scratch()
        if taken:
            log.info("recoveries taken by the sweep", count=len(taken))

    def launch_after_commit(self, session: AsyncSession, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            sa_event.listen(session.sync_session, "after_commit",
                            lambda _s: [self.launch(i) for i in ids], once=True)

    def interrupt_after_commit(self, session: AsyncSession, recovery_id: str) -> None:
        """Stop this worker's run of a task someone else changed (cancelled, timed out)."""
        sa_event.listen(session.sync_session, "after_commit",
                        lambda _s: self.interrupt(recovery_id), once=True)

    def interrupt(self, recovery_id: str) -> None:
        task = self.runs.get(recovery_id)
        # Once only: a second cancel could cut short the clean-up the first one started.
        if task is not None and not task.done() and recovery_id not in self._interrupted:
            self._interrupted.add(recovery_id)
            task.cancel()

    def was_interrupted(self, recovery_id: str) -> bool:
        return recovery_id in self._interrupted

    async def _run(self, recovery_id: str) -> None:
        try:
            await Run(self.service, self, recovery_id).execute(self.slots)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.error("recovery run crashed; the reconcile sweep resumes it",
                      recovery_id=recovery_id, traceback=code_path(error))
        finally:
            self.runs.pop(recovery_id, None)
            self._interrupted.discard(recovery_id)
            self.cleaning.discard(recovery_id)
            relaunch = recovery_id in self._relaunch
            self._relaunch.discard(recovery_id)
            if relaunch and not asyncio.current_task().cancelling():  # not while stopping
                self.launch(recovery_id)

    # --- leases ------------------------------------------------------------------------

    async def keep_leases(self) -> None:
        """Renew the leases of held tasks; stop runs whose task was changed under them
        (cancelled, timed out) or whose lease another worker took after it lapsed."""
        every = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database is away: runs fail their own checkpoints
                log.warning("lease renewal failed", error=str(e))

    async def renew(self) -> None:
        held = list(self.runs)
        if not held:
            return
        now = utcnow()
        async with self.db.transaction(read_committed=True) as session:
            rows = (await session.execute(
                select(RecoveryRow.id, RecoveryRow.state, RecoveryRow.lease_owner)
                .where(RecoveryRow.id.in_(held)))).all()
            mine = [r.id for r in rows if r.lease_owner == self.id]
            if mine:
                await session.execute(
                    update(RecoveryRow).where(RecoveryRow.id.in_(mine),
                                              RecoveryRow.lease_owner == self.id)
                    .values(lease_until=domain.lease_expiry(now, self.settings.lease_seconds)))
        for row in rows:
            # Released by the run itself (finishing, cleaned up) is not lost.
            lost = row.lease_owner is not None and row.lease_owner != self.id
            changed = row.state == domain.FAILED and row.id not in self.cleaning
            if lost or changed:
                log.info("stopping a run", recovery_id=row.id, lost_lease=lost, state=row.state)
                self.interrupt(row.id)

    # --- the process's life ------------------------------------------------------------

    async def run(self) -> None:
        """The background loop of the service: renew leases until the process stops, then
        cancel the runs (their rows stay as they are, to be resumed)."""
        try:
            await self.keep_leases()
        finally:
            runs = list(self.runs.values()) + self._chores.running()
            for task in runs:
                task.cancel()
            for task in runs:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def sweep_scratch(self) -> None:
        """Remove scratch folders no run of this worker uses and whose task no longer needs
        them: its image moved on, or it ended (perhaps cleaned up on another machine).
        A task still downloading keeps its folder: whoever resumes it here goes on with it."""
        root = self.service.scratch_dir
        names = await asyncio.to_thread(lambda: [p.name for p in root.iterdir()]
                                        if root.is_dir() else [])
        # The drills' folder is theirs to tidy (drills.py).
        names = [n for n in names if n not in self.runs and n != domain.DRILLS_SCRATCH]
        if not names:
            return
        async with self.db.sessions() as session:
            states = dict((await session.execute(
                select(RecoveryRow.id, RecoveryRow.state).where(RecoveryRow.id.in_(names)))).all())
        for name in names:
            if states.get(name) not in (domain.PENDING, domain.DOWNLOADING):
                await asyncio.to_thread(shutil.rmtree, root / name, True)
