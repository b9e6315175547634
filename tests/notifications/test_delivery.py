"""Events reach the customer's webhook and mailbox, signed and with the right content;
receivers that are down are retried then given up with a record; a slow receiver delays
nobody else. Both modes: embedded (SQLite, in-process bus) and MariaDB with RabbitMQ."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

from shared.events import BackupFailed, BackupOverdue, DrillFailed, InstanceReady, RecoveryCompleted
from tests.harness import Api, running_stack
from tests.notifications.conftest import TEST_DELAYS, WEBHOOK_TIMEOUT, notify_settings, publish
from tests.support import eventually


def verify(secret: str, body: bytes, header: str) -> bool:
    """A receiver's check, written from docs/notifications.md alone."""
    parts = [p.split("=", 1) for p in header.split(",")]
    timestamp = next(v for k, v in parts if k == "t")
    if abs(time.time() - int(timestamp)) > 300:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for k, v in parts if k == "v1")


async def deliveries(api, **query):
    path = "/api/v1/notifications/deliveries"
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    status, body, _ = await api.call("GET", path)
    assert status == 200, body
    return body["items"]


async def test_webhook_gets_signed_json(stack, new_api, webhooks):
    alice = await new_api("alice")
    status, saved, _ = await alice.call("PUT", "/api/v1/notifications/settings",
                                        json={"webhook_url": webhooks.on("/alice")})
    assert status == 200, saved
    secret = saved["webhook_secret"]
    assert secret.startswith("whsec_")

    envelope = await publish(stack, BackupFailed(
        user_id=alice.user_id, host_id="h1", host="fileserver-01", backup_id="b1",
        reason="the disk was full"))

    await eventually(lambda: webhooks.hooks("/alice"))
    hook = webhooks.hooks("/alice")[0]
    assert hook.headers["Content-Type"] == "application/json"
    assert verify(secret, hook.body, hook.headers["X-Reclo-Signature"])
    assert not verify("whsec_someone-else", hook.body, hook.headers["X-Reclo-Signature"])
    assert hook.headers["X-Reclo-Event"] == "BackupFailed"
    doc = json.loads(hook.body)
    assert doc == {
        "type": "BackupFailed",
        "id": str(envelope.id),
        "occurred_at": envelope.occurred_at.isoformat().replace("+00:00", "Z"),
        "data": {"host_id": "h1", "host": "fileserver-01", "backup_id": "b1",
                 "reason": "the disk was full"},
    }

    async def delivered():
        items = await deliveries(alice)
        return items and items[0]["state"] == "delivered" and items[0]

    item = await eventually(delivered)
    assert item["channel"] == "webhook" and item["attempts"] == 1
    assert item["event_id"] == str(envelope.id) and item["event_type"] == "BackupFailed"
    assert item["target"] == webhooks.url("/alice") and item["finished_at"]
    assert hook.headers["X-Reclo-Delivery"] == item["id"]


async def test_email_gets_the_right_content(stack, new_api, smtp):
    bob = await new_api("bob")
    status, saved, _ = await bob.call("PUT", "/api/v1/notifications/settings",
                                      json={"email": "bob@example.com"})
    assert status == 200, saved
    assert saved["webhook_secret"] is None  # no webhook, no secret

    last = datetime(2025, 3, 1, 4, 0, tzinfo=UTC)
    envelope = await publish(stack, BackupOverdue(
        user_id=bob.user_id, host_id="h2", host="db-02", last_backup_at=last,
        allowed_age_hours=26))

    await eventually(lambda: smtp.to("bob@example.com"))
    mail = smtp.to("bob@example.com")[0]
    assert mail.mail_from == "alerts@reclo.test"
    assert mail.message["Subject"] == "[ReClo] No recent backup of db-02"
    assert mail.message["From"] == "ReClo <alerts@reclo.test>"
    assert mail.message["To"] == "bob@example.com"
    assert mail.message["Auto-Submitted"] == "auto-generated"
    text = mail.message.get_content()
    assert "db-02 has not completed a backup since 2025-03-01T04:00:00Z" in text
    assert "more than 26 hours" in text
    assert f"Event id: {envelope.id}" in text
    assert "Host id: h2" in text

    async def delivered():
        items = await deliveries(bob)
        return items and items[0]["state"] == "delivered"

    await eventually(delivered)


