"""The page at / in real headless Chromium (Debian's package), driven by Playwright."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from conftest import API_KEY

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
    if os.environ.get("CI") == "true" and sys.platform.startswith("linux"):
        pytest.fail("CI on Linux needs Debian's chromium at /usr/bin/chromium", pytrace=False)
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def page(live_server):
    base, _ = live_server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=30000)
        try:
            page = browser.new_page()
            page.set_default_timeout(15000)
            page.errors, page.urls = [], []
            page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            page.on("request", lambda r: page.urls.append(r.url))
            page.add_init_script(f"localStorage.setItem('textgen-api-key', '{API_KEY}')")
            page.goto(base + "/")
            yield page
        finally:
            browser.close()


def _local_only(page, base: str) -> None:
    outside = [u for u in page.urls if not (u.startswith(base + "/") or u.startswith("data:"))]
    assert outside == []
    assert page.errors == []


def test_generate_streams_and_stops(page, live_server, tmp_path):
    base, model = live_server
    page.wait_for_selector(f"#model option[value='{model}']", state="attached")
    page.wait_for_selector("#curve polyline", state="attached")
    assert "best validation loss" in page.inner_text("#details")
    page.fill("#prompt", "The ")
    page.fill("#length", "30")
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent === 'done'")
    text = page.inner_text("#output")
    assert text.startswith("The ") and len(text) == 34
    # A long one shows text while it is still being produced, and Stop ends it.
    page.fill("#length", "1000000")
    page.click("#generate")
    page.wait_for_function("document.getElementById('output').textContent.length > 500")
    assert page.inner_text("#status") == "generating…"
    page.click("#stop")
    page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 1000
    _local_only(page, base)


def test_write_mode_tab_completion(page, live_server):
    base, model = live_server
    page.wait_for_selector(f"#model option[value='{model}']", state="attached")
    page.click("#mode-write")
    page.click("#editor")
    page.keyboard.type("The dog ")
    page.keyboard.press("Tab")
    page.wait_for_selector("#suggestions li")
    offered = page.eval_on_selector_all("#suggestions li", "items => items.length")
    assert 1 <= offered <= 3
    assert page.get_attribute("#suggestions li:nth-child(1)", "aria-selected") == "true"
    page.keyboard.press("ArrowDown")
    chosen = 2 if offered > 1 else 1
    selected = f"#suggestions li:nth-child({chosen})"
    assert page.get_attribute(selected, "aria-selected") == "true"
    suggestion = page.inner_text(selected).replace("\u21b5", "\n")
    page.keyboard.press("Tab")
    assert page.input_value("#editor") == "The dog " + suggestion
    assert page.eval_on_selector_all("#suggestions li", "items => items.length") == 0
    # Esc dismisses; typing while an answer is on its way drops it.
    page.keyboard.press("Tab")
    page.wait_for_selector("#suggestions li")
    page.keyboard.press("Escape")
    assert page.eval_on_selector_all("#suggestions li", "items => items.length") == 0
    page.keyboard.press("Tab")
    page.keyboard.type("x")
    page.wait_for_timeout(300)
    assert page.eval_on_selector_all("#suggestions li", "items => items.length") == 0
    _local_only(page, base)
