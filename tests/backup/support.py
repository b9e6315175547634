"""Making real backups with the format package through a RemoteStore, as the agent will."""

from __future__ import annotations

import os
import random
from pathlib import Path

from clients.agent.remote_store import RemoteStore
from shared.api.backup import BackupCommit, BackupStart, SnapshotStats, SourceSpec
from shared.format import Archiver, Repository, RepositoryNotFound, Restorer
from shared.format.repository import pack_key
from tests.format.conftest import FAST_KDF, PASSPHRASE, TEST_PACK_SIZE


def make_tree(root: Path, seed: int, files: int = 6, size: int = 700_000) -> Path:
    """A folder of incompressible files (several packs' worth at the test pack size)."""
    rng = random.Random(seed)
    (root / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        folder = root if i % 3 == 0 else root / "sub" if i % 3 == 1 else root / "sub" / "deeper"
        (folder / f"file {i} ü.bin").write_bytes(rng.randbytes(size + i))
    (root / "empty.txt").write_bytes(b"")
    os.symlink("sub/deeper", root / "link")
    return root


async def open_or_init(store: RemoteStore) -> Repository:
    try:
        return await Repository.open(store, PASSPHRASE, pack_size=TEST_PACK_SIZE)
    except RepositoryNotFound:
        return await Repository.init(store, PASSPHRASE, kdf=FAST_KDF, pack_size=TEST_PACK_SIZE)


async def snapshot_packs(repo: Repository, snapshot_id: str) -> list[str]:
    """Every pack a snapshot needs: those of its tree blobs and of its files' chunks."""
    snapshot = await repo.load_snapshot(snapshot_id)
    packs: set[str] = set()
    trees = [snapshot.tree]
    while trees:
        tree_id = trees.pop()
        packs.add(repo.index.lookup(tree_id).pack_id)
        for node in (await repo.load_tree(tree_id)).nodes:
            if node.subtree is not None:
                trees.append(node.subtree)
            for ref in node.content or ():
                if ref.id is not None:
                    packs.add(repo.index.lookup(ref.id).pack_id)
    return sorted(packs)


async def backup_folder(store: RemoteStore, source: Path, *, kind: str = "full",
                        host: str = "server", commit: bool = True, repo: Repository | None = None):
    """One backup session: start, back up with the format package, commit the snapshot and
    its packs. Returns (the Backup, the BackupResult, the packs, the repository)."""
    await store.start_backup(BackupStart(kind=kind, sources=[SourceSpec(path=str(source), type="folder")],
                                         agent_version="test"))
    repo = repo or await open_or_init(store)
    result = await Archiver(repo, host=host, workers=2).backup([str(source)], kind=kind)
    packs = await snapshot_packs(repo, result.snapshot_id)
    if not commit:
        return None, result, packs, repo
    s = result.stats
    backup = await store.commit(BackupCommit(
        snapshot_id=result.snapshot_id, packs=packs, is_image=False,
        kind=result.snapshot.kind, parent_snapshot_id=result.snapshot.parent,
        stats=SnapshotStats(files=s.files, dirs=s.dirs, bytes=s.bytes, new_bytes=s.new_bytes,
                            chunks=s.chunks, new_chunks=s.new_chunks,
                            duration_seconds=s.duration_s, warnings=s.warnings)))
    return backup, result, packs, repo


async def restore(store: RemoteStore, snapshot_id: str, target: Path) -> None:
    repo = await Repository.open(store, PASSPHRASE, pack_size=TEST_PACK_SIZE)
    await Restorer(repo).restore(snapshot_id, target)


def pack_keys(packs) -> list[str]:
    return [pack_key(p) for p in packs]


async def quick_backup(agent, *, packs: int = 1, reuse: tuple[str, ...] = (), path: str = "/srv",
                       commit: bool = True) -> tuple[dict, list[str]]:
    """A backup session through the raw API with made-up objects (the service never reads
    them): `packs` new packs, older packs reused, a snapshot. Returns (backup, its packs)."""
    status, session, _ = await agent.call("POST", "/api/v1/backups", json={
        "kind": "full", "sources": [{"path": path, "type": "folder"}]})
    assert status == 201, session
    new = [os.urandom(32).hex() for _ in range(packs)]
    snapshot = os.urandom(32).hex()
    objects = {f"data/{p[:2]}/{p}": os.urandom(100) for p in new}
    objects[f"snapshots/{snapshot}"] = b"snapshot"
    status, urls, _ = await agent.call("POST", f"/api/v1/backups/{session['id']}/upload-urls", json={
        "objects": [{"key": k, "size": len(v)} for k, v in objects.items()]})
    assert status == 200, urls
    for url in urls["urls"]:
        target = url["url"] if url["url"].startswith("http") else agent.base + url["url"]
        async with agent.session.put(target, data=objects[url["key"]], headers=url["headers"]) as response:
            assert response.status in (200, 204), await response.text()
    if not commit:
        return session, new
    status, backup, _ = await agent.call("POST", f"/api/v1/backups/{session['id']}/commit", json={
        "snapshot_id": snapshot, "packs": [*new, *reuse], "is_image": False, "stats": {"files": 1}})
    assert status == 200, backup
    return backup, [*new, *reuse]
