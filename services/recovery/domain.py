"""Recovery's rules, free of I/O: the states and steps of a task, how progress adds up,
when it is worth publishing, which disk format a target takes, and the reasons a task
fails, in words a customer can act on."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

# --- states (the seed's) and the steps inside them ------------------------------------

PENDING = "pending"
DOWNLOADING = "downloading"
IMPORTING = "importing"
FINISHING = "finishing"
COMPLETE = "complete"
FAILED = "failed"
ORDER = (PENDING, DOWNLOADING, IMPORTING, FINISHING, COMPLETE)

# A worker holds the task (under a lease) only in these: finishing waits for instances.
WORKING = (PENDING, DOWNLOADING, IMPORTING)
CANCELLABLE = WORKING
TERMINAL = (COMPLETE, FAILED)

# Steps record how far a task got inside its state, so a resumed task skips what finished.
ASSEMBLE = "assemble"  # downloading: chunks fetched, verified and written to the raw disk
CONVERT = "convert"  # downloading: into the provider's format (vmdk.py; qemu-img for VHD)
STAGE = "stage"  # downloading: the image handed to the provider (uploaded, or kept)
IMPORT = "import"  # importing: the provider turns the image into something bootable
LAUNCH = "launch"  # finishing: instances starts the machine

# --- progress ---------------------------------------------------------------------------

# Share of total_progress each state covers: downloading dominates (it moves every byte
# of the disk), an EC2 import takes about as long again, the launch a few minutes.
_STATE_SPAN = {
    PENDING: (0, 0),
    DOWNLOADING: (0, 70),
    IMPORTING: (70, 95),
    FINISHING: (95, 99),
    COMPLETE: (100, 100),
}


def total_progress(state: str, state_progress: int) -> int:
    start, end = _STATE_SPAN.get(state, (0, 0))
    return start + (end - start) * max(0, min(100, state_progress)) // 100


def download_steps(target: str, disk_format: str) -> dict[str, tuple[int, int]]:
    """Each step of downloading and the span of state_progress it covers: reading the
    backup costs most; converting and uploading to S3 each cost a pass over the image."""
    if target == "aws":
        return {ASSEMBLE: (0, 60), CONVERT: (60, 80), STAGE: (80, 100)}
    if disk_format != "raw":
        return {ASSEMBLE: (0, 85), CONVERT: (85, 97), STAGE: (97, 100)}
    return {ASSEMBLE: (0, 97), STAGE: (97, 100)}


def step_progress(span: tuple[int, int], done: int, total: int) -> int:
    """The state_progress of a step that did ``done`` of ``total`` units."""
    start, end = span
    if total <= 0:
        return end
    return start + (end - start) * min(done, total) // total


class ProgressThrottle:
    """Publishes when progress moved by ``step`` percent or ``interval`` seconds passed
    (and it moved at all), and always on a new state: enough for a live bar, few enough
    events and writes for a 100 GB disk."""

    def __init__(self, step: int, interval: float, clock: Callable[[], float]) -> None:
        self.step = step
        self.interval = interval
        self.clock = clock
        self._state: str | None = None
        self._progress = -1
        self._message = ""
        self._at = float("-inf")

    def due(self, state: str, progress: int, message: str = "") -> bool:
        now = self.clock()
        if state != self._state:
            moved = True
        elif progress == self._progress and message == self._message:
            moved = False
        else:
            moved = (progress - self._progress >= self.step or progress == 100
                     or message != self._message or now - self._at >= self.interval)
        if moved:
            self._state, self._progress, self._message, self._at = state, progress, message, now
        return moved


# --- targets and formats ------------------------------------------------------------------

EXTENSIONS = {"raw": "raw", "vhd": "vhd", "vmdk": "vmdk"}
AWS_FORMATS = ("vmdk", "vhd")


class InvalidRequest(ValueError):
    """The request cannot be carried out as asked; the message says why."""


def choose_format(target: str, requested: str | None, aws_default: str) -> str:
    if target == "aws":
        if requested is None:
            return aws_default
        if requested not in AWS_FORMATS:
            raise InvalidRequest("EC2 imports a VMDK or a VHD disk: choose format vmdk or vhd, "
                                 "or leave it out")
        return requested
    return requested or "raw"


def needs_conversion(disk_format: str) -> bool:
    return disk_format != "raw"


def scratch_bytes_needed(data_bytes: int, done_fraction: float, converts: bool) -> int:
    """Disk the rest of a download needs: the data still to write into the sparse raw disk
    (holes cost nothing), plus a converted copy about as large as the data."""
    remaining = int(data_bytes * (1.0 - max(0.0, min(1.0, done_fraction))))
    return remaining + (data_bytes if converts else 0)


# --- leases ------------------------------------------------------------------------------


def new_id() -> str:
    return secrets.token_hex(16)


def lease_expiry(now: datetime, lease_seconds: float) -> datetime:
    return now + timedelta(seconds=lease_seconds)


def timed_out(created_at: datetime, now: datetime, timeout_hours: float) -> bool:
    return created_at <= now - timedelta(hours=timeout_hours)


# --- reasons, in plain words ---------------------------------------------------------------

CANCELLED = "cancelled by the user"
PASSPHRASE_NEEDED_AGAIN = (
    "the passphrase is needed again: the worker that held it stopped before the backup "
    "was read, and it is never stored; request the recovery again with the passphrase")
PASSPHRASE_NEEDED = (
    "this backup can only be opened with its passphrase (server-side recovery with KMS is "
    "not enabled for it): send the passphrase with the request")
WRONG_PASSPHRASE = "the passphrase is wrong: it opens none of this backup's keys"
NO_IMAGE = "the backup holds no disk image: only image backups can become machines"


def timed_out_reason(hours: float) -> str:
    return f"the recovery did not finish within {hours:g} hours"


def no_space_reason(needed: int, keep_free: int, free: int) -> str:
    return (f"not enough free disk space on the recovery worker: the image needs about "
            f"{_size(needed)} and {_size(keep_free)} must stay free, but only {_size(free)} "
            f"is free; free space in the scratch folder or add a larger volume")


def damaged_reason(detail: str) -> str:
    return f"the backup is damaged and cannot become a disk: {detail}"


def stalled_reason(minutes: float, last: str) -> str:
    said = f" (last status: {last})" if last else ""
    return f"the import made no progress for {minutes:g} minutes and was cancelled{said}"


def launch_failed_reason(reason: str) -> str:
    return f"the machine could not be started: {reason}"


def _size(n: int) -> str:
    for unit, factor in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30),
                         ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"



# --- drills ---------------------------------------------------------------------------------

# A drill waits (pending), is run by one worker under a lease (running) and ends passed,
# failed (the backup would not have become a disk: DrillFailed) or skipped (it could not
# be tried without the customer: no alarm, nothing was proven either way).
DRILL_PENDING = "pending"
DRILL_RUNNING = "running"
DRILL_PASSED = "passed"
DRILL_FAILED = "failed"
DRILL_SKIPPED = "skipped"
DRILL_OUTCOMES = {DRILL_PASSED: True, DRILL_FAILED: False, DRILL_SKIPPED: None}

# Drills assemble in this folder under the scratch folder (recovery ids are hex, so no
# task's folder is ever named so); the recovery worker's scratch sweep leaves it alone.
DRILLS_SCRATCH = "drills"

DRILL_NEEDS_KMS = "skipped: needs the passphrase (enable server-side recovery with KMS)"
DRILL_NO_KMS_HERE = ("skipped: needs the passphrase (server-side recovery with KMS is not "
                     "enabled on this server)")


def drill_retry_reason(error: str) -> str:
    return f"waiting to try again after a problem on ReClo's side: {error}"


def drill_gave_up_reason(attempts: int, last: str) -> str:
    return (f"the drill could not be completed in {attempts} attempts (a problem on ReClo's "
            f"side, not necessarily the backup's); the last error: {last}")


def assembled_differs_reason(offset: int) -> str:
    return (f"the assembled disk differs from the backup at disk offset {offset}: the "
            f"recovery worker's scratch disk returned other bytes than were written")
