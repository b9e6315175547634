import hashlib
import os

import pytest

from shared.format import compression
from shared.format.crypto import MasterKey
from shared.format.errors import CorruptBlob, FormatError
from shared.format.index import Index, IndexedPack, decode_index, encode_index
from shared.format.pack import BlobType, PackEntry, PackWriter, open_blob, read_pack, seal_blob
from shared.format.snapshot import ChunkRef, Node, Snapshot, Tree, append_ref


def _pack(key, blobs):
    w = PackWriter()
    for t, data in blobs:
        bid = key.chunk_id(data)
        w.seal(key, t, bid, compression.encode(data), len(data))
    return w.finish(key)


def test_pack_layout_and_read_back():
    key = MasterKey.generate()
    blobs = [(BlobType.DATA, os.urandom(1000)), (BlobType.DATA, b"a" * 5000), (BlobType.TREE, b'{"nodes":[]}')]
    pack = _pack(key, blobs)
    assert pack.id == hashlib.sha256(pack.data).hexdigest()
    assert bytes(pack.data[-4:]) == b"RPK1"
    entries = read_pack(key, bytes(pack.data), pack.id)
    assert entries == pack.entries
    assert [e.offset for e in entries] == [0, entries[0].length, entries[0].length + entries[1].length]
    assert entries[1].length < 5000  # the compressible blob was compressed
    for e, (t, data) in zip(entries, blobs):
        assert e.type == t and e.raw_length == len(data)
        assert open_blob(key, e, bytes(pack.data[e.offset : e.offset + e.length]), pack_id=pack.id) == data


def test_blobs_sealed_into_the_pack_read_back_like_blobs_sealed_apart():
    """PackWriter.seal encrypts straight into the pack: each blob opens as one sealed
    apart (seal_blob) does, and takes as many bytes."""
    key = MasterKey.generate()
    blobs = [(BlobType.DATA, b"apart"), (BlobType.DATA, os.urandom(300_000)), (BlobType.DATA, b"text " * 20_000),
             (BlobType.TREE, b'{"nodes":[]}')]
    w = PackWriter()
    for t, data in blobs:
        w.seal(key, t, key.chunk_id(data), compression.encode(data), len(data))
    pack = w.finish(key)
    entries = read_pack(key, bytes(pack.data), pack.id)
    assert entries == pack.entries and len(entries) == 4
    for e, (t, data) in zip(entries, blobs):
        assert open_blob(key, e, bytes(pack.data[e.offset : e.offset + e.length]), pack_id=pack.id) == data
        assert e.length == len(seal_blob(key, t, e.id, data))
    assert entries[2].length < 100_000  # compressed, then sealed


def test_a_seal_into_that_fails_leaves_the_buffer_as_it_was():
    key = MasterKey.generate()
    out = bytearray(b"already here")
    n = key.seal_into(b"plain", b"aad", out)
    assert n == len(out) - 12 and key.open(bytes(out[12:]), b"aad") == b"plain"
    before = bytes(out)
    with pytest.raises(TypeError):
        key.seal_into("not bytes", b"aad", out)
    assert bytes(out) == before


def test_changed_pack_fails_its_hash_and_the_wrong_key_fails_the_header():
    key = MasterKey.generate()
    pack = _pack(key, [(BlobType.DATA, b"x" * 100)])
    data = bytearray(pack.data)
    data[3] ^= 1
    with pytest.raises(CorruptBlob, match="sha256"):
        read_pack(key, bytes(data), pack.id)
    with pytest.raises(CorruptBlob, match="header"):
        read_pack(MasterKey.generate(), bytes(pack.data), pack.id)


