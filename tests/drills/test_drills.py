"""Recovery drills on the embedded stack (SQLite, the in-process bus), with KMS on moto and
the backups in a local folder store where a test can damage a pack:

- a good image backup: the drill passes, DrillPassed is sent, the scratch disk is gone;
- a corrupted pack: the drill fails naming the pack, DrillFailed carries the same words;
- a redelivered tick, or the same tick sent twice, makes one drill per host; the next
  week's tick makes another, listed first;
- a host whose repository has no KMS key slot is skipped with the reason, no event (and
  every host, where the server has no KMS); a host with only file backups gets no drill;
  a host's newest image backup is the one drilled;
- a drill that cannot run (no scratch space) waits to try again, then fails saying so;
- another user sees none of it.
"""

from __future__ import annotations

import uuid

import aiohttp
import pytest
from sqlalchemy import select, update

from services.recovery.drills import MAX_ATTEMPTS
from services.recovery.tables import DrillRow
from shared.events import RecoveriesReconcileDue, envelope_for, utcnow
from shared.format import Source
from shared.settings import RecoverySettings
from tests import infra
from tests.drills.helpers import DrillEvents, corrupt_a_chunk, drills, finished, tick, week
from tests.harness import Api, running_stack, settings_for
from tests.recovery.helpers import (
    announce_backup,
    backup_of,
    image_backup,
    kms_key,
    known_to_recovery,
    make_disk,
    user,
    write_backup,
)
from tests.support import eventually, files_under

SERVICES = ["auth", "recovery", "gateway"]


@pytest.fixture
def disk(tmp_path):
    return make_disk(tmp_path / "source", size_mib=16, data_mib=4)


@pytest.fixture
async def env(tmp_path, unique, aws_credentials, request):
    recovery = dict(kms_enabled=True, aws_endpoint=infra.s3_endpoint(), min_free_bytes=0)
    recovery.update(getattr(request, "param", {}))
    settings = settings_for("embedded", tmp_path, unique,
                            recovery=RecoverySettings(**recovery))
    async with running_stack(settings, SERVICES) as (stack, base), \
            aiohttp.ClientSession() as session:
        api = Api(session, base)
        stack.user_id = await user(api, f"owner-{unique}")
        stack.events = await DrillEvents().start(stack.bus)
        yield stack, api


def scratch(stack) -> list[str]:
    """Whatever a drill left in the scratch folder."""
    root = stack.settings.data_dir / "recovery" / "scratch" / "drills"
    return files_under(root, folders=True)


async def test_a_good_backup_passes_and_leaves_nothing(env, disk):
    stack, api = env
    backup = await image_backup(stack, stack.user_id, disk, kms=kms_key())
    await stack.bus.publish(tick(week(0)))

    [drill] = await finished(api, 1)
    assert drill["state"] == "passed", drill["reason"]
    assert drill["ok"] is True and drill["reason"] is None
    assert drill["backup_id"] == backup.backup_id and drill["host_id"] == backup.host_id
    assert drill["snapshot_id"] == backup.snapshot_id
    assert drill["scheduled_for"].startswith("2026-11-01T05:00:00")
    assert drill["disk_bytes"] == disk.stat().st_size
    assert 0 < drill["data_bytes"] < drill["disk_bytes"]  # free space stayed holes
    assert drill["chunks_verified"] > 1
    assert drill["duration_seconds"] > 0 and drill["started_at"] <= drill["finished_at"]

    [passed] = await eventually(lambda: stack.events.of(drill["id"]))
    assert passed == {"type": "DrillPassed", "drill_id": drill["id"],
                      "user_id": stack.user_id, "host_id": backup.host_id,
                      "backup_id": backup.backup_id,
                      "duration_seconds": drill["duration_seconds"]}
    assert (stack.settings.data_dir / "recovery" / "scratch" / "drills").is_dir()  # was used
    assert scratch(stack) == []

    status, one, _ = await api.call("GET", f"/api/v1/drills/{drill['id']}")
    assert status == 200 and one == drill


