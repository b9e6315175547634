"""The compute provider port: where recovered machines and their VPN gateway run.
Two adapters: ``aws.py`` (EC2) and ``local.py`` (this host, QEMU where enabled).

An adapter raises :class:`ProviderError` for what retrying will not fix (its message is
the provider's own text, shown to the user), and :class:`ProviderUnavailable` for what a
retry may fix (a throttled or unreachable API): event handlers let that one propagate, so
the bus retries the event, and routes answer 503.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Protocol

from services.instances.vpn import Peer


class ProviderError(Exception):
    """The provider refused; ``str()`` is its message, fit for the user."""


class ProviderUnavailable(Exception):
    """The provider can't be asked now; later it may answer."""


@dataclass(frozen=True)
class Environment:
    """One user's recovery environment as a provider sees it."""

    id: str
    user_id: str
    token: str
    routed: Sequence[IPv4Network] = ()
    vpc_id: str | None = None
    gateway_group_id: str | None = None
    machine_group_id: str | None = None
    gateway_instance_id: str | None = None


@dataclass(frozen=True)
class Gateway:
    """What a gateway looks like now: ready once its public key and endpoint are known."""

    public_key: str | None = None
    endpoint: str | None = None
    failed: str | None = None

    @property
    def ready(self) -> bool:
        return self.public_key is not None and self.endpoint is not None


@dataclass(frozen=True)
class LaunchSpec:
    instance_id: str
    recovery_id: str
    user_id: str
    image_ref: str
    instance_type: str | None


@dataclass(frozen=True)
class Observed:
    """A machine's state at the provider, in the service's words (domain.py)."""

    state: str
    address: str | None = None
    reason: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


class ComputeProvider(Protocol):
    name: str
    # Whether ``observe`` tells what a machine is now (it may have been stopped or
    # terminated outside ReClo), so that the sweep of machines up or stopped asks it.
    reports_state: bool

    async def prepare(self, env: Environment) -> Environment:
        """Make the environment exist (network, security groups, gateway); idempotent for
        one ``env.token``. Returns it completed with what was made."""

    async def gateway(self, env: Environment, *, key: bool = True) -> Gateway:
        """The gateway now; without ``key`` only whether it is alive (cheaper)."""

    async def publish_peers(self, env: Environment, subnet: IPv4Network,
                            peers: Sequence[Peer]) -> None:
        """Make the gateway's peers exactly ``peers``."""

    async def retire(self, env: Environment) -> None:
        """Remove the gateway (its peers go with it)."""

    async def launch(self, spec: LaunchSpec, env: Environment) -> tuple[str, Observed]:
        """Launch (or find, if launched before) the machine; its provider id and state."""

    async def observe(self, provider_instance_id: str) -> Observed: ...

    async def start(self, provider_instance_id: str) -> Observed: ...

    async def stop(self, provider_instance_id: str) -> None: ...

    async def terminate(self, provider_instance_id: str) -> None: ...

    async def release_image(self, image_ref: str) -> None:
        """Delete the image the machine was made from, where the provider owns it."""

    async def close(self) -> None: ...
