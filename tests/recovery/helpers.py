"""What the recovery tests share: real disk images (mke2fs), real backups of them written
with the format package into the bucket the backup service uses, the events they cause,
and a reading of what recovery publishes."""

from __future__ import annotations

import gc
import hashlib
import random
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from shared.events import BackupUploaded, Envelope, envelope_for
from shared.format import Archiver, Repository, ScryptParams, Source
from shared.format.constants import MiB
from shared.format.snapshot import IMAGE
from shared.objectstore import open_bucket_store
from shared.settings import Settings
from tests.harness import Api
from tests.support import eventually

# The customer's slow scrypt (0.5 s, 128 MiB) is not what these tests are about.
FAST_KDF = ScryptParams(n=2**14, r=8, p=1)
PASSPHRASE = "correct horse battery staple"
# Small packs, so that a small disk spreads over several of them.
PACK_SIZE = 2 * MiB


def make_disk(folder: Path, *, size_mib: int = 32, data_mib: int = 6, seed: int = 1) -> Path:
    """A real ext4 filesystem image (mke2fs -d, no root needed) holding random files: some
    data, much free space (holes), as a server disk looks."""
    content = folder / f"content-{seed}"
    content.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(data_mib):
        (content / f"file-{i}.bin").write_bytes(rng.randbytes(MiB))
    (content / "etc").mkdir()
    (content / "etc" / "hostname").write_text("fileserver\n")
    disk = folder / f"disk-{seed}.raw"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(content), "-F", str(disk),
                    f"{size_mib}M"], check=True)
    return disk


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(MiB):
            h.update(piece)
    return h.hexdigest()


async def write_backup(settings: Settings, key: bytes, user_id: str, host_id: str,
                       sources: list[Source], *, passphrase: str = PASSPHRASE,
                       kms=None) -> str:
    """Back up ``sources`` as the agent would, into the host's prefix of the backup bucket;
    returns the snapshot id."""
    bucket = open_bucket_store(settings, key)
    try:
        store = bucket.scoped(f"{user_id}/{host_id}/")
        if await store.exists("config"):
            repo = await Repository.open(store, passphrase, pack_size=PACK_SIZE)
        else:
            repo = await Repository.init(store, passphrase, kdf=FAST_KDF, kms=kms,
                                         pack_size=PACK_SIZE)
        result = await Archiver(repo, host="fileserver").backup(sources, kind="full")
        return result.snapshot_id
    finally:
        await bucket.close()


async def announce_backup(bus, *, user_id: str, host_id: str, snapshot_id: str,
                          is_image: bool = True, backup_id: str | None = None) -> str:
    """What the backup service says on commit: BackupUploaded."""
    backup_id = backup_id or uuid.uuid4().hex
    await bus.publish(envelope_for(BackupUploaded(
        backup_id=backup_id, user_id=user_id, host_id=host_id, host="fileserver",
        snapshot_id=snapshot_id, kind="full", is_image=is_image, size_bytes=1,
        completed_at=datetime.now(UTC))))
    return backup_id


@dataclass(frozen=True)
class BackupRef:
    backup_id: str
    user_id: str
    host_id: str
    snapshot_id: str


async def image_backup(stack, user_id: str, disk: Path, **options) -> BackupRef:
    """An image backup of ``disk`` for a new host of ``user_id``, known to recovery."""
    return await backup_of(stack, user_id, [Source(str(disk), IMAGE)], **options)


async def backup_of(stack, user_id: str, sources: list[Source], *, is_image: bool = True,
                    writer: Settings | None = None, **options) -> BackupRef:
    """``writer``: the settings the agent's side writes with (another S3 endpoint, say)."""
    host_id = uuid.uuid4().hex
    snapshot = await write_backup(writer or stack.settings, stack.key, user_id, host_id,
                                  sources, **options)
    backup_id = await announce_backup(stack.bus, user_id=user_id, host_id=host_id,
                                      snapshot_id=snapshot, is_image=is_image)
    await known_to_recovery(stack, backup_id)
    return BackupRef(backup_id, user_id, host_id, snapshot)


async def known_to_recovery(stack, backup_id: str) -> None:
    from services.recovery.tables import RecoverableBackupRow

    db = stack.runtimes["recovery"].db

    async def known():
        async with db.sessions() as session:
            return await session.get(RecoverableBackupRow, backup_id) is not None

    await eventually(known)


