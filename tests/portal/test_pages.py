"""The other pages: agent keys (shown once, revocable, hostile names shown as text), the
downloads page, keyboard use, a phone's width, and two accounts that never see each
other's servers, backups, recoveries or keys."""

from pathlib import Path

from playwright.async_api import expect

from tests.portal.conftest import PHONE, shot, sign_in, sign_up
from tests.recovery_client.support import image_backup
from tests.support import eventually

HOSTILE = '<img src=x onerror="window.__owned=1"><script>window.__owned=2</script>'


async def test_agent_keys_mint_show_once_and_revoke(page, api):
    dialogs = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    await sign_up(page, "keeper")
    await page.get_by_role("navigation").get_by_role("link", name="Agent keys").click()
    await page.get_by_role("heading", name="Agent keys").wait_for()
    await page.get_by_role("button", name="Mint the key").click()
    await expect(page.get_by_text("Enter the server name.")).to_be_visible()

    await page.get_by_label("Server name").fill(HOSTILE)
    await page.get_by_role("button", name="Mint the key").click()
    secret = page.locator("#minted-key")
    await expect(secret).to_contain_text("rca_")
    key = await secret.inner_text()
    await expect(page.get_by_role("heading", name=f"Key for {HOSTILE}")).to_be_visible()
    row = page.get_by_role("row").filter(has_text=HOSTILE)
    await expect(row).to_contain_text("Active")
    # Shown as the characters typed: nothing of it ran or became an element.
    assert await page.evaluate("window.__owned") is None
    assert await page.locator("main img").count() == 0
    assert await page.locator("main script").count() == 0
    await shot(page, "keys-minted")

    # The key works for an agent; the page never shows it again.
    status, me, _ = await api.call("GET", "/api/v1/auth/me", token=key)
    assert status == 200 and me["kind"] == "agent" and me["host"] == HOSTILE
    await page.reload()
    await page.get_by_role("heading", name="Agent keys").wait_for()
    await expect(page.locator("#minted-key")).to_have_count(0)
    assert key not in await page.content()

    # A huge name is the server's to refuse, in words.
    await page.get_by_label("Server name").fill("h" * 300)
    assert len(await page.get_by_label("Server name").input_value()) == 255  # the field's bound
    await page.get_by_label("Server name").evaluate("(el) => el.removeAttribute('maxlength')")
    await page.get_by_label("Server name").fill("h" * 300)
    await page.get_by_role("button", name="Mint the key").click()
    await expect(page.locator(".field-error:not([hidden])")).to_contain_text("255")

    await page.get_by_role("button", name="Revoke the key for").click()
    await expect(page.get_by_role("dialog")).to_contain_text("Revoke the key for")
    await page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("row").filter(has_text=HOSTILE)).to_contain_text("Revoked")
    # Refused within the gateway's token cache bound (docs/architecture.md).
    async def refused():
        status, _, _ = await api.call("GET", "/api/v1/auth/me", token=key)
        return status == 401
    await eventually(refused, timeout=15, interval=0.5)
    assert dialogs == []
    await shot(page, "keys")


async def test_downloads_page_names_this_server(page, stack):
    await page.goto("/app/downloads")
    await page.get_by_role("heading", name="Downloads").wait_for()
    for name in ("Agent on Linux", "Agent on Windows Server", "Recovery Manager"):
        await expect(page.get_by_role("heading", name=name)).to_be_visible()
    text = await page.locator("main").inner_text()
    assert text.count(f"--server {stack.base_url}") == 3
    # The exact commands of docs/agent.md, with this server's address.
    agent_doc = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    for command in ("/opt/reclo/bin/reclo-agent init", "systemctl enable --now reclo-agent",
                    "Start-Service ReCloAgent", "-m clients.agent init"):
        assert command in text and command in agent_doc, command
    assert "reclo-recover login" in text
    await shot(page, "downloads")


async def test_keyboard_alone_signs_in(page, api):
    await api.register_and_login("typist")
    await page.goto("/app/signin")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_focused()
    # From the page's heading, the next Tab is the form's first field.
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Username")).to_be_focused()
    await page.keyboard.type("typist")
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Password", exact=True)).to_be_focused()
    await page.keyboard.type("correct horse battery")
    await page.keyboard.press("Enter")
    await page.get_by_role("heading", name="Dashboard").wait_for()
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_focused()
    # Every control on the page has a name a screen reader can say.
    unnamed = await page.evaluate("""() => [...document.querySelectorAll('input, select, button, a')]
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
        .map((el) => el.outerHTML)""")
    assert unnamed == []


async def test_two_accounts_never_see_each_other(browser, stack, api, tmp_path, unique):
    first, second = f"first-{unique}", f"second-{unique}"
    await api.register_and_login(first)
    await image_backup(tmp_path, stack.base_url, first, host="first-server")
    _, hosts, _ = await api.call("GET", "/api/v1/hosts")
    host_id = hosts["items"][0]["id"]
    _, backups, _ = await api.call("GET", "/api/v1/backups")
    backup_id = backups["items"][0]["id"]
    await api.call("POST", "/api/v1/agent-keys", json={"host": "first-secret-host"})

    context = await browser.new_context(base_url=stack.base_url)
    try:
        page = await context.new_page()
        await sign_up(page, second)
        await expect(page.get_by_role("heading", name="No servers yet")).to_be_visible()
        for path in (f"/app/hosts/{host_id}", f"/app/recover/{backup_id}"):
            await page.goto(path)
            await expect(page.get_by_role("alert")).to_be_visible()
            content = await page.locator("main").inner_text()
            assert "first-server" not in content, path
        await shot(page, "other-users-host")
        for path, empty in (("/app/recoveries", "No recoveries yet"),
                            ("/app/instances", "No recovered machines"),
                            ("/app/keys", "No keys yet")):
            await page.goto(path)
            await expect(page.get_by_text(empty)).to_be_visible()
            assert "first-" not in await page.locator("main").inner_text()
        # The first account, in its own tab, sees its server.
        mine = await context.new_page()
        await sign_in(mine, first)
        await expect(mine.get_by_role("link", name="first-server")).to_be_visible()
    finally:
        await context.close()


async def test_dashboard_reads_on_a_phone(browser, stack, api, tmp_path, unique):
    username = f"phone-{unique}"
    await api.register_and_login(username)
    await image_backup(tmp_path, stack.base_url, username)
    context = await browser.new_context(base_url=stack.base_url, viewport=PHONE)
    try:
        page = await context.new_page()
        await sign_in(page, username)
        await page.get_by_role("heading", name="Dashboard").wait_for()
        await expect(page.get_by_role("link", name="fileserver-01")).to_be_visible()
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        await shot(page, "dashboard-phone")
        await page.get_by_role("link", name="fileserver-01").click()
        await page.get_by_role("heading", name="Backups of fileserver-01").wait_for()
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        await shot(page, "backups-phone")
    finally:
        await context.close()
