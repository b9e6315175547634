"""reclo-agent end to end against a real server started in the test: auth, backup and the
gateway, in the embedded mode (SQLite, in-process bus, local store with presigned URLs)
and on MariaDB + RabbitMQ + S3 (moto)."""

from __future__ import annotations

import json
import os
import signal
import stat
from dataclasses import replace

import pytest

from shared.format.constants import CDC_MAX_SIZE, PACK_TARGET_SIZE
from tests.format.conftest import describe
from tests.support import TcpProxy, eventually

from .conftest import PASSPHRASE, PASSWORD, MiB, make_tree, registered

# The most one pack holds: the target size plus one more chunk.
ONE_PACK = PACK_TARGET_SIZE + CDC_MAX_SIZE


async def test_register_backup_incremental_restore_check_forget(agent, server, tmp_path, unique):
    src = make_tree(tmp_path / "src")
    # A database: its fixed chunks are compressed with a dictionary trained on it (dicts/).
    (src / "erp.db").write_bytes(b"".join(b"row %07d customer %05d paid;" % (i, i % 997) for i in range(330_000)))
    # A limit far above what the test sends: uploads take the paced path (to S3 on moto too).
    await registered(agent, server, f"fs-{unique}", [src], extra='[upload]\nbandwidth_limit = "256 MiB"\n')
    text = agent.config.read_text() + (agent.config.parent / "agent-secrets.json").read_text()
    assert f'server = "{server.url}"' in text and f'host = "fs-{unique}"' in text
    assert PASSWORD not in text  # the password is never stored
    secrets = json.loads((agent.config.parent / "agent-secrets.json").read_text())
    assert secrets["agent_key"].startswith("rca_") and secrets["passphrase"] == PASSPHRASE
    assert stat.S_IMODE(os.stat(agent.config.parent / "agent-secrets.json").st_mode) == 0o600

    r = await agent("backup", "--json")
    assert r.code == 0, r
    first = r.result
    assert first["kind"] == "full" and first["backup_id"]
    assert await server.dictionaries() == 1
    before = describe(src)

    with open(src / "docs" / "2024 reports" / "q2.bin", "ab") as f:
        f.write(os.urandom(MiB))
    (src / "new.bin").write_bytes(os.urandom(300_000))
    with open(src / "erp.db", "r+b") as f:
        f.seek(5 * MiB)
        f.write(b"row 9999999 customer 99999 open;")
    changed = os.path.getsize(src / "docs" / "2024 reports" / "q2.bin") + 300_000 + os.path.getsize(src / "erp.db")
    r = await agent("backup", "--json")
    assert r.code == 0, r
    second = r.result
    assert second["kind"] == "incremental" and second["parent"] == first["snapshot"]
    assert second["bytes_read"] == changed  # unchanged files were not read again
    assert await server.dictionaries() == 1  # the database kept its dictionary

    backups = {b["id"]: b for b in await server.backups()}
    for done in (first, second):
        b = backups[done["backup_id"]]
        assert b["status"] == "complete" and b["snapshot_id"] == done["snapshot"] and b["host"] == f"fs-{unique}"
    assert backups[second["backup_id"]]["kind"] == "incremental"

    r = await agent("snapshots", "--json")
    assert r.code == 0, r
    assert [s["id"] for s in json.loads(r.stdout)] == [first["snapshot"], second["snapshot"]]

    assert (await agent("restore", first["snapshot"][:12], str(tmp_path / "out1"))).code == 0
    assert describe(tmp_path / "out1" / "src") == before
    assert (await agent("restore", "latest", str(tmp_path / "out2"))).code == 0
    assert describe(tmp_path / "out2" / "src") == describe(src)

    r = await agent("check", "--read-data", "--json")
    assert r.code == 0, r
    assert r.result["ok"] and r.result["snapshots"] == 2 and r.result["packs_read"] == r.result["packs"]

    r = await agent("forget", "--keep-last", "1", "--json")
    assert r.code == 0, r
    assert r.result == {"type": "result", "kept": [second["backup_id"]], "forgotten": [first["backup_id"]]}
    backups = {b["id"]: b for b in await server.backups()}
    assert backups[first["backup_id"]]["status"] == "forgotten"

    async def collected():  # the service's garbage collection takes the forgotten snapshot away
        r = await agent("snapshots", "--json")
        return [s["id"] for s in json.loads(r.stdout)] == [second["snapshot"]]

    await eventually(collected, timeout=30, interval=0.5)
    assert await server.dictionaries() == 1  # never collected: kept chunks may need them
    # After garbage collection the repository is whole, and a new backup reuses what is left.
    r = await agent("check", "--json")
    assert r.code == 0 and r.result["ok"], r
    r = await agent("backup", "--json")
    assert r.code == 0, r
    assert r.result["kind"] == "full" and r.result["stored_bytes"] < 3 * MiB  # the kept incremental's data
    full = r.result

    # Nothing changed: every folder is kept from the agent's tree cache, unseen. Its pack
    # list (the parent's) must keep all it references once the full before it is gone.
    r = await agent("backup", "--json")
    assert r.code == 0, r
    assert r.result["kind"] == "incremental" and r.result["bytes_read"] == 0
    assert r.result["parent"] == full["snapshot"]
    quiet = r.result
    r = await agent("forget", "--keep-last", "1", "--json")
    assert r.code == 0 and r.result["kept"] == [quiet["backup_id"]], r

    async def only_the_quiet_one():
        r = await agent("snapshots", "--json")
        return [s["id"] for s in json.loads(r.stdout)] == [quiet["snapshot"]]

    await eventually(only_the_quiet_one, timeout=30, interval=0.5)
    r = await agent("check", "--read-data", "--json")
    assert r.code == 0 and r.result["ok"], r
    assert (await agent("restore", "latest", str(tmp_path / "out3"))).code == 0
    assert describe(tmp_path / "out3" / "src") == describe(src)


