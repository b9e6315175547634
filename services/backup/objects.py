"""The embedded mode's stand-in for S3: the local object store's presigned URLs, served
through the gateway (`/api/v1/objects/<bucket>/<key>?expires=&size=&signature=`).

Anyone may call these routes (through the gateway, like every route): the URL's signature
is the credential (shared/objectstore/signing.py), checked here with the expiry, as S3
would. A PUT creates its key once, with a body of exactly the signed size, streamed to
disk; a GET serves the object, or one byte range of it (`Range: bytes=a-b`, `a-` or `-n`),
streamed from disk. They are plain aiohttp routes, not declared `Routes`: their URLs are
opaque (minted by the service, never composed by a client), so they are no part of the
OpenAPI document, whose path templates can't express a key with slashes.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from shared.format.errors import InvalidKey, ObjectExists
from shared.http.keys import RUNTIME
from shared.http.problems import Problem, bad_request, conflict, forbidden, not_found
from shared.objectstore import BadUrl, LocalBucketStore, SizeMismatch

PATH = "/api/v1/objects/{bucket}/{key:.+}"
# Bodies are read from the network and files from disk in pieces of this size.
CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def add_routes(app: web.Application) -> None:
    app.router.add_route("PUT", PATH, put_object)
    app.router.add_route("GET", PATH, get_object)


def _local_target(request: web.Request, method: str) -> tuple[LocalBucketStore, str, int | None]:
    """The store, the key relative to it, and the signed size; or the problem to answer."""
    store = request.app[RUNTIME].context.store
    if not isinstance(store, LocalBucketStore):
        raise not_found("objects are served by S3 here, not by this service")
    bucket, full_key = request.match_info["bucket"], request.match_info["key"]
    try:
        size = store.signer.verify(method, bucket, full_key, request.query)
    except BadUrl as e:
        raise forbidden(str(e)) from None
    if bucket != store.bucket or not full_key.startswith(store.prefix):
        raise not_found("no such object")
    return store, full_key[len(store.prefix):], size


async def put_object(request: web.Request) -> web.Response:
    """Create the object of a presigned PUT URL: once, with exactly the signed size."""
    store, key, size = _local_target(request, "PUT")
    assert size is not None
    try:
        await store.put_stream(key, request.content.iter_chunked(CHUNK), size)
    except ObjectExists:
        raise conflict("the object exists; objects are never overwritten") from None
    except SizeMismatch as e:
        raise bad_request(str(e)) from None
    except InvalidKey as e:
        raise forbidden(str(e)) from None
    return web.Response(status=204)


async def get_object(request: web.Request) -> web.StreamResponse:
    """The object of a presigned GET URL, whole or one range of it."""
    store, key, _ = _local_target(request, "GET")
    try:
        f, size = await asyncio.to_thread(store.open_for_reading, key)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, InvalidKey):
        raise not_found("no such object") from None
    try:
        start, end = _range(request.headers.get("Range"), size)
        response = web.StreamResponse(status=200 if (start, end) == (0, size) else 206)
        response.content_type = "application/octet-stream"
        response.content_length = end - start
        response.headers["Accept-Ranges"] = "bytes"
        if response.status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        await response.prepare(request)
        position = start
        while position < end:
            data = await asyncio.to_thread(_read_at, f, position, min(CHUNK, end - position))
            if not data:
                break
            await response.write(data)
            position += len(data)
        await response.write_eof()
        return response
    finally:
        f.close()


def _range(header: str | None, size: int) -> tuple[int, int]:
    """[start, end) of the one range asked for; the whole object without (or with a
    malformed) Range header, as RFC 9110 says; 416 for a range past the end."""
    if not header:
        return 0, size
    found = _RANGE.fullmatch(header.strip())
    if found is None or found.group(1) == found.group(2) == "":
        return 0, size
    first, last = found.group(1), found.group(2)
    if first == "":  # the last n bytes
        return max(0, size - int(last)), size
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if start >= size or end <= start:
        raise Problem(416, "Range not satisfiable", f"the object has {size} bytes",
                      headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _read_at(f, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)
