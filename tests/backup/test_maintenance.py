"""The scheduler's ticks (retention, overdue), garbage collection's edge cases, index files,
and rebuilding the catalogue from the bucket alone."""

from __future__ import annotations

import os
from datetime import timedelta

from sqlalchemy import delete, select, update

from services.backup import catalog, gc
from services.backup.tables import BackupPackRow, BackupRow, HostRow, IndexPackRow, UploadRow
from shared.events import (
    BackupFailed,
    BackupOverdue,
    BackupsOverdueCheckDue,
    BackupsRetentionDue,
    envelope_for,
    utcnow,
)
from tests.backup.support import backup_folder, make_tree, pack_keys, quick_backup, restore
from tests.format.conftest import describe
from tests.harness import Api
from tests.support import eventually

from .test_isolation import as_agent


async def agent_api(world, user, host: str) -> Api:
    return as_agent(world, await world.agent_key(user, host))


async def publish_and_wait(world, event) -> None:
    """Publish a tick and wait until the backup service has handled it (its inbox says so)."""
    envelope = envelope_for(event)
    await world.stack.bus.publish(envelope)
    inbox = world.stack.runtimes["backup"].dispatcher.inbox

    async def handled():
        async with world.backup.db.sessions() as session:
            return await session.scalar(select(inbox.c.event_id).where(inbox.c.event_id == str(envelope.id)))

    await eventually(handled)


async def statuses(world, user: Api, host_id: str) -> dict[str, str]:
    status, listed, _ = await user.call("GET", f"/api/v1/backups?host={host_id}&limit=200")
    assert status == 200
    return {b["id"]: b["status"] for b in listed["items"]}


async def keys_of(world, user: Api, host_id: str) -> set[str]:
    return {k async for k in world.backup.host_store(user.user_id, host_id).list()}


async def test_the_retention_run_applies_each_hosts_policy(world):
    jo = await world.user("joe")
    own, other = await agent_api(world, jo, "own-policy"), await agent_api(world, jo, "default")
    mine = [await quick_backup(own) for _ in range(4)]
    host_id = mine[0][0]["host_id"]
    status, host, _ = await jo.call("PUT", f"/api/v1/hosts/{host_id}/retention", json={"keep_last": 2})
    assert status == 200 and host["retention"]["keep_last"] == 2
    theirs = [await quick_backup(other) for _ in range(3)]
    # The default keeps the newest backup of each day: move the oldest three days back.
    async with world.backup.db.transaction() as session:
        await session.execute(update(BackupRow).where(BackupRow.id == theirs[0][0]["id"])
                              .values(completed_at=utcnow() - timedelta(days=3)))

    await publish_and_wait(world, BackupsRetentionDue(scheduled_for=utcnow()))
    assert await statuses(world, jo, host_id) == {
        mine[3][0]["id"]: "complete", mine[2][0]["id"]: "complete",
        mine[1][0]["id"]: "forgotten", mine[0][0]["id"]: "forgotten"}
    other_id = theirs[0][0]["host_id"]
    assert await statuses(world, jo, other_id) == {
        theirs[2][0]["id"]: "complete", theirs[1][0]["id"]: "forgotten", theirs[0][0]["id"]: "complete"}

    # The collector, woken by the run, deletes the packs only forgotten backups had.
    gone = set(pack_keys(mine[0][1] + mine[1][1] + theirs[1][1]))

    async def collected():
        keys = await keys_of(world, jo, host_id) | await keys_of(world, jo, other_id)
        return not keys & gone

    await eventually(collected)
    assert set(pack_keys(mine[2][1] + mine[3][1])) <= await keys_of(world, jo, host_id)


