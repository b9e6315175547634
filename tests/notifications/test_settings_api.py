"""The settings routes: what they accept, what they refuse (problem+json), the signing
secret shown once and rotated, and that nobody sees another user's settings or deliveries."""

from __future__ import annotations

from shared.events import BackupFailed
from tests.harness import Api, running_stack
from tests.notifications.conftest import notify_settings, publish
from tests.support import eventually

SETTINGS = "/api/v1/notifications/settings"


async def test_defaults_then_replace(new_api, webhooks):
    alice = await new_api("alice")
    status, body, _ = await alice.call("GET", SETTINGS)
    assert status == 200
    assert body["webhook_url"] is None and body["email"] is None
    assert body["all_events"] is True
    assert body["events"] == ["BackupFailed", "BackupOverdue", "RecoveryFailed",
                              "RecoveryCompleted", "InstanceReady", "DrillFailed"]

    url = webhooks.url("/a")
    status, saved, _ = await alice.call("PUT", SETTINGS, json={
        "webhook_url": f"  {url}  ", "email": "alice@example.com",
        "events": ["DrillFailed", "BackupFailed", "DrillFailed"]})
    assert status == 200, saved
    secret = saved["webhook_secret"]
    assert secret.startswith("whsec_") and len(secret) >= 40
    assert saved["webhook_url"] == url  # trimmed
    assert saved["webhook_secret_hint"] == "…" + secret[-4:]
    assert saved["events"] == ["BackupFailed", "DrillFailed"] and not saved["all_events"]

    # Shown once: reading the settings never shows it again.
    status, body, _ = await alice.call("GET", SETTINGS)
    assert "webhook_secret" not in body and secret not in str(body)
    assert body["webhook_secret_hint"] == "…" + secret[-4:]
    assert body["email"] == "alice@example.com"

    # Keeping the webhook keeps its secret; PUT replaces everything else.
    status, again, _ = await alice.call("PUT", SETTINGS, json={"webhook_url": webhooks.url("/b")})
    assert status == 200
    assert again["webhook_secret"] is None and again["webhook_secret_hint"] == "…" + secret[-4:]
    assert again["email"] is None and again["all_events"] is True

    # Removing the webhook forgets its secret; a new webhook gets a new one.
    status, cleared, _ = await alice.call("PUT", SETTINGS, json={})
    assert status == 200 and cleared["webhook_secret_hint"] is None
    status, fresh, _ = await alice.call("PUT", SETTINGS, json={"webhook_url": url})
    assert fresh["webhook_secret"] not in (None, secret)


async def test_muted(new_api, webhooks, stack):
    """An empty event list is allowed: the settings stay, nothing is sent."""
    quiet = await new_api("quiet")
    status, saved, _ = await quiet.call("PUT", SETTINGS, json={
        "webhook_url": webhooks.on("/quiet"), "events": []})
    assert status == 200 and saved["events"] == []
    marker = await new_api("marker")
    await marker.call("PUT", SETTINGS, json={"webhook_url": webhooks.on("/marker")})
    await publish(stack, BackupFailed(user_id=quiet.user_id, host_id="h", host="x", reason="r"))
    await publish(stack, BackupFailed(user_id=marker.user_id, host_id="h", host="x", reason="r"))
    await eventually(lambda: webhooks.hooks("/marker"))
    status, listed, _ = await quiet.call("GET", "/api/v1/notifications/deliveries")
    assert listed["items"] == [] and webhooks.hooks("/quiet") == []


async def test_rotation(new_api, webhooks, stack):
    import json

    from tests.notifications.test_delivery import verify

    bob = await new_api("bob")
    status, _, _ = await bob.call("POST", SETTINGS + "/rotate-secret")
    assert status == 409  # no webhook, nothing to rotate

    _, saved, _ = await bob.call("PUT", SETTINGS, json={"webhook_url": webhooks.on("/bob")})
    old = saved["webhook_secret"]
    status, rotated, _ = await bob.call("POST", SETTINGS + "/rotate-secret")
    assert status == 200, rotated
    new = rotated["webhook_secret"]
    assert new.startswith("whsec_") and new != old
    assert rotated["webhook_secret_hint"] == "…" + new[-4:]
    assert rotated["previous_secret_valid_until"] is not None

    # During the grace period both secrets sign: a receiver holding either accepts it.
    await publish(stack, BackupFailed(user_id=bob.user_id, host_id="h", host="x", reason="r"))
    await eventually(lambda: webhooks.hooks("/bob"))
    hook = webhooks.hooks("/bob")[0]
    header = hook.headers["X-Reclo-Signature"]
    assert header.count("v1=") == 2
    assert verify(new, hook.body, header) and verify(old, hook.body, header)
    assert json.loads(hook.body)["type"] == "BackupFailed"


BAD_SETTINGS = [
    ({"webhook_url": "ftp://example.com/hook"}, "webhook_url"),
    ({"webhook_url": "javascript:alert(1)"}, "webhook_url"),
    ({"webhook_url": "file:///etc/passwd"}, "webhook_url"),
    ({"webhook_url": "https://"}, "webhook_url"),
    ({"webhook_url": "https://user:pw@example.com/hook"}, "webhook_url"),
    ({"webhook_url": "https://example.com:99999/hook"}, "webhook_url"),
    ({"webhook_url": "https://exa mple.com/"}, "webhook_url"),
    ({"webhook_url": "https://example.com/" + "a" * 2100}, "webhook_url"),
    ({"webhook_url": 42}, "webhook_url"),
    ({"email": "not an address"}, "email"),
    ({"email": "bob@"}, "email"),
    ({"email": "bob@localhost\r\nBcc: eve@example.com"}, "email"),
    ({"events": ["BackupUploaded"]}, "events"),
    ({"events": "BackupFailed"}, "events"),
    ({"webhook": "https://example.com"}, "webhook"),  # a typo is refused, not ignored
]


