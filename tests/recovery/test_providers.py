"""The compute provider port: both adapters take an image through stage, import and discard
alike (local on real folders; aws with S3 and IAM on moto and EC2's VM Import, which no
local endpoint implements, through botocore's Stubber on a real boto3 client, so every
call is checked against the real EC2 service model). Then what only aws does: pre-flight
checks with advice, an import AWS fails, and one that stalls."""

from __future__ import annotations

import json
import os
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.stub import ANY, Stubber

from services.recovery.providers import (
    ImageTask,
    ImportStalled,
    ProviderError,
    follow_import,
)
from services.recovery.providers.aws import AwsProvider
from services.recovery.providers.local import LocalProvider
from tests import infra
from tests.recovery.helpers import sha256_of

REGION = "us-east-1"
TASK_ID = "import-ami-0123456789abcdef0"
AMI = "ami-0123456789abcdef0"
SNAPSHOT = "snap-0123456789abcdef0"
# VM Import's service principal in a role's trust policy (docs/aws.md).
VMIMPORT_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "vmie.amazonaws.com"},
    "Action": "sts:AssumeRole",
    "Condition": {"StringEquals": {"sts:Externalid": "vmimport"}}}]}


def moto(service: str, region: str = REGION):
    return boto3.client(service, region_name=region, endpoint_url=infra.s3_endpoint(),
                        config=Config(s3={"addressing_style": "path"}))


def make_role(name: str, trust: dict = VMIMPORT_TRUST) -> str:
    moto("iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    return name


class Ec2Stub:
    """A real boto3 EC2 client under Stubber: each expected call with its answer."""

    def __init__(self) -> None:
        self.client = boto3.client("ec2", region_name=REGION)
        self.stubber = Stubber(self.client)
        self.stubber.activate()

    def import_image(self, task: ImageTask, bucket: str, key: str) -> None:
        self.stubber.add_response("import_image", {
            "ImportTaskId": TASK_ID, "Status": "active", "Progress": "0"}, {
            "ClientToken": task.recovery_id, "Description": ANY, "RoleName": ANY,
            "DiskContainers": [{"Description": ANY, "Format": task.disk_format.upper(),
                                "UserBucket": {"S3Bucket": bucket, "S3Key": key}}],
            "TagSpecifications": ANY})

    def describe(self, status: str, progress: str | None = None, message: str = "",
                 image: str | None = None) -> None:
        task = {"ImportTaskId": TASK_ID, "Status": status}
        if progress is not None:
            task["Progress"] = progress
        if message:
            task["StatusMessage"] = message
        if image:
            task["ImageId"] = image
        self.stubber.add_response("describe_import_image_tasks", {"ImportImageTasks": [task]},
                                  {"ImportTaskIds": [TASK_ID]})

    def cancel(self, *, already_done: bool = False) -> None:
        if already_done:
            self.stubber.add_client_error(
                "cancel_import_task", "IncorrectState",
                "The import task cannot be cancelled: it has completed.")
        else:
            self.stubber.add_response("cancel_import_task", {
                "ImportTaskId": TASK_ID, "State": "deleting", "PreviousState": "active"},
                {"ImportTaskId": TASK_ID, "CancelReason": ANY})

    def deregister(self) -> None:
        self.stubber.add_response("describe_images", {"Images": [{
            "ImageId": AMI, "BlockDeviceMappings": [
                {"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": SNAPSHOT}}]}]},
            {"ImageIds": [AMI]})
        self.stubber.add_response("deregister_image", {}, {"ImageId": AMI})
        self.stubber.add_response("delete_snapshot", {}, {"SnapshotId": SNAPSHOT})

    def done(self) -> None:
        self.stubber.assert_no_pending_responses()


@pytest.fixture
def unique_aws(aws_credentials, unique):
    return f"reclo-imported-vms-{unique}", f"vmimport-{unique}"


@pytest.fixture
async def aws(unique_aws):
    bucket, role = unique_aws
    stub = Ec2Stub()
    provider = AwsProvider(region=REGION, endpoint=infra.s3_endpoint(), bucket=bucket,
                           role=make_role(role), create_bucket=True, part_bytes=5 << 20,
                           ec2=stub.client)
    provider.stub = stub
    yield provider
    await provider.close()


@pytest.fixture
def local(tmp_path):
    return LocalProvider(tmp_path / "images")


def image_file(folder, mib: int = 12):
    path = folder / "disk.img"
    path.write_bytes(os.urandom(mib << 20))
    return path


def task_for(disk_format: str) -> ImageTask:
    return ImageTask(recovery_id=uuid.uuid4().hex, user_id=uuid.uuid4().hex, host="fileserver",
                     disk_format=disk_format)


