"""reclo-agent against a folder repository (`repository = "file:///..."`, a USB disk):
the commands as real processes, their output and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import stat

from shared.format import LocalFolderStore, Repository
from clients.agent import restore_index
from clients.agent.target import Target
from shared.format.diskindex import DiskIndex
from tests.format.conftest import describe

from .conftest import PASSPHRASE, MiB, folder_config, initialised, make_tree


async def test_init_stores_the_passphrase_0600_and_recognises_its_repository(agent, tmp_path):
    repo = tmp_path / "usb" / "reclo"
    folder_config(agent, repo, [])
    r = await agent("init", RECLO_PASSPHRASE=PASSPHRASE)
    assert r.code == 0, r
    secrets = agent.config.parent / "agent-secrets.json"
    assert stat.S_IMODE(os.stat(secrets).st_mode) == 0o600
    assert json.loads(secrets.read_text()) == {"passphrase": PASSPHRASE}
    config_before = (repo / "config").read_bytes()
    r = await agent("init", RECLO_PASSPHRASE="another passphrase")
    assert r.code == 5 and "wrong passphrase" in r.stderr, r
    assert (repo / "config").read_bytes() == config_before  # nothing was changed
    assert json.loads(secrets.read_text()) == {"passphrase": PASSPHRASE}
    r = await agent("init", RECLO_PASSPHRASE=PASSPHRASE)
    assert r.code == 0 and "opens with this passphrase" in r.stdout, r


async def test_full_incremental_restore_and_check(agent, tmp_path):
    src = make_tree(tmp_path / "src")
    await initialised(agent, tmp_path / "usb" / "reclo", [src])

    r = await agent("backup", "--json")
    assert r.code == 0, r
    first = r.result
    assert first["kind"] == "full" and first["parent"] is None
    assert first["files"] == 7 and first["warnings"] == []
    assert [d["type"] for d in r.lines].count("progress") >= 1
    before = describe(src)

    # A day's work: one file grows, one appears, one is deleted, the rest is untouched.
    with open(src / "docs" / "2024 reports" / "q2.bin", "ab") as f:
        f.write(os.urandom(MiB))
    (src / "new.bin").write_bytes(os.urandom(500_000))
    (src / "docs" / "2024 reports" / "q1.bin").unlink()
    changed = os.path.getsize(src / "docs" / "2024 reports" / "q2.bin") + 500_000

    r = await agent("backup", "--json")
    assert r.code == 0, r
    second = r.result
    assert second["kind"] == "incremental" and second["parent"] == first["snapshot"]
    assert second["bytes_read"] == changed  # unchanged files were not read again
    assert second["stored_bytes"] <= changed + 64 * 1024  # and at most what changed was stored

    r = await agent("snapshots", "--json")
    assert r.code == 0, r
    listed = json.loads(r.stdout)
    assert [(s["id"], s["kind"]) for s in listed] == [(first["snapshot"], "full"), (second["snapshot"], "incremental")]
    assert listed[0]["sources"][0]["path"] == str(src)

    r = await agent("restore", first["snapshot"], str(tmp_path / "out1"))
    assert r.code == 0, r
    assert describe(tmp_path / "out1" / "src") == before
    r = await agent("restore", second["snapshot"][:10], str(tmp_path / "out2"), "--path", "src", "--json")
    assert r.code == 0, r
    progress = [d for d in r.lines if d["type"] == "progress"]
    assert progress and progress[-1]["totals_final"]
    assert progress[-1]["files_done"] == progress[-1]["files_total"] == r.result["files"]
    assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] == r.result["bytes"]
    assert describe(tmp_path / "out2" / "src") == describe(src)
    assert os.lstat(tmp_path / "out2" / "src" / "sparse.img").st_blocks * 512 < 4 * MiB  # holes stayed holes

    r = await agent("check", "--read-data", "--json")
    assert r.code == 0, r
    assert r.result["ok"] and r.result["snapshots"] == 2 and r.result["packs_read"] == r.result["packs"] > 0
    r = await agent("check", "--read-data-subset", "50%", "--json")
    assert r.code == 0, r
    assert 0 < r.result["packs_read"] < r.result["packs"]

    # The weekly full reads every file again, and stores nothing twice.
    r = await agent("backup", "--full", "--json")
    assert r.code == 0, r
    assert r.result["kind"] == "full" and r.result["bytes_read"] > 3 * MiB and r.result["stored_bytes"] < 64 * 1024

    r = await agent("snapshots", "--json", RECLO_PASSPHRASE="not the passphrase")
    assert r.code == 5, r
    assert r.lines[-1]["type"] == "error" and "wrong passphrase" in r.lines[-1]["message"]


async def test_a_restore_keeps_an_index_of_its_own_on_disk(agent, tmp_path):
    """A restore's memory must not grow with the repository, so it keeps the index on
    disk; but its own, in a folder it removes, never the backups' index-cache/ (a restore
    run as root would leave the daemon files it cannot open, and a long restore would hold
    their lock). Folders of killed restores are swept; where the state folder cannot be
    written the restore keeps its index in memory and says so."""
    src = make_tree(tmp_path / "src")
    repo_folder = tmp_path / "usb" / "reclo"
    await initialised(agent, repo_folder, [src])
    assert (await agent("backup")).code == 0
    state = agent.config.parent / "state"
    shutil.rmtree(state / "index-cache")  # a new machine: nothing kept from the backup
    killed = state / f"{restore_index.PREFIX}killed"  # a restore that was killed
    DiskIndex(killed / restore_index.INDEX_FILE).close()
    running = DiskIndex(state / f"{restore_index.PREFIX}running" / restore_index.INDEX_FILE)
    try:
        r = await agent("restore", "latest", str(tmp_path / "out1"), "--json")
        assert r.code == 0, r
        assert describe(tmp_path / "out1" / "src") == describe(src)
        statuses = [d["message"] for d in r.lines if d["type"] == "status"]
        assert not [m for m in statuses if "in memory" in m], statuses
        assert not (state / "index-cache").exists()  # the backups' index: not touched
        # Its own folder is gone, the killed one's too; a running restore's stays.
        assert sorted(p.name for p in state.iterdir() if p.name.startswith(restore_index.PREFIX)) == \
            [f"{restore_index.PREFIX}running"]
    finally:
        running.close()

    # A restore runs as usual while a backup holds the backups' index.
    repo = await Repository.open(LocalFolderStore(repo_folder), PASSPHRASE, load_index=False)
    backups_index = DiskIndex(state / "index-cache" / repo.config.id / "index.sqlite")
    try:
        r = await agent("restore", "latest", str(tmp_path / "out2"), "--json")
        assert r.code == 0, r
        assert describe(tmp_path / "out2" / "src") == describe(src)
        assert not [d for d in r.lines if d["type"] == "status" and "in memory" in d["message"]]
    finally:
        backups_index.close()

    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    folder_config(agent, repo_folder, [src], extra=f'state_dir = "{blocker / "state"}"')
    r = await agent("restore", "latest", str(tmp_path / "out3"), "--json")
    assert r.code == 0, r
    assert describe(tmp_path / "out3" / "src") == describe(src)
    assert [d for d in r.lines if d["type"] == "status" and "kept in memory for this restore" in d["message"]]


async def test_a_restore_index_is_on_disk_and_reads_what_the_backups_kept(agent, tmp_path):
    """What cmd_restore opens: its index is a DiskIndex at the path given, filled from
    the index files the backups kept (no download of those) without a byte written to
    their folder; the rest comes from the repository."""
    src = make_tree(tmp_path / "src")
    repo_folder = tmp_path / "usb" / "reclo"
    await initialised(agent, repo_folder, [src])
    assert (await agent("backup")).code == 0
    kept = agent.config.parent / "state" / "index-cache"
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in kept.rglob("*") if p.is_file()}
    cached = sorted(p for p in before if p.suffix == ".bin")
    assert len(cached) > 1
    cached[0].unlink()  # one index file the backups did not keep: read from the repository
    del before[cached[0]]

    class CountingStore(LocalFolderStore):
        index_gets = 0

        async def get(self, key, offset=None, length=None):
            if key.startswith("index/"):
                CountingStore.index_gets += 1
            return await super().get(key, offset, length)

    index_at = tmp_path / "restore-index" / "index.sqlite"
    target = Target(str(repo_folder), CountingStore(repo_folder), folder=repo_folder)
    repo = await target.open_repository(PASSPHRASE, index_at=index_at, index_cache_in=kept)
    try:
        assert isinstance(repo.index, DiskIndex) and repo.index.path == index_at
        assert repo.index_in_memory_because is None
        plain = await Repository.open(LocalFolderStore(repo_folder), PASSPHRASE)
        assert dict(repo.index.items()) == dict(plain.index.items())
        assert CountingStore.index_gets == 1  # only the one not kept
    finally:
        repo.close()
    after = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in kept.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing deleted, not even the missing one


async def test_pre_and_post_commands(agent, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    marker = tmp_path / "post-ran"
    repo = tmp_path / "repo"
    failing = (f'[[sources]]\npath = "{good}"\npre = ["sh", "-c", "echo dumped > {good}/dump.sql"]\n'
               f'post = "echo $RECLO_BACKUP_STATUS > {marker}"\n'
               f'[[sources]]\npath = "{bad}"\npre = "echo preparing the dump; echo no space left >&2; exit 3"\n'
               f'post = "touch {tmp_path / "never"}"\n')
    await initialised(agent, repo, extra=failing)
    r = await agent("backup")
    assert r.code == 1, r
    assert "exit code 3" in r.stderr and "no space left" in r.stderr and "preparing the dump" in r.stderr
    assert marker.read_text().strip() == "failed"  # the cleanup of the source whose pre command ran
    assert not (tmp_path / "never").exists()  # a source whose pre command failed gets no post

    agent.write_config(f'repository = "file://{repo}"\n' + failing.split("[[sources]]\npath = \"" + str(bad))[0])
    r = await agent("backup", "--json")
    assert r.code == 0, r
    assert r.result["files"] == 1  # what the pre command wrote is in the backup
    assert marker.read_text().strip() == "ok"
    assert (await agent("restore", "latest", str(tmp_path / "out"))).code == 0
    assert (tmp_path / "out" / "good" / "dump.sql").read_text() == "dumped\n"


async def test_skipped_files_give_exit_3_and_images_restore_byte_identical(agent, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.txt").write_text("data")
    os.mkfifo(src / "a pipe")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.write(os.urandom(3 * MiB))
        f.seek(20 * MiB)
        f.write(os.urandom(MiB))
        f.truncate(32 * MiB)
    await initialised(agent, tmp_path / "repo")
    r = await agent("backup", "--source", str(src), "--image", str(image))
    assert r.code == 3, r
    assert "a pipe" in r.stderr and "special file" in r.stderr
    assert "snapshot" in r.stdout and "1 warning" in r.stdout
    r = await agent("snapshots", "--json")
    [snapshot] = json.loads(r.stdout)
    assert snapshot["images"] == 1 and snapshot["warnings"] == 1
    assert (await agent("restore", "latest", str(tmp_path / "out"))).code == 0
    assert (tmp_path / "out" / "disk.img").read_bytes() == image.read_bytes()
    assert (tmp_path / "out" / "src" / "data.txt").read_text() == "data"


async def test_version_is_printed_on_stdout_and_exits_0(agent):
    from importlib import metadata

    r = await agent("--version")
    assert r.code == 0 and r.stdout.strip() == f"reclo-agent {metadata.version('reclo')}", r


async def test_usage_errors_exit_2_and_name_the_problem(agent, tmp_path):
    agent.write_config('repository = "file:///tmp/x"\n[schedule]\nincremental = "5m"\n')
    r = await agent("backup")
    assert r.code == 2 and "schedule.incremental" in r.stderr, r  # (test_units has the other mistakes)

    folder_config(agent, tmp_path / "repo", [])
    r = await agent("backup", "--source", str(tmp_path), RECLO_PASSPHRASE=PASSPHRASE)
    assert r.code == 2 and "no repository" in r.stderr, r
    r = await agent("init", RECLO_PASSPHRASE="short")
    assert r.code == 2 and "at least 8" in r.stderr, r
    r = await agent("restore")
    assert r.code == 2, r

    await initialised(agent, tmp_path / "repo")
    r = await agent("backup")
    assert r.code == 2 and "nothing to back up" in r.stderr, r
    r = await agent("forget", "--keep-daily", "7")
    assert r.code == 2 and "server" in r.stderr, r

    (agent.config.parent / "agent-secrets.json").chmod(0o644)
    r = await agent("snapshots")
    assert r.code == 2 and "chmod 600" in r.stderr, r
