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


async def test_a_committed_connection_goes_back_without_a_rollback(unique):
    database = Database(f"{infra.mariadb_url()}{unique}_pool")
    await database.create_database()
    rollbacks = "SHOW SESSION STATUS LIKE 'Com_rollback'"
    try:
        first = await _connection_id(database)
        async with database.transaction() as session:
            before = int((await session.execute(text(rollbacks))).one()[1])
        for _ in range(10):
            assert await _connection_id(database) == first
        async with database.transaction() as session:
            after = int((await session.execute(text(rollbacks))).one()[1])
        assert after == before, (before, after)  # ten commits, no ROLLBACK after them
    finally:
        await database.drop_database()


async def test_a_connection_given_back_inside_a_transaction_is_rolled_back(unique):
    database = Database(f"{infra.mariadb_url()}{unique}_pool")
    await database.create_database()
    try:
        async with database.transaction() as session:
            await session.execute(text("CREATE TABLE t (v INT)"))

        def behind_sqlalchemys_back(sync_conn) -> None:
            cursor = sync_conn.connection.cursor()
            cursor.execute("START TRANSACTION")
            cursor.execute("INSERT INTO t VALUES (1)")
            cursor.close()

        async with database.engine.connect() as conn:  # SQLAlchemy knows of no transaction
            await conn.run_sync(behind_sqlalchemys_back)
        async with database.transaction() as session:  # the same pooled connection
            assert (await session.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
    finally:
        await database.drop_database()
