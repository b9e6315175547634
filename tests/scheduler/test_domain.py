"""The scheduler's rules without a database: defaults, configuration, what is owed when."""

import os
import subprocess
import sys

import pytest

from services.scheduler.app import build
from services.scheduler.domain import DEFAULT_SCHEDULES, InvalidSchedule, Job, jobs_from
from shared.bus import create_bus
from shared.settings import SchedulerSettings, Settings
from tests.scheduler.helpers import KEY, at


def test_the_defaults_are_the_seeds_times_plus_the_backup_jobs():
    jobs, off = jobs_from({})
    assert off == []
    assert {job.name: job.cron for job in jobs} == {
        "TokensExpiryDue": "1 4 * * *",
        "InstancesCleanupDue": "2 4 * * *",
        "RecoveriesTimeoutDue": "3 4 * * *",
        "RecoveriesReconcileDue": "* * * * *",
        "BackupsOverdueCheckDue": "0 * * * *",
        "BackupsRetentionDue": "30 3 * * *",
        "BackupsVerifyDue": "0 5 * * 0",
    }
    assert set(DEFAULT_SCHEDULES) == {job.name for job in jobs}


def test_due_is_the_latest_occurrence_after_what_is_settled():
    daily = Job("TokensExpiryDue", "1 4 * * *")
    settled = at("2025-01-04T04:01:00")
    assert daily.due(settled_until=settled, now=at("2025-01-05T04:00:59.999999")) is None
    assert daily.due(settled_until=settled, now=at("2025-01-05T04:01:00")) == at(
        "2025-01-05T04:01:00")
    # Three days down: one tick, for the latest occurrence, not three.
    assert daily.due(settled_until=settled, now=at("2025-01-08T09:00:00")) == at(
        "2025-01-08T04:01:00")
    # Already emitted: nothing more until the next day.
    assert daily.due(settled_until=at("2025-01-08T04:01:00"),
                     now=at("2025-01-08T23:59:59")) is None


def test_a_job_that_starts_now_owes_nothing_from_before():
    minutely = Job("RecoveriesReconcileDue", "* * * * *")
    start = at("2025-01-05T10:00:30")
    assert minutely.due(settled_until=start, now=start) is None
    assert minutely.next_after(start) == at("2025-01-05T10:01:00")
    assert minutely.due(settled_until=start, now=at("2025-01-05T10:01:00")) == at(
        "2025-01-05T10:01:00")


def test_weekly_verification_is_on_sunday_morning():
    weekly = Job("BackupsVerifyDue", DEFAULT_SCHEDULES["BackupsVerifyDue"])
    assert weekly.next_after(at("2025-01-01T00:00:00")) == at("2025-01-05T05:00:00")
    assert at("2025-01-05T05:00:00").strftime("%A") == "Sunday"


def test_an_override_changes_one_job_and_leaves_the_others():
    jobs, off = jobs_from({"TokensExpiryDue": "*/5  *  * * *", "BackupsVerifyDue": None})
    crons = {job.name: job.cron for job in jobs}
    assert crons["TokensExpiryDue"] == "*/5 * * * *"  # spaces normalised
    assert crons["InstancesCleanupDue"] == "2 4 * * *"
    assert "BackupsVerifyDue" not in crons
    assert off == ["BackupsVerifyDue"]


def test_the_environment_sets_jobs_as_json_or_one_by_one(monkeypatch):
    monkeypatch.setenv("RECLO_SCHEDULER__JOBS",
                       '{"TokensExpiryDue": "*/5 * * * *", "BackupsRetentionDue": null}')
    jobs, off = jobs_from(Settings().scheduler.jobs)
    assert {job.name: job.cron for job in jobs}["TokensExpiryDue"] == "*/5 * * * *"
    assert off == ["BackupsRetentionDue"]

    # The nested form arrives lowercased: names are matched whatever their case.
    monkeypatch.delenv("RECLO_SCHEDULER__JOBS")
    monkeypatch.setenv("RECLO_SCHEDULER__JOBS__InstancesCleanupDue", "15 2 * * *")
    jobs, _ = jobs_from(Settings().scheduler.jobs)
    assert {job.name: job.cron for job in jobs}["InstancesCleanupDue"] == "15 2 * * *"


@pytest.mark.parametrize("cron, reason", [
    ("61 4 * * *", "not a valid cron expression"),
    ("every day", "needs five fields"),
    ("0 1 4 * * *", "needs five fields"),  # croniter would read a sixth field as seconds
    ("0 0 30 2 *", "never happens"),
    ("@reboot", "not a valid cron expression"),
    (",".join(map(str, range(60))) + " * * * *", "longer than 100 characters"),  # what the table keeps
])
def test_an_invalid_expression_is_refused_naming_the_job(cron, reason):
    with pytest.raises(InvalidSchedule) as caught:
        jobs_from({"TokensExpiryDue": cron})
    assert "TokensExpiryDue" in str(caught.value)
    assert reason in str(caught.value)
    assert repr(cron[:40]) in str(caught.value)


def test_an_unknown_job_is_refused_with_the_known_ones():
    with pytest.raises(InvalidSchedule, match="'TokenExpiry' is unknown; the jobs are: "
                                              "BackupsOverdueCheckDue, "):
        jobs_from({"TokenExpiry": "* * * * *"})


def test_the_service_does_not_build_with_an_invalid_schedule():
    settings = Settings(scheduler=SchedulerSettings(jobs={"RecoveriesTimeoutDue": "3 25 * * *"}))
    with pytest.raises(InvalidSchedule, match="RecoveriesTimeoutDue: '3 25 \\* \\* \\*'"):
        build(settings, create_bus(None, prefetch=1, retry_delays=(1.0,)), KEY)


def test_reclo_serve_scheduler_stops_at_start_with_the_reason(tmp_path):
    env = {**os.environ, "RECLO_DATA_DIR": str(tmp_path),
           "RECLO_SCHEDULER__JOBS": '{"BackupsVerifyDue": "0 5 * * sunday-ish"}'}
    done = subprocess.run([sys.executable, "-m", "services.scheduler"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "InvalidSchedule" in done.stderr
    assert "scheduler job BackupsVerifyDue: '0 5 * * sunday-ish'" in done.stderr
