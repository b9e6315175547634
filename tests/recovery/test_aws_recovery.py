"""Recoveries into EC2, end to end in the embedded mode: the disk is assembled, converted to a
stream-optimized VMDK, uploaded with S3 multipart to the import bucket (moto), imported with
ImportImage and polled with DescribeImportImageTasks (botocore's Stubber on a real boto3
client, as moto has no VM Import), and handed to instances as an AMI. An import AWS fails
shows AWS's words and leaves no object behind; a worker killed while importing is resumed
by polling the same import again, never by starting a second one."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from botocore.stub import ANY

from shared.events import InstanceReady, envelope_for
from shared.settings import RecoverySettings
from tests import infra
from tests.harness import Api, settings_for
from tests.recovery.helpers import (
    PASSPHRASE,
    Observer,
    image_backup,
    make_disk,
    recovery_row,
    user,
    wait_state,
)
from tests.recovery.test_providers import AMI, TASK_ID, Ec2Stub, make_role, s3_keys
from tests.recovery.test_resume import sweep
from tests.support import eventually

SERVICES = ["auth", "recovery", "gateway"]


@pytest.fixture
def settings(tmp_path, unique, aws_credentials):
    return settings_for("embedded", tmp_path, unique, recovery=RecoverySettings(
        targets=("local", "aws"), aws_endpoint=infra.s3_endpoint(),
        import_bucket=f"reclo-imported-vms-{unique}", vmimport_role=make_role(f"vmimport-{unique}"),
        upload_part_bytes=5 << 20, import_poll_seconds=0.02, lease_seconds=1.0,
        min_free_bytes=0, progress_interval_seconds=0.05))


async def start(lifetimes, settings) -> tuple:
    stack = await lifetimes.start(settings, SERVICES)
    stub = Ec2Stub()
    stack.runtimes["recovery"].context.providers["aws"].ec2 = stub.client
    return stack, stub


def expect_import(stub: Ec2Stub, recovery_id: str, user_id: str, bucket: str) -> None:
    stub.stubber.add_response("import_image", {
        "ImportTaskId": TASK_ID, "Status": "active", "Progress": "0"}, {
        "ClientToken": recovery_id, "Description": ANY, "RoleName": ANY,
        "DiskContainers": [{"Description": ANY, "Format": "VMDK", "UserBucket": {
            "S3Bucket": bucket, "S3Key": f"{user_id}/{recovery_id}/disk.vmdk"}}],
        "TagSpecifications": [{"ResourceType": "import-image-task", "Tags": [
            {"Key": "reclo:recovery-id", "Value": recovery_id}]}]})


async def requested(api: Api, backup_id: str) -> str:
    status, created, _ = await api.call("POST", "/api/v1/recoveries", json={
        "backup_id": backup_id, "target": "aws", "instance_type": "m6i.large",
        "passphrase": PASSPHRASE})
    assert status == 201, created
    assert created["format"] == "vmdk" and created["instance_type"] == "m6i.large"
    return created["id"]


async def test_an_aws_recovery_ends_as_an_ami(settings, lifetimes, tmp_path, unique):
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=6)
    stack, stub = await start(lifetimes, settings)
    bucket = settings.recovery.import_bucket
    observer = await Observer().start(stack.bus)
    async with aiohttp.ClientSession() as session:
        api = Api(session, stack.base_url)
        user_id = await user(api, f"owner-{unique}")
        backup = await image_backup(stack, user_id, disk)
        recovery_id = await requested(api, backup.backup_id)
        expect_import(stub, recovery_id, user_id, bucket)
        stub.describe("active", "25", "converting")
        stub.describe("active", "60", "updating")
        stub.describe("completed", "100", image=AMI)

        ready = await wait_state(api, recovery_id, ["finishing", "failed"])
        assert ready["state"] == "finishing", ready["failure_reason"]
        assert ready["image_ref"] == AMI and ready["image_url"] is None
        stub.done()
        assert s3_keys(bucket) == []  # the AMI holds the disk now: the upload is deleted

        imported = await eventually(lambda: observer.of(recovery_id, "ImportCompleted"))
        assert imported[0]["provider"] == "aws" and imported[0]["image_ref"] == AMI
        importing = [e for e in observer.of(recovery_id, "RecoveryProgressed")
                     if e["state"] == "importing"]
        assert {"converting", "updating"} <= {e["message"] for e in importing}
        uploading = [e for e in observer.of(recovery_id, "RecoveryProgressed")
                     if e["message"] == "uploading the disk"]
        assert uploading, "the upload reports its progress"

        await stack.bus.publish(envelope_for(InstanceReady(
            instance_id="i-0abc", user_id=user_id, recovery_id=recovery_id)))
        done = await wait_state(api, recovery_id, "complete")
        assert done["instance_id"] == "i-0abc"


async def test_an_import_aws_refuses_fails_with_aws_words_and_leaves_nothing(
        settings, lifetimes, tmp_path, unique):
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=4)
    stack, stub = await start(lifetimes, settings)
    bucket = settings.recovery.import_bucket
    async with aiohttp.ClientSession() as session:
        api = Api(session, stack.base_url)
        user_id = await user(api, f"owner-{unique}")
        backup = await image_backup(stack, user_id, disk)
        recovery_id = await requested(api, backup.backup_id)
        expect_import(stub, recovery_id, user_id, bucket)
        stub.describe("active", "10", "pending")
        words = "ClientError: Unknown OS / Missing OS files."
        stub.describe("deleted", message=words)
        stub.describe("deleted", message=words)  # the cleanup looks for an AMI to remove
        stub.cancel(already_done=True)

        failed = await wait_state(api, recovery_id, ["failed", "finishing"])
        assert failed["failure_reason"] == f"the import failed: {words}"
        await eventually(lambda: s3_keys(bucket) == [])
        row = await eventually(lambda: _cleaned(stack, recovery_id))
        assert row.import_ref == TASK_ID
        stub.done()
        assert not (settings.data_dir / "recovery" / "scratch" / recovery_id).exists()


async def test_a_worker_killed_while_importing_polls_the_same_import_again(
        settings, lifetimes, tmp_path, unique):
    settings.recovery.import_poll_seconds = 0.3
    disk = make_disk(tmp_path / "source", size_mib=16, data_mib=4)
    first, stub = await start(lifetimes, settings)
    bucket = settings.recovery.import_bucket
    async with aiohttp.ClientSession() as session:
        api = Api(session, first.base_url)
        user_id = await user(api, f"owner-{unique}")
        backup = await image_backup(first, user_id, disk)
        recovery_id = await requested(api, backup.backup_id)
        expect_import(stub, recovery_id, user_id, bucket)
        for _ in range(20):
            stub.describe("active", "40", "converting")
        importing = await wait_state(api, recovery_id, "importing")
        await eventually(lambda: _polled(first, recovery_id))
        await lifetimes.stop(first)
        assert importing["state"] == "importing"

        second, stub = await start(lifetimes, settings)
        stub.describe("completed", "100", image=AMI)  # polled again; no ImportImage twice
        await asyncio.sleep(settings.recovery.lease_seconds)
        await sweep(second)
        api2 = Api(session, second.base_url)
        api2.token = api.token
        ready = await wait_state(api2, recovery_id, ["finishing", "failed"])
        assert ready["state"] == "finishing" and ready["image_ref"] == AMI
        stub.done()
        assert s3_keys(bucket) == []


async def _cleaned(stack, recovery_id):
    row = await recovery_row(stack, recovery_id)
    return row if not row.cleanup_pending else None


async def _polled(stack, recovery_id):
    row = await recovery_row(stack, recovery_id)
    return row.import_ref == TASK_ID and row.state_message == "converting"
