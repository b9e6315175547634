"""Composition root of backup: its settings, database, bucket, routes, handlers and the
garbage collector, wired into a runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession

from services.backup import api, domain, gc, handlers, objects, tables
from shared.api.backup import RetentionPolicy
from shared.bus import Bus
from shared.format.errors import ObjectNotFound
from shared.objectstore import BucketStore, open_bucket_store
from shared.runtime import ServiceRuntime
from shared.settings import BackupSettings, Settings

MIGRATIONS = Path(__file__).parent / "migrations"


class Backup:
    """What backup's routes, handlers and collector share."""

    def __init__(self, settings: BackupSettings, runtime: ServiceRuntime, store: BucketStore) -> None:
        self.settings = settings
        self.db = runtime.db
        self.outbox = runtime.outbox
        # The bucket under the configured key prefix; each host's repository is a scope of it.
        self.store = store
        self.gc_wake = asyncio.Event()

    def host_store(self, user_id: str, host_id: str) -> BucketStore:
        return self.store.scoped(domain.host_prefix(user_id, host_id))

    def default_policy(self) -> RetentionPolicy:
        s = self.settings
        return RetentionPolicy(keep_last=s.retention_keep_last, keep_daily=s.retention_keep_daily,
                               keep_weekly=s.retention_keep_weekly,
                               keep_monthly=s.retention_keep_monthly)

    def wake_gc_after_commit(self, session: AsyncSession) -> None:
        """Let the collector run once this transaction (which marked garbage) commits."""
        sa_event.listen(session.sync_session, "after_commit", lambda _s: self.gc_wake.set(),
                        once=True)

    async def sizes(self, store: BucketStore, keys: Iterable[str]) -> dict[str, int | None]:
        """Each key's size, or None where the object is missing; a few HEADs at a time."""
        gate = asyncio.Semaphore(self.settings.head_concurrency)

        async def one(key: str) -> tuple[str, int | None]:
            async with gate:
                try:
                    return key, await store.size(key)
                except ObjectNotFound:
                    return key, None

        return dict(await asyncio.gather(*(one(k) for k in dict.fromkeys(keys))))


def build(settings: Settings, bus: Bus, key: bytes) -> ServiceRuntime:
    runtime = ServiceRuntime(
        name="backup",
        settings=settings,
        bus=bus,
        key=key,
        routes=[api.routes],
        handlers=handlers.EVENT_HANDLERS,
        metadata=tables.metadata,
        migrations=MIGRATIONS,
        # A commit carries the snapshot's pack list; the gateway bounds every other body.
        max_body_bytes=settings.gateway.max_object_bytes,
    )
    service = Backup(settings.backup, runtime, open_bucket_store(settings, key))
    runtime.context = service
    objects.add_routes(runtime.app)

    async def garbage_collector() -> None:
        await gc.collector(service)

    runtime.background.append(garbage_collector)
    runtime.app.on_cleanup.append(lambda _app: service.store.close())
    return runtime
