"""The topology docker-compose.yml and deploy/k8s describe, as separate processes on this
machine: every registered service alone with its own data folder, the gateway in front of
them told where each is (RECLO_<SERVICE>__URL), the real MariaDB, RabbitMQ and S3 (moto)
behind. Through the gateway's port only: a user registers, logs in and asks who they are;
then the real clients, as processes, back a disk image up (`reclo-agent`) and recover it
to a local image (`reclo-recover`), which downloads byte for byte the same."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.deploy.manifests import expected_services
from tests.deploy.processes import Deployment, Topology
from tests.recovery_client.conftest import Recover
from tests.recovery_client.support import PASSWORD, Agent, make_disk

pytestmark = [pytest.mark.mariadb, pytest.mark.rabbitmq]

STATES = ["pending", "downloading", "importing", "finishing", "complete"]
# The recovery service learns of a backup from BackupUploaded, relayed through the backup
# service's outbox and RabbitMQ: a moment after the agent's commit, seconds at most.
KNOWN_WITHIN_SECONDS = 30
# A log line is written as the request ends, possibly just after the answer went out.
LOGGED_WITHIN_SECONDS = 10


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    """Started once for the module (six processes take a while to come up on a small
    machine); stopped with SIGTERM, each must exit 0; everything it made is removed."""
    folder = tmp_path_factory.mktemp("topology")
    deployment = Deployment(uuid.uuid4().hex[:10], folder / "data")
    topology = None
    try:
        topology = Topology(deployment, folder)
        yield topology
    finally:
        codes = topology.stop() if topology else {}
        deployment.remove(expected_services())
    assert codes == {name: 0 for name in codes}, {
        name: topology.processes[name].output()[-2000:] for name, code in codes.items() if code}


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


def _logged(process, request_id: str) -> bool:
    deadline = time.monotonic() + LOGGED_WITHIN_SECONDS
    while time.monotonic() < deadline:
        if any(line.get("request_id") == request_id and line.get("service") == process.name
               for line in process.log_lines()[0]):
            return True
        time.sleep(0.1)
    return False


def test_register_login_me_through_the_gateway_of_separate_processes(topology, unique):
    gateway = topology.gateway
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
    # One request, followed across two processes by its id (docs/operations.md "Logs").
    for name in ("gateway", "auth"):
        assert _logged(topology.processes[name], request_id), name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


async def test_a_backup_and_a_local_recovery_end_to_end(topology, tmp_path, unique):
    """agent → gateway → backup (presigned URLs into moto) → BackupUploaded → recovery
    (reads the bucket, assembles the disk in its own folder) → ImportCompleted → instances
    → InstanceReady → recovery complete → the image downloaded through the gateway."""
    base, deployment = topology.gateway.url, topology.deployment
    username = f"dr-{unique}"
    status, user, _ = _call(base, "POST", "/api/v1/auth/register",
                            {"username": username, "password": PASSWORD})
    assert status == 201, user

    agent = Agent(tmp_path / "agent", base, username, "fileserver-01")
    await agent.setup()
    disk = make_disk(tmp_path, size_mib=32, data_mib=3)
    backed_up = await agent.backup_image(disk)
    assert backed_up["type"] == "result" and backed_up["kind"] == "full", backed_up
    # The packs went to the S3 endpoint, into this deployment's bucket, under the host.
    keys = deployment.objects(deployment.backup_bucket)
    assert any(key.startswith(f"{user['id']}/") and "/data/" in key for key in keys), keys

    recover = Recover(tmp_path / "recover-config")
    await recover("login", "--server", base, "--username", username)
    deadline = time.monotonic() + KNOWN_WITHIN_SECONDS
    while (started := await recover("start", backed_up["backup_id"], "--target", "local",
                                    "--wait", "--json", expect=None)).code == 4:
        assert time.monotonic() < deadline, started.stderr  # 4: not (yet) a known backup
        await asyncio.sleep(0.5)
    assert started.code == 0, (started.stdout, started.stderr)
    lines = started.lines()
    seen = [line["state"] for line in lines]
    assert seen[-1] == "complete", started.stdout
    order = [STATES.index(state) for state in seen]
    assert order == sorted(order), seen
    final = lines[-1]
    # complete means the instances process answered InstanceReady over the bus.
    assert final["instance_id"] and final["image_bytes"] == disk.stat().st_size, final
    instances = (await recover("instances", "--json")).json()
    assert [(i["id"], i["recovery_id"]) for i in instances] == [(final["instance_id"],
                                                                  final["id"])]

    dest = tmp_path / "recovered.img"
    done = (await recover("download", final["id"], str(dest), "--json")).json()
    assert done["sha256"] == final["image_sha256"] == _sha256(dest) == _sha256(disk)
    # The image was assembled and kept in the recovery process's own data folder.
    assert list((deployment.data_dir / "recovery").rglob(f"{final['id']}*"))
    # On the way, no process logged an error or printed past its JSON logger.
    for name, process in topology.processes.items():
        records, stray = process.log_lines()
        assert stray == [], (name, stray[:20])
        assert not [r for r in records if r.get("level") in ("error", "critical")], name
