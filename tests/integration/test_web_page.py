"""The web page at / in a real headless browser (Debian's chromium through chromedriver),
on the real app: photos picked in the page come back as their classes, a text file as the
service's 422 message; with API keys on the page asks for one and shows the 401; a broker
that is gone shows the 503 with its Retry-After, a request nobody answers the 504.

The screenshot of the results is always written to the test's tmp folder; with
WRITE_SCREENSHOT=1 also to docs/web-page.png (the committed one).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rabbit_serve.local_cluster import App, deploy, remove_app, wait_healthy
from tests.images import CAT_CLASSES, ESPRESSO, IMAGES_DIR
from tests.integration.conftest import NOBROKER_API_KEYS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = "web-page-key"
WAIT_S = 30.0


def browser_missing() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing: pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator:
    reason = browser_missing()
    if reason:
        # CI installs both (.ci/run): there a missing browser is a failure, not a skip.
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    # Both paths given: Selenium Manager then has nothing to look up or download.
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1200,800")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def keyed_app(serve_base_url: str, main_app: App) -> Iterator[App]:
    # Deployed beside main (whose fixture only starts it), so both come up together.
    app = deploy("webkeys", "/webkeys", serve_base_url, NUM_CONSUMERS=1, TIMEOUT=30, API_KEYS=KEY)
    try:
        wait_healthy(app.url)
        yield app
    finally:
        depth = remove_app(app)
    assert depth == 0, f"{depth} messages were left unacknowledged in the request queue"


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
        lambda d: condition(d), message=f"timed out waiting for {what}"
    )


def open_page(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(
        driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"), "page"
    )


def pick(driver, *paths: Path) -> list:
    """Choose files in the page's file input, as the picker would; returns their cards
    once every one has an answer."""
    from selenium.webdriver.common.by import By

    before = len(driver.find_elements(By.CSS_SELECTOR, ".card"))
    driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))

    def answered(d) -> list | bool:
        cards = d.find_elements(By.CSS_SELECTOR, ".card")[before:]
        states = [c.get_attribute("data-state") for c in cards]
        return cards if len(cards) == len(paths) and "pending" not in states else False

    return wait_for(driver, answered, f"answers for {[p.name for p in paths]}")


def card_result(card) -> dict:
    """What the card shows: its file name, state, status text, class ids, timings, batch."""
    from selenium.webdriver.common.by import By

    return {
        "name": card.find_element(By.CSS_SELECTOR, ".name").text,
        "state": card.get_attribute("data-state"),
        "status": card.find_element(By.CSS_SELECTOR, ".status").text,
        "classes": [
            int(p.get_attribute("data-class-id"))
            for p in card.find_elements(By.CSS_SELECTOR, ".prediction")
        ],
        "labels": [p.text for p in card.find_elements(By.CSS_SELECTOR, ".prediction .label")],
        "timings": {
            dd.get_attribute("data-timing"): dd.text
            for dd in card.find_elements(By.CSS_SELECTOR, ".timing-list dd")
        },
        "batch_size": card.get_attribute("data-batch-size"),
    }


def save_screenshot(driver, tmp_path: Path) -> None:
    shot = tmp_path / "web-page.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("WRITE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "web-page.png")


def test_the_page_classifies_several_photos_and_shows_a_bad_files_error(
    browser, main_url, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(browser, main_url + "/")
    # Keys are off on main: the page asks for none.
    assert not browser.find_element(By.ID, "api-key").is_displayed()
    Select(browser.find_element(By.ID, "top-k")).select_by_value("3")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image at all\n")
    started = time.monotonic()
    cards = pick(browser, IMAGES_DIR / "chelsea.jpg", IMAGES_DIR / "coffee.jpg", notes)
    elapsed = time.monotonic() - started
    chelsea, coffee, bad = (card_result(c) for c in cards)
    assert (chelsea["name"], coffee["name"], bad["name"]) == (
        "chelsea.jpg",
        "coffee.jpg",
        "notes.txt",
    )
    for shown in (chelsea, coffee):
        assert shown["state"] == "done", shown
        assert len(shown["classes"]) == len(shown["labels"]) == 3
        assert set(shown["timings"]) == {"queue", "batch_wait", "inference", "total"}, shown
        assert all(t.endswith(" ms") for t in shown["timings"].values())
        assert int(shown["batch_size"]) >= 1
        assert f"batch size {shown['batch_size']}" in shown["status"]
        assert "efficientnet-lite0" in shown["status"]
    assert chelsea["classes"][0] in CAT_CLASSES, chelsea
    assert coffee["classes"][0] == ESPRESSO and coffee["labels"][0].startswith("espresso")
    assert bad["state"] == "error" and bad["classes"] == []
    assert bad["status"].startswith("HTTP 422: ") and "not an image" in bad["status"], bad
    assert elapsed < WAIT_S
    # The thumbnails of the photos loaded (blob: URLs, allowed by the page's CSP).
    widths = [
        browser.execute_script(
            "return arguments[0].naturalWidth", c.find_element(By.CSS_SELECTOR, ".thumb")
        )
        for c in cards[:2]
    ]
    assert widths == [451, 600]
    save_screenshot(browser, tmp_path)


def test_with_keys_the_page_asks_for_one_and_shows_a_wrong_keys_401(browser, keyed_app):
    from selenium.webdriver.common.by import By

    # Without the trailing slash the app redirects to it, or the page's relative URLs
    # would resolve above the route prefix.
    moved = httpx.get(keyed_app.url, follow_redirects=False, timeout=10)
    assert moved.status_code == 307 and moved.headers["location"] == keyed_app.url + "/"
    open_page(browser, keyed_app.url)
    key = browser.find_element(By.ID, "api-key")
    assert key.is_displayed()
    key.send_keys("not-the-key")
    (wrong,) = (card_result(c) for c in pick(browser, IMAGES_DIR / "coffee.jpg"))
    assert wrong["state"] == "error"
    assert wrong["status"] == "HTTP 401: missing or invalid API key"
    key.clear()
    key.send_keys(KEY)
    # Kept for this tab only: sessionStorage, never localStorage or a cookie.
    stored = browser.execute_script(
        "return [sessionStorage.getItem('rabbit-serve.api-key'), localStorage.length]"
    )
    assert stored == [KEY, 0] and browser.get_cookies() == []
    cat, coffee = (
        card_result(c) for c in pick(browser, IMAGES_DIR / "chelsea.png", IMAGES_DIR / "coffee.jpg")
    )
    assert cat["state"] == coffee["state"] == "done", (cat, coffee)
    assert cat["classes"][0] in CAT_CLASSES and coffee["classes"][0] == ESPRESSO
    # A reload keeps the key (same tab) and the field.
    open_page(browser, keyed_app.url + "/")
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == KEY


def test_a_missing_broker_and_no_consumer_show_503_and_504(browser, nobroker_app, orphan_app):
    from selenium.webdriver.common.by import By

    open_page(browser, nobroker_app.url + "/")
    key = browser.find_element(By.ID, "api-key")
    # sessionStorage is per origin, and every app here shares the proxy's: a key from
    # the test before may be in the field already.
    key.clear()
    key.send_keys(NOBROKER_API_KEYS[0])
    (down,) = (card_result(c) for c in pick(browser, IMAGES_DIR / "coffee.jpg"))
    assert down["state"] == "error" and down["status"].startswith("HTTP 503: "), down
    assert down["status"].endswith("(retry after 1 s)"), down
    open_page(browser, orphan_app.url + "/")
    assert not browser.find_element(By.ID, "api-key").is_displayed()
    (late,) = (card_result(c) for c in pick(browser, IMAGES_DIR / "coffee.jpg"))
    assert late["state"] == "error" and late["status"].startswith("HTTP 504: "), late
    assert "TIMEOUT" in late["status"]
