"""Converting the assembled raw disk with ``qemu-img`` into what the target takes.

- vmdk: stream-optimized (compressed, sequential: what EC2 VM Import reads best);
- vhd: dynamic VHD with ``force_size``, so the virtual size stays exactly the raw size
  (without it qemu-img rounds it to the VHD geometry and the disk grows).

qemu-img is run with ``-p``: it prints ``(12.34/100%)`` as it goes, which becomes the
task's progress. A cancelled conversion kills the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

QEMU_OUTPUT = {
    "vmdk": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
    "vhd": ["-O", "vpc", "-o", "subformat=dynamic,force_size=on"],
}
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
# How much of qemu-img's error output a failure reason quotes.
ERROR_TAIL = 400


class ConversionFailed(Exception):
    pass


async def convert(qemu_img: str, source: Path, dest: Path, disk_format: str,
                  progress: Callable[[int, int], Awaitable[None]]) -> None:
    """``source`` (raw) into ``dest`` in ``disk_format``; ``progress(percent, 100)``."""
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
