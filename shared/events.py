"""The event catalog: the single source of truth for what travels on the bus.

Every message is an :class:`Envelope` (DESIGN.md §2) whose ``payload`` is one of the
:class:`Event` models below. Routing key: ``<source service>.<event in snake case>``.
An event's ``version`` grows when its payload changes incompatibly; consumers ignore fields
they don't know, so adding an optional field needs no new version.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError


class MalformedMessage(Exception):
    """A message that no retry can fix: it goes straight to the dead letters."""


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    source: ClassVar[str]
    version: ClassVar[int] = 1

    @classmethod
    def type_name(cls) -> str:
        return cls.__name__

    @classmethod
    def routing_key(cls) -> str:
        return f"{cls.source}.{_snake(cls.__name__)}"


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    version: int
    occurred_at: datetime
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    payload: dict[str, Any]

    @property
    def routing_key(self) -> str:
        return CATALOG[self.type].routing_key() if self.type in CATALOG else self.type

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def envelope_for(
    event: Event,
    *,
    correlation_id: uuid.UUID | None = None,
    causation: Envelope | None = None,
) -> Envelope:
    """Wrap an event; an event caused by another keeps its correlation id."""
    if correlation_id is None:
        correlation_id = causation.correlation_id if causation else uuid.uuid4()
    return Envelope(
        type=event.type_name(),
        version=event.version,
        occurred_at=utcnow(),
        correlation_id=correlation_id,
        causation_id=causation.id if causation else None,
        payload=event.model_dump(mode="json"),
    )


def decode_envelope(body: bytes) -> Envelope:
    try:
        return Envelope.model_validate(json.loads(body))
    except (ValueError, ValidationError) as exc:
        raise MalformedMessage(f"not an event envelope: {_short(exc)}") from None


def payload_of(envelope: Envelope) -> Event:
    cls = CATALOG.get(envelope.type)
    if cls is None:
        raise MalformedMessage(f"unknown event type {envelope.type!r}")
    if envelope.version != cls.version:
        raise MalformedMessage(
            f"{envelope.type} version {envelope.version} is not supported (expected {cls.version})"
        )
    try:
        return cls.model_validate(envelope.payload)
    except ValidationError as exc:
        raise MalformedMessage(f"invalid {envelope.type} payload: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


# ---------------------------------------------------------------------------------------
# auth
# ---------------------------------------------------------------------------------------


class TokenEnded(Event):
    """A session logged out or an agent key revoked: every gateway replica drops it from
    its cache of token checks at once (the token itself never travels)."""

    source = "auth"
    token_id: str
    user_id: str
    reason: str


# ---------------------------------------------------------------------------------------
# backup
# ---------------------------------------------------------------------------------------


class BackupUploaded(Event):
    source = "backup"
    backup_id: str
    user_id: str
    host_id: str
    host: str
    snapshot_id: str
    kind: Literal["full", "incremental"]
    is_image: bool
    size_bytes: int
    completed_at: datetime


class BackupFailed(Event):
    source = "backup"
    user_id: str
    host_id: str
    host: str
    reason: str
    backup_id: str | None = None


class BackupOverdue(Event):
    source = "backup"
    user_id: str
    host_id: str
    host: str
    last_backup_at: datetime | None
    allowed_age_hours: float


# ---------------------------------------------------------------------------------------
# recovery
# ---------------------------------------------------------------------------------------


class RecoveryRequested(Event):
    source = "recovery"
    recovery_id: str
    user_id: str
    backup_id: str
    target: str


class RecoveryProgressed(Event):
    source = "recovery"
    recovery_id: str
    user_id: str
    state: str
    total_progress: int
    state_progress: int
    message: str = ""


class RecoveryFailed(Event):
    source = "recovery"
    recovery_id: str
    user_id: str
    reason: str


class RecoveryCompleted(Event):
    source = "recovery"
    recovery_id: str
    user_id: str
    instance_id: str | None = None


class DrillPassed(Event):
    """A recovery drill assembled a host's newest image backup and verified all of it."""

    source = "recovery"
    drill_id: str
    user_id: str
    host_id: str
    backup_id: str
    duration_seconds: float


class DrillFailed(Event):
    source = "recovery"
    drill_id: str
    user_id: str
    host_id: str
    backup_id: str
    reason: str


class ImportCompleted(Event):
    source = "recovery"
    recovery_id: str
    user_id: str
    provider: str
    image_ref: str
    # The machine size the customer asked for (aws); absent: the configured default.
    instance_type: str | None = None


# ---------------------------------------------------------------------------------------
# instances
# ---------------------------------------------------------------------------------------


class InstanceReady(Event):
    source = "instances"
    instance_id: str
    user_id: str
    recovery_id: str
    address: str | None = None


class InstanceLaunchFailed(Event):
    source = "instances"
    recovery_id: str
    user_id: str
    reason: str


class InstanceStopped(Event):
    source = "instances"
    instance_id: str
    user_id: str


class InstanceTerminated(Event):
    source = "instances"
    instance_id: str
    user_id: str


# ---------------------------------------------------------------------------------------
# scheduler ticks: each carries the time it was scheduled for, so handlers are idempotent
# ---------------------------------------------------------------------------------------


class Tick(Event):
    source = "scheduler"
    scheduled_for: AwareDatetime  # a tick without a time zone is malformed: dead-lettered


class TokensExpiryDue(Tick):
    pass


class InstancesCleanupDue(Tick):
    pass


class RecoveriesTimeoutDue(Tick):
    pass


class RecoveriesReconcileDue(Tick):
    pass


class BackupsRetentionDue(Tick):
    pass


class BackupsOverdueCheckDue(Tick):
    pass


class BackupsVerifyDue(Tick):
    pass


CATALOG: dict[str, type[Event]] = {
    cls.type_name(): cls
    for cls in (
        TokenEnded,
        BackupUploaded,
        BackupFailed,
        BackupOverdue,
        RecoveryRequested,
        RecoveryProgressed,
        RecoveryFailed,
        RecoveryCompleted,
        DrillPassed,
        DrillFailed,
        ImportCompleted,
        InstanceReady,
        InstanceLaunchFailed,
        InstanceStopped,
        InstanceTerminated,
        TokensExpiryDue,
        InstancesCleanupDue,
        RecoveriesTimeoutDue,
        RecoveriesReconcileDue,
        BackupsRetentionDue,
        BackupsOverdueCheckDue,
        BackupsVerifyDue,
    )
}
