"""Live recovery progress for the portal: ``GET /api/v1/recoveries/{id}/events``, a
server-sent event stream of what the recovery service announces on the bus.

The gateway subscribes once per process with a transient queue (stale progress is worth
nothing, so no durable queue) and fans each event out to the streams watching that
recovery. Before streaming, the caller's ownership is checked by asking the recovery
service for the recovery as that caller: the gateway itself decides nothing about who
owns what, and the answer is the stream's first event, so the page is right at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from services.gateway.portal.upstream import fetch_json
from shared.bus import Bus
from shared.events import Envelope, RecoveryCompleted, RecoveryFailed, RecoveryProgressed
from shared.http.identity import Identity
from shared.http.problems import Problem, forbidden
from shared.logs import get_logger

log = get_logger(__name__)

LIVE_EVENTS = (RecoveryProgressed, RecoveryFailed, RecoveryCompleted)
FINAL_EVENTS = frozenset({RecoveryFailed.type_name(), RecoveryCompleted.type_name()})
FINAL_STATES = frozenset({"complete", "failed", "cancelled"})
# A comment line this often keeps proxies and load balancers from closing an idle stream.
HEARTBEAT_SECONDS = 15.0
# A stream ends after this long and the page reconnects, which checks the caller again:
# a token revoked meanwhile stops receiving within this bound.
MAX_STREAM_SECONDS = 600.0
# Progress events replace each other; a watcher that falls this far behind loses the
# oldest ones, never the newest.
QUEUE_LIMIT = 64

Message = Envelope | None  # None: the gateway is stopping, end the stream


class ProgressHub:
    """Events for recoveries, fanned out to whoever watches each one in this process."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._watchers: dict[str, set[asyncio.Queue[Message]]] = defaultdict(set)
        self._subscribed = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Subscribe on first use: a gateway nobody watches through pays nothing."""
        async with self._lock:
            if not self._subscribed:
                await self.bus.subscribe_transient(
                    [event.routing_key() for event in LIVE_EVENTS], self.on_event)
                self._subscribed = True

    async def on_event(self, envelope: Envelope) -> None:
        recovery_id = envelope.payload.get("recovery_id")
        for queue in list(self._watchers.get(recovery_id, ())):
            _offer(queue, envelope)

    @contextlib.contextmanager
    def watch(self, recovery_id: str) -> Iterator[asyncio.Queue[Message]]:
        queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_LIMIT)
        self._watchers[recovery_id].add(queue)
        try:
            yield queue
        finally:
            watchers = self._watchers.get(recovery_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[recovery_id]

    def watching(self) -> int:
        return sum(len(queues) for queues in self._watchers.values())

    def close(self) -> None:
        """End every stream (the gateway is stopping and must not wait for them)."""
        for queues in self._watchers.values():
            for queue in queues:
                _offer(queue, None)


def _offer(queue: asyncio.Queue[Message], message: Message) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(message)


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; JSON has no raw newlines, so one data line is enough."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def event_data(envelope: Envelope) -> dict[str, Any]:
    return {**envelope.payload, "type": envelope.type,
            "occurred_at": envelope.occurred_at.isoformat()}


async def stream_recovery(request: web.Request, gateway, hub: ProgressHub,
                          identity: Identity, recovery_id: str) -> web.StreamResponse:
    if identity.kind != "user":
        raise forbidden("only a signed-in user may watch a recovery")
    try:
        await hub.start()
    except Exception as exc:  # the page falls back to polling
        log.warning("cannot subscribe to recovery events", error=str(exc))
        raise Problem(503, "Service unavailable", "live progress is not available now",
                      headers={"Retry-After": "5"}) from None
    loop = asyncio.get_running_loop()
    # Watch before asking for the snapshot, so no event falls between the two.
    with hub.watch(recovery_id) as queue:
        snapshot = await fetch_json(gateway, "recovery", "GET",
                                    f"/api/v1/recoveries/{recovery_id}", identity)
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            # nginx and similar proxies would otherwise buffer the stream.
            "X-Accel-Buffering": "no",
        })
        await response.prepare(request)
        try:
            await response.write(sse("snapshot", snapshot))
            if snapshot.get("state") in FINAL_STATES:
                return response
            deadline = loop.time() + MAX_STREAM_SECONDS
            while (left := deadline - loop.time()) > 0:
                try:
                    envelope = await asyncio.wait_for(queue.get(),
                                                      min(HEARTBEAT_SECONDS, left))
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if envelope is None:
                    break
                if envelope.payload.get("user_id") != identity.user_id:
                    continue  # never another user's event, even for a guessed id
                await response.write(sse(envelope.type, event_data(envelope)))
                if envelope.type in FINAL_EVENTS:
                    break
            await response.write_eof()
        except ConnectionError:
            pass  # the page went away
        return response
