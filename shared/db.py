"""The database port: one async engine per service, on the database that service owns.

MySQL/MariaDB through aiomysql in production; SQLite files through aiosqlite in the embedded
mode and some unit tests. Code above this module does not know which it talks to, except
where a statement needs row locks (:attr:`Database.supports_row_locks`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import DateTime, event, exc, text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.types import TypeDecorator

# How long SQLite waits for another writer before failing with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 10_000

# A pooled connection unused for longer than this is pinged before it is handed out (the
# server may have closed it, restarted, failed over). One used moments ago is not: pinging
# on every checkout cost a network round trip per transaction, ~15 % of the bus's
# throughput. A server gone within this second fails at most one transaction per pooled
# connection, which the caller's retry (inbox, outbox relay, HTTP client) absorbs.
IDLE_PING_SECONDS = 1.0


def _rollback_if_in_transaction(dbapi_connection, record, state) -> None:
    """Reset a connection given back to the pool: roll back only if the server says a
    transaction is open. A session that committed gives its connection back without one,
    and the pool's default ROLLBACK cost every transaction a round trip (~6 % of a service's
    CPU on one-event transactions, docs/BENCHMARKS.md "Bus")."""
    if state.terminate_only or not state.asyncio_safe:
        return  # being discarded, or outside the event loop: nothing to reuse
    driver = getattr(dbapi_connection, "driver_connection", None)
    in_transaction = getattr(driver, "get_transaction_status", None)
    if in_transaction is None or in_transaction():
        dbapi_connection.rollback()


def _note_checkin(dbapi_connection, record) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dialect):
    """Pessimistic disconnect handling for idle connections only: raising
    DisconnectionError makes the pool drop this connection and hand out a fresh one."""

    def on_checkout(dbapi_connection, record, proxy) -> None:
        last = record.info.get("checked_in_at")
        if last is None or time.monotonic() - last < IDLE_PING_SECONDS:
            return  # new (just connected) or used moments ago
        try:
            dialect.do_ping(dbapi_connection)  # the driver's own ping (COM_PING on MySQL)
        except Exception as e:
            raise exc.DisconnectionError(str(e)) from e

    return on_checkout


class UTCDateTime(TypeDecorator):
    """Times are UTC everywhere; MySQL and SQLite keep no zone, so strip it on the way in
    and put it back on the way out."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name in ("mysql", "mariadb"):
            # MySQL's DATETIME drops fractions of a second unless asked for them.
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=False))

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect):
        return None if value is None else value.replace(tzinfo=UTC)


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict = {"echo": echo}
        if not self.is_sqlite:
            # The pool's reset is _rollback_if_in_transaction, not an unconditional ROLLBACK.
            kwargs.update(pool_size=10, max_overflow=10, pool_recycle=1800,
                          pool_reset_on_return=None)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if not self.is_sqlite:
            event.listen(self.engine.sync_engine, "reset", _rollback_if_in_transaction)
            event.listen(self.engine.sync_engine, "checkin", _note_checkin)
            event.listen(self.engine.sync_engine, "checkout", _ping_if_idle(self.engine.dialect))
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def supports_row_locks(self) -> bool:
        """SQLite silently ignores FOR UPDATE SKIP LOCKED; it has one writer anyway."""
        return not self.is_sqlite

    @asynccontextmanager
    async def transaction(self, *, read_committed: bool = False
                          ) -> AsyncIterator[AsyncSession]:
        """A session inside a transaction: committed on success, rolled back on error.

        ``read_committed`` for work queues read with SKIP LOCKED: InnoDB's default
        REPEATABLE READ adds gap locks that make concurrent takers deadlock."""
        async with self.sessions() as session, session.begin():
            if read_committed and not self.is_sqlite:
                await session.connection(
                    execution_options={"isolation_level": "READ COMMITTED"})
            yield session

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def create_database(self) -> None:
        """Create the service's own database (MySQL) or folder (SQLite) if missing."""
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            return
        server = create_async_engine(self.url.set(database=""))
        try:
            async with server.begin() as conn:
                name = self.url.database.replace("`", "")
                await conn.execute(
                    text(f"CREATE DATABASE IF NOT EXISTS `{name}` "
                         "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
                )
        finally:
            await server.dispose()

    async def drop_database(self) -> None:
        """Remove the database entirely (tests)."""
        await self.engine.dispose()
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).unlink(missing_ok=True)
            return
        server = create_async_engine(self.url.set(database=""))
        try:
            async with server.begin() as conn:
                name = self.url.database.replace("`", "")
                await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        finally:
            await server.dispose()

    async def dispose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Let SQLAlchemy, not the driver, open transactions (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL still survives a crash of the process; only a power cut may lose
    # the last commits. FULL would fsync every commit and cap the embedded mode at ~100/s.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn) -> None:
    # IMMEDIATE takes the write lock up front: two transactions that read then write would
    # otherwise deadlock on the lock upgrade and fail at once, ignoring busy_timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE")
