"""The bus interface and what its adapters share."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from shared.events import Envelope

EXCHANGE = "reclo.events"

Handler = Callable[[Envelope], Awaitable[None]]


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    body: bytes
    reason: str
    attempts: int


class Outgoing(NamedTuple):
    """A message as the outbox stores it: already serialised."""

    routing_key: str
    body: bytes
    message_id: str | None = None


class Bus(ABC):
    retry_delays: tuple[float, ...]

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the broker is reachable (readiness)."""

    @abstractmethod
    async def publish(self, envelope: Envelope) -> None:
        """Publish on the envelope's routing key; returns once the broker confirmed."""

    @abstractmethod
    async def publish_raw(self, routing_key: str, body: bytes) -> None:
        """Publish bytes as they are (used to test how malformed messages are handled)."""

    async def publish_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Publish all of ``messages`` at once, each as ``publish_raw`` would; for each,
        None once the broker confirmed it, or why it failed. Adapters may do it cheaper."""
        return await asyncio.gather(
            *(self.publish_raw(m.routing_key, m.body) for m in messages), return_exceptions=True)

    @abstractmethod
    async def subscribe(self, queue: str, patterns: Sequence[str], handler: Handler) -> None:
        """Declare the durable queue, bind it and start consuming with ``handler``."""

    @abstractmethod
    async def subscribe_transient(self, patterns: Sequence[str], handler: Handler) -> None:
        """Every matching event, to this process only, while it runs: a private queue that
        disappears with the connection. For notifications that are worthless once stale
        (live progress in the portal): no retries, no dead letters, no redelivery."""

    @abstractmethod
    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        """Take the messages dead-lettered from ``queue`` (for operators and tests)."""


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more."""
    return _match(pattern.split("."), key.split("."))


def _match(pat: list[str], words: list[str]) -> bool:
    if not pat:
        return not words
    head, rest = pat[0], pat[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


def failure_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:1000] if text else type(exc).__name__
