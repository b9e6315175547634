"""The RabbitMQ adapter (aio-pika).

Topology for a service queue ``Q`` (all durable):
- ``Q`` bound to the topic exchange ``reclo.events`` with the service's patterns;
- ``Q.retry.<ms>`` per retry delay: a parking queue whose message TTL is the delay and whose
  dead-letter target is ``Q`` again. One queue per delay keeps every message in it with the
  same TTL, so none waits behind a longer one;
- ``Q.dead``: messages that failed every attempt or could not be read, with the reason in
  the ``x-reclo-reason`` header.
A message is acknowledged only after its handler returned or after it was confirmed into a
retry or dead queue, so a crash at any point redelivers it rather than losing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiormq import spec

from shared.bus.port import EXCHANGE, Bus, DeadLetter, Handler, Outgoing, failure_reason
from shared.events import Envelope, MalformedMessage, decode_envelope
from shared.logs import get_logger

log = get_logger(__name__)

ATTEMPT_HEADER = "x-reclo-attempt"
REASON_HEADER = "x-reclo-reason"
# A publish that the broker has not confirmed in this time is treated as failed (the outbox
# will try again); without it a publish during an outage could wait for the reconnect.
CONFIRM_TIMEOUT_SECONDS = 10.0
# Deliveries acknowledged on their own above one that never settled, before the channel's
# acknowledger stops tracking them (and acknowledges one at a time): bounds its memory.
MAX_SETTLED_AHEAD = 10_000
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


class RabbitBus(Bus):
    def __init__(self, url: str, *, prefetch: int = 16, retry_delays: tuple[float, ...] = (1.0,),
                 exchange: str = EXCHANGE):
        self.url = url
        self.exchange = exchange
        self.prefetch = prefetch
        self.retry_delays = tuple(retry_delays)
        self._connection: AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(self.url, reconnect_interval=1.0)
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def ping(self) -> bool:
        conn = self._connection
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    async def publish(self, envelope: Envelope) -> None:
        await self._publish(self._exchange, envelope.routing_key, envelope.to_bytes(),
                            message_id=str(envelope.id))

    async def publish_raw(self, routing_key: str, body: bytes) -> None:
        await self._publish(self._exchange, routing_key, body)

    async def publish_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Every message's frames go out at once, then the confirms are awaited together
        under one timeout: no aio-pika message object and no timeout task per message."""
        if not messages:
            return []
        try:
            # Fail at once while the connection is down (as publish does): waiting for the
            # reconnect would hold the relay's transaction and its row locks meanwhile.
            if (self._channel is None or self._connection is None or self._channel.is_closed
                    or not self._connection.connected.is_set()):
                raise ConnectionError("bus is not connected")
            channel = await asyncio.wait_for(self._channel.get_underlay_channel(),
                                             CONFIRM_TIMEOUT_SECONDS)
        except Exception as exc:
            return [exc] * len(messages)
        publishes = [
            asyncio.ensure_future(channel.basic_publish(
                m.body, exchange=self.exchange, routing_key=m.routing_key, wait=False,
                properties=spec.Basic.Properties(
                    content_type="application/json", delivery_mode=PERSISTENT,
                    message_id=m.message_id)))
            for m in messages]
        try:
            _, unconfirmed = await asyncio.wait(publishes, timeout=CONFIRM_TIMEOUT_SECONDS)
        finally:
            for publish in publishes:
                publish.cancel()  # those still waiting: timed out, or the caller is cancelled
        await asyncio.gather(*unconfirmed, return_exceptions=True)
        return [_publish_error(p, p in unconfirmed) for p in publishes]

    async def _publish_to_queue(self, queue: str, body: bytes, headers: dict) -> None:
        exchange = self._channel.default_exchange if self._channel is not None else None
        await self._publish(exchange, queue, body, headers=headers)

    @staticmethod
    async def _publish(exchange, key: str, body: bytes, **properties) -> None:
        if exchange is None:
            raise ConnectionError("bus is not connected")
        message = aio_pika.Message(body, content_type="application/json",
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties)
        await asyncio.wait_for(exchange.publish(message, routing_key=key),
                               CONFIRM_TIMEOUT_SECONDS)

    async def subscribe(self, queue: str, patterns: Sequence[str], handler: Handler) -> None:
        assert self._connection is not None and self._exchange is not None
        channel = await self._connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=self.prefetch)
        main = await channel.declare_queue(queue, durable=True)
        for pattern in patterns:
            await main.bind(self.exchange, routing_key=pattern)
        for delay in self.retry_delays:
            await channel.declare_queue(
                _retry_queue(queue, delay),
                durable=True,
                arguments={
                    "x-message-ttl": _ms(delay),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue,
                },
            )
        await channel.declare_queue(_dead_queue(queue), durable=True)

        acks: _Acknowledger | None = None

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal acks
            channel = message.channel
            if acks is None or acks.channel is not channel:
                acks = _Acknowledger(channel)  # a new channel after a reconnect: tags restart
            await self._deliver(queue, message, handler, acks)

        await main.consume(on_message)

    async def subscribe_transient(self, patterns: Sequence[str], handler: Handler) -> None:
        assert self._connection is not None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        # Server-named, exclusive, auto-deleted: it lives and dies with this connection.
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for pattern in patterns:
            await queue.bind(self.exchange, routing_key=pattern)

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                await handler(decode_envelope(message.body))
            except Exception as exc:
                log.warning("transient handler failed", error=failure_reason(exc))
            await message.ack()

        await queue.consume(on_message)

    async def _deliver(self, queue: str, message: AbstractIncomingMessage, handler: Handler,
                       acks: _Acknowledger):
        attempt = int((message.headers or {}).get(ATTEMPT_HEADER, 1))
        try:
            await handler(decode_envelope(message.body))
        except MalformedMessage as exc:
            await self._bury(queue, message, str(exc), attempt, acks)
        except Exception as exc:
            if attempt <= len(self.retry_delays):
                delay = self.retry_delays[attempt - 1]
                log.warning("handler failed, will retry", queue=queue, attempt=attempt,
                            delay=delay, error=failure_reason(exc))
                await self._forward(
                    message, _retry_queue(queue, delay), {ATTEMPT_HEADER: attempt + 1}, acks
                )
            else:
                await self._bury(queue, message, failure_reason(exc), attempt, acks)
        else:
            acks.handled(message.delivery_tag)

    async def _bury(self, queue: str, message: AbstractIncomingMessage, reason: str, attempt: int,
                    acks: _Acknowledger):
        log.error("message dead-lettered", queue=queue, reason=reason, attempts=attempt)
        await self._forward(
            message, _dead_queue(queue), {ATTEMPT_HEADER: attempt, REASON_HEADER: reason}, acks
        )

    async def _forward(self, message: AbstractIncomingMessage, target: str, headers: dict,
                       acks: _Acknowledger):
        """Move a message to a retry or dead queue: acknowledged only once confirmed there."""
        try:
            await self._publish_to_queue(target, message.body, headers)
        except Exception:
            # Not parked: give it back to the broker so it is delivered again, never lost.
            await message.nack(requeue=True)
            acks.settled_alone(message.delivery_tag)
            raise
        await message.ack()
        acks.settled_alone(message.delivery_tag)

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        assert self._connection is not None
        channel = await self._connection.channel()
        try:
            dead = await channel.declare_queue(_dead_queue(queue), durable=True)
            letters = []
            while (message := await dead.get(no_ack=False, fail=False)) is not None:
                headers = message.headers or {}
                letters.append(
                    DeadLetter(
                        queue=queue,
                        body=message.body,
                        reason=str(headers.get(REASON_HEADER, "")),
                        attempts=int(headers.get(ATTEMPT_HEADER, 1)),
                    )
                )
                await message.ack()
            return letters
        finally:
            await channel.close()


