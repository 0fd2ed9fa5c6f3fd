"""The status page in a real headless browser (Debian's chromium, driven by selenium
through /usr/bin/chromedriver; nothing is downloaded): sign in with ?token= once,
see the dead letter, click its Replay button, and watch it go out.

Screenshots are kept as build artifacts in artifacts/.
"""

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServiceFactory, example
from tests.receiver import WebhookReceiver
from tests.test_metrics import until_metric
from tests.test_status_page import TOKEN, rules

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = ROOT / "artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1600",
]


def browse(base: str, profile: Path) -> dict[str, object]:
    """Sign in, screenshot, click Replay, screenshot; blocking (run in a thread)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(20)
        driver.get(f"{base}/")
        signed_out = driver.find_element(By.TAG_NAME, "h2").text
        driver.get(f"{base}/?token={TOKEN}")
        url_after_sign_in = driver.current_url
        rows = driver.find_elements(By.CSS_SELECTOR, "#dlq tr[id^=dead-]")
        errors = [row.text for row in rows]
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "status-page.png"))
        driver.find_element(By.CSS_SELECTOR, "#dlq button.replay").click()
        WebDriverWait(driver, 10).until(lambda d: "replayed=" in d.current_url)
        flash = driver.find_element(By.ID, "flash").text
        url_after_replay = driver.current_url
        driver.save_screenshot(str(ARTIFACTS / "status-page-replayed.png"))
        cookies = driver.get_cookies()
        return {
            "signed_out": signed_out,
            "url_after_sign_in": url_after_sign_in,
            "dead_rows": errors,
            "flash": flash,
            "url_after_replay": url_after_replay,
            "cookies": cookies,
        }
    finally:
        driver.quit()


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="chromium and chromedriver are not installed"
    " (apt-get install -y chromium chromium-driver; .ci/run does this)",
)
async def test_replay_a_dead_letter_from_the_status_page_in_a_browser(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    receiver.script.append((422, {}))
    client = await service(rules(receiver.url), admin_token=TOKEN)
    await client.post("/events", json=example("course_section_created"))
    await until_metric(client, "router_dead_letters", 1)
    base = str(client.make_url("")).rstrip("/")

    with tempfile.TemporaryDirectory(prefix="router-chromium-") as profile:
        seen = await asyncio.to_thread(browse, base, Path(profile))

    assert seen["signed_out"] == "This page needs the admin token."
    assert seen["url_after_sign_in"] == f"{base}/"  # the token left the address bar
    [row] = seen["dead_rows"]
    assert "HTTP 422 Unprocessable Entity: scripted 422" in row
    assert "sections → hook" in row
    assert seen["flash"] == "Replayed 1 dead letter(s)."
    assert seen["url_after_replay"] == f"{base}/?replayed=1"
    [cookie] = seen["cookies"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]

    [got] = await receiver.wait_for(1)
    assert got.webhook_id.endswith(":sections:hook")
    await until_metric(client, "router_dead_letters", 0)
    assert (ARTIFACTS / "status-page.png").stat().st_size > 10_000
