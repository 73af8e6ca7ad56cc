"""Drive the served page in headless Chromium (Playwright with the system browser) and measure it.

Used by the browser tests (which check behaviour, never timings) and by `bench/serve_latency.py`. Times are
read from the page: `window.ctmStats` (end-to-end = from the input event to the new image drawn on the canvas)
and, on a page opened with `?timing=1`, `window.__ctmtoolTimings`: every input event's `timeStamp` with the
request that carried it, and for every animation frame that drew something its rAF time, when it was drawn,
`paint` (a task posted from that rAF callback: it runs once the frame's rendering update is done, as a
requestPostAnimationFrame would) and `next` (the following rAF's time: the latest the frame can be shown).
`paint_times` turns them into input-to-paint latencies, `walk_painted` into frames painted per second.
"""

from __future__ import annotations

import bisect
import math
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


def open_page(browser, url: str, timeout_ms: int = 30000, timing: bool = False):
    """A page on `url`, waited on until the model is described and its first image (if it generates) drawn;
    `timing`: with the page's timing record (`?timing=1`)."""
    page = browser.new_page(viewport={"width": 1000, "height": 720})
    page.goto(url + ("?timing=1" if timing else ""))
    page.wait_for_function("window.ctmStats && window.ctmStats.ready && "
                           "(window.ctmStats.frames > 0 || !document.getElementById('useGen') "
                           "|| document.getElementById('useGen').disabled "
                           "|| window.ctmStats.errors.length > 0)",
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
    """Press ArrowRight/Left on a slider `presses` times, each time waiting for the new image; the latencies
    (ms, input to drawn)."""
    page.focus(slider)
    out = []
    for i in range(presses):
        before = len(stats(page)["edit"])
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        page.wait_for_function(f"window.ctmStats.edit.length > {before}", timeout=timeout_s * 1000)
        out.append(stats(page)["edit"][-1])
    return out


def timings(page) -> dict:
    """The page's timing record (`?timing=1`): inputs [{target, t, id}], frames [{raf, drawn, paint, next,
    queued, frames}]."""
    return page.evaluate("JSON.parse(JSON.stringify(window.__ctmtoolTimings))")


def display_rate(page, seconds: float = 1.0) -> float:
    """Animation frames per second of the idle page (rAF callbacks with nothing to draw): the display's
    rate."""
    n = page.evaluate("""(ms) => new Promise((done) => { let n = 0, t0 = null;
        const tick = (t) => { if (t0 === null) t0 = t; else n++; if (t - t0 < ms) requestAnimationFrame(tick);
                              else done(n / (t - t0) * 1000); };
        requestAnimationFrame(tick); })""", seconds * 1000)
    return float(n)


def paint_times(rec: dict, target: str, first_input: int = 0) -> dict:
    """Per input event of `target` (from the `first_input`-th on): ms from its timeStamp to the paint, and to
    the next frame, of the first frame that drew the answer to its request or to a later one (a request
    carries the whole input so far; an answer overtaken before its frame is never drawn); inputs never shown:
    `lost`."""
    drawn = []  # (request id, frame record), in the order painted (ids increase)
    for fr in rec["frames"]:
        if "paint" in fr:
            drawn += [(f["id"], fr) for f in fr["frames"] if not f["walk"] and f["target"] == target]
    ids = [d[0] for d in drawn]
    paint, nxt, arrive, server, lost = [], [], [], [], 0
    for i in rec["inputs"][first_input:]:
        if i["target"] != target:
            continue
        k = bisect.bisect_left(ids, i["id"])
        if i["id"] is None or k == len(ids):
            lost += 1
            continue
        fr = drawn[k][1]
        f = next(f for f in fr["frames"] if f["id"] == drawn[k][0])
        paint.append(fr["paint"] - i["t"])
        nxt.append(fr.get("next", math.nan) - i["t"])
        arrive.append(f["arrived"] - i["t"])
        server.append(f["server"])
    return {"paint": paint, "next": nxt, "arrive": arrive, "server": server, "lost": lost}


def percentile(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; nan for no values."""
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q
    lo = math.floor(k)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (k - lo)


def walk_painted(page, seconds: float) -> dict:
    """Play the walk for `seconds`: walk frames painted per second (animation frames that drew a new walk
    image, over the span of their rAF times), all animation frames per second meanwhile, and the share of
    painted walk frames that found another one queued behind them (the server kept ahead)."""
    n0 = len(timings(page)["frames"])
    page.evaluate("""() => { window.__rafCount = 0; window.__rafOn = true;
        const tick = () => { window.__rafCount++; if (window.__rafOn) requestAnimationFrame(tick); };
        requestAnimationFrame(tick); }""")
    page.click("#play")
    t0 = time.perf_counter()
    time.sleep(seconds)
    page.click("#play")
    n = page.evaluate("() => { window.__rafOn = false; return window.__rafCount; }")
    rafs = n / (time.perf_counter() - t0)
    time.sleep(0.2)
    frames = [f for f in timings(page)["frames"][n0:] if any(x["walk"] for x in f["frames"])]
    if len(frames) < 2:
        return {"walk_painted_fps": 0.0, "walk_frames": len(frames), "walk_raf_hz": rafs,
                "walk_queued_share": 0.0}
    span = (frames[-1]["raf"] - frames[0]["raf"]) / 1000
    return {"walk_painted_fps": (len(frames) - 1) / span, "walk_frames": len(frames), "walk_raf_hz": rafs,
            "walk_queued_share": sum(f["queued"] > 0 for f in frames) / len(frames)}


def measure_paint(page, strokes: int = 100, moves: int = 8, pause_s: float = 0.03, presses: int = 30,
                  walk_s: float = 4.0) -> dict:
    """Input-to-paint of `strokes` strokes (per pointer event) and of slider presses, walk frames painted per
    second, and the display's rate measured on the idle page first (ms; medians and 90th percentiles)."""
    out = {"display_hz": display_rate(page)}
    page.click("#useGen")
    wait_idle(page)
    i0 = len(timings(page)["inputs"])
    for k in range(strokes):
        draw_stroke(page, moves=moves, pause_s=pause_s, offset=(7 * k) % 60)
        wait_idle(page, timeout_s=30.0)
    rec = timings(page)
    s = paint_times(rec, "edit", i0)
    i1 = len(rec["inputs"])
    slider_steps(page, presses=presses)
    wait_idle(page)
    k = paint_times(timings(page), "edit", i1)
    out.update({"stroke_events": len(s["paint"]), "stroke_lost": s["lost"], "strokes": strokes,
                "stroke_paint_ms_median": percentile(s["paint"], 0.5),
                "stroke_paint_ms_p90": percentile(s["paint"], 0.9),
                "stroke_next_ms_median": percentile(s["next"], 0.5),
                "stroke_next_ms_p90": percentile(s["next"], 0.9),
                "stroke_arrive_ms_median": percentile(s["arrive"], 0.5),
                "stroke_server_ms_median": percentile(s["server"], 0.5),
                "slider_events": len(k["paint"]), "slider_paint_ms_median": percentile(k["paint"], 0.5),
                "slider_paint_ms_p90": percentile(k["paint"], 0.9)})
    m0 = len(stats(page)["model"])
    out.update(walk_painted(page, walk_s))
    model = stats(page)["model"][m0:]
    out["walk_model_ms_median"] = statistics.median(model) if model else math.nan
    return out
