"""`reclo-agent run` as a real process: it keeps the schedule, catches up what it missed,
logs JSON lines, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from shared.format import FULL, Archiver, LocalFolderStore, Repository

from .conftest import PASSPHRASE, initialised, make_tree

HOST = "fileserver"


async def read_until(proc, event: str, log: list[dict], timeout: float = 60) -> dict:
    async def scan():
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"the agent ended before {event!r}: {log}")
            doc = json.loads(line)
            log.append(doc)
            if doc["event"] == event:
                return doc

    return await asyncio.wait_for(scan(), timeout)


async def stop(proc, log: list[dict]) -> int:
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    log.extend(json.loads(line) for line in out.decode().splitlines())
    return proc.returncode


async def test_run_takes_the_first_full_at_once_then_waits(agent, tmp_path):
    src = make_tree(tmp_path / "src")
    await initialised(agent, tmp_path / "repo", [src], extra=f'host = "{HOST}"')
    proc = await agent.start("run")
    log: list[dict] = []
    try:
        started = await read_until(proc, "backup.started", log)
        assert started["kind"] == "full"
        done = await read_until(proc, "backup.completed", log)
        assert done["kind"] == "full" and done["host"] == HOST and done["files"] == 7
        waiting = await read_until(proc, "schedule.next", log)
        assert datetime.fromisoformat(waiting["at"]) > datetime.now()
    finally:
        code = await stop(proc, log)
    assert code == 0
    assert log[0]["event"] == "agent.started" and log[-1]["event"] == "agent.stopped"
    assert all({"time", "level", "event"} <= doc.keys() for doc in log)


async def test_run_catches_up_a_missed_slot_with_an_incremental(agent, tmp_path):
    src = make_tree(tmp_path / "src")
    now = datetime.now()
    # Fulls three days ago's weekday, incrementals daily at midnight: the last full (two
    # days old) is current, but today's incremental slot has passed without a backup.
    full_day = (now - timedelta(days=3)).strftime("%A").lower()
    schedule = f'host = "{HOST}"\n[schedule]\nfull_day = "{full_day}"\ntime = "00:00"\nincremental = "daily"\n'
    await initialised(agent, tmp_path / "repo", [src], extra=schedule)

    # A full taken two days ago (the machine has been asleep since).
    store = LocalFolderStore(tmp_path / "repo")
    repo = await Repository.open(store, PASSPHRASE)
    result = await Archiver(repo, host=HOST).backup([str(src)], kind=FULL)
    old = replace(result.snapshot, time=datetime.now(timezone.utc) - timedelta(days=2))
    old_id = await repo.save_snapshot(old)
    await store.delete(f"snapshots/{result.snapshot_id}")

    proc = await agent.start("run")
    log: list[dict] = []
    try:
        started = await read_until(proc, "backup.started", log)
        assert started["kind"] == "incremental"
        done = await read_until(proc, "backup.completed", log)
        assert done["kind"] == "incremental" and done["parent"] == old_id
        assert done["bytes_read"] == 0  # nothing changed since: nothing read
        await read_until(proc, "schedule.next", log)
    finally:
        assert await stop(proc, log) == 0
