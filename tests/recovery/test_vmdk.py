"""Our stream-optimized VMDK writer, read back by an independent reader: qemu-img checks
the image, says it is streamOptimized and compares it with the raw disk byte for byte.
A walk over the markers checks what qemu-img does not read (it seeks to the footer): the
sequential stream EC2 reads, every grain before the table that points to it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from services.recovery import vmdk
from services.recovery.convert import ConversionFailed, convert

MiB = 1 << 20
GRAIN = vmdk.GRAIN
TABLE_SPAN = vmdk.GRAIN * vmdk.GTES_PER_GT  # 32 MiB of disk per grain table


def text(n: int, seed: int) -> bytes:
    """Log-like lines: deflate shrinks them to about a fifth."""
    rng = random.Random(seed)
    words = "invoice order shipped total ledger backup server north 2024-05-06 INFO".split()
    pool = " ".join(rng.choice(words) for _ in range(20_000)).encode()
    pieces, size = [], 0
    while size < n:
        start = rng.randrange(len(pool) // 2)
        pieces.append(pool[start:start + rng.randrange(1000, len(pool) // 2)])
        size += len(pieces[-1])
    return b"".join(pieces)[:n]


def make_raw(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> Path:
    """A sparse raw disk of ``size`` bytes with ``pieces`` written at their offsets."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
    return path


def qemu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True)


