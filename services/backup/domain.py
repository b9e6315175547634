"""Backup's rules, free of I/O: where a host's objects live, what a key may be, which
backups a retention policy keeps, and what state a host is in. The caller says what "now" is.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.api.backup import KEY_PATTERN, HostState, RetentionPolicy, SourceSpec

_KEY = re.compile(KEY_PATTERN)
_PACK_KEY = re.compile(r"^data/([0-9a-f]{2})/([0-9a-f]{64})$")
_INDEX_KEY = re.compile(r"^index/([0-9a-f]{64})$")
# What an agent may list: its repository's folders (or a prefix of them). No dots, so no
# way out of its own prefix; the service's catalogue/ is filtered out separately.
_LIST_PREFIX = re.compile(r"^[a-z0-9/]*$")

DATA_PREFIX = "data/"
INDEX_PREFIX = "index/"
SNAPSHOTS_PREFIX = "snapshots/"
# Service-written, plain JSON, one per committed backup: enough to rebuild the catalogue.
CATALOG_PREFIX = "catalog/"


def new_id() -> str:
    return secrets.token_hex(16)


def host_prefix(user_id: str, host_id: str) -> str:
    """Where a host's repository lives in the bucket (under the configured key prefix)."""
    return f"{user_id}/{host_id}/"


def is_repository_key(key: str) -> bool:
    return _KEY.fullmatch(key) is not None


def is_list_prefix(prefix: str) -> bool:
    return _LIST_PREFIX.fullmatch(prefix) is not None and ".." not in prefix


def pack_key(pack_id: str) -> str:
    return f"{DATA_PREFIX}{pack_id[:2]}/{pack_id}"


def pack_id_of(key: str) -> str | None:
    """The pack id of a `data/xx/<id>` key whose fan-out matches its id; else None."""
    found = _PACK_KEY.fullmatch(key)
    if found is None or found.group(2)[:2] != found.group(1):
        return None
    return found.group(2)


def index_id_of(key: str) -> str | None:
    found = _INDEX_KEY.fullmatch(key)
    return found.group(1) if found else None


def snapshot_key(snapshot_id: str) -> str:
    return SNAPSHOTS_PREFIX + snapshot_id


def catalog_key(backup_id: str) -> str:
    return f"{CATALOG_PREFIX}{backup_id}.json"


def source_group(sources: Iterable[SourceSpec]) -> str:
    """Backups of the same sources form one group for retention (restic groups by host and
    paths): a daily image backup and a daily folder backup don't crowd each other out."""
    canonical = sorted((s.type, s.path) for s in sources)
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()


# --- retention ---------------------------------------------------------------------------


class EmptyPolicy(ValueError):
    pass


@dataclass(frozen=True)
class Candidate:
    id: str
    time: datetime  # when the backup completed (UTC)
    group: str


def _buckets(policy: RetentionPolicy):
    # (how many, which bucket a backup falls in); restic's keep-last counts every backup.
    return [
        (policy.keep_last, lambda c: c.id),
        (policy.keep_daily, lambda c: c.time.date()),
        (policy.keep_weekly, lambda c: c.time.isocalendar()[:2]),
        (policy.keep_monthly, lambda c: (c.time.year, c.time.month)),
    ]


def check_policy(policy: RetentionPolicy) -> None:
    if not any((policy.keep_last, policy.keep_daily, policy.keep_weekly, policy.keep_monthly)):
        raise EmptyPolicy("a retention policy must keep something (set at least one keep_*)")


def select_kept(backups: Sequence[Candidate], policy: RetentionPolicy) -> tuple[list[str], list[str]]:
    """Which backups the policy keeps and which it forgets, restic's way, in UTC.

    Per group of sources, newest first: keep_daily N keeps the newest backup of each of the
    last N days that have a backup (likewise weeks (ISO) and months; keep_last N the newest
    N). A backup is kept if any rule keeps it. The newest backup of each group is always kept.
    """
    check_policy(policy)
    groups: dict[str, list[Candidate]] = {}
    for c in backups:
        groups.setdefault(c.group, []).append(c)
    kept: list[str] = []
    forgotten: list[str] = []
    for members in groups.values():
        members.sort(key=lambda c: (c.time, c.id), reverse=True)
        rules = _buckets(policy)
        left = [n for n, _ in rules]
        last: list[object] = [None] * len(rules)
        for position, c in enumerate(members):
            keep = position == 0
            for i, (_, bucket_of) in enumerate(rules):
                if left[i] <= 0:
                    continue
                bucket = bucket_of(c)
                if bucket != last[i]:
                    last[i] = bucket
                    left[i] -= 1
                    keep = True
            (kept if keep else forgotten).append(c.id)
    return kept, forgotten


# --- host state --------------------------------------------------------------------------


def overdue_reference(last_backup_at: datetime | None, created_at: datetime) -> datetime:
    """A host that never backed up is measured from when it appeared."""
    return last_backup_at or created_at


def is_overdue(last_backup_at: datetime | None, created_at: datetime, now: datetime,
               allowed_hours: float) -> bool:
    return now - overdue_reference(last_backup_at, created_at) > timedelta(hours=allowed_hours)


def next_backup_due(last_backup_at: datetime | None, created_at: datetime,
                    allowed_hours: float) -> datetime:
    return overdue_reference(last_backup_at, created_at) + timedelta(hours=allowed_hours)


def host_state(last_backup_at: datetime | None, last_failure_at: datetime | None,
               overdue_since: datetime | None) -> HostState:
    if overdue_since is not None:
        return "overdue"
    if last_failure_at is not None and (last_backup_at is None or last_failure_at > last_backup_at):
        return "failing"
    if last_backup_at is None:
        return "never"
    return "ok"
