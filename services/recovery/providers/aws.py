"""The aws provider: EC2 VM Import.

The disk (a stream-optimized VMDK or a dynamic VHD) is uploaded to the import bucket with
S3 multipart (aiobotocore), then ``ImportImage`` turns it into an AMI, polled with
``DescribeImportImageTasks``. The ClientToken is the recovery id, so a worker that resumes
a task and imports again gets the same import task back instead of a second one.

EC2 and IAM calls go through boto3 clients in worker threads (a handful of calls per task);
tests give the provider a real boto3 EC2 client under botocore's Stubber, since no local
endpoint implements VM Import. docs/aws.md lists the IAM setup the checks here expect.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import boto3
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.recovery.domain import EXTENSIONS
from services.recovery.providers import (
    ComputeProvider,
    ImageTask,
    ImportStatus,
    Progress,
    ProviderError,
)

# VM Import's service principal: the vmimport role must trust it.
VMIE_PRINCIPAL = "vmie.amazonaws.com"
# S3 allows at most this many parts in one multipart upload.
MAX_PARTS = 10_000
# Parts uploaded at once: enough to fill a fast link, each part held in memory.
PARTS_IN_FLIGHT = 4
IMPORT_FORMATS = {"vmdk": "VMDK", "vhd": "VHD"}
_RETRIES = {"max_attempts": 5, "mode": "standard"}


@functools.cache
def _boto_session() -> boto3.session.Session:
    # One session for every client: building one loads botocore's data files (slow).
    return boto3.session.Session()


@functools.cache
def ec2_regions() -> frozenset[str]:
    return frozenset(_boto_session().get_available_regions("ec2"))


def _error(e: ClientError) -> tuple[str, str, int]:
    err = e.response.get("Error", {})
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return str(err.get("Code", "")), str(err.get("Message", "")) or str(e), status


class AwsProvider(ComputeProvider):
    name = "aws"
    formats = ("vmdk", "vhd")

    def __init__(self, *, region: str, endpoint: str | None, bucket: str, role: str,
                 create_bucket: bool = False, part_bytes: int = 64 << 20,
                 ec2: Any = None, iam: Any = None) -> None:
        self.region = region
        self.endpoint = endpoint
        self.bucket = bucket
        self.role = role
        self.create_bucket = create_bucket
        self.part_bytes = part_bytes
        self.ec2 = ec2
        self.iam = iam
        self._s3 = None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    # --- clients ---------------------------------------------------------------------

    def _boto(self, service: str):
        return _boto_session().client(
            service, region_name=self.region, endpoint_url=self.endpoint,
            config=Config(retries=_RETRIES))

    async def _call(self, service: str, operation: str, **params) -> dict:
        """One EC2 or IAM call in a worker thread (boto3 blocks)."""
        if service == "ec2":
            if self.ec2 is None:
                self.ec2 = self._boto("ec2")
            client = self.ec2
        else:
            if self.iam is None:
                self.iam = self._boto("iam")
            client = self.iam
        return await asyncio.to_thread(getattr(client, operation), **params)

    async def s3(self):
        if self._s3 is None:
            async with self._lock:
                if self._s3 is None:
                    stack = AsyncExitStack()
                    self._s3 = await stack.enter_async_context(get_session().create_client(
                        "s3", region_name=self.region, endpoint_url=self.endpoint,
                        config=AioConfig(signature_version="s3v4",
                                         s3={"addressing_style": "path"}, retries=_RETRIES)))
                    self._stack = stack
        return self._s3

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._s3 = self._stack, None, None
            await stack.aclose()

    # --- pre-flight --------------------------------------------------------------------

    async def preflight(self, disk_format: str) -> None:
        if disk_format not in self.formats:
            raise ProviderError(f"EC2 imports VMDK or VHD disks, not {disk_format}")
        if self.region not in ec2_regions():
            raise ProviderError(f"'{self.region}' is not an EC2 region: set "
                                "RECLO_RECOVERY__AWS_REGION to the region to recover into")
        await self._check_role()
        await self._check_bucket()

    async def _check_role(self) -> None:
        try:
            role = (await self._call("iam", "get_role", RoleName=self.role))["Role"]
        except ClientError as e:
            code, message, _ = _error(e)
            if code == "NoSuchEntity":
                raise ProviderError(
                    f"the IAM service role '{self.role}' does not exist in the AWS account: VM "
                    f"Import assumes it to read the disk from s3://{self.bucket}; create it "
                    "as docs/aws.md ('VM Import service role') shows") from None
            if "AccessDenied" in code:
                raise ProviderError(
                    f"the recovery service may not read the IAM role '{self.role}': allow it "
                    "iam:GetRole on that role (docs/aws.md, 'The service's own policy')") from None
            raise ProviderError(f"the IAM role '{self.role}' could not be checked: {message}") from None
        except BotoCoreError as e:
            raise ProviderError(f"AWS IAM is not reachable: {e}") from None
        trust = role.get("AssumeRolePolicyDocument", "")
        if VMIE_PRINCIPAL not in (trust if isinstance(trust, str) else json.dumps(trust)):
            raise ProviderError(
                f"the IAM role '{self.role}' does not trust {VMIE_PRINCIPAL}, so VM Import "
                "cannot assume it: set its trust policy as docs/aws.md shows")

    async def _check_bucket(self) -> None:
        s3 = await self.s3()
        try:
            await s3.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code, message, status = _error(e)
            if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
                if not self.create_bucket:
                    raise ProviderError(
                        f"the import bucket {self.bucket} does not exist: create it in "
                        f"{self.region} (docs/aws.md)") from None
                await self._create_bucket(s3)
            elif status == 403 or code in ("403", "AccessDenied", "Forbidden"):
                raise ProviderError(
                    f"the recovery service has no access to the bucket {self.bucket}: allow it "
                    "s3:ListBucket, s3:PutObject, s3:DeleteObject and "
                    "s3:AbortMultipartUpload there (docs/aws.md)") from None
            else:
                raise ProviderError(f"the bucket {self.bucket} could not be checked: {message}") from None
        location = await s3.get_bucket_location(Bucket=self.bucket)
        bucket_region = location.get("LocationConstraint") or "us-east-1"
        if bucket_region != self.region:
            raise ProviderError(
                f"the bucket {self.bucket} is in {bucket_region} but disks are imported into "
                f"{self.region}: VM Import needs both in one region (move the bucket or set "
                "RECLO_RECOVERY__AWS_REGION)")

    async def _create_bucket(self, s3) -> None:
        options = {}
        if self.region != "us-east-1":  # us-east-1 refuses an explicit location
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            await s3.create_bucket(Bucket=self.bucket, **options)
        except ClientError as e:
            if _error(e)[0] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    # --- staging: multipart upload ------------------------------------------------------

    def object_key(self, task: ImageTask) -> str:
        return f"{task.user_id}/{task.recovery_id}/disk.{EXTENSIONS[task.disk_format]}"

    async def stage(self, task: ImageTask, image: Path, progress: Progress) -> str:
        key = self.object_key(task)
        s3 = await self.s3()
        await self._abort_uploads(key)  # a resumed task starts its upload again
        size = (await asyncio.to_thread(image.stat)).st_size
        part_size = max(self.part_bytes, math.ceil(size / MAX_PARTS))
        upload_id = (await s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType="application/octet-stream"))["UploadId"]
        try:
            parts = await self._upload_parts(s3, key, upload_id, image, size, part_size, progress)
            await s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                               MultipartUpload={"Parts": parts})
        except BaseException:
            await asyncio.shield(self._abort(s3, key, upload_id))
            raise
        return key

    async def _upload_parts(self, s3, key: str, upload_id: str, image: Path, size: int,
                            part_size: int, progress: Progress) -> list[dict]:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(PARTS_IN_FLIGHT)
        parts: dict[int, str] = {}
        done = 0

        async def send(number: int, body: bytes) -> None:
            nonlocal done
            try:
                answer = await s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                              PartNumber=number, Body=body)
                parts[number] = answer["ETag"]
                done += len(body)
                await progress(done, size)
            finally:
                slots.release()

        tasks: list[asyncio.Task] = []
        try:
            with open(image, "rb") as f:
                number = 1
                while True:
                    await slots.acquire()
                    body = await loop.run_in_executor(None, f.read, part_size)
                    if not body and number > 1:
                        slots.release()
                        break
                    tasks.append(asyncio.create_task(send(number, body)))
                    number += 1
                    if len(body) < part_size:
                        break
                    for t in [t for t in tasks if t.done()]:
                        t.result()  # stop at the first failed part
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [{"ETag": parts[n], "PartNumber": n} for n in sorted(parts)]

    async def _abort(self, s3, key: str, upload_id: str) -> None:
        try:
            await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError:
            pass  # already gone

    async def _abort_uploads(self, key: str) -> None:
        s3 = await self.s3()
        listing = await s3.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        for upload in listing.get("Uploads", []):
            if upload.get("Key") == key:
                await self._abort(s3, key, upload["UploadId"])

    async def release_staging(self, staged_ref: str) -> None:
        # The AMI's snapshots hold the disk now: the uploaded copy only costs storage.
        s3 = await self.s3()
        await s3.delete_object(Bucket=self.bucket, Key=staged_ref)

    # --- the import ------------------------------------------------------------------------

    async def begin_import(self, task: ImageTask, staged_ref: str) -> str:
        description = f"ReClo recovery {task.recovery_id} of {task.host}"[:255]
        try:
            answer = await self._call(
                "ec2", "import_image",
                ClientToken=task.recovery_id,
                Description=description,
                DiskContainers=[{
                    "Description": description,
                    "Format": IMPORT_FORMATS[task.disk_format],
                    "UserBucket": {"S3Bucket": self.bucket, "S3Key": staged_ref},
                }],
                RoleName=self.role,
                TagSpecifications=[{
                    "ResourceType": "import-image-task",
                    "Tags": [{"Key": "reclo:recovery-id", "Value": task.recovery_id}],
                }],
            )
        except ClientError as e:
            raise ProviderError(f"EC2 refused the import: {_error(e)[1]}") from None
        return answer["ImportTaskId"]

    async def poll_import(self, import_ref: str) -> ImportStatus:
        try:
            answer = await self._call("ec2", "describe_import_image_tasks",
                                      ImportTaskIds=[import_ref])
        except ClientError as e:
            raise ProviderError(f"EC2 could not report on the import: {_error(e)[1]}") from None
        tasks = answer.get("ImportImageTasks", [])
        if not tasks:
            return ImportStatus(failed=True, message=f"EC2 no longer knows import task {import_ref}")
        task = tasks[0]
        status = task.get("Status", "")
        message = task.get("StatusMessage", "")
        if status == "completed":
            return ImportStatus(done=True, progress=100, message=message or status,
                                image_ref=task.get("ImageId"))
        if status in ("deleting", "deleted"):
            return ImportStatus(failed=True, message=message or f"the import was {status}")
        try:
            progress = int(task.get("Progress") or 0)
        except ValueError:
            progress = 0
        return ImportStatus(progress=max(0, min(100, progress)), message=message or status)

    async def cancel_import(self, import_ref: str) -> None:
        try:
            await self._call("ec2", "cancel_import_task", ImportTaskId=import_ref,
                             CancelReason="the ReClo recovery stopped")
        except ClientError:
            pass  # already finished or gone: nothing to cancel

    # --- undo ----------------------------------------------------------------------------

    async def discard(self, *, staged_ref: str | None, import_ref: str | None,
                      image_ref: str | None) -> None:
        if import_ref is not None:
            if image_ref is None:
                status = await self.poll_import(import_ref)
                image_ref = status.image_ref
            await self.cancel_import(import_ref)
        if image_ref is not None:
            await self._deregister(image_ref)
        if staged_ref is not None:
            await self._abort_uploads(staged_ref)
            s3 = await self.s3()
            await s3.delete_object(Bucket=self.bucket, Key=staged_ref)

    async def _deregister(self, image_id: str) -> None:
        """The AMI and the EBS snapshots it was registered from (they cost storage)."""
        try:
            images = (await self._call("ec2", "describe_images", ImageIds=[image_id]))["Images"]
        except ClientError as e:
            if "NotFound" in _error(e)[0] or "Malformed" in _error(e)[0]:
                return
            raise
        snapshots = [m["Ebs"]["SnapshotId"] for image in images
                     for m in image.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]
        if images:
            await self._call("ec2", "deregister_image", ImageId=image_id)
        for snapshot in snapshots:
            try:
                await self._call("ec2", "delete_snapshot", SnapshotId=snapshot)
            except ClientError as e:
                if "NotFound" not in _error(e)[0]:
                    raise
