"""POST /api/v1/instances/{id}/vpn-peers: a client's public key in, a ready .conf out;
addresses unique per environment; the gateway's side follows (the local gateway's file, the
aws gateway's tags); no key ever in a log."""

import asyncio
import base64
import contextlib
import os
import stat
from datetime import UTC, datetime

import aiohttp
from aiobotocore.session import get_session
from aiobotocore.stub import AioStubber

from services.instances import environments
from services.instances import gateway as gw_module
from services.instances.vpn import generate_private_key, public_key_of
from shared.api.instances import with_private_key
from shared.events import ImportCompleted
from tests import infra
from tests.harness import Api, running_stack, settings_for
from tests.instances.helpers import (
    SERVICES,
    forget_listener,
    listen,
    of_type,
    publish,
    rows,
    sign_up,
    tags_of,
)
from tests.support import eventually


def parse(conf: str) -> list[tuple[str, dict[str, str]]]:
    sections: list[tuple[str, dict[str, str]]] = []
    for line in conf.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            sections.append((line, {}))
        elif line:
            key, value = (p.strip() for p in line.split("=", 1))
            sections[-1][1][key] = value
    return sections


async def _instance(stack, api, unique, provider="local", image="file:///images/d.raw"):
    user = await sign_up(api, f"ann{unique}")
    received = await listen(stack)
    await publish(stack, ImportCompleted(recovery_id=f"r-{unique}", user_id=user,
                                         provider=provider, image_ref=image))
    (ready,) = await eventually(lambda: of_type(received, "InstanceReady"))
    return ready["instance_id"]


@contextlib.asynccontextmanager
async def _local_machine(mode, tmp_path, unique):
    """A stack with the local gateway, a user's machine on it: (stack, api, its vpn-peers url)."""
    settings = settings_for(mode, tmp_path, unique)
    settings.instances.local_vpn_endpoint = "192.0.2.10:51820"
    try:
        async with running_stack(settings, SERVICES) as (stack, base), \
                aiohttp.ClientSession() as http:
            api = Api(http, base)
            instance = await _instance(stack, api, unique)
            yield stack, api, f"/api/v1/instances/{instance}/vpn-peers"
    finally:
        await forget_listener(settings)


