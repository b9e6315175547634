"""Backup's HTTP routes (shared/api/backup.py has the contract): the agent's backup
session and repository access, and the users' catalogue of hosts and backups.

An agent is its identity's user and host name: it reaches only that host's backups and
the keys under that host's prefix, `<user id>/<host id>/`. Users see only their own hosts.
"""

from __future__ import annotations

import base64
import binascii
import json

from sqlalchemy import func, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.backup import catalog, domain, retention
from services.backup.queries import (
    insert_ignoring_duplicates,
    lock_host,
    referenced_packs,
)
from services.backup.tables import BackupPackRow, BackupRow, HostRow, IndexPackRow, UploadRow
from shared.api.backup import (
    Backup,
    BackupCommit,
    BackupFail,
    BackupsQuery,
    BackupStart,
    DownloadUrls,
    DownloadUrlsRequest,
    ForgetResult,
    Host,
    ObjectsQuery,
    RepositoryObject,
    RetentionPolicy,
    SnapshotStats,
    UploadUrls,
    UploadUrlsRequest,
)
from shared.api.common import Page, PageQuery
from shared.events import BackupFailed, BackupUploaded, utcnow
from shared.http.problems import Problem, bad_request, conflict, forbidden, not_found
from shared.http.routes import AGENT, USER, USER_OR_AGENT, Call, Routes
from shared.pagination import decode_cursor, encode_cursor, paginate

routes = Routes("backup")

# How many missing keys a 409 names (the count says how many there are in all).
MISSING_NAMED = 100


# --- models from rows ----------------------------------------------------------------------


def backup_model(row: BackupRow, host_name: str) -> Backup:
    return Backup(
        id=row.id, host_id=row.host_id, host=host_name, kind=row.kind, status=row.status,
        is_image=row.is_image, snapshot_id=row.snapshot_id,
        parent_snapshot_id=row.parent_snapshot_id, sources=json.loads(row.sources),
        stats=SnapshotStats.model_validate_json(row.stats) if row.stats else None,
        size_bytes=row.size_bytes, failure_reason=row.failure_reason,
        started_at=row.started_at, completed_at=row.completed_at,
    )


def host_model(row: HostRow, backups: int, overdue_after_hours: float) -> Host:
    return Host(
        id=row.id, name=row.name,
        state=domain.host_state(row.last_backup_at, row.last_failure_at, row.overdue_since),
        last_backup_at=row.last_backup_at, last_backup_id=row.last_backup_id,
        next_backup_due=domain.next_backup_due(row.last_backup_at, row.created_at,
                                               overdue_after_hours),
        storage_bytes=row.storage_bytes, backups=backups, created_at=row.created_at,
        retention=RetentionPolicy.model_validate_json(row.retention) if row.retention else None,
    )


async def _backup_counts(session: AsyncSession, host_ids: list[str]) -> dict[str, int]:
    if not host_ids:
        return {}
    rows = await session.execute(
        select(BackupRow.host_id, func.count()).where(BackupRow.host_id.in_(host_ids),
                                                      BackupRow.status == "complete")
        .group_by(BackupRow.host_id))
    return dict(rows.all())


# --- who may touch what ----------------------------------------------------------------------


def _agent_host_name(call: Call) -> str:
    if not call.identity.host:
        raise forbidden("this agent key is bound to no host")
    return call.identity.host


async def _agent_host(session: AsyncSession, call: Call) -> HostRow | None:
    return await session.scalar(select(HostRow).where(
        HostRow.user_id == call.user_id, HostRow.name == _agent_host_name(call)))


async def _own_session(session: AsyncSession, call: Call, lock: bool = False
                       ) -> tuple[BackupRow, HostRow]:
    """The agent's own backup named in the path, else 404 (never 403: ids of others'
    backups are not confirmed to exist). `lock`: the backup row only (MariaDB has no
    FOR UPDATE OF), so sessions of one host don't queue behind each other."""
    backup_id = call.param("backup_id")
    if lock:
        await session.execute(select(BackupRow.id).where(BackupRow.id == backup_id).with_for_update())
    found = (await session.execute(
        select(BackupRow, HostRow).join(HostRow, HostRow.id == BackupRow.host_id)
        .where(BackupRow.id == backup_id, BackupRow.user_id == call.user_id,
               HostRow.name == _agent_host_name(call)))).first()
    if found is None:
        raise not_found("no such backup")
    return found[0], found[1]


