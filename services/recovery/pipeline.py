"""One run of one recovery task: the state machine, step by step, from wherever the task's
row says it stands.

    pending      pre-flight checks of the provider
    downloading  assemble (read, verify, write the sparse raw disk; checkpoint: chunks
                 written) → convert (vmdk.py, or qemu-img for VHD) → stage (upload to the
                 import bucket, or keep the file)
    importing    the provider's import, polled (aws: ImportImage → AMI); the image's digest
    finishing    ImportCompleted sent; instances starts the machine (handlers.py)

Every write to the row is conditional on this worker still holding the task in the state
it believes: a task cancelled, timed out or taken over by another worker makes the write
touch no row, and the run stops (:class:`Stop`). Each write also renews the lease. Progress
is written and published together (the event through the outbox, in the same transaction),
throttled by :class:`~services.recovery.domain.ProgressThrottle`.

A failure marks the task failed with its reason and removes what the task created (scratch
files, the uploaded object, the import task, the AMI or the local image). An unexpected
error (a database or network outage) instead leaves the task to be retried by the
reconcile sweep, up to ``MAX_ATTEMPTS`` claims.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import time
import traceback
import uuid

from sqlalchemy import update

from services.recovery import domain
from services.recovery.assembly import Damaged, NoImage, assemble, plan_disk
from services.recovery.convert import ConversionFailed, convert
from services.recovery.keys import INDEX_FILE, CannotOpen, open_repository
from services.recovery.providers import ImageTask, ProviderError, follow_import
from services.recovery.tables import RecoveryRow
from shared.events import (
    Event,
    ImportCompleted,
    RecoveryFailed,
    RecoveryProgressed,
    utcnow,
)
from shared.format import FormatError, Repository, SnapshotNotFound
from shared.format.diskindex import remove as remove_index
from shared.logs import get_logger

log = get_logger(__name__)

# A task claimed this many times without finishing (crashes, outages) fails instead of
# being tried again: something about it keeps breaking its workers.
MAX_ATTEMPTS = 5
RAW_NAME = "disk.raw"
# Spans of state_progress inside importing: the provider's import, then the digest of a
# kept image (local images only; aws goes straight to 100).
IMPORT_SPAN = (0, 80)
DIGEST_SPAN = (80, 100)
FORGOTTEN = ("the backup's snapshot is no longer in its repository: it may have been "
             "forgotten by the retention policy")


def code_path(error: BaseException) -> str:
    """Where an error came from, as source lines only: a logged traceback with local
    variables (structlog's default) could carry a passphrase out of a frame."""
    return "".join(traceback.format_exception(error)).strip()[-4000:]


class Stop(Exception):
    """The task changed under this run: cancelled, timed out, or held by another worker."""


class Failure(Exception):
    """The task fails with this reason (in words for the customer)."""


class Run:
    def __init__(self, service, worker, recovery_id: str) -> None:
        self.service = service
        self.worker = worker
        self.id = recovery_id
        self.settings = service.settings
        self.row: RecoveryRow | None = None
        self.throttle = domain.ProgressThrottle(self.settings.progress_step_percent,
                                                self.settings.progress_interval_seconds,
                                                time.monotonic)

    @property
    def work_dir(self):
        return self.service.scratch_dir / self.id

    # --- the run -----------------------------------------------------------------------

    async def execute(self, slots: asyncio.Semaphore) -> None:
        """Run the task as far as this worker can take it; ``slots`` bounds how many runs
        of this worker do heavy work at once (cleaning up needs no slot)."""
        row = await self._load()
        if row is None or row.lease_owner != self.worker.id:
            return
        if row.state == domain.FAILED:
            await self._cleanup()
            return
        try:
            async with slots:
                await self._load()  # it may have changed while this run waited
                await self._advance()
        except Stop:
            await self._after_stop()
        except Failure as failure:
            await self._fail(str(failure))
        except asyncio.CancelledError:
            if not self.worker.was_interrupted(self.id):
                raise  # the process is stopping: leave the task to be resumed
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await self._after_stop()
        except Exception as error:
            await self._retry_later(error)

    async def _advance(self) -> None:
        while self.row is not None:
            state = self.row.state
            if state == domain.PENDING:
                await self._begin()
            elif state == domain.DOWNLOADING:
                await self._download()
            elif state == domain.IMPORTING:
                await self._import()
            elif state == domain.FAILED:
                raise Stop()
            else:
                return

    # --- pending -------------------------------------------------------------------------

    async def _begin(self) -> None:
        try:
            await self._provider().preflight(self.row.format)
        except ProviderError as e:
            raise Failure(str(e)) from None
        await self._enter(domain.DOWNLOADING, domain.ASSEMBLE, "reading the backup")

    # --- downloading ---------------------------------------------------------------------

    async def _download(self) -> None:
        row = self.row
        steps = domain.download_steps(row.target, row.format)
        converts = domain.needs_conversion(row.format)
        raw = self.work_dir / RAW_NAME
        image = self.work_dir / f"disk.{domain.EXTENSIONS[row.format]}" if converts else raw
        if row.step == domain.ASSEMBLE:
            await self._assemble(raw, steps[domain.ASSEMBLE], converts)
            await self._save(step=domain.CONVERT if converts else domain.STAGE)
        if self.row.step == domain.CONVERT:
            if not await asyncio.to_thread(raw.is_file):
                return await self._download_again()
            await asyncio.to_thread(image.unlink, True)
            message = f"converting the disk to {row.format}"
            await self._progress(steps[domain.CONVERT][0], message, force=True)
            try:
                await convert(self.settings.qemu_img, raw, image, row.format,
                              self._reporter(steps[domain.CONVERT], message))
            except ConversionFailed as e:
                raise Failure(str(e)) from None
            await asyncio.to_thread(raw.unlink)
            await self._save(step=domain.STAGE)
        if self.row.step == domain.STAGE:
            if not await asyncio.to_thread(image.is_file):
                return await self._download_again()
            message = "uploading the disk" if row.target == "aws" else "keeping the image"
            await self._progress(steps[domain.STAGE][0], message, force=True)
            try:
                staged = await self._provider().stage(
                    self._image_task(), image, self._reporter(steps[domain.STAGE], message))
            except ProviderError as e:
                raise Failure(str(e)) from None
            await self._enter(domain.IMPORTING, domain.IMPORT, "importing the disk",
                              staged_ref=staged)

    async def _download_again(self) -> None:
        # The partly done work is on another machine (a worker of another pod ran it).
        await self._save(step=domain.ASSEMBLE, no_completed=0,
                         state_message="the disk is downloaded again on this worker")

    async def _assemble(self, raw, span: tuple[int, int], converts: bool) -> None:
        row = self.row
        store = self.service.backup_store(row.user_id, row.host_id)
        await asyncio.to_thread(self.work_dir.mkdir, parents=True, exist_ok=True)
        index_at = self.work_dir / INDEX_FILE  # this task's own: nobody else opens it
        try:
            try:
                repo = await open_repository(store, passphrase=self.worker.vault.get(self.id),
                                             kms_unwrap=self.service.kms_unwrap(), index_at=index_at)
            except CannotOpen as e:
                raise Failure(str(e)) from None
            try:
                await self._assemble_from(repo, raw, span, converts)
            finally:
                repo.close()
        finally:  # whether the open failed, the assembly did or neither
            await asyncio.to_thread(remove_index, index_at)

    async def _assemble_from(self, repo: Repository, raw, span: tuple[int, int], converts: bool) -> None:
        row = self.row
        try:
            plan = await plan_disk(repo, row.snapshot_id)
        except NoImage:
            raise Failure(domain.NO_IMAGE) from None
        except SnapshotNotFound:
            raise Failure(FORGOTTEN) from None
        except (Damaged, FormatError) as e:
            raise Failure(domain.damaged_reason(str(e))) from None
        total = len(plan.chunks)
        resumable = (row.no_downloads == total and 0 < row.no_completed <= total
                     and await asyncio.to_thread(raw.is_file))
        start = row.no_completed if resumable else 0
        free = (await asyncio.to_thread(shutil.disk_usage, self.work_dir)).free
        needed = domain.scratch_bytes_needed(plan.data_bytes, start / max(1, total), converts)
        if free - needed < self.settings.min_free_bytes:
            raise Failure(domain.no_space_reason(needed, self.settings.min_free_bytes, free))
        message = "downloading the disk"
        await self._save(no_downloads=total, no_completed=start, disk_bytes=plan.disk_bytes,
                         data_bytes=plan.data_bytes, state_message=message)
        log.info("assembling the disk", recovery_id=self.id, chunks=total, resume_at=start)

        async def report(done: int, sync) -> None:
            progress = domain.step_progress(span, done, total)
            if self.throttle.due(domain.DOWNLOADING, progress, message) or done == total:
                await sync()  # the checkpoint must never run ahead of the disk
                await self._progress(progress, message, force=True, no_completed=done)

        try:
            await assemble(repo, plan, raw, start=start, ahead=self.settings.download_concurrency,
                           report=report)
        except Damaged as e:
            raise Failure(domain.damaged_reason(str(e))) from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise Failure(domain.no_space_reason(needed, self.settings.min_free_bytes,
                                                     0)) from None
            raise
        self.worker.vault.forget(self.id)  # the backup is read: the passphrase is done with

    # --- importing -----------------------------------------------------------------------

    async def _import(self) -> None:
        row = self.row
        provider = self._provider()
        import_ref = row.import_ref
        try:
            if import_ref is None:
                # Idempotent per task: a resumed run asking again gets the same import.
                import_ref = await provider.begin_import(self._image_task(), row.staged_ref)
                await self._save(import_ref=import_ref)

            async def on_status(status) -> None:
                progress = domain.step_progress(IMPORT_SPAN, status.progress, 100)
                await self._progress(progress, status.message or "importing the disk")

            status = await follow_import(provider, import_ref,
                                         poll_seconds=self.settings.import_poll_seconds,
                                         stall_seconds=self.settings.import_stall_seconds,
                                         on_status=on_status)
        except ProviderError as e:
            raise Failure(str(e)) from None
        if status.failed or not status.image_ref:
            raise Failure(f"the import failed: {status.message or 'no reason was given'}")
        await self._save(image_ref=status.image_ref)
        facts = await provider.image_facts(status.image_ref,
                                           self._reporter(DIGEST_SPAN, "checking the image"))
        if row.staged_ref is not None:
            await provider.release_staging(row.staged_ref)
        await self._enter(
            domain.FINISHING, domain.LAUNCH, "starting the machine",
            staged_ref=None, lease_owner=None, lease_until=None,
            image_bytes=facts.size if facts else None,
            image_sha256=facts.sha256 if facts else None,
            events=[ImportCompleted(recovery_id=self.id, user_id=row.user_id,
                                    provider=row.target,
                                    image_ref=provider.shared_ref(status.image_ref),
                                    instance_type=row.instance_type)])
        await asyncio.to_thread(shutil.rmtree, self.work_dir, True)
        self.worker.vault.forget(self.id)

    # --- failing and cleaning up -------------------------------------------------------

    async def _fail(self, reason: str) -> None:
        log.info("recovery failed", recovery_id=self.id, reason=reason)
        self.worker.cleaning.add(self.id)  # the lease keeper must not stop what follows
        try:
            await self._save(state=domain.FAILED, failure_reason=reason[:1000],
                             cleanup_pending=True, finished_at=utcnow(),
                             events=[RecoveryFailed(recovery_id=self.id,
                                                    user_id=self.row.user_id, reason=reason)])
        except Stop:
            pass  # changed at the same moment (cancelled, say): clean up as it stands
        await self._after_stop()

    async def _after_stop(self) -> None:
        row = await self._load()
        if (row is not None and row.state == domain.FAILED and row.cleanup_pending
                and row.lease_owner == self.worker.id):
            await self._cleanup()

    async def _cleanup(self) -> None:
        """Remove everything the failed task created; what can't be removed now is tried
        again by the next sweep (the task stays ``cleanup_pending``)."""
        row = self.row
        self.worker.cleaning.add(self.id)
        self.worker.vault.forget(self.id)
        try:
            provider = self.service.providers.get(row.target)
            if provider is not None:
                await provider.discard(staged_ref=row.staged_ref, import_ref=row.import_ref,
                                       image_ref=row.image_ref)
            await asyncio.to_thread(shutil.rmtree, self.work_dir, True)
            await self._save(cleanup_pending=False, lease_owner=None, lease_until=None)
            log.info("failed recovery cleaned up", recovery_id=self.id)
        except Stop:
            pass
        except Exception as e:
            log.warning("cleanup failed; the reconcile sweep tries again", recovery_id=self.id,
                        error=str(e) or type(e).__name__)
        finally:
            self.worker.cleaning.discard(self.id)

    async def _retry_later(self, error: Exception) -> None:
        text = str(error) or type(error).__name__
        log.error("recovery interrupted by an error", recovery_id=self.id, error=text,
                  attempt=self.row.attempts, traceback=code_path(error))
        if self.row.attempts >= MAX_ATTEMPTS:
            await self._fail(f"the recovery was interrupted {self.row.attempts} times; the "
                             f"last error: {text}"[:1000])
            return
        try:  # let the lease lapse now: the next sweep retries
            await self._save(state_message=f"retrying after an error: {text}"[:500],
                             lease_until=utcnow())
        except Exception:
            pass  # the database is away too: the lease lapses on its own

    # --- the row -------------------------------------------------------------------------

    async def _load(self) -> RecoveryRow | None:
        async with self.service.db.sessions() as session:
            self.row = await session.get(RecoveryRow, self.id)
        return self.row

    async def _save(self, *, events: list[Event] = (), **values) -> None:
        """Write ``values`` (and publish ``events``) if this worker still holds the task in
        the state it believes; else Stop. Renews the lease unless told otherwise."""
        now = utcnow()
        values.setdefault("lease_until", domain.lease_expiry(now, self.settings.lease_seconds))
        values["updated_at"] = now
        row = self.row
        async with self.service.db.transaction() as session:
            result = await session.execute(
                update(RecoveryRow)
                .where(RecoveryRow.id == self.id, RecoveryRow.lease_owner == self.worker.id,
                       RecoveryRow.state == row.state)
                .values(**values))
            if result.rowcount != 1:
                raise Stop()
            for event in events:
                await self.service.outbox.add(session, event,
                                              correlation_id=uuid.UUID(row.correlation_id))
        for name, value in values.items():
            setattr(row, name, value)

    async def _enter(self, state: str, step: str, message: str, *,
                     events: list[Event] = (), **values) -> None:
        total = max(self.row.total_progress, domain.total_progress(state, 0))
        self.throttle.due(state, 0, message)
        await self._save(state=state, step=step, state_progress=0, total_progress=total,
                         state_message=message,
                         events=[self._progressed(state, total, 0, message), *events], **values)

    async def _progress(self, state_progress: int, message: str, *, force: bool = False,
                        **values) -> None:
        row = self.row
        progress = max(row.state_progress, min(100, state_progress))
        total = max(row.total_progress, domain.total_progress(row.state, progress))
        message = message[:500]
        if not self.throttle.due(row.state, progress, message) and not force:
            return
        await self._save(state_progress=progress, total_progress=total, state_message=message,
                         events=[self._progressed(row.state, total, progress, message)],
                         **values)

    def _reporter(self, span: tuple[int, int], message: str):
        async def report(done: int, total: int) -> None:
            await self._progress(domain.step_progress(span, done, total), message)
        return report

    def _progressed(self, state: str, total: int, progress: int, message: str) -> Event:
        return RecoveryProgressed(recovery_id=self.id, user_id=self.row.user_id, state=state,
                                  total_progress=total, state_progress=progress, message=message)

    def _provider(self):
        provider = self.service.providers.get(self.row.target)
        if provider is None:  # the settings changed since the request
            raise Failure(f"recovery to {self.row.target} is no longer configured on this server")
        return provider

    def _image_task(self) -> ImageTask:
        row = self.row
        return ImageTask(recovery_id=row.id, user_id=row.user_id, host=row.host,
                         disk_format=row.format)
