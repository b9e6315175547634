"""The backup service's REST models: hosts, the backup catalogue, and the agent's backup
session (presigned URLs, then commit). Client-safe: the agent uses these too.

The agent's repository (docs/format.md) lives under its own prefix of the bucket,
``<user id>/<host id>/``; every ``key`` below is relative to that prefix (``data/ab/<id>``,
``index/<id>``, ``snapshots/<id>``, ``keys/<id>``, ``config``). The agent holds no cloud
credentials: it reads and writes only through short-lived URLs the service presigns for
keys under its own prefix, and it can never delete or overwrite (append-only).

A backup session:
1. ``POST /api/v1/backups`` opens it (status ``uploading``);
2. ``POST /api/v1/backups/{id}/upload-urls`` for the objects to store: keys that already
   exist come back in ``existing`` (the agent skips them: an interrupted backup resumes
   without uploading again), the others get a PUT URL each;
3. the agent PUTs each object to its URL;
4. ``POST /api/v1/backups/{id}/commit`` with the snapshot: the service checks that every
   object the backup references exists, records the backup, emits ``BackupUploaded``.
   Or ``POST /api/v1/backups/{id}/fail`` with a reason, which emits ``BackupFailed``.
Reading (incremental parent, restore, check): ``GET /api/v1/repository/objects?prefix=``
lists keys, ``POST /api/v1/repository/download-urls`` presigns GETs.

Retention: ``POST /api/v1/hosts/{id}/forget`` (user) or ``POST /api/v1/repository/forget``
(agent, its own host) with a ``RetentionPolicy`` marks the backups it doesn't keep
``forgotten``; ``PUT /api/v1/hosts/{id}/retention`` sets the policy the daily retention run
applies to that host. Garbage collection then deletes packs no kept backup references.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

# Presigned URLs live this long: long enough for a 32 MiB pack over a thin uplink.
URL_TTL_SECONDS = 900
MAX_KEYS_PER_REQUEST = 1000
KEY_PATTERN = r"^(config|keys/[0-9a-f]{64}|data/[0-9a-f]{2}/[0-9a-f]{64}|index/[0-9a-f]{64}|snapshots/[0-9a-f]{64}|dicts/[0-9a-f]{64})$"

_PACK_ID = re.compile(r"^[0-9a-f]{64}$")

BackupKind = Literal["full", "incremental"]
BackupStatus = Literal["uploading", "complete", "failed", "forgotten"]
HostState = Literal["ok", "overdue", "failing", "never"]


class SourceSpec(BaseModel):
    path: str = Field(min_length=1, max_length=4096)
    type: Literal["folder", "image"]


class BackupStart(BaseModel):
    # The session's id, chosen by the agent so that it can note the id before it asks: a
    # run killed (or cut off) after the server opened the session but before the answer
    # came back still leaves its next run the id to close. Sent again by the same host,
    # it names the same session (a retried request); without it the server picks one.
    id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    kind: BackupKind
    parent_snapshot_id: str | None = Field(default=None, max_length=64)
    sources: list[SourceSpec] = Field(min_length=1, max_length=100)
    agent_version: str = Field(default="", max_length=64)


class ObjectSpec(BaseModel):
    key: str = Field(pattern=KEY_PATTERN)
    size: int = Field(ge=0, le=1 << 40)
    # For an index/ object: the ids of the packs it describes. Optional; with it, garbage
    # collection may delete the index file once all those packs are gone (without it the
    # file is kept, since the service cannot read it).
    packs: list[str] | None = Field(default=None, max_length=10_000)

    @field_validator("packs")
    @classmethod
    def _pack_ids(cls, packs: list[str] | None) -> list[str] | None:
        if packs is not None and not all(_PACK_ID.fullmatch(p) for p in packs):
            raise ValueError("pack ids are 64 lowercase hex digits")
        return packs


class UploadUrlsRequest(BaseModel):
    objects: list[ObjectSpec] = Field(min_length=1, max_length=MAX_KEYS_PER_REQUEST)


class PresignedUrl(BaseModel):
    key: str
    url: str
    method: Literal["PUT", "GET"]
    # Headers the request must carry exactly as given (they are part of the signature).
    headers: dict[str, str] = {}
    expires_at: datetime


class UploadUrls(BaseModel):
    urls: list[PresignedUrl]
    # Keys already stored: skip them.
    existing: list[str] = []


class SnapshotStats(BaseModel):
    files: int = Field(default=0, ge=0)
    dirs: int = Field(default=0, ge=0)
    bytes: int = Field(default=0, ge=0, description="logical size of what was backed up")
    new_bytes: int = Field(default=0, ge=0, description="bytes uploaded by this backup")
    chunks: int = Field(default=0, ge=0)
    new_chunks: int = Field(default=0, ge=0)
    duration_seconds: float = Field(default=0, ge=0)
    warnings: int = Field(default=0, ge=0)


class BackupCommit(BaseModel):
    snapshot_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    # Every pack the snapshot's data lives in (its own and older ones it reuses): what
    # retention must keep while this backup is kept.
    packs: list[str] = Field(default_factory=list, max_length=1_000_000)
    is_image: bool
    stats: SnapshotStats
    # What the backup turned out to be, when it differs from what the session was opened
    # as (an incremental without a usable parent becomes a full; the parent may be chosen
    # only while backing up).
    kind: BackupKind | None = None
    parent_snapshot_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class BackupFail(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class Backup(BaseModel):
    id: str
    host_id: str
    host: str
    kind: BackupKind
    status: BackupStatus
    is_image: bool
    snapshot_id: str | None = None
    parent_snapshot_id: str | None = None
    sources: list[SourceSpec]
    stats: SnapshotStats | None = None
    size_bytes: int = 0
    failure_reason: str | None = None
    started_at: datetime
    completed_at: datetime | None = None


class BackupsQuery(BaseModel):
    host: str | None = Field(default=None, max_length=255, description="host id or name")
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=512)


class Host(BaseModel):
    id: str
    name: str
    state: HostState
    last_backup_at: datetime | None = None
    last_backup_id: str | None = None
    next_backup_due: datetime | None = None
    storage_bytes: int = 0
    backups: int = 0
    created_at: datetime
    # The host's own retention policy; None: the service's default applies.
    retention: RetentionPolicy | None = None


class RepositoryObject(BaseModel):
    key: str
    size: int


class ObjectsQuery(BaseModel):
    prefix: str = Field(default="", max_length=200)
    limit: int = Field(default=1000, ge=1, le=MAX_KEYS_PER_REQUEST)
    cursor: str | None = Field(default=None, max_length=1024)


class DownloadUrlsRequest(BaseModel):
    keys: list[str] = Field(min_length=1, max_length=MAX_KEYS_PER_REQUEST)


class DownloadUrls(BaseModel):
    urls: list[PresignedUrl]
    missing: list[str] = []


class RetentionPolicy(BaseModel):
    keep_last: int = Field(default=0, ge=0, le=10_000)
    keep_daily: int = Field(default=0, ge=0, le=10_000)
    keep_weekly: int = Field(default=0, ge=0, le=10_000)
    keep_monthly: int = Field(default=0, ge=0, le=10_000)


class ForgetResult(BaseModel):
    kept: list[str]
    forgotten: list[str]
