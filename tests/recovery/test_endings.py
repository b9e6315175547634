"""How tasks end besides completing: the 24-hour timeout (RecoveriesTimeoutDue) and a
machine instances could not start (InstanceLaunchFailed) fail the task with the reason and
remove its image; a complete task is left alone, and news about tasks that are over is
ignored."""

from __future__ import annotations

from datetime import timedelta

import aiohttp
import pytest
from sqlalchemy import select

from shared.events import (
    InstanceLaunchFailed,
    InstanceReady,
    RecoveriesTimeoutDue,
    envelope_for,
    utcnow,
)
from shared.settings import RecoverySettings
from tests.harness import Api, running_stack, settings_for
from tests.recovery.helpers import PASSPHRASE, Observer, image_backup, make_disk, user, wait_state
from tests.support import eventually


@pytest.fixture
async def env(tmp_path, unique):
    settings = settings_for("embedded", tmp_path, unique, recovery=RecoverySettings(
        min_free_bytes=0, progress_interval_seconds=0.05))
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=2)
    async with running_stack(settings, ["auth", "recovery", "gateway"]) as (stack, base), \
            aiohttp.ClientSession() as session:
        api = Api(session, base)
        user_id = await user(api, f"owner-{unique}")
        backup = await image_backup(stack, user_id, disk)

        async def finishing() -> str:
            status, created, _ = await api.call("POST", "/api/v1/recoveries", json={
                "backup_id": backup.backup_id, "target": "local", "passphrase": PASSPHRASE})
            assert status == 201, created
            body = await wait_state(api, created["id"], ["finishing", "failed"])
            assert body["state"] == "finishing", body["failure_reason"]
            return created["id"]

        yield stack, api, user_id, finishing


async def handled(stack, event) -> None:
    """Publish ``event`` and wait until recovery handled it (its inbox has the id)."""
    from services.recovery.tables import inbox

    envelope = envelope_for(event)
    await stack.bus.publish(envelope)
    db = stack.runtimes["recovery"].db

    async def seen():
        async with db.sessions() as session:
            return await session.scalar(select(inbox.c.event_id).where(
                inbox.c.event_id == str(envelope.id)))

    await eventually(seen)


def images(stack) -> list[str]:
    folder = stack.settings.data_dir / "recovery" / "images"
    return sorted(p.name for p in folder.iterdir())


async def test_tasks_older_than_a_day_fail_and_complete_ones_stay(env):
    stack, api, user_id, finishing = env
    done, stuck = await finishing(), await finishing()
    await stack.bus.publish(envelope_for(InstanceReady(
        instance_id="i-1", user_id=user_id, recovery_id=done)))
    await wait_state(api, done, "complete")
    observer = await Observer().start(stack.bus)

    # A tick scheduled for a day later: a day has passed as far as the sweep is concerned.
    await stack.bus.publish(envelope_for(RecoveriesTimeoutDue(
        scheduled_for=utcnow() + timedelta(hours=24, minutes=1))))
    failed = await wait_state(api, stuck, "failed")
    assert failed["failure_reason"] == "the recovery did not finish within 24 hours"
    await eventually(lambda: images(stack) == [f"{done}.raw"])
    assert (await wait_state(api, done, "complete"))["state"] == "complete"
    reported = await eventually(lambda: observer.of(stuck, "RecoveryFailed"))
    assert reported[0]["reason"] == failed["failure_reason"]

    # A tick for now finds nothing that old.
    fresh = await finishing()
    await handled(stack, RecoveriesTimeoutDue(scheduled_for=utcnow()))
    assert (await wait_state(api, fresh, "finishing"))["state"] == "finishing"


async def test_a_machine_that_cannot_start_fails_the_task(env):
    stack, api, user_id, finishing = env
    recovery_id = await finishing()
    await stack.bus.publish(envelope_for(InstanceLaunchFailed(
        recovery_id=recovery_id, user_id=user_id, reason="QEMU is not installed on this host")))
    failed = await wait_state(api, recovery_id, "failed")
    assert failed["failure_reason"] == \
        "the machine could not be started: QEMU is not installed on this host"
    await eventually(lambda: images(stack) == [])
    status, body, _ = await api.call("GET", f"/api/v1/recoveries/{recovery_id}/image")
    assert status == 409

    # Late news about a task that is over changes nothing.
    await handled(stack, InstanceReady(instance_id="i-late", user_id=user_id,
                                       recovery_id=recovery_id))
    await handled(stack, InstanceReady(instance_id="i-none", user_id=user_id,
                                       recovery_id="no-such-recovery"))
    status, body, _ = await api.call("GET", f"/api/v1/recoveries/{recovery_id}")
    assert body["state"] == "failed" and body["instance_id"] is None
