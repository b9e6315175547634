"""The bus port: publish envelopes to the topic exchange, consume a service's queue.

Semantics every adapter keeps (checked by one conformance suite, tests/bus/):
- ``publish`` returns only once the broker has the message (publisher confirms);
- each ``queue`` is durable, bound to routing-key patterns (``*`` one word, ``#`` any);
- delivery is at least once: a message is acknowledged only after its handler returned;
- a handler that raises is retried after each of ``retry_delays`` and then dead-lettered
  with the reason; a :class:`~shared.events.MalformedMessage` is dead-lettered at once.
"""

from __future__ import annotations

from shared.bus.port import EXCHANGE, Bus, DeadLetter, Handler, topic_matches

__all__ = ["Bus", "DeadLetter", "Handler", "topic_matches", "create_bus"]


def create_bus(url: str | None, *, prefetch: int, retry_delays: tuple[float, ...],
               exchange: str = EXCHANGE) -> Bus:
    """The RabbitMQ adapter for an ``amqp://`` URL, else the in-process one (whose
    exchange is the process itself)."""
    if url:
        from shared.bus.rabbitmq import RabbitBus

        return RabbitBus(url, prefetch=prefetch, retry_delays=retry_delays, exchange=exchange)
    from shared.bus.inprocess import InProcessBus

    return InProcessBus(prefetch=prefetch, retry_delays=retry_delays)