async def test_bad_settings_are_refused(new_api):
    api = await new_api("eve")
    for body, field in BAD_SETTINGS:
        status, problem, kind = await api.call("PUT", SETTINGS, json=body)
        assert status == 422, (body, problem)
        assert kind.startswith("application/problem+json")
        assert problem["status"] == 422
        assert any(field in e["location"] for e in problem["errors"]), (body, problem)
        # The input is not echoed back (it may be anything).
        for value in body.values():
            assert not isinstance(value, str) or value not in str(problem), (body, problem)
    status, unchanged, _ = await api.call("GET", SETTINGS)
    assert unchanged["webhook_url"] is None and unchanged["email"] is None


async def test_not_json_and_bad_queries(new_api):
    api = await new_api("mallory")
    status, problem, kind = await api.call("PUT", SETTINGS, data=b"{not json",
                                           headers={"Content-Type": "application/json"})
    assert status == 400 and kind.startswith("application/problem+json")
    for query in ("limit=0", "limit=100000", "state=lost", "cursor=%%%"):
        status, problem, kind = await api.call(
            "GET", "/api/v1/notifications/deliveries?" + query)
        assert status in (400, 422), (query, problem)
        assert kind.startswith("application/problem+json")


async def test_callers(stack, http, new_api):
    anonymous = Api(http, stack.base_url)
    for method, path in (("GET", SETTINGS), ("PUT", SETTINGS),
                         ("POST", SETTINGS + "/rotate-secret"),
                         ("GET", "/api/v1/notifications/deliveries")):
        status, problem, _ = await anonymous.call(method, path, json={})
        assert status == 401, (method, path, problem)
    owner = await new_api("owner")
    status, minted, _ = await owner.call("POST", "/api/v1/agent-keys", json={"host": "srv"})
    assert status == 201
    agent = Api(http, stack.base_url)
    agent.token = minted["key"]
    status, problem, _ = await agent.call("GET", SETTINGS)
    assert status == 403, problem


async def test_users_see_only_their_own(stack, new_api, webhooks, smtp):
    alice = await new_api("alice")
    bob = await new_api("bob")
    _, saved, _ = await alice.call("PUT", SETTINGS, json={
        "webhook_url": webhooks.on("/alice"), "email": "alice@example.com"})
    await publish(stack, BackupFailed(user_id=alice.user_id, host_id="h", host="alice-srv",
                                      reason="r"))

    async def delivered():
        _, listed, _ = await alice.call("GET", "/api/v1/notifications/deliveries")
        return len(listed["items"]) == 2 and listed["items"]

    mine = await eventually(delivered)
    status, theirs, _ = await bob.call("GET", SETTINGS)
    assert status == 200 and theirs["webhook_url"] is None and theirs["email"] is None
    assert saved["webhook_secret"] not in str(theirs)
    status, listed, _ = await bob.call("GET", "/api/v1/notifications/deliveries")
    assert listed["items"] == []
    # Bob's settings change nothing of Alice's, and Bob's rotation is his own (409: none).
    await bob.call("PUT", SETTINGS, json={"email": "bob@example.com"})
    status, _, _ = await bob.call("POST", SETTINGS + "/rotate-secret")
    assert status == 409
    _, still, _ = await alice.call("GET", SETTINGS)
    assert still["email"] == "alice@example.com"
    assert still["webhook_secret_hint"] == "…" + saved["webhook_secret"][-4:]
    # A cursor made from Alice's page shows Bob nothing of hers.
    _, page, _ = await alice.call("GET", "/api/v1/notifications/deliveries?limit=1")
    assert page["next_cursor"] and page["items"][0]["id"] == mine[0]["id"]
    _, other, _ = await bob.call(
        "GET", f"/api/v1/notifications/deliveries?cursor={page['next_cursor']}")
    assert other["items"] == []
    _, rest, _ = await alice.call(
        "GET", f"/api/v1/notifications/deliveries?limit=1&cursor={page['next_cursor']}")
    assert [i["id"] for i in rest["items"]] == [mine[1]["id"]] and rest["next_cursor"] is None


async def test_guarded_server_refuses_private_webhooks_and_email(tmp_path, unique, http):
    """As deployed by default: no SMTP relay configured, private webhook targets refused."""
    settings = notify_settings("embedded", tmp_path, unique, None,
                               notify_allow_private_webhooks=False)
    async with running_stack(settings, ["gateway", "auth"]) as (_stack, base):
        api = Api(http, base)
        await api.register_and_login(f"guarded{unique}")
        for url in ("http://127.0.0.1:8081/internal/introspect", "http://localhost/hook",
                    "http://[::1]/hook", "http://169.254.169.254/latest/meta-data/",
                    "http://10.0.0.5/hook", "http://192.168.1.1/", "http://app.localhost/"):
            status, problem, kind = await api.call("PUT", SETTINGS, json={"webhook_url": url})
            assert status == 422, (url, problem)
            assert problem["errors"][0]["location"] == ["body", "webhook_url"]
        status, problem, _ = await api.call("PUT", SETTINGS, json={"email": "a@example.com"})
        assert status == 422 and "no SMTP relay" in problem["detail"]
        status, saved, _ = await api.call("PUT", SETTINGS,
                                          json={"webhook_url": "https://hooks.example.com/x"})
        assert status == 200 and saved["webhook_secret"]
