"""Workers die, tasks go on. The backup bucket is on S3 (moto) behind a slow line, so a
download is still under way when the test acts:

- the process running a task stops dead during downloading; after its lease lapses the
  reconcile sweep of a new process resumes the task from the chunks already written and
  completes it, with the customer's key from KMS (test_killed_process.py does the same to
  a real process on MariaDB and RabbitMQ);
- without KMS, the passphrase died with the process: the task fails saying so;
- a task cancelled while downloading stops, and its partial disk is removed;
- an S3 outage mid-download does not fail the task: it is tried again once S3 is back;
- two workers on one MariaDB database never hold one task at once."""

from __future__ import annotations

import asyncio

import aiohttp

from services.recovery import domain
from shared.events import RecoveriesReconcileDue, envelope_for, utcnow
from shared.settings import BackupSettings, RecoverySettings
from tests import infra
from tests.harness import Api, settings_for
from tests.recovery.helpers import (
    PASSPHRASE,
    Observer,
    image_backup,
    kms_key,
    make_disk,
    recovery_row,
    sha256_of,
    user,
    wait_state,
)
from tests.support import eventually, files_under

SERVICES = ["auth", "recovery", "gateway"]
LEASE = 1.0


def settings_of(mode, tmp_path, unique, slow_s3, **recovery):
    options = dict(kms_enabled=True, aws_endpoint=infra.s3_endpoint(), lease_seconds=LEASE,
                   min_free_bytes=0, progress_interval_seconds=0.05, download_concurrency=1)
    options.update(recovery)
    return settings_for(mode, tmp_path, unique, s3_endpoint=slow_s3.url,
                        backup=BackupSettings(key_prefix=f"t{unique}/"),
                        recovery=RecoverySettings(**options))


async def backup_in_s3(stack, user_id: str, disk, **options):
    """The agent's backup goes to S3 directly, not through the test's slow line."""
    writer = stack.settings.model_copy(update={"s3_endpoint": infra.s3_endpoint()})
    return await image_backup(stack, user_id, disk, writer=writer, **options)


async def downloading(stack, recovery_id: str, chunks: int):
    async def far_enough():
        row = await recovery_row(stack, recovery_id)
        assert row.state in (domain.PENDING, domain.DOWNLOADING), (row.state, row.failure_reason)
        return row if row.no_completed >= chunks else None

    return await eventually(far_enough, timeout=30)


async def sweep(stack) -> None:
    """What the scheduler sends every minute."""
    await stack.bus.publish(envelope_for(RecoveriesReconcileDue(scheduled_for=utcnow())))


async def test_a_worker_killed_while_downloading_is_resumed_where_it_stopped(
        tmp_path, unique, slow_s3, lifetimes):
    # The embedded mode restarted (`reclo up` killed and started again); on MariaDB and
    # RabbitMQ the worker is a real process killed with SIGKILL: test_killed_process.py.
    settings = settings_of("embedded", tmp_path, unique, slow_s3)
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=6)
    first = await lifetimes.start(settings, SERVICES)
    async with aiohttp.ClientSession() as session:
        api = Api(session, first.base_url)
        user_id = await user(api, f"owner-{unique}")
        backup = await backup_in_s3(first, user_id, disk, kms=kms_key())
        status, created, _ = await api.call("POST", "/api/v1/recoveries", json={
            "backup_id": backup.backup_id, "target": "local"})  # no passphrase: KMS
        assert status == 201, created
        recovery_id = created["id"]
        before = await downloading(first, recovery_id, chunks=2)

        await lifetimes.stop(first)  # the process dies mid-download
        died_at = utcnow()
        crashed = await recovery_row(first, recovery_id)  # (its engine reconnects to read)
        assert crashed.state == domain.DOWNLOADING and crashed.lease_owner is not None
        assert crashed.no_completed >= before.no_completed
        assert crashed.no_completed < crashed.no_downloads

        second = await lifetimes.start(settings, SERVICES)
        observer = await Observer().start(second.bus)
        await sweep(second)  # too early: the dead worker's lease has not lapsed yet
        await asyncio.sleep(LEASE)
        await sweep(second)
        token, api = api.token, Api(session, second.base_url)
        api.token = token  # the session outlives the process: auth keeps it in its database
        ready = await wait_state(api, recovery_id, ["finishing", "failed"])
        assert ready["state"] == "finishing", ready["failure_reason"]
        assert ready["image_sha256"] == sha256_of(disk)

        resumed = await recovery_row(second, recovery_id)
        assert resumed.attempts == 2 and resumed.lease_owner is None
        # The dead process's outbox is relayed by the new one too: its words are older.
        downloads = [e for e in observer.of(recovery_id, "RecoveryProgressed", since=died_at)
                     if e["state"] == "downloading"]
        # Not started over: the new worker's first word is at or past the checkpoint.
        assert downloads[0]["state_progress"] >= crashed.state_progress > 0


