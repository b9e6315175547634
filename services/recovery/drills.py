"""Recovery drills: proof, every week, that each host's newest image backup still becomes
a disk.

``BackupsVerifyDue`` (the scheduler's weekly tick) records one pending drill per host
(:func:`schedule`, in the handler's transaction). A worker with a free drill slot claims
one, assembles the disk into its scratch folder with the very code a local recovery uses
(``keys.open_repository``, ``assembly.plan_disk`` and ``assembly.assemble``), checks it,
throws it away, and records the outcome with ``DrillPassed`` or ``DrillFailed`` (the
outbox, same transaction).

What a drill verifies. The format records no checksum of the whole image; it records the
image as a list of chunks under keyed ids (and holes), and that list is what is checked:

- every stored chunk is fetched, decrypted with authentication, and its length and keyed
  id checked against the snapshot (the assembly does this for a recovery too);
- the chunk lengths and holes add up to the disk's size;
- the assembled file, read back from the scratch disk, has that size and every chunk's
  bytes in it hash to the chunk's keyed id again: the image a recovery would hand over is
  the image the backup describes, byte for byte.

A drill needs the repository key without the customer: only the KMS key slot gives it
(server-side recovery enabled). Without one the drill is recorded *skipped*, with the
reason, and nobody is alarmed: nothing was proven, but nothing was found wrong either.

Claims work like the recovery tasks' (a lease renewed while it runs; a worker that dies
lets it lapse and the next sweep runs the drill again from the start), but with a
conditional UPDATE on one row: a drill is one short run, with no checkpoints to protect.
Drills get their own slots, so they never hold up a customer's recovery.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from services.recovery import domain
from services.recovery.assembly import Damaged, DiskPlan, NoImage, assemble, plan_disk
from services.recovery.chores import Chores
from services.recovery.keys import INDEX_FILE, CannotOpen, has_kms_slot, open_repository
from services.recovery.pipeline import FORGOTTEN, code_path
from services.recovery.tables import DrillRow, RecoverableBackupRow
from shared.events import DrillFailed, DrillPassed, utcnow
from shared.format import FormatError, Repository, SnapshotNotFound
from shared.format.crypto import MasterKey
from shared.logs import get_logger

log = get_logger(__name__)

# Drills one worker runs at once. Drills are nobody's emergency: one at a time leaves the
# disk, network and CPU to the recoveries customers wait for; more replicas drill more.
MAX_CONCURRENT_DRILLS = 1
# A drill claimed this many times without an outcome (outages, crashes) fails saying so.
MAX_ATTEMPTS = 3
# A drill interrupted by something not the backup's fault (S3 or KMS away, no scratch
# space) waits this long before its next attempt: such outages mostly last minutes, and
# three attempts spread out ride them out without a false alarm.
RETRY_AFTER_SECONDS = 300.0
# Unlocked candidates looked at per free slot: other workers' sweeps may take some.
CANDIDATES_PER_SLOT = 4
# The assembled disk is read back in batches of chunks of about this size: each batch is
# one trip to a thread, and a cancelled drill stops within one batch.
READ_BACK_BATCH = 32 << 20
RAW_NAME = "disk.raw"


# --- scheduling (the tick's handler) ---------------------------------------------------------


async def schedule(session: AsyncSession, scheduled_for: datetime, correlation_id: str) -> int:
    """One pending drill per host that has an image backup, of its newest one, for the tick
    ``scheduled_for``; hosts that already have theirs (a redelivered tick, a second
    replica) get none. Returns how many were added. Two transactions adding the same one
    at once: the unique key fails the later, whose event is retried and then adds none."""
    ranked = select(
        RecoverableBackupRow,
        func.row_number().over(
            partition_by=RecoverableBackupRow.host_id,
            order_by=(RecoverableBackupRow.completed_at.desc(),
                      RecoverableBackupRow.backup_id.desc())).label("rank"),
    ).where(RecoverableBackupRow.is_image.is_(True)).subquery()
    newest = aliased(RecoverableBackupRow, ranked)
    backups = (await session.scalars(select(newest).where(ranked.c.rank == 1))).all()
    done = set((await session.scalars(
        select(DrillRow.host_id).where(DrillRow.scheduled_for == scheduled_for))).all())
    now = utcnow()
    added = 0
    for backup in backups:
        if backup.host_id in done:
            continue
        session.add(DrillRow(
            id=domain.new_id(), user_id=backup.user_id, host_id=backup.host_id,
            host=backup.host, backup_id=backup.backup_id, snapshot_id=backup.snapshot_id,
            scheduled_for=scheduled_for, state=domain.DRILL_PENDING, attempts=0,
            correlation_id=correlation_id, created_at=now))
        added += 1
    return added


def claimable(now: datetime):
    """Drills nobody runs: never taken, or their worker's lease lapsed; a pending one put
    back to wait after an error (``lease_until`` is then when it may go again) once the
    wait is over."""
    due = or_(DrillRow.lease_until.is_(None), DrillRow.lease_until < now)
    return and_(DrillRow.state.in_((domain.DRILL_PENDING, domain.DRILL_RUNNING)), due)


# --- one drill ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    state: str  # DRILL_PASSED | DRILL_FAILED | DRILL_SKIPPED
    reason: str | None = None
    plan: DiskPlan | None = None


class Postpone(Exception):
    """Not the backup's fault (no scratch space): the drill is tried again later."""


