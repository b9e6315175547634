"""The VPN to a recovered machine: this computer makes its own WireGuard key pair, sends
only the public key (``POST /api/v1/instances/{id}/vpn-peers``) and writes the ``.conf``
with the private key, readable by its user alone. ``vpn up``/``down`` hand that file to
WireGuard: ``wg-quick`` on Linux and macOS, the WireGuard tunnel service on Windows."""

from __future__ import annotations

import asyncio
import base64
import os
import platform
import re
import shutil
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from clients.recovery.client import Api, seg
from clients.recovery.config import config_dir, write_private
from clients.recovery.exits import FAILED, USAGE, RecoverError, ToolMissing
from shared.api.instances import VpnPeerCreated, with_private_key

# wg-quick names the interface after the file, and Linux allows 15 characters.
INTERFACE_MAX = 15
WINDOWS_WIREGUARD = Path(os.environ.get("ProgramFiles", r"C:\Program Files")) / "WireGuard" / "wireguard.exe"
INSTALL_HINTS = {
    "Linux": "install WireGuard's tools: `sudo apt install wireguard-tools` (Debian, Ubuntu) or "
             "`sudo dnf install wireguard-tools` (Fedora, RHEL)",
    "Darwin": "install WireGuard's tools: `brew install wireguard-tools`",
    "Windows": "install WireGuard for Windows from https://www.wireguard.com/install/ "
               "and run this again as Administrator",
}


def key_pair() -> tuple[str, str]:
    """(private, public), base64 of 32 bytes each, as ``wg genkey | wg pubkey`` make."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode(), base64.b64encode(public).decode()


def interface_name(instance_id: str) -> str:
    """``rc-<start of the id>``: a valid interface name on every system."""
    return ("rc-" + re.sub(r"[^A-Za-z0-9]", "", instance_id))[:INTERFACE_MAX]


def tunnel_file(instance_id: str) -> Path:
    """Where `vpn up` keeps this machine's tunnel (one per instance)."""
    return config_dir() / "vpn" / f"{interface_name(instance_id)}.conf"


async def new_config(api: Api, instance_id: str, name: str | None = None) -> tuple[str, str]:
    """(the ready .conf, the name the service suggests for it). The private key is made
    here and never sent."""
    private_key, public_key = key_pair()
    body = {"public_key": public_key, "name": name or f"reclo-recover on {platform.node()}"[:64]}
    answer = await api.call("POST", f"/instances/{seg(instance_id)}/vpn-peers", json_body=body)
    created = VpnPeerCreated.model_validate(answer)
    return with_private_key(created.config, private_key), created.filename


def checked_config(text: str) -> str:
    """A .conf good enough to hand to WireGuard: an [Interface] with a private key."""
    lines = [line.strip() for line in text.splitlines()]
    if "[Interface]" not in lines or not any(line.lower().startswith("privatekey")
                                             for line in lines):
        raise RecoverError("that file is not a WireGuard configuration with a private key",
                           USAGE)
    return text


def write_config(path: Path, text: str) -> None:
    if os.name == "nt":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    else:
        write_private(path, text.encode())


def _system() -> str:
    return platform.system()


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None and name == "wireguard.exe" and WINDOWS_WIREGUARD.exists():
        found = str(WINDOWS_WIREGUARD)
    if found is None:
        hint = INSTALL_HINTS.get(_system(), f"install {name}")
        raise ToolMissing(f"{name} is not installed: {hint}")
    return found


def commands(action: str, conf: Path) -> list[str]:
    """The command that brings the tunnel up or down on this system."""
    if _system() == "Windows":
        exe = _tool("wireguard.exe")
        if action == "up":
            return [exe, "/installtunnelservice", str(conf)]
        return [exe, "/uninstalltunnelservice", conf.stem]
    return [_tool("wg-quick"), action, str(conf)]


async def run(argv: list[str]) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    text = output.decode(errors="replace").strip()
    if process.returncode != 0:
        raise RecoverError(f"{Path(argv[0]).name} failed (exit {process.returncode}): "
                           f"{text.splitlines()[-1] if text else 'no output'}", FAILED)
    return text