async def _user_host(session: AsyncSession, call: Call) -> HostRow:
    host = await session.scalar(select(HostRow).where(HostRow.id == call.param("host_id"),
                                                      HostRow.user_id == call.user_id))
    if host is None:
        raise not_found("no such host")
    return host


def _require_uploading(backup: BackupRow) -> None:
    if backup.status != "uploading":
        raise conflict(f"the backup is {backup.status}, no longer uploading")


# --- the agent's backup session ---------------------------------------------------------------


@routes.post("/api/v1/backups", allow=AGENT, body=BackupStart, response=Backup, status=201,
             errors=(409,))
async def start_backup(call: Call) -> Backup:
    """Open a backup session for the agent's host (the host appears with its first one).
    With an id the agent chose: the session of that id if this host opened it already and
    it is still uploading (a retry), 409 if the id is taken otherwise."""
    service = call.service
    name = _agent_host_name(call)
    start: BackupStart = call.body
    for attempt in range(2):
        now = utcnow()
        try:
            async with service.db.transaction() as session:
                host = await _agent_host(session, call)
                if start.id is not None:
                    taken = await session.get(BackupRow, start.id)
                    if taken is not None:
                        if host is None or taken.host_id != host.id or taken.status != "uploading":
                            raise conflict("this backup id is taken: choose another")
                        return backup_model(taken, host.name)
                if host is None:
                    host = HostRow(id=domain.new_id(), user_id=call.user_id, name=name,
                                   created_at=now, storage_bytes=0)
                    session.add(host)
                    await session.flush()
                row = BackupRow(
                    id=start.id or domain.new_id(), user_id=call.user_id, host_id=host.id, kind=start.kind,
                    status="uploading", is_image=any(s.type == "image" for s in start.sources),
                    parent_snapshot_id=start.parent_snapshot_id,
                    sources=json.dumps([s.model_dump() for s in start.sources]),
                    source_group=domain.source_group(start.sources), size_bytes=0,
                    agent_version=start.agent_version, started_at=now, last_activity_at=now)
                session.add(row)
            return backup_model(row, host.name)
        except IntegrityError:
            # The same host's first two sessions raced, or two requests with one id: the
            # second try finds what the first made.
            if attempt:
                raise
    raise AssertionError("unreachable")


@routes.post("/api/v1/backups/{backup_id}/upload-urls", allow=AGENT, body=UploadUrlsRequest,
             response=UploadUrls, errors=(404, 409))
async def upload_urls(call: Call) -> UploadUrls:
    """PUT URLs for objects to store; keys that exist come back in `existing` instead."""
    service = call.service
    specs = {}
    for spec in call.body.objects:
        if specs.setdefault(spec.key, spec).size != spec.size:
            raise Problem(422, "Invalid request", f"{spec.key} is listed with two sizes")
        if spec.packs is not None and not spec.key.startswith(domain.INDEX_PREFIX):
            raise Problem(422, "Invalid request", f"{spec.key}: only index files describe packs")
    async with service.db.sessions() as session:
        backup, host = await _own_session(session, call)
    _require_uploading(backup)
    store = service.host_store(host.user_id, host.id)
    sizes = await service.sizes(store, specs)
    existing = [k for k, size in sizes.items() if size is not None]
    todo = [specs[k] for k, size in sizes.items() if size is None]
    ttl = service.settings.url_ttl_seconds
    urls = [await store.presign_put(s.key, s.size, ttl) for s in todo]
    now = utcnow()
    async with service.db.transaction() as session:
        backup, host = await _own_session(session, call, lock=True)
        _require_uploading(backup)
        known = dict((await session.execute(
            select(UploadRow.key, UploadRow.size).where(
                UploadRow.backup_id == backup.id, UploadRow.key.in_([s.key for s in todo])))).all())
        for spec in todo:
            if spec.key not in known:
                session.add(UploadRow(backup_id=backup.id, host_id=host.id, key=spec.key,
                                      size=spec.size, status="presigned", created_at=now))
            elif known[spec.key] != spec.size:  # the newest URL's size is the one to check
                await session.execute(update(UploadRow).where(
                    UploadRow.backup_id == backup.id, UploadRow.key == spec.key
                ).values(size=spec.size, status="presigned"))
        await insert_ignoring_duplicates(session, IndexPackRow.__table__, [
            {"host_id": host.id, "index_id": domain.index_id_of(s.key), "pack_id": p}
            for s in specs.values() if s.packs for p in s.packs])
        backup.last_activity_at = now
    return UploadUrls(urls=urls, existing=existing)


