"""The deployment a process test runs in: unique databases, queues, exchange and buckets
on the real MariaDB, RabbitMQ and moto, all removed afterwards (and checked gone)."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import expected_services
from tests.deploy.processes import Deployment


@pytest.fixture
def deployment(unique, tmp_path):
    deployment = Deployment(unique, tmp_path / "data")
    yield deployment
    deployment.remove(expected_services())
