"""Pure pieces of the platform: topic matching, the identity signature, event envelopes."""

import json

import pytest

from shared.bus import topic_matches
from shared.events import (
    CATALOG,
    BackupUploaded,
    MalformedMessage,
    TokensExpiryDue,
    decode_envelope,
    envelope_for,
    payload_of,
    utcnow,
)
from shared.http.identity import BadSignature, Identity, sign, verify
from shared.settings import Settings


@pytest.mark.parametrize("pattern,key,expected", [
    ("backup.backup_uploaded", "backup.backup_uploaded", True),
    ("backup.*", "backup.backup_uploaded", True),
    ("backup.*", "backup.a.b", False),
    ("#", "anything.at.all", True),
    ("backup.#", "backup", True),
    ("*.tokens_expiry_due", "scheduler.tokens_expiry_due", True),
    ("*.x", "x", False),
    ("a.#.z", "a.b.c.z", True),
    ("a.#.z", "a.z", True),
    ("a.#.z", "a.b.c", False),
])
def test_topic_matching(pattern, key, expected):
    assert topic_matches(pattern, key) is expected


def test_signature_round_trip_and_tampering():
    key = b"k" * 32
    who = Identity(kind="user", user_id="u1", username="ann", token_id="t1", client_ip="::1")
    headers = sign(who, "GET", "/api/v1/backups?host=a", key, now=1000)
    assert verify(headers, "GET", "/api/v1/backups?host=a", key, now=1010) == who
    with pytest.raises(BadSignature, match="does not match"):
        verify(headers, "GET", "/api/v1/backups?host=b", key, now=1010)
    with pytest.raises(BadSignature, match="does not match"):
        verify(headers, "POST", "/api/v1/backups?host=a", key, now=1010)
    with pytest.raises(BadSignature, match="expired"):
        verify(headers, "GET", "/api/v1/backups?host=a", key, now=1000 + 61)
    forged = dict(headers)
    forged["X-Reclo-Identity"] = sign(Identity(kind="user", user_id="u2"), "GET",
                                      "/api/v1/backups?host=a", key,
                                      now=1000)["X-Reclo-Identity"]
    with pytest.raises(BadSignature, match="does not match"):
        verify(forged, "GET", "/api/v1/backups?host=a", key, now=1010)
    with pytest.raises(BadSignature, match="malformed"):
        verify({**headers, "X-Reclo-Signature": "garbage"}, "GET", "/api/v1/backups?host=a",
               key, now=1010)


def test_envelope_round_trip_and_routing_keys():
    event = TokensExpiryDue(scheduled_for=utcnow())
    first = envelope_for(event)
    follow = envelope_for(BackupUploaded(
        backup_id="b", user_id="u", host_id="h", host="srv", snapshot_id="s", kind="full",
        is_image=True, size_bytes=1, completed_at=utcnow()), causation=first)
    assert follow.correlation_id == first.correlation_id
    assert follow.causation_id == first.id
    assert first.routing_key == "scheduler.tokens_expiry_due"
    assert follow.routing_key == "backup.backup_uploaded"
    assert payload_of(decode_envelope(first.to_bytes())) == event
    # Every event in the catalog has a distinct routing key.
    keys = [cls.routing_key() for cls in CATALOG.values()]
    assert len(keys) == len(set(keys))


def test_malformed_payloads_are_refused_precisely():
    good = json.loads(envelope_for(TokensExpiryDue(scheduled_for=utcnow())).to_bytes())
    with pytest.raises(MalformedMessage, match="unknown event type"):
        payload_of(decode_envelope(json.dumps({**good, "type": "Nope"}).encode()))
    with pytest.raises(MalformedMessage, match="version 9 is not supported"):
        payload_of(decode_envelope(json.dumps({**good, "version": 9}).encode()))
    with pytest.raises(MalformedMessage, match="invalid TokensExpiryDue payload"):
        payload_of(decode_envelope(json.dumps({**good, "payload": {}}).encode()))
    naive = {**good["payload"], "scheduled_for": "2026-11-27T04:00:00"}  # no time zone
    with pytest.raises(MalformedMessage, match="invalid TokensExpiryDue payload"):
        payload_of(decode_envelope(json.dumps({**good, "payload": naive}).encode()))


def test_each_service_gets_its_own_database():
    s = Settings(database_url="mysql+aiomysql://u:secret@db:3306/ignored",
                 database_prefix="reclo_")
    assert s.database_url_for("auth") == "mysql+aiomysql://u:secret@db:3306/reclo_auth"
    assert s.database_url_for("backup").endswith("/reclo_backup")
    local = Settings(data_dir="/var/lib/reclo")
    assert local.database_url_for("auth") == "sqlite+aiosqlite:////var/lib/reclo/auth.db"


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("RECLO_AUTH__SESSION_TTL_SECONDS", "60")
    monkeypatch.setenv("RECLO_BUS__RETRY_DELAYS", "[0.5, 2]")
    monkeypatch.setenv("RECLO_GATEWAY__PORT", "9000")
    s = Settings()
    assert s.auth.session_ttl_seconds == 60
    assert s.bus.retry_delays == (0.5, 2.0)
    assert s.port_for("gateway") == 9000


def test_logged_tracebacks_carry_no_local_variables():
    """In a child process: configuring logging here would bind the process-wide loggers to
    this test's captured stream."""
    import subprocess
    import sys

    program = """
import logging
from shared.logs import configure_logging, get_logger
configure_logging("info", "json")
def fail():
    passphrase = "hunter2-do-not-log"
    raise ValueError("boom")
for emit in (get_logger().exception, logging.getLogger("lib").exception):
    try:
        fail()
    except ValueError:
        emit("failed")
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("ValueError: boom") == 2
    assert "hunter2" not in done.stderr
