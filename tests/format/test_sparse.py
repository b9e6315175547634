"""Which parts of a chunk are written on restore (sparse.py), and files whose written
part ends before their size."""

from __future__ import annotations

import os
import random

import pytest

from shared.format import FULL, Archiver, Restorer, Source
from shared.format import restorer as restorer_module
from shared.format.restorer import _AtFs, _Runs, _write_sparse
from shared.format.sparse import BLOCK, data_runs, skip

rng = random.Random(5)
DATA = rng.randbytes(3 * BLOCK)
ZEROS = bytes(2 * BLOCK)


@pytest.mark.parametrize("data, runs", [
    (b"", []),
    (DATA, [(0, 3 * BLOCK)]),
    (ZEROS, []),
    (DATA + ZEROS + DATA, [(0, 3 * BLOCK), (5 * BLOCK, 8 * BLOCK)]),
    (ZEROS + DATA + ZEROS, [(2 * BLOCK, 5 * BLOCK)]),
    # zeros not aligned to a block, or shorter than one, are data
    (DATA[:100] + bytes(BLOCK) + DATA[:BLOCK - 100], [(0, 2 * BLOCK)]),
    (bytes(300), []),
    (bytes(200), [(0, 200)]),  # shorter than the run searched for first: written, harmlessly
    # a last, partial block of zeros is skipped like a whole one
    (DATA + bytes(1000), [(0, 3 * BLOCK)]),
    (DATA + b"x" + bytes(BLOCK - 1), [(0, 4 * BLOCK)]),
])
def test_data_runs_leave_out_exactly_the_aligned_zero_blocks(data, runs):
    assert data_runs(data) == runs
    # what is left out is zeros, and everything else is in a run
    kept = bytearray(len(data))
    for start, end in runs:
        kept[start:end] = data[start:end]
    assert bytes(kept) == data


async def test_a_file_ending_in_zero_blocks_restores_at_its_size_and_sparse(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    # one chunk (smaller than the chunker's minimum) whose last blocks are zeros, and a
    # file whose chunk is data to its last byte (no cut needed)
    (src / "tail").write_bytes(DATA + ZEROS)
    (src / "full").write_bytes(DATA)
    backup = await Archiver(repo).backup([Source(str(src))], kind=FULL)
    await Restorer(repo).restore(backup.snapshot_id, tmp_path / "out")
    tail = tmp_path / "out" / "src" / "tail"
    assert tail.read_bytes() == DATA + ZEROS
    assert (tmp_path / "out" / "src" / "full").read_bytes() == DATA
    assert os.stat(tail).st_blocks * 512 <= len(DATA) + BLOCK  # the zero tail is a hole


class _Recorder(_AtFs):
    def __init__(self):
        self.writes = []

    def write(self, handle, buffers, offset):
        self.writes.append((offset, [bytes(b) for b in buffers]))
        super().write(handle, buffers, offset)


def test_consecutive_chunks_go_out_in_one_write_per_stretch_of_data(tmp_path):
    fs = _Recorder()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        # data, then a chunk that starts with two zero blocks, then data again
        end = _write_sparse(fs, fd, [DATA, ZEROS + DATA[:BLOCK], DATA], 0)
    finally:
        os.close(fd)
    assert fs.writes == [(0, [DATA]), (5 * BLOCK, [DATA[:BLOCK], DATA])]
    assert end == 9 * BLOCK
    assert (tmp_path / "f").read_bytes() == DATA + ZEROS + DATA[:BLOCK] + DATA


def test_a_short_write_goes_on_where_it_stopped():
    buffers = [memoryview(b"abc"), memoryview(b"de"), memoryview(b"fgh")]
    assert [bytes(b) for b in skip(buffers, 0)] == [b"abc", b"de", b"fgh"]
    assert [bytes(b) for b in skip(buffers, 4)] == [b"e", b"fgh"]
    assert [bytes(b) for b in skip(buffers, 5)] == [b"fgh"]
    assert skip(buffers, 8) == []


def test_a_worker_joins_only_consecutive_chunks_of_one_file_and_holds_at_most_run_bytes(monkeypatch):
    puts = []

    class File:  # what _Runs needs of a restored file
        def __init__(self, name):
            self.name = name

        def put(self, offset, chunks, error=None):
            puts.append((self.name, offset, [len(c) for c in chunks]))

    a, b = File("a"), File("b")
    runs = _Runs()
    runs.add(a, 0, b"x" * 10)
    runs.add(a, 10, b"y" * 5)  # joins
    runs.add(b, 0, b"z" * 3)  # another file: its own run
    runs.add(a, 30, b"w" * 2)  # not where a's run ends: a's run goes out
    runs.add(a, 15, b"v" * 1)  # nor here
    runs.flush()
    assert puts == [("a", 0, [10, 5]), ("a", 30, [2]), ("b", 0, [3]), ("a", 15, [1])]

    puts.clear()
    monkeypatch.setattr(restorer_module, "RUN_BYTES", 8)
    runs.add(a, 0, b"x" * 5)
    runs.add(a, 5, b"y" * 5)  # 10 bytes held: written at once
    assert puts == [("a", 0, [5, 5])] and runs.held == 0
