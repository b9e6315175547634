"""The recovery service's REST models: turning an image backup into a machine. Client-safe:
the Recovery Manager uses these too.

A recovery moves through ``pending → downloading → importing → finishing → complete``, or
ends ``failed`` with a reason in plain words (docs/recovery.md):

- ``POST /api/v1/recoveries`` asks for one (201); a passphrase, when sent, is kept only in
  the memory of the worker that runs the task, never stored;
- ``GET /api/v1/recoveries`` (paginated) and ``GET /api/v1/recoveries/{id}`` show state,
  progress in percent (``total_progress`` over the whole task, ``state_progress`` within
  the current state), the last status message and, on failure, the reason;
- ``POST /api/v1/recoveries/{id}/cancel`` stops one that is not finished;
- ``GET /api/v1/recoveries/{id}/image`` downloads a local image (resumable: Range requests
  answered 206 with Content-Range; ETag and If-Range).

Recovery drills (weekly: each host's newest image backup assembled, verified, thrown away):

- ``GET /api/v1/drills?host=`` (paginated, newest first) and ``GET /api/v1/drills/{id}``:
  the backup drilled, when, how long, and ``passed``/``failed``/``skipped`` with the reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

Target = Literal["aws", "local"]
DiskFormat = Literal["raw", "vhd", "vmdk"]
RecoveryState = Literal["pending", "downloading", "importing", "finishing", "complete", "failed"]

# Longest passphrase accepted: far beyond any real one, short enough to bound the work.
MAX_PASSPHRASE = 1024


class RecoveryRequest(BaseModel):
    backup_id: str = Field(min_length=1, max_length=64)
    target: Target
    # The disk format of a local image (raw by default); aws picks what EC2 takes.
    format: DiskFormat | None = None
    # The EC2 instance type the machine should run as (aws), e.g. "m6i.large".
    instance_type: str | None = Field(default=None, pattern=r"^[a-z0-9-]+\.[a-z0-9-]+$",
                                      max_length=32)
    # Opens the backup when the customer did not enable server-side (KMS) recovery.
    passphrase: SecretStr | None = Field(default=None, min_length=1, max_length=MAX_PASSPHRASE)


class Recovery(BaseModel):
    id: str
    backup_id: str
    host_id: str
    host: str
    snapshot_id: str
    target: Target
    format: DiskFormat
    instance_type: str | None = None
    state: RecoveryState
    total_progress: int = Field(ge=0, le=100)
    state_progress: int = Field(ge=0, le=100)
    message: str = ""
    failure_reason: str | None = None
    # Bytes of the disk (as the machine sees it), once known.
    disk_bytes: int | None = None
    # aws: the AMI id; local: the image's id (download it from image_url).
    image_ref: str | None = None
    image_url: str | None = None
    image_bytes: int | None = None
    image_sha256: str | None = None
    instance_id: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


DrillState = Literal["pending", "running", "passed", "failed", "skipped"]


class DrillsQuery(BaseModel):
    host: str | None = Field(default=None, max_length=255, description="host id or name")
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=512)


class Drill(BaseModel):
    id: str
    host_id: str
    host: str
    backup_id: str
    snapshot_id: str
    # The weekly tick that asked for it.
    scheduled_for: datetime
    state: DrillState
    # True passed, False failed; None while it runs or when it was skipped.
    ok: bool | None = None
    # Why it failed or was skipped, in plain words.
    reason: str | None = None
    # What was verified: the disk's size, its bytes in stored chunks, and those chunks.
    disk_bytes: int | None = None
    data_bytes: int | None = None
    chunks_verified: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
