"""Full backup, changes, incremental backup, and both snapshots restored exactly."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

from shared.format import FULL, INCREMENTAL, Archiver, Checker, Restorer
from shared.format.constants import GiB, MiB
from shared.format.snapshot import Tree

from .conftest import describe, reopen

LONG_NAME = "é" * 127 + "x"  # 255 bytes in UTF-8, the ext4 limit
RAW_NAME = b"raw-name-\xff\xfe.bin"  # not UTF-8: must survive byte for byte
EXCLUDES = ["*.tmp", "build", "docs/private"]
OLD_NS = 1_600_000_000_123_456_789


def build_tree(src: Path) -> set[str]:
    """The hard cases. Returns the relative paths a backup must leave out."""
    rng = random.Random(42)
    src.mkdir()
    (src / "empty dir").mkdir()
    (src / "docs").mkdir()
    (src / "docs" / "readme.txt").write_text("ReClo test tree\n" * 200)
    (src / "docs" / "日本語 ファイル.txt").write_text("こんにちは\n" * 50)
    (src / "docs" / "emoji 😀.md").write_text("# 😀\n")
    (src / "name with  spaces .txt").write_bytes(b"spaces")
    (src / LONG_NAME).write_bytes(b"long name")
    with open(os.path.join(os.fsencode(src), RAW_NAME), "wb") as f:
        f.write(b"raw name")
    (src / "empty.txt").write_bytes(b"")
    deep = src / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("deep\n")

    text = b"".join(b"line %d: the quick brown fox %x\n" % (i, rng.getrandbits(32)) for i in range(200_000))
    (src / "big.bin").write_bytes(rng.randbytes(48 * MiB) + (text * 3)[: 16 * MiB])  # 64 MiB
    for i in range(20):
        (src / "docs" / f"small-{i}.dat").write_bytes(rng.randbytes(rng.randrange(1, 200_000)))

    with open(src / "sparse.img", "wb") as f:  # 3 GiB, nearly all hole
        f.write(rng.randbytes(100_000))
        f.seek(GiB + 12345)
        f.write(b"middle" * 1000)
        f.truncate(3 * GiB)
        f.seek(3 * GiB - 5000)
        f.write(b"end" * 1000)

    os.symlink("docs/readme.txt", src / "link-relative")
    os.symlink("no/such/file", src / "link-dangling")
    os.symlink("/etc/hostname", src / "link-outside-absolute")
    os.symlink("../../../etc/passwd", src / "link-outside-relative")

    (src / "secret.txt").write_text("only me")
    os.chmod(src / "secret.txt", 0o600)
    (src / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "script.sh", 0o755)
    (src / "owned.txt").write_text("someone else's")
    if os.geteuid() == 0:  # only root can give files away (and restore their owner)
        os.chown(src / "owned.txt", 1234, 4321)
    (src / "readonly dir").mkdir()
    (src / "readonly dir" / "inside.txt").write_text("still restorable")
    os.chmod(src / "readonly dir", 0o555)
    (src / "setgid dir").mkdir()
    os.chmod(src / "setgid dir", 0o2775)

    # what must be left out: special files and excludes
    os.mkfifo(src / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    sock.close()
    (src / "cache.tmp").write_text("excluded by name")
    (src / "build").mkdir()
    (src / "build" / "out.o").write_text("excluded folder")
    (src / "docs" / "private").mkdir()
    (src / "docs" / "private" / "diary.txt").write_text("excluded by path")

    os.utime(src / "docs" / "readme.txt", ns=(OLD_NS, OLD_NS))
    os.utime(src / "link-dangling", ns=(OLD_NS, OLD_NS + 1), follow_symlinks=False)
    os.utime(src / "empty dir", ns=(OLD_NS, OLD_NS + 2))
    return {"pipe", "sock", "cache.tmp", "build", "build/out.o", "docs/private", "docs/private/diary.txt"}


def expected(src: Path, left_out: set[str]) -> dict[str, tuple]:
    return {k: v for k, v in describe(src).items() if k not in left_out}


def change_tree(src: Path) -> set[str]:
    """Edit some files; returns the paths an incremental must read again."""
    with open(src / "docs" / "readme.txt", "a") as f:
        f.write("one more line\n")
    with open(src / "big.bin", "r+b") as f:  # rewrite 1 MiB in the middle, same size
        f.seek(20 * MiB)
        f.write(os.urandom(MiB))
    (src / "docs" / "small-3.dat").unlink()
    (src / "docs" / "new file.txt").write_text("added after the full backup")
    # same content and mtime, but chmod changes ctime: must be read again
    st = os.stat(src / "script.sh")
    os.chmod(src / "script.sh", 0o750)
    os.utime(src / "script.sh", ns=(st.st_atime_ns, st.st_mtime_ns))
    return {"docs/readme.txt", "big.bin", "docs/new file.txt", "script.sh"}


async def test_full_change_incremental_restore_both(repo, store, tmp_path):
    src = tmp_path / "src"
    left_out = build_tree(src)
    state1 = expected(src, left_out)
    updates = []
    archiver = Archiver(repo, host="fileserver", excludes=EXCLUDES, progress=updates.append, progress_interval=0.05)

    full = await archiver.backup([str(src)], kind=FULL)
    assert full.snapshot.kind == FULL and full.snapshot.parent is None
    assert any("pipe" in w and "fifo" in w for w in full.warnings)
    assert any("sock" in w and "socket" in w for w in full.warnings)
    s = full.stats
    assert s.files == sum(1 for v in state1.values() if v[0] == "file")
    assert s.symlinks == 4
    assert s.hole_bytes > 3 * GiB - 10 * MiB
    assert s.bytes_read < 100 * MiB  # the sparse file's holes were not read
    assert s.stored_bytes < 85 * MiB  # text compressed, holes not stored
    last = updates[-1]
    assert last.totals_final and last.files_done == last.files_total == s.files
    assert last.bytes_done == last.bytes_total == s.bytes

    changed = change_tree(src)
    state2 = expected(src, left_out)
    repo = await reopen(store)  # the next day, a new process
    incr = await Archiver(repo, host="fileserver", excludes=EXCLUDES).backup([str(src)])
    assert incr.snapshot.kind == INCREMENTAL and incr.snapshot.parent == full.snapshot_id
    # only the changed files were read
    assert incr.stats.bytes_read == sum(os.path.getsize(src / p) for p in changed)
    assert incr.stats.new_chunks <= 8  # the rewritten MiB of big.bin, readme, the new file
    assert incr.stats.new_bytes < 12 * MiB

    restored = []
    await Restorer(repo, progress=restored.append, progress_interval=0.001).restore(full.snapshot_id, tmp_path / "out1")
    # The whole snapshot's totals are known from the start; the holes count as done.
    assert all(p.totals_final and (p.files_total, p.bytes_total) == (s.files, s.bytes) for p in restored)
    assert [p.bytes_done for p in restored] == sorted(p.bytes_done for p in restored)
    assert (restored[-1].files_done, restored[-1].bytes_done) == (s.files, s.bytes)
    restorer = Restorer(repo)
    await restorer.restore(incr.snapshot_id, tmp_path / "out2")
    assert describe(tmp_path / "out1" / "src") == state1
    assert describe(tmp_path / "out2" / "src") == state2
    assert describe(tmp_path / "out1" / "src") != state2

    for out in ("out1", "out2"):
        sparse = os.stat(tmp_path / out / "src" / "sparse.img")
        assert sparse.st_size == 3 * GiB and sparse.st_blocks * 512 < 8 * MiB  # holes stayed holes
        root_src, root_out = os.stat(src), os.stat(tmp_path / out / "src")
        assert (root_out.st_mode, root_out.st_uid) == (root_src.st_mode, root_src.st_uid)

    check = await Checker(repo).check(read_data=True)
    assert check.ok, [str(p) for p in check.problems]
    assert check.snapshots == 2 and check.packs_read == check.packs


async def test_restore_of_a_sub_path(repo, tmp_path):
    src = tmp_path / "src"
    (src / "projects" / "alpha").mkdir(parents=True)
    (src / "projects" / "alpha" / "plan.txt").write_text("plan")
    (src / "other.txt").write_text("other")
    result = await Archiver(repo).backup([str(src)], kind=FULL)

    updates = []
    restorer = Restorer(repo, progress=updates.append)
    await restorer.restore(result.snapshot_id, tmp_path / "one-dir", path="src/projects")
    assert (tmp_path / "one-dir" / "projects" / "alpha" / "plan.txt").read_text() == "plan"
    # A part of the snapshot: its totals are what was walked, not the snapshot's.
    last = updates[-1]
    assert last.totals_final and (last.files_done, last.files_total, last.bytes_done, last.bytes_total) == (1, 1, 4, 4)
    assert not (tmp_path / "one-dir" / "other.txt").exists()
    await restorer.restore(result.snapshot_id, tmp_path / "one-file", path="/src/projects/alpha/plan.txt")
    assert os.listdir(tmp_path / "one-file") == ["plan.txt"]


async def test_several_sources_and_a_weekly_full_stores_nothing_new(repo, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name / "data").mkdir(parents=True)
        (tmp_path / name / "data" / "f.bin").write_bytes(os.urandom(3 * MiB))
    sources = [str(tmp_path / "a" / "data"), str(tmp_path / "b" / "data")]
    first = await Archiver(repo).backup(sources, kind=FULL)
    assert [s.name for s in first.snapshot.sources] == ["data", "data-2"]
    again = await Archiver(repo).backup(sources, kind=FULL)  # reads everything, stores nothing
    assert again.stats.bytes_read == 6 * MiB and again.stats.new_chunks == 0 and again.stats.stored_bytes == 0
    await Restorer(repo).restore(again.snapshot_id, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["data", "data-2"]
    assert (tmp_path / "out" / "data-2" / "f.bin").read_bytes() == (tmp_path / "b" / "data" / "f.bin").read_bytes()


async def test_files_that_change_or_vanish_during_the_backup_are_warnings_not_failures(repo, tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    growing = src / "a" / "growing.log"
    growing.write_bytes(os.urandom(48 * MiB))
    # Small files are read after the big files of their folder (in batches, once the
    # folder's entries are all started), so these two are read after the log.
    (src / "a" / "z-vanishes.txt").write_text("here at the scan, gone at the read")
    (src / "a" / "z-stays.txt").write_text("stays")

    def meanwhile(progress):
        # Runs while the backup reads a/growing.log (after its folder was listed):
        # another program appends to the log and deletes a file not read yet.
        if progress.bytes_done > 0:
            with open(growing, "ab") as f:
                f.write(b"more\n")
            (src / "a" / "z-vanishes.txt").unlink(missing_ok=True)

    result = await Archiver(repo, progress=meanwhile, progress_interval=0.002, workers=1).backup(
        [str(src)], kind=FULL
    )
    assert any("growing.log" in w and "changed while it was read" in w for w in result.warnings)
    assert any("z-vanishes.txt" in w and "vanished" in w for w in result.warnings)
    assert result.stats.warnings == len(result.warnings) == 2
    await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert (tmp_path / "out" / "src" / "a" / "z-stays.txt").read_text() == "stays"
    assert not (tmp_path / "out" / "src" / "a" / "z-vanishes.txt").exists()
    restored = (tmp_path / "out" / "src" / "a" / "growing.log").read_bytes()
    assert restored[: 48 * MiB] == growing.read_bytes()[: 48 * MiB]


async def test_an_incremental_encodes_only_the_trees_on_the_path_of_a_change(repo, tmp_path, monkeypatch):
    """Unchanged directories keep their parent's tree (nothing encoded or hashed again),
    which is what keeps an incremental of a huge, quiet tree fast; a change deep down
    still produces new trees all the way up, and restores."""
    src = tmp_path / "src"
    for top in ("a", "b"):
        for sub in ("x", "y"):
            (src / top / sub).mkdir(parents=True)
            for i in range(3):
                (src / top / sub / f"f{i}.txt").write_text(f"{top}/{sub}/{i}")
    full = await Archiver(repo, host="h").backup([str(src)], kind=FULL)

    encoded = []
    real_encode = Tree.encode
    monkeypatch.setattr(Tree, "encode", lambda tree: encoded.append(tree) or real_encode(tree))
    quiet = await Archiver(repo, host="h").backup([str(src)])
    assert quiet.snapshot.kind == INCREMENTAL and quiet.snapshot.tree == full.snapshot.tree
    assert len(encoded) == 1  # the snapshot's root only: every directory kept its tree

    encoded.clear()
    (src / "a" / "y" / "f1.txt").write_text("changed")
    changed = await Archiver(repo, host="h").backup([str(src)])
    # the root, src, a and a/y; b, b/x, b/y and a/x kept theirs
    assert len(encoded) == 4 and changed.snapshot.tree != full.snapshot.tree
    await Restorer(repo).restore(changed.snapshot_id, tmp_path / "out")
    assert (tmp_path / "out" / "src" / "a" / "y" / "f1.txt").read_text() == "changed"
    assert (tmp_path / "out" / "src" / "b" / "x" / "f2.txt").read_text() == "b/x/2"


async def test_many_small_files_read_in_batches_come_back_whole_and_in_order(repo, tmp_path):
    """Small files are read several to a worker task (archiver._SmallFiles): a folder
    mixing them with bigger files and subfolders, over several batches, round-trips, and
    an incremental reads only the changed ones among them."""
    from shared.format import archiver

    rng = random.Random(5)
    src = tmp_path / "src"
    src.mkdir()
    sizes = [0, 1, archiver._SMALL_FILE_SIZE, archiver._SMALL_FILE_SIZE + 1, 3 * MiB]
    for i in range(3 * archiver._SMALL_BATCH_FILES + 7):
        size = sizes[i % len(sizes)] if i % 9 == 0 else rng.randrange(0, 40_000)
        (src / f"f{i:04}").write_bytes(rng.randbytes(size))
        if i % 50 == 0:
            (src / f"f{i:04}-sub").mkdir()
            (src / f"f{i:04}-sub" / "inner").write_bytes(rng.randbytes(100))
    first = await Archiver(repo, workers=2).backup([str(src)], kind=FULL)
    assert first.warnings == [] and first.stats.files == 3 * archiver._SMALL_BATCH_FILES + 7 + 4
    root = await repo.load_tree(first.snapshot.tree)
    names = [n.name for n in (await repo.load_tree(root.nodes[0].subtree)).nodes]
    assert names == sorted(names) and len(names) == 3 * archiver._SMALL_BATCH_FILES + 7 + 4
    await Restorer(repo).restore(first.snapshot_id, tmp_path / "out")
    assert describe(tmp_path / "out" / "src") == describe(src)

    for i in (3, 100, 150):
        (src / f"f{i:04}").write_bytes(b"changed %d" % i)
    second = await Archiver(repo, workers=2).backup([str(src)], kind=INCREMENTAL,
                                                    parent=first.snapshot_id)
    assert second.stats.bytes_read == sum(len(b"changed %d" % i) for i in (3, 100, 150))
    await Restorer(repo).restore(second.snapshot_id, tmp_path / "out2")
    assert describe(tmp_path / "out2" / "src") == describe(src)


async def test_a_failing_progress_callback_stops_the_reports_not_the_backup_or_the_restore(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}.bin").write_bytes(os.urandom(64 * 1024))
    empty = src / "empty.txt"
    empty.write_bytes(b"")
    calls = []

    def broken(progress):
        calls.append(progress)
        raise RuntimeError("the terminal went away")

    result = await Archiver(repo, progress=broken, progress_interval=0.0001).backup([str(src)], kind=FULL)
    assert len(calls) == 1  # not called again after it failed, not even for the last report
    await Restorer(repo, progress=broken, progress_interval=0.0001).restore(result.snapshot_id, tmp_path / "out")
    assert describe(tmp_path / "out" / "src") == describe(src)
    assert len(calls) == 2
