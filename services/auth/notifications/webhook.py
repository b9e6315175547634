"""Sending a webhook: one signed JSON POST, answered with a 2xx within the timeout.

Redirects are not followed (a receiver that moved should be updated in the settings, and a
redirect could lead to an address the guard would refuse); proxies from the environment
are not used; the answer's body is not read beyond its status.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiohttp
from yarl import URL

from services.auth.notifications import destinations, signing
from services.auth.notifications.errors import DeliveryError
from shared.api.notifications import SIGNATURE_HEADER

USER_AGENT = "ReClo-Notifications/1"


class WebhookClient:
    def __init__(self, *, timeout_seconds: float, allow_private: bool, connections: int) -> None:
        self.timeout = timeout_seconds
        self.allow_private = allow_private
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=destinations.GuardedResolver(self.allow_private),
                limit=self.connections)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, headers={"User-Agent": USER_AGENT})
        return self._session

    async def post(self, url: str, body: bytes, *, secrets: Sequence[str], event_type: str,
                   delivery_id: str) -> None:
        if not secrets:
            raise DeliveryError("the webhook was removed from the settings", permanent=True)
        try:
            destinations.check_host(URL(url).host or "", self.allow_private)
        except destinations.InvalidDestination as exc:
            raise DeliveryError(str(exc), permanent=True) from None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signing.signature_header(secrets, body, int(time.time())),
            "X-Reclo-Event": event_type,
            "X-Reclo-Delivery": delivery_id,
        }
        try:
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                if not 200 <= response.status < 300:
                    raise DeliveryError(f"the receiver answered HTTP {response.status} "
                                        f"{response.reason or ''}".strip())
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise DeliveryError(f"could not connect: {exc.os_error or exc}") from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
