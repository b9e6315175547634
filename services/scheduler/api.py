"""The scheduler's HTTP routes: only an internal view of the jobs, for operators and tests
(it has no public API; its output is events)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from shared.http.routes import SERVICE, Call, Routes

routes = Routes("scheduler")


class Schedule(BaseModel):
    job: str
    # The five-field cron expression in UTC; null when the job is switched off.
    cron: str | None
    enabled: bool
    # When the job (or its current schedule) started; nothing before it is back-filled.
    since: datetime | None
    last_scheduled_for: datetime | None
    next_scheduled_for: datetime | None


class Schedules(BaseModel):
    now: datetime
    items: list[Schedule]


@routes.get("/internal/schedules", allow=SERVICE, response=Schedules)
async def list_schedules(call: Call) -> Schedules:
    """Every job with its schedule, the last tick emitted and the next one due."""
    ticker = call.service
    now = ticker.now()
    views = await ticker.overview(now)
    return Schedules(now=now, items=[
        Schedule(job=v.job, cron=v.cron, enabled=v.enabled, since=v.since,
                 last_scheduled_for=v.last_scheduled_for,
                 next_scheduled_for=v.next_scheduled_for)
        for v in views
    ])
