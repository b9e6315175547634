"""The in-process bus: RabbitMQ's semantics inside one process, for the embedded mode and
unit tests. Messages travel as bytes, exactly as on the wire, so decoding is exercised too.

What it cannot give: durability across a crash of the process. Unsent events survive in
the outbox tables; an event taken from a queue but not yet handled when the process dies is
not redelivered (the reconcile sweeps pick up long work). See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence

from shared.bus.port import Bus, DeadLetter, Handler, failure_reason, topic_matches
from shared.events import Envelope, MalformedMessage, decode_envelope
from shared.logs import get_logger

log = get_logger(__name__)


class _Queue:
    def __init__(self, name: str) -> None:
        self.name = name
        self.patterns: set[str] = set()
        self.messages: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
        self.workers: list[asyncio.Task] = []


class InProcessBus(Bus):
    def __init__(self, *, prefetch: int = 16, retry_delays: tuple[float, ...] = (1.0,)) -> None:
        self.prefetch = prefetch
        self.retry_delays = tuple(retry_delays)
        self._queues: dict[str, _Queue] = {}
        self._dead: dict[str, list[DeadLetter]] = defaultdict(list)
        self._timers: set[asyncio.TimerHandle] = set()
        self._connected = False

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        self._connected = False
        for timer in self._timers:
            timer.cancel()
        workers = [w for q in self._queues.values() for w in q.workers]
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._queues.clear()

    async def ping(self) -> bool:
        return self._connected

    async def publish(self, envelope: Envelope) -> None:
        await self.publish_raw(envelope.routing_key, envelope.to_bytes())

    async def publish_raw(self, routing_key: str, body: bytes) -> None:
        if not self._connected:
            raise ConnectionError("bus is not connected")
        for queue in self._queues.values():
            if any(topic_matches(p, routing_key) for p in queue.patterns):
                queue.messages.put_nowait((body, 1))

    async def subscribe(self, queue: str, patterns: Sequence[str], handler: Handler) -> None:
        q = self._queues.setdefault(queue, _Queue(queue))
        q.patterns.update(patterns)
        for _ in range(self.prefetch):
            q.workers.append(asyncio.create_task(self._work(q, handler), name=f"bus:{queue}"))

    async def subscribe_transient(self, patterns: Sequence[str], handler: Handler) -> None:
        q = _Queue(f"transient.{id(handler)}.{len(self._queues)}")
        q.patterns.update(patterns)
        self._queues[q.name] = q
        q.workers.append(asyncio.create_task(self._notify(q, handler), name=f"bus:{q.name}"))

    async def _notify(self, queue: _Queue, handler: Handler) -> None:
        while True:
            body, _ = await queue.messages.get()
            try:
                await handler(decode_envelope(body))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("transient handler failed", error=failure_reason(exc))

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        return self._dead.pop(queue, [])

    async def _work(self, queue: _Queue, handler: Handler) -> None:
        while True:
            body, attempt = await queue.messages.get()
            try:
                await handler(decode_envelope(body))
            except asyncio.CancelledError:
                raise
            except MalformedMessage as exc:
                self._bury(queue, body, str(exc), attempt)
            except Exception as exc:  # a handler failure of any kind is retried
                if attempt <= len(self.retry_delays):
                    delay = self.retry_delays[attempt - 1]
                    log.warning("handler failed, will retry", queue=queue.name,
                                attempt=attempt, delay=delay, error=failure_reason(exc))
                    self._later(delay, queue, body, attempt + 1)
                else:
                    self._bury(queue, body, failure_reason(exc), attempt)

    def _later(self, delay: float, queue: _Queue, body: bytes, attempt: int) -> None:
        loop = asyncio.get_running_loop()

        def requeue() -> None:
            self._timers.discard(timer)
            queue.messages.put_nowait((body, attempt))

        timer = loop.call_later(delay, requeue)
        self._timers.add(timer)

    def _bury(self, queue: _Queue, body: bytes, reason: str, attempts: int) -> None:
        log.error("message dead-lettered", queue=queue.name, reason=reason, attempts=attempts)
        self._dead[queue.name].append(DeadLetter(queue.name, body, reason, attempts))
