"""What happens to a recovered machine: launched from an imported image, started, stopped,
terminated (with its image released), and watched while it boots. Shared by the routes,
the event handlers and the reconcile sweep; each function works in the caller's
transaction and emits through ``emit`` (the outbox, in that transaction)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.instances import domain, environments
from services.instances.compute import ComputeProvider, LaunchSpec, Observed, ProviderError
from services.instances.tables import InstanceRow
from shared.events import (
    Event,
    ImportCompleted,
    InstanceLaunchFailed,
    InstanceReady,
    InstanceStopped,
    InstanceTerminated,
    utcnow,
)
from shared.logs import get_logger

log = get_logger(__name__)

Emit = Callable[[Event], Awaitable[object]]


async def launch(session: AsyncSession, service, event: ImportCompleted, emit: Emit) -> None:
    """An imported image becomes a machine; ``InstanceReady`` or ``InstanceLaunchFailed``
    answers. A recovery already answered is answered again the same way."""
    existing = await session.scalar(
        select(InstanceRow).where(InstanceRow.recovery_id == event.recovery_id))
    if existing is not None:
        log.info("recovery already has an instance", instance_id=existing.id,
                 state=existing.state)
        if existing.state == domain.FAILED:
            await emit(InstanceLaunchFailed(recovery_id=existing.recovery_id,
                                            user_id=existing.user_id,
                                            reason=existing.failure_reason or "launch failed"))
        elif existing.ready_at is not None:
            await emit(_ready(existing))
        return
    now = utcnow()
    provider: ComputeProvider | None = service.providers.get(event.provider)
    row = InstanceRow(
        id=domain.new_id(), user_id=event.user_id, recovery_id=event.recovery_id,
        provider=event.provider, image_ref=event.image_ref, state=domain.PENDING,
        instance_type=(event.instance_type or service.settings.instance_type)
        if event.provider == "aws" else None,
        created_at=now, updated_at=now)
    if provider is None:
        await _failed(session, row, f"unknown compute provider {event.provider!r}", emit)
        return
    try:
        env = await environments.ensure(session, provider, event.user_id, repair=True)
        row.environment_id = env.id
        spec = LaunchSpec(instance_id=row.id, recovery_id=row.recovery_id, user_id=row.user_id,
                          image_ref=row.image_ref, instance_type=row.instance_type)
        row.provider_instance_id, observed = await provider.launch(
            spec, environments.as_environment(env))
    except ProviderError as exc:
        await _failed(session, row, str(exc), emit)
        # The recovery failed: nothing it made may be left behind to cost money.
        await _release_image(provider, row)
        await environments.retire_if_unused(session, provider, row.user_id)
        return
    session.add(row)
    await _apply(row, observed, emit)
    log.info("instance launched", instance_id=row.id, provider=row.provider, state=row.state)


async def _failed(session: AsyncSession, row: InstanceRow, reason: str, emit: Emit) -> None:
    row.state, row.failure_reason = domain.FAILED, domain.short_reason(reason)
    row.updated_at = utcnow()
    session.add(row)
    await session.flush()
    log.warning("instance launch failed", instance_id=row.id, reason=row.failure_reason)
    await emit(InstanceLaunchFailed(recovery_id=row.recovery_id, user_id=row.user_id,
                                    reason=row.failure_reason))


def _ready(row: InstanceRow) -> InstanceReady:
    return InstanceReady(instance_id=row.id, user_id=row.user_id, recovery_id=row.recovery_id,
                         address=row.address)


async def _apply(row: InstanceRow, observed: Observed, emit: Emit) -> None:
    """Record what the provider says a machine became."""
    if observed.state == row.state:
        return  # still on its way: updated_at keeps the time it began
    now = utcnow()
    row.updated_at = now
    if observed.state == domain.RUNNING:
        row.state = domain.RUNNING
        row.address = observed.address or row.address
        if row.ready_at is None:
            row.ready_at = now
            await emit(_ready(row))
    elif observed.state == domain.STOPPED:
        row.state, row.stopped_at = domain.STOPPED, now
        await emit(InstanceStopped(instance_id=row.id, user_id=row.user_id))
    else:
        row.state = observed.state


async def _release_image(provider: ComputeProvider, row: InstanceRow) -> None:
    try:
        await provider.release_image(row.image_ref)
        row.image_released_at = utcnow()
    except ProviderError as exc:
        log.warning("image not released", instance_id=row.id, error=str(exc))


# --- what users ask for ------------------------------------------------------------------


async def start(session: AsyncSession, service, row: InstanceRow, emit: Emit) -> None:
    domain.check_transition(row.state, "start")
    observed = await service.providers[row.provider].start(row.provider_instance_id)
    row.state = domain.after("start", observed.state)
    row.stopped_at, row.updated_at = None, utcnow()


async def stop(session: AsyncSession, service, row: InstanceRow, emit: Emit) -> None:
    domain.check_transition(row.state, "stop")
    await service.providers[row.provider].stop(row.provider_instance_id)
    now = utcnow()
    row.state, row.stopped_at, row.updated_at = domain.STOPPED, now, now
    await emit(InstanceStopped(instance_id=row.id, user_id=row.user_id))


async def terminate(session: AsyncSession, service, row: InstanceRow, emit: Emit) -> None:
    """Terminate the machine and release its image: a terminated machine can't come back,
    and its AMI would only cost money. Recovery, told by ``InstanceTerminated``, deletes
    the image files it kept."""
    domain.check_transition(row.state, "terminate")
    provider = service.providers[row.provider]
    if row.provider_instance_id:
        await provider.terminate(row.provider_instance_id)
    await _release_image(provider, row)
    now = utcnow()
    row.state, row.terminated_at, row.updated_at = domain.TERMINATED, now, now
    await session.flush()
    await emit(InstanceTerminated(instance_id=row.id, user_id=row.user_id))
    await environments.retire_if_unused(session, provider, row.user_id)


ACTIONS = {"start": start, "stop": stop, "terminate": terminate}


# --- the seed's FreeInstances job --------------------------------------------------------


async def clean_up(session: AsyncSession, service, scheduled_for, emit: Emit) -> int:
    """Terminate machines stopped for the retention period before ``scheduled_for`` (the
    tick's time, so a late tick draws the same line); returns how many."""
    cutoff = domain.cleanup_cutoff(scheduled_for, service.settings.stopped_retention_days)
    due = (await session.scalars(
        select(InstanceRow.id).where(InstanceRow.state == domain.STOPPED,
                                     InstanceRow.stopped_at <= cutoff)
        .order_by(InstanceRow.stopped_at))).all()
    done = 0
    for instance_id in due:
        # Each row locked by its key as its turn comes, and still due: a machine the user
        # starts meanwhile is not terminated under them (a start holding the row is
        # skipped; the next tick looks again). No range is locked, so stopping other
        # machines never waits for this sweep's calls to the provider.
        row = await session.scalar(
            select(InstanceRow).where(InstanceRow.id == instance_id,
                                      InstanceRow.state == domain.STOPPED,
                                      InstanceRow.stopped_at <= cutoff)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True))
        if row is None:
            continue
        try:
            await terminate(session, service, row, emit)
            done += 1
        except ProviderError as exc:  # the next tick tries again
            log.warning("stopped instance not cleaned up", instance_id=row.id, error=str(exc))
    return done


