"""Notifications: the REST models of ``/api/v1/notifications`` (docs/notifications.md).
Client-safe: pydantic only.

- ``GET /api/v1/notifications/settings``: where and what the caller is told;
- ``PUT /api/v1/notifications/settings``: replaces them (a field left out is cleared); the
  webhook's signing secret is made by the server and returned once, when it is made;
- ``POST /api/v1/notifications/settings/rotate-secret``: a new signing secret, returned once;
- ``GET /api/v1/notifications/deliveries``: recent messages and how they fared, newest first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from shared.api.common import PageQuery

# The events a customer can be told about (shared/events.py has their payloads).
EventKind = Literal[
    "BackupFailed",
    "BackupOverdue",
    "RecoveryFailed",
    "RecoveryCompleted",
    "InstanceReady",
    "DrillFailed",
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)

Channel = Literal["webhook", "email"]
DeliveryState = Literal["pending", "sending", "delivered", "failed"]

# Browsers and proxies handle URLs up to about this long; a webhook URL needs far less.
WEBHOOK_URL_MAX = 2048
# RFC 5321's limit on a forward path (an address in RCPT TO).
EMAIL_MAX = 254

SIGNATURE_HEADER = "X-Reclo-Signature"


class NotificationSettingsRequest(BaseModel):
    """The whole of a user's settings: what is left out is cleared."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(
        default=None, min_length=1, max_length=WEBHOOK_URL_MAX,
        description="http(s) URL that receives a signed JSON POST per event; null: none")
    email: str | None = Field(default=None, min_length=3, max_length=EMAIL_MAX,
                              description="address that receives a plain-text e-mail per event")
    events: list[EventKind] | None = Field(
        default=None, max_length=64,
        description="the event kinds to send; null: all of them, including kinds added later")


class NotificationSettings(BaseModel):
    webhook_url: str | None = None
    # The last four characters of the signing secret, to tell which one a receiver holds.
    webhook_secret_hint: str | None = None
    # After a rotation, the old secret also signs webhooks until then.
    previous_secret_valid_until: datetime | None = None
    email: str | None = None
    events: list[EventKind] = Field(default_factory=lambda: list(EVENT_KINDS))
    all_events: bool = True
    updated_at: datetime | None = None


class NotificationSettingsSaved(NotificationSettings):
    webhook_secret: str | None = Field(
        default=None,
        description="the webhook signing secret, present only when it was just made: store it")


class Delivery(BaseModel):
    id: str
    event_id: str
    event_type: str
    channel: Channel
    # The webhook URL or the e-mail address the message goes to.
    target: str
    state: DeliveryState
    attempts: int
    last_error: str | None = None
    created_at: datetime
    # When the next attempt is due (pending) or the current one's claim ends (sending).
    next_attempt_at: datetime | None = None
    # When it was delivered or given up.
    finished_at: datetime | None = None


class DeliveriesQuery(PageQuery):
    state: DeliveryState | None = None
