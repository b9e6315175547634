"""The Recovery Manager against the services, as a customer uses it in a crisis: sign in,
list the backups the agent made, recover one to a local image following its progress,
download the image (interrupted and resumed), reach the machine over the VPN."""

import asyncio
import hashlib
import os
import signal
import stat

from tests.recovery_client.conftest import api_for
from tests.recovery_client.support import PASSWORD, SlowProxy, image_backup, known_to_recovery
from tests.support import eventually

STATES = ["pending", "downloading", "importing", "finishing", "complete"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_list_recover_follow_and_download(stack, recover, http, tmp_path, unique):
    api = api_for(http, stack)
    username = f"cli-{unique}"
    await api.register_and_login(username)
    agent, disk = await image_backup(tmp_path, stack.base_url, username)

    result = await recover("login", "--server", stack.base_url, "--username", username)
    assert f"as {username}" in result.stdout
    session_file = recover.config / "session.json"
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    assert PASSWORD not in session_file.read_text()

    backups = (await recover("backups", "--json")).json()
    assert len(backups) == 1 and backups[0]["is_image"] and backups[0]["host"] == "fileserver-01"
    assert (await recover("backups", "--host", "fileserver-01", "--json")).json() == backups
    assert (await recover("backups", "--host", "no-such-host", "--json")).json() == []
    table = (await recover("backups")).stdout
    assert backups[0]["id"] in table and "fileserver-01" in table
    await known_to_recovery(stack, backups[0]["id"])

    # --wait --json: one line per change, through the states in order, to the end.
    started = await recover("start", backups[0]["id"], "--target", "local", "--format", "raw",
                            "--wait", "--json")
    lines = started.lines()
    seen = [line["state"] for line in lines]
    assert seen[-1] == "complete", started.stdout
    order = [STATES.index(state) for state in seen]
    assert order == sorted(order), seen
    assert len(set(seen)) >= 3, seen  # it reported on the way, not only the end
    totals = [line["total_progress"] for line in lines]
    assert totals == sorted(totals) and totals[-1] == 100
    recovery_id = lines[-1]["id"]

    status = (await recover("status", recovery_id, "--json")).json()
    assert status["state"] == "complete" and status["format"] == "raw"
    assert status["image_sha256"] and status["image_bytes"] == disk.stat().st_size
    human = (await recover("status", recovery_id)).stdout
    assert "complete" in human and status["image_sha256"] in human

    # The download, cut off half way by Ctrl-C, then resumed: the same bytes as the disk
    # the agent backed up (a raw image is the disk itself).
    dest = tmp_path / "restored.img"
    part = tmp_path / "restored.img.part"
    port = int(stack.base_url.rsplit(":", 1)[1])
    proxy = SlowProxy(port, rate=2 * 1024 * 1024)
    await proxy.start()
    try:
        slow = recover.env | {"RECLO_RECOVER_CONFIG_DIR": str(tmp_path / "slow-config")}
        (tmp_path / "slow-config").mkdir()
        await recover("login", "--server", f"http://127.0.0.1:{proxy.port}", "--username",
                      username, env=slow)
        # A shell that starts this suite in the background (`cmd &` without job control)
        # has it ignore SIGINT, which the client would inherit and keep, as a Unix program
        # does: handled here instead, the signal is back to its default in the child.
        ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            process = await asyncio.create_subprocess_exec(
                str(recover_bin()), "download", recovery_id, str(dest), env=slow,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        finally:
            signal.signal(signal.SIGINT, ignored)
        await eventually(lambda: part.exists() and part.stat().st_size > 2 * 1024 * 1024,
                         timeout=30)
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 130, err
    finally:
        await proxy.close()
    assert not dest.exists()
    interrupted_at = part.stat().st_size
    assert 0 < interrupted_at < disk.stat().st_size

    done = (await recover("download", recovery_id, str(dest), "--json")).json()
    assert done["resumed_from"] == interrupted_at
    assert done["size"] == disk.stat().st_size and done["sha256"] == status["image_sha256"]
    assert sha256(dest) == sha256(disk)
    assert not part.exists()
    # A second download never overwrites the first.
    again = await recover("download", recovery_id, str(dest), expect=6)
    assert "exists already" in again.stderr

    # The recovered machine and its VPN configuration.
    instances = (await recover("instances", "--json")).json()
    assert [i["recovery_id"] for i in instances] == [recovery_id]
    conf = tmp_path / "tunnel.conf"
    await eventually(lambda: True)
    await recover("vpn", "config", instances[0]["id"], "-o", str(conf))
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert "[Interface]" in text and "PrivateKey = " in text and "[Peer]" in text


def recover_bin():
    from tests.recovery_client.support import BIN

    return BIN / "reclo-recover"


async def test_another_user_sees_nothing_of_it(local_stack, recover, http, tmp_path, unique):
    stack = local_stack
    api = api_for(http, stack)
    owner = f"owner-{unique}"
    await api.register_and_login(owner)
    _, disk = await image_backup(tmp_path, stack.base_url, owner)
    await recover("login", "--server", stack.base_url, "--username", owner)
    backup = (await recover("backups", "--json")).json()[0]
    await known_to_recovery(stack, backup["id"])
    lines = (await recover("start", backup["id"], "--target", "local", "--wait", "--json")).lines()
    recovery_id = lines[-1]["id"]
    instance_id = (await recover("instances", "--json")).json()[0]["id"]

    other = type(recover)(tmp_path / "other-config")
    await api.register_and_login(f"other-{unique}")
    await other("login", "--server", stack.base_url, "--username", f"other-{unique}")
    assert (await other("backups", "--json")).json() == []
    assert (await other("recoveries", "--json")).json() == []
    assert (await other("instances", "--json")).json() == []
    for args in (["status", recovery_id], ["cancel", recovery_id],
                 ["download", recovery_id, str(tmp_path / "stolen.img")],
                 ["start", backup["id"], "--target", "local"],
                 ["instance", "stop", instance_id],
                 ["vpn", "config", instance_id, "-o", str(tmp_path / "stolen.conf")]):
        result = await other(*args, expect=4)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "stolen.img").exists() and not (tmp_path / "stolen.conf").exists()
    assert not any(p.name.startswith("stolen") for p in tmp_path.iterdir())
    assert os.path.getsize(disk) > 0
