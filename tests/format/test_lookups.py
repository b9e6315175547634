"""A backup asks the index about chunks many at a time: on disk each lookup alone is a
query, with a hand-off of the GIL (BlobSaver.save_data_many, archiver's _Deferred and
_FannedOut)."""

from __future__ import annotations

import os
import threading

from shared.format import FULL, INCREMENTAL, Archiver, Repository, Restorer
from shared.format.constants import KiB, MiB
from shared.format.index import Index

from .conftest import FAST_KDF, PASSPHRASE, content_digest


class _Counted:
    def __init__(self, monkeypatch):
        self.single: list[bytes] = []
        self.many: list[list[bytes]] = []
        real_contains, real_many = Index.__contains__, Index.contains_many

        inside_many = threading.local()

        def contains(index, blob_id):
            if not getattr(inside_many, "yes", False):  # the in-memory index's many uses it
                self.single.append(blob_id)
            return real_contains(index, blob_id)

        def contains_many(index, blob_ids):
            self.many.append(list(blob_ids))
            inside_many.yes = True
            try:
                return real_many(index, self.many[-1])
            finally:
                inside_many.yes = False

        monkeypatch.setattr(Index, "__contains__", contains)
        monkeypatch.setattr(Index, "contains_many", contains_many)


async def test_small_files_and_a_big_files_chunks_are_looked_up_in_batches(store, tmp_path, monkeypatch):
    # Packs larger than what is stored: none is indexed while the files are read, which
    # would make the saver ask again about a chunk, alone (BlobSaver._store).
    repo = await Repository.init(store, PASSPHRASE, kdf=FAST_KDF, pack_size=64 * MiB)
    assert isinstance(repo.index, Index)
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    for i in range(40):
        (src / "docs" / f"doc-{i:02}.txt").write_text(f"document {i}\n" * 300)
    (src / "docs" / "copy.txt").write_text("document 7\n" * 300)  # the same chunk as doc-07
    (src / "vm").mkdir()
    with open(src / "vm" / "disk.img", "wb") as f:  # fixed chunks, read and fanned out
        for _ in range(10):
            f.write(os.urandom(MiB))
    ids = {repo.key.chunk_id((src / "docs" / f"doc-{i:02}.txt").read_bytes()) for i in range(40)}
    counted = _Counted(monkeypatch)
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    assert result.warnings == []
    # no small file's chunk is looked up alone, and its batch asks once for all of them
    assert not ids & set(counted.single)
    batches = [asked for asked in counted.many if set(asked) & ids]
    assert len(batches) == 1 and ids <= set(batches[0])
    # the disk image's chunks (32 KiB) too: in a few queries, not 320
    image_chunks = 10 * MiB // (32 * KiB)
    asked_for_image = sum(len(asked) for asked in counted.many) - len(batches[0])
    assert asked_for_image == image_chunks and len(counted.many) - 1 <= image_chunks // 16
    await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    for rel in ("docs/doc-07.txt", "docs/copy.txt", "vm/disk.img"):
        assert content_digest(tmp_path / "out" / "src" / rel) == content_digest(src / rel)
    assert result.stats.new_chunks == 40 + image_chunks  # the copy stored once


async def test_a_chunk_the_index_already_has_is_not_stored_again(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"note-{i}.txt").write_text(f"note {i}\n" * 50)
    first = await Archiver(repo).backup([str(src)], kind=FULL)
    (src / "note-3.txt").write_text("a new note\n")
    (src / "copy-of-5.txt").write_text("note 5\n" * 50)
    again = await Archiver(repo).backup([str(src)], kind=INCREMENTAL)
    assert first.stats.new_chunks == 20
    assert again.stats.new_chunks == 1  # the new note; the copy of note 5 is known
