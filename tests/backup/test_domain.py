"""Backup's pure rules: retention (restic's semantics, in UTC), host state, keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.backup import domain
from services.backup.domain import Candidate, select_kept
from shared.api.backup import RetentionPolicy, SourceSpec

START = datetime(2026, 3, 31, 22, 0, tzinfo=UTC)  # a Tuesday, the last day of a month


def daily(days: int, per_day: int = 1, group: str = "g") -> list[Candidate]:
    """Backups going back in time: per_day of them each day, at 22:00, 16:00, ..."""
    return [Candidate(f"d{d}-{i}", START - timedelta(days=d, hours=6 * i), group)
            for d in range(days) for i in range(per_day)]


def kept(backups, **policy) -> set[str]:
    keep, forget = select_kept(backups, RetentionPolicy(**policy))
    assert set(keep) | set(forget) == {b.id for b in backups} and not set(keep) & set(forget)
    return set(keep)


def test_keep_last_keeps_the_newest_n():
    assert kept(daily(10), keep_last=3) == {"d0-0", "d1-0", "d2-0"}


def test_keep_daily_keeps_the_newest_of_each_of_the_last_n_days_with_backups():
    backups = daily(10, per_day=3)
    assert kept(backups, keep_daily=4) == {"d0-0", "d1-0", "d2-0", "d3-0"}
    # Days without a backup don't count: the last 2 days *that have one*.
    sparse = [b for b in backups if not b.id.startswith("d1-")]
    assert kept(sparse, keep_daily=2) == {"d0-0", "d2-0"}


def test_days_are_utc_days():
    late = Candidate("late", datetime(2026, 1, 1, 23, 30, tzinfo=UTC), "g")
    # 00:30 the next day in UTC, though 23:30 in a zone an hour behind.
    early = Candidate("early", datetime(2026, 1, 2, 0, 30, tzinfo=UTC), "g")
    assert kept([late, early], keep_daily=2) == {"late", "early"}


def test_weekly_and_monthly_buckets():
    backups = daily(70)  # ten weeks of dailies
    weekly = kept(backups, keep_weekly=3)
    # The newest backup of each of the last three ISO weeks: Tue 31 Mar, Sun 29 Mar, Sun 22 Mar.
    assert weekly == {"d0-0", "d2-0", "d9-0"}
    monthly = kept(backups, keep_monthly=3)
    assert monthly == {"d0-0", "d31-0", "d59-0"}  # 31 Mar, 28 Feb, 31 Jan


def test_rules_combine():
    backups = daily(40)  # 31 Mar back to 20 Feb
    days = {f"d{d}-0" for d in range(7)}  # 31 Mar .. 25 Mar
    weeks = {"d0-0", "d2-0", "d9-0", "d16-0"}  # the Sundays 29, 22 and 15 Mar close weeks
    months = {"d0-0", "d31-0"}  # 31 Mar, 28 Feb (nothing older in range)
    assert kept(backups, keep_daily=7, keep_weekly=4, keep_monthly=12) == days | weeks | months


def test_groups_of_sources_are_kept_apart():
    images = daily(5, group="image")
    folders = [Candidate(f"f{c.id}", c.time - timedelta(minutes=1), "folder") for c in daily(5)]
    assert kept(images + folders, keep_last=2) == {"d0-0", "d1-0", "fd0-0", "fd1-0"}


def test_an_empty_policy_is_refused():
    with pytest.raises(domain.EmptyPolicy):
        select_kept(daily(3), RetentionPolicy())


def test_source_groups_ignore_order():
    a, b = SourceSpec(path="/srv", type="folder"), SourceSpec(path="/dev/sda", type="image")
    assert domain.source_group([a, b]) == domain.source_group([b, a]) != domain.source_group([a])


def test_host_state():
    t = START
    assert domain.host_state(None, None, None) == "never"
    assert domain.host_state(t, None, None) == "ok"
    assert domain.host_state(t, t + timedelta(hours=1), None) == "failing"
    assert domain.host_state(t + timedelta(hours=2), t + timedelta(hours=1), None) == "ok"
    assert domain.host_state(t, None, t) == "overdue"
    assert domain.is_overdue(None, t, t + timedelta(hours=27), 26)
    assert not domain.is_overdue(t + timedelta(hours=2), t, t + timedelta(hours=27), 26)


@pytest.mark.parametrize("key, pack", [
    ("data/ab/ab" + "0" * 62, "ab" + "0" * 62),
    ("data/cd/ab" + "0" * 62, None),  # fan-out that doesn't match its id
    ("data/ab/ab" + "0" * 61, None),
    ("index/" + "0" * 64, None),
])
def test_pack_keys(key, pack):
    assert domain.pack_id_of(key) == pack


@pytest.mark.parametrize("prefix, ok", [
    ("", True), ("data/", True), ("data/ab/ab12", True), ("snapshots/", True),
    ("..", False), ("../", False), ("a.b", False), ("/abs", True), ("DATA/", False), ("a b", False),
])
def test_list_prefixes(prefix, ok):
    # "/abs" is harmless: it is appended to the host's prefix and matches nothing.
    assert domain.is_list_prefix(prefix) is ok
