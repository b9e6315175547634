"""Backup's event handlers: the scheduler's retention and overdue ticks.

Both work in the handler's transaction (with the inbox row), in pages of hosts, and use
the tick's `scheduled_for` as "now", so a redelivered or late tick decides the same way.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from services.backup import retention
from services.backup.tables import BackupRow, HostRow
from shared.events import BackupFailed, BackupOverdue, BackupsOverdueCheckDue, BackupsRetentionDue
from shared.inbox import Context
from shared.logs import get_logger

log = get_logger(__name__)

HOSTS_PER_PAGE = 200


async def apply_retention(ctx: Context, event: BackupsRetentionDue) -> None:
    """Apply each host's policy (or the default), then let the collector delete what no
    kept backup needs. Every host is marked for collection, so packs of interrupted
    sessions go too once they are past the grace period."""
    service = ctx.service
    default = service.default_policy()
    forgotten = 0
    after = ""
    while True:
        hosts = (await ctx.session.scalars(
            select(HostRow).where(HostRow.id > after).order_by(HostRow.id).limit(HOSTS_PER_PAGE))).all()
        if not hosts:
            break
        for host in hosts:
            after = host.id
            result = await retention.forget(ctx.session, host.id, retention.policy_of(host, default),
                                            event.scheduled_for)
            forgotten += len(result.forgotten)
    service.wake_gc_after_commit(ctx.session)
    log.info("retention applied", forgotten=forgotten)


async def check_overdue(ctx: Context, event: BackupsOverdueCheckDue) -> None:
    """Fail sessions abandoned mid-way, and flag hosts whose last successful backup (or
    whose creation, if none) is older than allowed: one BackupOverdue per episode, which
    the host's next successful backup ends."""
    service = ctx.service
    settings = service.settings
    now = event.scheduled_for
    await _fail_abandoned(ctx, now - timedelta(hours=settings.session_timeout_hours), now)
    cutoff = now - timedelta(hours=settings.overdue_after_hours)
    flagged = 0
    while True:
        hosts = (await ctx.session.scalars(
            select(HostRow)
            .where(HostRow.overdue_since.is_(None),
                   func.coalesce(HostRow.last_backup_at, HostRow.created_at) < cutoff)
            .order_by(HostRow.id).limit(HOSTS_PER_PAGE))).all()
        if not hosts:
            break
        for host in hosts:
            host.overdue_since = now
            await ctx.emit(BackupOverdue(user_id=host.user_id, host_id=host.id, host=host.name,
                                         last_backup_at=host.last_backup_at,
                                         allowed_age_hours=settings.overdue_after_hours))
        await ctx.session.flush()
        flagged += len(hosts)
    log.info("overdue check", flagged=flagged)


async def _fail_abandoned(ctx: Context, idle_since, now) -> None:
    while True:
        rows = (await ctx.session.execute(
            select(BackupRow, HostRow).join(HostRow, HostRow.id == BackupRow.host_id)
            .where(BackupRow.status == "uploading", BackupRow.last_activity_at < idle_since)
            .limit(HOSTS_PER_PAGE))).all()
        if not rows:
            return
        for backup, host in rows:
            reason = "abandoned: the agent sent nothing for too long"
            backup.status, backup.failure_reason, backup.completed_at = "failed", reason, now
            if host.last_failure_at is None or host.last_failure_at < now:
                host.last_failure_at = now
            await ctx.emit(BackupFailed(user_id=backup.user_id, host_id=host.id, host=host.name,
                                        reason=reason, backup_id=backup.id))
        await ctx.session.flush()


EVENT_HANDLERS = {
    BackupsRetentionDue: apply_retention,
    BackupsOverdueCheckDue: check_overdue,
}
