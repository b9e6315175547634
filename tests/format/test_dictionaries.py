"""Compression dictionaries (docs/format.md §3): the small fixed chunks of a database are
compressed with a dictionary trained on the file, stored once under dicts/, named by
every blob that needs it; real files, a real folder store, real zstd."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import threading
from pathlib import Path

import pytest
import zstandard

from shared.format import FULL, Archiver, Repository, Restorer
from shared.format import compression
from shared.format.checker import Checker
from shared.format.constants import DICTIONARIES_KEPT, DICTIONARIES_PREFIX, DICTIONARY_MIN_FILE, KiB, MiB
from shared.format.crypto import blob_aad
from shared.format.dictionaries import read_samples, train
from shared.format.dictionary import Dictionary, _with_content_size
from shared.format.errors import CorruptBlob, FormatError, RestoreIncomplete, StoreError
from shared.format.repository import RepositoryConfig
from shared.format.store import ForwardingStore

from .conftest import FAST_KDF, PASSPHRASE, TEST_PACK_SIZE, content_digest, reopen


def _table(path: Path, size: int, seed: int) -> None:
    path.write_bytes(_rows(size, seed))


def _rows(size: int, seed: int) -> bytes:
    """Rows drawn from one vocabulary, as a table's pages are: a 32 KiB chunk compresses
    on its own, and much better with a dictionary of the vocabulary."""
    rng = random.Random(seed)
    words = [rng.randbytes(5).hex() for _ in range(600)]
    rows, total = [], 0
    while total < size:
        row = "|".join(rng.choices(words, k=6)) + "|%d;" % rng.randrange(10**6)
        rows.append(row)
        total += len(row)
    return "".join(rows).encode()[:size]


async def _node(repo, result, *path: str):
    tree = await repo.load_tree(result.snapshot.tree)
    for name in path[:-1]:
        tree = await repo.load_tree(tree.find(name).subtree)
    return tree.find(path[-1])


async def _dictionary_ids(store) -> set[bytes]:
    return {bytes.fromhex(k.rsplit("/", 1)[-1]) async for k in store.list(DICTIONARIES_PREFIX)}


async def _encoding_of(repo, blob_id: bytes) -> bytes:
    """The first bytes of a blob's plaintext: its encoding, and a dictionary's id after it."""
    loc, sealed = await repo.fetch_sealed(blob_id)
    return repo.key.open(sealed, blob_aad("data", blob_id))[:33]


async def test_a_database_is_stored_with_a_dictionary_trained_on_it(repo, store, tmp_path):
    src = tmp_path / "server"
    src.mkdir()
    _table(src / "erp.db", 12 * MiB, seed=1)
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    node = await _node(repo, result, "server", "erp.db")
    assert node.dictionary is not None
    assert await _dictionary_ids(store) == {node.dictionary}
    first = await _encoding_of(repo, node.content[0].id)
    assert first[0] == compression.ZSTD_DICT and first[1:] == node.dictionary

    # The same file in a repository that may not use dictionaries (one made before them).
    plain_store = type(store)(tmp_path / "plain")
    plain = await Repository.init(plain_store, PASSPHRASE, kdf=FAST_KDF, pack_size=TEST_PACK_SIZE)
    plain.config = dataclasses.replace(plain.config, dictionaries=False)
    without = await Archiver(plain).backup([str(src)], kind=FULL)
    assert (await _node(plain, without, "server", "erp.db")).dictionary is None
    assert await _dictionary_ids(plain_store) == set()
    # ~12 % smaller here; the dictionary object itself is counted in neither
    assert result.snapshot.stats.stored_bytes < 0.92 * without.snapshot.stats.stored_bytes

    fresh = await reopen(store)
    await Restorer(fresh).restore(result.snapshot_id, tmp_path / "out")
    assert content_digest(tmp_path / "out" / "server" / "erp.db") == content_digest(src / "erp.db")
    checked = await Checker(fresh).check(read_data=True)
    assert checked.ok, [str(p) for p in checked.problems]


async def test_an_incremental_keeps_the_dictionary_and_a_full_trains_a_new_one(repo, store, tmp_path):
    src = tmp_path / "server"
    src.mkdir()
    _table(src / "erp.db", 10 * MiB, seed=2)
    _table(src / "crm.db", 9 * MiB, seed=3)
    full = await Archiver(repo).backup([str(src)], kind=FULL)
    erp = (await _node(repo, full, "server", "erp.db")).dictionary
    crm = (await _node(repo, full, "server", "crm.db")).dictionary
    assert None not in (erp, crm) and erp != crm

    with open(src / "erp.db", "r+b") as f:  # two rows rewritten in place
        for offset in (1 * MiB, 7 * MiB + 4 * KiB):
            f.seek(offset)
            f.write(b"0123456789abcdef" * 256)
    repo = await reopen(store)
    incr = await Archiver(repo).backup([str(src)])
    assert incr.snapshot.kind == "incremental"
    assert (await _node(repo, incr, "server", "erp.db")).dictionary == erp  # read again, same dictionary
    assert (await _node(repo, incr, "server", "crm.db")).dictionary == crm  # unchanged, kept
    assert await _dictionary_ids(store) == {erp, crm}
    changed = [r for r in (await _node(repo, incr, "server", "erp.db")).content
               if r.id not in {c.id for c in (await _node(repo, full, "server", "erp.db")).content}]
    assert changed
    for ref in changed:
        assert (await _encoding_of(repo, ref.id))[1:] == erp

    again = await Archiver(repo).backup([str(src)], kind=FULL)
    renewed = (await _node(repo, again, "server", "erp.db")).dictionary
    assert renewed not in (None, erp)  # a full follows the file's content
    assert await _dictionary_ids(store) == {erp, crm, renewed, (await _node(repo, again, "server", "crm.db")).dictionary}

    fresh = await reopen(store)
    for result, name in ((full, "full"), (incr, "incr"), (again, "again")):
        await Restorer(fresh).restore(result.snapshot_id, tmp_path / name)
    assert content_digest(tmp_path / "again" / "server" / "erp.db") == content_digest(src / "erp.db")
    assert content_digest(tmp_path / "incr" / "server" / "erp.db") == content_digest(src / "erp.db")
    assert content_digest(tmp_path / "full" / "server" / "crm.db") == content_digest(src / "crm.db")


async def test_only_files_where_a_dictionary_pays_get_one(repo, store, tmp_path):
    src = tmp_path / "server"
    src.mkdir()
    (src / "vault.db").write_bytes(os.urandom(DICTIONARY_MIN_FILE + MiB))  # encrypted: nothing to learn
    _table(src / "small.db", DICTIONARY_MIN_FILE - MiB, seed=4)  # below the minimum size
    _table(src / "notes.txt", DICTIONARY_MIN_FILE + MiB, seed=5)  # not rewritten in place: FastCDC
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    for name in ("vault.db", "small.db", "notes.txt"):
        assert (await _node(repo, result, "server", name)).dictionary is None, name
    assert await _dictionary_ids(store) == set()


def test_config_says_whether_dictionaries_may_be_written():
    new = RepositoryConfig.new()
    assert new.dictionaries and json.loads(new.encode())["dictionaries"] is True
    assert RepositoryConfig.decode(new.encode()).dictionaries
    older = json.loads(new.encode())
    del older["dictionaries"]  # a repository made before them: its readers know no dictionary
    assert not RepositoryConfig.decode(json.dumps(older).encode()).dictionaries


async def test_a_missing_dictionary_names_the_file_and_the_rest_restores(repo, store, tmp_path):
    src = tmp_path / "server"
    src.mkdir()
    _table(src / "erp.db", 9 * MiB, seed=6)
    (src / "readme.txt").write_text("kept apart\n" * 1000)
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    dictionary = (await _node(repo, result, "server", "erp.db")).dictionary
    await store.delete(DICTIONARIES_PREFIX + dictionary.hex())

    fresh = await reopen(store)
    with pytest.raises(RestoreIncomplete) as caught:
        await Restorer(fresh).restore(result.snapshot_id, tmp_path / "out")
    assert [path for path, _ in caught.value.damaged] == ["server/erp.db"]
    assert f"compression dictionary {dictionary.hex()} is missing" in str(caught.value)
    assert (tmp_path / "out" / "server" / "readme.txt").read_text() == "kept apart\n" * 1000

    with pytest.raises(CorruptBlob, match="dictionary .* is missing"):
        await fresh.read_blob((await _node(fresh, result, "server", "erp.db")).content[0].id)

    checked = await Checker(fresh).check()  # without reading data: the node names it
    assert [p.kind for p in checked.problems] == ["missing-dictionary"]
    assert checked.problems[0].paths == [f"{result.snapshot_id[:8]}:server/erp.db"]
    checked = await Checker(fresh).check(read_data=True)
    # Reading the packs finds the blobs that need it, which are not therefore damaged: the
    # one problem is the dictionary, with the file that needs it.
    assert [p.kind for p in checked.problems] == ["missing-dictionary"]
    assert checked.problems[0].paths == [f"{result.snapshot_id[:8]}:server/erp.db"]
    node = await _node(fresh, result, "server", "erp.db")
    assert checked.blobs_verified == len(fresh.index) - len({r.id for r in node.content if r.id is not None})


async def test_a_copy_whose_chunks_were_stored_with_a_lost_dictionary_is_named_too(repo, store, tmp_path):
    """The copy of a database trains its own dictionary but its chunks deduplicate to the
    original's, compressed with the original's: with that one lost, the copy cannot be
    restored either, and check --read-data names both files under that dictionary."""
    src = tmp_path / "server"
    src.mkdir()
    _table(src / "a.db", 9 * MiB, seed=8)
    (src / "b.db").write_bytes((src / "a.db").read_bytes())
    result = await Archiver(repo, workers=1).backup([str(src)], kind=FULL)  # a.db first
    a, b = [await _node(repo, result, "server", n) for n in ("a.db", "b.db")]
    assert a.dictionary != b.dictionary and [r.id for r in a.content] == [r.id for r in b.content]
    await store.delete(DICTIONARIES_PREFIX + a.dictionary.hex())

    fresh = await reopen(store)
    with pytest.raises(RestoreIncomplete) as caught:
        await Restorer(fresh).restore(result.snapshot_id, tmp_path / "out")
    assert sorted(path for path, _ in caught.value.damaged) == ["server/a.db", "server/b.db"]
    checked = await Checker(fresh).check(read_data=True)
    assert [p.kind for p in checked.problems] == ["missing-dictionary"]
    assert sorted(checked.problems[0].paths) == [f"{result.snapshot_id[:8]}:server/{n}" for n in ("a.db", "b.db")]
    assert a.dictionary.hex() in checked.problems[0].message


async def test_a_dictionary_that_is_not_what_its_name_says_is_refused(repo, store, tmp_path):
    src = tmp_path / "server"
    src.mkdir()
    _table(src / "erp.db", 9 * MiB, seed=7)
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    key = DICTIONARIES_PREFIX + (await _node(repo, result, "server", "erp.db")).dictionary.hex()
    sealed = bytearray(await store.get(key))
    sealed[40] ^= 1
    await store.delete(key)
    await store.put(key, bytes(sealed))

    fresh = await reopen(store)
    with pytest.raises(RestoreIncomplete, match="does not match its name"):
        await Restorer(fresh).restore(result.snapshot_id, tmp_path / "out")


def test_encoding_with_a_dictionary_round_trips_and_bad_bodies_are_refused():
    rows = _rows(65 * 32 * KiB, seed=8)
    samples = [rows[i : i + 32 * KiB] for i in range(0, 64 * 32 * KiB, 32 * KiB)]
    data = train(samples)
    assert data is not None
    dictionary = Dictionary(b"\x07" * 32, data)
    chunk = rows[64 * 32 * KiB :]  # the same words, not a sample
    encoded = compression.encode(chunk, dictionary.encoder(32 * KiB))
    assert encoded[0] == compression.ZSTD_DICT and encoded[1:33] == dictionary.id
    assert len(encoded) < len(compression.encode(chunk))  # the dictionary paid

    class Kept:
        def get(self, dictionary_id: bytes) -> Dictionary:
            if dictionary_id != dictionary.id:
                raise FormatError("no such dictionary")
            return dictionary

    assert compression.decode(encoded, len(chunk), Kept()) == chunk
    with pytest.raises(FormatError, match="never is"):
        compression.decode(encoded, len(chunk))  # objects (index, snapshot) have none
    with pytest.raises(FormatError, match="announces"):
        compression.decode(encoded, len(chunk) - 1, Kept())
    with pytest.raises(FormatError, match="cut short"):
        compression.decode(encoded[:20], len(chunk), Kept())
    with pytest.raises(FormatError, match="no such dictionary"):
        compression.decode(encoded[:1] + b"\x08" * 32 + encoded[33:], len(chunk), Kept())
    with pytest.raises(FormatError, match="not a zstd dictionary"):
        Dictionary(b"\x07" * 32, b"not a dictionary at all")


@pytest.mark.parametrize("chunk_size", [32 * KiB, 64 * KiB, 256 * KiB])
def test_every_frame_announces_its_size_whichever_way_zstd_used_the_dictionary(chunk_size):
    # Up to 64 KiB zstd is given no size (it uses the dictionary's tables in place) and
    # the header is rewritten to announce it; above, it compresses the usual way.
    rows = _rows(2 * MiB, seed=9)
    dictionary = Dictionary(b"\x09" * 32, train([rows[i : i + 32 * KiB] for i in range(0, MiB, 32 * KiB)]))
    encoder = dictionary.encoder(chunk_size)
    for size in (64, 255, 256, 257, 4 * KiB, 32 * KiB - 1, 32 * KiB, 64 * KiB, chunk_size):
        if size > chunk_size:
            continue
        data = rows[MiB : MiB + size]  # not a sample
        frame = encoder.compress(data)
        params = zstandard.get_frame_parameters(frame)
        assert params.content_size == size and params.dict_id == 0 and not params.has_checksum
        assert dictionary.decompressor().decompress(frame, max_output_size=size) == data
        if size >= 4 * KiB:
            assert len(frame) < size / 2  # the dictionary paid
        if chunk_size <= 64 * KiB:  # the header zstd writes without a size is the one expected
            stream = zstandard.ZstdCompressor(compression_params=encoder._params,
                                              dict_data=encoder._zdict).compressobj(size=-1)
            assert _with_content_size(stream.compress(data) + stream.flush(), size) == frame
    # Given a size, zstd writes a header this does not rewrite: it comes back as None.
    assert _with_content_size(zstandard.ZstdCompressor().compress(b"x" * 1000), 1000) is None
    assert _with_content_size(b"\x28\xb5\x2f\xfd\x00\x40rest", 65_792) is None  # needs a 4-byte field


def test_samples_are_spread_over_the_file_and_skip_zeros(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        for i in range(128):  # chunk i holds bytes i + 1, but odd chunks and chunk 16 are zeros
            f.write(bytes(32 * KiB) if i % 2 or i == 16 else bytes([i + 1]) * (32 * KiB))
    with open(path, "rb") as f:
        samples = read_samples(f.fileno(), 128 * 32 * KiB, 32 * KiB, count=16)
    assert [s[0] for s in samples] == [i + 1 for i in range(0, 128, 8) if i != 16]
    assert all(len(s) == 32 * KiB and s.count(s[0]) == len(s) for s in samples)
    assert train([os.urandom(32 * KiB) for _ in range(64)]) is None  # nothing to learn
    assert train([b"x" * 100]) is None  # too little to train on


async def test_many_blobs_opened_at_once_load_their_dictionary_without_a_deadlock(repo, store, tmp_path):
    # Forty chunks opened together on a fresh repository, in the default executor that the
    # folder store also reads through: a thread that waited for the dictionary would wait
    # for a read that no free thread is left to do.
    src = tmp_path / "server"
    src.mkdir()
    _table(src / "erp.db", 9 * MiB, seed=9)
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    fresh = await reopen(store)
    refs = (await _node(fresh, result, "server", "erp.db")).content[:40]
    chunks = await asyncio.wait_for(asyncio.gather(*(fresh.read_blob(r.id) for r in refs)), timeout=60)
    assert b"".join(chunks) == (src / "erp.db").read_bytes()[: sum(r.length for r in refs)]


async def test_work_that_needs_more_dictionaries_than_are_kept_still_finishes(repo, store):
    # One pack may hold chunks of many databases, each with its own dictionary: a check of
    # it, run again each time a dictionary is loaded, must get further every time.
    rows = _rows(64 * 32 * KiB, seed=10)
    trained = train([rows[i : i + 32 * KiB] for i in range(0, len(rows), 32 * KiB)])
    ids = [(await repo.dictionaries.add(trained)).id for _ in range(DICTIONARIES_KEPT + 4)]
    fresh = await reopen(store)
    runs = []

    def needs_them_all() -> list[bytes]:
        runs.append(1)
        return [fresh.dictionaries.get(i).id for i in ids]

    assert await asyncio.wait_for(fresh.dictionaries.in_thread(needs_them_all), timeout=60) == ids
    assert len(runs) == len(ids) + 1


async def test_a_backup_worker_waiting_for_the_loop_gives_up_when_the_backup_stops(repo):
    # A stopping backup's loop waits for its worker threads (pool.shutdown): a worker that
    # waited for the loop in turn would hang both.
    data = train([_rows(32 * KiB, seed=s) for s in range(40)])
    stop = threading.Event()
    outcome: list[BaseException] = []

    def worker() -> None:
        try:
            repo.dictionaries.add_from_worker(data, stop)
        except FormatError as e:
            outcome.append(e)

    thread = threading.Thread(target=worker)
    thread.start()
    stop.set()
    thread.join(timeout=10)  # the loop is blocked here, as in pool.shutdown(wait=True)
    assert not thread.is_alive()
    assert [str(e) for e in outcome] == ["the backup is stopping"]


class _Flaky(ForwardingStore):
    """Fails the first read of each dictionary, as a dropped connection would."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.failed: set[str] = set()

    async def get(self, key: str, offset=None, length=None) -> bytes:
        if key.startswith(DICTIONARIES_PREFIX) and key not in self.failed:
            self.failed.add(key)
            raise StoreError(f"{key}: connection reset")
        return await super().get(key, offset, length)


