"""The local provider: the finished image (raw, VHD or VMDK) is kept under the data dir and
downloaded through the gateway. "Importing" is moving it into place and taking its digest.

An image's ref is its file name (``<recovery id>.<ext>``) inside the images folder; nothing
else is ever opened, so a ref can't point outside it.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import shutil
from pathlib import Path

from services.recovery.domain import EXTENSIONS
from services.recovery.providers import (
    ComputeProvider,
    ImageFacts,
    ImageTask,
    ImportStatus,
    Progress,
    ProviderError,
)

# Digest and copy in pieces of this size: big enough for full disk speed, small enough to
# report progress often and hold little memory.
READ_PIECE = 4 << 20
_REF = re.compile(r"^[0-9a-f]{32}\.(raw|vhd|vmdk)$")


class LocalProvider(ComputeProvider):
    name = "local"
    formats = ("raw", "vhd", "vmdk")

    def __init__(self, images_dir: Path, qemu_img: str = "qemu-img") -> None:
        self.images_dir = Path(images_dir)
        self.qemu_img = qemu_img

    async def preflight(self, disk_format: str) -> None:
        if disk_format not in self.formats:
            raise ProviderError(f"a local image is raw, vhd or vmdk, not {disk_format}")
        # raw needs no conversion and VMDKs are written by our own writer (vmdk.py).
        if disk_format == "vhd" and shutil.which(self.qemu_img) is None:
            raise ProviderError(f"{disk_format} images need qemu-img, which is not installed on "
                                "the recovery worker; choose raw or vmdk, or install qemu-utils")
        try:
            await asyncio.to_thread(self.images_dir.mkdir, parents=True, exist_ok=True)
        except OSError as e:
            raise ProviderError(f"the images folder {self.images_dir} cannot be created: "
                                f"{e.strerror}") from None
        if not os.access(self.images_dir, os.W_OK | os.X_OK):
            raise ProviderError(f"the images folder {self.images_dir} is not writable")

    async def stage(self, task: ImageTask, image: Path, progress: Progress) -> str:
        ref = f"{task.recovery_id}.{EXTENSIONS[task.disk_format]}"
        await asyncio.to_thread(self.images_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(_move_sparse, image, self.images_dir / ref)
        await progress(1, 1)
        return ref

    async def begin_import(self, task: ImageTask, staged_ref: str) -> str:
        return staged_ref

    async def poll_import(self, import_ref: str) -> ImportStatus:
        path = self.image_path(import_ref)
        if path is None or not await asyncio.to_thread(path.is_file):
            return ImportStatus(failed=True, message="the image file is gone from the images folder")
        return ImportStatus(done=True, progress=100, image_ref=import_ref)

    async def cancel_import(self, import_ref: str) -> None:
        pass  # nothing runs in the background

    async def release_staging(self, staged_ref: str) -> None:
        pass  # the staged file is the image itself

    async def discard(self, *, staged_ref: str | None, import_ref: str | None,
                      image_ref: str | None) -> None:
        for ref in {staged_ref, import_ref, image_ref} - {None}:
            path = self.image_path(ref)  # type: ignore[arg-type]
            if path is not None:
                await asyncio.to_thread(path.unlink, missing_ok=True)

    async def image_facts(self, image_ref: str, progress: Progress) -> ImageFacts:
        path = self.image_path(image_ref)
        if path is None:
            raise ProviderError(f"not an image of this service: {image_ref}")
        loop = asyncio.get_running_loop()
        size = (await asyncio.to_thread(path.stat)).st_size
        digest = hashlib.sha256()
        done = 0
        with open(path, "rb") as f:
            while piece := await loop.run_in_executor(None, f.read, READ_PIECE):
                digest.update(piece)
                done += len(piece)
                await progress(done, size)
        return ImageFacts(size=size, sha256=digest.hexdigest())

    def image_path(self, image_ref: str) -> Path | None:
        return self.images_dir / image_ref if _REF.fullmatch(image_ref) else None

    def shared_ref(self, image_ref: str) -> str:
        # Instances starts the machine on this host from the file itself (QEMU).
        return self.images_dir.resolve().joinpath(image_ref).as_uri()


def _move_sparse(source: Path, dest: Path) -> None:
    """Rename into place; across filesystems, copy keeping the holes (a plain copy would
    write every zero of a sparse 100 GB disk) and then remove the source."""
    try:
        os.replace(source, dest)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    temp = dest.with_name(f".{dest.name}.partial")
    with open(source, "rb") as src, open(temp, "wb") as out:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole remains
                    break
                raise
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            while start < end:
                piece = os.pread(src.fileno(), min(READ_PIECE, end - start), start)
                os.pwrite(out.fileno(), piece, start)
                start += len(piece)
            offset = end
        out.truncate(size)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, dest)
    source.unlink()
