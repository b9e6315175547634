"""A loopback TCP forwarder that counts the bytes clients send through it.

Put in front of the object store, it measures what an agent really sent, including the
part of a pack upload that a kill cut off (which never shows up in the bucket)."""

from __future__ import annotations

import asyncio

PIECE = 256 * 1024


class CountingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.sent = 0  # client -> target, every byte of every connection
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(asyncio.current_task())
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pump(reader, up_writer, count=True),
                                 self._pump(up_reader, writer, count=False))
        finally:
            self._connections.discard(asyncio.current_task())

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, count: bool) -> None:
        try:
            while data := await src.read(PIECE):
                if count:
                    self.sent += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            dst.transport.abort()
