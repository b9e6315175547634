"""Downloading a local recovery's disk image, resumable.

The bytes go to ``DEST.part``; ``DEST.part.json`` remembers the image's ETag. Run again
after an interruption (Ctrl-C, a dropped connection, a reboot) and it asks only for the
rest (``Range: bytes=N-`` with ``If-Range: <ETag>``): if the image changed meanwhile the
server sends it whole and the download starts over. At the end the size and the SHA-256
the recovery service published are checked before ``DEST`` appears: a file under the
final name is always complete and intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from clients.recovery.client import Api, seg
from clients.recovery.exits import REFUSED, RecoverError, Unreachable

# A slow link still moves a chunk within five minutes; total is unbounded (many GiB).
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
CHUNK = 1024 * 1024
# A dropped connection is retried this many times within one run, each resuming.
RETRIES = 3
RETRY_PAUSE_SECONDS = 2.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

OnProgress = Callable[[int, int | None], None]


@dataclass
class Downloaded:
    path: Path
    size: int
    sha256: str
    resumed_from: int


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_meta(part: Path) -> dict[str, Any]:
    try:
        return json.loads(_meta_path(part).read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(part: Path, meta: dict[str, Any]) -> None:
    _meta_path(part).write_text(json.dumps(meta))


def destination(dest: Path, recovery: dict[str, Any]) -> Path:
    """DEST itself, or inside DEST when it is a folder."""
    if dest.is_dir():
        extension = {"raw": "img", "vhd": "vhd", "vmdk": "vmdk"}.get(recovery.get("format") or "", "img")
        host = re.sub(r"[^A-Za-z0-9._-]", "_", recovery.get("host") or "server")[:64]
        return dest / f"reclo-{host}-{recovery['id'][:12]}.{extension}"
    return dest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


async def _fetch(api: Api, recovery_id: str, part: Path, on_progress: OnProgress,
                 started: list[int]) -> int | None:
    """One attempt: appends what the server sends to ``part``; returns the image's size.
    Appends to ``started`` where the server's answer begins (0: the whole image)."""
    meta = _read_meta(part)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Accept": "application/octet-stream"}
    if offset and meta.get("etag"):
        headers.update({"Range": f"bytes={offset}-", "If-Range": meta["etag"]})
    elif offset:
        offset = 0  # nothing to tell whether the image is still the same: start over
    async with api.open("GET", f"/recoveries/{seg(recovery_id)}/image", headers=headers,
                        timeout=DOWNLOAD_TIMEOUT, ok=(416,)) as response:
        if response.status == 416:
            total_text = response.headers.get("Content-Range", "").rpartition("/")[2]
            total = int(total_text) if total_text.isdigit() else offset
            if offset > total:  # longer than the image: not a piece of it, start over
                part.unlink()
                _meta_path(part).unlink(missing_ok=True)
                return await _fetch(api, recovery_id, part, on_progress, started)
            # Nothing after `offset`: the part file already holds the whole image.
            started.append(offset)
            return total
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise RecoverError("the server sent a different part of the image than asked")
            total = int(match.group(3)) if match.group(3) != "*" else None
            mode = "ab"
        else:
            offset, mode = 0, "wb"
            total = response.content_length
        started.append(offset)
        _write_meta(part, {"etag": response.headers.get("ETag"), "size": total})
        done = offset
        on_progress(done, total)
        with part.open(mode) as f:
            async for block in response.content.iter_chunked(CHUNK):
                f.write(block)
                done += len(block)
                on_progress(done, total)
        return total


async def download(api: Api, recovery_id: str, dest: Path, on_progress: OnProgress,
                   retries: int = RETRIES) -> Downloaded:
    recovery = await api.call("GET", f"/recoveries/{seg(recovery_id)}")
    if recovery.get("target") != "local":
        raise RecoverError("this recovery went to AWS: it has no image to download", REFUSED)
    if recovery.get("state") != "complete":
        raise RecoverError(f"the image is not ready: the recovery is {recovery.get('state')}",
                           REFUSED)
    target = destination(dest, recovery)
    if target.exists():
        raise RecoverError(f"{target} exists already: remove it or choose another name",
                           REFUSED)
    part = target.with_name(target.name + ".part")
    started: list[int] = []  # where each answer began; the first tells if we resumed
    attempt = 0
    while True:
        try:
            total = await _fetch(api, recovery_id, part, on_progress, started)
            break
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError,
                Unreachable) as exc:
            attempt += 1
            if attempt > retries:
                raise Unreachable(f"the download broke off ({exc.__class__.__name__}); run the "
                                  "same command again to resume it") from None
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
    size = part.stat().st_size
    expected = recovery.get("image_bytes") or total
    if expected is not None and size != expected:
        raise RecoverError(f"the image should be {expected} bytes but {size} arrived; "
                           "run the command again to resume it")
    digest = await asyncio.to_thread(sha256_of, part)
    wanted = recovery.get("image_sha256")
    if wanted and digest != wanted:
        part.unlink()
        _meta_path(part).unlink(missing_ok=True)
        raise RecoverError("the downloaded image is corrupt (its SHA-256 does not match); "
                           "it was removed: run the command again")
    os.replace(part, target)
    with contextlib.suppress(OSError):
        _meta_path(part).unlink()
    return Downloaded(target, size, digest, started[0] if started else 0)
