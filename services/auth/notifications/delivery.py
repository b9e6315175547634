"""Deliveries: recorded when an event is handled, sent in the background, retried with
backoff, then given up with the reason.

Handling an event only inserts ``notification_deliveries`` rows, in the inbox transaction,
so a slow receiver can never hold up the bus, and an event is turned into messages exactly
once. The :class:`Sender` (one per auth replica) claims due rows with ``SELECT … FOR UPDATE
SKIP LOCKED`` under READ COMMITTED, marks them ``sending`` with a claim that lapses after
the longest send could take, commits, and only then sends, outside any transaction. Several
replicas therefore never send one delivery at the same time; a replica that dies mid-send
leaves its claim to lapse, and another takes the delivery over (at least once: receivers
deduplicate on the event id).

A slow or dead receiver can't delay other messages: sends run concurrently (up to
``notify_concurrency``), each bounded by its timeout, and one destination (a URL or an
address) has at most one send in flight per replica, so its backlog never fills the slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, event as sa_event, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.domain import new_id
from services.auth.notifications import messages, store
from services.auth.notifications.errors import DeliveryError
from services.auth.notifications.smtp import Mailer
from services.auth.notifications.webhook import WebhookClient
from services.auth.tables import NotificationDeliveryRow as D
from services.auth.tables import NotificationSettingsRow
from shared.db import Database
from shared.events import Envelope, Event, utcnow
from shared.logs import get_logger
from shared.settings import AuthSettings

log = get_logger(__name__)

PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"
# A channel enforces its own timeout; this backstop adds a little on top of it.
DEADLINE_MARGIN_SECONDS = 5.0
# A claim outlives the longest possible send by this, so it never lapses while the send is
# still going (which would let another replica send it a second time).
LEASE_MARGIN_SECONDS = 30.0
# Due rows read per free slot: enough that a destination already busy, whose rows are
# skipped, does not hide the others behind it.
CLAIM_LOOKAHEAD = 4
# A database that keeps failing is retried no faster than this.
MAX_IDLE_SECONDS = 60.0
ERROR_MAX = 500
# Finished deliveries older than the keep period are deleted this often, this many per
# transaction (a short lock, whatever the backlog).
PRUNE_EVERY_SECONDS = 3600.0
PRUNE_BATCH = 1000


async def record(session: AsyncSession, envelope: Envelope, event: Event, *,
                 now: datetime) -> list[D]:
    """The deliveries one event makes for its user, added to the handler's transaction:
    one per channel the user set up, if they want this kind of event."""
    settings = await store.load(session, event.user_id)  # type: ignore[attr-defined]
    if settings is None or not store.wants(settings, envelope.type):
        return []
    payload = messages.encode(messages.document(envelope, event))
    rows = [
        D(id=new_id(), user_id=settings.user_id, event_id=str(envelope.id),
          event_type=envelope.type, channel=channel, target=target, payload=payload,
          state=PENDING, attempts=0, next_attempt_at=now, created_at=now)
        for channel, target in (("webhook", settings.webhook_url), ("email", settings.email))
        if target
    ]
    session.add_all(rows)
    return rows


def _destination(settings: NotificationSettingsRow | None, channel: str) -> str | None:
    if settings is None:
        return None
    return settings.webhook_url if channel == "webhook" else settings.email


@dataclass(frozen=True)
class Claim:
    id: str
    channel: str
    target: str
    event_type: str
    payload: str
    attempts: int
    secrets: tuple[str, ...] = ()


class Sender:
    def __init__(self, settings: AuthSettings, db: Database, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock
        self.delays = settings.notify_retry_delays
        self.max_attempts = len(self.delays) + 1
        self.concurrency = settings.notify_concurrency
        self.poll_seconds = settings.notify_poll_seconds
        self.webhook = WebhookClient(timeout_seconds=settings.notify_webhook_timeout_seconds,
                                     allow_private=settings.notify_allow_private_webhooks,
                                     connections=settings.notify_concurrency)
        self.mailer = Mailer(settings)
        self.deadlines = {
            "webhook": settings.notify_webhook_timeout_seconds + DEADLINE_MARGIN_SECONDS,
            "email": settings.notify_smtp_timeout_seconds + DEADLINE_MARGIN_SECONDS,
        }
        self.lease = timedelta(seconds=max(self.deadlines.values()) + LEASE_MARGIN_SECONDS)
        self.keep = timedelta(days=settings.notify_keep_days)
        self._pruned_at: float | None = None
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task] = {}
        self._busy: set[str] = set()
        self._next_retry: float | None = None

    # --- waking ---------------------------------------------------------------------

    def wake_after_commit(self, session: AsyncSession) -> None:
        """Send as soon as the handler's transaction commits (not before: the rows would
        not be visible yet)."""
        sa_event.listen(session.sync_session, "after_commit", lambda _s: self._wake.set(),
                        once=True)

    # --- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        me = asyncio.current_task()
        try:
            while True:
                # A cancellation that something below swallowed (Python 3.11's wait_for
                # does when its awaitable finishes at the same moment) still stops us.
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError
                self._wake.clear()  # before reading, so a commit during the read wakes us
                try:
                    await self.dispatch_due()
                    await self._prune_when_due()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    if failures in (1, 10) or failures % 100 == 0:
                        log.warning("notification sender failed, will retry",
                                    error=str(exc) or type(exc).__name__, failures=failures)
                # asyncio.timeout, not wait_for: wait_for can swallow the cancellation that
                # stops the service when the wake-up comes at the same moment.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_seconds(failures)):
                        await self._wake.wait()
        finally:
            await self.stop()

    def _idle_seconds(self, failures: int) -> float:
        if failures:
            return min(self.poll_seconds * 2 ** min(failures, 6), MAX_IDLE_SECONDS)
        idle = self.poll_seconds
        if self._next_retry is not None:
            now = asyncio.get_running_loop().time()
            if self._next_retry <= now:
                self._next_retry = None
                return 0
            idle = min(idle, self._next_retry - now)
        return idle

    async def stop(self) -> None:
        """Cancel the sends in flight; their claims lapse and another sender (or this one,
        after a restart) takes them over."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.webhook.close()

    async def dispatch_due(self) -> int:
        """Claim due deliveries into the free slots and start sending them."""
        started = 0
        while (free := self.concurrency - len(self._in_flight)) > 0:
            claims, progressed = await self.claim(free)
            for claim in claims:
                self._start(claim)
            started += len(claims)
            if not progressed:  # nothing due, or only what waits for a busy destination
                break
        return started

    async def _prune_when_due(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_SECONDS:
            self._pruned_at = now
            while await self.prune() == PRUNE_BATCH:
                pass

    async def prune(self) -> int:
        """Delete one batch of deliveries that finished before the keep period."""
        cutoff = self.clock() - self.keep
        async with self.db.transaction() as session:
            ids = (await session.scalars(
                select(D.id).where(D.finished_at < cutoff).limit(PRUNE_BATCH))).all()
            if ids:
                await session.execute(delete(D).where(D.id.in_(ids)))
        return len(ids)

    def _start(self, claim: Claim) -> None:
        task = asyncio.create_task(self._deliver(claim), name=f"notification:{claim.id}")
        self._in_flight[claim.id] = task
        self._busy.add(claim.target)

        def done(_task: asyncio.Task) -> None:
            self._in_flight.pop(claim.id, None)
            self._busy.discard(claim.target)
            self._wake.set()  # a slot is free

        task.add_done_callback(done)

    # --- claiming -------------------------------------------------------------------

    async def claim(self, limit: int) -> tuple[list[Claim], bool]:
        """Take up to ``limit`` due deliveries (one per destination); returns them and
        whether any row changed (claimed or given up), so that more may be due."""
        now = self.clock()
        async with self.db.transaction(read_committed=True) as session:
            query = (select(D).where(D.state.in_((PENDING, SENDING)), D.next_attempt_at <= now)
                     .order_by(D.next_attempt_at, D.id).limit(limit * CLAIM_LOOKAHEAD))
            if self._busy:
                query = query.where(D.target.not_in(sorted(self._busy)))
            if self.db.supports_row_locks:
                # Replicas claiming at once each take rows the others don't hold.
                query = query.with_for_update(skip_locked=True)
            rows = (await session.scalars(query)).all()
            if not rows:
                return [], False
            owners = {row.user_id for row in rows}
            settings = {s.user_id: s for s in (await session.scalars(
                select(NotificationSettingsRow)
                .where(NotificationSettingsRow.user_id.in_(owners)))).all()}
            claims: list[Claim] = []
            taken: set[str] = set()
            given_up = 0
            for row in rows:
                current = settings.get(row.user_id)
                # Sent where the settings say now: a corrected URL gets the pending messages.
                destination = _destination(current, row.channel)
                if destination is None:
                    _give_up(row, now, f"the {row.channel} was removed from the settings")
                    given_up += 1
                    continue
                if row.attempts >= self.max_attempts:
                    # A sender died during the last attempt; its claim lapsed.
                    _give_up(row, now, row.last_error or "the last attempt did not finish")
                    given_up += 1
                    continue
                if len(claims) == limit or destination in taken or destination in self._busy:
                    continue
                taken.add(destination)
                row.target = destination
                row.state = SENDING
                row.attempts += 1
                row.next_attempt_at = now + self.lease
                claims.append(Claim(
                    id=row.id, channel=row.channel, target=destination,
                    event_type=row.event_type, payload=row.payload, attempts=row.attempts,
                    secrets=tuple(store.signing_secrets(current, now))
                    if row.channel == "webhook" else ()))
        return claims, bool(claims or given_up)

    # --- sending --------------------------------------------------------------------

    async def _deliver(self, claim: Claim) -> None:
        error: DeliveryError | None = None
        try:
            async with asyncio.timeout(self.deadlines[claim.channel]):
                await self.send(claim)
        except DeliveryError as exc:
            error = exc
        except TimeoutError:
            error = DeliveryError(f"no answer within {self.deadlines[claim.channel]:g} s")
        except Exception as exc:
            log.exception("notification send failed unexpectedly", delivery_id=claim.id)
            error = DeliveryError(f"internal error ({type(exc).__name__})")
        try:
            await self.finish(claim, error)
        except Exception:
            # The claim lapses and the delivery is tried again: at least once.
            log.exception("could not record a notification's outcome", delivery_id=claim.id)

    async def send(self, claim: Claim) -> None:
        if claim.channel == "webhook":
            await self.webhook.post(claim.target, claim.payload.encode(),
                                    secrets=claim.secrets, event_type=claim.event_type,
                                    delivery_id=claim.id)
        else:
            subject, body = messages.email_text(json.loads(claim.payload))
            await self.mailer.send(claim.target, subject, body, delivery_id=claim.id)

    async def finish(self, claim: Claim, error: DeliveryError | None) -> None:
        now = self.clock()
        if error is None:
            values = {"state": DELIVERED, "finished_at": now, "next_attempt_at": None,
                      "last_error": None}
        elif error.permanent or claim.attempts >= self.max_attempts:
            values = {"state": FAILED, "finished_at": now, "next_attempt_at": None,
                      "last_error": _error_text(error)}
        else:
            delay = self.delays[claim.attempts - 1]
            values = {"state": PENDING, "next_attempt_at": now + timedelta(seconds=delay),
                      "last_error": _error_text(error)}
            self._retry_in(delay)
        async with self.db.transaction() as session:
            # Only if the claim is still ours (it did not lapse to another sender).
            result = await session.execute(
                update(D).where(D.id == claim.id, D.state == SENDING,
                                D.attempts == claim.attempts).values(**values))
        if result.rowcount != 1:
            log.warning("notification claim lapsed before its outcome was recorded",
                        delivery_id=claim.id)
        log.info("notification sent" if error is None else "notification not sent",
                 delivery_id=claim.id, channel=claim.channel, event_type=claim.event_type,
                 attempt=claim.attempts, state=values["state"],
                 error=None if error is None else str(error))

    def _retry_in(self, delay: float) -> None:
        due = asyncio.get_running_loop().time() + delay
        if self._next_retry is None or due < self._next_retry:
            self._next_retry = due
        self._wake.set()  # recompute how long to sleep


def _give_up(row: D, now: datetime, reason: str) -> None:
    row.state = FAILED
    row.finished_at = now
    row.next_attempt_at = None
    row.last_error = reason[:ERROR_MAX]


def _error_text(error: DeliveryError) -> str:
    return messages.scrub(str(error))[:ERROR_MAX] or type(error).__name__
