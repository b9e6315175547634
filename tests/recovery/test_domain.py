"""Recovery's pure rules: progress, its throttle, format choice, disk space, reasons, and
the byte ranges of the image download."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.recovery import domain
from services.recovery.download import FileFacts, Unsatisfiable, requested_range


def test_total_progress_only_grows_through_the_states():
    seen = []
    for state in domain.ORDER:
        for p in (0, 25, 50, 100):
            seen.append(domain.total_progress(state, p))
    assert seen == sorted(seen)
    assert domain.total_progress(domain.PENDING, 100) == 0
    assert domain.total_progress(domain.COMPLETE, 0) == 100
    # A step's share of its state never passes its end.
    assert domain.step_progress((60, 80), 150, 100) == 80
    assert domain.step_progress((60, 80), 0, 0) == 80


@pytest.mark.parametrize("target,fmt,steps", [
    ("aws", "vmdk", [domain.ASSEMBLE, domain.CONVERT, domain.STAGE]),
    ("local", "vhd", [domain.ASSEMBLE, domain.CONVERT, domain.STAGE]),
    ("local", "raw", [domain.ASSEMBLE, domain.STAGE]),
])
def test_download_steps_cover_the_whole_state_in_order(target, fmt, steps):
    spans = domain.download_steps(target, fmt)
    assert list(spans) == steps
    edges = [edge for span in spans.values() for edge in span]
    assert edges[0] == 0 and edges[-1] == 100 and edges == sorted(edges)


def test_throttle_publishes_on_steps_time_and_new_states():
    now = [0.0]
    throttle = domain.ProgressThrottle(step=2, interval=2.0, clock=lambda: now[0])
    assert throttle.due("downloading", 0)
    assert not throttle.due("downloading", 1)  # moved less than a step
    assert throttle.due("downloading", 2)
    now[0] = 1.0
    assert not throttle.due("downloading", 3)
    now[0] = 3.5
    assert throttle.due("downloading", 3)  # the interval passed and it moved
    now[0] = 10.0
    assert not throttle.due("downloading", 3)  # nothing moved: nothing to say
    assert throttle.due("downloading", 3, "converting")  # a new message is news
    assert throttle.due("importing", 0)  # a new state always is


def test_formats():
    assert domain.choose_format("local", None, "vmdk") == "raw"
    assert domain.choose_format("local", "vhd", "vmdk") == "vhd"
    assert domain.choose_format("aws", None, "vhd") == "vhd"
    assert domain.choose_format("aws", "vmdk", "vhd") == "vmdk"
    with pytest.raises(domain.InvalidRequest, match="vmdk or vhd"):
        domain.choose_format("aws", "raw", "vmdk")


def test_scratch_space_counts_only_data_and_what_is_left():
    gib = 1 << 30
    assert domain.scratch_bytes_needed(10 * gib, 0.0, converts=False) == 10 * gib
    assert domain.scratch_bytes_needed(10 * gib, 0.5, converts=False) == 5 * gib
    assert domain.scratch_bytes_needed(10 * gib, 0.5, converts=True) == 15 * gib
    reason = domain.no_space_reason(3 * gib, gib, gib // 2)
    assert "3.0 GiB" in reason and "1.0 GiB must stay free" in reason and "512.0 MiB" in reason


def test_timeout_and_leases():
    now = datetime(2030, 1, 2, tzinfo=UTC)
    assert domain.timed_out(now - timedelta(hours=24), now, 24)
    assert not domain.timed_out(now - timedelta(hours=23, minutes=59), now, 24)
    assert domain.lease_expiry(now, 60) == now + timedelta(seconds=60)
    assert "24 hours" in domain.timed_out_reason(24)


FACTS = FileFacts(size=1000, etag='"abc-3e8-1"', last_modified="Tue, 01 Jan 2030 00:00:00 GMT")


@pytest.mark.parametrize("header,expected", [
    (None, None),
    ("bytes=0-99", (0, 99)),
    ("bytes=100-", (100, 999)),
    ("bytes=-100", (900, 999)),
    ("bytes=-5000", (0, 999)),  # a suffix longer than the file is the whole file
    ("bytes=990-5000", (990, 999)),  # cut at the end
    ("bytes=0-0", (0, 0)),
    ("bytes=0-9,20-29", None),  # several ranges: the whole file
    ("bytes=9-0", None),  # invalid: ignored
    ("items=0-9", None),  # unknown unit: ignored
    ("bytes=abc", None),
    ("bytes=" + "9" * 5000 + "-", None),  # past what int() parses: malformed, ignored
    ("bytes=0-" + "9" * 20, None),
    ("bytes=0-" + "9" * 19, (0, 999)),
])
def test_ranges(header, expected):
    assert requested_range(header, None, FACTS) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(Unsatisfiable):
        requested_range(header, None, FACTS)


def test_if_range_honours_the_range_only_for_the_same_image():
    assert requested_range("bytes=10-", FACTS.etag, FACTS) == (10, 999)
    assert requested_range("bytes=10-", FACTS.last_modified, FACTS) == (10, 999)
    assert requested_range("bytes=10-", '"another-version"', FACTS) is None
