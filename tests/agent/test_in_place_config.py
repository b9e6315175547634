"""The agent's [in_place] table: which files of a folder are cut into fixed chunks."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.agent.config import DEFAULT_IN_PLACE_MIN_SIZE, DEFAULT_IN_PLACE_PATTERNS, load
from clients.agent.exits import ConfigError


def _load(tmp_path: Path, text: str):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load(path)


def test_defaults_cover_databases_and_virtual_disks(tmp_path):
    cfg = _load(tmp_path, 'repository = "file:///tmp/r"\n')
    assert cfg.in_place.patterns == DEFAULT_IN_PLACE_PATTERNS
    assert cfg.in_place.min_size == DEFAULT_IN_PLACE_MIN_SIZE
    for name in ("*.mdf", "*.vhdx", "*.db", "*.pst", "*.qcow2"):
        assert name in cfg.in_place.patterns


def test_patterns_and_minimum_size_can_be_set_or_turned_off(tmp_path):
    cfg = _load(tmp_path, '[in_place]\npatterns = ["*.fdb", "data*.dat"]\nmin_size = "64 MiB"\n')
    assert cfg.in_place.patterns == ("*.fdb", "data*.dat") and cfg.in_place.min_size == 64 * 1024 * 1024
    assert _load(tmp_path, "[in_place]\npatterns = []\n").in_place.patterns == ()


@pytest.mark.parametrize("text, key", [
    ('[in_place]\npatterns = "*.db"\n', "in_place.patterns"),
    ('[in_place]\npatterns = ["db/*.db"]\n', "in_place.patterns"),
    ('[in_place]\nmin_size = "lots"\n', "in_place.min_size"),
    ('[in_place]\nsize = 1\n', "in_place.size"),
    ('in_place = ["*.db"]\n', "in_place"),
])
def test_mistakes_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _load(tmp_path, text)
