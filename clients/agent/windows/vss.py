"""Reading folders from a VSS shadow copy, so open files (a mailbox, a database, a file
being saved) are read as they were at one instant instead of half-written.

Before a backup the agent asks Windows for a shadow copy of each volume that holds a
folder source (WMI's Win32_ShadowCopy.Create through PowerShell: no pywin32, and the
same call `vssadmin create shadow` makes, which exists only on Windows Server), links
it at a fixed place under the state folder (`<state>\\vss\\D` for volume D:) and backs up
the folder through that link; afterwards the link and the shadow copy are deleted. The
fixed link path keeps the path the snapshot records the same from one backup to the
next, so incrementals find their parent.

Image sources are read as they are: a VHDX written by `wbadmin start backup` (a pre
command) is complete when the command ends. UNC paths cannot be shadow-copied and are
read directly. A shadow copy left by a killed run is deleted by the next one.

Not testable off Windows; docs/agent.md says how to try it by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator, Sequence

from shared.format import Source

from ..config import IMAGE, SourceConfig
from ..exits import AgentError

# Creating a shadow copy of a busy volume takes seconds to a minute (VSS writers flush).
CREATE_TIMEOUT = 600
_LEFTOVERS = "shadows.json"


def _powershell(script: str, timeout: float = CREATE_TIMEOUT) -> str:
    result = subprocess.run(
        ["powershell.exe", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-Command", script],
        capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AgentError(f"VSS: {result.stderr.strip() or result.stdout.strip() or 'PowerShell failed'}")
    return result.stdout.strip()


def create_shadow(volume: str) -> tuple[str, str]:
    """A shadow copy of a volume ("C:\\"): (its id, its device path)."""
    out = _powershell(
        "$r = Invoke-CimMethod -ClassName Win32_ShadowCopy -MethodName Create "
        f"-Arguments @{{Volume='{volume}'; Context='ClientAccessible'}}; "
        "if ($r.ReturnValue -ne 0) { [Console]::Error.WriteLine('Win32_ShadowCopy.Create returned ' + $r.ReturnValue); exit 1 }; "
        "$s = Get-CimInstance Win32_ShadowCopy | Where-Object { $_.ID -eq $r.ShadowID }; "
        "@{id=$s.ID; device=$s.DeviceObject} | ConvertTo-Json -Compress")
    doc = json.loads(out)
    return doc["id"], doc["device"]


def delete_shadow(shadow_id: str) -> None:
    _powershell(f"Get-CimInstance Win32_ShadowCopy | Where-Object {{ $_.ID -eq '{shadow_id}' }} | Remove-CimInstance",
                timeout=120)


def _vss_folder(state_dir: Path) -> Path:
    return Path(state_dir) / "vss"


def link_path(state_dir: Path, path: str) -> str:
    """Where a source is read (and recorded) from: its place under the volume's link."""
    full = os.path.abspath(path)
    drive, rest = os.path.splitdrive(full)
    if not drive or drive.startswith("\\\\"):
        return full  # UNC: no shadow copy
    return str(_vss_folder(state_dir) / drive.rstrip(":").upper() / rest.lstrip("\\/"))


def _clean_leftovers(folder: Path) -> None:
    record = folder / _LEFTOVERS
    try:
        ids = json.loads(record.read_text())
    except (OSError, ValueError):
        ids = []
    for shadow_id in ids:
        with contextlib.suppress(AgentError, subprocess.SubprocessError):
            delete_shadow(shadow_id)
    for link in folder.glob("?"):
        with contextlib.suppress(OSError):
            os.rmdir(link)  # removes the directory symlink, not what it points to
    record.unlink(missing_ok=True)


@contextlib.contextmanager
def shadowed(sources: Sequence[SourceConfig], state_dir: Path) -> Iterator[list[Source]]:
    folder = _vss_folder(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(folder)
    volumes = sorted({os.path.splitdrive(os.path.abspath(s.path))[0].upper() for s in sources
                      if s.kind != IMAGE and link_path(state_dir, s.path) != os.path.abspath(s.path)})
    created: list[str] = []
    try:
        for drive in volumes:
            shadow_id, device = create_shadow(drive + "\\")
            created.append(shadow_id)
            (folder / _LEFTOVERS).write_text(json.dumps(created))
            os.symlink(device + "\\", folder / drive.rstrip(":"), target_is_directory=True)
        yield [Source(s.path if s.kind == IMAGE else link_path(state_dir, s.path), s.kind) for s in sources]
    finally:
        _clean_leftovers(folder)
