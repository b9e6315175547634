"""Every way a command can go wrong ends in one plain line and a documented exit code
(docs/recovery-manager.md), never a traceback."""

import asyncio
import socket

from clients.recovery import exits
from tests.recovery_client.conftest import Recover, api_for
from tests.recovery_client.support import image_backup, known_to_recovery, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain(result) -> str:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("reclo-recover")]
    assert len(lines) == 1, result.stderr
    return lines[0]


async def test_signing_in_and_reaching_the_server(local_stack, recover, http, unique, tmp_path):
    stack = local_stack
    api = api_for(http, stack)
    await api.register_and_login(f"user-{unique}")

    assert "not signed in" in plain(await recover("backups", expect=exits.NOT_SIGNED_IN))
    wrong = Recover(tmp_path / "wrong", password="not the password")
    line = plain(await wrong("login", "--server", stack.base_url, "--username", f"user-{unique}",
                             expect=exits.NOT_SIGNED_IN))
    assert line == "reclo-recover: the username or the password is wrong"
    assert not (tmp_path / "wrong" / "session.json").exists()
    line = plain(await recover("login", "--server", f"http://127.0.0.1:{free_port()}",
                               "--username", "x", expect=exits.UNREACHABLE))
    assert "cannot reach" in line
    # No password in the environment and no terminal to ask on.
    no_password = {k: v for k, v in recover.env.items() if k != "RECLO_PASSWORD"}
    result = await run("reclo-recover", "login", "--server", stack.base_url, "--username", "x",
                       env=no_password)
    assert result.code == exits.USAGE and "RECLO_PASSWORD" in plain(result)
    # An empty one is the server's to refuse.
    plain(await recover("login", "--server", stack.base_url, "--username", "x",
                        env={"RECLO_PASSWORD": ""}, expect=exits.REFUSED))

    await recover("login", "--server", stack.base_url, "--username", f"user-{unique}")
    assert (await recover("backups", "--json")).json() == []
    # Logged out elsewhere: the saved session stops working, and says what to do.
    await recover("logout")
    assert not (recover.config / "session.json").exists()
    assert "not signed in" in plain(await recover("instances", expect=exits.NOT_SIGNED_IN))


async def test_refusals_in_the_servers_words(local_stack, recover, http, unique, tmp_path):
    stack = local_stack
    api = api_for(http, stack)
    username = f"user-{unique}"
    await api.register_and_login(username)
    await image_backup(tmp_path, stack.base_url, username)
    await recover("login", "--server", stack.base_url, "--username", username)
    backup = (await recover("backups", "--json")).json()[0]
    await known_to_recovery(stack, backup["id"])

    assert "no such" in plain(await recover("status", "0" * 32, expect=exits.NOT_FOUND))
    plain(await recover("start", "0" * 32, "--target", "local", expect=exits.NOT_FOUND))
    # Options that do not fit the target are refused before asking.
    assert "--format is for a local image" in plain(
        await recover("start", backup["id"], "--target", "aws", "--format", "vhd",
                      expect=exits.USAGE))
    # AWS is not configured in the embedded stack: the server says so.
    line = plain(await recover("start", backup["id"], "--target", "aws", expect=exits.REFUSED))
    assert "not configured" in line

    # The wrong passphrase: the recovery fails, and the reason is in plain words.
    failed = await recover("start", backup["id"], "--target", "local", "--wait", "--json",
                           env={"RECLO_PASSPHRASE": "not the passphrase"}, expect=exits.FAILED)
    last = failed.lines()[-1]
    assert last["state"] == "failed" and "passphrase" in last["failure_reason"]
    human = await recover("status", last["id"])
    assert f"Failed because: {last['failure_reason']}" in human.stdout
    assert "cannot be cancelled" in plain(await recover("cancel", last["id"],
                                                        expect=exits.REFUSED))
    assert "the image is not ready" in plain(await recover(
        "download", last["id"], str(tmp_path / "x.img"), expect=exits.REFUSED))

    done = (await recover("start", backup["id"], "--target", "local", "--wait", "--json")).lines()[-1]
    instance = (await recover("instances", "--json")).json()[0]
    assert instance["recovery_id"] == done["id"]
    # Terminating asks first; without a terminal it needs --yes.
    assert "--yes" in plain(await recover("instance", "terminate", instance["id"],
                                          expect=exits.USAGE))
    await recover("instance", "stop", instance["id"])
    assert (await recover("instances", "--json")).json()[0]["state"] == "stopped"
    await recover("instance", "start", instance["id"])
    assert (await recover("instances", "--json")).json()[0]["state"] in ("pending", "running")
    await recover("instance", "terminate", instance["id"], "--yes")
    assert (await recover("instances", "--json")).json()[0]["state"] == "terminated"
    # A file that is not a WireGuard configuration is refused before anything runs.
    bogus = tmp_path / "bogus.conf"
    bogus.write_text("[Peer]\nPublicKey = x\n")
    line = plain(await recover("vpn", "up", instance["id"], "--config", str(bogus),
                               expect=exits.USAGE))
    assert "not a WireGuard configuration" in line


async def test_a_server_that_is_not_recos_or_breaks_off_is_one_line(recover):
    """A proxy's login page where the gateway should be, and an answer cut mid-body."""
    async def page(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        body = b"<html>Please sign in to the proxy</html>"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def cut(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"token\": ")
        await writer.drain()
        writer.transport.abort()

    for handler, code, words in ((page, exits.FAILED, "answered 200 with text/html, not ReClo's JSON"),
                                 (cut, exits.UNREACHABLE, "broke off")):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            line = plain(await recover("login", "--server", url, "--username", "x", expect=code))
        finally:
            server.close()
            await server.wait_closed()
        assert words in line, line


async def test_a_prompt_without_a_terminal_is_a_usage_error(recover):
    result = await recover("start", "0" * 32, "--target", "local", "--ask-passphrase",
                           expect=exits.USAGE)
    assert "--ask-passphrase needs a terminal" in plain(result)
    result = await recover("instance", "terminate", "i-0123", expect=exits.USAGE)
    assert "add --yes" in plain(result)
