"""The topology docker-compose.yml and deploy/k8s describe, as separate processes on this
machine: every registered service alone, the gateway in front of them told where each is
(RECLO_<SERVICE>__URL), the real MariaDB and RabbitMQ behind. A user registers, logs in
and asks who they are, through the gateway's port only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from services.registry import names
from tests.deploy.manifests import expected_services
from tests.deploy.processes import Deployment, ServiceProcess

pytestmark = [pytest.mark.mariadb, pytest.mark.rabbitmq]


@pytest.fixture
def deployment(unique, tmp_path):
    deployment = Deployment(unique, tmp_path / "data")
    yield deployment
    deployment.drop_databases(expected_services())
    deployment.delete_queues(expected_services())
    assert deployment.databases() == set()


def _call(base: str, method: str, path: str, body: dict | None = None,
          token: str | None = None, request_id: str | None = None):
    request = urllib.request.Request(
        base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if request_id:
        request.add_header("X-Request-ID", request_id)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null"), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), exc.headers


def test_register_login_me_through_the_gateway_of_separate_processes(deployment, tmp_path,
                                                                     unique):
    processes: dict[str, ServiceProcess] = {}
    try:
        for name in names():
            if name != "gateway":
                processes[name] = ServiceProcess(name, deployment, tmp_path)
        for process in processes.values():
            process.wait_for("/readyz")
        where = {f"RECLO_{name.upper()}__URL": process.url
                 for name, process in processes.items()}
        gateway = processes["gateway"] = ServiceProcess("gateway", deployment, tmp_path, where)
        gateway.wait_for("/readyz")

        username, password = f"ops-{unique}", "correct horse battery staple"
        status, user, _ = _call(gateway.url, "POST", "/api/v1/auth/register",
                                {"username": username, "password": password})
        assert status == 201, user
        assert user["username"] == username
        request_id = f"topology-{unique}"
        status, session, _ = _call(gateway.url, "POST", "/api/v1/auth/login",
                                         {"username": username, "password": password},
                                         request_id=request_id)
        assert status == 200, session
        status, me, _ = _call(gateway.url, "GET", "/api/v1/auth/me", token=session["token"])
        assert status == 200, me
        assert (me["id"], me["username"], me["kind"]) == (user["id"], username, "user")
        status, problem, _ = _call(gateway.url, "GET", "/api/v1/auth/me", token="nope")
        assert status == 401 and problem["status"] == 401
    finally:
        codes = {name: process.terminate() for name, process in reversed(processes.items())}
    assert codes == {name: 0 for name in processes}, {
        name: processes[name].output()[-2000:] for name, code in codes.items() if code}
    # One request, followed across two processes by its id (docs/operations.md "Logs").
    for name in ("gateway", "auth"):
        assert any(line.get("request_id") == request_id and line.get("service") == name
                   for line in processes[name].log_lines()[0]), name
