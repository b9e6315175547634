"""The packs a backup tells the service it references (clients/agent/packrefs.py): never
fewer than the snapshot really needs, or the service's garbage collection would delete
data a kept backup points into. Checked against the snapshot itself, tree by tree."""

from __future__ import annotations

import random

from clients.agent.packrefs import PackReferences, RecordingRepository
from shared.format import FULL, INCREMENTAL, Archiver, LocalFolderStore, ScryptParams
from shared.format.constants import MiB

PASSPHRASE = "correct horse battery staple"


async def packs_really_referenced(repo, snapshot) -> set[str]:
    packs: set[str] = set()

    async def walk(tree_id: bytes) -> None:
        packs.add(repo.index.lookup(tree_id).pack_id)
        for node in (await repo.load_tree(tree_id)).nodes:
            for ref in node.content or ():
                if ref.id is not None:
                    packs.add(repo.index.lookup(ref.id).pack_id)
            if node.subtree is not None:
                await walk(node.subtree)

    await walk(snapshot.tree)
    return packs


async def test_every_pack_the_snapshot_needs_is_reported(tmp_path):
    store = LocalFolderStore(tmp_path / "repo")
    repo = await RecordingRepository.init(store, PASSPHRASE, kdf=ScryptParams(n=2**14, r=8, p=1),
                                          pack_size=1 * MiB)
    rng = random.Random(3)
    src = tmp_path / "src"
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(40):  # small files, several batches and packs, plus a few big ones
            size = 700_000 if f % 13 == 0 else rng.randrange(0, 30_000)
            (src / f"d{d}" / f"f{f}").write_bytes(rng.randbytes(size))

    # d2's chunks first go into packs of their own, through a backup of d2 alone: in the
    # incremental below, only d2's tree references those packs.
    await Archiver(repo, workers=2).backup([str(src / "d2")], kind=FULL)
    repo.references = PackReferences(repo)
    full = await Archiver(repo, workers=2).backup([str(src)], kind=FULL)
    reported = set(repo.references.packs())
    full_packs = sorted(reported)
    assert len(reported) > 5
    assert await packs_really_referenced(repo, full.snapshot) <= reported

    # An incremental that changes one folder: the others' chunks live in the full's packs.
    (src / "d2" / "f1").write_bytes(rng.randbytes(50_000))
    repo.references = PackReferences(repo)
    incr = await Archiver(repo, workers=2).backup([str(src)], kind=INCREMENTAL,
                                                  parent=full.snapshot_id)
    needed = await packs_really_referenced(repo, incr.snapshot)
    reported = set(repo.references.packs())
    assert needed <= reported and needed <= set(await repo.list_packs())
    assert reported - set(full_packs) != set()  # the incremental's own packs
