"""The secrets file: the agent key and the repository passphrase, readable only by the
account the agent runs as.

- Linux: mode 0600. Written as a new file (O_EXCL, mode 0600 from the start, so it is
  never readable by others, not even for a moment) and renamed over the old one. When
  root writes it (`sudo reclo-agent register`), it is handed to the owner of its folder:
  the installation makes /etc/reclo the service account's, so the service can read what
  the administrator stored. A file that others can read is refused, as ssh does.
- Windows: the file's inherited permissions are removed and only SYSTEM (the service's
  account) and the Administrators group get access, by SID so it works in every language.

The password given to `register` is never written anywhere.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from .exits import ConfigError

# Well-known SIDs: LocalSystem and BUILTIN\Administrators.
_WINDOWS_GRANTS = ("*S-1-5-18:F", "*S-1-5-32-544:F")


@dataclass
class Secrets:
    agent_key: str | None = None
    passphrase: str | None = None


def read(path: Path) -> Secrets:
    try:
        if os.name == "posix":
            st = os.stat(path)
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"{path} can be read by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                    f"it holds the agent key and the passphrase: run chmod 600 {path}")
        raw = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Secrets()
    except PermissionError:
        raise ConfigError(f"cannot read {path}: permission denied (run as the agent's account)") from None
    try:
        doc = json.loads(raw)
        return Secrets(agent_key=doc.get("agent_key"), passphrase=doc.get("passphrase"))
    except (ValueError, AttributeError):
        raise ConfigError(f"{path} is damaged (not the JSON the agent writes)") from None


def update(path: Path, **values: str | None) -> Secrets:
    """Change some secrets, keeping the others."""
    secrets = read(path)
    for key, value in values.items():
        setattr(secrets, key, value)
    write(path, secrets)
    return secrets


def write(path: Path, secrets: Secrets) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({k: v for k, v in asdict(secrets).items() if v is not None}, indent=1).encode()
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _restrict(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _restrict(path: Path) -> None:
    if sys.platform == "win32":
        result = subprocess.run(
            ["icacls", str(path), "/inheritance:r", "/grant:r", *_WINDOWS_GRANTS],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise ConfigError(f"cannot restrict access to {path}: {result.stdout or result.stderr}")
        return
    os.chmod(path, 0o600)  # whatever the umask did
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        folder = os.stat(path.parent)
        if (folder.st_uid, folder.st_gid) != (0, 0):
            os.chown(path, folder.st_uid, folder.st_gid)
