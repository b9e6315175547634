"""The portal in a real browser: Debian's Chromium, headless, driven by Playwright, against
the services started in the test as `reclo up` starts them. Never downloads a browser: a
machine without /usr/bin/chromium fails these tests (.ci/run installs it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

from tests.harness import Api, running_stack, settings_for

CHROMIUM = "/usr/bin/chromium"
# MACHINE.md: what Debian's Chromium needs as root in a container, and nothing phoning home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "correct horse battery"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def settings(tmp_path, unique):
    return settings_for("embedded", tmp_path, unique)


@pytest.fixture
async def stack(settings):
    async with running_stack(settings) as (stack, base):
        stack.base_url = base
        yield stack


@pytest.fixture
async def api(stack, http):
    return Api(http, stack.base_url)


@pytest.fixture
async def browser():
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class Problems:
    """What the page complained about: script errors, CSP violations, failed loads."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.items.append(f"page error: {error}"))
        page.on("console", lambda message: self.items.append(f"console {message.type}: {message.text}")
                if message.type == "error" and not _expected(message.text) else None)


def _expected(text: str) -> bool:
    # The browser logs every 4xx/5xx answer to fetch(); the tests that cause them check
    # the page shows them in words.
    return bool(re.search(r"Failed to load resource: the server responded with a status of (4\d\d|502|503)", text))


@pytest.fixture
async def context(browser, stack, tmp_path):
    context = await browser.new_context(base_url=stack.base_url, viewport=LAPTOP,
                                        accept_downloads=True)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def page(context):
    problems = Problems()
    page = await context.new_page()
    problems.watch(page)
    page.problems = problems
    yield page
    assert problems.items == [], problems.items
    if not page.is_closed():
        await assert_rendered_well(page)


async def assert_rendered_well(page: Page) -> None:
    """Nothing on screen that only a wrongly rendered value shows."""
    shown = await page.locator("body").inner_text()
    for sign in ("[object ", "undefined", "NaN", "Traceback"):
        assert sign not in shown, (sign, shown[:2000])


async def shot(page: Page, name: str) -> Path:
    """A screenshot kept as a test artifact (test-artifacts/screenshots, not committed)."""
    await assert_rendered_well(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def sign_up(page: Page, username: str, password: str = PASSWORD) -> None:
    await page.goto("/app/signup")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_label("Repeat the password").fill(password)
    await page.get_by_role("button", name="Create the account").click()
    await page.get_by_role("heading", name="Dashboard").wait_for()


async def sign_in(page: Page, username: str, password: str = PASSWORD) -> None:
    await page.goto("/app/signin")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Sign in").click()
