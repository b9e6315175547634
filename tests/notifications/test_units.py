"""The pure parts: what messages say and leave out, the signature, which destinations are
accepted, and that every notified event has a handler."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from services.auth.handlers import EVENT_HANDLERS, notify
from services.auth.notifications import destinations, messages, signing
from shared.api.notifications import EVENT_KINDS
from shared.events import (
    BackupFailed,
    BackupOverdue,
    DrillFailed,
    InstanceReady,
    RecoveryCompleted,
    RecoveryFailed,
    envelope_for,
)

USER = "u" * 32
EXAMPLES = [
    BackupFailed(user_id=USER, host_id="h1", host="files", reason="disk full", backup_id="b1"),
    BackupOverdue(user_id=USER, host_id="h1", host="files", last_backup_at=None,
                  allowed_age_hours=26),
    RecoveryFailed(user_id=USER, recovery_id="r1", reason="the image is corrupt"),
    RecoveryCompleted(user_id=USER, recovery_id="r1", instance_id="i1"),
    InstanceReady(user_id=USER, instance_id="i1", recovery_id="r1", address=None),
    DrillFailed(user_id=USER, drill_id="d1", host_id="h1", backup_id="b1", reason="bad pack"),
]


def test_every_notified_event_is_handled_and_offered():
    handled = {cls for cls, fn in EVENT_HANDLERS.items() if fn is notify}
    assert handled == set(messages.NOTIFIED)
    assert [cls.type_name() for cls in messages.NOTIFIED] == list(EVENT_KINDS)
    assert {type(e) for e in EXAMPLES} == set(messages.NOTIFIED)


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_documents_carry_only_their_fields(event):
    envelope = envelope_for(event)
    doc = messages.document(envelope, event)
    assert set(doc) == {"type", "occurred_at", "id", "data"}
    assert doc["id"] == str(envelope.id) and doc["type"] == type(event).__name__
    assert doc["occurred_at"].endswith("Z")
    assert "user_id" not in doc["data"]  # the receiver knows whose it is
    assert set(doc["data"]) == set(messages.KINDS[type(event)].fields)
    json.loads(messages.encode(doc))
    subject, body = messages.email_text(doc)
    assert subject.startswith("[ReClo] ") and "\n" not in subject
    assert str(envelope.id) in body and body.endswith(messages.FOOTER + "\n")
    assert "None" not in body


def test_email_wording():
    never = messages.document(envelope_for(EXAMPLES[1]), EXAMPLES[1])
    assert messages.email_text(never)[1].startswith("files has never completed a backup.")
    ready = messages.document(envelope_for(EXAMPLES[4]), EXAMPLES[4])
    assert messages.email_text(ready)[1].startswith("The machine recovered by r1 is running.")


def test_host_names_cannot_inject_headers_or_grow_without_bound():
    event = BackupFailed(user_id=USER, host_id="h", host="evil\r\nBcc: eve@example.com",
                         reason="x" * 5000)
    doc = messages.document(envelope_for(event), event)
    subject, _ = messages.email_text(doc)
    assert "\r" not in subject and "\n" not in subject
    assert len(doc["data"]["reason"]) == messages.TEXT_MAX


@pytest.mark.parametrize(("text", "gone", "kept"), [
    ("GET https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE",
     ["X-Amz-Signature", "abc", "AKIAIOSFODNN7EXAMPLE"], ["https://b.s3.amazonaws.com/k?"]),
    ("token rcs_abcDEF123-_x expired", ["rcs_abcDEF123"], ["expired"]),
    ("key AKIAIOSFODNN7EXAMPLE denied", ["AKIAIOSFODNN7EXAMPLE"], ["denied"]),
    ("wrong passphrase: 'open sesame' given", ["open sesame"], ["wrong passphrase"]),
    ('password="hunter 2"', ["hunter 2"], ["password="]),
    ("secret_key=wJalrXUtnFEMI/K7MDENG", ["wJalrXUtnFEMI"], ["secret_key="]),
    ("Authorization: Bearer eyJhbGciOi.x.y", ["eyJhbGciOi"], ["Authorization"]),
    ("amqp://guest:guest@rabbit:5672/ refused", ["guest:guest"], ["rabbit:5672", "refused"]),
    ("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----", ["MIIE"], []),
    ("whsec_abcdefghijklmnop leaked", ["abcdefghijklmnop"], ["leaked"]),
    ("pack 3fa9c0ffee not found in index", [], ["pack 3fa9c0ffee not found in index"]),
])
def test_scrub(text, gone, kept):
    clean = messages.scrub(text)
    for part in gone:
        assert part not in clean, clean
    for part in kept:
        assert part in clean, clean


def test_signature_round_trip():
    secret = signing.new_secret()
    body = b'{"type":"BackupFailed"}'
    now = int(time.time())
    header = signing.signature_header([secret], body, now)
    assert header.startswith(f"t={now},v1=")
    assert signing.verify(secret, body, header, now)
    assert not signing.verify(secret, body + b" ", header, now)  # body changed
    assert not signing.verify(signing.new_secret(), body, header, now)  # other secret
    assert not signing.verify(secret, body, header, now + 301)  # too old: a replay
    forged = header.replace(f"t={now}", f"t={now + 100}")
    assert not signing.verify(secret, body, forged, now + 100)  # time is inside the MAC
    both = signing.signature_header([secret, "whsec_old"], body, now)
    assert signing.verify("whsec_old", body, both, now) and signing.verify(secret, body, both, now)
    assert signing.new_secret() != signing.new_secret()


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/reclo", "http://example.com:8080/a?b=c", "HTTPS://Example.com",
    "https://8.8.8.8/hook", "https://[2001:4860:4860::8888]/hook",
])
def test_public_webhooks_are_accepted(url):
    assert destinations.webhook_url(url, allow_private=False) == url


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://127.1.2.3/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://10.1.2.3/", "http://172.16.0.1/", "http://192.168.0.1/", "http://169.254.169.254/",
    "http://100.64.0.1/", "http://0.0.0.0/", "http://localhost:8080/", "http://LOCALHOST./",
    "http://db.localhost/", "http://[fd00::1]/", "http://[fe80::1]/",
])
def test_private_webhooks_are_refused_unless_allowed(url):
    with pytest.raises(destinations.InvalidDestination):
        destinations.webhook_url(url, allow_private=False)
    assert destinations.webhook_url(url, allow_private=True) == url


async def test_the_resolver_refuses_names_of_private_addresses():
    with pytest.raises(OSError, match="non-public"):
        await destinations.GuardedResolver(allow_private=False).resolve("localhost", 80)
    found = await destinations.GuardedResolver(allow_private=True).resolve("localhost", 80)
    assert found and all(not destinations.is_public(r["host"]) for r in found)


@pytest.mark.parametrize(("raw", "ok"), [
    ("ops@example.com", True), (" ops+reclo@mail.example.co.uk ", True),
    ("o'brien@example.com", True), ("ops@example", False), ("@example.com", False),
    ("ops@@example.com", False), ("o ps@example.com", False), ("ops@exa_mple.com", False),
    ("ops@example.com\r\nBcc: x@y.z", False), ("a" * 65 + "@example.com", False),
    ("ops@bücher.de", False), ("ops@xn--bcher-kva.de", True), (".ops@example.com", False),
])
def test_email_addresses(raw, ok):
    if ok:
        assert destinations.email_address(raw) == raw.strip()
    else:
        with pytest.raises(destinations.InvalidDestination):
            destinations.email_address(raw)


def test_rfc3339():
    assert messages.rfc3339(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2025-01-02T03:04:05Z"
