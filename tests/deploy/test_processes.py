"""`reclo serve NAME`, the image's entrypoint, for every registered service: a separate
process on the real MariaDB and RabbitMQ that migrates its database, answers /healthz,
/readyz and /metrics, logs JSON lines naming itself, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import urllib.request

import pytest

from services.registry import names
from shared.migrations import head_revision
from tests.deploy.kustomize import render
from tests.deploy.manifests import (
    KUSTOMIZATIONS,
    REPO,
    WITHOUT_DATABASE,
    by_kind,
)
from tests.deploy.processes import ServiceProcess

pytestmark = [pytest.mark.mariadb, pytest.mark.rabbitmq]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.parametrize("name", names())
def test_reclo_serve_starts_answers_and_stops_on_sigterm(name, deployment, tmp_path):
    service = ServiceProcess(name, deployment, tmp_path)
    try:
        service.wait_for("/healthz")
        service.wait_for("/readyz")
        status, body = _get(service.url + "/readyz")
        checks = json.loads(body)["checks"]
        assert checks["bus"] is True
        assert checks.get("database") is (None if name in WITHOUT_DATABASE else True)
        status, body = _get(service.url + "/metrics")
        assert status == 200 and b"reclo_http_requests_total" in body
        # Up to here every line is JSON and none is an error. (Not after SIGTERM: the
        # runtime disposes the database while the bus may still deliver, so an event that
        # arrives then logs an error; reported, shared/runtime.py's to fix.)
        records, stray = service.log_lines()
    finally:
        code = service.terminate()
    assert code == 0, service.output()[-4000:]
    assert stray == []
    assert not [line for line in records if line.get("level") in ("error", "critical")]
    started = [line for line in records if line.get("event") == "service started"]
    assert len(started) == 1 and started[0]["service"] == name
    assert started[0]["port"] == service.port

    migrations = REPO / "services" / name / "migrations"
    if migrations.is_dir():
        assert deployment.revision(name) == head_revision(migrations)
        assert f"{deployment.database_prefix}{name}" in deployment.databases()


# How long a service started with the placeholder Secrets is watched: long enough for a
# start-up that would succeed (a few seconds here), short enough for the suite.
PLACEHOLDER_WATCH_SECONDS = 10


@pytest.mark.parametrize("name", names())
def test_a_service_given_the_secret_templates_never_becomes_ready(name, deployment,
                                                                  tmp_path):
    """docs/operations.md promises that a rollout with the CHANGE_ME Secrets stalls: the
    pod exits, or never answers /readyz with 200."""
    secrets = {key: value for secret in by_kind(render(KUSTOMIZATIONS["base"]), "Secret")
               .values() for key, value in secret["stringData"].items()}
    service = ServiceProcess(name, deployment, tmp_path, extra_env=secrets)
    try:
        with pytest.raises(AssertionError):
            service.wait_for("/readyz", timeout=PLACEHOLDER_WATCH_SECONDS)
        gave_up = service.process.poll() is not None
    finally:
        code = service.terminate()
    # Either it refused to start (an error status: the pod restarts, never ready) or it
    # was still waiting for its broker when stopped.
    assert code != 0 if gave_up else code in (0, -15), service.output()[-2000:]