def s3_keys(bucket: str) -> list[str]:
    return [o["Key"] for o in moto("s3").list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.fixture(params=["local", "aws"])
def provider(request):
    return request.getfixturevalue(request.param)


async def test_an_image_goes_through_stage_import_and_discard(provider, tmp_path):
    kind = provider.name
    disk_format = "vmdk"
    task = task_for(disk_format)
    source = image_file(tmp_path)
    digest = sha256_of(source)

    with pytest.raises(ProviderError, match="qcow2"):
        await provider.preflight("qcow2")
    await provider.preflight(disk_format)

    reported = []

    async def progress(done, total):
        reported.append((done, total))

    staged = await provider.stage(task, source, progress)
    assert reported[-1][0] == reported[-1][1]
    assert [d for d, _ in reported] == sorted(d for d, _ in reported)

    if kind == "aws":
        assert s3_keys(provider.bucket) == [staged]
        body = moto("s3").get_object(Bucket=provider.bucket, Key=staged)["Body"].read()
        assert len(body) == 12 << 20 and len(reported) == 3  # three 5 MiB parts (the last short)
        provider.stub.import_image(task, provider.bucket, staged)
        provider.stub.describe("active", "40", "converting")
        provider.stub.describe("completed", "100", image=AMI)
    else:
        assert not source.exists() and sha256_of(provider.image_path(staged)) == digest

    import_ref = await provider.begin_import(task, staged)
    statuses = []

    async def on_status(status):
        statuses.append(status)

    status = await follow_import(provider, import_ref, poll_seconds=0.01, stall_seconds=60,
                                 on_status=on_status)
    assert status.done and not status.failed and status.image_ref
    facts = await provider.image_facts(status.image_ref, progress)
    if kind == "local":
        assert facts.sha256 == digest and facts.size == 12 << 20
        assert provider.shared_ref(status.image_ref).startswith("file:///")
    else:
        assert status.image_ref == AMI and facts is None
        assert [s.progress for s in statuses] == [40, 100]
        provider.stub.cancel(already_done=True)
        provider.stub.deregister()

    await provider.discard(staged_ref=staged, import_ref=import_ref, image_ref=status.image_ref)
    if kind == "aws":
        assert s3_keys(provider.bucket) == []
        provider.stub.done()
    else:
        assert list(provider.images_dir.iterdir()) == []


async def test_an_import_aws_fails_reports_aws_words(aws, tmp_path):
    aws.stub.import_image(task := task_for("vhd"), aws.bucket, "k/disk.vhd")
    aws.stub.describe("active", "10", "pending")
    aws.stub.describe("deleted", message="ClientError: Unknown OS / Missing OS files.")
    ref = await aws.begin_import(task, "k/disk.vhd")

    async def ignore(_status):
        pass

    status = await follow_import(aws, ref, poll_seconds=0.01, stall_seconds=60, on_status=ignore)
    assert status.failed and status.message == "ClientError: Unknown OS / Missing OS files."
    aws.stub.done()


async def test_an_import_that_stalls_is_cancelled(aws):
    aws.stub.import_image(task := task_for("vmdk"), aws.bucket, "k/disk.vmdk")
    for _ in range(3):
        aws.stub.describe("active", "30", "converting")
    aws.stub.cancel()
    ref = await aws.begin_import(task, "k/disk.vmdk")
    clock = iter([0.0, 0.0, 100.0, 200.0]).__next__  # the third poll is past the stall limit

    async def ignore(_status):
        pass

    with pytest.raises(ImportStalled, match=r"no progress for 2 minutes.*converting"):
        await follow_import(aws, ref, poll_seconds=0, stall_seconds=120, on_status=ignore,
                            clock=clock)
    aws.stub.done()


async def test_ec2_refusing_the_import_is_a_provider_error(aws):
    aws.stub.stubber.add_client_error(
        "import_image", "InvalidParameter",
        "The service role vmimport provided does not exist or does not have sufficient permissions")
    with pytest.raises(ProviderError, match="EC2 refused the import: The service role vmimport"):
        await aws.begin_import(task_for("vmdk"), "k/disk.vmdk")
    aws.stub.done()


async def test_preflight_tells_what_to_fix(unique_aws):
    bucket, role = unique_aws

    def provider(**kw):
        options = dict(region=REGION, endpoint=infra.s3_endpoint(), bucket=bucket, role=role,
                       create_bucket=False)
        return AwsProvider(**(options | kw))

    async def refused(p, match):
        try:
            with pytest.raises(ProviderError, match=match):
                await p.preflight("vmdk")
        finally:
            await p.close()

    await refused(provider(region="mars-north-1"), "'mars-north-1' is not an EC2 region")
    await refused(provider(), f"service role '{role}' does not exist.*docs/aws.md")
    make_role(role, {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole"}]})
    await refused(provider(), f"'{role}' does not trust vmie.amazonaws.com")
    good_role = make_role(f"{role}-ok")
    await refused(provider(role=good_role), f"bucket {bucket} does not exist: create it in us-east-1")
    moto("s3", "eu-west-1").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    await refused(provider(role=good_role), "is in eu-west-1 but disks are imported into us-east-1")
    ok = provider(role=good_role, region="eu-west-1")
    try:
        await ok.preflight("vhd")
    finally:
        await ok.close()
