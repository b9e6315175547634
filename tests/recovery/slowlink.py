"""A loopback TCP forwarder with a bandwidth cap on what comes back: a slow line between a
recovery worker and S3, so that a test can act while a download is under way (kill the
worker, cancel the task) instead of racing one that ends in a blink."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

# Bytes forwarded per read: small enough that the cap is smooth.
PIECE = 16 * 1024


class SlowLink:
    def __init__(self, target_url: str, bytes_per_second: int) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname, parts.port or 80)
        self.rate = bytes_per_second
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.url = ""

    async def start(self) -> SlowLink:
        """Listen (again on the same port after ``stop``: an outage, then the line back)."""
        port = int(self.url.rsplit(":", 1)[1]) if self.url else 0
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port,
                                                  reuse_address=True)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader, writer) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pump(reader, up_writer, None),
                                 self._pump(up_reader, writer, self.rate))
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(src, dst, rate: int | None) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await src.read(PIECE):
                dst.write(data)
                await dst.drain()
                if rate:
                    await asyncio.sleep(len(data) / rate)
        with contextlib.suppress(Exception):
            dst.write_eof()