async def test_both_channels_and_only_chosen_events(stack, new_api, webhooks, smtp):
    carol = await new_api("carol")
    status, saved, _ = await carol.call(
        "PUT", "/api/v1/notifications/settings",
        json={"webhook_url": webhooks.on("/carol"), "email": "carol@example.com",
              "events": ["InstanceReady", "DrillFailed"]})
    assert status == 200, saved
    assert saved["events"] == ["InstanceReady", "DrillFailed"] and not saved["all_events"]

    # Not chosen: nothing is recorded or sent.
    await publish(stack, RecoveryCompleted(user_id=carol.user_id, recovery_id="r0"))
    await publish(stack, InstanceReady(user_id=carol.user_id, instance_id="i1",
                                       recovery_id="r1", address="10.77.0.2"))
    await eventually(lambda: webhooks.hooks("/carol") and smtp.to("carol@example.com"))
    assert json.loads(webhooks.hooks("/carol")[0].body)["data"] == {
        "instance_id": "i1", "recovery_id": "r1", "address": "10.77.0.2"}
    mail = smtp.to("carol@example.com")[0]
    assert mail.message["Subject"] == "[ReClo] Recovered machine i1 is ready"

    async def both_delivered():
        items = await deliveries(carol)
        return len(items) == 2 and {i["state"] for i in items} == {"delivered"} and items

    items = await eventually(both_delivered)
    assert {i["channel"] for i in items} == {"webhook", "email"}
    assert {i["event_type"] for i in items} == {"InstanceReady"}
    assert len(webhooks.hooks("/carol")) == 1  # RecoveryCompleted was not sent


async def test_receiver_down_is_retried_then_given_up(stack, new_api, webhooks, smtp):
    dave = await new_api("dave")
    # A port nothing listens on: connection refused at every attempt.
    status, saved, _ = await dave.call(
        "PUT", "/api/v1/notifications/settings",
        json={"webhook_url": "http://127.0.0.1:9/hook"})
    assert status == 200, saved
    erin = await new_api("erin")
    failing = webhooks.on("/erin", status=503)
    await erin.call("PUT", "/api/v1/notifications/settings", json={"webhook_url": failing})

    await publish(stack, DrillFailed(user_id=dave.user_id, drill_id="d1", host_id="h1",
                                     backup_id="b1", reason="pack 3f… is corrupt"))
    await publish(stack, DrillFailed(user_id=erin.user_id, drill_id="d2", host_id="h2",
                                     backup_id="b2", reason="pack 3f… is corrupt"))

    async def failed(api):
        items = await deliveries(api)
        return items and items[0]["state"] == "failed" and items[0]

    attempts = len(TEST_DELAYS) + 1
    down = await eventually(lambda: failed(dave))
    assert down["attempts"] == attempts
    assert "could not connect" in down["last_error"]
    assert down["finished_at"] and down["next_attempt_at"] is None
    refusing = await eventually(lambda: failed(erin))
    assert refusing["attempts"] == attempts
    assert refusing["last_error"] == "the receiver answered HTTP 503 Service Unavailable"
    hooks = webhooks.hooks("/erin")
    assert len(hooks) == attempts  # tried, retried, then left alone
    # Each retry waited at least its backoff delay.
    gaps = [b.at - a.at for a, b in zip(hooks, hooks[1:], strict=False)]
    assert all(gap >= delay * 0.9 for gap, delay in zip(gaps, TEST_DELAYS, strict=True))
    status, listed, _ = await dave.call("GET", "/api/v1/notifications/deliveries?state=failed")
    assert [i["id"] for i in listed["items"]] == [down["id"]]
    await asyncio.sleep(0.3)
    assert len(webhooks.hooks("/erin")) == attempts


async def test_slow_webhook_does_not_delay_another_users_email(stack, new_api, webhooks, smtp):
    slow = await new_api("slow")
    # Longer than the webhook timeout: every attempt hangs until it is cut off.
    await slow.call("PUT", "/api/v1/notifications/settings",
                    json={"webhook_url": webhooks.on("/slow", delay=WEBHOOK_TIMEOUT * 3)})
    quick = await new_api("quick")
    await quick.call("PUT", "/api/v1/notifications/settings",
                     json={"email": "quick@example.com"})

    for n in range(5):  # a backlog for the slow receiver
        await publish(stack, BackupFailed(user_id=slow.user_id, host_id="h", host="slow-host",
                                          reason=f"failure {n}"))
    await eventually(lambda: webhooks.hooks("/slow"))
    hanging_since = webhooks.hooks("/slow")[0].at
    await publish(stack, RecoveryCompleted(user_id=quick.user_id, recovery_id="r9"))

    await eventually(lambda: smtp.to("quick@example.com"), timeout=WEBHOOK_TIMEOUT)
    mail = smtp.to("quick@example.com")[0]
    # It arrived while the slow receiver's first request was still being waited on: the
    # hanging request and the backlog behind it held nothing up.
    assert mail.at < hanging_since + WEBHOOK_TIMEOUT
    assert len(webhooks.hooks("/slow")) == 1  # and its backlog waits its turn, one at a time
    assert mail.message["Subject"] == "[ReClo] Recovery r9 is complete"


