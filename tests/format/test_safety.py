"""Hostile manifests, damaged packs: refused or reported, never silently wrong."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from shared.format import (
    FULL,
    Archiver,
    Checker,
    PathNotFound,
    Restorer,
    RestoreIncomplete,
    UnsafePath,
)
from shared.format.constants import MiB
from shared.format.pack import BlobType
from shared.format.repository import pack_key
from shared.format.snapshot import DIR, FILE, SYMLINK, ChunkRef, Node, Snapshot, Tree

from .conftest import flip_byte


class Crafter:
    """Writes snapshots the way an attacker with the key (or a bug) could."""

    def __init__(self, repo):
        self.repo = repo
        self.saver = repo.saver()

    async def file(self, name: str, data: bytes) -> Node:
        blob_id, _ = await self.saver.save_async(BlobType.DATA, data)
        return Node(name=name, type=FILE, mode=0o644, size=len(data), content=[ChunkRef(blob_id, len(data))])

    async def dir(self, name: str, nodes: list[Node]) -> Node:
        tree_id, _ = await self.saver.save_async(BlobType.TREE, Tree(nodes).encode())
        return Node(name=name, type=DIR, mode=0o755, subtree=tree_id)

    @staticmethod
    def symlink(name: str, target: str) -> Node:
        return Node(name=name, type=SYMLINK, mode=0o777, target=target, size=len(target))

    async def snapshot(self, nodes: list[Node]) -> str:
        tree_id, _ = await self.saver.save_async(BlobType.TREE, Tree(nodes).encode())
        await self.saver.flush()
        snap = Snapshot(time=datetime.now(timezone.utc), host="crafted", kind=FULL, tree=tree_id, sources=[])
        return await self.repo.save_snapshot(snap)


def entries_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def arena(tmp_path) -> tuple[Path, Path]:
    """(box, target): the target lives inside box; nothing may appear in box beside it."""
    box = tmp_path / "box"
    (box / "target").mkdir(parents=True)
    return box, box / "target"


@pytest.mark.parametrize(
    "name",
    ["..", ".", "", "/etc/evil", "../evil", "sub/../../evil", "a/b", "nul\0byte"],
)
async def test_unsafe_names_are_refused_and_nothing_is_written_outside(repo, arena, name):
    box, target = arena
    c = Crafter(repo)
    evil = await c.dir(name, [await c.file("escaped.txt", b"gotcha")])
    sid = await c.snapshot([await c.file("fine.txt", b"ok"), evil])
    with pytest.raises(UnsafePath):
        await Restorer(repo).restore(sid, target)
    assert entries_under(box) == ["target"]  # refused before anything was created


async def test_an_unsafe_name_deep_inside_is_refused_without_escaping(repo, arena):
    box, target = arena
    c = Crafter(repo)
    deep = await c.dir("a", [await c.dir("b", [await c.file("../../../../escaped.txt", b"x")])])
    sid = await c.snapshot([deep])
    with pytest.raises(UnsafePath):
        await Restorer(repo).restore(sid, target)
    assert not any("escaped" in p for p in entries_under(box))
    assert not (box.parent / "escaped.txt").exists()


async def test_symlink_then_directory_of_the_same_name_is_refused(repo, arena, tmp_path):
    box, target = arena
    outside = tmp_path / "outside"
    outside.mkdir()
    c = Crafter(repo)
    sid = await c.snapshot(
        [c.symlink("esc", str(outside)), await c.dir("esc", [await c.file("pwned", b"written through a link")])]
    )
    with pytest.raises(UnsafePath):
        await Restorer(repo).restore(sid, target)
    assert os.listdir(outside) == []


async def test_a_symlink_left_in_the_target_is_never_followed(repo, arena, tmp_path):
    box, target = arena
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    c = Crafter(repo)
    first = await c.snapshot([c.symlink("esc", str(outside)), c.symlink("victim", str(outside / "victim"))])
    await Restorer(repo).restore(first, target)
    assert os.readlink(target / "esc") == str(outside)

    # a second restore into the same target tries to write through those links
    c2 = Crafter(repo)
    second = await c2.snapshot([await c2.dir("esc", [await c2.file("pwned", b"x")])])
    with pytest.raises(UnsafePath):
        await Restorer(repo).restore(second, target)
    third = await c2.snapshot([await c2.file("victim", b"replaced the link, not its target")])
    await Restorer(repo).restore(third, target)
    assert os.listdir(outside) == ["victim"]
    assert (outside / "victim").read_text() == "original"
    assert not (target / "victim").is_symlink()
    assert (target / "victim").read_bytes() == b"replaced the link, not its target"


async def test_sub_path_restore_does_not_walk_through_a_symlink(repo, arena, tmp_path):
    box, target = arena
    c = Crafter(repo)
    sid = await c.snapshot([c.symlink("link", str(tmp_path)), await c.dir("real", [])])
    with pytest.raises(PathNotFound):
        await Restorer(repo).restore(sid, target, path="link/anything")
    with pytest.raises(UnsafePath):
        await Restorer(repo).restore(sid, target, path="real/../link")


# --- damaged repositories ------------------------------------------------------------


async def backed_up_files(repo, tmp_path) -> tuple[str, dict[str, bytes]]:
    src = tmp_path / "src"
    src.mkdir()
    files = {name: os.urandom(3 * MiB) for name in ("a.bin", "b.bin", "c.bin")}
    files["small.txt"] = b"small and fine"
    for name, data in files.items():
        (src / name).write_bytes(data)
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    return result.snapshot_id, files


async def first_chunk_location(repo, snapshot_id: str, file_name: str):
    snap = await repo.load_snapshot(snapshot_id)
    src = (await repo.load_tree(snap.tree)).find("src")
    node = (await repo.load_tree(src.subtree)).find(file_name)
    return repo.index.lookup(node.content[0].id)


async def test_flipped_byte_in_a_pack_is_reported_by_check_and_restore_naming_the_file(repo, store, tmp_path):
    sid, files = await backed_up_files(repo, tmp_path)
    loc = await first_chunk_location(repo, sid, "a.bin")
    flip_byte(store.root / pack_key(loc.pack_id), loc.offset + 100)

    assert (await Checker(repo).check()).ok  # the structure is intact: sizes did not change
    result = await Checker(repo).check(read_data=True)
    assert not result.ok
    [problem] = [p for p in result.problems if p.pack_id == loc.pack_id]
    assert problem.kind == "corrupt-blob"
    assert any(p.endswith(":src/a.bin") for p in problem.paths)
    assert loc.pack_id in str(problem) and "src/a.bin" in str(problem)
    subset = await Checker(repo).check(subset_percent=100)
    assert not subset.ok

    with pytest.raises(RestoreIncomplete) as e:
        await Restorer(repo).restore(sid, tmp_path / "out")
    assert [path for path, _ in e.value.damaged] == ["src/a.bin"]
    assert "src/a.bin" in str(e.value) and loc.pack_id in str(e.value)
    # the error kept holds no frames (they would keep the whole range read alive)
    assert all(error.__traceback__ is None and error.__context__ is None for _, error in e.value.damaged)
    assert (tmp_path / "out" / "src" / "a.bin").stat().st_size == len(files["a.bin"])  # a hole where it was
    for name in ("b.bin", "c.bin", "small.txt"):  # everything else was restored
        assert (tmp_path / "out" / "src" / name).read_bytes() == files[name]


async def test_missing_pack_is_reported_by_check_and_restore_naming_the_file(repo, store, tmp_path):
    sid, files = await backed_up_files(repo, tmp_path)
    loc = await first_chunk_location(repo, sid, "b.bin")
    await store.delete(pack_key(loc.pack_id))

    result = await Checker(repo).check()
    [problem] = [p for p in result.problems if p.pack_id == loc.pack_id]
    assert problem.kind == "missing-pack"
    assert any(p.endswith(":src/b.bin") for p in problem.paths)

    with pytest.raises(RestoreIncomplete) as e:
        await Restorer(repo).restore(sid, tmp_path / "out")
    damaged = [path for path, _ in e.value.damaged]
    assert "src/b.bin" in damaged
    assert loc.pack_id in str(dict(e.value.damaged)["src/b.bin"])
    assert (tmp_path / "out" / "src" / "small.txt").read_bytes() == files["small.txt"]
