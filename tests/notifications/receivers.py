"""Local receivers for notification tests: a webhook server and an SMTP server, both on
127.0.0.1 and in the test's own event loop, recording what reaches them."""

from __future__ import annotations

import asyncio
import email
import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiohttp import web
from aiosmtpd.smtp import SMTP


@dataclass
class Hook:
    body: bytes
    headers: dict[str, str]
    path: str
    at: float


class WebhookReceiver:
    """Answers each POST with ``status`` after ``delay`` seconds, per path: tests point
    users at different paths to give them receivers that behave differently."""

    def __init__(self) -> None:
        self.received: list[Hook] = []
        self.behaviour: dict[str, tuple[int, float]] = {}
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, status: int = 200, delay: float = 0.0) -> str:
        self.behaviour[path] = (status, delay)
        return self.url(path)

    def hooks(self, path: str) -> list[Hook]:
        return [h for h in self.received if h.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        status, delay = self.behaviour.get(request.path, (200, 0.0))
        self.received.append(Hook(await request.read(), dict(request.headers), request.path,
                                  asyncio.get_running_loop().time()))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    at: float


@dataclass
class SmtpReceiver:
    """aiosmtpd's SMTP protocol served from the test's loop."""

    received: list[Mail] = field(default_factory=list)
    port: int | None = None
    _server: asyncio.base_events.Server | None = None

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message,
                                  asyncio.get_running_loop().time()))
        return "250 OK"

    def to(self, address: str) -> list[Mail]:
        return [m for m in self.received if address in m.rcpt_tos]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="mail.test", loop=loop), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
