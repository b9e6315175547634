"""The crisis path in the browser: the host and its backups made by the agent, a local
recovery started from the portal and watched to the end without reloading, the image and
the VPN configuration downloaded."""

import base64
import hashlib
import json
import subprocess

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from playwright.async_api import expect

from tests.portal.conftest import shot, sign_in
from tests.recovery_client.support import PASSPHRASE, image_backup, known_to_recovery

# Collects what the progress page showed, as it showed it (runs in the page, outside CSP).
WATCH_PROGRESS = """() => {
  window.__seen = [];
  window.__modes = [];
  window.__samePage = true;
  const note = () => {
    const state = document.getElementById('recovery-state');
    const mode = document.getElementById('recovery-mode');
    if (state && state.textContent && window.__seen[window.__seen.length - 1] !== state.textContent) window.__seen.push(state.textContent);
    if (mode && mode.dataset.mode && window.__modes[window.__modes.length - 1] !== mode.dataset.mode) window.__modes.push(mode.dataset.mode);
  };
  new MutationObserver(note).observe(document.getElementById('main'),
    {childList: true, characterData: true, subtree: true, attributes: true});
}"""
# Makes this page's WebCrypto lack X25519, as older browsers do.
NO_X25519 = """(() => {
  const generate = crypto.subtle.generateKey.bind(crypto.subtle);
  crypto.subtle.generateKey = (algorithm, ...rest) => {
    const name = typeof algorithm === 'string' ? algorithm : algorithm.name;
    if (String(name).toUpperCase() === 'X25519') return Promise.reject(new DOMException('no', 'NotSupportedError'));
    return generate(algorithm, ...rest);
  };
})();"""


def public_of(private_b64: str) -> str:
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def private_key_in(conf: str) -> str:
    lines = [line.split("=", 1)[1].strip() for line in conf.splitlines()
             if line.replace(" ", "").startswith("PrivateKey=")]
    assert len(lines) == 1, conf
    assert len(base64.b64decode(lines[0])) == 32
    return lines[0]


async def recover_locally(page, stack, api, tmp_path, unique, *, disk_format="VMDK",
                          passphrase=PASSPHRASE):
    """Signs in, finds the host and its backup, starts a local recovery; returns the
    backup, the disk the agent backed up and the requests the page made from then on."""
    username = f"web-{unique}"
    await api.register_and_login(username)
    _, disk = await image_backup(tmp_path, stack.base_url, username)
    status, backups, _ = await api.call("GET", "/api/v1/backups")
    backup = backups["items"][0]
    await known_to_recovery(stack, backup["id"])

    await sign_in(page, username)
    await page.get_by_role("heading", name="Dashboard").wait_for()
    row = page.get_by_role("row").filter(has_text="fileserver-01")
    await expect(row).to_contain_text("OK")
    await expect(row).to_contain_text("—")  # no recovery drill recorded yet
    await shot(page, "dashboard")

    await page.get_by_role("link", name="fileserver-01").click()
    await page.get_by_role("heading", name="Backups of fileserver-01").wait_for()
    backup_row = page.get_by_role("row").filter(has_text="Disk image")
    await expect(backup_row).to_contain_text("Full")
    await expect(backup_row).to_contain_text("Complete")
    await shot(page, "backups")

    await backup_row.get_by_role("link", name="Recover").click()
    await page.get_by_role("heading", name="Recover fileserver-01").wait_for()
    await page.get_by_label("A disk image to download").check()
    await expect(page.get_by_label("Instance type")).to_be_hidden()
    await page.get_by_label(disk_format, exact=False).check()
    await page.get_by_label("Backup passphrase (only if asked)").fill(passphrase)
    await shot(page, "recover-target")
    await page.get_by_role("button", name="Review").click()
    await expect(page.get_by_role("heading", name="Confirm")).to_be_focused()
    await expect(page.locator("#review-title + p")).to_contain_text(
        f"as a {disk_format.upper()} disk image to download")
    await shot(page, "recover-confirm")
    documents = []
    page.on("request", lambda r: documents.append(r.url) if r.resource_type == "document" else None)
    await page.evaluate(WATCH_PROGRESS)
    await page.get_by_role("button", name="Start the recovery").click()
    await page.locator("#recovery-state").wait_for()
    return backup, disk, documents


