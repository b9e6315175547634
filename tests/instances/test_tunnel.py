"""A real tunnel: two network namespaces joined by a veth pair, wireguard-go on each side,
configured from the gateway file the service wrote and the .conf it returned (with a key
pair made here), carry a TCP connection.

Needs root (network namespaces) and `wireguard-tools wireguard-go iproute2`. Where they are
missing the test fails saying so: it never skips.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from services.instances.vpn import generate_private_key, public_key_of, setconf_text
from shared.api.instances import with_private_key
from shared.events import ImportCompleted
from tests.harness import Api, running_stack, settings_for
from tests.instances.helpers import SERVICES, listen, of_type, publish, sign_up
from tests.support import eventually

UNDERLAY = {"server": "192.0.2.1", "client": "192.0.2.2"}  # TEST-NET-1, inside the namespaces
ECHO_PORT = 7777
# The first packets may be lost while the handshake completes: the client retries this long.
CONNECT_SECONDS = 20.0

ECHO_SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen()
print("listening", flush=True)
while True:
    connection, _ = server.accept()
    connection.sendall(b"echo: " + connection.recv(1024))
    connection.close()
"""

ECHO_CLIENT = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[3])
while True:
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
            c.sendall(b"hello through the tunnel")
            print(c.recv(1024).decode(), flush=True)
            break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
"""


def run(*command: str, timeout: float = 20) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


class Namespaces:
    """Two namespaces, a veth pair between them, and the processes started inside; all
    removed by close()."""

    def __init__(self, unique: str) -> None:
        tag = unique[:8]
        self.ns = {"server": f"rcs{tag}", "client": f"rcc{tag}"}
        # Interface names are global to the machine for wireguard-go's control socket.
        self.wg = {"server": f"wgs{tag}", "client": f"wgc{tag}"}
        self.veth = {"server": f"ves{tag}", "client": f"vec{tag}"}
        self.processes: list[subprocess.Popen] = []
        self.made: list[str] = []

    def open(self) -> None:
        missing = [t for t in ("ip", "wg", "wireguard-go") if shutil.which(t) is None]
        if missing:
            pytest.fail(f"the tunnel test needs {', '.join(missing)}: apt-get install "
                        "wireguard-tools wireguard-go iproute2")
        for side, name in self.ns.items():
            done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.fail("the tunnel test must create network namespaces (root, or "
                            f"CAP_SYS_ADMIN and CAP_NET_ADMIN): {done.stderr.strip()}")
            self.made.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "link", "add", self.veth["server"], "type", "veth", "peer", "name",
            self.veth["client"])
        for side in ("server", "client"):
            run("ip", "link", "set", self.veth[side], "netns", self.ns[side])
            run("ip", "-n", self.ns[side], "addr", "add", f"{UNDERLAY[side]}/24", "dev",
                self.veth[side])
            run("ip", "-n", self.ns[side], "link", "set", self.veth[side], "up")

    def spawn(self, side: str, *command: str, **kw) -> subprocess.Popen:
        process = subprocess.Popen(["ip", "netns", "exec", self.ns[side], *command], **kw)
        self.processes.append(process)
        return process

    def wireguard(self, side: str, conf: str, folder: Path) -> None:
        """wireguard-go in the namespace, set up as wg-quick would from ``conf``."""
        name = self.wg[side]
        self.spawn(side, "env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", "-f", name,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        socket_path = Path("/var/run/wireguard") / f"{name}.sock"
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert time.monotonic() < deadline, f"wireguard-go made no {socket_path}"
            time.sleep(0.05)
        stripped = folder / f"{name}.setconf"
        stripped.write_text(setconf_text(conf))
        stripped.chmod(0o600)
        run("ip", "netns", "exec", self.ns[side], "wg", "setconf", name, str(stripped))
        sections = _sections(conf)
        for address in sections["Interface"]["Address"]:
            run("ip", "-n", self.ns[side], "addr", "add", address, "dev", name)
        run("ip", "-n", self.ns[side], "link", "set", name, "up")
        if side == "client":  # wg-quick routes each AllowedIPs network into the tunnel
            for allowed in sections["Peer"]["AllowedIPs"][0].split(","):
                network = ipaddress.ip_network(allowed.strip())
                run("ip", "-n", self.ns[side], "route", "replace", str(network), "dev", name)

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for name in self.made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _sections(conf: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in conf.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif line:
            key, value = (p.strip() for p in line.split("=", 1))
            current.setdefault(key, []).append(value)
    return sections


@pytest.fixture
def namespaces(unique):
    spaces = Namespaces(unique)
    try:
        spaces.open()
        yield spaces
    finally:
        spaces.close()


async def test_a_tcp_connection_crosses_the_generated_tunnel(tmp_path, unique, namespaces):
    settings = settings_for("embedded", tmp_path, unique)
    settings.instances.local_vpn_endpoint = f"{UNDERLAY['server']}:{settings.instances.vpn_port}"
    client_private = generate_private_key()
    async with running_stack(settings, SERVICES) as (stack, base), \
            aiohttp.ClientSession() as http:
        api = Api(http, base)
        user = await sign_up(api, f"ann{unique}")
        received = await listen(stack)
        await publish(stack, ImportCompleted(recovery_id=f"r-{unique}", user_id=user,
                                             provider="local", image_ref="file:///d.raw"))
        (ready,) = await eventually(lambda: of_type(received, "InstanceReady"))
        status, body, _ = await api.call(
            "POST", f"/api/v1/instances/{ready['instance_id']}/vpn-peers",
            json={"public_key": public_key_of(client_private), "name": "tunnel test"})
        assert status == 201, body
        client_conf = with_private_key(body["config"], client_private)
        (server_file,) = (tmp_path / "data" / "instances" / "wireguard").glob("*.conf")
        server_conf = server_file.read_text()

    namespaces.wireguard("server", server_conf, tmp_path)
    namespaces.wireguard("client", client_conf, tmp_path)
    gateway_ip = _sections(server_conf)["Interface"]["Address"][0].split("/")[0]
    echo = namespaces.spawn("server", sys.executable, "-c", ECHO_SERVER, gateway_ip,
                            str(ECHO_PORT), stdout=subprocess.PIPE, text=True)
    assert echo.stdout.readline().strip() == "listening"
    answer = run("ip", "netns", "exec", namespaces.ns["client"], sys.executable, "-c",
                 ECHO_CLIENT, gateway_ip, str(ECHO_PORT), str(CONNECT_SECONDS),
                 timeout=CONNECT_SECONDS + 10)
    assert answer.strip() == "echo: hello through the tunnel"
    # It went through WireGuard: the client's peer (the gateway) has a handshake and bytes.
    shown = run("wg", "show", namespaces.wg["client"], "dump").splitlines()
    peer = shown[1].split("\t")
    assert peer[0] == public_key_of(_sections(server_conf)["Interface"]["PrivateKey"][0])
    assert int(peer[4]) > 0 and int(peer[5]) > 0 and int(peer[6]) > 0