def assert_same_disk(raw: Path, image: Path) -> None:
    check = qemu("check", "-f", "vmdk", str(image))
    assert check.returncode == 0, check.stdout + check.stderr
    compare = qemu("compare", "-f", "raw", "-F", "vmdk", str(raw), str(image))
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "Images are identical" in compare.stdout
    info = json.loads(qemu("info", "--output=json", "-f", "vmdk", str(image)).stdout)
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert info["format-specific"]["data"]["extents"][0]["compressed"] is True
    assert info["virtual-size"] == -(-raw.stat().st_size // 512) * 512


def markers(image: Path) -> list[tuple[str, int]]:
    """The stream's markers in order: ("grain", lba) or ("gt"|"gd"|"footer"|"eos", sector)."""
    data = image.read_bytes()
    header = struct.unpack_from("<IIIQQQQIQQQ", data)
    assert header[0] == vmdk.MAGIC and header[9] == vmdk.GD_AT_END
    offset = header[10] * 512  # overHead: where the grains start
    found = []
    names = {0: "eos", 1: "gt", 2: "gd", 3: "footer"}
    while offset < len(data):
        value, size = struct.unpack_from("<QI", data, offset)
        if size:  # a grain marker: its LBA and compressed size, then the data
            found.append(("grain", value))
            offset += -(-(12 + size) // 512) * 512
        else:
            kind = struct.unpack_from("<I", data, offset + 12)[0]
            found.append((names[kind], offset // 512))
            offset += 512 + value * 512
    assert offset == len(data)
    return found


CASES = {
    # Data at the start, in the middle past a table's span, and at the very end; a size
    # that is no multiple of a grain, so the last grain is short.
    "holes and a short last grain": (
        3 * TABLE_SPAN + 5 * GRAIN + 1536,
        [(0, os.urandom(3 * GRAIN)), (TABLE_SPAN + 7 * GRAIN + 100, text(2 * GRAIN, 1)),
         (3 * TABLE_SPAN + 5 * GRAIN, os.urandom(1536))]),
    # Random next to compressible next to written zeros (data, not a hole, yet not stored).
    "random, text and written zeros": (
        6 * MiB,
        [(0, os.urandom(MiB)), (MiB, text(2 * MiB, 2)), (3 * MiB, bytes(MiB)),
         (4 * MiB + 4096, os.urandom(4096) + text(60_000, 3))]),
    "no holes at all": (2 * MiB + 512, [(0, os.urandom(MiB) + text(MiB + 512, 4))]),
    "nothing but holes": (5 * TABLE_SPAN, []),
    "a size that is no multiple of a sector": (GRAIN + 1000, [(0, os.urandom(GRAIN + 1000))]),
}


@pytest.mark.parametrize("case", CASES)
def test_the_image_holds_the_same_disk_and_is_a_stream(case, tmp_path):
    size, pieces = CASES[case]
    raw = make_raw(tmp_path / "disk.raw", size, pieces)
    image = tmp_path / "disk.vmdk"
    seen = []
    written = vmdk.write_stream_optimized(raw, image, progress=lambda d, t: seen.append((d, t)))
    assert_same_disk(raw, image)
    assert written.image_bytes == image.stat().st_size

    stream = markers(image)
    kinds = [kind for kind, _ in stream]
    tables = -(-size // TABLE_SPAN)
    assert kinds.count("gt") == tables
    assert kinds[-3:] == ["gd", "footer", "eos"]
    grains = [lba for kind, lba in stream if kind == "grain"]
    assert grains == sorted(grains) and len(grains) == written.grains
    # Every grain comes before the table that covers it, and after the one before.
    table = 0
    for kind, value in stream:
        if kind == "gt":
            table += 1
        elif kind == "grain":
            assert value * 512 // TABLE_SPAN == table
    # Only grains with data are written: holes are skipped, zeros too.
    content = raw.read_bytes()
    with_data = {i // GRAIN for i in range(0, size, GRAIN) if any(content[i:i + GRAIN])}
    assert {lba * 512 // GRAIN for lba in grains} == with_data
    if pieces:
        assert seen and seen[-1][0] == seen[-1][1] > 0


def test_incompressible_grains_are_stored_and_text_is_compressed(tmp_path):
    raw = make_raw(tmp_path / "disk.raw", 4 * MiB, [(0, os.urandom(MiB)), (MiB, text(MiB, 5))])
    image = tmp_path / "disk.vmdk"
    written = vmdk.write_stream_optimized(raw, image)
    assert_same_disk(raw, image)
    assert written.grains == 32 and written.stored_grains == 16
    # The text shrank: the image is well under the random MiB plus the text MiB.
    assert written.image_bytes < MiB + MiB // 2


def test_a_stopped_writer_leaves_no_image(tmp_path):
    raw = make_raw(tmp_path / "disk.raw", 8 * MiB, [(0, text(8 * MiB, 6))])
    image = tmp_path / "disk.vmdk"
    stop = threading.Event()
    with pytest.raises(vmdk.Cancelled):
        vmdk.write_stream_optimized(raw, image, progress=lambda d, t: stop.set(), stop=stop)
    assert not image.exists()


@pytest.mark.parametrize("make,reason", [
    (lambda p: p, "cannot open the raw disk disk.raw: No such file or directory"),
    (lambda p: make_raw(p, 0, []), "the raw disk disk.raw is empty"),
    (lambda p: (p.mkdir(), p)[1], "the raw disk disk.raw is not a file"),
])
async def test_an_unreadable_disk_fails_with_a_reason(make, reason, tmp_path):
    source = make(tmp_path / "disk.raw")
    image = tmp_path / "disk.vmdk"

    async def progress(done, total):
        pass

    with pytest.raises(ConversionFailed) as failed:
        await convert("qemu-img", source, image, "vmdk", progress)
    assert str(failed.value) == f"could not write the disk as a VMDK: {reason}"
    assert not image.exists()


async def test_convert_reports_progress_up_to_100(tmp_path):
    raw = make_raw(tmp_path / "disk.raw", 64 * MiB, [(0, os.urandom(8 * MiB)),
                                                     (40 * MiB, text(8 * MiB, 7))])
    image = tmp_path / "disk.vmdk"
    reported = []

    async def progress(done, total):
        reported.append((done, total))

    await convert("definitely-not-qemu-img", raw, image, "vmdk", progress)  # not needed
    assert_same_disk(raw, image)
    assert reported[-1] == (100, 100)
    assert [d for d, _ in reported] == sorted(d for d, _ in reported)


async def test_a_cancelled_conversion_leaves_no_image(tmp_path):
    raw = make_raw(tmp_path / "disk.raw", 64 * MiB, [(0, text(32 * MiB, 8))])
    image = tmp_path / "disk.vmdk"
    reported = asyncio.Event()

    async def progress(done, total):
        reported.set()
        await asyncio.Event().wait()  # the task is cancelled while it reports

    task = asyncio.create_task(convert("qemu-img", raw, image, "vmdk", progress))
    await reported.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not image.exists()
