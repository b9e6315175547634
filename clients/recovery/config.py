"""Where the Recovery Manager keeps its session: the server's address, the username and
the session token, in the user's own config folder, readable by that user alone.

- Linux and macOS: ``$XDG_CONFIG_HOME/reclo`` (``~/.config/reclo``), file mode 0600 from
  the moment it exists (created with O_EXCL, then renamed over the old one).
- Windows: ``%APPDATA%\\ReClo``, a folder only its user can read by default.
``RECLO_RECOVER_CONFIG_DIR`` puts it elsewhere (a second account, tests).

The password is never stored: only the session token, which expires (7 days) and which
``reclo-recover logout`` revokes at once.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from clients.recovery.exits import NotSignedIn

SESSION_FILE = "session.json"
ENV_DIR = "RECLO_RECOVER_CONFIG_DIR"


def config_dir() -> Path:
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    if os.name == "nt":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "ReClo"
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "reclo"


@dataclass
class SavedSession:
    server: str
    username: str
    token: str
    expires_at: str | None = None


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, never readable by others even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save(session: SavedSession) -> Path:
    path = config_dir() / SESSION_FILE
    write_private(path, json.dumps(asdict(session), indent=2).encode())
    return path


def load() -> SavedSession:
    path = config_dir() / SESSION_FILE
    try:
        data = json.loads(path.read_text())
        return SavedSession(**data)
    except FileNotFoundError:
        raise NotSignedIn("not signed in: run `reclo-recover login --server URL --username NAME`") from None
    except (ValueError, TypeError):
        raise NotSignedIn(f"the saved session in {path} is unreadable: sign in again") from None


def forget() -> None:
    (config_dir() / SESSION_FILE).unlink(missing_ok=True)