@routes.post("/api/v1/backups/{backup_id}/commit", allow=AGENT, body=BackupCommit,
             response=Backup, errors=(404, 409))
async def commit_backup(call: Call) -> Backup:
    """Record the backup once every object it references is in the bucket."""
    service = call.service
    body: BackupCommit = call.body
    async with service.db.sessions() as session:
        backup, host = await _own_session(session, call)
        if backup.status == "complete" and backup.snapshot_id == body.snapshot_id:
            return backup_model(backup, host.name)  # a retried commit
        _require_uploading(backup)
        uploads = dict((await session.execute(
            select(UploadRow.key, UploadRow.size).where(UploadRow.backup_id == backup.id))).all())
    store = service.host_store(host.user_id, host.id)
    snapshot = domain.snapshot_key(body.snapshot_id)
    # Everything this session uploaded, and the snapshot, must be there with the signed size.
    to_check = list(uploads)
    if snapshot not in uploads:
        to_check.append(snapshot)
    sizes = await service.sizes(store, to_check)
    missing = [k for k in to_check if sizes[k] is None or (k in uploads and sizes[k] != uploads[k])]
    if missing:
        raise _missing(missing)
    session_packs = [p for p in map(domain.pack_id_of, uploads) if p]
    packs = list(dict.fromkeys([*body.packs, *session_packs]))
    reused = sorted(set(body.packs) - set(session_packs))
    now = utcnow()
    async with service.db.transaction() as session:
        backup, host = await _own_session(session, call, lock=True)
        _require_uploading(backup)
        await lock_host(session, host.id)  # garbage collection of this host waits
        now_presigned = set(await session.scalars(
            select(UploadRow.key).where(UploadRow.backup_id == backup.id)))
        if now_presigned != set(uploads):
            raise conflict("the session was given more upload URLs while committing; commit again")
        # Packs reused from older backups that a kept backup still references were checked
        # when that backup committed and can't be collected while we hold the lock; any
        # other (adopted from an interrupted session, or unreferenced since) is checked now.
        unknown = sorted(set(reused) - await referenced_packs(session, host.id, reused))
        unknown_sizes = await service.sizes(store, [domain.pack_key(p) for p in unknown])
        missing = [k for k, size in unknown_sizes.items() if size is None]
        if missing:
            raise _missing(missing)
        await session.execute(update(UploadRow).where(
            UploadRow.backup_id == backup.id, UploadRow.status == "presigned"
        ).values(status="stored", stored_at=now))
        await insert_ignoring_duplicates(session, BackupPackRow.__table__, [
            {"backup_id": backup.id, "pack_id": p, "host_id": host.id} for p in packs])
        backup.status = "complete"
        backup.snapshot_id = body.snapshot_id
        if body.kind is not None:
            backup.kind = body.kind
        if body.parent_snapshot_id is not None or backup.kind == "full":
            backup.parent_snapshot_id = body.parent_snapshot_id
        backup.is_image = body.is_image
        backup.stats = body.stats.model_dump_json()
        backup.size_bytes = sum(uploads.values())
        backup.completed_at = backup.last_activity_at = now
        host.last_backup_at, host.last_backup_id = now, backup.id
        host.overdue_since = None
        host.storage_bytes += backup.size_bytes
        await catalog.write_record(store, backup, host, packs)
        await service.outbox.add(session, BackupUploaded(
            backup_id=backup.id, user_id=backup.user_id, host_id=host.id, host=host.name,
            snapshot_id=body.snapshot_id, kind=backup.kind, is_image=body.is_image,
            size_bytes=backup.size_bytes, completed_at=now))
    return backup_model(backup, host.name)


def _missing(keys: list[str]) -> Problem:
    return Problem(409, "Objects missing",
                   f"{len(keys)} object(s) the backup references are not in the repository "
                   "(or not of the size their URL was signed for)",
                   missing=sorted(keys)[:MISSING_NAMED], missing_count=len(keys))


@routes.post("/api/v1/backups/{backup_id}/fail", allow=AGENT, body=BackupFail, response=Backup,
             errors=(404, 409))
