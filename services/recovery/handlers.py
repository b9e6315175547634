"""Recovery's event handlers. They only record and claim; the long work runs in the
worker's own tasks (worker.py, pipeline.py) and the drills' (drills.py)."""

from __future__ import annotations

from sqlalchemy import select

from services.recovery import domain, drills
from services.recovery.tables import RecoverableBackupRow, RecoveryRow
from shared.events import (
    BackupsVerifyDue,
    BackupUploaded,
    InstanceLaunchFailed,
    InstanceReady,
    InstanceTerminated,
    RecoveriesReconcileDue,
    RecoveriesTimeoutDue,
    RecoveryCompleted,
    RecoveryFailed,
    RecoveryProgressed,
    RecoveryRequested,
    utcnow,
)
from shared.inbox import Context
from shared.logs import get_logger

log = get_logger(__name__)


async def remember_backup(ctx: Context, event: BackupUploaded) -> None:
    """What can be recovered: every uploaded backup, its owner and whether it is an image."""
    await ctx.session.merge(RecoverableBackupRow(
        backup_id=event.backup_id, user_id=event.user_id, host_id=event.host_id,
        host=event.host, snapshot_id=event.snapshot_id, kind=event.kind,
        is_image=event.is_image, size_bytes=event.size_bytes,
        completed_at=event.completed_at, received_at=utcnow()))


async def take_requested(ctx: Context, event: RecoveryRequested) -> None:
    """A worker with room takes the new task (once this handler's transaction is done). One
    requested with a passphrase is already held by the worker that received the request:
    it alone has the passphrase."""
    worker = ctx.service.worker
    worker.after_commit(ctx.session, lambda: worker.claim(event.recovery_id))


async def reconcile(ctx: Context, event: RecoveriesReconcileDue) -> None:
    """The seed's ManagePending, ManageDownloads, ManageImports and FinishRecovery in one
    sweep: tasks nobody holds (never taken, or their worker died) are taken by this worker
    and continue from their last step; failed ones still to be cleaned up are cleaned."""
    worker = ctx.service.worker
    worker.after_commit(ctx.session, worker.sweep)
    # Drills whose worker died (their lease lapsed), or that waited for a free slot.
    worker.after_commit(ctx.session, ctx.service.drills.sweep)


async def schedule_drills(ctx: Context, event: BackupsVerifyDue) -> None:
    """The weekly drill: one per host, of its newest image backup, once per tick however
    often it is delivered; run in the background after this transaction commits."""
    added = await drills.schedule(ctx.session, event.scheduled_for,
                                  str(ctx.envelope.correlation_id))
    log.info("drills scheduled", count=added, scheduled_for=event.scheduled_for.isoformat())
    ctx.service.worker.after_commit(ctx.session, ctx.service.drills.sweep)


async def fail_timed_out(ctx: Context, event: RecoveriesTimeoutDue) -> None:
    """Tasks requested more than ``timeout_hours`` before the tick and not complete fail."""
    settings = ctx.service.settings
    cutoff = event.scheduled_for
    rows = (await ctx.session.scalars(
        select(RecoveryRow).where(RecoveryRow.state.notin_(domain.TERMINAL))
        .order_by(RecoveryRow.created_at))).all()
    for row in rows:
        if domain.timed_out(row.created_at, cutoff, settings.timeout_hours):
            await _fail(ctx, row, domain.timed_out_reason(settings.timeout_hours))


async def complete(ctx: Context, event: InstanceReady) -> None:
    row = await ctx.session.get(RecoveryRow, event.recovery_id, with_for_update=True)
    if row is None or row.state != domain.FINISHING:
        log.warning("instance ready for a recovery not finishing", recovery_id=event.recovery_id,
                    state=row.state if row else None)
        return
    now = utcnow()
    row.state, row.step = domain.COMPLETE, None
    row.state_progress, row.total_progress = 100, 100
    row.state_message = "the machine is running"
    row.instance_id = event.instance_id
    row.updated_at = row.finished_at = now
    await ctx.emit(RecoveryProgressed(recovery_id=row.id, user_id=row.user_id,
                                      state=domain.COMPLETE, total_progress=100,
                                      state_progress=100, message=row.state_message))
    await ctx.emit(RecoveryCompleted(recovery_id=row.id, user_id=row.user_id,
                                     instance_id=event.instance_id))


async def launch_failed(ctx: Context, event: InstanceLaunchFailed) -> None:
    row = await ctx.session.get(RecoveryRow, event.recovery_id, with_for_update=True)
    if row is None or row.state != domain.FINISHING:
        return
    await _fail(ctx, row, domain.launch_failed_reason(event.reason))


async def release_image(ctx: Context, event: InstanceTerminated) -> None:
    """The machine made from a local image is gone for good: so goes the image it ran from
    (instances owns the machine, recovery the file). An aws machine's AMI is released by
    instances itself. A repeated event finds nothing left to delete."""
    rows = (await ctx.session.scalars(
        select(RecoveryRow).where(RecoveryRow.user_id == event.user_id,
                                  RecoveryRow.instance_id == event.instance_id)
        .with_for_update())).all()
    for row in rows:
        provider = ctx.service.providers.get(row.target)
        if row.image_ref is None or provider is None or row.target != "local":
            continue
        await provider.discard(staged_ref=None, import_ref=None, image_ref=row.image_ref)
        log.info("local image deleted with its machine", recovery_id=row.id,
                 instance_id=event.instance_id)
        row.image_ref, row.updated_at = None, utcnow()


async def _fail(ctx: Context, row: RecoveryRow, reason: str) -> None:
    """Fail a task from outside its run (timeout, launch failure)."""
    ctx.service.worker.fail(ctx.session, row, reason)
    await ctx.emit(RecoveryFailed(recovery_id=row.id, user_id=row.user_id, reason=reason))


EVENT_HANDLERS = {
    BackupUploaded: remember_backup,
    RecoveryRequested: take_requested,
    RecoveriesReconcileDue: reconcile,
    RecoveriesTimeoutDue: fail_timed_out,
    BackupsVerifyDue: schedule_drills,
    InstanceReady: complete,
    InstanceLaunchFailed: launch_failed,
    InstanceTerminated: release_image,
}
