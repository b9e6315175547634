"""Image sources: fixed aligned chunks, holes, byte-identical restore."""

from __future__ import annotations

import hashlib
import os
import random

from shared.format import FULL, Archiver, Restorer, Source
from shared.format.constants import MiB
from shared.format.snapshot import IMAGE

SIZE = 256 * MiB


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def make_image(path, rng: random.Random) -> None:
    """A sparse raw disk: scattered data, a text region, allocated zeros, a hole at the end."""
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for _ in range(30):
            f.seek(rng.randrange(0, SIZE - 65536) // 4096 * 4096)
            f.write(rng.randbytes(65536))
        f.seek(100 * MiB)
        f.write(b"".join(b"log line %d\n" % i for i in range(400_000)))
        f.seek(150 * MiB)
        f.write(bytes(3 * MiB))  # allocated zeros: become holes too


async def test_image_restores_byte_identical_with_holes_and_scattered_writes_cost_few_chunks(repo, tmp_path):
    rng = random.Random(9)
    image = tmp_path / "disk.raw"
    make_image(image, rng)
    source = Source(str(image), IMAGE)

    full = await Archiver(repo).backup([source], kind=FULL)
    assert full.stats.images == 1 and full.stats.bytes == SIZE
    assert full.stats.bytes_read < 64 * MiB  # only chunks with allocated blocks were read
    assert full.stats.hole_bytes > 200 * MiB

    await Restorer(repo).restore(full.snapshot_id, tmp_path / "out1")
    restored = tmp_path / "out1" / "disk.raw"
    assert sha256(restored) == sha256(image)
    assert os.stat(restored).st_blocks <= os.stat(image).st_blocks + 64  # holes stayed holes

    # unchanged image: an incremental reuses it without reading
    same = await Archiver(repo).backup([source])
    assert same.stats.bytes_read == 0 and same.stats.new_chunks == 0

    # ten scattered 4 KiB writes, as a filesystem inside the image would do
    with open(image, "r+b") as f:
        for mib in rng.sample(range(SIZE // MiB), 10):
            f.seek(mib * MiB + rng.randrange(0, 256) * 4096)
            f.write(rng.randbytes(4096))
    incr = await Archiver(repo).backup([source])
    assert incr.snapshot.kind == "incremental"
    assert 1 <= incr.stats.new_chunks <= 10
    assert incr.stats.stored_bytes <= 10 * MiB + 64 * 1024

    await Restorer(repo).restore(incr.snapshot_id, tmp_path / "out2")
    assert sha256(tmp_path / "out2" / "disk.raw") == sha256(image)
