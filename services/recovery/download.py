"""Serving a local image for download, resumably (RFC 9110 §14): one byte range per request
(``Range: bytes=a-b``, ``a-`` or ``-n``) answered ``206`` with ``Content-Range``; a strong
``ETag`` and ``If-Range`` so a resumed download never splices two different files;
``416`` with ``Content-Range: bytes */size`` for a range past the end. A request for
several ranges, or a malformed one, gets the whole image (RFC 9110 lets a server ignore
Range; a client then simply starts over).

The file is streamed from disk in pieces, never held in memory.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from aiohttp import web

from shared.http.keys import REQUEST_ID

# Read and sent in pieces of this size: large enough for disk and network speed, small
# enough that many downloads at once hold little memory.
PIECE = 1 << 20
# At most 19 digits (any file size fits): a longer number is malformed, and ignored.
_RANGE = re.compile(r"^\s*(\d{0,19})\s*-\s*(\d{0,19})\s*$")


class Unsatisfiable(Exception):
    pass


@dataclass(frozen=True)
class FileFacts:
    size: int
    etag: str  # strong, quoted
    last_modified: str  # IMF-fixdate


def facts_of(path: Path, identity: str) -> FileFacts:
    st = path.stat()
    # The image's id, size and change time: a different file under the same name (never
    # expected: images are written once) gets a different tag.
    etag = f'"{identity}-{st.st_size:x}-{st.st_mtime_ns:x}"'
    return FileFacts(st.st_size, etag, formatdate(st.st_mtime, usegmt=True))


def requested_range(range_header: str | None, if_range: str | None,
                    facts: FileFacts) -> tuple[int, int] | None:
    """The byte range to send (first, last inclusive), or None for the whole file."""
    if range_header is None:
        return None
    if if_range is not None and if_range.strip() not in (facts.etag, facts.last_modified):
        return None  # the client's partial copy is of another version: send it all
    unit, _, spec = range_header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE.match(spec)
    if match is None or (not match[1] and not match[2]):
        return None
    size = facts.size
    if not match[1]:  # "-n": the last n bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - suffix), size - 1
    first = int(match[1])
    if match[2] and int(match[2]) < first:
        return None  # invalid: ignored
    if first >= size:
        raise Unsatisfiable()
    last = int(match[2]) if match[2] else size - 1
    return first, min(last, size - 1)


async def send_file(request: web.Request, path: Path, *, identity: str,
                    filename: str) -> web.StreamResponse:
    facts = await asyncio.to_thread(facts_of, path, identity)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": facts.etag,
        "Last-Modified": facts.last_modified,
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Request-ID": request[REQUEST_ID],
    }
    try:
        wanted = requested_range(request.headers.get("Range"), request.headers.get("If-Range"),
                                 facts)
    except Unsatisfiable:
        headers["Content-Range"] = f"bytes */{facts.size}"
        return web.Response(status=416, headers=headers)
    if wanted is None:
        status, first, last = 200, 0, facts.size - 1
    else:
        status, (first, last) = 206, wanted
        headers["Content-Range"] = f"bytes {first}-{last}/{facts.size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = last - first + 1
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        offset = first
        while offset <= last:
            piece = await loop.run_in_executor(None, os.pread, fd,
                                               min(PIECE, last + 1 - offset), offset)
            if not piece:
                break  # the file shrank under us: the client sees a short body
            await response.write(piece)
            offset += len(piece)
        await response.write_eof()
    except ConnectionError:
        pass  # the client hung up (a download stopped to be resumed later): nothing failed
    finally:
        os.close(fd)
    return response