async def test_nothing_secret_in_messages(stack, new_api, webhooks, smtp):
    """A failure reason that quotes credentials (a presigned URL, a key, a passphrase) is
    scrubbed; the signing secret and the user's token never appear in a message."""
    frank = await new_api("frank")
    _, saved, _ = await frank.call("PUT", "/api/v1/notifications/settings", json={
        "webhook_url": webhooks.on("/frank"), "email": "frank@example.com"})
    secrets = {
        saved["webhook_secret"],
        frank.token,
        "rca_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5",
        "hunter2-passphrase",
        "AKIAIOSFODNN7EXAMPLE",
        "X-Amz-Signature=6d1c0ffee",
        "s3cr3t-pw",
    }
    reason = ("upload to https://s3.example.com/reclo/u/h/data/ab?X-Amz-Signature=6d1c0ffee"
              "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE failed; agent key "
              "rca_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5 passphrase=hunter2-passphrase "
              "Authorization: Bearer " + frank.token + " via https://bob:s3cr3t-pw@proxy.example")
    await publish(stack, BackupFailed(user_id=frank.user_id, host_id="h1", host="files",
                                      reason=reason))
    await eventually(lambda: webhooks.hooks("/frank") and smtp.to("frank@example.com"))
    body = webhooks.hooks("/frank")[0].body.decode()
    mail = smtp.to("frank@example.com")[0].message.as_string()
    for secret in secrets:
        assert secret not in body, secret
        assert secret not in mail, secret
    reason_sent = json.loads(body)["data"]["reason"]
    # What is not secret stays, so the message is still useful.
    assert reason_sent.startswith("upload to https://s3.example.com/reclo/u/h/data/ab?[redacted]")
    assert "failed; agent key [redacted] passphrase=[redacted]" in reason_sent
    assert "proxy.example" in reason_sent
    # The delivery list is the user's own, but holds no secret either.
    _, listed, _ = await frank.call("GET", "/api/v1/notifications/deliveries")
    assert saved["webhook_secret"] not in str(listed)


async def test_settings_changes_apply_to_pending_deliveries(mode, tmp_path, unique, smtp,
                                                            webhooks, http):
    """A corrected URL gets the messages still pending; a removed webhook ends them."""
    # Retries far enough apart for the user to change the settings in between.
    settings = notify_settings(mode, tmp_path, unique, smtp.port,
                               notify_retry_delays=(0.8, 0.8))
    async with running_stack(settings, ["gateway", "auth"]) as (stack, base):
        gina = Api(http, base)
        await gina.register_and_login(f"gina{unique}")
        _, me, _ = await gina.call("GET", "/api/v1/auth/me")
        broken = webhooks.on("/gina-old", status=500)
        await gina.call("PUT", "/api/v1/notifications/settings", json={"webhook_url": broken})
        await publish(stack, RecoveryCompleted(user_id=me["id"], recovery_id="r1"))
        await eventually(lambda: webhooks.hooks("/gina-old"))
        fixed = webhooks.on("/gina-new")
        await gina.call("PUT", "/api/v1/notifications/settings", json={"webhook_url": fixed})

        async def finished(n):
            items = await deliveries(gina)
            done = [i for i in items if i["state"] in ("delivered", "failed")]
            return len(done) == n and items

        first = (await eventually(lambda: finished(1)))[0]
        assert first["state"] == "delivered" and first["attempts"] == 2
        assert first["target"] == fixed
        assert len(webhooks.hooks("/gina-old")) == 1 and len(webhooks.hooks("/gina-new")) == 1

        webhooks.on("/gina-new", status=500)
        await publish(stack, RecoveryCompleted(user_id=me["id"], recovery_id="r2"))
        await eventually(lambda: len(webhooks.hooks("/gina-new")) == 2)
        await gina.call("PUT", "/api/v1/notifications/settings", json={})
        items = await eventually(lambda: finished(2))
        assert items[0]["state"] == "failed" and items[0]["attempts"] == 1  # not tried again
        assert items[0]["last_error"] == "the webhook was removed from the settings"
        assert len(webhooks.hooks("/gina-new")) == 2
