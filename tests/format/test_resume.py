"""A backup killed half-way: the next one uploads again at most about one pack."""

from __future__ import annotations

import random

import pytest

from shared.format import FULL, Archiver, LocalFolderStore, Repository, Restorer
from shared.format.constants import MiB

from .conftest import FAST_KDF, PASSPHRASE, TEST_PACK_SIZE, CountingStore, describe, reopen

# the most a single pack can hold: the target plus one more blob (a chunk is at most 8 MiB)
ONE_PACK = TEST_PACK_SIZE + 8 * MiB


@pytest.fixture
def source(tmp_path):
    rng = random.Random(3)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(16):
        (src / f"file-{i:02}.bin").write_bytes(rng.randbytes(rng.randrange(1, 3) * MiB + rng.randrange(MiB)))
    return src


async def clean_backup_bytes(tmp_path, src) -> int:
    store = CountingStore(tmp_path / "clean")
    repo = await Repository.init(store, PASSPHRASE, kdf=FAST_KDF, pack_size=TEST_PACK_SIZE)
    await Archiver(repo).backup([str(src)], kind=FULL)
    return store.pack_bytes


@pytest.mark.parametrize("adopt", [True, False])
async def test_killed_backup_resumes_without_uploading_again_what_arrived(tmp_path, source, adopt):
    clean = await clean_backup_bytes(tmp_path, source)

    dying = CountingStore(tmp_path / "repo", die_after_pack_puts=6)
    repo = await Repository.init(dying, PASSPHRASE, kdf=FAST_KDF, pack_size=TEST_PACK_SIZE)
    with pytest.raises(ConnectionError):
        await Archiver(repo).backup([str(source)], kind=FULL)
    assert dying.pack_puts == 6
    assert [k async for k in dying.list("snapshots/")] == []  # no snapshot of an incomplete backup

    again = CountingStore(tmp_path / "repo")  # the agent, restarted
    repo = await reopen(again)
    result = await Archiver(repo, adopt_unindexed=adopt).backup([str(source)], kind=FULL)
    uploaded_twice = dying.pack_bytes + again.pack_bytes - clean
    slack = 64 * 1024  # pack headers differ slightly with how blobs were grouped
    if adopt:
        assert uploaded_twice <= slack  # the packs that arrived were all adopted
    else:
        # only packs stored but not yet indexed when the process died (those in flight)
        assert uploaded_twice <= repo.uploads_in_flight * ONE_PACK
    assert again.pack_bytes < clean - 4 * TEST_PACK_SIZE

    await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert describe(tmp_path / "out" / "src") == describe(source)


async def test_recover_unindexed_packs_adopts_a_pack_whose_index_was_lost(tmp_path, source):
    store = LocalFolderStore(tmp_path / "repo")
    repo = await Repository.init(store, PASSPHRASE, kdf=FAST_KDF, pack_size=TEST_PACK_SIZE)
    await Archiver(repo).backup([str(source)], kind=FULL)
    index_keys = [k async for k in store.list("index/")]
    await store.delete(index_keys[0])  # as if the process died between pack and index

    repo = await reopen(store)
    recovered, problems = await repo.recover_unindexed_packs()
    assert len(recovered) == 1 and problems == []
    fresh = await reopen(store)
    assert fresh.index.packs() == repo.index.packs()
    assert len([k async for k in store.list("index/")]) == len(index_keys)  # one new index file