# --- the reconcile sweep: machines on their way up, and those up or stopped ----------------


# Machines looked at per round of the sweep, oldest first.
WATCH_BATCH = 100
# Machines up or stopped change only when someone acts outside ReClo (a shutdown from
# inside the machine, a termination in the cloud console): looking every five minutes is
# soon enough for that, and costs the provider's API a call per machine and round.
LIVE_WATCH_SECONDS = 300.0


async def watch_pending(service) -> None:
    """Look once at every machine the provider is still starting: record it running (and
    send ``InstanceReady`` the first time), or failed when it died or took too long."""
    async with service.db.sessions() as session:
        pending = (await session.execute(
            select(InstanceRow.id, InstanceRow.provider, InstanceRow.provider_instance_id,
                   InstanceRow.updated_at)
            .where(InstanceRow.state == domain.PENDING,
                   InstanceRow.provider_instance_id.is_not(None))
            .order_by(InstanceRow.updated_at).limit(WATCH_BATCH))).all()
    await _observe_each(service, pending, domain.PENDING)


async def watch_live(service, after: str = "") -> str:
    """Look once at up to WATCH_BATCH machines up or stopped, in id order from ``after``:
    record a machine stopped or started behind ReClo's back, and terminate what was
    terminated there (its image released, its VPN retired), so that nothing is billed
    for, or shown, as it no longer is. Returns where the next round goes on ("" when
    this one reached the end)."""
    reporting = [name for name, provider in service.providers.items() if provider.reports_state]
    async with service.db.sessions() as session:
        live = (await session.execute(
            select(InstanceRow.id, InstanceRow.provider, InstanceRow.provider_instance_id,
                   InstanceRow.updated_at)
            .where(InstanceRow.state.in_((domain.RUNNING, domain.STOPPED)),
                   InstanceRow.provider.in_(reporting),
                   InstanceRow.provider_instance_id.is_not(None), InstanceRow.id > after)
            .order_by(InstanceRow.id).limit(WATCH_BATCH))).all()
    await _observe_each(service, live, domain.RUNNING, domain.STOPPED)
    return live[-1][0] if len(live) == WATCH_BATCH else ""


