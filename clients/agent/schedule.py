"""When the next backup is due, and whether it is full or incremental. Pure: the caller
says what time it is and what the repository holds.

The rhythm (the issue's): one full backup a week, on `full_day` at `time` (local time),
and incrementals at `time` and every `incremental` interval after it (daily by default,
hourly possible). Slots are counted from a fixed anchor at `time`, so an interval that
divides a day gives the same times every day (hourly at xx:00 with `time = "01:00"`).

- A slot that passed without a backup is caught up at once, but only once: a laptop-like
  server that slept through three slots takes one backup when it wakes, not three.
- A full is due when the weekly slot passed since the last full, and in any case when
  the last full is a week old (a server that is off every Sunday still gets its full).
- After a failure, the same slot is tried again `retry_after` later (or at the next
  slot, if that comes first), never in a tight loop.

Times are naive local datetimes: a backup "at 01:00" stays at 01:00 across daylight
saving changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.format import FULL, INCREMENTAL

from .config import Schedule

FULL_EVERY = timedelta(days=7)
# A backup started by cron at 01:00 daily must see last week's 01:00:02 full as a week old.
FULL_SLACK = timedelta(hours=1)
# Slots count from this day at `time`; any fixed day works, it only has to never change.
_ANCHOR_DAY = datetime(2024, 1, 1)


@dataclass(frozen=True)
class Due:
    at: datetime  # the slot this backup belongs to (in the past when it is overdue)
    kind: str  # FULL | INCREMENTAL


def kind_for(now: datetime, last_full: datetime | None, force_full: bool = False) -> str:
    """For a backup started now by hand or by cron: full when asked, or a week after the last."""
    if force_full or last_full is None or now - last_full >= FULL_EVERY - FULL_SLACK:
        return FULL
    return INCREMENTAL


def _anchor(schedule: Schedule) -> datetime:
    return datetime.combine(_ANCHOR_DAY.date(), schedule.at)


def latest_slot(now: datetime, schedule: Schedule) -> datetime:
    """The last incremental slot at or before now."""
    anchor = _anchor(schedule)
    steps = (now - anchor) // schedule.incremental_every
    return anchor + steps * schedule.incremental_every


def next_slot(now: datetime, schedule: Schedule) -> datetime:
    """The first incremental slot after now."""
    return latest_slot(now, schedule) + schedule.incremental_every


def latest_full_slot(now: datetime, schedule: Schedule) -> datetime:
    back = (now.weekday() - schedule.full_weekday) % 7
    slot = datetime.combine((now - timedelta(days=back)).date(), schedule.at)
    return slot if slot <= now else slot - timedelta(days=7)


def next_full_slot(now: datetime, schedule: Schedule) -> datetime:
    return latest_full_slot(now, schedule) + timedelta(days=7)


def next_backup(now: datetime, schedule: Schedule, *, last_backup: datetime | None,
                last_full: datetime | None, failed_at: datetime | None = None) -> Due:
    """The next backup to take: `at <= now` means take it now."""
    due = _due_by_slots(now, schedule, last_backup, last_full)
    if failed_at is not None and failed_at >= due.at:
        # This slot was tried and failed: try again later, never in a tight loop.
        retry = min(failed_at + schedule.retry_after, next_slot(failed_at, schedule))
        if retry > now:
            nxt = _due_by_slots(retry, schedule, last_backup, last_full)
            return Due(retry, FULL if FULL in (due.kind, nxt.kind) else INCREMENTAL)
        return Due(retry, due.kind)
    return due


def _due_by_slots(now: datetime, schedule: Schedule, last_backup: datetime | None,
                  last_full: datetime | None) -> Due:
    full_slot = latest_full_slot(now, schedule)
    if last_full is None:  # never backed up: protect it now (dated by the last slot, for retries)
        return Due(latest_slot(now, schedule), FULL)
    if last_full < full_slot:
        return Due(full_slot, FULL)
    slot = latest_slot(now, schedule)
    if last_backup is None or last_backup < slot:
        return Due(slot, kind_for(now, last_full))
    upcoming_full = next_full_slot(now, schedule)
    upcoming = next_slot(now, schedule)
    if upcoming_full <= upcoming:
        return Due(upcoming_full, FULL)
    return Due(upcoming, kind_for(upcoming, last_full))
