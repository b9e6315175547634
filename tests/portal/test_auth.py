"""Signing up, in and out in the browser; refusals read as the API's words."""

from playwright.async_api import expect

from tests.portal.conftest import PASSWORD, PHONE, shot, sign_in, sign_up


async def test_sign_up_sign_out_and_sign_in_again(page, api):
    await page.goto("/")
    await expect(page).to_have_url(f"{api.base}/app/signin?next=%2Fapp%2F")
    await shot(page, "signin")
    await page.get_by_role("link", name="Sign up").first.click()
    await expect(page.get_by_role("heading", name="Sign up")).to_be_focused()
    await shot(page, "signup")
    await sign_up(page, "alice")
    await expect(page.get_by_role("status")).to_contain_text("Your account is ready")
    await expect(page.locator("#account")).to_contain_text("alice")
    await shot(page, "dashboard-empty")

    # The session is the tab's: the API accepts the token the page keeps.
    token = await page.evaluate("sessionStorage.getItem('reclo.token')")
    status, me, _ = await api.call("GET", "/api/v1/auth/me", token=token)
    assert status == 200 and me["username"] == "alice"

    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_role("heading", name="Sign in").wait_for()
    assert await page.evaluate("sessionStorage.getItem('reclo.token')") is None
    # Signing out ended the session on the server too.
    status, _, _ = await api.call("GET", "/api/v1/auth/me", token=token)
    assert status == 401

    await sign_in(page, "alice")
    await page.get_by_role("heading", name="Dashboard").wait_for()
    # A page asked for before signing in is where sign-in leads.
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_role("heading", name="Sign in").wait_for()
    await page.goto("/app/keys")
    await sign_in_here(page, "alice")
    await page.get_by_role("heading", name="Agent keys").wait_for()


async def sign_in_here(page, username):
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()


async def test_wrong_password_shows_the_api_message_not_a_trace(page, api):
    await api.register_and_login("bob")
    await sign_in(page, "bob", "not the password")
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text("the username or the password is wrong")
    await expect(page.get_by_label("Username")).to_be_focused()
    body = await page.locator("body").inner_text()
    assert "Traceback" not in body and "Error:" not in body and "status" not in body
    assert await page.evaluate("sessionStorage.getItem('reclo.token')") is None
    await shot(page, "signin-wrong-password")
    # And the right one works afterwards.
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="Dashboard").wait_for()


async def test_empty_fields_are_refused_before_asking_the_server(page, stack):
    requests = []
    page.on("request", lambda r: requests.append(r.url) if "/api/v1/auth" in r.url else None)
    await page.goto("/app/signin")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text("Enter your username.")).to_be_visible()
    await expect(page.get_by_text("Enter your password.")).to_be_visible()
    await expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")
    await page.goto("/app/signup")
    await page.get_by_label("Username").fill("carol")
    await page.get_by_label("Password", exact=True).fill("short")
    await page.get_by_label("Repeat the password").fill("short")
    await page.get_by_role("button", name="Create the account").click()
    await expect(page.get_by_text("At least 8 characters.")).to_be_visible()
    await page.get_by_label("Password", exact=True).fill("long enough 1")
    await page.get_by_label("Repeat the password").fill("long enough 2")
    await page.get_by_role("button", name="Create the account").click()
    await expect(page.get_by_text("The two passwords differ.")).to_be_visible()
    await shot(page, "signup-refused")
    assert requests == []


async def test_huge_and_script_input_is_refused_and_shown_as_text(page, api):
    dialogs = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    await page.goto("/app/signup")
    # The field holds at most what the API takes; what is typed beyond is cut.
    await page.get_by_label("Username").fill("u" * 10_000)
    assert len(await page.get_by_label("Username").input_value()) == 64
    # A username the API refuses comes back as its words, beside the field, as text.
    hostile = "<script>alert(1)</script>"[:64]
    await page.get_by_label("Username").fill(hostile)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_label("Repeat the password").fill(PASSWORD)
    await page.get_by_role("button", name="Create the account").click()
    error = page.locator(".field-error:not([hidden])").first
    await expect(error).to_be_visible()
    # The refusal names the field in words; nothing of the input became markup.
    assert "username" in (await error.inner_text()).lower()
    assert await page.locator("main script").count() == 0
    await expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")
    status, _, _ = await api.call("POST", "/api/v1/auth/login",
                                  json={"username": hostile, "password": PASSWORD})
    assert status == 401  # nothing was registered
    assert dialogs == []


async def test_sign_in_page_reads_on_a_phone(browser, stack):
    context = await browser.new_context(base_url=stack.base_url, viewport=PHONE)
    try:
        page = await context.new_page()
        await page.goto("/app/signin")
        await page.get_by_role("heading", name="Sign in").wait_for()
        # Nothing wider than the screen: no sideways scrolling on a phone.
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
        await shot(page, "signin-phone")
    finally:
        await context.close()
