"""Following a recovery until it ends: the gateway's server-sent event stream
(``GET /api/v1/recoveries/{id}/events``) while it works, else asking every two seconds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import aiohttp

from clients.recovery.client import Api, seg
from clients.recovery.exits import NotSignedIn, RecoverError

FINAL_STATES = frozenset({"complete", "failed"})
FINAL_EVENTS = frozenset({"RecoveryCompleted", "RecoveryFailed"})
POLL_SECONDS = 2.0
# The gateway sends a keep-alive every 15 s; four missed ones mean the stream is dead.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60)

Recovery = dict[str, Any]
OnUpdate = Callable[[Recovery], None]


def _when(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def merge(recovery: Recovery | None, kind: str, data: dict[str, Any]) -> Recovery | None:
    """What is known after one event. A progress event older than the snapshot is dropped,
    so a late one never moves the bars backwards."""
    if kind == "snapshot":
        return dict(data)
    if recovery is None or recovery.get("state") in FINAL_STATES:
        return recovery
    at, known = _when(data.get("occurred_at")), _when(recovery.get("updated_at"))
    if at and known and at < known:
        return recovery
    merged = dict(recovery, updated_at=data.get("occurred_at", recovery.get("updated_at")))
    if kind == "RecoveryProgressed":
        merged.update(state=data["state"], total_progress=data["total_progress"],
                      state_progress=data["state_progress"],
                      message=data.get("message", merged.get("message", "")))
    elif kind == "RecoveryFailed":
        merged.update(state="failed", failure_reason=data.get("reason"))
    elif kind == "RecoveryCompleted":
        merged.update(state="complete", total_progress=100, state_progress=100,
                      instance_id=data.get("instance_id") or merged.get("instance_id"))
    return merged


async def events(api: Api, recovery_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event name, data) from the stream, until the server closes it."""
    async with api.open("GET", f"/recoveries/{seg(recovery_id)}/events",
                        headers={"Accept": "text/event-stream"},
                        timeout=STREAM_TIMEOUT) as response:
        if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
            raise RecoverError("the server does not stream progress")
        kind, data = "message", []
        async for raw in response.content:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if data:
                    yield kind, json.loads("\n".join(data))
                kind, data = "message", []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)


async def _stream(api: Api, recovery_id: str, on_update: OnUpdate,
                  state: dict[str, Recovery | None]) -> bool:
    """Follows the stream; True once the recovery ended."""
    async for kind, data in events(api, recovery_id):
        state["recovery"] = merge(state["recovery"], kind, data)
        if state["recovery"] is not None:
            on_update(state["recovery"])
            if state["recovery"].get("state") in FINAL_STATES or kind in FINAL_EVENTS:
                return True
    return False


async def follow(api: Api, recovery_id: str, on_update: OnUpdate,
                 poll_seconds: float = POLL_SECONDS) -> Recovery:
    """Calls ``on_update`` with the recovery as it changes; returns it once finished (as
    the server has it then, with the image's size and hash)."""
    state: dict[str, Recovery | None] = {"recovery": None}
    streaming = True
    while streaming:
        try:
            if await _stream(api, recovery_id, on_update, state):
                break
            # Closed without an end (the gateway restarted or the stream's time was up).
        except NotSignedIn:
            raise
        except (RecoverError, aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            streaming = False  # a proxy that buffers, an old gateway: ask instead
    while True:
        recovery = await api.call("GET", f"/recoveries/{seg(recovery_id)}")
        if recovery != state["recovery"]:
            state["recovery"] = recovery
            on_update(recovery)
        if recovery.get("state") in FINAL_STATES:
            return recovery
        await asyncio.sleep(poll_seconds)
