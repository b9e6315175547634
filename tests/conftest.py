import os
import uuid

import aiohttp
import pytest

from tests import infra

# Tests never read the developer's real configuration.
for _name in list(os.environ):
    if _name.startswith("RECLO_") and not _name.startswith("RECLO_TEST_"):
        del os.environ[_name]


@pytest.fixture
def unique() -> str:
    """A short unique name for queues, databases and users of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def http():
    """An HTTP client for the test's calls (to the gateway, a webhook receiver...)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def mariadb_url() -> str:
    return infra.mariadb_url()


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    return infra.rabbitmq_url()


def pytest_sessionfinish(session, exitstatus):
    infra.stop_containers()
