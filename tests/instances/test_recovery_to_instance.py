"""End to end in the embedded mode: a local recovery of a real image backup reaches
`complete` through the instances service alone (ImportCompleted → InstanceReady), and the
machine it became is the owner's, with a VPN peer to be had."""

import aiohttp

from services.instances.vpn import generate_private_key, public_key_of
from shared.settings import RecoverySettings
from tests.harness import Api, running_stack, settings_for
from tests.recovery.helpers import PASSPHRASE, image_backup, make_disk, user, wait_state

SERVICES = ["auth", "recovery", "instances", "gateway"]


async def test_a_local_recovery_completes_with_a_machine(tmp_path, unique):
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=2)
    settings = settings_for("embedded", tmp_path, unique,
                            recovery=RecoverySettings(min_free_bytes=0))
    async with running_stack(settings, SERVICES) as (stack, base), \
            aiohttp.ClientSession() as http:
        api = Api(http, base)
        owner = await user(api, f"owner-{unique}")
        backup = await image_backup(stack, owner, disk)
        status, created, _ = await api.call("POST", "/api/v1/recoveries", json={
            "backup_id": backup.backup_id, "target": "local", "passphrase": PASSPHRASE})
        assert status == 201, created

        done = await wait_state(api, created["id"], ["complete", "failed"])
        assert done["state"] == "complete", done.get("failure_reason")
        status, page, _ = await api.call(
            "GET", f"/api/v1/instances?recovery_id={created['id']}")
        (machine,) = page["items"]
        assert machine["id"] == done["instance_id"]
        assert (machine["state"], machine["provider"]) == ("running", "local")

        status, peer, _ = await api.call(
            "POST", f"/api/v1/instances/{machine['id']}/vpn-peers",
            json={"public_key": public_key_of(generate_private_key())})
        assert status == 201, peer
        assert peer["peer"]["address"] == "10.77.0.2"