async def test_a_corrupted_pack_fails_naming_it(env, disk):
    stack, api = env
    backup = await image_backup(stack, stack.user_id, disk, kms=kms_key())
    pack_id, offset = await corrupt_a_chunk(stack.settings, stack.key, backup)
    await stack.bus.publish(tick(week(0)))

    [drill] = await finished(api, 1)
    assert drill["state"] == "failed" and drill["ok"] is False
    assert drill["reason"].startswith(
        "the backup is damaged and cannot become a disk: corrupt blob in pack "
        f"{pack_id} at offset {offset}: authentication failed (the chunk at disk offset ")
    [failed] = await eventually(lambda: stack.events.of(drill["id"]))
    assert failed["type"] == "DrillFailed" and failed["reason"] == drill["reason"]
    assert failed["backup_id"] == backup.backup_id and failed["user_id"] == stack.user_id
    assert scratch(stack) == []


async def test_one_drill_per_host_per_tick(env, disk):
    stack, api = env
    first = await image_backup(stack, stack.user_id, disk, kms=kms_key())
    second = await image_backup(stack, stack.user_id, disk, kms=kms_key())
    sunday = tick(week(0))
    await stack.bus.publish(sunday)
    await stack.bus.publish(sunday)  # redelivered: the same event again
    await stack.bus.publish(tick(week(0)))  # the same tick sent twice (two schedulers)

    drilled = await finished(api, 2)
    assert sorted(d["host_id"] for d in drilled) == sorted([first.host_id, second.host_id])
    assert {d["state"] for d in drilled} == {"passed"}
    # Run one after the other (one drill slot per worker), each reported once.
    a, b = sorted(drilled, key=lambda d: d["started_at"])
    assert a["finished_at"] <= b["started_at"]
    for d in drilled:
        assert [e["type"] for e in await eventually(lambda d=d: stack.events.of(d["id"]))] \
            == ["DrillPassed"]

    # Next week's tick, with a third host by then: a new drill per host, listed first.
    third = await image_backup(stack, stack.user_id, disk, kms=kms_key())
    await stack.bus.publish(tick(week(1)))
    drilled = await finished(api, 5)
    assert [d["scheduled_for"][:10] for d in drilled] == ["2026-11-08"] * 3 + ["2026-11-01"] * 2
    assert third.host_id in {d["host_id"] for d in drilled[:3]}
    await eventually(lambda: len(stack.events.seen) == 5)

    status, body, _ = await api.call("GET", "/api/v1/drills?limit=3")
    assert status == 200 and len(body["items"]) == 3
    status, rest, _ = await api.call("GET", f"/api/v1/drills?limit=3&cursor={body['next_cursor']}")
    assert status == 200 and rest["next_cursor"] is None
    assert [d["id"] for d in body["items"] + rest["items"]] == [d["id"] for d in drilled]


async def test_the_newest_image_backup_of_each_host_is_drilled(env, disk, tmp_path):
    stack, api = env
    old = await image_backup(stack, stack.user_id, disk, kms=kms_key())
    # The same host backs up again: that backup is the one drilled.
    snapshot = await write_backup(stack.settings, stack.key, stack.user_id, old.host_id,
                                  [Source(str(disk), "image")], kms=kms_key())
    newest = await announce_backup(stack.bus, user_id=stack.user_id, host_id=old.host_id,
                                   snapshot_id=snapshot)
    await known_to_recovery(stack, newest)
    # A host with file backups only has nothing a drill could recover.
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("files, not a disk")
    await backup_of(stack, stack.user_id, [Source(str(folder))], is_image=False,
                    kms=kms_key())
    await stack.bus.publish(tick(week(0)))

    [drill] = await finished(api, 1)
    assert drill["state"] == "passed", drill["reason"]
    assert drill["backup_id"] == newest and drill["host_id"] == old.host_id


async def test_a_host_without_a_kms_slot_is_skipped(env, disk):
    stack, api = env
    backup = await image_backup(stack, stack.user_id, disk)  # passphrase only
    await stack.bus.publish(tick(week(0)))

    [drill] = await finished(api, 1)
    assert drill["state"] == "skipped" and drill["ok"] is None
    assert drill["reason"] == ("skipped: needs the passphrase (enable server-side recovery "
                               "with KMS)")
    assert drill["backup_id"] == backup.backup_id and drill["chunks_verified"] is None
    # Nothing was proven, and nothing found wrong: no DrillFailed, no alarm.
    assert await drill_events_sent(stack) == []
    assert scratch(stack) == []


