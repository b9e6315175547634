"""`reclo-agent run`: stays running and keeps the schedule (schedule.py says when).

The loop: learn from the repository when this host's last backup and last full were,
work out the next slot, sleep until it, back up, repeat. It sleeps in steps of at most a
minute and looks at the wall clock after each, because a monotonic sleep does not count
time a machine spends suspended: a server that wakes after a missed slot catches up at
once. A failed backup is logged and retried later (schedule.retry_after). Stop (SIGTERM,
Ctrl-C, or the Windows service's Stop) cancels a running backup, which tells the server
it was interrupted; the next start resumes it without uploading again what arrived.

Everything goes to the JSON log (jsonlog.py): `agent.started`, `schedule.next`,
`backup.started`, `backup.progress` (once a minute), `backup.warning`, `backup.completed`,
`backup.failed`, `agent.stopped`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

from shared.format import FULL, Progress

from . import version
from .backup import BackupRequest, recorded_path, take_backup
from .config import AgentConfig
from .exits import OK, code_for
from .jsonlog import JsonLog
from .progress import Reporter
from .schedule import Due, next_backup
from .state import StateFile
from .target import NoRepository, open_target

# The longest single sleep: how late a slot can be noticed after a suspend, at worst.
WAKE_EVERY = 60.0
# Progress lines in the log during a backup: enough to see it move, few enough to read.
PROGRESS_LOG_INTERVAL = 60.0


class LogReporter(Reporter):
    def __init__(self, log: JsonLog) -> None:
        super().__init__()
        self.log = log
        self._last = 0.0

    def progress(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_LOG_INTERVAL:
            self._last = now
            self.log.event("backup.progress", files_done=p.files_done, files_total=p.files_total,
                           bytes_done=p.bytes_done, bytes_total=p.bytes_total)

    def status(self, text: str) -> None:
        self.log.event("backup.status", message=text)

    def warning(self, text: str) -> None:
        self.log.event("backup.warning", level="warning", message=text)


def _local(t: datetime | None) -> datetime | None:
    """UTC from the repository to naive local time, which the schedule counts in."""
    return None if t is None else t.astimezone().replace(tzinfo=None)


class Daemon:
    def __init__(self, cfg: AgentConfig, agent_key: str | None, passphrase: str, log: JsonLog,
                 *, repository: str | None = None) -> None:
        self.cfg = cfg
        self.agent_key = agent_key
        self.passphrase = passphrase
        self.log = log
        self.repository = repository
        self.state = StateFile(cfg.state_dir)
        self.last_backup: datetime | None = None
        self.last_full: datetime | None = None
        self.history_known = False

    async def run(self, stop: asyncio.Event) -> int:
        s = self.cfg.schedule
        self.log.event("agent.started", version=version(), config=str(self.cfg.path), host=self.cfg.host,
                       sources=[x.path for x in self.cfg.sources],
                       schedule={"full_day": s.full_weekday, "time": s.at.isoformat("minutes"),
                                 "incremental_every_seconds": s.incremental_every.total_seconds()})
        announced: Due | None = None
        while not stop.is_set():
            if not self.history_known:
                try:
                    await self._load_history()
                except Exception as e:
                    self._failed("history", e)
            now = datetime.now()
            failed = self.state.load().last_failure_at
            due = next_backup(now, s, last_backup=self.last_backup, last_full=self.last_full,
                              failed_at=_local(failed))
            if not self.history_known and due.at <= now:
                due = Due(now + s.retry_after, due.kind)  # cannot tell what is due: ask again later
            if due.at <= now:
                await self._backup(due, stop)
                announced = None
                continue
            if due != announced:
                self.log.event("schedule.next", at=due.at.isoformat(timespec="minutes"), kind=due.kind)
                announced = due
            await _sleep_until(due.at, stop)
        self.log.event("agent.stopped")
        return OK

    async def _load_history(self) -> None:
        wanted = sorted((recorded_path(self.cfg, x), x.kind) for x in self.cfg.sources)
        async with open_target(self.cfg, self.agent_key, repository=self.repository) as target:
            try:
                repo = await target.open_repository(self.passphrase, load_index=False)
                snapshots = await repo.list_snapshots()
            except NoRepository:
                if not target.is_server:
                    raise
                snapshots = []  # the first backup creates it
        mine = [snap for _, snap in snapshots if snap.host == self.cfg.host
                and sorted((x.path, x.kind) for x in snap.sources) == wanted]
        self.last_backup = _local(max((x.time for x in mine), default=None))
        self.last_full = _local(max((x.time for x in mine if x.kind == FULL), default=None))
        self.history_known = True

    async def _backup(self, due: Due, stop: asyncio.Event) -> None:
        self.log.event("backup.started", kind=due.kind, slot=due.at.isoformat(timespec="minutes"))
        job = asyncio.create_task(self._take(due))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({job, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not job.done():
            job.cancel()
        try:
            outcome = await job
        except asyncio.CancelledError:
            self.log.event("backup.failed", level="error", error="interrupted: the agent is stopping", exit_code=130)
            return
        except Exception as e:
            self._failed("backup", e)
            self.history_known = False  # what the failed run left is learnt again
            return
        self.state.change(last_failure_at=None, last_failure=None)
        summary = outcome.summary()
        self.log.event("backup.completed", **summary)
        started = _local(outcome.snapshot.time)
        self.last_backup = started
        if outcome.snapshot.kind == FULL:
            self.last_full = started

    async def _take(self, due: Due) -> Any:
        async with open_target(self.cfg, self.agent_key, repository=self.repository) as target:
            request = BackupRequest(self.cfg.sources, kind=due.kind, tags=["scheduled"])
            return await take_backup(self.cfg, target, self.passphrase, request, LogReporter(self.log))

    def _failed(self, what: str, error: BaseException) -> None:
        code, message = code_for(error)
        self.log.event(f"{what}.failed", level="error", error=message, exit_code=code)
        self.state.change(last_failure_at=datetime.now(timezone.utc), last_failure=message)


async def _sleep_until(when: datetime, stop: asyncio.Event) -> None:
    """Sleep until the wall clock reaches `when` (local), waking at least every minute."""
    while not stop.is_set():
        left = (when - datetime.now()).total_seconds()
        if left <= 0:
            return
        try:
            await asyncio.wait_for(stop.wait(), min(left, WAKE_EVERY))
        except asyncio.TimeoutError:
            pass