async def _observe_each(service, machines, *states: str) -> None:
    for instance_id, provider, provider_instance_id, seen_at in machines:
        try:
            # Asked outside any transaction: no lock is held while the provider answers.
            observed = await service.providers[provider].observe(provider_instance_id)
            await _record(service, instance_id, observed, states, seen_at)
        except Exception as exc:  # one machine's trouble doesn't stop the others
            log.warning("instance not checked", instance_id=instance_id,
                        error=str(exc) or type(exc).__name__)


async def _record(service, instance_id: str, observed: Observed, states: tuple[str, ...],
                  seen_at) -> None:
    """Record what the provider said, unless the row changed since it was read (``seen_at``,
    its updated_at then): a user's stop or start committed meanwhile is newer than the
    answer, which the next round asks again."""
    async with service.db.transaction() as session:
        query = select(InstanceRow).where(InstanceRow.id == instance_id,
                                          InstanceRow.state.in_(states),
                                          InstanceRow.updated_at == seen_at)
        if service.db.supports_row_locks:  # another replica is recording it already
            query = query.with_for_update(skip_locked=True)
        row = await session.scalar(query)
        if row is None:  # moved on meanwhile (stopped, terminated, or by another replica)
            return
        provider = service.providers[row.provider]

        async def emit(event: Event) -> None:
            await service.outbox.add(session, event)

        timeout = timedelta(seconds=service.settings.launch_timeout_seconds)
        # Only a first launch times out; a restart that takes long is the provider's to finish.
        first_launch = row.state == domain.PENDING and row.ready_at is None
        too_slow = (first_launch and observed.state == domain.PENDING
                    and utcnow() - row.updated_at > timeout)
        if first_launch and (observed.state == domain.TERMINATED or too_slow):
            reason = (f"it did not start within {service.settings.launch_timeout_seconds:.0f} s"
                      if too_slow else observed.reason or "it stopped existing")
            await provider.terminate(row.provider_instance_id)
            await _failed(session, row, f"the machine did not start: {reason}", emit)
            await _release_image(provider, row)
            await environments.retire_if_unused(session, provider, row.user_id)
        elif observed.state == domain.TERMINATED:  # terminated behind ReClo's back
            await terminate(session, service, row, emit)
        else:
            await _apply(row, observed, emit)
