"""The tables the scheduler owns: ``schedules`` (one row per job, the lock that makes each
tick happen once across replicas), plus outbox and inbox."""

from sqlalchemy import Column, MetaData, String, Table

from services.scheduler.domain import CRON_MAX_LENGTH
from shared.db import UTCDateTime
from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()

schedules = Table(
    "schedules",
    metadata,
    Column("job", String(100), primary_key=True),
    # The schedule in effect; NULL while the job is switched off. A change restarts the job
    # from that moment (``since``), like a new one.
    Column("cron", String(CRON_MAX_LENGTH), nullable=True),
    # When the job, or its current schedule, started: nothing at or before it is emitted.
    Column("since", UTCDateTime, nullable=False),
    # The cron time of the last tick emitted (not the wall time it was emitted at).
    Column("last_scheduled_for", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
