import pytest

from shared.events import Event, envelope_for
from shared.settings import AuthSettings
from tests.harness import FAST_ARGON2, MODES, Api, running_stack, settings_for
from tests.notifications.receivers import SmtpReceiver, WebhookReceiver

# Retries after 50 ms then 100 ms: a receiver that is down is given up on within a second.
TEST_DELAYS = (0.05, 0.1)
# Long enough that "arrived while a slow webhook was still being waited on" holds on a
# loaded machine; no test waits for it to run out.
WEBHOOK_TIMEOUT = 5.0
NOTIFY = {
    "notify_retry_delays": TEST_DELAYS,
    "notify_poll_seconds": 0.1,
    "notify_webhook_timeout_seconds": WEBHOOK_TIMEOUT,
    "notify_smtp_timeout_seconds": 5.0,
    # The receivers are on 127.0.0.1, which the SSRF guard refuses by default.
    "notify_allow_private_webhooks": True,
    "smtp_security": "none",
    "smtp_from": "ReClo <alerts@reclo.test>",
}


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
async def webhooks():
    receiver = WebhookReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def smtp():
    receiver = SmtpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


def notify_settings(mode, tmp_path, unique, smtp_port: int | None, **auth):
    values = {**FAST_ARGON2, **NOTIFY, "smtp_host": "127.0.0.1" if smtp_port else None,
              "smtp_port": smtp_port or 25, **auth}
    return settings_for(mode, tmp_path, unique, auth=AuthSettings(**values))


@pytest.fixture
async def stack(mode, tmp_path, unique, smtp):
    settings = notify_settings(mode, tmp_path, unique, smtp.port)
    async with running_stack(settings, ["gateway", "auth"]) as (stack, base):
        stack.base_url = base
        yield stack


@pytest.fixture
def new_api(stack, http, unique):
    """Makes a logged-in user: ``await new_api("alice")``."""

    async def make(name: str) -> Api:
        api = Api(http, stack.base_url)
        await api.register_and_login(f"{name}{unique}")
        status, me, _ = await api.call("GET", "/api/v1/auth/me")
        assert status == 200, me
        api.user_id = me["id"]
        return api

    return make


async def publish(stack, event: Event):
    """The event as its producing service would emit it; returns its envelope."""
    envelope = envelope_for(event)
    await stack.bus.publish(envelope)
    return envelope
