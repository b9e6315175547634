"""Recovery's HTTP routes: thin; the rules are in domain.py, the work in the worker (and
the drills' in drills.py)."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import or_, select

from services.recovery import domain
from services.recovery.download import send_file
from services.recovery.keys import has_kms_slot
from services.recovery.tables import DrillRow, RecoverableBackupRow, RecoveryRow
from shared.api.common import Page, PageQuery
from shared.api.recovery import Drill, DrillsQuery, Recovery, RecoveryRequest
from shared.events import RecoveryFailed, RecoveryRequested, utcnow
from shared.http.problems import Problem, conflict, not_found
from shared.http.routes import USER, Call, Routes
from shared.pagination import paginate

routes = Routes("recovery")

IMAGE_READY = (domain.FINISHING, domain.COMPLETE)
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


def recovery_model(row: RecoveryRow) -> Recovery:
    downloadable = row.target == "local" and row.state in IMAGE_READY and row.image_ref
    return Recovery(
        id=row.id, backup_id=row.backup_id, host_id=row.host_id, host=row.host,
        snapshot_id=row.snapshot_id, target=row.target, format=row.format,
        instance_type=row.instance_type, state=row.state, total_progress=row.total_progress,
        state_progress=row.state_progress, message=row.state_message,
        failure_reason=row.failure_reason, disk_bytes=row.disk_bytes,
        image_ref=row.image_ref if row.state in IMAGE_READY else None,
        image_url=f"/api/v1/recoveries/{row.id}/image" if downloadable else None,
        image_bytes=row.image_bytes, image_sha256=row.image_sha256,
        instance_id=row.instance_id, created_at=row.created_at, updated_at=row.updated_at,
        finished_at=row.finished_at)


def _invalid(detail: str, field: str) -> Problem:
    return Problem(422, "Invalid request", detail,
                   errors=[{"location": ["body", field], "message": detail, "type": "value_error"}])


@routes.post("/api/v1/recoveries", allow=USER, body=RecoveryRequest, response=Recovery,
             status=201, errors=(404,))
async def request_recovery(call: Call) -> Recovery:
    """Turn one of the caller's image backups into a machine (aws) or an image (local)."""
    service = call.service
    body: RecoveryRequest = call.body
    if body.target not in service.settings.targets:
        configured = ", ".join(service.settings.targets) or "none"
        raise _invalid(f"recovery to {body.target} is not configured on this server "
                       f"(configured: {configured})", "target")
    try:
        disk_format = domain.choose_format(body.target, body.format,
                                           service.settings.aws_disk_format)
    except domain.InvalidRequest as e:
        raise _invalid(str(e), "format") from None
    if body.instance_type is not None and body.target != "aws":
        raise _invalid("an instance type applies to aws recoveries only", "instance_type")
    async with service.db.sessions() as session:
        backup = await session.get(RecoverableBackupRow, body.backup_id)
    if backup is None or backup.user_id != call.user_id:
        raise not_found("no such backup")
    if not backup.is_image:
        raise Problem(422, "Not an image backup", domain.NO_IMAGE)
    # The passphrase stays a SecretStr here: never a plain local a traceback could show.
    passphrase = body.passphrase
    if passphrase is None and not (
            service.kms_unwrap() is not None
            and await has_kms_slot(service.backup_store(backup.user_id, backup.host_id))):
        raise Problem(422, "Passphrase needed", domain.PASSPHRASE_NEEDED)

    worker = service.worker
    now = utcnow()
    correlation = uuid.uuid4()
    row = RecoveryRow(
        id=domain.new_id(), user_id=call.user_id, backup_id=backup.backup_id,
        host_id=backup.host_id, host=backup.host, snapshot_id=backup.snapshot_id,
        target=body.target, format=disk_format, instance_type=body.instance_type,
        state=domain.PENDING, total_progress=0, state_progress=0, no_downloads=0,
        no_completed=0, state_message="waiting for a worker", cleanup_pending=False,
        attempts=0, correlation_id=str(correlation), created_at=now, updated_at=now)
    if passphrase is not None:
        # Only this process will ever know the passphrase: it runs the task itself.
        worker.take(row, now)
    async with service.db.transaction() as session:
        session.add(row)
        await service.outbox.add(session, RecoveryRequested(
            recovery_id=row.id, user_id=row.user_id, backup_id=row.backup_id,
            target=row.target), correlation_id=correlation)
    if passphrase is not None:
        worker.vault.put(row.id, passphrase)
        worker.launch(row.id)
    return recovery_model(row)


