"""Every service's migrations build exactly the tables its code declares, on SQLite and on
MariaDB, and applying them twice changes nothing."""

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.registry import builders
from shared.db import Database
from shared.migrations import current_revision, head_revision
from tests.harness import settings_for

SERVICES_WITH_TABLES = [name for name in builders()
                        if importlib.util.find_spec(f"services.{name}.tables")]


def test_there_are_services_with_tables():
    assert "auth" in SERVICES_WITH_TABLES


@pytest.mark.parametrize("mode", ["embedded", "mariadb"])
@pytest.mark.parametrize("service", SERVICES_WITH_TABLES)
async def test_migrations_match_the_tables(service, mode, tmp_path, unique):
    settings = settings_for(mode, tmp_path, unique)
    from shared.runtime import make_bus

    runtime = builders()[service](settings, make_bus(settings), b"k" * 32)
    metadata = importlib.import_module(f"services.{service}.tables").metadata
    db: Database = runtime.db
    try:
        await runtime.migrate()
        await runtime.migrate()  # idempotent
        assert await current_revision(db) == head_revision(runtime.migrations)
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
        assert diff == []
    finally:
        if db.is_sqlite:
            await db.dispose()
        else:
            await db.drop_database()