def _failed(reason: str) -> Outcome:
    return Outcome(domain.DRILL_FAILED, reason)


async def drill(service, row: DrillRow, work_dir: Path) -> Outcome:
    """Assemble the backup's disk into ``work_dir`` as a local recovery would, and verify
    it. The caller removes ``work_dir``."""
    store = service.backup_store(row.user_id, row.host_id)
    kms = service.kms_unwrap()
    if kms is None:
        return Outcome(domain.DRILL_SKIPPED, domain.DRILL_NO_KMS_HERE)
    if not await has_kms_slot(store):
        return Outcome(domain.DRILL_SKIPPED, domain.DRILL_NEEDS_KMS)
    await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    try:
        # The index in the drill's folder, which the caller removes.
        repo = await open_repository(store, passphrase=None, kms_unwrap=kms,
                                     index_at=work_dir / INDEX_FILE)
    except CannotOpen as e:
        return _failed(str(e))
    try:
        return await _drill_from(service, row, work_dir, repo)
    finally:
        repo.close()


async def _drill_from(service, row: DrillRow, work_dir: Path, repo: Repository) -> Outcome:
    try:
        plan = await plan_disk(repo, row.snapshot_id)
    except NoImage:
        return _failed(domain.NO_IMAGE)
    except SnapshotNotFound:
        return _failed(FORGOTTEN)
    except (Damaged, FormatError) as e:
        return _failed(domain.damaged_reason(str(e)))

    settings = service.settings
    free = (await asyncio.to_thread(shutil.disk_usage, work_dir)).free
    needed = domain.scratch_bytes_needed(plan.data_bytes, 0.0, converts=False)
    if free - needed < settings.min_free_bytes:
        raise Postpone(domain.no_space_reason(needed, settings.min_free_bytes, free))
    raw = work_dir / RAW_NAME

    async def report(done: int, sync) -> None:
        pass  # nothing to checkpoint: an interrupted drill starts over

    try:
        await assemble(repo, plan, raw, start=0, ahead=settings.download_concurrency,
                       report=report)
    except Damaged as e:
        return _failed(domain.damaged_reason(str(e)))
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise Postpone(domain.no_space_reason(needed, settings.min_free_bytes, 0)) from None
        raise
    differs_at = await read_back(raw, plan, repo)
    if differs_at is not None:
        return _failed(differs_at)
    return Outcome(domain.DRILL_PASSED, plan=plan)


async def read_back(path: Path, plan: DiskPlan, repo: Repository) -> str | None:
    """The assembled file against the snapshot's chunk list: its size, and every chunk's
    bytes hashing to the chunk's keyed id. None when it all matches, else the reason."""
    size = (await asyncio.to_thread(os.stat, path)).st_size
    if size != plan.disk_bytes:
        return (f"the assembled disk is {size} bytes, the backup says {plan.disk_bytes}: the "
                f"recovery worker could not write the whole disk")
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        batch: list[tuple[int, int, bytes]] = []
        batch_bytes = 0
        for chunk in plan.chunks:
            batch.append(chunk)
            batch_bytes += chunk[1]
            if batch_bytes >= READ_BACK_BATCH:
                if (offset := await asyncio.to_thread(_first_mismatch, fd, batch, repo.key)) \
                        is not None:
                    return domain.assembled_differs_reason(offset)
                batch, batch_bytes = [], 0
        if batch and (offset := await asyncio.to_thread(_first_mismatch, fd, batch,
                                                        repo.key)) is not None:
            return domain.assembled_differs_reason(offset)
    finally:
        os.close(fd)
    return None


