"""The repository's key derived while the agent loads (clients/agent/ahead.py)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from clients.agent import ahead, secretfile
from shared.format import LocalFolderStore, Repository, kdf

from .conftest import PASSPHRASE, folder_config, initialised


@pytest.fixture(autouse=True)
def no_keys_ahead(monkeypatch):
    monkeypatch.setattr(kdf, "_ahead", {})
    monkeypatch.delenv("RECLO_PASSPHRASE", raising=False)
    monkeypatch.delenv("RECLO_AGENT_CONFIG", raising=False)


def _slot(repo):
    (name,) = [p for p in (repo / "keys").iterdir()]
    return json.loads(name.read_bytes())


async def test_the_key_of_a_configured_folder_is_derived_ahead_and_opens_it(agent, tmp_path, monkeypatch):
    repo = tmp_path / "usb" / "reclo"
    await initialised(agent, repo)  # the repository in the configuration, the passphrase in the secrets
    ahead.start(["--config", str(agent.config), "--json", "restore", "latest", str(tmp_path / "out")])
    ((passphrase, salt, params), started), = kdf._ahead.items()
    slot = _slot(repo)
    assert passphrase == PASSPHRASE
    assert (params.n, params.r, params.p) == (slot["kdf"]["n"], slot["kdf"]["r"], slot["kdf"]["p"])
    started.done.wait()
    derived = []
    monkeypatch.setattr(kdf, "_derive", lambda *inputs: derived.append(inputs))  # would fail the open
    repository = await Repository.open(LocalFolderStore(repo), PASSPHRASE, load_index=False)
    repository.close()
    assert derived == []  # the key derived ahead opened it


async def test_repo_option_and_the_environment(agent, tmp_path, monkeypatch):
    repo = tmp_path / "usb" / "reclo"
    await initialised(agent, repo)
    agent.write_config("")  # nothing configured: the command line says it all
    (agent.config.parent / "agent-secrets.json").unlink()
    monkeypatch.setenv("RECLO_PASSPHRASE", "typed elsewhere")
    ahead.start(["--config", str(agent.config), "backup", f"--repo=file://{repo}", "--source", "restore"])
    assert [inputs[0] for inputs in kdf._ahead] == ["typed elsewhere"]


@pytest.mark.parametrize("argv", [
    ["init"],  # no repository yet, or one made now
    ["register", "--server", "https://example.invalid", "--username", "u"],
    ["--version"],
    [],
])
async def test_not_for_commands_that_open_no_repository(agent, tmp_path, argv):
    await initialised(agent, tmp_path / "repo")
    ahead.start(["--config", str(agent.config), *argv])
    assert kdf._ahead == {}


async def test_not_for_a_server_s_repository(agent, tmp_path):
    agent.write_config('server = "https://backup.example.invalid"\n')
    secretfile.write(agent.config.parent / "agent-secrets.json",
                     secretfile.Secrets(agent_key="k", passphrase=PASSPHRASE))
    ahead.start(["--config", str(agent.config), "backup"])
    assert kdf._ahead == {}


async def test_not_without_a_passphrase_at_hand(agent, tmp_path):
    await initialised(agent, tmp_path / "repo")
    (agent.config.parent / "agent-secrets.json").unlink()  # it would be asked for on the terminal
    ahead.start(["--config", str(agent.config), "snapshots"])
    assert kdf._ahead == {}


_SCRYPT = '{"version": 1, "kind": "passphrase", "wrapped": "AAAA", "kdf": {"name": "scrypt", '


@pytest.mark.parametrize("damage", ["not json", '{"kind": "passphrase"}', '["a list"]',
                                    _SCRYPT + '"n": 2, "r": 8, "p": 1, "salt": "!"}}',
                                    _SCRYPT + '"n": 3, "r": 8, "p": 1, "salt": "AAAA"}}'])
async def test_damaged_key_slots_start_nothing_and_raise_nothing(agent, tmp_path, damage):
    repo = tmp_path / "repo"
    await initialised(agent, repo)
    for slot in (repo / "keys").iterdir():
        slot.write_text(damage)
    ahead.start(["--config", str(agent.config), "check"])
    assert kdf._ahead == {}


def test_a_damaged_configuration_raises_nothing(agent, tmp_path):
    agent.write_config("this is [not toml")
    ahead.start(["--config", str(agent.config), "backup"])
    ahead.start(["--config", str(tmp_path / "missing" / "agent.toml"), "--repo", f"file://{tmp_path}/nowhere",
                 "restore"])
    assert kdf._ahead == {}


@pytest.mark.parametrize("bad", [
    '{"version": 1, "kind": "passphrase", "wrapped": "AAAA", "kdf": {"name": "scrypt", "n": Infinity, "r": 8, '
    '"p": 1, "salt": "AAAAAAAAAAAAAAAAAAAAAA=="}}',
    '{"version": 1, "kind": "passphrase", "wrapped": "AAAA", "kdf": {"name": "scrypt", "n": 4194304, "r": 32, '
    '"p": 16, "salt": "AAAAAAAAAAAAAAAAAAAAAA=="}}',  # 16 GiB
    '{"kind": "passphrase", "wrapped": "AAAA", "kdf": {"name": "scrypt", "n": 1024, "r": 8, "p": 1, '
    '"salt": "AAAAAAAAAAAAAAAAAAAAAA=="}}',  # no version: the repository skips it
    '{"version": 1, "kind": "passphrase", "kdf": {"name": "scrypt", "n": 1024, "r": 8, "p": 1, '
    '"salt": "AAAAAAAAAAAAAAAAAAAAAA=="}}',  # nothing wrapped
    "[" * 100_000,  # past the JSON parser's depth
])
async def test_a_slot_the_repository_would_not_use_is_passed_over(agent, tmp_path, bad):
    repo = tmp_path / "repo"
    await initialised(agent, repo)
    (repo / "keys" / "0000-first-by-name").write_text(bad)
    ahead.start(["--config", str(agent.config), "snapshots"])
    ((_, salt, _),) = kdf._ahead  # the good slot's, after the bad one
    assert json.loads(next(p for p in (repo / "keys").iterdir() if p.name != "0000-first-by-name").read_bytes(
    ))["kdf"]["salt"] == base64.b64encode(salt).decode()


def test_a_damaged_slot_changes_nothing_in_what_the_command_does(agent, tmp_path, capsys):
    from clients.agent import cli, entry

    repo = tmp_path / "repo"
    asyncio.run(initialised(agent, repo))
    (repo / "keys" / "0000-first-by-name").write_text(  # JSON's Infinity: an OverflowError for int()
        '{"version": 1, "kind": "passphrase", "wrapped": "AAAA", "kdf": {"name": "scrypt", "n": Infinity}}')
    argv = ["--config", str(agent.config), "--json", "snapshots"]
    assert cli.main(argv) == 0  # the repository passes over the damaged slot and opens with the good one
    without = capsys.readouterr()
    assert entry.main(argv) == 0
    assert capsys.readouterr() == without
    assert len(kdf._ahead) == 1


def test_a_kms_slot_is_passed_over(agent, tmp_path):
    folder_config(agent, tmp_path / "repo", [])
    keys = tmp_path / "repo" / "keys"
    keys.mkdir(parents=True)
    (keys / "a-kms").write_text(json.dumps({"version": 1, "kind": "kms", "kms_key_id": "k", "wrapped": "AAAA"}))
    (keys / "b-pass").write_text(json.dumps({"version": 1, "kind": "passphrase", "wrapped": "AAAA", "kdf": {
        "name": "scrypt", "n": 2**10, "r": 8, "p": 1, "salt": "AAAAAAAAAAAAAAAAAAAAAA=="}}))
    secretfile.write(agent.config.parent / "agent-secrets.json", secretfile.Secrets(passphrase=PASSPHRASE))
    ahead.start(["--config", str(agent.config), "restore", "latest", "out"])
    assert [(p.n, salt) for _, salt, p in kdf._ahead] == [(2**10, bytes(16))]


@pytest.mark.parametrize("argv, command, values", [
    (["--config", "c.toml", "--repo", "file:///r", "--json", "backup", "--full"], "backup",
     {"--config": "c.toml", "--repo": "file:///r"}),
    (["restore", "latest", "/t", "--repo=file:///r", "--config=c.toml"], "restore",
     {"--config": "c.toml", "--repo": "file:///r"}),
    (["--config", "restore", "snapshots"], "snapshots", {"--config": "restore"}),
    (["--repo"], None, {"--repo": ""}),
])
def test_the_command_line_is_read_as_the_parser_reads_it(argv, command, values):
    assert ahead._command_and_values(argv) == (command, values)
