"""The compute provider port: where a finished disk image goes to become a machine.

    aws    EC2 VM Import: upload to the import bucket, ImportImage, an AMI
    local  the image kept under the data dir, downloadable through the gateway

A task drives a provider in this order, recording each reference it gets back so that a
resumed task skips what finished and a failed one can be undone with ``discard``:

    preflight(format)          before anything is downloaded: fail early, with advice
    stage(task, file)          -> staged ref (an object key; a kept file)
    begin_import(task, staged) -> import ref (an import task id); idempotent per task
    poll_import(import ref)    -> ImportStatus, until done or failed (``follow_import``)
    release_staging(staged)    after success: what only the import needed
    discard(...)               after failure: everything the task created
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from services.recovery.domain import stalled_reason


class ProviderError(Exception):
    """A check or a call failed; the message says what the customer can do about it."""


class ImportStalled(ProviderError):
    pass


@dataclass(frozen=True)
class ImageTask:
    """What a provider needs to know about the task it works for."""

    recovery_id: str
    user_id: str
    host: str
    disk_format: str


@dataclass(frozen=True)
class ImportStatus:
    done: bool = False
    failed: bool = False
    progress: int = 0  # percent, as the provider reports it
    message: str = ""  # the provider's own words (AWS's status message or error text)
    image_ref: str | None = None  # set when done: an AMI id, a local image id


@dataclass(frozen=True)
class ImageFacts:
    """What a kept image is, for its download: size and SHA-256."""

    size: int
    sha256: str


Progress = Callable[[int, int], Awaitable[None]]  # (done, total)


class ComputeProvider(ABC):
    name: str
    formats: tuple[str, ...]

    @abstractmethod
    async def preflight(self, disk_format: str) -> None:
        """Raise ProviderError if a task with this format cannot succeed here."""

    @abstractmethod
    async def stage(self, task: ImageTask, image: Path, progress: Progress) -> str: ...

    @abstractmethod
    async def begin_import(self, task: ImageTask, staged_ref: str) -> str: ...

    @abstractmethod
    async def poll_import(self, import_ref: str) -> ImportStatus: ...

    @abstractmethod
    async def cancel_import(self, import_ref: str) -> None: ...

    @abstractmethod
    async def release_staging(self, staged_ref: str) -> None: ...

    @abstractmethod
    async def discard(self, *, staged_ref: str | None, import_ref: str | None,
                      image_ref: str | None) -> None:
        """Remove whatever of these exists; each may be missing or already gone."""

    async def image_facts(self, image_ref: str, progress: Progress) -> ImageFacts | None:
        """Size and digest of an image the provider keeps for download (local only)."""
        return None

    def image_path(self, image_ref: str) -> Path | None:
        """The file of an image kept for download (local only)."""
        return None

    def shared_ref(self, image_ref: str) -> str:
        """How ``ImportCompleted`` names the image to the instances service."""
        return image_ref

    async def close(self) -> None:
        pass


async def follow_import(
    provider: ComputeProvider,
    import_ref: str,
    *,
    poll_seconds: float,
    stall_seconds: float,
    on_status: Callable[[ImportStatus], Awaitable[None]],
    clock: Callable[[], float] = time.monotonic,
) -> ImportStatus:
    """Poll an import until it is done or failed. One that reports neither new progress nor
    a new message for ``stall_seconds`` is cancelled: ImportStalled."""
    seen: tuple[int, str] | None = None
    moved_at = clock()
    while True:
        status = await provider.poll_import(import_ref)
        await on_status(status)
        if status.done or status.failed:
            return status
        if (status.progress, status.message) != seen:
            seen, moved_at = (status.progress, status.message), clock()
        elif clock() - moved_at >= stall_seconds:
            await provider.cancel_import(import_ref)
            raise ImportStalled(stalled_reason(stall_seconds / 60, status.message))
        await asyncio.sleep(poll_seconds)
