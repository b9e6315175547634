"""Packs written past the page cache (O_DIRECT), and the usual write where that is refused."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys

import pytest

from shared.format import uncached
from shared.format.store import LocalFolderStore
from shared.format.uncached import ALIGN, MIN_SIZE, SLICE, write_new_file

from .pagecache import cached_pages

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="O_DIRECT and mincore, as these tests use them, are Linux's")

# Below the threshold, at it, a byte past it (a padded last block cut back by ftruncate),
# whole slices, and several slices with an unaligned tail.
SIZES = [0, 1, ALIGN, MIN_SIZE - 1, MIN_SIZE, MIN_SIZE + 1, 2 * SLICE, 3 * SLICE + 12345]


@pytest.mark.parametrize("size", SIZES)
def test_the_file_holds_exactly_the_bytes(tmp_path, size):
    data = os.urandom(size)
    write_new_file(tmp_path / "f", data)
    assert (tmp_path / "f").read_bytes() == data


def test_takes_a_bytearray_and_a_memoryview(tmp_path):
    data = bytearray(os.urandom(MIN_SIZE + 100))
    write_new_file(tmp_path / "a", data)
    write_new_file(tmp_path / "b", memoryview(data)[50:])
    assert (tmp_path / "a").read_bytes() == data
    assert (tmp_path / "b").read_bytes() == data[50:]


def _on_a_local_disk(folder):
    if not uncached.suits(folder):
        pytest.skip(f"{folder} is on {uncached.filesystem_type(str(folder))}, not a local disk filesystem")


@linux_only
def test_a_big_file_does_not_go_through_the_page_cache(tmp_path):
    _on_a_local_disk(tmp_path)
    big, small = os.urandom(3 * SLICE + 12345), os.urandom(MIN_SIZE - 1)
    write_new_file(tmp_path / "big", big)
    write_new_file(tmp_path / "small", small)
    assert cached_pages(tmp_path / "big") == 0
    assert cached_pages(tmp_path / "small") > 0  # written the usual way, and still cached


@pytest.mark.parametrize("size", [10, MIN_SIZE + 1])
def test_never_overwrites(tmp_path, size):
    (tmp_path / "f").write_bytes(b"kept")
    with pytest.raises(FileExistsError):
        write_new_file(tmp_path / "f", os.urandom(size))
    assert (tmp_path / "f").read_bytes() == b"kept"


@contextlib.contextmanager
def _ramfs(where):
    """A filesystem that refuses O_DIRECT (ramfs has no direct I/O). Mounting needs root,
    which the CI machine has; elsewhere the test says why it did not run."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a ramfs needs root on Linux")
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(where)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a ramfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_writes_the_usual_way_where_o_direct_is_refused(tmp_path):
    with _ramfs(tmp_path / "ram disk") as ram:  # a space: /proc/self/mounts escapes it
        with pytest.raises(OSError):  # what the fallback is for
            os.close(os.open(ram / "probe", os.O_WRONLY | os.O_CREAT | uncached._O_DIRECT))
        os.unlink(ram / "probe")  # created all the same
        data = os.urandom(2 * SLICE + 5)
        write_new_file(ram / "f", data)  # tries O_DIRECT, is refused, writes the usual way
        assert (ram / "f").read_bytes() == data
        assert sorted(os.listdir(ram)) == ["f"]  # the refused attempt left nothing behind
        assert uncached.filesystem_type(str(ram / "f")) == "ramfs"
        assert not uncached.suits(ram / "not yet" / "made")  # the store does not even try


@linux_only
def test_only_local_disk_filesystems_are_written_past_the_cache(tmp_path):
    found = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    kind = uncached.filesystem_type(str(tmp_path))
    assert kind is not None and (kind in found or found in kind or found == "ext2/ext3")  # stat's names differ
    assert uncached.suits(tmp_path) == (kind in uncached.LOCAL_DISK_FILESYSTEMS)
    assert uncached.filesystem_type("/proc/self") == "proc"
    assert not uncached.suits("/proc")


@linux_only
def test_a_block_size_refused_past_the_first_write_falls_back_too(tmp_path, monkeypatch):
    import fcntl

    # A device whose logical block is above ALIGN takes the whole 1 MiB slices and refuses
    # the padded last one; there is no such device here, so its refusal is played.
    _on_a_local_disk(tmp_path)
    real, direct_writes = uncached._write_all, []

    def refuse_the_last_slice(fd, view):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & uncached._O_DIRECT and len(view) % SLICE:
            direct_writes.append(len(view))
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, view)

    monkeypatch.setattr(uncached, "_write_all", refuse_the_last_slice)
    data = os.urandom(3 * SLICE + 12345)
    write_new_file(tmp_path / "f", data)
    assert direct_writes  # the direct attempt got as far as the last slice
    assert (tmp_path / "f").read_bytes() == data
    assert os.listdir(tmp_path) == ["f"]


async def test_the_folder_store_puts_a_pack_past_the_cache(tmp_path):
    store = LocalFolderStore(tmp_path / "objects")
    pack = os.urandom(16 * 1024 * 1024 + 333)
    await store.put("data/ab/abcdef", pack)
    assert await store.get("data/ab/abcdef") == pack
    assert await store.get("data/ab/abcdef", 16 * 1024 * 1024, 333) == pack[-333:]
    assert os.listdir(tmp_path / "objects" / "data" / "ab") == ["abcdef"]  # no temporary file left


@linux_only
def test_writes_one_after_another_share_one_aligned_buffer(tmp_path, monkeypatch):
    _on_a_local_disk(tmp_path)
    monkeypatch.setattr(uncached, "_spare", [])
    for i in range(5):
        write_new_file(tmp_path / f"f{i}", os.urandom(MIN_SIZE + i))
    assert len(uncached._spare) == 1  # not one per write, nor one per thread


@linux_only
async def test_the_folder_store_writes_packs_past_the_cache_on_a_local_disk(tmp_path):
    _on_a_local_disk(tmp_path)
    store = LocalFolderStore(tmp_path / "objects")
    await store.put("data/ab/abcdef", os.urandom(4 * SLICE + 1))
    await store.put("index/small", os.urandom(1000))
    assert cached_pages(tmp_path / "objects" / "data" / "ab" / "abcdef") == 0
    assert cached_pages(tmp_path / "objects" / "index" / "small") == 1
