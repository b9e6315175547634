"""The instances service's HTTP routes: thin, the work is in lifecycle.py and
environments.py. A user sees and touches only their own machines: anyone else's is 404."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.instances import domain, environments, lifecycle
from services.instances.compute import ProviderError, ProviderUnavailable
from services.instances.tables import EnvironmentRow, InstanceRow, PeerRow
from services.instances.vpn import AddressesExhausted
from shared.api.common import Page, PageQuery
from shared.api.instances import Instance, InstanceQuery, VpnPeer, VpnPeerCreated, VpnPeerRequest
from shared.http.problems import Problem, conflict, not_found
from shared.http.routes import USER, Call, Routes
from shared.pagination import paginate

routes = Routes("instances")

NO_SUCH_INSTANCE = "no such instance"
# How long a client waits before asking again for a peer of a gateway still booting.
RETRY_AFTER_SECONDS = 20


def _instance(row: InstanceRow, envs: dict[str, EnvironmentRow]) -> Instance:
    env = envs.get(row.provider) if row.state in domain.LIVE else None
    return Instance(id=row.id, recovery_id=row.recovery_id, provider=row.provider,
                    state=row.state, address=row.address, instance_type=row.instance_type,
                    created_at=row.created_at, ready_at=row.ready_at, stopped_at=row.stopped_at,
                    terminated_at=row.terminated_at, failure_reason=row.failure_reason,
                    vpn_state=env.state if env is not None else None)


def _peer(row: PeerRow) -> VpnPeer:
    return VpnPeer(id=row.id, instance_id=row.instance_id, name=row.name,
                   public_key=row.public_key, address=row.address, created_at=row.created_at)


async def _environments(session: AsyncSession, user_id: str) -> dict[str, EnvironmentRow]:
    envs = {}
    for provider in ("aws", "local"):
        env = await environments.current(session, user_id, provider)
        if env is not None:
            envs[provider] = env
    return envs


async def _owned(session: AsyncSession, call: Call, *, lock: bool = False) -> InstanceRow:
    query = select(InstanceRow).where(InstanceRow.id == call.param("instance_id"),
                                      InstanceRow.user_id == call.user_id)
    if lock:
        query = query.with_for_update()
    row = await session.scalar(query)
    if row is None:
        raise not_found(NO_SUCH_INSTANCE)
    return row


def _provider_problem(exc: Exception) -> Problem:
    if isinstance(exc, ProviderUnavailable):
        return Problem(503, "Provider unavailable", f"the cloud provider did not answer: {exc}",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return Problem(502, "Provider refused", str(exc))


@routes.get("/api/v1/instances", allow=USER, query=InstanceQuery, response=Page[Instance])
async def list_instances(call: Call) -> Page[Instance]:
    """The caller's recovered machines, oldest first (``?recovery_id=`` for one recovery's)."""
    query = select(InstanceRow).where(InstanceRow.user_id == call.user_id)
    if call.query.recovery_id:
        query = query.where(InstanceRow.recovery_id == call.query.recovery_id)
    async with call.service.db.sessions() as session:
        rows, cursor = await paginate(session, query, InstanceRow.created_at, InstanceRow.id,
                                      limit=call.query.limit, cursor=call.query.cursor)
        envs = await _environments(session, call.user_id)
    return Page[Instance](items=[_instance(r, envs) for r in rows], next_cursor=cursor)


@routes.get("/api/v1/instances/{instance_id}", allow=USER, response=Instance, errors=(404,))
async def get_instance(call: Call) -> Instance:
    """One recovered machine: its state, address and VPN state."""
    async with call.service.db.sessions() as session:
        row = await _owned(session, call)
        return _instance(row, await _environments(session, call.user_id))


def _action_route(action: str, doc: str):
    async def act(call: Call) -> Instance:
        service = call.service
        try:
            async with service.db.transaction() as session:
                # Locked: two requests for one machine take turns, the second sees the first.
                row = await _owned(session, call, lock=True)

                async def emit(event):
                    await service.outbox.add(session, event)

                await lifecycle.ACTIONS[action](session, service, row, emit)
                return _instance(row, await _environments(session, call.user_id))
        except domain.ImpossibleTransition as exc:
            raise conflict(str(exc)) from None
        except (ProviderError, ProviderUnavailable) as exc:
            raise _provider_problem(exc) from None

    act.__name__ = f"{action}_instance"
    act.__doc__ = doc
    routes.post(f"/api/v1/instances/{{instance_id}}/{action}", allow=USER, response=Instance,
                errors=(404, 409, 502, 503))(act)
    return act


start_instance = _action_route("start", "Start a stopped machine.")
stop_instance = _action_route(
    "stop", "Stop a running machine; stopped for the retention period, it is cleaned up.")
terminate_instance = _action_route(
    "terminate", "Terminate a machine for good; its image is deleted with it.")


@routes.post("/api/v1/instances/{instance_id}/vpn-peers", allow=USER, body=VpnPeerRequest,
             response=VpnPeerCreated, status=201, errors=(404, 409, 502, 503))
async def add_vpn_peer(call: Call):
    """Admit a client's WireGuard public key to the machine's recovery environment and
    return its ready ``.conf`` (without a private key: the client adds its own). The same
    key again gets the same peer back (200)."""
    service = call.service
    settings = service.settings
    try:
        # Locked, and reading what was committed meanwhile: requests at once (several
        # clients, or a retry after a lost answer) take turns, and each sees the peers
        # the one before it added (REPEATABLE READ would show it its first snapshot).
        async with service.db.transaction(read_committed=True) as session:
            instance = await _owned(session, call, lock=True)
            if instance.state not in domain.LIVE:
                raise conflict(f"the instance is {instance.state}: it has no VPN")
            provider = service.providers[instance.provider]
            peer, env, created = await environments.add_peer(
                session, provider, settings.vpn_subnet, instance, call.body.public_key,
                call.body.name)
            if peer is not None:
                conf = environments.peer_conf(env, peer, settings.vpn_subnet,
                                              settings.vpn_keepalive_seconds)
    except (environments.TooManyPeers, AddressesExhausted) as exc:
        raise conflict(str(exc)) from None
    except (ProviderError, ProviderUnavailable) as exc:
        raise _provider_problem(exc) from None
    if peer is None:
        raise Problem(503, "VPN not ready",
                      f"{env.failure_reason or 'the VPN gateway is starting'}; ask again shortly",
                      headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    # wg-quick names the interface after the file: at most 15 characters on Linux.
    result = VpnPeerCreated(peer=_peer(peer), config=conf,
                            filename=f"rc-{instance.id[:12]}.conf")
    if created:
        return result
    return web.Response(status=200, text=result.model_dump_json(),
                        content_type="application/json")


@routes.get("/api/v1/instances/{instance_id}/vpn-peers", allow=USER, query=PageQuery,
            response=Page[VpnPeer], errors=(404,))
async def list_vpn_peers(call: Call) -> Page[VpnPeer]:
    """The VPN peers that reach this machine: every peer of its user's current
    environment, whichever machine it was asked through (that machine may be gone)."""
    async with call.service.db.sessions() as session:
        instance = await _owned(session, call)
        env = await environments.current(session, instance.user_id, instance.provider)
        rows, cursor = await paginate(
            session, select(PeerRow).where(PeerRow.environment_id == (env.id if env else None),
                                           PeerRow.user_id == instance.user_id),
            PeerRow.created_at, PeerRow.id, limit=call.query.limit, cursor=call.query.cursor)
    return Page[VpnPeer](items=[_peer(r) for r in rows], next_cursor=cursor)


@routes.delete("/api/v1/instances/{instance_id}/vpn-peers/{peer_id}", allow=USER, status=204,
               errors=(404, 502, 503))
async def remove_vpn_peer(call: Call) -> None:
    """Take a peer's key out of the machine's VPN (a lost laptop, a slot for another):
    the gateway stops admitting it."""
    service = call.service
    try:
        async with service.db.transaction(read_committed=True) as session:
            instance = await _owned(session, call, lock=True)
            # The current environment: a gateway that died was replaced by a new one,
            # which holds the peers added since (not the machine's environment_id).
            env = await environments.current(session, instance.user_id, instance.provider)
            removed = await environments.remove_peer(
                session, service.providers[instance.provider], service.settings.vpn_subnet,
                instance.user_id, env.id if env else None, call.param("peer_id"))
    except (ProviderError, ProviderUnavailable) as exc:
        raise _provider_problem(exc) from None
    if not removed:
        raise not_found("no such VPN peer")
