"""Auth's event handlers."""

from __future__ import annotations

from sqlalchemy import update

from services.auth.tables import TokenRow
from shared.events import TokensExpiryDue, utcnow
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


EVENT_HANDLERS = {
    TokensExpiryDue: deactivate_expired_sessions,
}
