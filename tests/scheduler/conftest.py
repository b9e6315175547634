import pytest

from shared.settings import BusSettings, SchedulerSettings, Settings
from tests.scheduler.helpers import drop_scheduler_database

# Short retry delays and a quick outbox poll keep the bus tests fast.
TEST_BUS = {"retry_delays": (0.05, 0.2), "outbox_poll_seconds": 0.1}


def make_settings(backend: str, tmp_path, unique: str, **scheduler) -> Settings:
    values: dict = {
        "data_dir": tmp_path / "data",
        "bus": BusSettings(queue_prefix=f"t{unique}", **TEST_BUS),
        "scheduler": SchedulerSettings(**scheduler),
    }
    if backend == "mariadb":
        from tests import infra

        values.update(database_url=infra.mariadb_url(), database_prefix=f"t{unique}_",
                      bus_url=infra.rabbitmq_url())
    return Settings(**values)


@pytest.fixture(params=["sqlite", "mariadb"])
def backend(request) -> str:
    """SQLite with the in-process bus (embedded mode), or MariaDB with RabbitMQ."""
    return request.param


@pytest.fixture
async def settings(backend, tmp_path, unique):
    settings = make_settings(backend, tmp_path, unique)
    yield settings
    await drop_scheduler_database(settings)
