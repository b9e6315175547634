import hashlib
import os
import random

import pytest

from shared.format.chunker import ChunkerParams, FileChunker, FixedChunking, ImageChunker, is_zero
from shared.format.constants import IMAGE_CHUNK_SIZE, KiB, MiB


def _pieces(chunker, path):
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        read = []
        pieces = list(chunker.pieces(f, size, on_read=read.append))
    assert sum(p.length for p in pieces) == size
    offsets = [p.offset for p in pieces]
    assert offsets == sorted(offsets) and all(a.offset + a.length == b.offset for a, b in zip(pieces, pieces[1:]))
    return pieces, sum(read)


def _ids(pieces):
    return [hashlib.sha256(p.data).hexdigest() for p in pieces if p.data is not None]


def test_cdc_cuts_survive_an_insertion(tmp_path):
    rng = random.Random(7)
    data = rng.randbytes(24 * MiB)
    original, edited = tmp_path / "a", tmp_path / "b"
    original.write_bytes(data)
    edited.write_bytes(data[: 5 * MiB] + b"inserted!" * 100 + data[5 * MiB :])
    chunker = FileChunker(ChunkerParams(seed=12345))
    before, _ = _pieces(chunker, original)
    after, _ = _pieces(chunker, edited)
    assert 10 <= len(before) <= 30  # about 1 MiB each (FastCDC's mean is ~1.3x avg)
    assert all(p.length <= 8 * MiB for p in before)
    common = set(_ids(before)) & set(_ids(after))
    assert len(common) >= len(before) - 2  # only the chunk(s) around the insertion changed


@pytest.mark.parametrize("size", [100, 600_000, 8 * MiB, 8 * MiB + 1, 40 * MiB])
def test_file_chunks_equal_cutting_the_whole_file_in_memory(tmp_path, size):
    # small extents are cut in memory, large ones streamed: both must cut alike
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    pieces, read = _pieces(FileChunker(), path)
    assert read == len(data)
    from pyfastcdc import FastCDC

    p = ChunkerParams()
    whole = FastCDC(p.avg_size, min_size=p.min_size, max_size=p.max_size, normalized_chunking=p.normalization)
    assert [c.length for c in whole.cut_buf(data)] == [x.length for x in pieces]


def test_zero_runs_become_holes_and_sparse_holes_are_not_read(tmp_path):
    dense = tmp_path / "dense"
    dense.write_bytes(os.urandom(MiB) + bytes(30 * MiB) + os.urandom(MiB))  # written zeros
    pieces, _ = _pieces(FileChunker(), dense)
    # CDC finds no cut in zeros: the run becomes max-size all-zero chunks, i.e. holes,
    # except where it shares a chunk with the data around it (at most a max chunk each side)
    assert sum(p.length for p in pieces if p.is_hole) >= 30 * MiB - 2 * 8 * MiB

    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.write(b"head" * 1000)
        f.seek(3 * 1024 * MiB)  # a 3 GiB hole: only its ends are data
        f.write(b"tail" * 1000)
    pieces, read = _pieces(FileChunker(), sparse)
    assert read < 4 * MiB
    assert pieces[0].data is not None and pieces[-1].data is not None
    assert sum(p.length for p in pieces if p.is_hole) > 3 * 1024 * MiB - 2 * MiB


