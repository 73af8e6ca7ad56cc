"""Drive the served page in headless Chromium (Playwright with the system browser) and measure it.

Used by the browser tests (which check behaviour, never timings) and by `bench/serve_latency.py`. Every time
is read from the page's own `window.ctmStats`: end-to-end = from the input event (pointer move, key press on
a slider) to the new image drawn on the canvas; walk frames/s = frames drawn per second of wall time.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The Chromium executable: $CTMTOOL_CHROMIUM, else the first of BROWSERS on PATH."""
    env = os.environ.get("CTMTOOL_CHROMIUM")
    if env:
        return env if os.path.exists(env) else None
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def launch(playwright, executable: str):
    return playwright.chromium.launch(executable_path=executable, headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])


def open_page(browser, url: str, timeout_ms: int = 30000):
    """A page on `url`, waited on until the model is described and its first image (if it generates) drawn."""
    page = browser.new_page(viewport={"width": 1000, "height": 720})
    page.goto(url)
    page.wait_for_function("window.ctmStats && window.ctmStats.ready && "
                           "(window.ctmStats.frames > 0 || !document.getElementById('useGen') || "
                           "document.getElementById('useGen').disabled || window.ctmStats.errors.length > 0)",
                           timeout=timeout_ms)
    return page


def stats(page) -> dict:
    return page.evaluate("JSON.parse(JSON.stringify(window.ctmStats))")


def canvas_pixels(page, canvas_id: str) -> list[int]:
    """The RGBA bytes of a canvas (to see that an image changed)."""
    return page.evaluate(f"Array.from(document.getElementById('{canvas_id}').getContext('2d')"
                         f".getImageData(0, 0, 256, 256).data.filter((_, i) => i % 37 === 0))")


def draw_stroke(page, moves: int = 30, pause_s: float = 0.03, offset: int = 0) -> None:
    """Press on the input canvas and drag a diagonal line with `moves` pointer moves."""
    box = page.locator("#src").bounding_box()
    x0, y0 = box["x"] + 30 + offset, box["y"] + 40
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, moves + 1):
        page.mouse.move(x0 + 6 * i, y0 + 4 * i)
        time.sleep(pause_s)
    page.mouse.up()


def wait_idle(page, target: str = "edit", timeout_s: float = 10.0) -> None:
    """Until no request of `target` is pending or on the wire."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        n = len(stats(page)[target])
        time.sleep(0.15)
        if len(stats(page)[target]) == n:
            return


def slider_steps(page, slider: str = "#strength", presses: int = 10, timeout_s: float = 10.0) -> list[float]:
    """Press ArrowRight/Left on a slider `presses` times, each time waiting for the new image; the
    latencies."""
    page.focus(slider)
    out = []
    for i in range(presses):
        before = len(stats(page)["edit"])
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        page.wait_for_function(f"window.ctmStats.edit.length > {before}", timeout=timeout_s * 1000)
        out.append(stats(page)["edit"][-1])
    return out


def play_walk(page, seconds: float) -> float:
    """Play the latent walk for `seconds`; frames drawn per second."""
    n0 = len(stats(page)["walkFrames"])
    page.click("#play")
    t0 = time.perf_counter()
    time.sleep(seconds)
    n1 = len(stats(page)["walkFrames"])
    elapsed = time.perf_counter() - t0
    page.click("#play")
    return (n1 - n0) / elapsed


def measure(page, strokes: int = 3, presses: int = 15, walk_s: float = 4.0) -> dict:
    """Median stroke -> image and slider -> image latencies (ms), walk frames/s, median model time (ms)."""
    n0 = len(stats(page)["edit"])
    for k in range(strokes):
        draw_stroke(page, offset=10 * k)
        wait_idle(page)
    stroke_ms = stats(page)["edit"][n0:]
    slider_ms = slider_steps(page, presses=presses)
    m0 = len(stats(page)["model"])
    fps = play_walk(page, walk_s)
    model = stats(page)["model"][m0:]
    return {"stroke_ms_median": statistics.median(stroke_ms) if stroke_ms else float("nan"),
            "stroke_events": len(stroke_ms), "slider_ms_median": statistics.median(slider_ms),
            "walk_fps": fps, "walk_model_ms_median": statistics.median(model) if model else float("nan")}