async def test_local_peers_get_a_conf_and_the_gateway_file_follows(mode, tmp_path, unique,
                                                                   capfd):
    keys = [generate_private_key() for _ in range(2)]
    publics = [public_key_of(k) for k in keys]
    async with _local_machine(mode, tmp_path, unique) as (stack, api, url):
        instance = url.split("/")[-2]  # /api/v1/instances/<id>/vpn-peers

        status, body, _ = await api.call("POST", url, json={"public_key": publics[0],
                                                            "name": "laptop"})
        assert status == 201, body
        peer = body["peer"]
        assert (peer["address"], peer["public_key"], peer["name"], peer["instance_id"]) == (
            "10.77.0.2", publics[0], "laptop", instance)
        assert body["filename"].endswith(".conf")
        assert len(body["filename"].removesuffix(".conf")) <= 15  # a Linux interface name
        (_, interface), (_, remote) = parse(body["config"])
        assert interface == {"Address": "10.77.0.2/32"}  # no private key: the client's
        folder = tmp_path / "data" / "instances" / "wireguard"
        (key_file,) = folder.glob("*.key")
        (server_file,) = folder.glob("*.conf")
        server_private = key_file.read_text().strip()
        assert remote == {"PublicKey": public_key_of(server_private),
                          "Endpoint": "192.0.2.10:51820", "AllowedIPs": "10.77.0.0/24",
                          "PersistentKeepalive": "25"}
        assert "PrivateKey =" in with_private_key(body["config"], keys[0])

        # Asked again with the same key (a lost response): the same peer, 200.
        status, again, _ = await api.call("POST", url, json={"public_key": publics[0]})
        assert status == 200 and again["peer"]["id"] == peer["id"]
        assert again["config"] == body["config"]
        status, second, _ = await api.call("POST", url, json={"public_key": publics[1]})
        assert status == 201 and second["peer"]["address"] == "10.77.0.3"
        status, page, _ = await api.call("GET", url)
        assert [p["address"] for p in page["items"]] == ["10.77.0.2", "10.77.0.3"]

        # The gateway's own file: its key, both peers, readable by its owner only.
        assert stat.S_IMODE(os.stat(server_file).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        sections = parse(server_file.read_text())
        assert sections[0][1]["PrivateKey"] == server_private
        assert sections[0][1]["Address"] == "10.77.0.1/24"
        assert [(s["PublicKey"], s["AllowedIPs"]) for _, s in sections[1:]] == [
            (publics[0], "10.77.0.2/32"), (publics[1], "10.77.0.3/32")]

        # Requests at once take turns: new keys get addresses of their own, and one
        # key sent four times (retries) is one peer.
        more = [public_key_of(generate_private_key()) for _ in range(5)]
        answers = await asyncio.gather(*(api.call("POST", url, json={"public_key": k})
                                          for k in more + [more[0]] * 3))
        assert sorted(status for status, _, _ in answers) == [200] * 3 + [201] * 5, answers
        assert len({body["peer"]["id"] for _, body, _ in answers}) == 5
        status, page, _ = await api.call("GET", url)
        addresses = [p["address"] for p in page["items"]]
        assert len(addresses) == 7 == len(set(addresses))
        assert len(parse(server_file.read_text())) == 1 + 7  # the gateway's file follows

        # A peer taken out (a lost laptop): gone from the list and from the gateway.
        lost = page["items"][-1]
        status, _, _ = await api.call("DELETE", f"{url}/{lost['id']}")
        assert status == 204
        status, page, _ = await api.call("GET", url)
        assert lost["id"] not in [p["id"] for p in page["items"]] and len(page["items"]) == 6
        assert lost["public_key"] not in server_file.read_text()
        assert len(parse(server_file.read_text())) == 1 + 6
        status, problem, _ = await api.call("DELETE", f"{url}/{lost['id']}")
        assert status == 404 and problem["detail"] == "no such VPN peer"

        # The last machine terminated: the environment goes, and its files.
        status, _, _ = await api.call("POST", f"/api/v1/instances/{instance}/terminate")
        assert status == 200
        assert list(folder.iterdir()) == []
    out, err = capfd.readouterr()
    for secret in (server_private, *keys, *publics):
        assert secret not in out + err


async def test_aws_peer_waits_for_the_gateway_then_is_published_as_its_tag(
        tmp_path, unique, network, capfd):
    settings = settings_for("embedded", tmp_path, unique, instances=network.settings())
    ami, _ = network.image("machine")
    client_public = public_key_of(generate_private_key())
    gateway_public = public_key_of(generate_private_key())
    async with running_stack(settings, SERVICES) as (stack, base), \
            aiohttp.ClientSession() as http, \
            get_session().create_client("ec2", region_name="us-east-1",
                                        endpoint_url=infra.s3_endpoint()) as console:
        api = Api(http, base)
        instance = await _instance(stack, api, unique, "aws", ami)
        url = f"/api/v1/instances/{instance}/vpn-peers"
        status, body, _ = await api.call("GET", f"/api/v1/instances/{instance}")
        assert body["vpn_state"] == "provisioning"

        # moto's console output never has the key in it: the gateway is still booting.
        code, problem, _ = await api.call("POST", url, json={"public_key": client_public})
        assert code == 503 and "starting" in problem["detail"]

        # The gateway booted and printed its key. GetConsoleOutput as AWS would answer it
        # (botocore's Stubber checks the call against the real EC2 model).
        (gw,) = network.instances(**{"reclo:role": "vpn-gateway"})
        output = (f"[   12.000000] cloud-init[501]: Cloud-init v. 22.4.2 running\n"
                  f"{gw_module.KEY_MARKER} {gateway_public}\n")
        stubber = AioStubber(console)
        stubber.add_response(
            "get_console_output",
            {"InstanceId": gw["InstanceId"], "Timestamp": datetime.now(UTC),
             "Output": base64.b64encode(output.encode()).decode()},
            {"InstanceId": gw["InstanceId"], "Latest": True})
        stubber.activate()
        stack.runtimes["instances"].context.providers["aws"].console_client = console

        async def ready():
            return (await api.call("GET", f"/api/v1/instances/{instance}"))[1][
                "vpn_state"] == "ready"

        await eventually(ready)
        stubber.assert_no_pending_responses()

        status, body, _ = await api.call("POST", url, json={"public_key": client_public})
        assert status == 201, body
        (_, interface), (_, remote) = parse(body["config"])
        assert interface == {"Address": "10.77.0.2/32"}
        assert remote == {"PublicKey": gateway_public,
                          "Endpoint": f"{gw['PublicIpAddress']}:51820",
                          "AllowedIPs": "10.0.1.0/24, 10.77.0.0/24",
                          "PersistentKeepalive": "25"}
        tags = tags_of(network.instance(gw["InstanceId"]))
        assert tags["reclo:peer:2"] == f"{client_public} 10.77.0.2/32"
    out, err = capfd.readouterr()
    for secret in (client_public, gateway_public):
        assert secret not in out + err


async def test_peers_of_a_replacement_gateway_are_listed_and_removed_through_the_machine(
        tmp_path, unique):
    """A gateway that died is replaced by a new environment; the machine, launched into the
    old one, still lists and removes the peers added since."""
    async with _local_machine("embedded", tmp_path, unique) as (stack, api, url):
        service = stack.runtimes["instances"].context
        provider = service.providers["local"]
        async with service.db.transaction() as session:
            (row,) = await rows(stack)
            old = await environments.current(session, row.user_id, "local")
            await environments.retire(session, provider, old)
            replacement = await environments.ensure(session, provider, row.user_id)
        assert replacement.id != old.id and row.environment_id == old.id

        status, added, _ = await api.call("POST", url, json={
            "public_key": public_key_of(generate_private_key())})
        assert status == 201, added
        status, page, _ = await api.call("GET", url)
        assert [p["id"] for p in page["items"]] == [added["peer"]["id"]]
        status, _, _ = await api.call("DELETE", f"{url}/{added['peer']['id']}")
        assert status == 204
        status, page, _ = await api.call("GET", url)
        assert page["items"] == []