def _first_mismatch(fd: int, chunks: list[tuple[int, int, bytes]], key: MasterKey) -> int | None:
    for offset, length, chunk_id in chunks:
        if key.chunk_id(os.pread(fd, length, offset)) != chunk_id:
            return offset
    return None


# --- the drills of one worker ------------------------------------------------------------------


class Drills:
    """Claims and runs drills in this process, at most ``MAX_CONCURRENT_DRILLS`` at once,
    each in its own asyncio task: the tick's handler only records them and returns."""

    def __init__(self, service, worker_id: str, *, max_concurrent: int = MAX_CONCURRENT_DRILLS
                 ) -> None:
        self.service = service
        self.db = service.db
        self.outbox = service.outbox
        self.settings = service.settings
        self.id = worker_id
        self.max_concurrent = max_concurrent
        self.runs: dict[str, asyncio.Task] = {}
        self._lost: set[str] = set()
        self._chores = Chores("drill sweep failed; the next one makes up for it")
        self._sweeping = asyncio.Lock()
        self._stopping = False

    @property
    def scratch_dir(self) -> Path:
        return self.service.scratch_dir / domain.DRILLS_SCRATCH

    def capacity(self) -> int:
        return max(0, self.max_concurrent - len(self.runs))

    # --- claiming ------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Take as many waiting drills as there are free slots, and tidy the scratch."""
        if self._stopping:
            return
        async with self._sweeping:
            now = utcnow()
            if room := self.capacity():
                async with self.db.sessions() as session:
                    candidates = (await session.scalars(
                        select(DrillRow.id).where(claimable(now))
                        .order_by(DrillRow.created_at, DrillRow.id)
                        .limit(room * CANDIDATES_PER_SLOT))).all()
                for drill_id in candidates:
                    if self.capacity() == 0:
                        break
                    if drill_id not in self.runs and await self._claim(drill_id, now):
                        self.runs[drill_id] = asyncio.create_task(self._run(drill_id),
                                                                  name=f"drill:{drill_id}")
            await self._tidy_scratch()

    async def _claim(self, drill_id: str, now: datetime) -> bool:
        # One conditional UPDATE: of two workers claiming at once, the second finds the
        # row no longer claimable (InnoDB re-reads the locked row; SQLite has one writer).
        async with self.db.transaction() as session:
            result = await session.execute(
                update(DrillRow).where(DrillRow.id == drill_id, claimable(now)).values(
                    state=domain.DRILL_RUNNING, runner=self.id, started_at=now,
                    lease_until=domain.lease_expiry(now, self.settings.lease_seconds),
                    attempts=DrillRow.attempts + 1))
            return result.rowcount == 1

    # --- running -------------------------------------------------------------------------

    async def _run(self, drill_id: str) -> None:
        run = asyncio.current_task()
        keeper = asyncio.create_task(self._keep_lease(drill_id, run))
        work_dir = self.scratch_dir / drill_id
        try:
            await self._execute(drill_id, work_dir)
        except asyncio.CancelledError:
            if drill_id not in self._lost:
                raise  # the process is stopping: the drill is run again after its lease
            run.uncancel()
            log.info("drill taken over by another worker", drill_id=drill_id)
        except Exception as error:
            log.error("drill run crashed; the next sweep runs it again", drill_id=drill_id,
                      traceback=code_path(error))
        finally:
            keeper.cancel()  # (its folder is gone already: _execute)
            self.runs.pop(drill_id, None)
            self._lost.discard(drill_id)
            if not self._stopping:
                self._chores.spawn(self.sweep())  # the next waiting drill

    async def _execute(self, drill_id: str, work_dir: Path) -> None:
        async with self.db.sessions() as session:
            row = await session.get(DrillRow, drill_id)
        if row is None or row.runner != self.id or row.state != domain.DRILL_RUNNING:
            return
        if row.attempts > MAX_ATTEMPTS:  # earlier runs died without a word (crashes)
            await self._finish(row, _failed(domain.drill_gave_up_reason(
                row.attempts - 1, "the worker running it stopped")))
            return
        log.info("drill started", drill_id=drill_id, host_id=row.host_id,
                 backup_id=row.backup_id, attempt=row.attempts)
        try:
            try:
                outcome = await drill(self.service, row, work_dir)
            finally:
                # Whatever the end, and before the outcome is recorded: whoever sees it
                # sees the folder gone. In a thread: the disk holds the backup's whole
                # data, and unlinking tens of GiB blocks for seconds. Awaiting here is
                # safe while cancelled (once, by run()).
                await asyncio.to_thread(shutil.rmtree, work_dir, True)
        except Postpone as e:
            await self._try_later(row, str(e))
            return
        except asyncio.CancelledError:
            raise
        except Exception as error:  # an outage of S3, KMS or the database
            log.warning("drill interrupted by an error", drill_id=drill_id,
                        traceback=code_path(error))
            await self._try_later(row, str(error) or type(error).__name__)
            return
        await self._finish(row, outcome)

    async def _finish(self, row: DrillRow, outcome: Outcome) -> None:
        now = utcnow()
        plan = outcome.plan
        duration = round((now - row.started_at).total_seconds(), 3)
        reason = outcome.reason[:1000] if outcome.reason else None
        async with self.db.transaction() as session:
            result = await session.execute(
                update(DrillRow).where(DrillRow.id == row.id, DrillRow.runner == self.id,
                                       DrillRow.state == domain.DRILL_RUNNING)
                .values(state=outcome.state, ok=domain.DRILL_OUTCOMES[outcome.state],
                        reason=reason, finished_at=now, duration_seconds=duration,
                        runner=None, lease_until=None,
                        disk_bytes=plan.disk_bytes if plan else None,
                        data_bytes=plan.data_bytes if plan else None,
                        chunks=len(plan.chunks) if plan else None))
            if result.rowcount != 1:
                return  # another worker took it after this one's lease lapsed
            event = None
            if outcome.state == domain.DRILL_PASSED:
                event = DrillPassed(drill_id=row.id, user_id=row.user_id, host_id=row.host_id,
                                    backup_id=row.backup_id, duration_seconds=duration)
            elif outcome.state == domain.DRILL_FAILED:
                event = DrillFailed(drill_id=row.id, user_id=row.user_id, host_id=row.host_id,
                                    backup_id=row.backup_id, reason=reason)
            if event is not None:
                await self.outbox.add(session, event,
                                      correlation_id=uuid.UUID(row.correlation_id))
        log.info("drill done", drill_id=row.id, state=outcome.state, reason=reason,
                 duration_seconds=duration)

    async def _try_later(self, row: DrillRow, error: str) -> None:
        if row.attempts >= MAX_ATTEMPTS:
            await self._finish(row, _failed(domain.drill_gave_up_reason(row.attempts, error)))
            return
        # Back in the queue, for a sweep after the wait; the reason shows why it waits.
        again = utcnow() + timedelta(seconds=RETRY_AFTER_SECONDS)
        async with self.db.transaction() as session:
            await session.execute(
                update(DrillRow).where(DrillRow.id == row.id, DrillRow.runner == self.id,
                                       DrillRow.state == domain.DRILL_RUNNING)
                .values(state=domain.DRILL_PENDING, runner=None, lease_until=again,
                        reason=domain.drill_retry_reason(error)[:1000]))

    async def _keep_lease(self, drill_id: str, run: asyncio.Task) -> None:
        """Renew the drill's lease while it runs; stop the run if another worker has it."""
        every = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            try:
                async with self.db.transaction() as session:
                    result = await session.execute(
                        update(DrillRow).where(DrillRow.id == drill_id,
                                               DrillRow.runner == self.id,
                                               DrillRow.state == domain.DRILL_RUNNING)
                        .values(lease_until=domain.lease_expiry(
                            utcnow(), self.settings.lease_seconds)))
            except Exception as e:  # the database is away: the run's own writes will tell
                log.warning("drill lease renewal failed", drill_id=drill_id, error=str(e))
                continue
            if result.rowcount != 1:
                self._lost.add(drill_id)
                run.cancel()
                return

    # --- the process's life ----------------------------------------------------------------

    async def run(self) -> None:
        """The background task of the service: nothing to do but wait; when the process
        stops, cancel the drills (their rows stay running, run again after their lease)."""
        try:
            await asyncio.Event().wait()
        finally:
            self._stopping = True
            tasks = list(self.runs.values()) + self._chores.running()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _tidy_scratch(self) -> None:
        """Remove drill folders left by a run that died with its process: those of drills
        this process does not run and nobody holds a live lease on."""
        root = self.scratch_dir
        names = await asyncio.to_thread(lambda: [p.name for p in root.iterdir()]
                                        if root.is_dir() else [])
        names = [n for n in names if n not in self.runs]
        if not names:
            return
        now = utcnow()
        async with self.db.sessions() as session:
            live = set((await session.scalars(select(DrillRow.id).where(
                DrillRow.id.in_(names), DrillRow.state == domain.DRILL_RUNNING,
                DrillRow.lease_until >= now))).all())
        for name in names:
            if name not in live:
                await asyncio.to_thread(shutil.rmtree, root / name, True)

