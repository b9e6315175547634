"""Composition root of auth: its settings, database, password hasher, throttle, notification
sender, routes and handlers, wired into a runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.auth import api, handlers, tables
from services.auth.domain import LoginThrottle
from services.auth.notifications.delivery import Sender
from shared.bus import Bus
from shared.runtime import ServiceRuntime
from shared.settings import AuthSettings, Settings

MIGRATIONS = Path(__file__).parent / "migrations"


class Auth:
    """What auth's routes and handlers share."""

    def __init__(self, settings: AuthSettings, runtime: ServiceRuntime) -> None:
        self.settings = settings
        self.db = runtime.db
        self.outbox = runtime.outbox
        self.throttle = LoginThrottle(
            settings.login_window_seconds,
            settings.login_failures_per_username,
            settings.login_failures_per_address,
        )
        # Argon2id with argon2-cffi's defaults (RFC 9106's second recommendation).
        self.hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        # Verified against when the username is unknown, so both cases take as long.
        self._decoy_hash = self.hasher.hash("decoy password, never a real one")
        # Sends notification deliveries in the background (runtime.background).
        self.sender = Sender(settings, runtime.db)

    async def hash_password(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify_password(self, password_hash: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self.hasher.verify(password_hash or self._decoy_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        ok = await asyncio.to_thread(check)
        return ok and password_hash is not None


def build(settings: Settings, bus: Bus, key: bytes) -> ServiceRuntime:
    runtime = ServiceRuntime(
        name="auth",
        settings=settings,
        bus=bus,
        key=key,
        routes=[api.routes, api.notification_routes],
        handlers=handlers.EVENT_HANDLERS,
        metadata=tables.metadata,
        migrations=MIGRATIONS,
    )
    runtime.context = Auth(settings.auth, runtime)
    runtime.background.append(runtime.context.sender.run)
    return runtime
