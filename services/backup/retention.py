"""Forgetting by policy: which of a host's backups a policy no longer keeps, marked
`forgotten` in the caller's transaction. Their objects go later, in garbage collection
(gc.py), once the transaction has committed; the rules are in domain.select_kept."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.backup import domain
from services.backup.queries import batches, lock_host
from services.backup.tables import BackupRow, HostRow
from shared.api.backup import ForgetResult, RetentionPolicy


def policy_of(host: HostRow, default: RetentionPolicy) -> RetentionPolicy:
    return RetentionPolicy.model_validate_json(host.retention) if host.retention else default


async def forget(session: AsyncSession, host_id: str, policy: RetentionPolicy,
                 now: datetime) -> ForgetResult:
    """Apply the policy to the host's complete backups; raises domain.EmptyPolicy."""
    domain.check_policy(policy)
    await lock_host(session, host_id)  # a commit adding a backup waits, or is seen
    rows = (await session.execute(
        select(BackupRow.id, BackupRow.completed_at, BackupRow.source_group)
        .where(BackupRow.host_id == host_id, BackupRow.status == "complete"))).all()
    candidates = [domain.Candidate(r.id, r.completed_at, r.source_group) for r in rows]
    kept, forgotten = domain.select_kept(candidates, policy)
    for chunk in batches(forgotten):
        await session.execute(
            update(BackupRow).where(BackupRow.id.in_(chunk), BackupRow.status == "complete")
            .values(status="forgotten", forgotten_at=now))
    await session.execute(update(HostRow).where(HostRow.id == host_id).values(gc_due_at=now))
    return ForgetResult(kept=kept, forgotten=forgotten)
