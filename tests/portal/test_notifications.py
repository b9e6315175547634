"""Notification settings in the browser: a webhook that really receives a signed message
(a local receiver, as a customer's would be), refusals beside their field, the signing
secret shown once and rotated, the deliveries listed; and each host's last recovery drill
on the dashboard."""

import time
import uuid
from datetime import UTC, datetime

from aiohttp import web
from playwright.async_api import expect

from services.auth.notifications.signing import verify
from shared.events import BackupsVerifyDue, RecoveryFailed, envelope_for
from shared.settings import AuthSettings
from tests.harness import FAST_ARGON2, running_stack, settings_for
from tests.portal.conftest import shot, sign_in, sign_up
from tests.recovery_client.support import image_backup
from tests.support import eventually


class Receiver:
    """A customer's webhook endpoint on loopback: keeps every request it gets."""

    def __init__(self) -> None:
        self.received: list[tuple[dict, bytes]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.received.append((dict(request.headers), await request.read()))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_webhook_settings_secret_and_deliveries(browser, tmp_path, unique):
    # Webhooks to loopback are allowed here only because the receiver is on loopback.
    settings = settings_for("embedded", tmp_path, unique, auth=AuthSettings(
        **FAST_ARGON2, notify_allow_private_webhooks=True))
    receiver = Receiver()
    await receiver.start()
    try:
        async with running_stack(settings) as (stack, base):
            context = await browser.new_context(base_url=base)
            page = await context.new_page()
            await sign_up(page, f"notified-{unique}")
            user = await page.evaluate("JSON.parse(sessionStorage.getItem('reclo.user'))")
            await page.get_by_role("navigation").get_by_role("link", name="Notifications").click()
            await page.get_by_role("heading", name="Notifications").wait_for()
            await expect(page.get_by_label("Everything, including kinds of events added later")).to_be_checked()
            await expect(page.get_by_text("No messages sent yet.")).to_be_visible()

            # Refusals land beside their field, in the service's words.
            await page.get_by_label("Webhook URL").fill("ftp://files.example.com/x")
            await page.get_by_role("button", name="Save").click()
            await expect(page.locator("#" + await page.get_by_label("Webhook URL").get_attribute("id") + "-error")
                         ).to_contain_text("http:// or https://")
            await page.get_by_label("Webhook URL").fill("")
            await page.get_by_label("E-mail address").fill("ops@example.com")
            await page.get_by_role("button", name="Save").click()
            await expect(page.get_by_label("E-mail address")).to_have_attribute("aria-invalid", "true")
            await expect(page.locator(".field-error:not([hidden])")).to_contain_text(
                "this server sends no e-mail")
            await expect(page.get_by_role("alert")).to_have_text("Please correct the marked fields.")
            await page.get_by_label("E-mail address").fill("")
            await page.get_by_label("Only these:").check()
            for box in await page.locator("#event-kinds input").all():
                await box.uncheck()
            await page.get_by_role("button", name="Save").click()
            await expect(page.get_by_role("alert")).to_contain_text("Choose at least one kind")

            # A webhook for failed recoveries only: its secret is shown once.
            await page.get_by_label("Webhook URL").fill(receiver.url)
            await page.get_by_label("A recovery failed").check()
            await page.get_by_role("button", name="Save").click()
            secret = await page.locator("#webhook-secret").inner_text()
            assert secret.startswith("whsec_")
            await expect(page.locator("#secret-hint")).to_have_text(
                f"The webhook's signing secret ends in …{secret[-4:]}.")
            await shot(page, "notifications")

            # An event of that kind reaches the receiver, signed with that secret; one of
            # another kind does not.
            for event in (RecoveryFailed(recovery_id=uuid.uuid4().hex, user_id=user["id"],
                                         reason="the disk image could not be assembled"),):
                await stack.bus.publish(envelope_for(event))
            await eventually(lambda: len(receiver.received) == 1, timeout=30)
            headers, body = receiver.received[0]
            assert verify(secret, body, headers["X-Reclo-Signature"], time.time())
            assert b"the disk image could not be assembled" in body

            await page.reload()
            await page.get_by_role("heading", name="Notifications").wait_for()
            await expect(page.locator("#webhook-secret")).to_have_count(0)
            row = page.get_by_role("row").filter(has_text="A recovery failed")
            await expect(row).to_contain_text("Delivered")
            await expect(row).to_contain_text(receiver.url)
            await expect(page.get_by_label("Only these:")).to_be_checked()
            await expect(page.get_by_label("A backup failed")).not_to_be_checked()

            # Rotating: a new secret, shown once; the old one still signs for a while.
            await page.get_by_role("button", name="Rotate the signing secret").click()
            await page.get_by_role("dialog").get_by_role("button", name="Rotate").click()
            rotated = await page.locator("#webhook-secret").inner_text()
            assert rotated.startswith("whsec_") and rotated != secret
            await expect(page.get_by_text("The previous secret keeps signing until")).to_be_visible()
            await shot(page, "notifications-rotated")
            await context.close()
    finally:
        await receiver.stop()


async def test_each_hosts_last_drill_shows_on_the_dashboard(page, stack, api, tmp_path, unique):
    username = f"drilled-{unique}"
    await api.register_and_login(username)
    await image_backup(tmp_path, stack.base_url, username)
    await sign_in(page, username)
    row = page.get_by_role("row").filter(has_text="fileserver-01")
    await expect(row.locator("td").last).to_have_text("—")

    # The weekly tick: the drill runs, and without server-side recovery it is skipped
    # with its reason (a backup only the passphrase opens cannot be checked unattended).
    await stack.bus.publish(envelope_for(BackupsVerifyDue(scheduled_for=datetime.now(UTC))))

    async def finished():
        _, drills, _ = await api.call("GET", "/api/v1/drills")
        return [d for d in drills["items"] if d["state"] in ("passed", "failed", "skipped")]
    drill = (await eventually(finished, timeout=60, interval=0.5))[0]
    await page.reload()
    row = page.get_by_role("row").filter(has_text="fileserver-01")
    await expect(row).to_contain_text(drill["state"].capitalize())
    await expect(row).to_contain_text(drill["reason"])
    await shot(page, "dashboard-drill")
    await row.get_by_role("link", name="fileserver-01").click()
    await expect(page.locator("#last-drill")).to_contain_text(drill["state"].capitalize())
