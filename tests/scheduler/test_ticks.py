"""Ticks on a real database: each job at its time, once, with two replicas ticking at the
same instants; once after downtime; never back-filled. SQLite (embedded) and MariaDB."""

import asyncio
from datetime import timedelta

import aiohttp
import pytest

from shared.http.identity import Identity, sign
from shared.settings import SchedulerSettings
from tests.scheduler.helpers import FakeClock, at, emitted, replica
from tests.support import eventually

# A Sunday: the weekly verification is due on it at 05:00.
START = at("2025-01-05T03:00:30")

# (instant both replicas tick at, the ticks owed then) — worked out by hand from the
# defaults, not from croniter.
TIMELINE = [
    (at("2025-01-05T03:00:59"), set()),
    (at("2025-01-05T03:01:00"), {("RecoveriesReconcileDue", "03:01")}),
    (at("2025-01-05T03:01:00.5"), set()),
    (at("2025-01-05T03:02:10"), {("RecoveriesReconcileDue", "03:02")}),
    (at("2025-01-05T03:30:00"), {("RecoveriesReconcileDue", "03:30"),
                                 ("BackupsRetentionDue", "03:30")}),
    (at("2025-01-05T04:00:00"), {("RecoveriesReconcileDue", "04:00"),
                                 ("BackupsOverdueCheckDue", "04:00")}),
    (at("2025-01-05T04:01:00"), {("RecoveriesReconcileDue", "04:01"),
                                 ("TokensExpiryDue", "04:01")}),
    (at("2025-01-05T04:02:00"), {("RecoveriesReconcileDue", "04:02"),
                                 ("InstancesCleanupDue", "04:02")}),
    (at("2025-01-05T04:03:00"), {("RecoveriesReconcileDue", "04:03"),
                                 ("RecoveriesTimeoutDue", "04:03")}),
    (at("2025-01-05T04:03:59.9"), set()),
    (at("2025-01-05T05:00:00"), {("RecoveriesReconcileDue", "05:00"),
                                 ("BackupsOverdueCheckDue", "05:00"),
                                 ("BackupsVerifyDue", "05:00")}),
    (at("2025-01-05T05:00:01"), set()),
]


def _hhmm(ticks):
    return {(kind, when.strftime("%H:%M")) for kind, when, *_ in ticks}


async def test_each_job_fires_at_its_time_once_with_two_replicas(settings):
    clock = FakeClock(START)
    first, second = replica(settings, clock), replica(settings, clock)
    await first.migrate()
    try:
        # Both see the jobs for the first time: nothing is owed from before they started.
        started = await asyncio.gather(first.context.tick(START), second.context.tick(START))
        assert started == [[], []]
        for instant, owed in TIMELINE:
            clock.set(instant)
            mine, theirs = await asyncio.gather(first.context.tick(instant),
                                                second.context.tick(instant))
            got = [(t.type_name(), t.scheduled_for) for t in mine + theirs]
            assert _hhmm(got) == owed, instant
            assert len(got) == len(owed), f"a tick emitted twice at {instant}: {got}"
        ticks = await emitted(settings)
        assert _hhmm(ticks) == set().union(*(owed for _, owed in TIMELINE))
        assert len(ticks) == len({(kind, when) for kind, when, _ in ticks})
        assert all(when.date() == START.date() for _, when, _ in ticks)
    finally:
        await first.db.dispose()
        await second.db.dispose()


async def test_many_concurrent_ticks_at_one_instant_emit_once(settings):
    clock = FakeClock(START)
    replicas = [replica(settings, clock) for _ in range(2)]
    await replicas[0].migrate()
    try:
        await asyncio.gather(*(r.context.tick(START) for r in replicas))
        instant = at("2025-01-05T04:01:00")
        # Each replica ticks several times at once, as a loop and a caller might.
        results = await asyncio.gather(*(r.context.tick(instant) for r in replicas
                                         for _ in range(3)))
        assert sorted(t.type_name() for result in results for t in result) == [
            "BackupsOverdueCheckDue", "BackupsRetentionDue", "RecoveriesReconcileDue",
            "TokensExpiryDue"]
        assert len(await emitted(settings)) == 4
    finally:
        for r in replicas:
            await r.db.dispose()


async def test_a_restart_after_missed_ticks_emits_each_once(settings):
    clock = FakeClock(START)
    before = replica(settings, clock)
    await before.migrate()
    await before.context.tick(START)
    await before.context.tick(at("2025-01-05T04:01:00"))
    await before.db.dispose()  # everything is down from here...
    assert _hhmm(await emitted(settings)) == {("RecoveriesReconcileDue", "04:01"),
                                              ("TokensExpiryDue", "04:01"),
                                              ("BackupsOverdueCheckDue", "04:00"),
                                              ("BackupsRetentionDue", "03:30")}
    seen = len(await emitted(settings))

    # ...until Wednesday afternoon: three 04:01s, many hours and thousands of minutes missed.
    back = at("2025-01-08T15:42:20")
    clock.set(back)
    after = [replica(settings, clock), replica(settings, clock)]
    try:
        for runtime in after:  # the real start: the loop's first tick is the catch-up
            await runtime.bus.connect()
            await runtime.start(host="127.0.0.1", port=0)
        expected = {
            ("TokensExpiryDue", at("2025-01-08T04:01:00")),
            ("InstancesCleanupDue", at("2025-01-08T04:02:00")),
            ("RecoveriesTimeoutDue", at("2025-01-08T04:03:00")),
            ("RecoveriesReconcileDue", at("2025-01-08T15:42:00")),
            ("BackupsOverdueCheckDue", at("2025-01-08T15:00:00")),
            ("BackupsRetentionDue", at("2025-01-08T03:30:00")),
            # Last due on Sunday 05:00, after the job started (03:00:30) and while all was
            # down: owed, and not a back-fill.
            ("BackupsVerifyDue", at("2025-01-05T05:00:00")),
        }

        async def caught_up():
            return len(await emitted(settings)) - seen >= len(expected)

        await eventually(caught_up)
        await asyncio.sleep(0.3)  # room for a wrong second emission to show
        new = [(kind, when) for kind, when, _ in (await emitted(settings))[seen:]]
        assert sorted(new) == sorted(expected)
    finally:
        for runtime in after:
            await runtime.stop()
            await runtime.bus.close()


