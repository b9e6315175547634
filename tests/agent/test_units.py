"""The agent's small parts with real files and real time: configuration, the secrets file,
the token bucket."""

from __future__ import annotations

import asyncio
import os
import stat
import time
import tomllib
from datetime import time as clock, timedelta

import pytest

from clients.agent import config, secretfile
from clients.agent.exits import ConfigError
from clients.agent.throttle import TokenBucket

FULL_CONFIG = """
server = "https://backup.example.com/"
host = "fileserver-01"
excludes = ["*.tmp", "cache/*"]
hook_timeout = "2h"
log_file = "logs/agent.log"

[[sources]]
path = "/srv/data"

[[sources]]
path = "/var/backups/server.vhdx"
type = "image"
pre = "wbadmin start backup -backupTarget:E: -quiet"
post = ["sh", "-c", "echo done"]

[schedule]
full_day = "sat"
time = "22:30"
incremental = "4h"
retry_after = "10m"

[upload]
bandwidth_limit = "4 MiB"
concurrency = 3
"""


def test_a_full_configuration(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(FULL_CONFIG)
    cfg = config.load(path)
    assert cfg.server == "https://backup.example.com" and cfg.host == "fileserver-01"
    assert [(s.path, s.kind) for s in cfg.sources] == [("/srv/data", "folder"), ("/var/backups/server.vhdx", "image")]
    assert cfg.sources[1].pre.startswith("wbadmin") and cfg.sources[1].post == ["sh", "-c", "echo done"]
    assert cfg.excludes == ("*.tmp", "cache/*") and cfg.hook_timeout == timedelta(hours=2)
    assert cfg.schedule == config.Schedule(5, clock(22, 30), timedelta(hours=4), timedelta(minutes=10))
    assert cfg.upload == config.Upload(4 * 1024 * 1024, 3)
    assert cfg.secrets_path == tmp_path / "agent-secrets.json" and cfg.state_dir == tmp_path / "state"
    assert cfg.log_file == tmp_path / "logs" / "agent.log"


@pytest.mark.parametrize("text, key", [
    ('server = "ftp://x"', "server"),
    ("[[sources]]\ntype = \"image\"", "sources[0].path"),
    ('[[sources]]\npath = "/x"\ntype = "disk"', "sources[0].type"),
    ('[schedule]\nfull_day = "someday"', "schedule.full_day"),
    ('[schedule]\ntime = "25:00"', "schedule.time"),
    ('[upload]\nbandwidth_limit = "fast"', "upload.bandwidth_limit"),
    ('[upload]\nconcurrency = 0', "upload.concurrency"),
    ('repository = "/mnt/usb"', "repository"),
    ('[[sources]]\npath = "/x"\npre = 3', "sources[0].pre"),
])
def test_mistakes_name_the_key(tmp_path, text, key):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config.load(path)


def test_sizes_and_durations():
    assert config.parse_size("10 MiB") == config.parse_size("10M") == config.parse_size("10MB/s") == 10 * 1024 ** 2
    assert config.parse_size(5000) == 5000 and config.parse_size("800k") == 800 * 1024
    assert config.parse_size("lots") is None and config.parse_size(True) is None
    assert config.parse_duration("90m") == timedelta(minutes=90) and config.parse_duration(30) == timedelta(seconds=30)
    assert config.parse_duration("soon") is None


def test_register_sets_top_level_keys_and_keeps_the_rest(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('# my comment\nserver = "http://old"\n\n[[sources]]\npath = "/srv"  # keep me\n')
    config.set_top_level(path, {"server": "https://new.example", "host": 'a "quoted" name'})
    text = path.read_text()
    assert "# my comment" in text and "# keep me" in text
    doc = tomllib.loads(text)
    assert doc["server"] == "https://new.example" and doc["host"] == 'a "quoted" name'
    assert doc["sources"] == [{"path": "/srv"}]
    fresh = tmp_path / "new" / "agent.toml"
    config.set_top_level(fresh, {"server": "https://s"})
    assert tomllib.loads(fresh.read_text()) == {"server": "https://s"}


def test_the_secrets_file_is_0600_and_refused_when_others_can_read_it(tmp_path):
    path = tmp_path / "etc" / "agent-secrets.json"
    secretfile.update(path, agent_key="rca_key")
    secretfile.update(path, passphrase="pass phrase")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert secretfile.read(path) == secretfile.Secrets("rca_key", "pass phrase")
    assert [p.name for p in path.parent.iterdir()] == ["agent-secrets.json"]  # no temporary left behind
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        secretfile.read(path)


async def test_the_token_bucket_keeps_the_rate():
    rate = 2 * 1024 * 1024
    bucket = TokenBucket(rate)
    started = time.monotonic()
    await asyncio.gather(*(bucket.take(1024 * 1024) for _ in range(4)))  # 4 MiB, 2 MiB of it at once
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3


def test_a_restore_sweeps_only_folders_it_can_tell_are_left_over(tmp_path):
    """Folders of killed restores go; a running restore's stays, and so does one whose
    lock cannot be looked at (another user's), without failing the restore."""
    from clients.agent import restore_index
    from shared.format.diskindex import DiskIndex

    state = tmp_path / "state"
    DiskIndex(state / f"{restore_index.PREFIX}killed" / restore_index.INDEX_FILE).close()
    running = DiskIndex(state / f"{restore_index.PREFIX}running" / restore_index.INDEX_FILE)
    unreadable = state / f"{restore_index.PREFIX}unreadable"
    (unreadable / f"{restore_index.INDEX_FILE}.lock").mkdir(parents=True)  # opening it fails
    try:
        index_at = restore_index.make(state)
        assert index_at is not None and index_at.parent.parent == state
        assert index_at.parent.name.startswith(restore_index.PREFIX)
        assert sorted(p.name for p in state.iterdir()) == sorted(
            [index_at.parent.name, f"{restore_index.PREFIX}running", f"{restore_index.PREFIX}unreadable"])
        restore_index.remove(index_at)
        assert not index_at.parent.exists()
    finally:
        running.close()
    blocker = tmp_path / "a file"
    blocker.write_text("")
    assert restore_index.make(blocker / "state") is None  # cannot be written: in memory
