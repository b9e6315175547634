"""The web portal, served by the gateway: its page and files, and the few routes only the
browser needs (live recovery progress, download links, the VPN configuration fallback).
Everything else the portal does goes through the same /api/v1 surface as any client."""

from __future__ import annotations

import re

from aiohttp import web

from services.gateway import api
from services.gateway.portal import links, static, vpn
from services.gateway.portal.live import ProgressHub, stream_recovery
from services.gateway.portal.upstream import fetch_json
from shared.api.instances import VpnPeerCreated
from shared.http.identity import Identity
from shared.http.keys import RUNTIME
from shared.http.problems import Problem, forbidden, not_found, unauthorized

# Ids are opaque but plain: anything else can't name a resource and must never change the
# shape of the upstream path it is put into.
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HUB = web.AppKey("progress_hub", ProgressHub)


def _id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not _ID.fullmatch(value):
        raise not_found("no such resource")
    return value


async def _user(request: web.Request) -> tuple[object, Identity]:
    gateway = request.app[RUNTIME].context
    identity = await api.authenticate(gateway, request)
    if identity.kind == "anonymous":
        raise unauthorized()
    if identity.kind != "user":
        raise forbidden(f"a {identity.kind} may not call {request.method} {request.path}")
    return gateway, identity


async def recovery_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/recoveries/{id}/events: server-sent progress of one recovery."""
    recovery_id = _id(request, "recovery_id")
    gateway, identity = await _user(request)
    return await stream_recovery(request, gateway, request.app[HUB], identity, recovery_id)


async def image_link(request: web.Request) -> web.Response:
    """POST /api/v1/portal/recoveries/{id}/image-link: a one-minute link to the image."""
    recovery_id = _id(request, "recovery_id")
    gateway, identity = await _user(request)
    # The recovery service says whether this caller may have it, and whether it's ready.
    recovery = await fetch_json(gateway, "recovery", "GET",
                                f"/api/v1/recoveries/{recovery_id}", identity)
    if recovery.get("target") != "local" or recovery.get("state") != "complete":
        raise Problem(409, "Conflict", "this recovery has no image to download")
    token, expires = links.make_link(gateway.key, identity,
                                     f"/api/v1/recoveries/{recovery_id}/image")
    return web.json_response({"url": f"/downloads/{token}", "expires_at": expires})


async def download(request: web.Request) -> web.StreamResponse:
    """GET /downloads/{token}: the linked file, streamed from its service as the caller."""
    gateway = request.app[RUNTIME].context
    try:
        identity, path = links.read_link(gateway.key, request.match_info["token"])
    except links.BadLink as exc:
        raise Problem(403, "Forbidden", str(exc)) from None
    identity = identity.model_copy(update={"client_ip": request.remote})
    recovery_id = path.split("/")[4]
    return await api.forward(gateway, request, "recovery", identity, path_qs=path,
                             default_headers={
                                 "Content-Disposition":
                                     f'attachment; filename="reclo-recovery-{recovery_id}.img"',
                                 "Cache-Control": "private, no-store"})


async def vpn_config(request: web.Request) -> web.Response:
    """POST /api/v1/portal/instances/{id}/vpn-config: a .conf whose key the gateway made
    for this one response (for browsers without WebCrypto X25519); nothing is kept."""
    instance_id = _id(request, "instance_id")
    gateway, identity = await _user(request)
    private_key, public_key = vpn.key_pair()
    created = VpnPeerCreated.model_validate(await fetch_json(
        gateway, "instances", "POST", f"/api/v1/instances/{instance_id}/vpn-peers", identity,
        json={"public_key": public_key, "name": vpn.PEER_NAME}))
    conf, filename = vpn.complete_config(created, private_key)
    return web.Response(text=conf, content_type="text/plain", headers={
        "Content-Disposition": f'attachment; filename="{filename}"',
        # A private key: no cache may keep it.
        "Cache-Control": "no-store",
    })


def install(runtime) -> None:
    """Adds the portal to the gateway's app; call before the /api/v1 proxy route is added,
    so these few /api/v1 paths are the gateway's own."""
    app = runtime.app
    app[HUB] = hub = ProgressHub(runtime.bus)

    async def stop_streams(_app: web.Application) -> None:
        hub.close()

    app.on_shutdown.append(stop_streams)
    router = app.router
    router.add_get("/api/v1/recoveries/{recovery_id}/events", recovery_events)
    router.add_post("/api/v1/portal/recoveries/{recovery_id}/image-link", image_link)
    router.add_post("/api/v1/portal/instances/{instance_id}/vpn-config", vpn_config)
    router.add_get("/downloads/{token}", download)
    static.add_routes(app)
