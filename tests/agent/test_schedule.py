"""When the next backup is due (clients/agent/schedule.py): pure rules, real dates."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from clients.agent.config import Schedule
from clients.agent.schedule import Due, kind_for, next_backup

# Sunday fulls at 01:00, daily incrementals at 01:00 (the defaults).
DAILY = Schedule()
HOURLY = Schedule(incremental_every=timedelta(hours=1))
WED = datetime(2025, 1, 15, 14, 0)  # a Wednesday afternoon
SUN = datetime(2025, 1, 12, 1, 0)  # the Sunday before, at the full's slot


def test_a_new_host_takes_a_full_at_once():
    due = next_backup(WED, DAILY, last_backup=None, last_full=None)
    assert due.kind == "full" and due.at <= WED


def test_up_to_date_waits_for_the_next_daily_slot():
    last = datetime(2025, 1, 15, 1, 0, 5)
    assert next_backup(WED, DAILY, last_backup=last, last_full=SUN) == Due(datetime(2025, 1, 16, 1, 0), "incremental")


def test_the_weekly_slot_is_a_full():
    saturday_night = datetime(2025, 1, 18, 23, 0)
    last = datetime(2025, 1, 18, 1, 0, 3)
    assert next_backup(saturday_night, DAILY, last_backup=last, last_full=SUN) == \
        Due(datetime(2025, 1, 19, 1, 0), "full")


def test_slots_missed_while_asleep_are_caught_up_once():
    # Last backup Monday 01:00; the machine slept until Wednesday afternoon: one backup now.
    monday = datetime(2025, 1, 13, 1, 0, 4)
    due = next_backup(WED, DAILY, last_backup=monday, last_full=SUN)
    assert due == Due(datetime(2025, 1, 15, 1, 0), "incremental") and due.at <= WED
    # Once taken, the next one is tomorrow's slot, not the other missed ones.
    assert next_backup(WED, DAILY, last_backup=WED, last_full=SUN).at == datetime(2025, 1, 16, 1, 0)


def test_a_missed_weekly_full_is_caught_up_as_a_full():
    monday = datetime(2025, 1, 13, 9, 0)  # off all Sunday
    last = datetime(2025, 1, 11, 1, 0, 2)
    full = datetime(2025, 1, 5, 1, 0, 9)
    assert next_backup(monday, DAILY, last_backup=last, last_full=full) == Due(datetime(2025, 1, 12, 1, 0), "full")


def test_hourly_incrementals():
    now = WED.replace(minute=20)
    last = datetime(2025, 1, 15, 13, 0, 7)
    assert next_backup(now, HOURLY, last_backup=last, last_full=SUN) == Due(datetime(2025, 1, 15, 14, 0), "incremental")
    done = datetime(2025, 1, 15, 14, 0, 30)
    assert next_backup(now, HOURLY, last_backup=done, last_full=SUN) == Due(datetime(2025, 1, 15, 15, 0), "incremental")


def test_a_failed_slot_is_retried_later_not_in_a_loop():
    monday = datetime(2025, 1, 13, 1, 0, 4)
    failed = datetime(2025, 1, 15, 1, 0, 30)
    due = next_backup(datetime(2025, 1, 15, 1, 5), DAILY, last_backup=monday, last_full=SUN, failed_at=failed)
    assert due == Due(failed + DAILY.retry_after, "incremental")
    # once the retry time has come, it is due
    later = datetime(2025, 1, 15, 1, 20)
    assert next_backup(later, DAILY, last_backup=monday, last_full=SUN, failed_at=failed).at <= later


def test_a_week_old_full_makes_the_next_backup_full():
    now = datetime(2025, 1, 15, 1, 0)
    assert kind_for(now, now - timedelta(days=7) + timedelta(seconds=30)) == "full"  # a cron job's jitter
    assert kind_for(now, now - timedelta(days=5)) == "incremental"
    assert kind_for(now, None) == "full"
    assert kind_for(now, now - timedelta(hours=1), force_full=True) == "full"


def test_a_full_day_and_time_from_the_config():
    friday_at_22 = Schedule(full_weekday=4, at=time(22, 0))
    thursday = datetime(2025, 1, 16, 23, 0)
    due = next_backup(thursday, friday_at_22, last_backup=datetime(2025, 1, 16, 22, 0, 1),
                      last_full=datetime(2025, 1, 10, 22, 0, 1))
    assert due == Due(datetime(2025, 1, 17, 22, 0), "full")