async def test_a_passphrase_dies_with_its_worker(tmp_path, unique, slow_s3, lifetimes):
    settings = settings_of("embedded", tmp_path, unique, slow_s3, kms_enabled=False)
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=6)
    first = await lifetimes.start(settings, SERVICES)
    async with aiohttp.ClientSession() as session:
        api = Api(session, first.base_url)
        user_id = await user(api, f"owner-{unique}")
        backup = await backup_in_s3(first, user_id, disk)
        status, created, _ = await api.call("POST", "/api/v1/recoveries", json={
            "backup_id": backup.backup_id, "target": "local", "passphrase": PASSPHRASE})
        assert status == 201, created
        await downloading(first, created["id"], chunks=1)
        await lifetimes.stop(first)
        scratch = settings.data_dir / "recovery" / "scratch" / created["id"]
        assert (scratch / "disk.raw").is_file()  # kept for whoever resumes

        second = await lifetimes.start(settings, SERVICES)
        await asyncio.sleep(LEASE)
        await sweep(second)
        token, api = api.token, Api(session, second.base_url)
        api.token = token
        failed = await wait_state(api, created["id"], ["failed", "finishing"])
        assert failed["failure_reason"] == domain.PASSPHRASE_NEEDED_AGAIN
        await eventually(lambda: not scratch.exists())


async def test_a_task_cancelled_while_downloading_stops_and_leaves_nothing(
        tmp_path, unique, slow_s3, lifetimes):
    settings = settings_of("embedded", tmp_path, unique, slow_s3)
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=6)
    stack = await lifetimes.start(settings, SERVICES)
    observer = await Observer().start(stack.bus)
    async with aiohttp.ClientSession() as session:
        api = Api(session, stack.base_url)
        user_id = await user(api, f"owner-{unique}")
        backup = await backup_in_s3(stack, user_id, disk, kms=kms_key())
        status, created, _ = await api.call("POST", "/api/v1/recoveries", json={
            "backup_id": backup.backup_id, "target": "local"})
        assert status == 201, created
        recovery_id = created["id"]
        await downloading(stack, recovery_id, chunks=1)

        status, cancelled, _ = await api.call("POST", f"/api/v1/recoveries/{recovery_id}/cancel")
        assert status == 200, cancelled
        assert cancelled["state"] == "failed"
        assert cancelled["failure_reason"] == "cancelled by the user"
        worker = stack.runtimes["recovery"].context.worker
        await eventually(lambda: recovery_id not in worker.runs)
        row = await recovery_row(stack, recovery_id)
        assert not row.cleanup_pending and row.lease_owner is None
        assert row.no_completed < row.no_downloads  # it really was stopped half-way
        root = settings.data_dir / "recovery"
        assert files_under(root) == []
        reasons = await eventually(lambda: observer.of(recovery_id, "RecoveryFailed"))
        assert [e["reason"] for e in reasons] == ["cancelled by the user"]
        # Nothing happens after: no import, no progress once cancelled.
        await asyncio.sleep(0.5)
        assert observer.of(recovery_id, "ImportCompleted") == []
        later = [e for e in observer.envelopes if e.type == "RecoveryProgressed"
                 and e.payload["recovery_id"] == recovery_id]
        assert all(e.occurred_at <= row.updated_at for e in later)


async def test_an_object_store_outage_is_waited_out(tmp_path, unique, slow_s3, lifetimes):
    settings = settings_of("embedded", tmp_path, unique, slow_s3)
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=6)
    stack = await lifetimes.start(settings, SERVICES)
    async with aiohttp.ClientSession() as session:
        api = Api(session, stack.base_url)
        user_id = await user(api, f"owner-{unique}")
        backup = await backup_in_s3(stack, user_id, disk, kms=kms_key())
        status, created, _ = await api.call("POST", "/api/v1/recoveries", json={
            "backup_id": backup.backup_id, "target": "local"})
        assert status == 201, created
        recovery_id = created["id"]
        await downloading(stack, recovery_id, chunks=1)

        await slow_s3.stop()  # S3 goes away mid-download

        async def waiting():
            row = await recovery_row(stack, recovery_id)
            return row if row.state_message.startswith("retrying after an error") else None

        row = await eventually(waiting, timeout=30)
        assert row.state == domain.DOWNLOADING and row.failure_reason is None
        # The run ends just after writing that message; a sweep before then finds it still
        # held and skips it. The scheduler sweeps every minute; here, every second until done.
        worker = stack.runtimes["recovery"].context.worker
        await eventually(lambda: recovery_id not in worker.runs)
        await slow_s3.start()

        async def sweeping() -> None:
            while True:
                await sweep(stack)
                await asyncio.sleep(1)

        sweeps = asyncio.ensure_future(sweeping())
        try:
            ready = await wait_state(api, recovery_id, ["finishing", "failed"])
        finally:
            sweeps.cancel()
        assert ready["state"] == "finishing", ready["failure_reason"]
        assert ready["image_sha256"] == sha256_of(disk)
        assert (await recovery_row(stack, recovery_id)).attempts == 2
