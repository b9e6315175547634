"""The local adapter of the compute provider port: the recovered machine is recorded on
this host (and, with ``RECLO_INSTANCES__QEMU_ENABLED=true``, started under QEMU from the
image recovery kept); the recovery environment's WireGuard gateway is this host.

The gateway's files live in ``<data dir>/instances/wireguard/`` (mode 0600): its private key
(made here, kept here) and its wg-quick configuration, rewritten whenever a peer is added.
Run it with ``wg-quick up <file>`` (docs/vpn.md). The image itself belongs to recovery:
nothing here deletes it (``InstanceTerminated`` tells recovery the machine is gone).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from ipaddress import IPv4Network
from pathlib import Path
from urllib.parse import unquote, urlparse

from services.instances import domain
from services.instances.compute import Environment, Gateway, LaunchSpec, Observed, ProviderError
from services.instances.qemu import QemuError, QemuMachines
from services.instances.vpn import (
    Peer,
    ServerConfig,
    generate_private_key,
    public_key_of,
    server_conf,
)
from shared.settings import InstancesSettings

# wg-quick names the interface after the file, and interface names are at most 15 bytes.
CONF_NAME_MAX = 15


def image_path(image_ref: str) -> Path:
    """The image file a local reference points at: a ``file:`` URL or an absolute path."""
    if image_ref.startswith("file://"):
        return Path(unquote(urlparse(image_ref).path))
    if os.path.isabs(image_ref):
        return Path(image_ref)
    raise ProviderError("the image reference is not a file path this host can open")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (a reader never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


class LocalProvider:
    name = "local"
    reports_state = False  # observe() says running whatever QEMU does: ReClo's record stands

    def __init__(self, settings: InstancesSettings, data_dir: Path) -> None:
        self.settings = settings
        self.folder = Path(data_dir) / "instances"
        self.vpn_folder = self.folder / "wireguard"
        self.qemu = QemuMachines(binary=settings.qemu_binary, memory_mib=settings.qemu_memory_mib,
                                 cpus=settings.qemu_cpus, folder=self.folder / "machines")

    # --- the gateway: this host ------------------------------------------------------

    def key_file(self, env_id: str) -> Path:
        return self.vpn_folder / f"{env_id}.key"

    def conf_file(self, env_id: str) -> Path:
        """``reclo-<start of the id>.conf``: the interface wg-quick makes is named so."""
        return self.vpn_folder / f"{('reclo-' + env_id)[:CONF_NAME_MAX]}.conf"

    async def prepare(self, env: Environment) -> Environment:
        made = Environment(id=env.id, user_id=env.user_id, token=env.token,
                           routed=tuple(self.settings.local_routed_cidrs))
        key = self.key_file(env.id)
        if not key.exists():
            _write_private(key, generate_private_key() + "\n")
            await self.publish_peers(made, self.settings.vpn_subnet, ())
        return made

    def _private_key(self, env_id: str) -> str:
        try:
            return self.key_file(env_id).read_text().strip()
        except FileNotFoundError:
            raise ProviderError("the local VPN gateway's key is gone") from None

    async def gateway(self, env: Environment, *, key: bool = True) -> Gateway:
        return Gateway(public_key=public_key_of(self._private_key(env.id)),
                       endpoint=self.settings.local_vpn_endpoint)

    async def publish_peers(self, env: Environment, subnet: IPv4Network,
                            peers: Sequence[Peer]) -> None:
        text = server_conf(ServerConfig(subnet=subnet, listen_port=self.settings.vpn_port,
                                        peers=peers, private_key=self._private_key(env.id),
                                        forward_to=env.routed))
        _write_private(self.conf_file(env.id), text)

    async def retire(self, env: Environment) -> None:
        for path in (self.conf_file(env.id), self.key_file(env.id)):
            path.unlink(missing_ok=True)

    # --- machines --------------------------------------------------------------------

    def _name(self, spec: LaunchSpec) -> str:
        return f"local-{spec.instance_id}"

    async def launch(self, spec: LaunchSpec, env: Environment) -> tuple[str, Observed]:
        name = self._name(spec)
        if self.settings.qemu_enabled:
            try:
                if not self.qemu.overlay(name).exists():
                    await self.qemu.create(name, image_path(spec.image_ref))
                await self.qemu.start(name)
            except QemuError as exc:
                await self.qemu.remove(name)
                raise ProviderError(str(exc)) from None
        return name, Observed(state=domain.RUNNING)

    async def observe(self, provider_instance_id: str) -> Observed:
        return Observed(state=domain.RUNNING)

    async def start(self, provider_instance_id: str) -> Observed:
        if self.settings.qemu_enabled:
            try:
                await self.qemu.start(provider_instance_id)
            except QemuError as exc:
                raise ProviderError(str(exc)) from None
        return Observed(state=domain.RUNNING)

    async def stop(self, provider_instance_id: str) -> None:
        await self.qemu.stop(provider_instance_id)

    async def terminate(self, provider_instance_id: str) -> None:
        await self.qemu.remove(provider_instance_id)

    async def release_image(self, image_ref: str) -> None:
        """Nothing: the file is recovery's, and ``InstanceTerminated`` tells it."""

    async def close(self) -> None:
        await self.qemu.stop_all()