async def fail_backup(call: Call) -> Backup:
    """End a session that will not commit; what it uploaded is left to garbage collection
    (or to the next backup, which reuses it)."""
    service = call.service
    async with service.db.transaction() as session:
        backup, host = await _own_session(session, call, lock=True)
        if backup.status == "failed":
            return backup_model(backup, host.name)
        _require_uploading(backup)
        now = utcnow()
        backup.status, backup.failure_reason = "failed", call.body.reason
        backup.completed_at = backup.last_activity_at = now
        host.last_failure_at = now
        await service.outbox.add(session, BackupFailed(
            user_id=backup.user_id, host_id=host.id, host=host.name, reason=call.body.reason,
            backup_id=backup.id))
    return backup_model(backup, host.name)


# --- the agent's repository -------------------------------------------------------------------


def _encode_key_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_key_cursor(cursor: str) -> str:
    try:
        key = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_",
                               validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raise bad_request("the cursor is not one this API gave out") from None
    if not key or not domain.is_list_prefix(key):
        raise bad_request("the cursor is not one this API gave out")
    return key


@routes.get("/api/v1/repository/objects", allow=AGENT, query=ObjectsQuery,
            response=Page[RepositoryObject])
async def list_objects(call: Call) -> Page[RepositoryObject]:
    """Keys and sizes under the agent's own prefix, in key order."""
    service = call.service
    query: ObjectsQuery = call.query
    if not domain.is_list_prefix(query.prefix):
        raise Problem(422, "Invalid request", "a prefix is lowercase letters, digits and '/'",
                      errors=[{"location": ["query", "prefix"], "message": "not a repository prefix",
                               "type": "value_error"}])
    start_after = _decode_key_cursor(query.cursor) if query.cursor else None
    async with service.db.sessions() as session:
        host = await _agent_host(session, call)
    if host is None:
        return Page[RepositoryObject](items=[])
    store = service.host_store(host.user_id, host.id)
    page = await store.list_page(query.prefix, start_after, query.limit)
    items = [RepositoryObject(key=i.key, size=i.size) for i in page
             if not i.key.startswith(domain.CATALOG_PREFIX)]
    cursor = _encode_key_cursor(page[-1].key) if len(page) == query.limit else None
    return Page[RepositoryObject](items=items, next_cursor=cursor)


@routes.post("/api/v1/repository/download-urls", allow=AGENT, body=DownloadUrlsRequest,
             response=DownloadUrls)
async def download_urls(call: Call) -> DownloadUrls:
    """GET URLs for keys under the agent's own prefix; missing keys come back in `missing`."""
    service = call.service
    keys = list(dict.fromkeys(call.body.keys))
    bad = [i for i, k in enumerate(call.body.keys) if not domain.is_repository_key(k)]
    if bad:
        raise Problem(422, "Invalid request", f"{len(bad)} key(s) are not repository keys",
                      errors=[{"location": ["body", "keys", str(i)], "message": "not a repository key",
                               "type": "value_error"} for i in bad[:MISSING_NAMED]])
    async with service.db.sessions() as session:
        host = await _agent_host(session, call)
    if host is None:
        return DownloadUrls(urls=[], missing=keys)
    store = service.host_store(host.user_id, host.id)
    sizes = await service.sizes(store, keys)
    ttl = service.settings.url_ttl_seconds
    urls = [await store.presign_get(k, ttl) for k in keys if sizes[k] is not None]
    return DownloadUrls(urls=urls, missing=[k for k in keys if sizes[k] is None])


@routes.post("/api/v1/repository/forget", allow=AGENT, body=RetentionPolicy,
             response=ForgetResult, errors=(404, 422))
async def agent_forget(call: Call) -> ForgetResult:
    """Forget the agent's own host's backups that the policy doesn't keep."""
    async with call.service.db.sessions() as session:
        host = await _agent_host(session, call)
    if host is None:
        raise not_found("this host has no backups yet")
    return await _forget(call.service, host.id, call.body)


async def _forget(service, host_id: str, policy: RetentionPolicy) -> ForgetResult:
    try:
        async with service.db.transaction() as session:
            result = await retention.forget(session, host_id, policy, utcnow())
            service.wake_gc_after_commit(session)
    except domain.EmptyPolicy as e:
        raise Problem(422, "Invalid request", str(e)) from None
    return result


# --- the users' catalogue ---------------------------------------------------------------------


