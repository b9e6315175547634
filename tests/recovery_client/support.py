"""What the portal and Recovery Manager tests share: real image backups made by the real
agent (`reclo-agent register`, `init`, `backup --image`) of a real ext4 disk image, and
running the command-line clients as the separate processes they are."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery"
PASSPHRASE = "a long repository passphrase"
MiB = 1024 * 1024


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a client process: no RECLO_* of the developer's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECLO_")}
    env.update(extra)
    return env


async def run(program: str, *args: str, env: dict[str, str], timeout: float = 120,
              stdin: bytes | None = None) -> Result:
    process = await asyncio.create_subprocess_exec(
        str(BIN / program), *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return Result(process.returncode, out.decode(), err.decode())


def make_disk(folder: Path, *, size_mib: int = 24, data_mib: int = 3, seed: int = 1) -> Path:
    """An ext4 filesystem image built from a folder (mke2fs -d, no root needed): some
    random data, much free space, as a server's disk looks."""
    content = folder / f"disk-content-{seed}"
    (content / "etc").mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(data_mib):
        (content / f"data-{i}.bin").write_bytes(rng.randbytes(MiB))
    (content / "etc" / "hostname").write_text("fileserver\n")
    disk = folder / f"disk-{seed}.raw"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(content), "-F", str(disk),
                    f"{size_mib}M"], check=True)
    return disk


class Agent:
    """The Backup Manager of one host, configured in its own folder."""

    def __init__(self, folder: Path, server: str, username: str, host: str,
                 password: str = PASSWORD) -> None:
        self.folder = folder
        self.server = server
        self.username = username
        self.host = host
        self.password = password
        folder.mkdir(parents=True, exist_ok=True)
        self.env = clean_env(RECLO_AGENT_CONFIG=str(folder / "agent.toml"),
                             RECLO_PASSWORD=password, RECLO_PASSPHRASE=PASSPHRASE)

    async def run(self, *args: str) -> Result:
        result = await run("reclo-agent", *args, env=self.env)
        assert result.code == 0, (args, result.stdout, result.stderr)
        return result

    async def setup(self) -> None:
        await self.run("register", "--server", self.server, "--username", self.username,
                       "--host", self.host)
        await self.run("init")

    async def backup_image(self, disk: Path, *, full: bool = True) -> dict:
        args = ["backup", "--json", "--image", str(disk)] + (["--full"] if full else [])
        result = await self.run(*args)
        return result.lines()[-1]


async def image_backup(folder: Path, server: str, username: str, host: str = "fileserver-01",
                       *, seed: int = 1) -> tuple[Agent, Path]:
    """A host with one full image backup; returns its agent and the disk backed up."""
    agent = Agent(folder / f"agent-{host}", server, username, host)
    await agent.setup()
    disk = make_disk(folder, seed=seed)
    await agent.backup_image(disk)
    return agent, disk


async def known_to_recovery(stack, backup_id: str) -> None:
    """Wait until the recovery service has handled the backup's BackupUploaded (it is
    relayed through the backup service's outbox, so it arrives a moment after the commit)."""
    from services.recovery.tables import RecoverableBackupRow
    from tests.support import eventually

    db = stack.runtimes["recovery"].db

    async def known():
        async with db.sessions() as session:
            return await session.get(RecoverableBackupRow, backup_id) is not None

    await eventually(known, timeout=30)


class SlowProxy:
    """A loopback TCP forwarder that passes the server's bytes on at ``rate`` bytes per
    second, so a download is still running when the test interrupts it."""

    def __init__(self, target_port: int, rate: int) -> None:
        self.target_port = target_port
        self.rate = rate
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader, writer) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pump(src, dst, slow: bool) -> None:
            try:
                while data := await src.read(16 * 1024 if slow else 65536):
                    dst.write(data)
                    await dst.drain()
                    if slow:
                        await asyncio.sleep(len(data) / self.rate)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))
        finally:
            self._tasks.discard(task)
