"""Local machines under QEMU, as processes this service starts and stops.

Each machine boots from its own qcow2 overlay on the image recovery kept, so the
downloadable image stays as it was restored while the machine's own writes survive a stop.
The processes live as long as the service: stopping the service stops them (a local machine
is a convenience of the embedded mode, not a server to keep running unattended).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

from shared.logs import get_logger

log = get_logger(__name__)

# Image file suffixes -> QEMU's format names (recovery writes raw, VHD or VMDK).
FORMATS = {".raw": "raw", ".img": "raw", ".vhd": "vpc", ".vmdk": "vmdk", ".qcow2": "qcow2"}
# A machine asked to stop gets this long to power off (ACPI) before it is killed.
STOP_GRACE_SECONDS = 30.0


class QemuError(Exception):
    pass


class QemuMachines:
    def __init__(self, *, binary: str, memory_mib: int, cpus: int, folder: Path) -> None:
        self.binary = binary
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.folder = folder
        self._processes: dict[str, asyncio.subprocess.Process] = {}

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def overlay(self, name: str) -> Path:
        return self.folder / f"{name}.qcow2"

    async def create(self, name: str, image: Path) -> None:
        """The machine's overlay on ``image``."""
        if not image.is_file():
            raise QemuError(f"the image {image} is not a file on this host")
        self.folder.mkdir(parents=True, exist_ok=True)
        fmt = FORMATS.get(image.suffix.lower(), "raw")
        await self._run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.resolve()),
                        "-F", fmt, str(self.overlay(name)))

    async def start(self, name: str) -> None:
        if not self.available():
            raise QemuError(f"{self.binary} is not installed")
        if name in self._processes and self._processes[name].returncode is None:
            return
        overlay = self.overlay(name)
        if not overlay.exists():
            raise QemuError("the machine's disk is gone")
        process = await asyncio.create_subprocess_exec(
            self.binary, "-name", name, "-m", str(self.memory_mib), "-smp", str(self.cpus),
            "-drive", f"file={overlay},format=qcow2,if=virtio",
            "-nic", "user,model=virtio-net-pci", "-display", "none",
            "-serial", f"file:{self.folder / (name + '.console.log')}",
            "-monitor", "none", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        self._processes[name] = process
        log.info("qemu machine started", machine=name, pid=process.pid)

    async def stop(self, name: str) -> None:
        process = self._processes.pop(name, None)
        if process is None or process.returncode is not None:
            return
        process.terminate()  # QEMU powers the guest off on SIGTERM
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def remove(self, name: str) -> None:
        await self.stop(name)
        for path in (self.overlay(name), self.folder / f"{name}.console.log"):
            path.unlink(missing_ok=True)

    async def stop_all(self) -> None:
        for name in list(self._processes):
            with contextlib.suppress(Exception):
                await self.stop(name)

    async def _run(self, *command: str) -> None:
        if shutil.which(command[0]) is None:
            raise QemuError(f"{command[0]} is not installed")
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await process.communicate()
        if process.returncode != 0:
            raise QemuError(f"{command[0]} failed: {err.decode(errors='replace').strip()}")