@pytest.mark.parametrize("env", [{"kms_enabled": False}], indirect=True)
async def test_without_kms_on_the_server_every_drill_is_skipped(env, disk):
    stack, api = env
    await image_backup(stack, stack.user_id, disk, kms=kms_key())
    await stack.bus.publish(tick(week(0)))
    [drill] = await finished(api, 1)
    assert drill["state"] == "skipped" and drill["reason"] == (
        "skipped: needs the passphrase (server-side recovery with KMS is not enabled on "
        "this server)")
    assert await drill_events_sent(stack) == []


@pytest.mark.parametrize("env", [{"min_free_bytes": 1 << 50}], indirect=True)
async def test_a_drill_that_cannot_run_waits_then_gives_up_saying_why(env, disk):
    # No scratch space is ReClo's problem, not the backup's: the drill waits to try again
    # (nobody is alarmed), and after its last attempt fails saying whose problem it is.
    stack, api = env
    await image_backup(stack, stack.user_id, disk, kms=kms_key())
    await stack.bus.publish(tick(week(0)))

    async def waiting():
        found = await drills(api)  # the tick's drill may not be planned yet
        if len(found) != 1:
            return None
        [drill] = found
        return drill if drill["state"] == "pending" and drill["reason"] else None

    drill = await eventually(waiting)
    assert len(await drills(api)) == 1
    assert drill["reason"].startswith("waiting to try again after a problem on ReClo's side: "
                                      "not enough free disk space on the recovery worker")
    row = await drill_row(stack, drill["id"])
    assert row.attempts == 1 and row.lease_until > utcnow()  # not before the wait is over
    assert await drill_events_sent(stack) == [] and scratch(stack) == []

    # Its last attempt, once the wait is over (the every-minute sweep takes it).
    async with stack.runtimes["recovery"].db.transaction() as session:
        await session.execute(update(DrillRow).where(DrillRow.id == drill["id"]).values(
            attempts=MAX_ATTEMPTS - 1, lease_until=utcnow()))
    await stack.bus.publish(envelope_for(RecoveriesReconcileDue(scheduled_for=utcnow())))
    [drill] = await finished(api, 1)
    assert drill["state"] == "failed" and drill["reason"].startswith(
        f"the drill could not be completed in {MAX_ATTEMPTS} attempts (a problem on ReClo's "
        "side, not necessarily the backup's); the last error: not enough free disk space")
    assert await drill_events_sent(stack) == ["recovery.drill_failed"]


async def drill_row(stack, drill_id: str) -> DrillRow:
    async with stack.runtimes["recovery"].db.sessions() as session:
        return await session.get(DrillRow, drill_id)


async def drill_events_sent(stack) -> list[str]:
    """Drill events recovery ever queued for publishing (its outbox): what was sent, or
    is about to be, whatever the timing of the relay."""
    runtime = stack.runtimes["recovery"]
    outbox = runtime.outbox.table
    async with runtime.db.sessions() as session:
        return list((await session.scalars(select(outbox.c.routing_key).where(
            outbox.c.routing_key.like("recovery.drill%")))).all())


async def test_another_user_sees_none_of_it(env, disk, unique):
    stack, api = env
    backup = await image_backup(stack, stack.user_id, disk, kms=kms_key())
    await stack.bus.publish(tick(week(0)))
    [drill] = await finished(api, 1)
    assert await drills(api, host=backup.host_id) == [drill]
    assert await drills(api, host="fileserver") == [drill]  # by name too
    assert await drills(api, host=uuid.uuid4().hex) == []

    other = Api(api.session, api.base)
    await user(other, f"someone-else-{unique}")
    assert await drills(other) == []
    assert await drills(other, host=backup.host_id) == []
    status, body, _ = await other.call("GET", f"/api/v1/drills/{drill['id']}")
    assert status == 404 and body["detail"] == "no such drill"
    status, body, _ = await Api(api.session, api.base).call("GET", "/api/v1/drills")
    assert status == 401
