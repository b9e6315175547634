"""Recovery environments: one per user and provider, holding the WireGuard gateway that
admits the user's VPN peers to the user's recovered machines (docs/vpn.md).

An environment is made with the user's first machine, becomes ``ready`` once its gateway's
public key and endpoint are known (at once on the local provider; when the aws gateway has
booted and printed its key), and is retired with the user's last machine. A gateway that
failed is replaced by a new generation when it is needed again.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from ipaddress import IPv4Network

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.instances import domain
from services.instances.compute import ComputeProvider, Environment, Gateway, ProviderError
from services.instances.tables import EnvironmentRow, InstanceRow, PeerRow
from services.instances.vpn import ClientConfig, Peer, allocate, client_conf
from shared.events import utcnow
from shared.logs import get_logger

log = get_logger(__name__)

# Peers per environment. The aws gateway learns peers from its tags, and an instance has at
# most 50 tags, 4 of which ReClo uses itself; a few spare.
MAX_PEERS = 40


class TooManyPeers(Exception):
    pass


def as_environment(row: EnvironmentRow) -> Environment:
    routed = tuple(IPv4Network(c) for c in row.routed_cidrs.split(",") if c)
    return Environment(id=row.id, user_id=row.user_id, token=row.token, routed=routed,
                       vpc_id=row.vpc_id, gateway_group_id=row.gateway_group_id,
                       machine_group_id=row.machine_group_id,
                       gateway_instance_id=row.gateway_instance_id)


async def current(session: AsyncSession, user_id: str, provider: str, *,
                  lock: bool = False) -> EnvironmentRow | None:
    """The user's environment on ``provider`` that isn't retired, if any."""
    query = (select(EnvironmentRow)
             .where(EnvironmentRow.user_id == user_id, EnvironmentRow.provider == provider,
                    EnvironmentRow.state != domain.ENV_RETIRED)
             .order_by(EnvironmentRow.generation.desc()).limit(1))
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def ensure(session: AsyncSession, provider: ComputeProvider, user_id: str, *,
                 lock: bool = False, repair: bool = False) -> EnvironmentRow:
    """The user's environment, made now if there is none (or only a failed one). Safe to
    repeat: a retry of the same generation uses the same token, so the same gateway.
    ``repair`` prepares an existing one again, which puts its security groups back as
    ReClo made them (done at each launch)."""
    row = await current(session, user_id, provider.name, lock=lock)
    if row is not None and row.state != domain.ENV_FAILED:
        if repair:
            made = await provider.prepare(as_environment(row))
            row.gateway_group_id = made.gateway_group_id
            row.machine_group_id = made.machine_group_id
        return row
    if row is not None:
        await retire(session, provider, row)
    last = await session.scalar(select(func.max(EnvironmentRow.generation)).where(
        EnvironmentRow.user_id == user_id, EnvironmentRow.provider == provider.name))
    generation = (last or 0) + 1
    token = domain.environment_token(user_id, provider.name, generation)
    env_id = hashlib.sha256(token.encode()).hexdigest()[:32]
    made = await provider.prepare(Environment(id=env_id, user_id=user_id, token=token))
    now = utcnow()
    row = EnvironmentRow(
        id=env_id, user_id=user_id, provider=provider.name, generation=generation, token=token,
        state=domain.ENV_PROVISIONING, routed_cidrs=",".join(str(n) for n in made.routed),
        vpc_id=made.vpc_id, gateway_group_id=made.gateway_group_id,
        machine_group_id=made.machine_group_id, gateway_instance_id=made.gateway_instance_id,
        created_at=now)
    gateway = await provider.gateway(made)
    if gateway.ready:
        row.state, row.ready_at = domain.ENV_READY, now
        row.gateway_public_key, row.endpoint = gateway.public_key, gateway.endpoint
    session.add(row)
    await session.flush()
    log.info("recovery environment made", environment_id=row.id, provider=provider.name,
             state=row.state)
    return row


async def retire(session: AsyncSession, provider: ComputeProvider, row: EnvironmentRow) -> None:
    await provider.retire(as_environment(row))
    row.state, row.retired_at = domain.ENV_RETIRED, utcnow()
    log.info("recovery environment retired", environment_id=row.id)


async def retire_if_unused(session: AsyncSession, provider: ComputeProvider,
                           user_id: str) -> None:
    """Retire the user's environment once no machine of theirs is left on ``provider``: a
    gateway costs money and serves nobody then. A refusal is logged; the cleanup tick
    tries again."""
    live = await session.scalar(select(func.count()).select_from(InstanceRow).where(
        InstanceRow.user_id == user_id, InstanceRow.provider == provider.name,
        InstanceRow.state.in_(domain.LIVE)))
    if live:
        return
    row = await current(session, user_id, provider.name)
    if row is None:
        return
    try:
        await retire(session, provider, row)
    except ProviderError as exc:
        log.warning("recovery environment not retired", environment_id=row.id, error=str(exc))


async def refresh(session: AsyncSession, provider: ComputeProvider, row: EnvironmentRow, *,
                  check_ready: bool = False) -> None:
    """Look at a provisioning gateway once: ready when its key is out, failed when it died
    or took too long. With ``check_ready``, a ready one is checked for being alive still."""
    watched = (domain.ENV_PROVISIONING, domain.ENV_READY) if check_ready else (
        domain.ENV_PROVISIONING,)
    if row.state not in watched:
        return
    gateway = await provider.gateway(as_environment(row), key=row.state != domain.ENV_READY)
    record(row, gateway)


def record(row: EnvironmentRow, gateway: Gateway) -> None:
    """What a look at the gateway found, onto its environment."""
    now = utcnow()
    if row.state == domain.ENV_READY:
        if gateway.failed:
            row.state, row.failure_reason = domain.ENV_FAILED, gateway.failed
            log.warning("vpn gateway gone", environment_id=row.id, reason=row.failure_reason)
        return
    if gateway.ready:
        row.state, row.ready_at = domain.ENV_READY, now
        row.gateway_public_key, row.endpoint = gateway.public_key, gateway.endpoint
        log.info("vpn gateway ready", environment_id=row.id)
    elif gateway.failed or now - row.created_at > timedelta(seconds=domain.GATEWAY_BOOT_SECONDS):
        row.state = domain.ENV_FAILED
        row.failure_reason = gateway.failed or "the VPN gateway did not come up in time"
        log.warning("vpn gateway failed", environment_id=row.id, reason=row.failure_reason)


async def add_peer(session: AsyncSession, provider: ComputeProvider, subnet: IPv4Network,
                   instance: InstanceRow, public_key: str, name: str | None
                   ) -> tuple[PeerRow | None, EnvironmentRow, bool]:
    """A peer for this key in the instance's environment, and whether it is new; no peer
    while the gateway is being made (returned, not raised: what was learnt about the
    gateway is committed). The same key asked for again gets its first answer (a client
    retrying after a lost response)."""
    env = await ensure(session, provider, instance.user_id, lock=True)
    await refresh(session, provider, env, check_ready=True)
    if env.state == domain.ENV_FAILED:  # the gateway died: make the next one
        env = await ensure(session, provider, instance.user_id)
    if env.state != domain.ENV_READY:
        return None, env, False
    peers = list((await session.scalars(
        select(PeerRow).where(PeerRow.environment_id == env.id))).all())
    for peer in peers:
        if peer.public_key == public_key:
            return peer, env, False
    if len(peers) >= MAX_PEERS:
        raise TooManyPeers(f"an environment has at most {MAX_PEERS} VPN peers")
    address = allocate(subnet, [p.address for p in peers])
    row = PeerRow(id=domain.new_id(), environment_id=env.id, user_id=instance.user_id,
                  instance_id=instance.id, name=name, public_key=public_key,
                  address=str(address), created_at=utcnow())
    session.add(row)
    await session.flush()
    await provider.publish_peers(as_environment(env), subnet,
                                 [Peer(p.public_key, p.address) for p in [*peers, row]])
    log.info("vpn peer added", environment_id=env.id, peer_id=row.id)
    return row, env, True


async def remove_peer(session: AsyncSession, provider: ComputeProvider, subnet: IPv4Network,
                      user_id: str, environment_id: str | None, peer_id: str) -> bool:
    """Take a peer out of the environment (a lost laptop's key, a slot for another):
    the gateway stops admitting it at once. False if the environment has no such peer."""
    if environment_id is None:
        return False
    env = await session.scalar(select(EnvironmentRow).where(
        EnvironmentRow.id == environment_id, EnvironmentRow.user_id == user_id).with_for_update())
    peer = await session.scalar(select(PeerRow).where(
        PeerRow.id == peer_id, PeerRow.environment_id == environment_id))
    if env is None or peer is None:
        return False
    await session.delete(peer)
    await session.flush()
    if env.state == domain.ENV_READY:
        rest = (await session.scalars(
            select(PeerRow).where(PeerRow.environment_id == env.id))).all()
        await provider.publish_peers(as_environment(env), subnet,
                                     [Peer(p.public_key, p.address) for p in rest])
    log.info("vpn peer removed", environment_id=env.id, peer_id=peer_id)
    return True


def peer_conf(env: EnvironmentRow, peer: PeerRow, subnet: IPv4Network,
              keepalive_seconds: int) -> str:
    assert env.gateway_public_key is not None and env.endpoint is not None
    label = f"peer {peer.name or peer.id} of recovery environment {env.id}"
    return client_conf(ClientConfig(
        address=peer.address, subnet=subnet, gateway_public_key=env.gateway_public_key,
        endpoint=env.endpoint, routed=as_environment(env).routed,
        keepalive_seconds=keepalive_seconds, label=label))


async def watch_provisioning(service) -> None:
    """Look once at every gateway still being made (the reconcile sweep)."""
    async with service.db.sessions() as session:
        rows = (await session.scalars(select(EnvironmentRow).where(
            EnvironmentRow.state == domain.ENV_PROVISIONING))).all()
    for seen in rows:
        env_id = seen.id
        try:
            # Asked outside any transaction: no lock is held while the provider answers.
            gateway = await service.providers[seen.provider].gateway(as_environment(seen))
            async with service.db.transaction() as session:
                query = select(EnvironmentRow).where(
                    EnvironmentRow.id == env_id,
                    EnvironmentRow.state == domain.ENV_PROVISIONING)
                if service.db.supports_row_locks:  # another replica is recording it
                    query = query.with_for_update(skip_locked=True)
                row = await session.scalar(query)
                if row is not None:
                    record(row, gateway)
        except Exception as exc:  # one gateway's trouble doesn't stop the others
            log.warning("vpn gateway not checked", environment_id=env_id,
                        error=str(exc) or type(exc).__name__)


async def retire_unused(session: AsyncSession, service) -> None:
    """Retire every environment whose user has no machine left (one whose retirement was
    refused before, say)."""
    rows = (await session.scalars(select(EnvironmentRow).where(
        EnvironmentRow.state != domain.ENV_RETIRED))).all()
    for row in rows:
        await retire_if_unused(session, service.providers[row.provider], row.user_id)