async def test_recover_watch_live_and_download(page, context, stack, api, tmp_path, unique):
    backup, disk, documents = await recover_locally(page, stack, api, tmp_path, unique)
    state = page.locator("#recovery-state")
    await expect(state).to_have_text("Complete", timeout=60_000)
    await expect(page.locator("#total-progress")).to_have_attribute("value", "100")
    # Updated in place: the same document throughout, no page load, and it came live.
    assert documents == []
    assert await page.evaluate("window.__samePage") is True
    seen = await page.evaluate("window.__seen")
    modes = await page.evaluate("window.__modes")
    assert modes == ["live"], modes
    # It showed the stages as they came, not only the end.
    assert len(seen) >= 3 and seen[-1] == "Complete", seen
    await expect(page.locator("#recovery-elapsed")).not_to_have_text("")
    await expect(page.locator("#recovery-cancel")).to_be_hidden()
    await shot(page, "recovery-complete")

    # The image, through a short-lived link the browser's own download manager follows.
    recovery_id = page.url.rsplit("/", 1)[1]
    status, recovery, _ = await api.call("GET", f"/api/v1/recoveries/{recovery_id}")
    async with page.expect_download() as waiting:
        await page.get_by_role("button", name="Download the image").click()
    download = await waiting.value
    saved = tmp_path / "downloaded.vmdk"
    await download.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == recovery["image_sha256"]
    compared = subprocess.run(["qemu-img", "compare", str(disk), str(saved)],
                              capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr  # the same disk

    await page.get_by_role("navigation").get_by_role("link", name="Recoveries").click()
    await expect(page.get_by_role("row").filter(has_text="fileserver-01")).to_contain_text("Complete")
    await shot(page, "recoveries")

    # The VPN configuration: the key pair is made in the browser, only the public key sent.
    await page.get_by_role("navigation").get_by_role("link", name="Instances").click()
    await page.get_by_role("heading", name="Instances").wait_for()
    await expect(page.locator("#vpn-key-origin")).to_contain_text("Your browser makes the VPN key pair itself")
    sent = []
    page.on("request", lambda r: sent.append(r.post_data) if r.url.endswith("/vpn-peers") else None)
    async with page.expect_download() as waiting:
        await page.get_by_role("button", name="Download the VPN configuration").first.click()
    vpn_download = await waiting.value
    assert vpn_download.suggested_filename.startswith("rc-")
    assert len(vpn_download.suggested_filename) <= len("rc-") + 12 + len(".conf")
    conf_path = tmp_path / vpn_download.suggested_filename
    await vpn_download.save_as(conf_path)
    conf = conf_path.read_text()
    private = private_key_in(conf)
    assert len(sent) == 1 and json.loads(sent[0])["public_key"] == public_of(private)
    assert private not in sent[0]
    assert "[Peer]" in conf and "Endpoint" in conf
    await shot(page, "instances")

    # A browser without X25519 gets a key pair the gateway made for this download only.
    fallback = await context.new_page()
    await fallback.add_init_script(NO_X25519)
    # A new tab is a new session (the token lives in the tab's sessionStorage).
    await sign_in(fallback, f"web-{unique}")
    await fallback.get_by_role("heading", name="Dashboard").wait_for()
    await fallback.get_by_role("navigation").get_by_role("link", name="Instances").click()
    await expect(fallback.locator("#vpn-key-origin")).to_contain_text(
        "the ReClo server makes the key pair for this one download")
    async with fallback.expect_download() as waiting:
        await fallback.get_by_role("button", name="Download the VPN configuration").first.click()
    server_made = await waiting.value
    server_conf = tmp_path / "server-made.conf"
    await server_made.save_as(server_conf)
    private_key_in(server_conf.read_text())
    await expect(fallback.get_by_role("status")).to_contain_text("kept no copy")
    await fallback.close()

    # Stopping asks first; cancelling the question changes nothing.
    row = page.get_by_role("row").filter(has_text="Running")
    await row.get_by_role("button", name="Stop").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Stop this machine?")
    await shot(page, "instances-confirm")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(row).to_contain_text("Running")
    await row.get_by_role("button", name="Stop").click()
    await page.get_by_role("dialog").get_by_role("button", name="Stop").click()
    await expect(page.get_by_role("row").filter(has_text="Stopped")).to_have_count(1)


async def test_progress_falls_back_to_polling(page, stack, api, tmp_path, unique):
    # A proxy in the way that refuses streams: the page asks every two seconds instead.
    await page.route("**/events", lambda route: route.fulfill(status=502, body="no streams here"))
    await recover_locally(page, stack, api, tmp_path, unique, disk_format="VHD")
    await expect(page.locator("#recovery-state")).to_have_text("Complete", timeout=60_000)
    await expect(page.locator("#recovery-mode")).to_have_text("Updating every 2 seconds")
    assert await page.evaluate("window.__samePage") is True
    assert await page.evaluate("window.__modes") == ["polling"]
    await shot(page, "recovery-polling")


async def test_a_target_the_server_does_not_offer_is_refused_in_words(page, stack, api, tmp_path,
                                                                    unique):
    username = f"aws-{unique}"
    await api.register_and_login(username)
    await image_backup(tmp_path, stack.base_url, username)
    _, backups, _ = await api.call("GET", "/api/v1/backups")
    await known_to_recovery(stack, backups["items"][0]["id"])
    await sign_in(page, username)
    await page.get_by_role("heading", name="Dashboard").wait_for()
    await page.goto(f"/app/recover/{backups['items'][0]['id']}")
    await page.get_by_label("A running machine in AWS").check()
    await page.get_by_label("Instance type").select_option("m6i.large")
    await page.get_by_role("button", name="Review").click()
    await expect(page.locator("#review-title + p")).to_contain_text(
        "as a new machine in AWS (m6i.large)")
    await page.get_by_role("button", name="Start the recovery").click()
    # The embedded stack recovers only to local images: the service says so, in words.
    await expect(page.get_by_role("alert")).to_contain_text("recovery to aws is not configured")
    await expect(page.get_by_role("button", name="Review")).to_be_visible()
    _, recoveries, _ = await api.call("GET", "/api/v1/recoveries")
    assert recoveries["items"] == []
    await shot(page, "recover-refused")


async def test_a_failed_recovery_says_why_in_plain_words(page, stack, api, tmp_path, unique):
    await recover_locally(page, stack, api, tmp_path, unique, disk_format="Raw",
                          passphrase="not the passphrase")
    await expect(page.locator("#recovery-state")).to_have_text("Failed", timeout=60_000)
    failure = page.locator("#recovery-failure")
    await expect(failure).to_have_attribute("role", "alert")
    await expect(failure.get_by_role("heading", name="The recovery failed")).to_be_visible()
    await expect(failure).to_contain_text("passphrase")
    await expect(page.locator("#recovery-announce")).to_contain_text("The recovery failed")
    await expect(page.locator("#recovery-cancel")).to_be_hidden()
    assert await page.evaluate("window.__samePage") is True
    await shot(page, "recovery-failed")
    await failure.get_by_role("link", name="Try again").click()
    await expect(page.get_by_role("heading", name="Recover fileserver-01")).to_be_visible()
