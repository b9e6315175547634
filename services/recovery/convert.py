"""Converting the assembled raw disk into what the target takes.

- vmdk: stream-optimized (compressed, sequential: what EC2 VM Import reads best), written
  by our own writer (``vmdk.py``) on every core; ``qemu-img`` deflates it on one core, 4–5
  min for a 10 GiB disk, far over the 2-minute target (docs/BENCHMARKS.md);
- vhd: ``qemu-img``, a dynamic VHD with ``force_size``, so the virtual size stays exactly
  the raw size (without it qemu-img rounds it to the VHD geometry and the disk grows).

Either way the task's progress follows: qemu-img is run with ``-p`` and prints
``(12.34/100%)`` as it goes; the VMDK writer counts the bytes of data it has read. A
cancelled conversion kills qemu-img, or stops the writer, and leaves no image behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.recovery.vmdk import Cancelled, VmdkError, write_stream_optimized

QEMU_OUTPUT = {  # what qemu-img still writes (VMDKs are vmdk.py's)
    "vhd": ["-O", "vpc", "-o", "subformat=dynamic,force_size=on"],
}
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
# How much of qemu-img's error output a failure reason quotes.
ERROR_TAIL = 400
# How often the VMDK writer's progress is handed on; the task only records a change of
# 2 % or 2 s anyway (domain.PROGRESS_*).
PROGRESS_SECONDS = 0.5


class ConversionFailed(Exception):
    pass


Progress = Callable[[int, int], Awaitable[None]]


async def convert(qemu_img: str, source: Path, dest: Path, disk_format: str,
                  progress: Progress) -> None:
    """``source`` (raw) into ``dest`` in ``disk_format``; ``progress(percent, 100)``."""
    if disk_format == "vmdk":
        await write_vmdk(source, dest, progress)
    else:
        await convert_with_qemu_img(qemu_img, source, dest, disk_format, progress)


async def write_vmdk(source: Path, dest: Path, progress: Progress) -> None:
    done = [0, 1]  # bytes of data read, of; written by the writer's thread
    stop = threading.Event()

    def report(read: int, total: int) -> None:
        done[:] = [read, total]

    writing = asyncio.ensure_future(asyncio.to_thread(
        write_stream_optimized, source, dest, report, stop))
    reported = 0
    try:
        await progress(0, 100)
        while not writing.done():
            await asyncio.wait({writing}, timeout=PROGRESS_SECONDS)
            percent = done[0] * 100 // max(1, done[1])
            if percent != reported:
                await progress(percent, 100)
                reported = percent
        writing.result()
    except VmdkError as e:
        raise ConversionFailed(f"could not write the disk as a VMDK: {e}") from None
    except BaseException:
        # Cancelled (or failed) here: the thread cannot be killed, so it is told to stop
        # and waited for (it removes its partial image); one that finished meanwhile
        # leaves an image nobody asked for any more.
        stop.set()
        with contextlib.suppress(Cancelled, VmdkError, OSError):
            await asyncio.shield(writing)
        dest.unlink(missing_ok=True)
        raise
    if reported != 100:
        await progress(100, 100)


async def convert_with_qemu_img(qemu_img: str, source: Path, dest: Path, disk_format: str,
                                 progress: Progress) -> None:
    args = [qemu_img, "convert", "-p", "-f", "raw", *QEMU_OUTPUT[disk_format],
            str(source), str(dest)]
    try:
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise ConversionFailed(f"{qemu_img} is not installed on the recovery worker "
                               "(install qemu-utils)") from None
    try:
        errors = asyncio.create_task(process.stderr.read())  # type: ignore[union-attr]
        buffer = b""
        while chunk := await process.stdout.read(256):  # type: ignore[union-attr]
            buffer += chunk
            found = _PROGRESS.findall(buffer)
            if found:
                await progress(int(float(found[-1])), 100)
                buffer = buffer[buffer.rfind(b")") + 1:]
        code = await process.wait()
        stderr = await errors
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if code != 0:
        detail = stderr.decode(errors="replace").strip()[-ERROR_TAIL:]
        raise ConversionFailed(f"qemu-img could not convert the disk to {disk_format}: "
                               f"{detail or f'exit status {code}'}")
