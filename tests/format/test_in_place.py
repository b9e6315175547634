"""Files rewritten in place (databases, VM disks) in fixed chunks; big files on every core;
the repository parameters that make both, and what older repositories keep."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from shared.format import FULL, Archiver, Repository, Restorer, Source
from shared.format.snapshot import IMAGE
from shared.format.chunker import FixedChunking
from shared.format.constants import CDC_MIN_SIZE, KiB, MiB
from shared.format.crypto import ScryptParams, new_passphrase_slot, open_passphrase_slot
from shared.format.errors import FormatError
from shared.format.memory import return_big_buffers_to_the_system
from shared.format.repository import RepositoryConfig

from .conftest import FAST_KDF, PASSPHRASE, TEST_PACK_SIZE, content_digest, reopen


def test_fixed_chunk_size_grows_with_the_file_within_bounds():
    rule = FixedChunking(min_size=32 * KiB, max_size=MiB, per_file=32 * KiB)
    assert rule.chunk_size(0) == 32 * KiB
    assert rule.chunk_size(1024 * MiB) == 32 * KiB  # 32,768 chunks exactly
    assert rule.chunk_size(1024 * MiB + 1) == 64 * KiB
    assert rule.chunk_size(10 * 1024 * MiB) == 512 * KiB
    assert rule.chunk_size(2 * 1024 * 1024 * MiB) == MiB  # a 2 TiB disk: capped
    for bad in [dict(min_size=48 * KiB), dict(min_size=2 * KiB), dict(min_size=2 * MiB), dict(per_file=0)]:
        with pytest.raises(FormatError):
            FixedChunking(**bad)


def _database(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    page = b"".join(b"row %08d customer %x; " % (i, rng.getrandbits(40)) for i in range(300))[: 8 * KiB]
    pages = [page[i:] + page[:i] if rng.random() < 0.7 else rng.randbytes(8 * KiB) for i in range(size // (8 * KiB))]
    path.write_bytes(b"".join(pages))


async def _node(repo, result, *path: str):
    tree = await repo.load_tree(result.snapshot.tree)
    for name in path[:-1]:
        tree = await repo.load_tree(tree.find(name).subtree)
    return tree.find(path[-1])


def _rewrite_blocks(path: Path, offsets: list[int]) -> None:
    with open(path, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            f.write(os.urandom(4 * KiB))


async def test_scattered_writes_in_a_database_cost_a_few_small_chunks(repo, store, tmp_path):
    assert repo.config.fixed_chunks == FixedChunking()
    src = tmp_path / "server"
    (src / "db").mkdir(parents=True)
    _database(src / "db" / "ERP.MDF", 24 * MiB, seed=1)  # matched case-insensitively
    _database(src / "db" / "erp.bak", 24 * MiB, seed=1)  # same bytes, not in the pattern list
    full = await Archiver(repo).backup([str(src)], kind=FULL)
    fixed = (await _node(repo, full, "server", "db", "ERP.MDF")).content
    cdc = (await _node(repo, full, "server", "db", "erp.bak")).content
    assert len(fixed) == 24 * MiB // (32 * KiB)
    assert all(ref.length == 32 * KiB for ref in fixed)
    # FastCDC, whose cuts depend on the repository's random seed: at most one chunk per
    # minimum size (the fixed chunks are 768).
    assert len(cdc) <= 24 * MiB // CDC_MIN_SIZE

    offsets = [3 * MiB + 5 * 4 * KiB, 9 * MiB, 17 * MiB + 12 * KiB]
    _rewrite_blocks(src / "db" / "ERP.MDF", offsets)
    _rewrite_blocks(src / "db" / "erp.bak", offsets)
    repo = await reopen(store)
    incr = await Archiver(repo, in_place=["*.mdf"]).backup([str(src)])
    after = (await _node(repo, incr, "server", "db", "ERP.MDF")).content
    assert sum(a.id != b.id for a, b in zip(fixed, after)) == 3  # one 32 KiB chunk per write
    after_cdc = (await _node(repo, incr, "server", "db", "erp.bak")).content
    cdc_new = sum(r.length for r in after_cdc if r.id not in {c.id for c in cdc})
    assert cdc_new > 1 * MiB  # what the same writes cost with content-defined chunks

    await Restorer(repo).restore(incr.snapshot_id, tmp_path / "out")
    for name in ("ERP.MDF", "erp.bak"):
        assert content_digest(tmp_path / "out" / "server" / "db" / name) == content_digest(src / "db" / name)


async def test_in_place_files_can_be_turned_off_and_have_a_minimum_size(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _database(src / "big.db", 4 * MiB, seed=2)
    _database(src / "small.db", 512 * KiB, seed=3)
    default = await Archiver(repo).backup([str(src)], kind=FULL)
    assert len((await _node(repo, default, "src", "big.db")).content) == 4 * MiB // (32 * KiB)
    assert len((await _node(repo, default, "src", "small.db")).content) == 1  # below the minimum: one CDC chunk
    off = await Archiver(repo, in_place=[]).backup([str(src)], kind=FULL)
    # FastCDC, whose cuts depend on the repository's random seed: at most one chunk per
    # minimum size (the fixed chunks would be 128).
    assert len((await _node(repo, off, "src", "big.db")).content) <= 4 * MiB // CDC_MIN_SIZE


async def test_a_repository_made_before_fixed_chunks_keeps_its_chunking(store, tmp_path, monkeypatch):
    # What older versions wrote: no "fixed_chunks" in the config.
    legacy = RepositoryConfig.new()
    monkeypatch.setattr(RepositoryConfig, "new", classmethod(lambda cls: RepositoryConfig(
        legacy.id, legacy.created, legacy.chunker, 1 * MiB, None)))
    repo = await Repository.init(store, PASSPHRASE, kdf=FAST_KDF, pack_size=TEST_PACK_SIZE)
    doc = json.loads(repo.config.encode())
    assert "fixed_chunks" not in doc and doc["image_chunk_size"] == MiB
    monkeypatch.undo()

    repo = await reopen(store)
    assert repo.config.fixed_chunks is None and repo.in_place_chunker is None
    src = tmp_path / "src"
    src.mkdir()
    _database(src / "erp.db", 8 * MiB, seed=4)
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(3 * MiB))
    result = await Archiver(repo).backup([str(src), Source(str(image), IMAGE)], kind=FULL)
    assert len((await _node(repo, result, "src", "erp.db")).content) <= 8 * MiB // CDC_MIN_SIZE  # FastCDC
    assert [r.length for r in (await _node(repo, result, "disk.img")).content] == [MiB] * 3


def test_config_with_bad_fixed_chunks_is_a_format_error():
    doc = json.loads(RepositoryConfig.new().encode())
    doc["fixed_chunks"]["min_size"] = 1000
    with pytest.raises(FormatError):
        RepositoryConfig.decode(json.dumps(doc).encode())


async def test_big_files_saved_on_every_core_keep_their_order(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    # random data, runs of zeros (holes between data) and text: 40 MiB, fanned out in batches
    body = rng.randbytes(9 * MiB) + bytes(3 * MiB) + (b"text line\n" * 900_000) + rng.randbytes(19 * MiB)
    (src / "big.bin").write_bytes(body)
    _database(src / "disk.vhdx", 20 * MiB, seed=6)
    with open(src / "disk.vhdx", "r+b") as f:  # a hole in a fixed-chunk file
        f.seek(5 * MiB)
        f.write(bytes(MiB))
    result = await Archiver(repo, workers=2).backup([str(src)], kind=FULL)
    for name in ("big.bin", "disk.vhdx"):
        refs = (await _node(repo, result, "src", name)).content
        assert sum(r.length for r in refs) == os.path.getsize(src / name)
        assert not any(a.id is None and b.id is None for a, b in zip(refs, refs[1:]))  # holes merged
    assert any(r.id is None for r in (await _node(repo, result, "src", "disk.vhdx")).content)
    await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    for name in ("big.bin", "disk.vhdx"):
        assert (tmp_path / "out" / "src" / name).read_bytes() == (src / name).read_bytes()


def test_new_passphrase_slots_use_32_mib_of_scrypt_and_old_slots_still_open():
    from shared.format.crypto import MasterKey

    key = MasterKey.generate()
    new = new_passphrase_slot(key, PASSPHRASE)
    # 128 * n * r = 32 MiB, computed p = 2 times: the work of n = 2^16 in half its memory
    assert (new["kdf"]["n"], new["kdf"]["r"], new["kdf"]["p"]) == (2**15, 8, 2)
    assert open_passphrase_slot(new, PASSPHRASE).id_key == key.id_key
    for n, p in ((2**17, 1), (2**16, 1)):  # slots made by earlier versions
        old = new_passphrase_slot(key, PASSPHRASE, ScryptParams(n=n, r=8, p=p))
        assert open_passphrase_slot(old, PASSPHRASE).id_key == key.id_key


def test_big_buffers_go_back_to_the_system_on_linux():
    assert return_big_buffers_to_the_system() is True


async def test_a_file_split_over_many_groups_and_runs_restores_whole(repo, tmp_path, monkeypatch):
    """Groups of 3 chunks and runs of at most 2: a database's chunks reach both workers
    in pieces, and each worker's runs of one file are written separately."""
    from shared.format import restorer

    monkeypatch.setattr(restorer, "GROUP_CHUNKS", 3)
    monkeypatch.setattr(restorer, "RUN_BYTES", 64 * KiB)
    src = tmp_path / "server"
    src.mkdir()
    _database(src / "erp.db", 4 * MiB + 8 * KiB, seed=21)  # ends in a short chunk
    result = await Archiver(repo).backup([Source(str(src))], kind=FULL)
    assert len((await _node(repo, result, "server", "erp.db")).content) > 100
    await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert (tmp_path / "out" / "server" / "erp.db").read_bytes() == (src / "erp.db").read_bytes()
