"""Small helpers the test tiers share."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from pathlib import Path
from urllib.parse import urlsplit


async def eventually(condition, timeout: float = 10.0, interval: float = 0.02):
    """Wait until ``condition()`` (sync or async) is true; fail with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def files_under(root: Path, *, folders: bool = False) -> list[str]:
    """What lies under ``root`` (relative paths; folders too if asked), read while the code
    under test may be removing it: a folder that vanishes mid-walk is simply not listed,
    where ``Path.rglob`` would raise FileNotFoundError."""
    def vanished_only(error: OSError) -> None:
        if not isinstance(error, FileNotFoundError):
            raise error  # unreadable is not empty

    found = []
    for folder, subfolders, files in os.walk(root, onerror=vanished_only):
        names = files + subfolders if folders else files
        found += [os.path.relpath(os.path.join(folder, name), root) for name in names]
    return sorted(found)


class TcpProxy:
    """A loopback TCP forwarder between the code under test and a real server (broker,
    database, S3). A test can cut it and restore it on the same port (an outage without
    touching the real server), count what clients sent through it (``sent``: every byte,
    also of uploads a kill cut short, which never reach the server), and cap the rate of
    what comes back (``down_rate``, bytes/s: a thin line, so a test can act while a
    download is under way instead of racing one that ends in a blink). With
    ``lose_answers_after`` set (bytes a request starts with, such as b"POST /api/v1/backups "),
    a connection that sends them gets nothing back from then on: the server acts on the
    request, the client never hears of it. ``cut_answer_once_after`` does the same once, and
    hangs up instead of keeping the client waiting: a lost answer the client notices."""

    def __init__(self, target_host: str, target_port: int, *, down_rate: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.down_rate = down_rate
        self.lose_answers_after: bytes | None = None
        self.cut_answer_once_after: bytes | None = None
        self.sent = 0
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    @classmethod
    def to(cls, url: str, **options) -> TcpProxy:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, **options)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        """Listen (again on the same port after ``cut``)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """Stop accepting and drop every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    restore = start
    stop = cut

    async def _accept(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._pipes.update({writer, up_writer})
        deaf = asyncio.Event()  # set once this connection's answers are lost
        cut = asyncio.Event()  # set once this connection is to hang up at its next answer
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, count=True, deafen=deaf, cut=cut),
                self._pump(up_reader, writer, rate=self.down_rate, lost=deaf, hang_up=cut))
        finally:
            self._pipes.difference_update({writer, up_writer})

    async def _pump(self, src, dst, *, count: bool = False, rate: int | None = None,
                    deafen: asyncio.Event | None = None, lost: asyncio.Event | None = None,
                    cut: asyncio.Event | None = None, hang_up: asyncio.Event | None = None) -> None:
        # Small pieces when the rate is capped, so that the cap is smooth.
        piece = 16 * 1024 if rate else 64 * 1024
        try:
            while data := await src.read(piece):
                if count:
                    self.sent += len(data)
                if deafen is not None and self.lose_answers_after and self.lose_answers_after in data:
                    deafen.set()
                if cut is not None and self.cut_answer_once_after and self.cut_answer_once_after in data:
                    self.cut_answer_once_after = None
                    cut.set()
                if hang_up is not None and hang_up.is_set():
                    break  # the finally aborts the client's side
                if lost is not None and lost.is_set():
                    continue
                dst.write(data)
                await dst.drain()
                if rate:
                    await asyncio.sleep(len(data) / rate)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if dst.transport is not None:
                dst.transport.abort()
