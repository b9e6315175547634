"""The recovery worker as a real process (`reclo serve recovery`, as a container runs it) on
MariaDB and RabbitMQ, killed with SIGKILL in the middle of a download: no clean-up code
runs, its lease simply stops being renewed. After the lease lapses, another worker's
reconcile sweep takes the task and finishes it from the chunks already on disk."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid

import aiohttp
from pydantic import SecretStr

from services.recovery import domain
from services.recovery.tables import RecoverableBackupRow, RecoveryRow
from shared.db import Database
from shared.format import Source
from shared.format.snapshot import IMAGE
from shared.settings import Settings
from tests import infra
from tests.harness import Api
from tests.recovery.helpers import (
    announce_backup,
    kms_key,
    make_disk,
    sha256_of,
    user,
    write_backup,
)
from tests.recovery.test_resume import LEASE, settings_of, sweep
from tests.support import eventually

# Start-up imports everything and migrates: seconds normally, more on a busy machine.
START_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(settings: Settings) -> dict[str, str]:
    """The process's configuration: the test's settings as RECLO_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECLO_")}
    own = settings.recovery
    env.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RECLO_DATA_DIR": str(settings.data_dir),
        "RECLO_DATABASE_URL": settings.database_url.get_secret_value(),
        "RECLO_DATABASE_PREFIX": settings.database_prefix,
        "RECLO_BUS_URL": settings.bus_url.get_secret_value(),
        "RECLO_BUS__QUEUE_PREFIX": settings.bus.queue_prefix,
        "RECLO_BUS__EXCHANGE": settings.bus.exchange,
        "RECLO_BUS__RETRY_DELAYS": str(list(settings.bus.retry_delays)),
        "RECLO_INTERNAL_KEY": settings.internal_key.get_secret_value(),
        "RECLO_S3_ENDPOINT": settings.s3_endpoint,
        "RECLO_BACKUP__KEY_PREFIX": settings.backup.key_prefix,
        "RECLO_RECOVERY__PORT": str(own.port),
        "RECLO_RECOVERY__KMS_ENABLED": "true",
        "RECLO_RECOVERY__AWS_ENDPOINT": own.aws_endpoint,
        "RECLO_RECOVERY__LEASE_SECONDS": str(own.lease_seconds),
        "RECLO_RECOVERY__MIN_FREE_BYTES": "0",
        "RECLO_RECOVERY__PROGRESS_INTERVAL_SECONDS": str(own.progress_interval_seconds),
        "RECLO_RECOVERY__DOWNLOAD_CONCURRENCY": str(own.download_concurrency),
        "RECLO_LOG_FORMAT": "json",
    })
    return env


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


async def test_a_worker_process_killed_mid_download_is_resumed(
        tmp_path, unique, slow_s3, lifetimes):
    settings = settings_of("mariadb", tmp_path, unique, slow_s3)
    settings.internal_key = SecretStr(os.urandom(32).hex())
    settings.recovery.port = free_port()
    front = await lifetimes.start(settings, ["auth", "gateway"])
    log = open(tmp_path / "recovery.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "recovery", "--migrate"],
        env=environment(settings), stdout=log, stderr=subprocess.STDOUT)
    db = Database(settings.database_url_for("recovery"))
    try:
        await eventually(lambda: process.poll() is None and ready(settings.recovery.port),
                         timeout=START_SECONDS, interval=0.2)
        disk = make_disk(tmp_path / "source", size_mib=16, data_mib=6)
        async with aiohttp.ClientSession() as session:
            api = Api(session, front.base_url)
            user_id = await user(api, f"owner-{unique}")
            # The agent's backup, straight to S3, announced as the backup service would.
            host_id = uuid.uuid4().hex
            direct = settings.model_copy(update={"s3_endpoint": infra.s3_endpoint()})
            snapshot = await write_backup(direct, front.key, user_id, host_id,
                                          [Source(str(disk), IMAGE)], kms=kms_key())
            backup_id = await announce_backup(front.bus, user_id=user_id, host_id=host_id,
                                              snapshot_id=snapshot)

            async def known():
                async with db.sessions() as s:
                    return await s.get(RecoverableBackupRow, backup_id)

            await eventually(known, timeout=10)
            status, created, _ = await api.call("POST", "/api/v1/recoveries", json={
                "backup_id": backup_id, "target": "local"})
            assert status == 201, created
            recovery_id = created["id"]

            async def row():
                async with db.sessions() as s:
                    return await s.get(RecoveryRow, recovery_id)

            async def mid_download():
                r = await row()
                assert r.state in (domain.PENDING, domain.DOWNLOADING), r.failure_reason
                return r if r.no_completed >= 2 else None

            await eventually(mid_download, timeout=30)
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=10) == -signal.SIGKILL
            killed = await row()
            assert killed.state == domain.DOWNLOADING and killed.lease_owner is not None
            assert 2 <= killed.no_completed < killed.no_downloads
            assert (settings.data_dir / "recovery" / "scratch" / recovery_id / "disk.raw").exists()

            heir = await lifetimes.start(settings, ["recovery"])
            await asyncio.sleep(LEASE)
            await sweep(heir)

            async def finished():
                r = await row()
                assert r.state != domain.FAILED, r.failure_reason
                return r if r.state == domain.FINISHING else None

            done = await eventually(finished, timeout=60)
            assert done.attempts == 2 and done.image_sha256 == sha256_of(disk)
            assert done.no_completed == done.no_downloads
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        await db.dispose()

