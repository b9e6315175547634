import os

import pytest

from shared.format.store import LocalFolderStore

from .store_conformance import StoreConformance


class TestLocalFolderStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path):
        return LocalFolderStore(tmp_path / "objects")


async def test_leftover_temporary_files_are_not_objects(tmp_path):
    store = LocalFolderStore(tmp_path)
    await store.put("data/ab/abc", b"pack")
    # what a crash between write and link leaves behind
    (tmp_path / "data" / "ab" / ".tmp.0123").write_bytes(b"partial")
    assert [k async for k in store.list("data/")] == ["data/ab/abc"]
    assert not [name for name in os.listdir(tmp_path / "data" / "ab") if name.startswith(".tmp.") and name != ".tmp.0123"]
