"""What a command starts before the program has loaded: the repository's key.

Loading the agent (asyncio, the cipher library, zstd, the data path) takes ~0.3 s from a
cold disk, and the key derivation (scrypt, ~0.2 s) came after it. Where the command line
and the configuration already say which folder the repository is in, and the passphrase
is at hand without asking (RECLO_PASSPHRASE or the secrets file), the derivation for the
folder's first passphrase slot starts in a thread now (shared/format/kdf.py): a day
incremental or a restore of the benchmark ends ~0.1-0.2 s sooner (docs/BENCHMARKS.md).

Best effort and silent: anything missing or unreadable here means nothing is started, and
the command meets the same problem later and reports it its usual way. Only modules light
to load are imported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from shared.format.errors import FormatError
from shared.format.kdf import ScryptParams, decode_key_slot, derive_ahead, passphrase_slot

from . import config as configuration, secretfile

# The commands that open the repository with the passphrase (cli.py).
KEYED_COMMANDS = frozenset({"backup", "restore", "snapshots", "check"})
# Options of every command that take a value (cli.build_parser).
_VALUED = ("--config", "--repo")


def start(argv: Sequence[str]) -> None:
    """Start deriving the key that the command in argv will need, if that can be told now."""
    try:
        _start(argv)
    except Exception:  # noqa: BLE001 - see above: the command finds out again, and says so properly
        pass


def _start(argv: Sequence[str]) -> None:
    command, values = _command_and_values(argv)
    if command not in KEYED_COMMANDS:
        return
    cfg = configuration.load(Path(values["--config"]) if "--config" in values else None)
    url = values.get("--repo") or cfg.repository
    if not url or not url.startswith("file://"):
        return  # a server's repository: its key slot comes over the network, after login
    passphrase = os.environ.get("RECLO_PASSPHRASE") or secretfile.read(cfg.secrets_path).passphrase
    if not passphrase:
        return  # it will be asked for on the terminal
    slot = _first_passphrase_slot(configuration.repository_folder(url) / "keys")
    if slot is not None:
        salt, params = slot
        derive_ahead(passphrase, salt, params)


def _command_and_values(argv: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """The command's name and the values of --config and --repo, wherever they stand."""
    values: dict[str, str] = {}
    command = None
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in _VALUED:
            values[name] = value if eq else next(args, "")
        elif command is None and not arg.startswith("-"):
            command = arg
    return command, values


def _first_passphrase_slot(keys: Path) -> tuple[bytes, ScryptParams] | None:
    """The salt and parameters of the passphrase slot the repository tries first: the
    first by name (the store lists in that order) that it would accept; None if none."""
    try:
        names = sorted(os.listdir(keys))
    except OSError:
        return None
    for name in names:
        if name.startswith("."):
            continue  # a store's temporary file
        try:
            slot = decode_key_slot((keys / name).read_bytes())
            if slot["kind"] == "passphrase":
                salt, params, _ = passphrase_slot(slot)
                return salt, params
        except (OSError, FormatError):
            continue  # damaged or of another version: the repository skips it as well
    return None
