"""The connection pool on real MariaDB: a connection that sat idle is checked before it is
handed out, so one the server closed meanwhile is replaced instead of failing the next
transaction; a connection used moments ago is handed out without a round trip."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from shared import db as db_module
from shared.db import Database
from tests import infra


async def _connection_id(database: Database) -> int:
    async with database.transaction() as session:
        return (await session.execute(text("SELECT CONNECTION_ID()"))).scalar_one()


async def test_an_idle_connection_the_server_closed_is_replaced(unique, monkeypatch):
    monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 0.2)
    database = Database(f"{infra.mariadb_url()}{unique}_pool")
    await database.create_database()
    killer = Database(f"{infra.mariadb_url()}{unique}_pool")
    try:
        first = await _connection_id(database)
        assert await _connection_id(database) == first  # pooled: the same connection again

        async with killer.transaction() as session:  # the server drops it (a restart, a timeout)
            await session.execute(text(f"KILL {first}"))
        await asyncio.sleep(0.3)  # idle longer than the threshold: pinged on checkout

        second = await _connection_id(database)
        assert second != first
    finally:
        await killer.dispose()
        await database.drop_database()


async def test_a_connection_used_moments_ago_is_not_pinged(unique, monkeypatch):
    monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 60.0)
    database = Database(f"{infra.mariadb_url()}{unique}_pool")
    await database.create_database()
    try:
        first = await _connection_id(database)
        pings = "SHOW SESSION STATUS LIKE 'Com_admin_commands'"  # COM_PING counts here
        async with database.transaction() as session:
            before = int((await session.execute(text(pings))).one()[1])
        async with database.transaction() as session:
            after = int((await session.execute(text(pings))).one()[1])
            assert (await session.execute(text("SELECT CONNECTION_ID()"))).scalar_one() == first
        assert after == before, (before, after)  # no ping between the two checkouts
    finally:
        await database.drop_database()