def test_a_file_smaller_than_a_hole_that_counts_is_not_probed_for_holes(tmp_path, monkeypatch):
    """Holes under SPARSE_HOLE_MIN count as data, so a smaller file is one data extent,
    found without SEEK_DATA/SEEK_HOLE, and read by position (pread) in one call."""
    from shared.format import chunker
    from shared.format.constants import SPARSE_HOLE_MIN

    path = tmp_path / "small"
    with open(path, "wb") as f:  # a hole, then data: still one data extent
        f.seek(SPARSE_HOLE_MIN // 2)
        f.write(b"end")
    size = path.stat().st_size
    probes = []
    plain_lseek = os.lseek
    monkeypatch.setattr(chunker.os, "lseek", lambda *a: probes.append(a) or plain_lseek(*a))
    with open(path, "rb", buffering=0) as f:
        assert list(chunker.extents(f.fileno(), size)) == [(0, size, True)]
        pieces = list(FileChunker().pieces(f, size))
    assert not probes
    assert b"".join(p.data if p.data is not None else bytes(p.length) for p in pieces) == path.read_bytes()


def test_image_chunks_are_fixed_and_aligned(tmp_path):
    path = tmp_path / "disk.img"
    size = 10 * MiB + 4096 + 123
    with open(path, "wb") as f:
        f.truncate(size)
        for off in (0, 3 * MiB + 4096, 10 * MiB):
            f.seek(off)
            f.write(os.urandom(4096))
    pieces, read = _pieces(ImageChunker(), path)
    data = [p for p in pieces if p.data is not None]
    assert [p.offset for p in data] == [0, 3 * MiB, 10 * MiB]
    assert all(p.offset % IMAGE_CHUNK_SIZE == 0 for p in pieces)
    assert [p.length for p in data] == [MiB, MiB, 4096 + 123]
    assert read <= 3 * MiB  # the unallocated 7 MiB were not read


def test_small_fixed_chunks_read_in_blocks_match_the_file_and_skip_unallocated_space(tmp_path):
    # 32 KiB chunks are read a block (1 MiB) at a time: pieces must still be the file's
    # aligned chunks wherever extents start and end, and unallocated chunks never read.
    path = tmp_path / "erp.db"
    size = 5 * MiB + 20_000
    rng = random.Random(3)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, n in ((0, 40_000), (MiB - 4096, 8192), (2 * MiB + 100, 700_000), (5 * MiB, 20_000)):
            f.seek(off)
            f.write(rng.randbytes(n))
    chunker = ImageChunker(FixedChunking())
    assert chunker.chunking.chunk_size(size) == 32 * KiB
    pieces, read = _pieces(chunker, path)
    assert all(p.offset % (32 * KiB) == 0 for p in pieces)
    assert all(p.length == 32 * KiB for p in pieces if p.data is not None and p.offset + p.length < size)
    rebuilt = b"".join(p.data if p.data is not None else bytes(p.length) for p in pieces)
    assert rebuilt == path.read_bytes()
    allocated_chunks = {o // (32 * KiB) for o in range(0, size, 4096) if any(path.read_bytes()[o:o + 4096])}
    assert {p.offset // (32 * KiB) for p in pieces if p.data is not None} == allocated_chunks
    assert read <= 2 * MiB  # of 5 MiB: only chunks around the four written stretches


class _ShortReads:
    """A file that hands out at most 5,000 bytes per read, as block devices and network
    filesystems may."""

    def __init__(self, f):
        self.f = f

    def __getattr__(self, name):
        return getattr(self.f, name)

    def read(self, n=-1):
        return self.f.read(min(n, 5000) if n >= 0 else 5000)

    def readinto(self, view):
        return self.f.readinto(memoryview(view)[:5000])


@pytest.mark.parametrize("chunking", [FixedChunking(), IMAGE_CHUNK_SIZE], ids=["32-KiB-chunks", "1-MiB-chunks"])
def test_image_chunks_whole_despite_short_reads_and_up_to_where_the_file_ends(tmp_path, chunking):
    path = tmp_path / "disk.img"
    data = random.Random(5).randbytes(3 * MiB + 12_345)
    path.write_bytes(data)
    chunker = ImageChunker(chunking)
    with open(path, "rb", buffering=0) as f:
        pieces = list(chunker.pieces(_ShortReads(f), len(data)))
    assert b"".join(p.data for p in pieces) == data
    chunk = chunker.chunking.chunk_size(len(data))
    assert [p.length for p in pieces[:-1]] == [chunk] * (len(pieces) - 1)
    # A device that ends before its announced size: pieces up to where it ended.
    with open(path, "rb", buffering=0) as f:
        pieces = list(chunker.pieces(f, len(data) + 5 * MiB))
    assert b"".join(p.data for p in pieces) == data


def test_image_zero_blocks_that_are_allocated_become_holes(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(2 * MiB) + b"x" * MiB)
    pieces, _ = _pieces(ImageChunker(), path)
    assert [p.is_hole for p in pieces] == [True, True, False]
    assert [p.length for p in pieces] == [MiB, MiB, MiB]


def test_is_zero():
    assert is_zero(bytes(100))
    assert not is_zero(bytes(50) + b"\1" + bytes(49))
    assert not is_zero(b"")


def test_image_chunks_from_an_offset_are_the_rest_of_the_files_with_a_hole_across_it_cut(tmp_path):
    # Where an in-place helper stopped, the backup goes on (inplace_helper.py).
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.write(os.urandom(3 * MiB))
        f.seek(8 * MiB)  # a 5 MiB hole, then data
        f.write(os.urandom(2 * MiB + 5 * KiB))  # the last chunk short
    size = os.path.getsize(path)
    chunker = ImageChunker(FixedChunking(min_size=64 * KiB))
    with open(path, "rb", buffering=0) as f:
        whole = list(chunker.pieces(f, size))
        for start in (0, 64 * KiB, 3 * MiB, 5 * MiB, 8 * MiB, size - size % (64 * KiB)):
            rest = list(chunker.pieces(f, size, start=start))
            assert rest[0].offset == start
            assert all(a.offset + a.length == b.offset for a, b in zip(rest, rest[1:]))
            assert rest[-1].offset + rest[-1].length == size
            assert [(p.offset, p.data) for p in rest if p.data is not None] == \
                [(p.offset, p.data) for p in whole if p.data is not None and p.offset >= start]
        with pytest.raises(ValueError):
            next(chunker.pieces(f, size, start=1000))
