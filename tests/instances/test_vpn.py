"""WireGuard without a tunnel: keys agree with `wg`, addresses are handed out in order,
and the configuration files read back the way wg-quick and `wg` read them."""

import base64
import subprocess
from ipaddress import IPv4Network

import pytest

from services.instances import vpn
from shared.api.instances import InvalidKey, check_public_key, with_private_key

SUBNET = IPv4Network("10.77.0.0/24")
# Points of small order on Curve25519: no handshake can succeed with them.
LOW_ORDER = [bytes(32), bytes([1]) + bytes(31),
             bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")]


def wg(*args: str, stdin: str = "") -> str:
    return subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_public_keys_are_what_wg_pubkey_prints():
    for _ in range(5):
        private = vpn.generate_private_key()
        assert vpn.public_key_of(private) == wg("pubkey", stdin=private + "\n")
    private = wg("genkey")
    assert vpn.public_key_of(private) == wg("pubkey", stdin=private + "\n")


def test_a_public_key_from_wg_is_accepted_as_written():
    public = wg("pubkey", stdin=wg("genkey") + "\n")
    assert check_public_key(public) == public
    assert check_public_key(f"  {public}\n") == public


@pytest.mark.parametrize("bad", [
    "", "abc", "A" * 43, "A" * 45, "!" * 44,
    base64.b64encode(bytes(33)).decode()[:44],  # 33 bytes don't fit in 44 characters
    base64.b64encode(bytes(31)).decode() + "A",
    "AAAA AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    *(base64.b64encode(point).decode() for point in LOW_ORDER),
])
def test_what_is_not_a_usable_public_key_is_refused(bad):
    with pytest.raises(InvalidKey):
        check_public_key(bad)


def test_addresses_start_after_the_gateway_and_fill_gaps():
    assert str(vpn.gateway_address(SUBNET)) == "10.77.0.1"
    assert str(vpn.allocate(SUBNET, [])) == "10.77.0.2"
    assert str(vpn.allocate(SUBNET, ["10.77.0.2", "10.77.0.4"])) == "10.77.0.3"
    assert vpn.host_index(SUBNET, "10.77.0.7") == 7
    small = IPv4Network("10.9.0.0/29")  # hosts .1-.6: gateway and five peers
    taken = [f"10.9.0.{n}" for n in range(2, 7)]
    with pytest.raises(vpn.AddressesExhausted):
        vpn.allocate(small, taken)


def _sections(conf: str) -> list[tuple[str, dict[str, list[str]]]]:
    sections: list[tuple[str, dict[str, list[str]]]] = []
    for line in conf.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append((line, {}))
        else:
            key, value = (part.strip() for part in line.split("=", 1))
            sections[-1][1].setdefault(key, []).append(value)
    return sections


def test_client_conf_names_the_gateway_and_routes_the_recovery_network():
    gateway_key = vpn.public_key_of(vpn.generate_private_key())
    text = vpn.client_conf(vpn.ClientConfig(
        address="10.77.0.5", subnet=SUBNET, gateway_public_key=gateway_key,
        endpoint="198.51.100.7:51820", routed=[IPv4Network("10.0.1.0/24")],
        keepalive_seconds=25, label="laptop"))
    (interface, i), (peer, p) = _sections(text)
    assert interface == "[Interface]" and i == {"Address": ["10.77.0.5/32"]}
    assert peer == "[Peer]"
    assert p == {"PublicKey": [gateway_key], "Endpoint": ["198.51.100.7:51820"],
                 "AllowedIPs": ["10.0.1.0/24, 10.77.0.0/24"], "PersistentKeepalive": ["25"]}
    assert "PrivateKey" not in text.replace("# Add your private key to [Interface] as "
                                            "\"PrivateKey = ...\"", "")
    mine = vpn.generate_private_key()
    ready = with_private_key(text, mine)
    assert _sections(ready)[0][1]["PrivateKey"] == [mine]
    with pytest.raises(ValueError):
        with_private_key(ready, mine)


def test_server_conf_strips_to_what_wg_quick_strip_prints(tmp_path):
    peers = [vpn.Peer(vpn.public_key_of(vpn.generate_private_key()), f"10.77.0.{n}")
             for n in (2, 3)]
    private = vpn.generate_private_key()
    for config in (
        vpn.ServerConfig(subnet=SUBNET, listen_port=51820, peers=peers, private_key=private),
        vpn.ServerConfig(subnet=SUBNET, listen_port=51820, peers=peers,
                         forward_to=[IPv4Network("10.0.1.0/24")]),
    ):
        text = vpn.server_conf(config)
        path = tmp_path / "wg0.conf"
        path.write_text(text)
        stripped = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True,
                                  text=True, check=True).stdout
        # wg-quick keeps comments; wg ignores them.
        kept = [line for line in stripped.splitlines() if not line.startswith("#")]
        assert vpn.setconf_text(text).split() == " ".join(kept).split()
        (_, interface), *rest = _sections(text)
        assert interface["Address"] == ["10.77.0.1/24"]
        assert [s["AllowedIPs"] for _, s in rest] == [["10.77.0.2/32"], ["10.77.0.3/32"]]
    assert f"PrivateKey = {private}" in vpn.server_conf(vpn.ServerConfig(
        subnet=SUBNET, listen_port=1, private_key=private))
    keyless = vpn.server_conf(vpn.ServerConfig(subnet=SUBNET, listen_port=1))
    assert "PrivateKey" not in keyless and f"private-key {vpn.GATEWAY_KEY_PATH}" in keyless
