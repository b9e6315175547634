"""The per-user notification settings: reading, replacing, rotating the signing secret, and
what they say about one event."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.notifications import signing
from services.auth.tables import NotificationSettingsRow
from shared.api.notifications import EVENT_KINDS, NotificationSettings

# Characters of the secret shown as a hint: enough to tell two apart, nothing to guess with.
HINT_CHARS = 4


async def load(session: AsyncSession, user_id: str, *, for_update: bool = False
               ) -> NotificationSettingsRow | None:
    query = select(NotificationSettingsRow).where(NotificationSettingsRow.user_id == user_id)
    if for_update:
        query = query.with_for_update()
    return await session.scalar(query)


def view(row: NotificationSettingsRow | None, now: datetime) -> NotificationSettings:
    if row is None:
        return NotificationSettings()
    kinds = chosen_events(row)
    grace = row.previous_secret_until
    return NotificationSettings(
        webhook_url=row.webhook_url,
        webhook_secret_hint=("…" + row.webhook_secret[-HINT_CHARS:]) if row.webhook_secret
        else None,
        previous_secret_valid_until=grace if row.previous_secret and grace and grace > now
        else None,
        email=row.email,
        events=list(kinds),
        all_events=row.events is None,
        updated_at=row.updated_at,
    )


def chosen_events(row: NotificationSettingsRow) -> tuple[str, ...]:
    if row.events is None:
        return EVENT_KINDS
    chosen = set(row.events.split(",")) if row.events else set()
    return tuple(k for k in EVENT_KINDS if k in chosen)


def wants(row: NotificationSettingsRow, event_type: str) -> bool:
    return event_type in chosen_events(row)


async def replace(session: AsyncSession, user_id: str, *, webhook_url: str | None,
                  email: str | None, events: list[str] | None, now: datetime
                  ) -> tuple[NotificationSettingsRow, str | None]:
    """Replace a user's settings; returns the row and the signing secret if one was made
    (the first time a webhook is set). A webhook that stays keeps its secret; removing the
    webhook forgets it, so setting one again later makes a new one."""
    row = await load(session, user_id, for_update=True)
    if row is None:
        row = NotificationSettingsRow(user_id=user_id, created_at=now)
        session.add(row)
    made = None
    if webhook_url is None:
        row.webhook_secret = row.previous_secret = row.previous_secret_until = None
    elif row.webhook_secret is None:
        made = row.webhook_secret = signing.new_secret()
    row.webhook_url = webhook_url
    row.email = email
    row.events = None if events is None else ",".join(k for k in EVENT_KINDS if k in events)
    row.updated_at = now
    return row, made


async def rotate(session: AsyncSession, user_id: str, *, now: datetime,
                 grace_seconds: float) -> tuple[NotificationSettingsRow, str] | None:
    """A new signing secret; the old one also signs for ``grace_seconds``. None when the
    user has no webhook."""
    row = await load(session, user_id, for_update=True)
    if row is None or row.webhook_url is None:
        return None
    if grace_seconds > 0 and row.webhook_secret:
        row.previous_secret = row.webhook_secret
        row.previous_secret_until = now + timedelta(seconds=grace_seconds)
    else:
        row.previous_secret = row.previous_secret_until = None
    secret = row.webhook_secret = signing.new_secret()
    row.updated_at = now
    return row, secret


def signing_secrets(row: NotificationSettingsRow | None, now: datetime) -> list[str]:
    """The secrets a webhook is signed with now: the current one, and the previous one
    during its grace period."""
    if row is None or row.webhook_secret is None:
        return []
    found = [row.webhook_secret]
    if row.previous_secret and row.previous_secret_until and row.previous_secret_until > now:
        found.append(row.previous_secret)
    return found
