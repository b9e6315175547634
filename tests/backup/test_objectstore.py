"""The server's object stores pass the format's store conformance suite, S3 (against moto)
and the local folder; plus what only they do: listing in key order with sizes, folders,
batch deletes, presigned URLs."""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from shared.format.errors import ObjectExists
from shared.objectstore import LocalBucketStore, S3Connection, S3Store, UrlSigner
from tests import infra
from tests.format.store_conformance import StoreConformance

BUCKET = "reclo-test-objectstore"


@pytest.fixture
def aws_credentials(monkeypatch):
    # moto accepts any credentials; botocore needs some to sign.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
async def s3_store(aws_credentials):
    connection = S3Connection(bucket=BUCKET, endpoint=infra.s3_endpoint(), region="us-east-1",
                              create_bucket=True)
    # Each test gets an empty store: its own prefix in the shared bucket.
    store = S3Store(connection, f"t{uuid.uuid4().hex[:12]}/")
    yield store
    await store.delete_many([k async for k in store.list()])
    await store.close()


@pytest.fixture
def local_store(tmp_path):
    return LocalBucketStore(tmp_path / "objects", BUCKET, UrlSigner(b"k" * 32), "user/host/")


class TestS3Store(StoreConformance):
    @pytest.fixture
    def store(self, s3_store):
        return s3_store


class TestLocalBucketStore(StoreConformance):
    @pytest.fixture
    def store(self, local_store):
        return local_store


@pytest.fixture(params=["s3", "local"])
def bucket_store(request):
    return request.getfixturevalue(f"{request.param}_store")


async def test_scan_is_in_key_order_with_sizes_and_resumes_after_a_key(bucket_store):
    keys = ["data/ab/ab1", "data/ab/ab2", "data/ab-x", "data/ab0", "data/cd/cd1", "index/i1", "snapshots/s"]
    for i, key in enumerate(keys):
        await bucket_store.put(key, b"x" * i)
    scanned = [info async for info in bucket_store.scan()]
    assert [i.key for i in scanned] == sorted(keys)
    assert {i.key: i.size for i in scanned} == {k: n for n, k in enumerate(keys)}
    assert all(i.modified.tzinfo is not None for i in scanned)
    after = [i.key async for i in bucket_store.scan("data/", start_after="data/ab/ab2")]
    assert after == ["data/ab0", "data/cd/cd1"]
    page = await bucket_store.list_page("data/", "data/ab-x", 2)
    assert [i.key for i in page] == ["data/ab/ab1", "data/ab/ab2"]


async def test_children_and_delete_many(bucket_store):
    for key in ["u1/h1/config", "u1/h2/config", "u2/h3/data/00/p", "top"]:
        await bucket_store.put(key, b"c")
    assert sorted(await bucket_store.children()) == ["u1", "u2"]
    assert sorted(await bucket_store.children("u1/")) == ["h1", "h2"]
    assert await bucket_store.children("nothing/") == []
    await bucket_store.delete_many(["u1/h1/config", "u2/h3/data/00/p", "missing/key"])
    assert sorted([k async for k in bucket_store.list()]) == ["top", "u1/h2/config"]


async def test_scoped_views_share_the_bucket(bucket_store):
    host = bucket_store.scoped("u9/h9/")
    await host.put("config", b"cfg")
    assert await bucket_store.get("u9/h9/config") == b"cfg"
    assert [k async for k in host.list()] == ["config"]


async def test_s3_presigned_put_is_append_only(s3_store):
    """moto honours the signed `If-None-Match: *`: a second PUT of the key fails (412) and
    the first object stays (real S3 does the same since its conditional writes, 2024)."""
    url = await s3_store.presign_put("data/00/pack", 5, 60)
    assert url.headers == {"Content-Length": "5", "If-None-Match": "*"}
    assert "if-none-match" in url.url and "content-length" in url.url  # both are signed
    async with aiohttp.ClientSession() as http:
        async with http.put(url.url, data=b"first", headers=url.headers) as response:
            assert response.status == 200
        async with http.put(url.url, data=b"again", headers=url.headers) as response:
            assert response.status == 412
        get = await s3_store.presign_get("data/00/pack", 60)
        async with http.get(get.url, headers={"Range": "bytes=1-3"}) as response:
            assert response.status == 206 and await response.read() == b"irs"
    assert await s3_store.get("data/00/pack") == b"first"
    with pytest.raises(ObjectExists):
        await s3_store.put("data/00/pack", b"other")
