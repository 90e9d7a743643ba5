"""The page at / in a real browser: Debian's headless Chromium driven by Selenium through Debian's
chromedriver (nothing is downloaded). A real test image is picked in the file input, and the
predicted class and the strip of similar catalog items are read back from the page.

`make test` installs chromium and chromium-driver where it can (root on Debian); elsewhere this
test skips and says why. TOOLKIT_SCREENSHOT_DIR=DIR also keeps a screenshot of the result.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from conftest import SERVE_SPEC as SPEC
from conftest import png

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found: install Debian's {package} (make test does as root on Debian)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def page_server(live_server):
    return live_server


def test_upload_a_real_image_and_read_back_class_and_similar_items(browser, page_server, dataset, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "ankle-boot.png"
    image.write_bytes(png(dataset.x_test[0]))
    expected = httpx.post(
        page_server.url + "/v1/classify?k=3", files={"image": (image.name, image.read_bytes())}
    )
    expected_similar = httpx.post(
        page_server.url + "/v1/similar?k=8", content=image.read_bytes(), headers={"Content-Type": "image/png"}
    ).json()["similar"]

    browser.get(page_server.url + "/")
    WebDriverWait(browser, 20).until(lambda d: "sha256" in d.find_element(By.ID, "model").text)
    assert SPEC in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error")
    )
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", (
        browser.find_element(By.ID, "status").text
    )

    assert browser.find_element(By.ID, "prediction").text == expected.json()["class"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#top .bar span")
    assert [b.text for b in bars] == [t["class"] for t in expected.json()["top"]]
    items = browser.find_elements(By.CSS_SELECTOR, "#similar .item")
    assert [int(i.get_attribute("data-index")) for i in items] == [s["index"] for s in expected_similar]
    assert [i.find_element(By.CLASS_NAME, "cls").text for i in items] == [
        s["class"] for s in expected_similar
    ]
    loaded = browser.execute_script(
        "return [...document.querySelectorAll('#similar img')].map(i => i.complete && i.naturalWidth)"
    )
    assert loaded == [28] * len(items)  # every thumbnail decoded: a real 28x28 catalog image

    keep = os.environ.get("TOOLKIT_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(keep) / "page-after-upload.png"))


def test_a_non_image_shows_the_servers_error_on_the_page(browser, page_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bogus = tmp_path / "notes.png"
    bogus.write_text("not really a PNG")
    browser.get(page_server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(bogus))
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error"
    )
    assert "not a readable image" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "file").is_enabled()
