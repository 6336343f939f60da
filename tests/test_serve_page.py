"""The page at / in real headless Chromium (Debian's package), driven by Playwright."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import sys
import threading

import pytest
from conftest import (
    API_KEY,
    CHROMIUM,
    chromium,
    free_ports,
    start_server,
    stop_server,
    watched_page,
)

if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
    if os.environ.get("CI") == "true" and sys.platform.startswith("linux"):
        pytest.fail("CI on Linux needs Debian's chromium at /usr/bin/chromium", pytrace=False)
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def page(live_server):
    with _page(live_server[0]) as page:
        yield page


@contextlib.contextmanager
def _page(base: str):
    """The page at ``base``/ in a fresh browser, with the API key stored."""
    with chromium() as browser:
        page = watched_page(browser)
        page.add_init_script(f"localStorage.setItem('textgen-api-key', '{API_KEY}')")
        page.goto(base + "/")
        yield page


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


def _chat_bodies(page) -> list[dict]:
    return [json.loads(r.post_data) for r in page.chat_requests]


def test_chat_mode_keeps_the_conversation(page, live_server):
    base, model = live_server
    page.chat_requests = []
    page.on(
        "request", lambda r: r.url.endswith("/v1/chat/completions") and page.chat_requests.append(r)
    )
    page.wait_for_selector(f"#model option[value='{model}']", state="attached")
    page.click("#mode-chat")
    assert page.is_hidden("#generate-pane") and page.is_visible("#chat-pane")
    page.fill("#length", "30")
    page.fill("#chat-system", "A dog naps.")
    page.fill("#chat-input", "The cat")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('status').textContent === 'done'")
    replies = page.eval_on_selector_all(".msg.assistant", "items => items.map(i => i.textContent)")
    assert page.eval_on_selector_all(".msg.user", "items => items.map(i => i.textContent)") == [
        "The cat"
    ]
    assert len(replies) == 1 and 0 < len(replies[0]) <= 30
    assert page.input_value("#chat-input") == ""
    # The second turn sends the whole conversation, the first reply included.
    page.fill("#chat-input", "A fox")
    page.click("#chat-send")
    page.wait_for_function("document.querySelectorAll('.msg').length === 4")
    page.wait_for_function("document.getElementById('status').textContent === 'done'")
    first, second = _chat_bodies(page)
    assert first["messages"] == [
        {"role": "system", "content": "A dog naps."},
        {"role": "user", "content": "The cat"},
    ]
    assert second["messages"] == first["messages"] + [
        {"role": "assistant", "content": replies[0]},
        {"role": "user", "content": "A fox"},
    ]
    assert second["stream"] is True and second["max_tokens"] == 30 and second["model"] == model
    # New conversation starts from nothing.
    page.click("#chat-clear")
    assert page.eval_on_selector_all(".msg", "items => items.length") == 0
    page.fill("#length", "10")
    page.fill("#chat-input", "A cat")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('status').textContent === 'done'")
    assert _chat_bodies(page)[-1]["messages"][-1] == {"role": "user", "content": "A cat"}
    assert len(_chat_bodies(page)[-1]["messages"]) == 2  # the system message and this one
    _local_only(page, base)


def test_a_failed_chat_turn_gives_the_message_back(page, live_server):
    base, model = live_server
    page.wait_for_selector(f"#model option[value='{model}']", state="attached")
    page.click("#mode-chat")
    page.fill("#chat-input", "snow \u2603")  # a character the model never saw: 400
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert page.inner_text("#error") == "characters not in the vocabulary: '\u2603'"
    assert page.input_value("#chat-input") == "snow \u2603"
    assert page.eval_on_selector_all(".msg", "items => items.length") == 0
    page.errors.clear()  # the browser logs the 400 itself


FETCH = """async ([url, key, model]) => {
  try {
    const answer = await fetch(url + "/v1/chat/completions", {method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer " + key},
      body: JSON.stringify({model, max_tokens: 5, seed: 1,
                            messages: [{role: "user", content: "The "}]})});
    return (await answer.json()).choices[0].message.content;
  } catch (err) { return "failed: " + err.name; }
}"""


@pytest.fixture(scope="module")
def app_site():
    """Another site's page on a port of its own (another origin): its URL."""
    (port,) = free_ports(1)

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>app</title><p>another site</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        site.shutdown()
        site.server_close()


@pytest.fixture(scope="module")
def other_server(trained_run, app_site):
    """A server whose pages may come from app_site, and whose chat replies have no stop."""
    proc, base = start_server(
        trained_run, "--allow-origin", app_site, "--chat-template", "{content}",
        "--max-tokens", "1000000",
    )  # fmt: skip
    try:
        yield base
    finally:
        stop_server(proc)


def test_chat_stop_ends_a_long_reply(other_server, trained_run):
    with _page(other_server) as page:
        page.wait_for_selector(f"#model option[value='{trained_run.name}']", state="attached")
        page.click("#mode-chat")
        page.fill("#length", "1000000")
        page.fill("#chat-input", "The dog")
        page.keyboard.press("Enter")
        # Long enough that a page which lays the whole reply out again at every streamed piece
        # no longer answers (it did at 100,000 characters): Stop must still work.
        page.wait_for_function(
            "[...document.querySelectorAll('.msg.assistant')].pop().textContent.length > 100000",
            timeout=60_000,
        )
        assert page.inner_text("#status") == "replying…"
        page.click("#chat-stop")
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
        shown = page.inner_text(".msg.assistant")
        page.wait_for_timeout(300)
        assert page.inner_text(".msg.assistant") == shown  # nothing arrives after Stop
        _local_only(page, other_server)


def test_a_page_from_an_allowed_origin_may_call_the_api(
    live_server, other_server, app_site, trained_run
):
    with chromium() as browser:
        page = browser.new_page()
        page.goto(app_site + "/")
        model = trained_run.name
        # Its Authorization header makes the browser ask first: a real preflight.
        text = page.evaluate(FETCH, [other_server, API_KEY, model])
        assert isinstance(text, str) and len(text) == 5, text
        # The same call to a server without --allow-origin is refused by the browser.
        assert page.evaluate(FETCH, [live_server[0], API_KEY, model]) == "failed: TypeError"