@pytest.mark.parametrize("mode", ["embedded"])
async def test_a_session_whose_answer_never_came_is_closed_by_the_next_run(agent, server, tmp_path, unique):
    src = make_tree(tmp_path / "src")
    proxy = await TcpProxy.to(server.url).start()
    try:
        await registered(agent, replace(server, url=proxy.url + "/"), f"fs-{unique}", [src])
        # The server opens the session; the agent never hears of it and is killed waiting.
        proxy.lose_answers_after = b"POST /api/v1/backups "
        proc = await agent.start("backup", "--json")
        try:
            [lost] = await eventually(server.backups, timeout=30)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        assert lost["status"] == "uploading"
        proxy.lose_answers_after = None

        r = await agent("backup", "--json")
        assert r.code == 0, r
        backups = {b["id"]: b for b in await server.backups()}
        assert set(backups) == {lost["id"], r.result["backup_id"]}
        closed = backups[lost["id"]]
        assert closed["status"] == "failed"
        assert f"resumed by backup {r.result['backup_id']}" in closed["failure_reason"]
    finally:
        await proxy.stop()


@pytest.mark.parametrize("mode", ["embedded"])
async def test_a_lost_answer_to_opening_or_committing_is_asked_again_not_a_failure(
        agent, server, tmp_path, unique):
    src = make_tree(tmp_path / "src")
    proxy = await TcpProxy.to(server.url).start()
    try:
        await registered(agent, replace(server, url=proxy.url + "/"), f"fs-{unique}", [src])
        done = []
        for request in (b"POST /api/v1/backups ", b"/commit HTTP"):
            # The server acts on the request; the connection drops before its answer.
            proxy.cut_answer_once_after = request
            r = await agent("backup", "--json")
            assert r.code == 0, r
            assert proxy.cut_answer_once_after is None  # it was cut, and asked again
            done.append(r.result["backup_id"])
        # One session each, both complete: the repeat named the same session and commit.
        assert {b["id"]: b["status"] for b in await server.backups()} == dict.fromkeys(done, "complete")
    finally:
        await proxy.stop()


@pytest.mark.parametrize("mode", ["embedded"])
async def test_a_backup_beside_a_running_one_leaves_its_session_open(agent, server, tmp_path, unique):
    # A manual backup while the daemon's is under way: the one that ends first closes
    # only sessions of runs that are over, so the other still commits.
    src = make_tree(tmp_path / "src")
    gate = tmp_path / "gate"
    gate.mkdir()
    # The first run to get here waits at its pre command until the test opens the gate;
    # the second goes straight through.
    wait_once = (f"if mkdir {gate}/first 2>/dev/null; then "
                 f"while [ ! -e {gate}/open ]; do sleep 0.05; done; fi")
    await registered(agent, server, f"fs-{unique}", [src])
    made = await agent("backup", "--json")  # the repository, which a first session creates
    assert made.code == 0, made
    agent.write_config(agent.config.read_text().replace(
        f'path = "{src}"', f'path = "{src}"\npre = {json.dumps(wait_once)}'))

    first = await agent.start("backup", "--json")
    await eventually(lambda: (gate / "first").exists(), timeout=30)
    second = await agent("backup", "--json")
    assert second.code == 0, second
    (gate / "open").touch()
    out, err = await first.communicate()
    assert first.returncode == 0, (out.decode()[-2000:], err.decode()[-2000:])
    finished = json.loads([line for line in out.splitlines() if line.startswith(b"{")][-1])
    backups = {b["id"]: b["status"] for b in await server.backups()}
    assert backups == {made.result["backup_id"]: "complete", second.result["backup_id"]: "complete",
                       finished["backup_id"]: "complete"}
    state = json.loads((agent.config.parent / "state" / "state.json").read_text())
    assert state["open_sessions"] == []


