"""Issue 3's resume check: the agent killed (SIGKILL) at random points of a 1 GiB backup
into S3 (moto, through the server on MariaDB and RabbitMQ); the next run finishes, the
snapshot restores byte-identical and checks clean, and what was uploaded twice stays
under one pack.

The data and the kill points are drawn from a seed printed in the test output; set
RECLO_RESUME_SEED to replay a failure. Upload is measured two ways: every pack that ever
appeared in the bucket (listed after each run, so the packs killed runs left count too;
their headers say which blobs were stored twice), and every byte sent to S3 (a counting
proxy in front of moto: it also sees the part of a pack upload that a kill cut off, which
never reaches the bucket; the service's and the test's own requests to S3 count too, which
only makes the figure larger).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import pytest

from clients.agent.config import DEFAULT_UPLOAD_CONCURRENCY
from shared.format import Repository
from shared.format.constants import CDC_MAX_SIZE, PACK_TARGET_SIZE
from shared.settings import BackupSettings
from tests import infra
from tests.harness import settings_for
from tests.support import TcpProxy

from .bulk_tree import file_digests, make_bulk_tree
from .conftest import PASSPHRASE, MiB, registered

# Kill points, drawn from the seed: two kills once the run added a random share of what
# was left to store (so every one of them gets further), each after a random pause so that
# it lands anywhere in a pack's upload; and between them one kill a random time after the
# start (starting up, adopting the packs the last run left unindexed, reading).
KILL_AFTER_SHARE_LEFT = (0.05, 0.5)  # at least a quarter of the upload is left for the end
KILL_JITTER_SECONDS = (0.0, 0.5)  # a pack takes longer than this to fill and upload
EARLY_KILL_SECONDS = (0.3, 3.0)
KILLS = 3
# The most one pack holds: the target size plus one more chunk.
ONE_PACK = PACK_TARGET_SIZE + CDC_MAX_SIZE
RUN_TIMEOUT = 180


@pytest.fixture
async def s3_proxy():
    endpoint = urlsplit(infra.s3_endpoint())
    proxy = TcpProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
def server_settings(s3_proxy, tmp_path, unique, monkeypatch):
    """The real server on MariaDB, RabbitMQ and moto, whose S3 endpoint (for the service and
    for the URLs it presigns for the agent) is the counting proxy. A day's grace keeps
    garbage collection from deleting the killed runs' packs before they are counted."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return settings_for("mariadb", tmp_path, unique, backup=BackupSettings(key_prefix=f"t{unique}/"),
                        s3_endpoint=f"http://127.0.0.1:{s3_proxy.port}")


def kill_seed() -> int:
    if seed := os.environ.get("RECLO_RESUME_SEED"):
        return int(seed)
    return random.SystemRandom().randrange(1, 2**32)


async def _drain(stream: asyncio.StreamReader, into: list[bytes]) -> None:
    while line := await stream.readline():
        into.append(line)