async def test_a_job_first_seen_late_is_not_back_filled(settings):
    clock = FakeClock(START)
    # The first deployment runs without the weekly verification...
    without = settings.model_copy(
        update={"scheduler": SchedulerSettings(jobs={"BackupsVerifyDue": None})})
    old = replica(without, clock)
    await old.migrate()
    await old.context.tick(START)
    await old.context.tick(at("2025-01-05T05:00:00"))
    await old.db.dispose()
    assert "BackupsVerifyDue" not in {kind for kind, _, _ in await emitted(settings)}

    # ...the next one, a week and a half later, has it: no tick for the Sundays before.
    new = replica(settings, clock)
    try:
        assert "BackupsVerifyDue" not in {
            t.type_name() for t in await new.context.tick(at("2025-01-15T12:00:00"))}
        assert "BackupsVerifyDue" not in {
            t.type_name() for t in await new.context.tick(at("2025-01-19T04:59:59"))}
        verify = [t for t in await new.context.tick(at("2025-01-19T05:00:00"))
                  if t.type_name() == "BackupsVerifyDue"]
        assert [t.scheduled_for for t in verify] == [at("2025-01-19T05:00:00")]
    finally:
        await new.db.dispose()


async def test_a_changed_schedule_starts_from_now(settings):
    clock = FakeClock(START)
    old = replica(settings, clock)
    await old.migrate()
    await old.context.tick(START)
    await old.context.tick(at("2025-01-05T04:01:00"))
    await old.db.dispose()

    # Moved from 04:01 to 06:00 and restarted at 08:00: today's 06:00 belongs to a schedule
    # that did not exist then, so nothing is emitted for it.
    moved = settings.model_copy(
        update={"scheduler": SchedulerSettings(jobs={"TokensExpiryDue": "0 6 * * *"})})
    new = replica(moved, clock)
    try:
        kinds = {t.type_name() for t in await new.context.tick(at("2025-01-05T08:00:00"))}
        assert "TokensExpiryDue" not in kinds
        ticks = [t for t in await new.context.tick(at("2025-01-06T06:00:00"))
                 if t.type_name() == "TokensExpiryDue"]
        assert [t.scheduled_for for t in ticks] == [at("2025-01-06T06:00:00")]
    finally:
        await new.db.dispose()


async def test_the_loop_wakes_at_the_next_due_time():
    from services.scheduler.domain import jobs_from
    from services.scheduler.ticker import Ticker

    jobs, _ = jobs_from({"RecoveriesReconcileDue": None, "BackupsOverdueCheckDue": None})
    ticker = Ticker(db=None, outbox=None, jobs=jobs, max_sleep_seconds=3600)
    # Daily jobs only: from 03:00:30 the next is retention at 03:30.
    assert ticker.seconds_until_due(at("2025-01-05T03:00:30")) == 29 * 60 + 30
    ticker.max_sleep_seconds = 30
    assert ticker.seconds_until_due(at("2025-01-05T03:00:30")) == 30


async def test_internal_schedules_lists_jobs_with_last_and_next(settings):
    clock = FakeClock(START)
    runtime = replica(settings, clock)
    await runtime.migrate()
    await runtime.context.tick(START)  # before the loop's own first tick, which then owes none
    await runtime.bus.connect()
    port = await runtime.start(host="127.0.0.1", port=0)
    try:
        clock.set(at("2025-01-05T04:01:30"))
        await runtime.context.tick()
        path = "/internal/schedules"
        url = f"http://127.0.0.1:{port}{path}"
        async with aiohttp.ClientSession() as http:
            headers = sign(Identity(kind="service", service="ops"), "GET", path,
                           runtime.key)
            async with http.get(url, headers=headers) as response:
                assert response.status == 200
                body = await response.json()
            user = sign(Identity(kind="user", user_id="u1"), "GET", path, runtime.key)
            async with http.get(url, headers=user) as response:
                assert response.status == 403
            async with http.get(url) as response:
                assert response.status == 401
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert response.status == 200
        jobs = {item["job"]: item for item in body["items"]}
        assert len(jobs) == 7
        tokens = jobs["TokensExpiryDue"]
        assert tokens["cron"] == "1 4 * * *" and tokens["enabled"] is True
        assert tokens["last_scheduled_for"].startswith("2025-01-05T04:01:00")
        assert tokens["next_scheduled_for"].startswith("2025-01-06T04:01:00")
        assert jobs["BackupsVerifyDue"]["last_scheduled_for"] is None
        assert jobs["BackupsVerifyDue"]["next_scheduled_for"].startswith("2025-01-05T05:00:00")
    finally:
        await runtime.stop()
        await runtime.bus.close()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_ticks_are_in_the_outbox_before_any_broker_sees_them(settings):
    """A tick is a committed outbox row, whatever the bus is doing: nothing relayed yet."""
    clock = FakeClock(START)
    runtime = replica(settings, clock)  # its bus never connected, its relay never started
    await runtime.migrate()
    try:
        await runtime.context.tick(START)
        await runtime.context.tick(START + timedelta(minutes=1))
        assert await runtime.outbox.pending() == 1
    finally:
        await runtime.db.dispose()
