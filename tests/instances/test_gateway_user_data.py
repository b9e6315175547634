"""The aws gateway's cloud-init: parseable, its scripts valid shell, no secret inside, and
the public key found again in a console output."""

import base64
import json
import re
import subprocess
from ipaddress import IPv4Network

import yaml

from services.instances import gateway, vpn

SUBNET = IPv4Network("10.77.0.0/24")
RECOVERY = IPv4Network("10.0.1.0/24")


def _config() -> dict:
    text = gateway.user_data(SUBNET, 51820, [RECOVERY])
    assert text.startswith("#cloud-config\n")
    assert len(text.encode()) <= gateway.USER_DATA_LIMIT
    config = yaml.safe_load(text)
    assert config == json.loads(text.split("\n", 1)[1])  # JSON and YAML read it alike
    return config


def test_user_data_is_cloud_config_that_installs_and_starts_wireguard():
    config = _config()
    assert "wireguard-tools" in config["packages"]
    files = {f["path"]: f for f in config["write_files"]}
    wg0 = files["/etc/wireguard/wg0.conf"]
    assert wg0["permissions"] == "0600"
    assert "Address = 10.77.0.1/24" in wg0["content"]
    assert "ListenPort = 51820" in wg0["content"]
    assert f"iptables -t nat -A POSTROUTING -s {SUBNET} ! -o %i -j MASQUERADE" in wg0["content"]
    commands = [" ".join(c) for c in config["runcmd"]]
    # The key pair is made before the interface that loads it, announced after.
    order = [next(i for i, c in enumerate(commands) if unit in c) for unit in (
        "reclo-wg-keygen", "wg-quick@wg0", "reclo-wg-announce", "reclo-wg-sync.timer")]
    assert order == sorted(order)
    for name in gateway.UNITS:
        assert f"/etc/systemd/system/{name}" in files


def test_user_data_holds_no_key_and_only_valid_shell():
    config = _config()
    text = json.dumps(config)
    assert "PrivateKey" not in text
    # Nothing that looks like a WireGuard key (44 characters of base64) is in it.
    assert not re.search(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=", text)
    for f in config["write_files"]:
        if f["path"].startswith("/usr/local/sbin/"):
            assert f["content"].startswith("#!/bin/sh\n")
            subprocess.run(["sh", "-n"], input=f["content"], text=True, check=True)
            assert f["permissions"] == "0755"


def test_the_public_key_is_read_back_from_a_console_output():
    public = vpn.public_key_of(vpn.generate_private_key())
    console = "\n".join([
        "[    0.000000] Linux version 6.1.0-18-cloud-amd64",
        "[   14.123456] cloud-init[512]: Cloud-init v. 22.4.2 running 'modules:final'",
        f"[   31.000001] {gateway.KEY_MARKER} {public}",
        "[   31.500000] cloud-init[512]: Cloud-init v. 22.4.2 finished",
    ])
    assert gateway.key_from_console(console) == public
    assert gateway.key_from_console("booting...\n") is None
    assert gateway.key_from_console(f"{gateway.KEY_MARKER} not-a-key\n") is None
    # The last good line wins (a line cut in half at the end of the buffer does not).
    other = vpn.public_key_of(vpn.generate_private_key())
    assert gateway.key_from_console(
        f"{gateway.KEY_MARKER} {public}\n{gateway.KEY_MARKER} {other}\n"
        f"{gateway.KEY_MARKER} {other[:20]}") == other


def test_peer_tags_carry_key_and_address():
    public = vpn.public_key_of(vpn.generate_private_key())
    tags = gateway.peer_tags([(2, public, "10.77.0.2")])
    assert tags == {"reclo:peer:2": f"{public} 10.77.0.2/32"}
    # Tag values allow letters, digits, spaces and + - = . _ : / @ : base64 fits.
    assert set(tags["reclo:peer:2"]) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 +-=._:/@")
    assert len(tags["reclo:peer:2"]) <= 256
    assert base64.b64decode(public)