async def backup_killed(agent, when: Callable[[], Awaitable[None]]) -> dict:
    """Start a backup and SIGKILL it as soon as `when()` returns; says whether the run
    finished before that, and the last thing it said."""
    proc = await agent.start("backup", "--json")
    out: list[bytes] = []
    err: list[bytes] = []
    readers = asyncio.gather(_drain(proc.stdout, out), _drain(proc.stderr, err))
    exited = asyncio.create_task(proc.wait())
    trigger = asyncio.create_task(when())
    try:
        await asyncio.wait({exited, trigger}, timeout=RUN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finished = proc.returncode is not None
    finally:
        trigger.cancel()
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await exited
        await readers
    if trigger.done() and not trigger.cancelled():
        trigger.result()  # a trigger that failed (the bucket's listing) fails the test
    said = [line for line in out if line.startswith(b"{")]
    return {"finished": finished, "exit": proc.returncode, "last": json.loads(said[-1]) if said else None,
            "stderr": b"".join(err).decode()[-2000:]}


async def pack_bytes(server) -> int:
    return sum((await pack_sizes(server)).values())


def once_stored(server, at_least: int, jitter: float) -> Callable[[], Awaitable[None]]:
    async def when() -> None:
        while await pack_bytes(server) < at_least:
            await asyncio.sleep(0.1)
        await asyncio.sleep(jitter)
    return when


def after(seconds: float) -> Callable[[], Awaitable[None]]:
    return lambda: asyncio.sleep(seconds)


async def pack_sizes(server) -> dict[str, int]:
    return {i.key: i.size async for i in server.bucket.scan() if "/data/" in i.key}


async def object_bytes(server) -> int:
    return sum([i.size async for i in server.bucket.scan()])


async def repository_of(server) -> Repository:
    """The host's repository, opened in the test with the passphrase (to read pack headers)."""
    [config] = [i.key async for i in server.bucket.scan() if i.key.endswith("/config")]
    store = server.bucket.scoped(config.removesuffix("config"))
    return await Repository.open(store, PASSPHRASE, load_index=False)


async def test_random_kills_during_a_1_gib_backup_upload_at_most_a_pack_twice(
        agent, server, s3_proxy, tmp_path, unique):
    seed = kill_seed()
    print(f"\nresume test seed: {seed} (replay with RECLO_RESUME_SEED={seed})", file=sys.stderr)
    rng = random.Random(seed)
    src = tmp_path / "src"
    tree = make_bulk_tree(src, seed)
    digests = file_digests(src)
    await registered(agent, server, f"fs-{unique}", [src])
    sent_before = s3_proxy.sent
    bytes_before = await object_bytes(server)

    ever: dict[str, int] = {}  # every pack seen in the bucket, with its size
    kills = [("after a share of the upload", rng.uniform(*KILL_AFTER_SHARE_LEFT), rng.uniform(*KILL_JITTER_SECONDS)),
             ("early", None, rng.uniform(*EARLY_KILL_SECONDS)),
             ("after a share of the rest", rng.uniform(*KILL_AFTER_SHARE_LEFT), rng.uniform(*KILL_JITTER_SECONDS))]
    assert len(kills) == KILLS
    for n, (what, share, pause) in enumerate(kills, 1):
        if share is None:
            when = after(pause)
        else:
            before = await pack_bytes(server)
            target = before + int(share * max(0, tree.payload - before))
            what += f" ({share:.0%}: at {target / MiB:.0f} of ~{tree.payload / MiB:.0f} MiB)"
            when = once_stored(server, target, pause)
        run = await backup_killed(agent, when)
        assert not run["finished"], f"kill {n} ({what}) came after the backup finished: {run}"
        ever.update(await pack_sizes(server))
        print(f"kill {n}: {what}, +{pause:.2f} s; then {len(ever)} packs, "
              f"{sum(ever.values()) / MiB:.0f} MiB in the bucket; it last said {run['last']}", file=sys.stderr)

    r = await agent("backup", "--json", timeout=RUN_TIMEOUT)
    assert r.code == 0, r
    assert r.result["kind"] == "full" and r.result["bytes"] == tree.logical
    ever.update(await pack_sizes(server))
    sent = s3_proxy.sent - sent_before
    stored = await object_bytes(server) - bytes_before
    # The server saw one backup complete; the killed runs' sessions (those that got as far
    # as opening one) were closed by it.
    backups = await server.backups()
    assert [b["id"] for b in backups if b["status"] == "complete"] == [r.result["backup_id"]]
    for b in backups:
        if b["id"] != r.result["backup_id"]:
            assert b["status"] == "failed" and f"resumed by backup {r.result['backup_id']}" in b["failure_reason"], b

    # What arrived is whole: a restore is byte-identical and the data checks.
    out = tmp_path / "out"
    restored = await agent("restore", "latest", str(out), timeout=RUN_TIMEOUT)
    assert restored.code == 0, restored
    assert file_digests(out / "src") == digests
    checked = await agent("check", "--read-data", "--json", timeout=RUN_TIMEOUT)
    assert checked.code == 0 and checked.result["ok"], checked
    assert checked.result["packs_read"] == checked.result["packs"]

    # Nothing that reached the bucket was uploaded again: over every pack any run stored
    # (all still there: garbage collection waits a day), blobs stored more than once come
    # to less than one pack in all.
    repo = await repository_of(server)
    assert set(await pack_sizes(server)) == set(ever), "a pack vanished from the bucket"
    copies: Counter[bytes] = Counter()
    twice = 0
    for key in ever:
        for entry in (await repo.read_pack_header(key.rsplit("/", 1)[-1])).entries:
            copies[entry.id] += 1
            twice += entry.length if copies[entry.id] > 1 else 0
    print(f"logical {tree.logical / MiB:.0f} MiB; stored {stored / MiB:.1f} MiB in {len(ever)} packs, "
          f"of which {twice / MiB:.1f} MiB twice; sent to S3 {sent / MiB:.1f} MiB, "
          f"{(sent - stored) / MiB:.1f} MiB more than stored; the final run stored "
          f"{r.result['stored_bytes'] / MiB:.1f} MiB in {r.seconds:.0f} s", file=sys.stderr)
    assert twice < PACK_TARGET_SIZE, f"{twice} bytes of blobs stored twice"
    # On the wire a kill also wastes the packs it cut off mid-upload: at most the packs in
    # flight (docs/agent.md, "Resume"). Everything else that was sent is in the bucket.
    assert sent - stored < KILLS * DEFAULT_UPLOAD_CONCURRENCY * ONE_PACK