@pytest.mark.parametrize("mode", ["embedded"])
async def test_a_backup_the_server_would_refuse_is_said_so_and_opens_nothing(agent, server, tmp_path, unique):
    sources = []
    for i in range(101):  # one more than a session may name
        (tmp_path / "many" / f"s{i}").mkdir(parents=True)
        sources.append(tmp_path / "many" / f"s{i}")
    await registered(agent, server, f"fs-{unique}", sources)
    r = await agent("backup")
    assert r.code == 2, r
    assert r.stderr.startswith("reclo-agent: the server does not take this backup: sources: ")
    assert "at most 100 items" in r.stderr and "Traceback" not in r.stderr and "pydantic" not in r.stderr
    assert await server.backups() == []
    state = agent.config.parent / "state" / "state.json"
    assert not state.exists() or json.loads(state.read_text())["open_sessions"] == []


# Embedded only, to keep the suite short: the process is what is tested here (SIGKILL, the
# state file, the next run); resuming through S3 is tests/backup/test_sessions.py's, in both modes.
@pytest.mark.parametrize("mode", ["embedded"])
async def test_killed_backup_resumes_without_uploading_again_what_arrived(agent, server, tmp_path, unique):
    src = tmp_path / "big"
    src.mkdir()
    size = 0
    for i in range(5):  # 160 MiB, incompressible: five packs' worth
        (src / f"part-{i}.bin").write_bytes(os.urandom(32 * MiB))
        size += 32 * MiB
    await registered(agent, server, f"db-{unique}", [src])
    base = await server.pack_bytes()

    proc = await agent.start("backup", "--json")
    try:
        await eventually(lambda: _packs_at_least(server, 2), timeout=60, interval=0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    killed_stored = await server.pack_bytes() - base
    assert killed_stored >= 2 * PACK_TARGET_SIZE
    assert killed_stored < size  # it really was cut off

    r = await agent("backup", "--json")
    assert r.code == 0, r
    assert r.result["kind"] == "full" and r.result["bytes_read"] == size
    resumed = r.result["stored_bytes"]
    # What the killed run stored was reused, not uploaded again: together the two runs
    # stored at most about one pack more than the data itself.
    assert killed_stored + resumed <= size + ONE_PACK
    assert await server.pack_bytes() - base <= size + ONE_PACK

    backups = await server.backups()
    complete = [b for b in backups if b["status"] == "complete"]
    assert [b["snapshot_id"] for b in complete] == [r.result["snapshot"]]
    # The killed run's session was closed by the run that resumed it.
    [killed] = [b for b in backups if b["id"] != r.result["backup_id"]]
    assert killed["status"] == "failed" and "did not finish" in killed["failure_reason"]
    assert r.result["backup_id"] in killed["failure_reason"]
    r = await agent("check", "--json")
    assert r.code == 0 and r.result["ok"], r


async def _packs_at_least(server, n: int) -> bool:
    return await server.packs() >= n


@pytest.mark.parametrize("mode", ["embedded"])  # what is measured does not depend on the storage
async def test_bandwidth_limit_and_failures_reported_to_the_server(agent, server, tmp_path, unique):
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(os.urandom(3 * MiB))
    limit = MiB
    await registered(agent, server, f"web-{unique}", [src], extra=f"[upload]\nbandwidth_limit = {limit}\n")

    r = await agent("backup", "--json")
    assert r.code == 0, r
    uploaded, seconds = r.result["stored_bytes"], r.result["duration_seconds"]
    # One second's worth may go at once (the bucket's depth), the rest at the limit; the
    # bound is generous on purpose (a busy machine only makes it slower).
    assert uploaded > 3 * MiB
    assert seconds >= 0.7 * (uploaded - limit) / limit, (uploaded, seconds)

    r = await agent("backup", RECLO_PASSPHRASE="not the passphrase")
    assert r.code == 5 and "wrong passphrase" in r.stderr, r

    config = agent.config.read_text().replace(f'path = "{src}"', f'path = "{src}"\npre = "echo volume offline >&2; exit 7"')
    agent.config.write_text(config)
    r = await agent("backup")
    assert r.code == 1 and "volume offline" in r.stderr, r
    failed = [b for b in await server.backups() if b["status"] == "failed"]
    assert len(failed) == 1 and "volume offline" in failed[0]["failure_reason"]
    assert "exit code 7" in failed[0]["failure_reason"]


@pytest.mark.parametrize("mode", ["embedded"])
async def test_unreachable_server_exits_4_and_a_bad_password_5(agent, server, tmp_path):
    agent.write_config("")
    r = await agent("register", "--server", "http://127.0.0.1:9", "--username", server.username,
                    RECLO_PASSWORD=PASSWORD)
    assert r.code == 4 and "cannot reach" in r.stderr, r
    r = await agent("register", "--server", server.url, "--username", server.username,
                    RECLO_PASSWORD="not the password")
    assert r.code == 5, r
    assert not (agent.config.parent / "agent-secrets.json").exists()
