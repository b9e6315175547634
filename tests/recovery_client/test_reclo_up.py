"""The Recovery Manager against `reclo up` itself, a separate process as a developer or a
small customer runs it, with a backup the agent made: the same path as the portal's."""

import asyncio
import hashlib
import socket
import time

import aiohttp

from tests.harness import Api
from tests.recovery_client.conftest import Recover
from tests.recovery_client.support import BIN, clean_env, image_backup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_recover_from_reclo_up(tmp_path, unique):
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        str(BIN / "reclo"), "up", "--data-dir", str(tmp_path / "reclo-data"), "--port", str(port),
        env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with http.get(base + "/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert server.returncode is None, (await server.stdout.read()).decode()[-3000:]
                assert time.monotonic() < deadline, "reclo up did not become ready"
                await asyncio.sleep(0.2)
            # The portal is there too.
            async with http.get(base + "/app/") as response:
                assert response.status == 200 and "text/html" in response.headers["Content-Type"]
            api = Api(http, base)
            username = f"up-{unique}"
            await api.register_and_login(username)
            _, disk = await image_backup(tmp_path, base, username)

        recover = Recover(tmp_path / "config")
        await recover("login", "--server", base, "--username", username)
        backup = (await recover("backups", "--json")).json()[0]
        # The backup becomes recoverable a moment after the agent's commit (the event that
        # tells the recovery service is relayed through the backup service's outbox).
        deadline = time.monotonic() + 30
        while (started := await recover("start", backup["id"], "--target", "local",
                                        "--json", expect=None)).code == 4:
            assert time.monotonic() < deadline, started.stderr
            await asyncio.sleep(0.2)
        assert started.code == 0, started.stderr
        recovery_id = started.lines()[-1]["id"]
        status = (await recover("status", recovery_id, "--wait", "--json")).lines()[-1]
        assert status["state"] == "complete", status
        dest = tmp_path / "disk.img"
        await recover("download", recovery_id, str(dest))
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == hashlib.sha256(disk.read_bytes()).hexdigest()
    finally:
        server.terminate()
        output, _ = await asyncio.wait_for(server.communicate(), 30)
    assert server.returncode == 0, output.decode()[-3000:]
