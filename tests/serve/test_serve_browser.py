"""The page in headless Chromium: it loads, a stroke changes the output, the walk plays, a bad upload shows
its error. Timings are measured by bench/serve_latency.py, never asserted here."""

from __future__ import annotations

import time

import pytest

from ctmtool.serve.harness import (
    canvas_pixels,
    draw_stroke,
    find_browser,
    launch,
    open_page,
    stats,
    wait_idle,
)

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install 'ctmtool[serve]')")
BROWSER = find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium on PATH (apt-get install chromium, or "
                                                        "set CTMTOOL_CHROMIUM)")


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as pw:
        browser = launch(pw, BROWSER)
        p = open_page(browser, server.url)
        yield p
        browser.close()


def test_page_loads_with_a_first_image(page):
    assert "ctm model, data 1x8x8" in page.inner_text("#model")
    assert stats(page)["gen"] and not stats(page)["errors"]
    assert "end-to-end" in page.inner_text("#latency")


def test_a_stroke_changes_the_output_image(page):
    page.click("#useGen")
    wait_idle(page)
    before = canvas_pixels(page, "dst")
    n = len(stats(page)["edit"])
    draw_stroke(page, moves=12)
    wait_idle(page)
    assert len(stats(page)["edit"]) > n
    assert canvas_pixels(page, "dst") != before


def test_the_walk_plays(page):
    before = canvas_pixels(page, "gen")
    n = len(stats(page)["walkFrames"])
    page.click("#play")
    time.sleep(1.0)
    page.click("#play")
    assert len(stats(page)["walkFrames"]) - n >= 5
    assert canvas_pixels(page, "gen") != before
    assert "frames/s" in page.inner_text("#latency")


def test_a_bad_upload_shows_its_error(page):
    page.set_input_files("#upload",
                         files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}])
    page.wait_for_selector("#error", state="visible", timeout=10000)
    assert "not an image" in page.inner_text("#error")


def test_an_oversized_upload_shows_the_limit(page):
    page.set_input_files("#upload", files=[{"name": "big.png", "mimeType": "image/png",
                                            "buffer": b"\x89PNG" + bytes(30_000)}])
    page.wait_for_function("document.getElementById('error').textContent.includes('limit')", timeout=10000)
    assert "is over the 20 kB limit" in page.inner_text("#error")
