"""Object stores of the server side: S3 (aiobotocore) and the embedded mode's local folder,
both able to presign URLs for the agents. Server-only: the agent reaches a bucket only
through URLs the backup service presigns (clients/agent/remote_store.py).

    base     the BucketStore port (the format's ObjectStore plus presigning and listings)
    s3       the S3 adapter
    local    the local folder adapter, and its streaming put for presigned PUTs
    signing  the local adapter's presigned URLs (HMAC, expiry, size)
"""

from __future__ import annotations

from pathlib import Path

from shared.objectstore.base import BucketStore, ObjectInfo
from shared.objectstore.local import LocalBucketStore, SizeMismatch
from shared.objectstore.s3 import S3Connection, S3Store
from shared.objectstore.signing import BadUrl, UrlSigner
from shared.settings import Settings

__all__ = ["BadUrl", "BucketStore", "LocalBucketStore", "ObjectInfo", "S3Connection", "S3Store",
           "SizeMismatch", "UrlSigner", "open_bucket_store", "uses_s3"]


def uses_s3(settings: Settings) -> bool:
    mode = settings.backup.store
    return mode == "s3" or (mode == "auto" and settings.s3_endpoint is not None)


def open_bucket_store(settings: Settings, internal_key: bytes) -> BucketStore:
    """The backup bucket under the configured key prefix: S3 when configured, else the local
    folder `<data dir>/objects/<bucket>/`. Does no I/O (S3 connects on first use)."""
    backup = settings.backup
    if uses_s3(settings):
        create = backup.create_bucket
        if create is None:
            create = settings.s3_endpoint is not None
        connection = S3Connection(bucket=backup.bucket, endpoint=settings.s3_endpoint,
                                  region=settings.s3_region, create_bucket=create,
                                  presign_endpoint=backup.presign_endpoint)
        return S3Store(connection, backup.key_prefix)
    return LocalBucketStore(Path(settings.data_dir) / "objects", backup.bucket,
                            UrlSigner(internal_key), backup.key_prefix)
