"""The scheduler's rules, pure: which jobs exist, their default schedules, and which tick a
job owes at a given time. No I/O and no clock: the caller says what "now" is.

A job is named after the tick event it emits (``TokensExpiryDue`` emits ``TokensExpiryDue``).
Times are UTC; cron expressions have the five classic fields (minute, hour, day of month,
month, day of week) or are one of the ``@hourly``-style shorthands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from shared.events import CATALOG, Tick

# The seed's four cron jobs keep their times; the backup jobs are new. Retention runs before
# the seed's nightly jobs so the 04:0x window stays theirs; the weekly drill runs on Sunday
# morning, when the weekly full backups of the weekend are in.
DEFAULT_SCHEDULES: dict[str, str] = {
    "TokensExpiryDue": "1 4 * * *",
    "InstancesCleanupDue": "2 4 * * *",
    "RecoveriesTimeoutDue": "3 4 * * *",
    "RecoveriesReconcileDue": "* * * * *",
    "BackupsOverdueCheckDue": "0 * * * *",
    "BackupsRetentionDue": "30 3 * * *",
    "BackupsVerifyDue": "0 5 * * 0",
}

# Every tick type in the catalog is a job the scheduler can run.
TICKS: dict[str, type[Tick]] = {
    name: cls for name, cls in CATALOG.items() if issubclass(cls, Tick)
}

CRON_FIELDS = 5
# What the jobs table keeps of an expression (its `cron` column).
CRON_MAX_LENGTH = 100
# croniter looks back and forth from a point in time with a resolution of a second; asking
# for the latest occurrence "before now plus a microsecond" makes "at or before now" exact.
_JUST_AFTER = timedelta(microseconds=1)


class InvalidSchedule(ValueError):
    """The configured schedules cannot run; the message names the job and the reason."""


@dataclass(frozen=True)
class Job:
    name: str
    cron: str

    @property
    def event(self) -> type[Tick]:
        return TICKS[self.name]

    def latest_at_or_before(self, moment: datetime) -> datetime:
        return _utc(croniter(self.cron, moment + _JUST_AFTER).get_prev(datetime))

    def next_after(self, moment: datetime) -> datetime:
        return _utc(croniter(self.cron, moment).get_next(datetime))

    def due(self, *, settled_until: datetime, now: datetime) -> datetime | None:
        """The tick owed at ``now``: the latest occurrence after ``settled_until`` (the last
        tick emitted, or when the job started) and not after ``now``; ``None`` if nothing
        is owed. Occurrences missed in between are folded into that one: the handlers do
        their whole sweep each time, so one late tick does what many would have done."""
        latest = self.latest_at_or_before(now)
        return latest if latest > settled_until else None

    def next_due(self, *, settled_until: datetime, now: datetime) -> datetime:
        """When this job will next emit: a tick already owed, else the next occurrence."""
        return self.due(settled_until=settled_until, now=now) or self.next_after(now)


def _utc(moment: datetime) -> datetime:
    # croniter may hand back fold=1 (a DST artefact meaningless in UTC): a plain UTC time.
    return moment.astimezone(UTC).replace(fold=0)


def settled_until(since: datetime, last_scheduled_for: datetime | None) -> datetime:
    """Every occurrence up to this time is accounted for: emitted, or before the job (or its
    current schedule) started, which is never back-filled."""
    return since if last_scheduled_for is None else max(since, last_scheduled_for)


def check_cron(name: str, cron: str) -> str:
    cron = " ".join(cron.split())
    if len(cron) > CRON_MAX_LENGTH:
        raise InvalidSchedule(f"scheduler job {name}: {cron[:40]!r}... is longer than "
                              f"{CRON_MAX_LENGTH} characters")
    if not cron.startswith("@") and len(cron.split()) != CRON_FIELDS:
        raise InvalidSchedule(
            f"scheduler job {name}: {cron!r} is not a cron expression: it needs five fields "
            "(minute hour day-of-month month day-of-week), or a shorthand such as @hourly")
    if not croniter.is_valid(cron):
        raise InvalidSchedule(f"scheduler job {name}: {cron!r} is not a valid cron expression")
    try:
        # A valid expression can still never happen (`0 0 30 2 *`, the 30th of February).
        croniter(cron, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except Exception:
        raise InvalidSchedule(
            f"scheduler job {name}: {cron!r} never happens on any date") from None
    return cron


def jobs_from(overrides: Mapping[str, str | None]) -> tuple[list[Job], list[str]]:
    """The jobs that run (in name order) and the names of those switched off, from the
    defaults with ``overrides`` (job name, in any letter case, -> cron or None) applied."""
    by_folded = {name.casefold(): name for name in TICKS}
    # A tick type added to the catalog without a default stays off until configured.
    schedules: dict[str, str | None] = {name: DEFAULT_SCHEDULES.get(name) for name in TICKS}
    for given, cron in overrides.items():
        name = by_folded.get(given.casefold())
        if name is None:
            raise InvalidSchedule(
                f"scheduler job {given!r} is unknown; the jobs are: {', '.join(sorted(TICKS))}")
        if cron is not None and not cron.strip():
            cron = None  # an empty expression switches the job off, like null
        schedules[name] = cron
    running = [Job(name, check_cron(name, cron))
               for name, cron in sorted(schedules.items()) if cron is not None]
    off = sorted(name for name, cron in schedules.items() if cron is None)
    return running, off