def test_index_encoding_and_lookup():
    key = MasterKey.generate()
    p1 = _pack(key, [(BlobType.DATA, b"one"), (BlobType.TREE, b"two")])
    p2 = _pack(key, [(BlobType.DATA, b"one"), (BlobType.DATA, b"three")])  # "one" stored twice
    packs = [IndexedPack(p1.id, p1.size, p1.entries), IndexedPack(p2.id, p2.size, p2.entries)]
    decoded = decode_index(encode_index(packs))
    assert decoded == packs
    index = Index()
    for p in decoded:
        index.add_pack(p)
    assert len(index) == 3
    assert index.lookup(key.chunk_id(b"one")).pack_id == p1.id  # the first copy wins
    loc = index.lookup(key.chunk_id(b"three"))
    assert (loc.pack_id, loc.type, loc.raw_length) == (p2.id, BlobType.DATA, 5)
    assert index.lookup(key.chunk_id(b"none")) is None
    assert index.packs() == {p1.id: p1.size, p2.id: p2.size}
    with pytest.raises(FormatError):
        decode_index(b'{"version": 99, "packs": []}')


def test_tree_encoding_is_canonical_and_keeps_any_name():
    weird = os.fsdecode(b"not-utf8-\xff\xfe")
    a = Node(name="b", type="file", mode=0o644, size=3, content=[ChunkRef(b"\x01" * 32, 3)])
    b = Node(name=weird, type="symlink", target=os.fsdecode(b"/tmp/\xff"), size=6)
    c = Node(name="ä dir", type="dir", subtree=b"\x02" * 32)
    t1, t2 = Tree([a, b, c]), Tree([c, a, b])
    assert t1.encode() == t2.encode()
    back = Tree.decode(t1.encode())
    assert sorted(n.name for n in back.nodes) == sorted([a.name, b.name, c.name])
    assert back.find(weird).target == b.target
    assert b'"name_raw"' in t1.encode()


def test_hole_runs_are_merged():
    content: list[ChunkRef] = []
    for ref in [ChunkRef(b"\x01" * 32, 10), ChunkRef(None, 5), ChunkRef(None, 7), ChunkRef(b"\x02" * 32, 1)]:
        append_ref(content, ref)
    assert content == [ChunkRef(b"\x01" * 32, 10), ChunkRef(None, 12), ChunkRef(b"\x02" * 32, 1)]


def test_node_whose_content_does_not_add_up_is_refused():
    doc = Node(name="f", type="file", size=10, content=[ChunkRef(None, 5)]).to_json()
    with pytest.raises(FormatError):
        Node.from_json(doc)
    with pytest.raises(FormatError):
        Snapshot.decode(b'{"version": 1}')


def test_the_index_keeps_locations_exactly_at_the_edges_of_their_fields():
    index = Index()
    edges = [
        PackEntry(BlobType.TREE, b"\x01" * 32, (1 << 40) - 1, (1 << 32) - 1, (1 << 32) - 1),
        PackEntry(BlobType.DATA, b"\x02" * 32, 0, 0, 0),
        PackEntry(BlobType.DATA, b"\x03" * 32, 12345, 678, 910),
    ]
    for n in range(300):  # pack numbers grow without a bound
        index.add_pack(IndexedPack(f"{n:064x}", 1000, edges if n == 299 else []))
    for entry in edges:
        location = index.lookup(entry.id)
        assert location.pack_id == f"{299:064x}"
        assert (location.type, location.offset, location.length, location.raw_length) == \
            (entry.type, entry.offset, entry.length, entry.raw_length)


@pytest.mark.parametrize("offset,length", [(1 << 40, 1), (-1, 1), (0, 1 << 32), (0, -5)])
def test_a_location_that_does_not_fit_is_refused(offset, length):
    with pytest.raises(FormatError, match="out of range"):
        Index().add_pack(IndexedPack("ab" * 32, 1000, [
            PackEntry(BlobType.DATA, b"\x04" * 32, offset, length, 1)]))


async def test_a_pack_of_tiny_blobs_is_sealed_at_the_entry_limit(repo, monkeypatch):
    """Bounded index files and pack headers however small the files: a pack closes at
    PACK_MAX_BLOBS entries even far below its target size."""
    import shared.format.repository as repository

    monkeypatch.setattr(repository, "PACK_MAX_BLOBS", 10)
    saver = repo.saver()
    for i in range(35):
        await saver.save_async(BlobType.DATA, f"tiny file {i}".encode())
    await saver.flush()
    sizes = sorted(len([e for e in p.entries]) for p in
                   [await repo.read_pack_header(pack_id) for pack_id in repo.index.packs()])
    assert sizes == [5, 10, 10, 10]
    assert len(repo.index) == 35