async def test_overdue_hosts_are_flagged_once_per_episode(world):
    events = []

    async def collect(envelope):
        events.append(envelope)

    await world.stack.bus.subscribe_transient(
        [BackupOverdue.routing_key(), BackupFailed.routing_key()], collect)
    kim = await world.user("kimi")
    daily, silent = await agent_api(world, kim, "daily"), await agent_api(world, kim, "silent")
    backup, _ = await quick_backup(daily)
    status, hanging, _ = await silent.call("POST", "/api/v1/backups", json={
        "kind": "full", "sources": [{"path": "/", "type": "folder"}]})

    now = utcnow()
    await publish_and_wait(world, BackupsOverdueCheckDue(scheduled_for=now + timedelta(hours=27)))
    await eventually(lambda: len(events) == 3)
    overdue = {e.payload["host"]: e.payload for e in events if e.type == "BackupOverdue"}
    assert set(overdue) == {"daily", "silent"}
    assert overdue["silent"]["last_backup_at"] is None and overdue["daily"]["allowed_age_hours"] == 26
    [failed] = [e.payload for e in events if e.type == "BackupFailed"]
    assert failed["backup_id"] == hanging["id"] and "abandoned" in failed["reason"]
    status, hosts, _ = await kim.call("GET", "/api/v1/hosts")
    assert {h["name"]: h["state"] for h in hosts["items"]} == {"daily": "overdue", "silent": "overdue"}

    # Still overdue an hour later: no second alarm.
    await publish_and_wait(world, BackupsOverdueCheckDue(scheduled_for=now + timedelta(hours=28)))
    # A successful backup ends the episode; the next lapse is a new one.
    await quick_backup(daily)
    status, host, _ = await kim.call("GET", f"/api/v1/hosts/{backup['host_id']}")
    assert host["state"] == "ok"
    await publish_and_wait(world, BackupsOverdueCheckDue(scheduled_for=utcnow() + timedelta(hours=27)))
    await eventually(lambda: len(events) == 4)
    assert events[-1].payload["host"] == "daily"


async def test_collection_spares_open_sessions_young_packs_and_hosts_without_backups(world):
    lee = await world.user("leeroy")
    agent = await agent_api(world, lee, "server")
    kept, kept_packs = await quick_backup(agent)
    _, open_packs = await quick_backup(agent, commit=False)            # still uploading
    stray_session, stray_packs = await quick_backup(agent, commit=False)
    status, _, _ = await agent.call("POST", f"/api/v1/backups/{stray_session['id']}/fail",
                                    json={"reason": "network gone"})
    host_id = kept["host_id"]
    service = world.backup

    service.settings.gc_grace_seconds = 3600  # everything is younger than an hour
    report = await gc.collect_host(service, host_id)
    assert report.packs_deleted == 0
    service.settings.gc_grace_seconds = 0
    report = await gc.collect_host(service, host_id)
    keys = await keys_of(world, lee, host_id)
    assert report.packs_deleted == 1 and not set(pack_keys(stray_packs)) & keys
    assert set(pack_keys(kept_packs + open_packs)) <= keys

    # A host that never committed a backup is left alone, whatever lies in its prefix.
    lonely = await agent_api(world, lee, "never-committed")
    session, packs = await quick_backup(lonely, commit=False)
    await lonely.call("POST", f"/api/v1/backups/{session['id']}/fail", json={"reason": "x"})
    report = await gc.collect_host(service, session["host_id"])
    assert report.skipped and report.packs_deleted == 0
    assert set(pack_keys(packs)) <= await keys_of(world, lee, session["host_id"])


async def test_index_files_whose_packs_are_all_gone_are_collected(world):
    max_ = await world.user("max")
    agent = await agent_api(world, max_, "server")
    first, first_packs = await quick_backup(agent, packs=2)
    host_id = first["host_id"]
    # Index files declared with the packs they describe (ObjectSpec.packs).
    status, session, _ = await agent.call("POST", "/api/v1/backups", json={
        "kind": "full", "sources": [{"path": "/srv", "type": "folder"}]})
    new_pack = os.urandom(32).hex()
    only_old, mixed, undeclared = (os.urandom(32).hex() for _ in range(3))
    snapshot = os.urandom(32).hex()
    objects = [
        {"key": f"data/{new_pack[:2]}/{new_pack}", "size": 3},
        {"key": f"index/{only_old}", "size": 3, "packs": first_packs},
        {"key": f"index/{mixed}", "size": 3, "packs": [first_packs[0], new_pack]},
        {"key": f"index/{undeclared}", "size": 3},
        {"key": f"snapshots/{snapshot}", "size": 3},
    ]
    status, urls, _ = await agent.call("POST", f"/api/v1/backups/{session['id']}/upload-urls",
                                       json={"objects": objects})
    assert status == 200, urls
    for url in urls["urls"]:
        target = url["url"] if url["url"].startswith("http") else world.base + url["url"]
        async with world.http.put(target, data=b"abc", headers=url["headers"]) as response:
            assert response.status in (200, 204)
    status, second, _ = await agent.call("POST", f"/api/v1/backups/{session['id']}/commit", json={
        "snapshot_id": snapshot, "packs": [new_pack], "is_image": False, "stats": {}})
    assert status == 200, second
    status, result, _ = await max_.call("POST", f"/api/v1/hosts/{host_id}/forget", json={"keep_last": 1})
    assert result["forgotten"] == [first["id"]]
    await eventually(lambda: _gone(world, max_, host_id, f"index/{only_old}"))
    keys = await keys_of(world, max_, host_id)
    assert not set(pack_keys(first_packs)) & keys
    assert {f"index/{mixed}", f"index/{undeclared}", f"data/{new_pack[:2]}/{new_pack}"} <= keys


