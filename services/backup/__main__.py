"""`python -m services.backup [--migrate]`: this service alone, as `reclo serve backup` runs it.

`python -m services.backup rebuild-catalog` recreates the hosts and backups missing from
the database from the catalogue records in the bucket (services/backup/catalog.py), with
the same settings (`RECLO_*`) the service runs with.
"""

import asyncio
import sys

from services.backup.app import build
from shared.runtime import serve_alone


async def rebuild_catalog() -> int:
    from services.backup import catalog
    from shared.bus import create_bus
    from shared.runtime import internal_key
    from shared.settings import Settings

    settings = Settings()
    # Only the database and the bucket are used: the in-process bus stands in for the broker.
    runtime = build(settings, create_bus(None, prefetch=1, retry_delays=()), internal_key(settings))
    await runtime.migrate()
    try:
        report = await catalog.rebuild(runtime.db, runtime.context.store)
    finally:
        await runtime.context.store.close()
        await runtime.db.dispose()
    print(f"hosts added: {report.hosts}, backups added: {report.backups}")
    for problem in report.skipped:
        print(f"skipped {problem}", file=sys.stderr)
    return 1 if report.skipped else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["rebuild-catalog"]:
        sys.exit(asyncio.run(rebuild_catalog()))
    sys.exit(serve_alone("backup", build))
