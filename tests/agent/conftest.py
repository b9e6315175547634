"""The agent as its users run it: `python -m clients.agent ...` in a real process, against a
folder repository or against a real server started in the test (tests/harness.py)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from clients.agent import secretfile
from shared.format import LocalFolderStore, Repository
from shared.settings import BackupSettings
from tests.format.conftest import FAST_KDF
from tests import infra
from tests.harness import MODES, Api, running_stack, settings_for

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "agent test passphrase"
PASSWORD = "correct horse battery"
MiB = 1024 * 1024
SERVICES = ["auth", "backup", "gateway"]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    @property
    def result(self) -> dict:
        found = [d for d in self.lines if d.get("type") == "result"]
        assert found, f"no result line (exit {self.code}):\n{self.stdout}\n{self.stderr}"
        return found[-1]

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout: {self.stdout[-3000:]}\nstderr: {self.stderr[-3000:]}"


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECLO_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@dataclass
class Agent:
    """reclo-agent with one configuration file, run as a child process."""

    config: Path
    env: dict[str, str] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "clients.agent", "--config", str(self.config), *args]

    async def start(self, *args: str, **env: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.command(*args), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=agent_env(**{**self.env, **env}), cwd=ROOT)

    async def __call__(self, *args: str, timeout: float = 120, **env: str) -> Result:
        started = time.monotonic()
        proc = await self.start(*args, **env)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        result = Result(proc.returncode, out.decode(), err.decode(), time.monotonic() - started)
        print(f"reclo-agent {' '.join(args)}: exit {result.code} in {result.seconds:.1f} s", file=sys.stderr)
        return result

    def write_config(self, text: str) -> None:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(text)


def random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def make_tree(root: Path, seed: int = 1) -> Path:
    """A folder with the cases a backup must keep: unicode and long names, spaces, empty
    files and folders, symlinks (one dangling), a sparse file, modes and mtimes."""
    rng = random.Random(seed)
    (root / "docs" / "2024 reports").mkdir(parents=True)
    (root / "empty folder").mkdir()
    (root / "Ünïcødé ☃").mkdir()
    (root / "docs" / "a.txt").write_text("hello\n" * 1000)
    (root / "docs" / "2024 reports" / "q1.bin").write_bytes(random_bytes(rng, 3 * MiB + 17))
    (root / "docs" / "2024 reports" / "q2.bin").write_bytes(random_bytes(rng, 2 * MiB))
    (root / "Ünïcødé ☃" / ("long name " * 20).strip()).write_bytes(random_bytes(rng, 200_000))
    (root / "empty.txt").write_bytes(b"")
    script = root / "run me.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (root / "docs" / "a.txt").chmod(0o640)
    with open(root / "sparse.img", "wb") as f:  # 64 MiB, data at two places
        f.write(random_bytes(rng, 100_000))
        f.seek(40 * MiB)
        f.write(random_bytes(rng, 50_000))
        f.truncate(64 * MiB)
    os.symlink("docs/a.txt", root / "link to a")
    os.symlink("does/not/exist", root / "dangling")
    for i, path in enumerate(sorted(root.rglob("*"))):
        if not path.is_symlink():
            os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i * 1000))
    return root


def folder_config(agent, repo, sources, extra=""):
    text = f'repository = "file://{repo}"\n{extra}\n'
    for s in sources:
        text += f'[[sources]]\npath = "{s}"\n'
    agent.write_config(text)


async def initialised(agent, repo, sources=(), extra=""):
    """What `init` leaves behind, made in-process with a cheap KDF: every later command
    opens the repository in milliseconds instead of half a second (init has its own test)."""
    folder_config(agent, repo, sources, extra)
    await Repository.init(LocalFolderStore(repo), PASSPHRASE, kdf=FAST_KDF)
    secretfile.write(agent.config.parent / "agent-secrets.json", secretfile.Secrets(passphrase=PASSPHRASE))


@pytest.fixture
def agent(tmp_path) -> Agent:
    return Agent(tmp_path / "etc" / "agent.toml")


# --- a real server --------------------------------------------------------------------------


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def server_settings(mode, tmp_path, unique, monkeypatch):
    # Each test in its own key prefix (moto's bucket is shared); no grace period, so the
    # collector deletes what forget releases at once.
    overrides = {"backup": BackupSettings(key_prefix=f"t{unique}/", gc_grace_seconds=0)}
    if mode == "mariadb":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        overrides["s3_endpoint"] = infra.s3_endpoint()
    return settings_for(mode, tmp_path, unique, **overrides)


@dataclass
class Server:
    stack: object
    url: str
    api: Api  # logged in as the user the agents register with
    username: str

    @property
    def bucket(self):
        return self.stack.runtimes["backup"].context.store

    async def pack_bytes(self) -> int:
        """Bytes of every pack in the bucket (all hosts of this test)."""
        return sum([i.size async for i in self.bucket.scan() if "/data/" in i.key])

    async def packs(self) -> int:
        return len([i async for i in self.bucket.scan() if "/data/" in i.key])

    async def dictionaries(self) -> int:
        return len([i async for i in self.bucket.scan() if "/dicts/" in i.key])

    async def backups(self) -> list[dict]:
        status, page, _ = await self.api.call("GET", "/api/v1/backups?limit=200")
        assert status == 200, page
        return page["items"]


@pytest.fixture
async def server(server_settings, unique):
    async with running_stack(server_settings, SERVICES) as (stack, base):
        async with aiohttp.ClientSession() as http:
            api = Api(http, base)
            username = f"u{unique}"
            await api.register_and_login(username, PASSWORD)
            try:
                yield Server(stack, base, api, username)
            finally:
                store = stack.runtimes["backup"].context.store
                await store.delete_many([k async for k in store.list()])


async def registered(agent: Agent, server: Server, host: str, sources: list[Path], extra: str = "") -> Agent:
    """An agent configured with these sources, registered with the server and initialised."""
    lines = [extra]  # first: top-level keys must come before any table
    for s in sources:
        lines += ["[[sources]]", f'path = "{s}"']
    agent.write_config("\n".join(lines) + "\n")
    r = await agent("register", "--server", server.url, "--username", server.username, "--host", host,
                    RECLO_PASSWORD=PASSWORD)
    assert r.code == 0, r
    r = await agent("init", RECLO_PASSPHRASE=PASSPHRASE)
    assert r.code == 0, r
    return agent