async def _gone(world, user, host_id, key) -> bool:
    return key not in await keys_of(world, user, host_id)


async def test_the_catalogue_is_rebuilt_from_the_bucket_alone(world, tmp_path):
    ann, ben = await world.user("ann"), await world.user("ben")
    store = await world.agent(ann, "files")
    source = make_tree(tmp_path / "src", seed=8, files=3)
    real, result, _, _ = await backup_folder(store, source)
    y = await agent_api(world, ann, "mail")
    quick = [await quick_backup(y) for _ in range(3)]
    z = await agent_api(world, ben, "files")
    await quick_backup(z, packs=3)
    failed, _ = await quick_backup(z, commit=False)
    await z.call("POST", f"/api/v1/backups/{failed['id']}/fail", json={"reason": "x"})
    await ann.call("POST", f"/api/v1/hosts/{quick[0][0]['host_id']}/forget", json={"keep_last": 2})
    forgotten_pack = pack_keys(quick[0][1])[0]  # deleted after the record and the snapshot
    await eventually(lambda: _gone(world, ann, quick[0][0]["host_id"], forgotten_pack))

    before = {u.user_id: await _catalogue(u) for u in (ann, ben)}
    packs_before = await _pack_refs(world)
    async with world.backup.db.transaction() as session:
        for table in (IndexPackRow, BackupPackRow, UploadRow, BackupRow, HostRow):
            await session.execute(delete(table))
    assert (await ann.call("GET", "/api/v1/hosts"))[1]["items"] == []

    report = await catalog.rebuild(world.backup.db, world.backup.store)
    assert (report.hosts, report.backups, report.skipped) == (3, 1 + 2 + 1, [])
    after = {u.user_id: await _catalogue(u) for u in (ann, ben)}
    # Failed sessions are not in the bucket: ben's host was failing, and is simply ok now.
    assert before[ben.user_id]["hosts"][0].pop("state") == "failing"
    assert after[ben.user_id]["hosts"][0].pop("state") == "ok"
    for user in before:
        assert after[user] == before[user], user
    assert await _pack_refs(world) == packs_before
    # Running it again adds nothing.
    assert (await catalog.rebuild(world.backup.db, world.backup.store)).backups == 0

    # Retention works from the rebuilt references: collecting keeps what the backup needs.
    await ann.call("POST", f"/api/v1/hosts/{real.host_id}/forget", json={"keep_last": 5})
    report = await gc.collect_host(world.backup, real.host_id)
    assert report.packs_deleted == 0
    await restore(store, result.snapshot_id, tmp_path / "out")
    assert describe(tmp_path / "out" / "src") == describe(source)


async def _catalogue(user: Api) -> dict:
    """What a user sees, minus what the bucket doesn't keep (sources, failed sessions) and
    what is measured anew (storage)."""
    status, hosts, _ = await user.call("GET", "/api/v1/hosts")
    status, backups, _ = await user.call("GET", "/api/v1/backups?limit=200")
    return {
        "hosts": [{k: v for k, v in h.items() if k != "storage_bytes"} for h in hosts["items"]],
        "backups": [{k: v for k, v in b.items() if k != "sources"}
                    for b in backups["items"] if b["status"] == "complete"],
    }


async def _pack_refs(world) -> set[tuple[str, str]]:
    async with world.backup.db.sessions() as session:
        rows = await session.execute(
            select(BackupPackRow.backup_id, BackupPackRow.pack_id).join(
                BackupRow, BackupRow.id == BackupPackRow.backup_id).where(BackupRow.status == "complete"))
        return set(rows.all())
