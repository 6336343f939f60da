"""The inspection viewer: ``POST /v1/inspect`` on a real server, and the HTML report and the
page's Inspect tab in real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import json
import math
import os
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import API_KEY, CHROMIUM, chromium, watched_page

from textgen.cli.commands import main
from textgen.sample.inspect_report import report_data
from textgen.sample.inspection import Inspector

TEXT = "The quick fox jumps over a lazy dog.\nWhile cats nap on warm mats.\n"  # the run's alphabet


def post(base: str, body: dict, key: str | None = API_KEY) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}/v1/inspect", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {key}"} if key else {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def assert_same_numbers(got, expected, path="data"):
    if isinstance(expected, dict):
        assert set(got) == set(expected), path
        for key in expected:
            assert_same_numbers(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same_numbers(g, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-6), path
    else:
        assert got == expected, path


def test_the_endpoint_answers_the_reports_data(live_server, trained_run):
    base, model = live_server
    status, data = post(base, {"model": model, "text": TEXT, "best": 3})
    assert status == 200, data
    expected = report_data(Inspector.from_run(trained_run), TEXT, name=model, best=3)
    # The server's engine thread count may differ from this process's: equal within 1e-6.
    assert_same_numbers(data, expected)
    assert data["characters"] == len(TEXT) and data["prob"][0] is None
    for key in {f"{c['state']}{c['cell']}" for f in data["features"] for c in f["best"]}:
        assert len(data["activations"][key]) == len(TEXT)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"text": ""}, 400, "empty"),
        ({"text": "abc", "layer": 1}, 400, "--layer must lie in 0..0"),
        ({"text": "a☃"}, 400, "not in the vocabulary"),
        ({"text": "a" * 8193}, 400, "at most 8192"),
        ({"text": "abc", "best": 0}, 400, "best"),
        ({"text": "abc", "model": "nope"}, 404, "nope"),
    ],
)
def test_the_endpoint_refuses_bad_requests(live_server, body, status, words):
    base, model = live_server
    got, answer = post(base, {"model": model, **body})
    assert got == status
    assert words in answer["error"]["message"]


def test_the_endpoint_needs_the_key(live_server):
    base, model = live_server
    assert post(base, {"model": model, "text": "abc"}, key=None)[0] == 401


# -- in the browser --------------------------------------------------------------------------------
needs_chromium = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) or shutil.which("chromium")) and os.environ.get("CI") != "true",
    reason="Debian's chromium is not installed",
)


@pytest.fixture
def browser():
    with chromium() as launched:
        yield launched


def watched(browser):
    return watched_page(browser, viewport={"width": 1200, "height": 800})


def background(page, index: int, root: str) -> str:
    return page.eval_on_selector_all(
        f"{root} .tgi-text span", f"(s) => getComputedStyle(s[{index}]).backgroundColor"
    )


def expected_colour(value: float, scale: float) -> tuple[int, int, int, float]:
    """The viewer's colour for an activation, as the browser reports it."""
    t = max(-1.0, min(1.0, value / scale))
    rgb = (214, 39, 40) if t >= 0 else (31, 90, 200)
    return (*rgb, round(0.85 * abs(t), 3))


def parse_rgba(css: str) -> tuple[int, int, int, float]:
    parts = css[css.index("(") + 1 : -1].split(",")
    alpha = float(parts[3]) if len(parts) == 4 else 1.0
    return (*(int(p) for p in parts[:3]), alpha)


def check_view(page, data: dict, root: str) -> None:
    """Hovering shows the guesses; picking a cell colours the text by its activation."""
    spans = page.locator(f"{root} .tgi-text span")
    assert spans.count() == len(data["text"])
    i = 5  # the 'u' of quick
    spans.nth(i).hover()
    tip = page.locator(f"{root} .tgi-tip")
    tip.wait_for(state="visible")
    shown = tip.inner_text()
    assert f"({data['surprise'][i]:.3f} nats)" in shown
    for rank, (_, p) in enumerate(data["top"][i], start=1):
        assert f"{rank}. " in shown and f"{p:.4f}" in shown
    before = [background(page, k, root) for k in range(len(data["text"]))]
    feature = next(f for f in data["features"] if f["best"])
    cell = feature["best"][0]
    key = f"{cell['state']}{cell['cell']}"
    page.locator(f"{root} .tgi-feature[data-feature='{feature['name']}'] button").first.click()
    assert (
        page.locator(f"{root} button[data-key='{key}']").first.get_attribute("aria-pressed")
        == "true"
    )
    values = data["activations"][key]
    scale = max(abs(v) for v in values)
    after = [background(page, k, root) for k in range(len(data["text"]))]
    assert after != before
    for k in range(1, len(values)):
        got, want = parse_rgba(after[k]), expected_colour(values[k], scale)
        assert got[:3] == want[:3] or want[3] == 0, (k, got, want)
        assert math.isclose(got[3], want[3], abs_tol=0.01), (k, got, want)
    spans.nth(i).hover()
    assert f"{key[0]} {key[1:]} = {values[i]:.4f}" in tip.inner_text()


@needs_chromium
def test_the_html_report_works_from_disk(trained_run, tmp_path, browser):
    report = tmp_path / "report.html"
    result = CliRunner().invoke(
        main, ["inspect", str(trained_run), "--text", TEXT, "-o", str(report)]
    )
    assert result.exit_code == 0, result.output
    data = report_data(Inspector.from_run(trained_run), TEXT, name=trained_run.name)
    page = watched(browser)
    page.goto(report.as_uri())
    page.wait_for_selector(".tgi-text span")
    check_view(page, data, "#inspection")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert page.urls == [report.as_uri()]  # nothing fetched: no CDN, no font, no script
    assert page.errors == []
    # The surprise colours come back with the surprise button.
    page.click(".tgi-surprise")
    s = np.array(data["surprise"][1:])
    k = int(np.argmax(s)) + 1
    assert parse_rgba(background(page, k, "#inspection"))[:3] == (214, 39, 40)


@needs_chromium
def test_the_pages_inspect_tab(live_server, browser, tmp_path):
    base, model = live_server
    page = watched(browser)
    page.add_init_script(f"localStorage.setItem('textgen-api-key', '{API_KEY}')")
    page.goto(base + "/")
    page.wait_for_selector(f"#model option[value='{model}']", state="attached")
    page.click("#mode-write")
    page.fill("#editor", TEXT)
    page.click("#mode-inspect")
    assert page.input_value("#inspect-text") == TEXT  # the writing box's text
    page.click("#inspect")
    page.wait_for_function("document.getElementById('status').textContent === 'inspected'")
    _, data = post(base, {"model": model, "text": TEXT})
    check_view(page, data, "#inspection")
    page.screenshot(path=str(tmp_path / "tab.png"), full_page=True)
    # A mistake shows the server's one line.
    page.fill("#inspect-layer", "4")
    page.click("#inspect")
    page.wait_for_function("document.getElementById('error').textContent.includes('--layer')")
    outside = [u for u in page.urls if not u.startswith(base + "/")]
    assert outside == []
    assert page.errors == [] or all("400" in e for e in page.errors)
