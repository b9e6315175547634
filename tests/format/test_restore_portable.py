"""The restorer's path-based way (Windows, and wherever `*at` calls are missing), forced on
Linux: every round-trip, image and safety test of the descriptor-relative way runs again
here, plus what only the path-based way has to check itself."""

from __future__ import annotations

import os

import pytest

from shared.format import FULL, Archiver, Restorer, UnsafePath
from shared.format import restorer as restorer_module
from shared.format.restorer import _PathFs, check_name
from shared.format.snapshot import FILE, Node

# The same tests, collected again in this module (and so run under its autouse fixture).
from .test_image import test_image_restores_byte_identical_with_holes_and_scattered_writes_cost_few_chunks  # noqa: F401
from .test_sparse import test_a_file_ending_in_zero_blocks_restores_at_its_size_and_sparse  # noqa: F401
from .test_roundtrip import (  # noqa: F401
    test_full_change_incremental_restore_both,
    test_restore_of_a_sub_path,
)
from .test_safety import (  # noqa: F401
    arena,
    test_a_symlink_left_in_the_target_is_never_followed,
    test_an_unsafe_name_deep_inside_is_refused_without_escaping,
    test_flipped_byte_in_a_pack_is_reported_by_check_and_restore_naming_the_file,
    test_missing_pack_is_reported_by_check_and_restore_naming_the_file,
    test_sub_path_restore_does_not_walk_through_a_symlink,
    test_symlink_then_directory_of_the_same_name_is_refused,
    test_unsafe_names_are_refused_and_nothing_is_written_outside,
)


@pytest.fixture(autouse=True)
def portable(monkeypatch):
    monkeypatch.setattr(restorer_module, "PORTABLE_DEFAULT", True)


def test_the_switch_selects_the_path_based_way(repo):
    assert Restorer(repo).portable is True
    assert Restorer(repo, portable=False).portable is False


async def test_a_small_restore_writes_through_the_path_based_way(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello")
    os.chmod(src / "a.txt", 0o640)
    os.utime(src / "a.txt", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    result = await Archiver(repo).backup([str(src)], kind=FULL)
    created = []
    original = _PathFs.create_file

    def spy(self, parent, name):
        created.append(name)
        return original(self, parent, name)

    monkeypatch.setattr(_PathFs, "create_file", spy)
    await Restorer(repo).restore(result.snapshot_id, tmp_path / "out")
    assert created == ["a.txt"]
    st = os.stat(tmp_path / "out" / "src" / "a.txt")
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, 1_500_000_000_000_000_000)


def test_a_directory_swapped_for_a_link_after_it_was_made_is_refused(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    fs = _PathFs()
    top = fs.open_root(str(target))
    sub = fs.make_dir(top, "sub", "sub")
    os.rmdir(target / "sub")
    os.symlink(outside, target / "sub")  # an attacker's swap between mkdir and create
    with pytest.raises(UnsafePath):
        fs.create_file(sub, "pwned")
    with pytest.raises(UnsafePath):
        fs.symlink(sub, Node(name="pwned", type="symlink", mode=0o777, target="x"), False)
    assert os.listdir(outside) == []


def test_a_link_or_file_in_the_way_of_a_directory_is_refused(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", target / "link")
    (target / "file").write_text("x")
    fs = _PathFs()
    top = fs.open_root(str(target))
    for name in ("link", "file"):
        with pytest.raises(UnsafePath):
            fs.make_dir(top, name, name)


def test_a_link_in_the_way_of_a_file_is_replaced_not_followed(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("original")
    os.symlink(victim, target / "f")
    fs = _PathFs()
    handle = fs.create_file(fs.open_root(str(target)), "f")
    fs.write(handle, [memoryview(b"ne"), memoryview(b"w")], 0)
    fs.finish_file(handle, Node(name="f", type=FILE, mode=0o600, size=3, mtime_ns=10**18), False)
    assert victim.read_text() == "original"
    assert not (target / "f").is_symlink() and (target / "f").read_bytes() == b"new"


@pytest.mark.parametrize("name", ["a\\b", "C:evil", "file.txt:stream", "CON", "nul.txt", "com1", "Lpt9.log",
                                  "trailing.", "trailing ", "..."])
def test_windows_rules_refuse_names_windows_would_misread(name):
    with pytest.raises(UnsafePath):
        check_name(name, "dir", windows=True)


@pytest.mark.parametrize("name", ["a\\b", "C:x", "CON", "trailing."])
def test_those_names_are_fine_on_posix(name):
    check_name(name, "dir", windows=False)


@pytest.mark.parametrize("name", ["console.txt", "CONFIG", "nul-device", "a.b.c", ".hidden"])
def test_windows_rules_keep_ordinary_names(name):
    check_name(name, "dir", windows=True)
