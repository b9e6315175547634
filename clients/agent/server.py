"""The few REST calls the agent makes itself (the objects go through remote_store.py):
logging in to mint an agent key, the backup session (open, commit, fail) and forget.

Failures become the agent's errors: no answer (or a gateway that cannot reach the service)
is ServerUnreachable (exit 4, try later), 401/403 is AuthRefused (exit 5), anything else
the server's own problem detail (exit 1). Calls are retried a few times on a lost
connection, since a backup that ran for hours should not fail over one dropped packet.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel

from shared.api.auth import AgentKeyCreated, AgentKeyRequest, LoginRequest, Me, Session
from shared.api.backup import Backup, BackupCommit, BackupFail, BackupStart, ForgetResult, RetentionPolicy

from . import version
from .exits import AgentError, AuthRefused, ServerUnreachable

M = TypeVar("M", bound=BaseModel)

# Answers that mean "the server is there but cannot serve now": try again later.
_TRY_LATER = {502, 503, 504}
# Backoff between attempts of one call (seconds); total under a minute.
RETRY_DELAYS = (1.0, 4.0, 15.0)
TIMEOUT = aiohttp.ClientTimeout(total=120, connect=20)


class Server:
    """One connection pool to the gateway, with a bearer token (a session or an agent key)."""

    def __init__(self, url: str, token: str | None = None, *, retry_delays=RETRY_DELAYS) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.retry_delays = tuple(retry_delays)
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Server:
        self._http = aiohttp.ClientSession(timeout=TIMEOUT, headers={"User-Agent": f"reclo-agent/{version()}"})
        return self

    async def __aexit__(self, *exc) -> None:
        if self._http is not None:
            await self._http.close()

    # --- accounts ---

    async def login(self, username: str, password: str) -> Session:
        body = LoginRequest(username=username, password=password)
        return await self._call("POST", "/api/v1/auth/login", body, Session, token=None, retry=False)

    async def logout(self) -> None:
        await self._call("POST", "/api/v1/auth/logout", None, None, retry=False)

    async def mint_agent_key(self, host: str) -> AgentKeyCreated:
        return await self._call("POST", "/api/v1/agent-keys", AgentKeyRequest(host=host), AgentKeyCreated,
                                retry=False)

    async def me(self) -> Me:
        return await self._call("GET", "/api/v1/auth/me", None, Me)

    # --- the backup session ---

    async def open_backup(self, start: BackupStart) -> Backup:
        return await self._call("POST", "/api/v1/backups", start, Backup)

    async def commit_backup(self, backup_id: str, commit: BackupCommit) -> Backup:
        return await self._call("POST", f"/api/v1/backups/{backup_id}/commit", commit, Backup)

    async def fail_backup(self, backup_id: str, reason: str) -> None:
        await self._call("POST", f"/api/v1/backups/{backup_id}/fail", BackupFail(reason=reason[:2000]), None)

    async def forget(self, policy: RetentionPolicy) -> ForgetResult:
        return await self._call("POST", "/api/v1/repository/forget", policy, ForgetResult)

    # --- plumbing ---

    async def _call(self, method: str, path: str, body: BaseModel | None, answer: type[M] | None,
                    *, token: str | None | bool = True, retry: bool = True) -> Any:
        bearer = self.token if token is True else token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        data = body.model_dump_json().encode() if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        delays = self.retry_delays if retry else ()
        for attempt in range(len(delays) + 1):
            try:
                return await self._once(method, path, data, headers, answer)
            except ServerUnreachable:
                if attempt == len(delays):
                    raise
                await asyncio.sleep(delays[attempt])
        raise AssertionError("unreachable")

    async def _once(self, method, path, data, headers, answer):
        assert self._http is not None, "use `async with Server(...)`"
        try:
            async with self._http.request(method, self.url + path, data=data, headers=headers) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, OSError) as e:
            raise ServerUnreachable(f"cannot reach {self.url}: {e.__class__.__name__}: {e}".rstrip(": ")) from None
        if status in _TRY_LATER:
            raise ServerUnreachable(f"{self.url} answered {status} to {method} {path}: {_detail(raw)}")
        if status in (401, 403):
            raise AuthRefused(f"the server refused {method} {path} ({status}): {_detail(raw)}")
        if status >= 400:
            raise AgentError(f"the server refused {method} {path} ({status}): {_detail(raw)}")
        if answer is None:
            return None
        try:
            return answer.model_validate_json(raw)
        except ValueError as e:
            raise AgentError(f"unexpected answer to {method} {path}: {e}") from None


def _detail(raw: bytes) -> str:
    """The problem+json detail (or title) if there is one, else the start of the body."""
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict):
            return str(doc.get("detail") or doc.get("title") or doc)[:500]
    except ValueError:
        pass
    return raw[:200].decode(errors="replace") or "(no body)"
