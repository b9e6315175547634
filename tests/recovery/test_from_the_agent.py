"""The whole way, in the embedded mode: the Backup Manager (`reclo-agent`, a real process)
backs up a disk image through the backup service, whose commit announces it with
BackupUploaded; recovery turns it into a local image that downloads byte for byte as the
disk the agent read."""

from __future__ import annotations

import aiohttp

from shared.events import InstanceReady, envelope_for
from shared.settings import RecoverySettings
from tests.agent.conftest import PASSPHRASE, PASSWORD, Agent
from tests.harness import Api, running_stack, settings_for
from tests.recovery.helpers import download, make_disk, sha256_of, wait_state
from tests.support import eventually


async def test_an_image_backed_up_by_the_agent_comes_back_as_the_same_disk(tmp_path, unique):
    settings = settings_for("embedded", tmp_path, unique, recovery=RecoverySettings(
        min_free_bytes=0))
    disk = make_disk(tmp_path / "server", size_mib=24, data_mib=6)
    services = ["auth", "backup", "recovery", "gateway"]
    async with running_stack(settings, services) as (stack, base), \
            aiohttp.ClientSession() as session:
        api = Api(session, base)
        username = f"owner-{unique}"
        await api.register_and_login(username, PASSWORD)

        agent = Agent(tmp_path / "etc" / "agent.toml")
        agent.write_config(f'[[sources]]\npath = "{disk}"\ntype = "image"\n')
        r = await agent("register", "--server", base, "--username", username,
                        "--host", "fileserver", RECLO_PASSWORD=PASSWORD)
        assert r.code == 0, r
        r = await agent("init", RECLO_PASSPHRASE=PASSPHRASE)
        assert r.code == 0, r
        r = await agent("backup", "--json")
        assert r.code == 0, r
        backup_id = r.result["backup_id"]

        async def recoverable():
            status, body, _ = await api.call("POST", "/api/v1/recoveries", json={
                "backup_id": backup_id, "target": "local", "passphrase": PASSPHRASE})
            assert status in (201, 404), body  # 404 until BackupUploaded has arrived
            return body if status == 201 else None

        created = await eventually(recoverable)
        ready = await wait_state(api, created["id"], ["finishing", "failed"])
        assert ready["state"] == "finishing", ready["failure_reason"]
        assert ready["host"] == "fileserver"
        out = tmp_path / "recovered.raw"
        assert (await download(base, api.token, created["id"], out)).status == 200
        assert sha256_of(out) == sha256_of(disk)

        status, me, _ = await api.call("GET", "/api/v1/auth/me")
        await stack.bus.publish(envelope_for(InstanceReady(
            instance_id="i-1", user_id=me["id"], recovery_id=created["id"])))
        assert (await wait_state(api, created["id"], "complete"))["total_progress"] == 100
