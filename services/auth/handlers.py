"""Auth's event handlers: session expiry, and turning the events a customer cares about
into notification deliveries (docs/notifications.md)."""

from __future__ import annotations

from sqlalchemy import update

from services.auth.notifications import delivery
from services.auth.tables import TokenRow
from shared.events import (
    BackupFailed,
    BackupOverdue,
    DrillFailed,
    Event,
    InstanceReady,
    RecoveryCompleted,
    RecoveryFailed,
    TokensExpiryDue,
    utcnow,
)
from shared.inbox import Context
from shared.logs import get_logger

log = get_logger(__name__)


async def deactivate_expired_sessions(ctx: Context, event: TokensExpiryDue) -> None:
    """The seed's daily ManageSession job: expired session tokens are deactivated (kept for
    audit, never deleted). Introspection refuses them from their expiry on anyway."""
    result = await ctx.session.execute(
        update(TokenRow)
        .where(TokenRow.kind == "session", TokenRow.active.is_(True),
               TokenRow.expires_at <= event.scheduled_for)
        .values(active=False, deactivated_at=utcnow(), deactivated_reason="expired")
    )
    log.info("expired sessions deactivated", count=result.rowcount)


async def notify(ctx: Context, event: Event) -> None:
    """Record the messages this event makes for its user; the background sender sends
    them. Nothing here waits on a receiver, so a dead webhook never holds up the bus."""
    rows = await delivery.record(ctx.session, ctx.envelope, event, now=utcnow())
    if rows:
        ctx.service.sender.wake_after_commit(ctx.session)


EVENT_HANDLERS = {
    TokensExpiryDue: deactivate_expired_sessions,
    # What each says: services/auth/notifications/messages.py (KINDS).
    BackupFailed: notify,
    BackupOverdue: notify,
    RecoveryFailed: notify,
    RecoveryCompleted: notify,
    InstanceReady: notify,
    DrillFailed: notify,
}