@routes.get("/api/v1/recoveries", allow=USER, query=PageQuery, response=Page[Recovery])
async def list_recoveries(call: Call) -> Page[Recovery]:
    """The caller's recoveries, oldest first."""
    async with call.service.db.sessions() as session:
        rows, cursor = await paginate(
            session, select(RecoveryRow).where(RecoveryRow.user_id == call.user_id),
            RecoveryRow.created_at, RecoveryRow.id,
            limit=call.query.limit, cursor=call.query.cursor)
    return Page[Recovery](items=[recovery_model(r) for r in rows], next_cursor=cursor)


async def _own(call: Call) -> RecoveryRow:
    async with call.service.db.sessions() as session:
        row = await session.get(RecoveryRow, call.param("recovery_id"))
    if row is None or row.user_id != call.user_id:
        raise not_found("no such recovery")
    return row


@routes.get("/api/v1/recoveries/{recovery_id}", allow=USER, response=Recovery, errors=(404,))
async def get_recovery(call: Call) -> Recovery:
    """One recovery: its state, progress, last message and, if it failed, why."""
    return recovery_model(await _own(call))


@routes.post("/api/v1/recoveries/{recovery_id}/cancel", allow=USER, response=Recovery,
             errors=(404, 409))
async def cancel_recovery(call: Call) -> Recovery:
    """Stop a recovery that is not finished; whatever it created is removed."""
    service = call.service
    async with service.db.transaction() as session:
        row = await session.get(RecoveryRow, call.param("recovery_id"), with_for_update=True)
        if row is None or row.user_id != call.user_id:
            raise not_found("no such recovery")
        if row.state not in domain.CANCELLABLE:
            raise conflict(f"a recovery that is {row.state} cannot be cancelled")
        service.worker.fail(session, row, domain.CANCELLED)
        await service.outbox.add(session, RecoveryFailed(
            recovery_id=row.id, user_id=row.user_id, reason=domain.CANCELLED),
            correlation_id=uuid.UUID(row.correlation_id))
    return recovery_model(row)


@routes.get("/api/v1/recoveries/{recovery_id}/image", allow=USER, errors=(404, 409, 410))
async def download_image(call: Call):
    """The disk image of a local recovery (resumable: Range, If-Range, ETag)."""
    row = await _own(call)
    provider = call.service.providers.get("local")
    if row.target != "local" or provider is None:
        raise conflict("only a local recovery has an image to download")
    if row.state == domain.COMPLETE and not row.image_ref:
        raise Problem(410, "Gone", "the image was deleted when its machine was terminated")
    if row.state not in IMAGE_READY or not row.image_ref:
        raise conflict(f"the image is not ready: the recovery is {row.state}")
    path = provider.image_path(row.image_ref)
    if path is None or not path.is_file():
        raise Problem(410, "Gone", "the image was removed")
    host = _UNSAFE_FILENAME.sub("-", row.host).strip("-.") or "disk"
    filename = f"{host}-{row.created_at:%Y%m%d-%H%M}.{domain.EXTENSIONS[row.format]}"
    return await send_file(call.request, path, identity=row.id, filename=filename)


# --- drills ---------------------------------------------------------------------------------


def drill_model(row: DrillRow) -> Drill:
    return Drill(
        id=row.id, host_id=row.host_id, host=row.host, backup_id=row.backup_id,
        snapshot_id=row.snapshot_id, scheduled_for=row.scheduled_for, state=row.state,
        ok=row.ok, reason=row.reason, disk_bytes=row.disk_bytes, data_bytes=row.data_bytes,
        chunks_verified=row.chunks if row.state == domain.DRILL_PASSED else None,
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
        duration_seconds=row.duration_seconds)


@routes.get("/api/v1/drills", allow=USER, query=DrillsQuery, response=Page[Drill])
async def list_drills(call: Call) -> Page[Drill]:
    """The caller's recovery drills, newest first (of one host with `host=`, id or name)."""
    query: DrillsQuery = call.query
    statement = select(DrillRow).where(DrillRow.user_id == call.user_id)
    if query.host is not None:
        statement = statement.where(or_(DrillRow.host_id == query.host,
                                        DrillRow.host == query.host))
    async with call.service.db.sessions() as session:
        rows, cursor = await paginate(session, statement, DrillRow.created_at, DrillRow.id,
                                      limit=query.limit, cursor=query.cursor, newest_first=True)
    return Page[Drill](items=[drill_model(r) for r in rows], next_cursor=cursor)


@routes.get("/api/v1/drills/{drill_id}", allow=USER, response=Drill, errors=(404,))
async def get_drill(call: Call) -> Drill:
    """One drill: the backup it tried, when, how long, and its outcome with the reason."""
    async with call.service.db.sessions() as session:
        row = await session.get(DrillRow, call.param("drill_id"))
    if row is None or row.user_id != call.user_id:
        raise not_found("no such drill")
    return drill_model(row)
