"""What a notification says, free of I/O.

A message carries only what its event's entry below names (ids, names, reasons, times),
never the whole payload: a field added to an event later stays out until someone decides it
belongs here. Free text that other services wrote (failure reasons, host names) is scrubbed
of anything that looks like a credential, in case an error message quoted one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.api.notifications import EVENT_KINDS
from shared.events import (
    BackupFailed,
    BackupOverdue,
    DrillFailed,
    Envelope,
    Event,
    InstanceReady,
    RecoveryCompleted,
    RecoveryFailed,
)

# Free text longer than this is cut: a reason is a sentence, not a log.
TEXT_MAX = 500
REDACTED = "[redacted]"


@dataclass(frozen=True)
class Kind:
    fields: tuple[str, ...]
    subject: Callable[[dict[str, Any]], str]
    summary: Callable[[dict[str, Any]], str]


def _since(data: dict[str, Any]) -> str:
    last = data.get("last_backup_at")
    hours = data.get("allowed_age_hours")
    if last is None:
        return f"{data['host']} has never completed a backup."
    return (f"{data['host']} has not completed a backup since {last} "
            f"(more than {hours:g} hours ago).")


KINDS: dict[type[Event], Kind] = {
    BackupFailed: Kind(
        ("host_id", "host", "backup_id", "reason"),
        lambda d: f"Backup of {d['host']} failed",
        lambda d: f"The backup of {d['host']} failed: {d['reason']}"),
    BackupOverdue: Kind(
        ("host_id", "host", "last_backup_at", "allowed_age_hours"),
        lambda d: f"No recent backup of {d['host']}",
        _since),
    RecoveryFailed: Kind(
        ("recovery_id", "reason"),
        lambda d: f"Recovery {d['recovery_id']} failed",
        lambda d: f"Recovery {d['recovery_id']} failed: {d['reason']}"),
    RecoveryCompleted: Kind(
        ("recovery_id", "instance_id"),
        lambda d: f"Recovery {d['recovery_id']} is complete",
        lambda d: f"Recovery {d['recovery_id']} is complete."),
    InstanceReady: Kind(
        ("instance_id", "recovery_id", "address"),
        lambda d: f"Recovered machine {d['instance_id']} is ready",
        lambda d: (f"The machine recovered by {d['recovery_id']} is running"
                   + (f" at {d['address']}." if d.get("address") else "."))),
    DrillFailed: Kind(
        ("drill_id", "host_id", "backup_id", "reason"),
        lambda d: "Recovery drill failed",
        lambda d: f"A recovery drill of backup {d['backup_id']} failed: {d['reason']}"),
}
NOTIFIED: tuple[type[Event], ...] = tuple(KINDS)
assert {c.type_name() for c in NOTIFIED} == set(EVENT_KINDS), "KINDS and EVENT_KINDS differ"

# Things that look like credentials, each replaced by REDACTED (or keeping what is harmless).
_SCRUBBERS: tuple[tuple[re.Pattern[str], str], ...] = (
    # ReClo's own bearer tokens, agent keys and webhook secrets.
    (re.compile(r"\b(?:rcs|rca|whsec)_[A-Za-z0-9_\-]+"), REDACTED),
    # Query strings and fragments of URLs: presigned URLs carry their signature there.
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#]*)[?#]\S*"), r"\1?" + REDACTED),
    # Credentials inside a URL (scheme://user:password@host).
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@]+@"), r"\1" + REDACTED + "@"),
    # AWS access key ids.
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), REDACTED),
    # "password=…", "passphrase: …", "secret_key=…", "token …" and the like.
    (re.compile(r"(?i)\b((?:pass(?:word|phrase)|secret|token|api[_-]?key|access[_-]?key|"
                r"private[_-]?key|credentials?)\w*)(\s*[=:]\s*|\s+)(\"[^\"]*\"|'[^']*'|\S+)"),
     r"\1\2" + REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
                re.S), REDACTED),
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def scrub(text: str) -> str:
    """Free text fit for a message: no credentials, no control characters, bounded."""
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= TEXT_MAX else text[:TEXT_MAX - 1] + "…"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, str):
        return scrub(value)
    return value


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def is_notified(event: Event) -> bool:
    return type(event) in KINDS


def document(envelope: Envelope, event: Event) -> dict[str, Any]:
    """The JSON a webhook receives: ``{type, occurred_at, id, data}``. ``id`` is the event's
    id, the same in every retry and on every channel: receivers deduplicate on it."""
    kind = KINDS[type(event)]
    return {
        "type": envelope.type,
        "occurred_at": rfc3339(envelope.occurred_at),
        "id": str(envelope.id),
        "data": {name: _plain(getattr(event, name)) for name in kind.fields},
    }


def encode(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


SUBJECT_PREFIX = "[ReClo] "
FOOTER = ("You receive this because notifications are on for your ReClo account. Change "
          "them in the portal, or with PUT /api/v1/notifications/settings.")


def email_text(doc: dict[str, Any]) -> tuple[str, str]:
    """Subject and plain-text body of the e-mail for a webhook document."""
    kind = next(k for cls, k in KINDS.items() if cls.type_name() == doc["type"])
    data = doc["data"]
    subject = _CONTROL.sub(" ", SUBJECT_PREFIX + kind.subject(data))
    facts = [f"{name.replace('_', ' ').capitalize()}: {value}"
             for name, value in data.items() if value is not None]
    body = "\n".join([
        kind.summary(data),
        "",
        *facts,
        "",
        f"Event: {doc['type']}",
        f"Event id: {doc['id']}",
        f"Time: {doc['occurred_at']}",
        "",
        "-- ",
        FOOTER,
        "",
    ])
    return subject, body