@routes.get("/api/v1/hosts", allow=USER, query=PageQuery, response=Page[Host])
async def list_hosts(call: Call) -> Page[Host]:
    """The caller's protected servers and their state, oldest first."""
    service = call.service
    async with service.db.sessions() as session:
        rows, cursor = await paginate(session, select(HostRow).where(HostRow.user_id == call.user_id),
                                      HostRow.created_at, HostRow.id, limit=call.query.limit,
                                      cursor=call.query.cursor)
        counts = await _backup_counts(session, [r.id for r in rows])
    hours = service.settings.overdue_after_hours
    return Page[Host](items=[host_model(r, counts.get(r.id, 0), hours) for r in rows],
                      next_cursor=cursor)


@routes.get("/api/v1/hosts/{host_id}", allow=USER, response=Host, errors=(404,))
async def get_host(call: Call) -> Host:
    async with call.service.db.sessions() as session:
        host = await _user_host(session, call)
        counts = await _backup_counts(session, [host.id])
    return host_model(host, counts.get(host.id, 0), call.service.settings.overdue_after_hours)


@routes.route("PUT", "/api/v1/hosts/{host_id}/retention", allow=USER, body=RetentionPolicy,
              response=Host, errors=(404,))
async def set_retention(call: Call) -> Host:
    """The policy the daily retention run applies to this host."""
    try:
        domain.check_policy(call.body)
    except domain.EmptyPolicy as e:
        raise Problem(422, "Invalid request", str(e)) from None
    async with call.service.db.transaction() as session:
        host = await _user_host(session, call)
        host.retention = call.body.model_dump_json()
        counts = await _backup_counts(session, [host.id])
    return host_model(host, counts.get(host.id, 0), call.service.settings.overdue_after_hours)


@routes.post("/api/v1/hosts/{host_id}/forget", allow=USER, body=RetentionPolicy,
             response=ForgetResult, errors=(404, 422))
async def user_forget(call: Call) -> ForgetResult:
    """Forget the host's backups that the policy doesn't keep (the newest is always kept)."""
    async with call.service.db.sessions() as session:
        host = await _user_host(session, call)
    return await _forget(call.service, host.id, call.body)


@routes.get("/api/v1/backups", allow=USER_OR_AGENT, query=BackupsQuery, response=Page[Backup])
async def list_backups(call: Call) -> Page[Backup]:
    """The catalogue, newest first: the user's backups (of one host with `host=`), or an
    agent's own host's."""
    query: BackupsQuery = call.query
    statement = (select(BackupRow, HostRow.name).join(HostRow, HostRow.id == BackupRow.host_id)
                 .where(BackupRow.user_id == call.user_id))
    if call.identity.kind == "agent":
        name = _agent_host_name(call)
        statement = statement.where(HostRow.name == name)
        if query.host is not None:
            async with call.service.db.sessions() as session:
                own = await _agent_host(session, call)
            if query.host not in (name, own.id if own else None):
                raise forbidden("an agent sees only its own host's backups")
    elif query.host is not None:
        statement = statement.where(or_(HostRow.id == query.host, HostRow.name == query.host))
    if query.cursor:
        started, row_id = decode_cursor(query.cursor)
        statement = statement.where(tuple_(BackupRow.started_at, BackupRow.id) < tuple_(started, row_id))
    statement = statement.order_by(BackupRow.started_at.desc(), BackupRow.id.desc()).limit(query.limit + 1)
    async with call.service.db.sessions() as session:
        rows = (await session.execute(statement)).all()
    cursor = None
    if len(rows) > query.limit:
        rows = rows[:query.limit]
        cursor = encode_cursor(rows[-1][0].started_at, rows[-1][0].id)
    return Page[Backup](items=[backup_model(b, name) for b, name in rows], next_cursor=cursor)


@routes.get("/api/v1/backups/{backup_id}", allow=USER_OR_AGENT, response=Backup, errors=(404,))
async def get_backup(call: Call) -> Backup:
    statement = (select(BackupRow, HostRow.name).join(HostRow, HostRow.id == BackupRow.host_id)
                 .where(BackupRow.id == call.param("backup_id"), BackupRow.user_id == call.user_id))
    if call.identity.kind == "agent":
        statement = statement.where(HostRow.name == _agent_host_name(call))
    async with call.service.db.sessions() as session:
        found = (await session.execute(statement)).first()
    if found is None:
        raise not_found("no such backup")
    return backup_model(found[0], found[1])
