"""`vpn config` writes a file WireGuard's own tools take as it is, with a key made on this
computer; `vpn up` and `vpn down` bring the tunnel up and down with wg-quick (userspace
wireguard-go, inside a network namespace of the test's own, so the machine is untouched)."""

import asyncio
import base64
import contextlib
import os
import shutil
import stat
import subprocess

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.recovery_client.conftest import api_for
from tests.recovery_client.support import BIN, image_backup, known_to_recovery
from tests.support import eventually

NEEDS = ("wg", "wg-quick", "wireguard-go", "ip")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def conf_values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            values.setdefault(key, []).append(value)
    return values


def public_of(private_b64: str) -> str:
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@contextlib.contextmanager
def namespace(name: str):
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


async def test_vpn_config_parses_with_wg_and_the_tunnel_comes_up(
        local_stack, recover, http, unique, tmp_path):
    missing = [tool for tool in NEEDS if shutil.which(tool) is None]
    assert not missing, f"install {missing} (apt-get install wireguard-tools wireguard-go iproute2)"
    assert os.geteuid() == 0, "network namespaces need root (CI runs as root)"
    stack = local_stack
    api = api_for(http, stack)
    username = f"vpn-{unique}"
    await api.register_and_login(username)
    await image_backup(tmp_path, stack.base_url, username)
    await recover("login", "--server", stack.base_url, "--username", username)
    backup = (await recover("backups", "--json")).json()[0]
    await known_to_recovery(stack, backup["id"])
    await recover("start", backup["id"], "--target", "local", "--wait", "--json")
    instance = (await recover("instances", "--json")).json()[0]
    assert instance["vpn_state"] == "ready", instance

    conf = tmp_path / "mine.conf"
    await recover("vpn", "config", instance["id"], "-o", str(conf))
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    values = conf_values(conf.read_text())
    private = values["PrivateKey"][0]

    # wg-quick's own parser takes it, and `wg setconf` on a real interface accepts what is
    # left: the interface then has the public key of the private key made here.
    stripped = sh("wg-quick", "strip", str(conf)).stdout
    assert "Address" not in stripped and "PrivateKey" in stripped
    iface = f"wgt{unique[:8]}"
    with namespace(f"rc-t{unique}") as ns:
        process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, "wireguard-go", "-f", iface,
            env={**os.environ, "WG_PROCESS_FOREGROUND": "1"},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await eventually(lambda: sh("ip", "netns", "exec", ns, "wg", "show", iface,
                                        check=False).returncode == 0, timeout=10)
            (tmp_path / "stripped.conf").write_text(stripped)
            sh("ip", "netns", "exec", ns, "wg", "setconf", iface, str(tmp_path / "stripped.conf"))
            shown = sh("ip", "netns", "exec", ns, "wg", "show", iface, "dump").stdout.splitlines()
            own, peer = shown[0].split("\t"), shown[1].split("\t")
            assert own[0] == private and own[1] == public_of(private)
            assert peer[0] == values["PublicKey"][0]
            assert peer[3] == values["AllowedIPs"][0].replace(" ", "")
        finally:
            process.terminate()
            await process.wait()

    # `vpn up` with that file, then `vpn down`, inside a namespace of their own.
    env = {**recover.env, "PATH": os.environ["PATH"]}
    with namespace(f"rc-u{unique}") as ns:
        up = sh("ip", "netns", "exec", ns, "env", *[f"{k}={v}" for k, v in env.items()],
                str(BIN / "reclo-recover"), "vpn", "up", instance["id"], "--config", str(conf),
                check=False)
        assert up.returncode == 0, up.stderr
        tunnel = sh("ip", "netns", "exec", ns, "wg", "show", "interfaces").stdout.split()
        assert len(tunnel) == 1 and tunnel[0].startswith("rc-") and len(tunnel[0]) <= 15
        assert sh("ip", "netns", "exec", ns, "wg", "show", tunnel[0], "public-key").stdout.strip() \
            == public_of(private)
        addresses = sh("ip", "-br", "-netns", ns, "addr", "show", tunnel[0]).stdout
        assert values["Address"][0].split("/")[0] in addresses
        kept = recover.config / "vpn" / f"{tunnel[0]}.conf"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        down = sh("ip", "netns", "exec", ns, "env", *[f"{k}={v}" for k, v in env.items()],
                  str(BIN / "reclo-recover"), "vpn", "down", instance["id"], check=False)
        assert down.returncode == 0, down.stderr
        assert sh("ip", "netns", "exec", ns, "wg", "show", "interfaces").stdout.strip() == ""