async def test_a_store_error_while_fetching_a_dictionary_is_tried_again(repo, store, tmp_path):
    src = tmp_path / "server"
    src.mkdir()
    _table(src / "erp.db", 9 * MiB, seed=11)
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    flaky = _Flaky(store)
    fresh = await Repository.open(flaky, PASSPHRASE, pack_size=TEST_PACK_SIZE)
    await Restorer(fresh).restore(result.snapshot_id, tmp_path / "out")  # no damage reported
    assert content_digest(tmp_path / "out" / "server" / "erp.db") == content_digest(src / "erp.db")
    assert len(flaky.failed) == 1


async def test_the_failure_of_a_missing_dictionary_does_not_grow_with_every_blob_that_meets_it(repo):
    """Every blob naming a dictionary that can't be loaded is told so with one stored
    error; each telling starts a fresh traceback, so the error does not collect the
    frames (and the bytes) of every blob before it."""
    from shared.format.errors import MissingDictionary

    missing = bytes(32)
    await repo.dictionaries.load_pinned(missing)
    depths = []
    for _ in range(5):
        try:
            repo.dictionaries.get(missing)
        except MissingDictionary as e:
            depth, tb = 0, e.__traceback__
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            depths.append(depth)
    assert len(depths) == 5 and depths[0] <= 2 and len(set(depths)) == 1