class Observer:
    """Every recovery event, in the order published (a private queue on the test's bus)."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def start(self, bus) -> Observer:
        async def keep(envelope: Envelope) -> None:
            self.envelopes.append(envelope)

        await bus.subscribe_transient(["recovery.#"], keep)
        return self

    def of(self, recovery_id: str, event_type: str | None = None, *,
           since: datetime | None = None) -> list[dict]:
        """Payloads (with their type) in the order they were made: the outbox relay may
        publish the events of one batch concurrently, so arrival order is not theirs.
        ``since`` leaves out older events, such as a dead process's outbox relayed late."""
        ordered = sorted(self.envelopes, key=lambda e: e.occurred_at)
        return [e.payload | {"type": e.type} for e in ordered
                if e.payload.get("recovery_id") == recovery_id
                and (event_type is None or e.type == event_type)
                and (since is None or e.occurred_at >= since)]


async def user(api: Api, name: str) -> str:
    await api.register_and_login(name)
    status, me, _ = await api.call("GET", "/api/v1/auth/me")
    assert status == 200, me
    return me["id"]


async def wait_state(api: Api, recovery_id: str, states, timeout: float = 60.0) -> dict:
    states = {states} if isinstance(states, str) else set(states)
    seen = {}

    async def reached():
        status, body, _ = await api.call("GET", f"/api/v1/recoveries/{recovery_id}")
        assert status == 200, body
        seen["last"] = body
        return body if body["state"] in states else None

    try:
        return await eventually(reached, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"recovery never reached {states}; last: {seen.get('last')}") from None


async def download(base: str, token: str, recovery_id: str, dest: Path, *,
                   stop_after: int | None = None, headers: dict | None = None) -> aiohttp.ClientResponse:
    """GET the image into ``dest`` (appending); with ``stop_after``, drop the connection
    after that many bytes, as a cut line would."""
    got = 0
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/api/v1/recoveries/{recovery_id}/image",
                               headers={"Authorization": f"Bearer {token}", **(headers or {})}
                               ) as response:
            with open(dest, "ab") as out:
                async for piece in response.content.iter_chunked(64 * 1024):
                    if stop_after is not None and got + len(piece) > stop_after:
                        out.write(piece[:stop_after - got])
                        got = stop_after
                        break
                    out.write(piece)
                    got += len(piece)
            return response


class Lifetimes:
    """Stacks a test starts, stops (as a process dies) and starts again on the same data;
    everything they created (MariaDB databases, RabbitMQ queues) goes at the end."""

    def __init__(self) -> None:
        self.stacks: list = []
        self.stopped: set[int] = set()

    async def start(self, settings: Settings, names: list[str]):
        from services.embedded import Stack

        stack = Stack(settings, names)
        self.stacks.append(stack)
        await stack.migrate()
        await stack.start(gateway_port=0, embedded=True)
        stack.base_url = f"http://127.0.0.1:{stack.gateway_port}" if "gateway" in names else None
        return stack

    async def stop(self, stack) -> None:
        if id(stack) not in self.stopped:
            self.stopped.add(id(stack))
            await stack.stop()
            # A process that dies lets go of its SQLite locks at once. A stopped stack may
            # leave a connection its cancelled work never returned, still in a transaction
            # until the garbage collector closes it: do now what the process's end would.
            gc.collect()

    async def close(self) -> None:
        from shared.db import Database
        from tests.harness import delete_queues

        for stack in self.stacks:
            await self.stop(stack)
        seen: set[str] = set()
        for stack in self.stacks:
            for name in stack.runtimes:
                url = stack.settings.database_url_for(name)
                if url in seen or url.startswith("sqlite"):
                    continue
                seen.add(url)
                await Database(url).drop_database()
        for stack in self.stacks:
            await delete_queues(stack.settings, list(stack.runtimes))


def kms_key() -> tuple[str, object]:
    """A KMS key on moto, and the wrap function the agent uses to add a KMS key slot."""
    import boto3

    from tests import infra

    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=infra.s3_endpoint())
    arn = kms.create_key(Description="reclo test")["KeyMetadata"]["Arn"]

    def wrap(key_id: str, data: bytes) -> bytes:
        return kms.encrypt(KeyId=key_id, Plaintext=data)["CiphertextBlob"]

    return arn, wrap


async def recovery_row(stack, recovery_id: str):
    from services.recovery.tables import RecoveryRow

    async with stack.runtimes["recovery"].db.sessions() as session:
        return await session.get(RecoveryRow, recovery_id)