class _Acknowledger:
    """Acknowledges the handled deliveries of one consumer's channel, many with one frame.

    Delivery tags count up from 1 on a channel. Once every delivery up to tag T is settled
    (handled, or acknowledged or rejected on its own when it was moved to a retry or dead
    queue), one ``multiple`` ack of the highest handled tag among them covers the lot: a
    batch the inbox committed together is acknowledged together. A handled delivery above
    a gap (an earlier one still being handled) is acknowledged on its own, at once, so a
    slow delivery never holds back the others' acknowledgements."""

    def __init__(self, channel) -> None:
        self.channel = channel
        self._floor = 0  # every delivery up to this tag is settled
        self._handled: set[int] = set()  # above the floor, waiting for their ack
        self._alone: set[int] = set()  # above the floor, acked or rejected on their own
        self._sender: asyncio.Task | None = None
        self._one_by_one = False

    def handled(self, tag: int) -> None:
        self._handled.add(tag)
        # Started after the deliveries settled in this turn of the loop (a whole batch
        # wakes at once), so that one frame covers them all.
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="bus:acks")

    def settled_alone(self, tag: int) -> None:
        """``tag`` was acknowledged or rejected on its own (the frame is written)."""
        if not self._one_by_one:
            self._alone.add(tag)

    def _take(self) -> tuple[int | None, list[int]]:
        """The tag to ack with ``multiple`` (or None) and the tags to ack one by one."""
        highest_handled = None
        tag = self._floor + 1
        while not self._one_by_one:
            if tag in self._handled:
                self._handled.discard(tag)
                highest_handled = tag
            elif tag in self._alone:
                self._alone.discard(tag)
            else:
                break
            tag += 1
        self._floor = tag - 1
        singles = sorted(self._handled)
        self._handled.clear()
        if self._one_by_one:
            return None, singles
        self._alone.update(singles)
        if len(self._alone) > MAX_SETTLED_AHEAD:
            # A delivery below them never settled (its handling was cancelled): stop
            # remembering what lies above it; from now on every ack goes on its own.
            self._alone.clear()
            self._one_by_one = True
        return highest_handled, singles

    async def _send(self) -> None:
        try:
            while True:
                up_to, singles = self._take()
                if up_to is None and not singles:
                    return
                for tag in singles:
                    await self.channel.basic_ack(tag)
                if up_to is not None:
                    await self.channel.basic_ack(up_to, multiple=True)
        except Exception as exc:
            # The channel closed: its unacknowledged deliveries come again (at least once).
            log.warning("acknowledgements not sent", error=failure_reason(exc))


def _publish_error(publish: asyncio.Future, timed_out: bool) -> BaseException | None:
    if timed_out:
        return TimeoutError("the broker did not confirm in time")
    if publish.cancelled():  # by the channel closing under it: a failure, not our cancellation
        return ConnectionError("publish cancelled by the channel")
    return publish.exception()


def _ms(seconds: float) -> int:
    return max(1, int(round(seconds * 1000)))


def _retry_queue(queue: str, delay: float) -> str:
    return f"{queue}.retry.{_ms(delay)}ms"


def _dead_queue(queue: str) -> str:
    return f"{queue}.dead"
