"""The page's timing record (`?timing=1`) and the harness that reads it: inputs paired with the first painted
frame that shows them, the walk painted one frame per animation frame, and no record without the query."""

from __future__ import annotations

import math
import time

import pytest

from ctmtool.serve.harness import (
    draw_stroke,
    find_browser,
    launch,
    open_page,
    paint_times,
    percentile,
    timings,
    wait_idle,
)


def _frame(raf, paint, *ids, target="edit", walk=False):
    return {"raf": raf, "drawn": raf + 1, "paint": paint, "next": raf + 16, "queued": 0,
            "frames": [{"id": i, "target": target, "walk": walk, "arrived": raf - 2, "server": 1.5}
                       for i in ids]}


def test_paint_times_pair_each_input_with_the_first_frame_showing_it():
    rec = {"inputs": [{"target": "edit", "t": 0.0, "id": 1}, {"target": "edit", "t": 5.0, "id": 2},
                      {"target": "edit", "t": 6.0, "id": 3}, {"target": "gen", "t": 7.0, "id": 4},
                      {"target": "edit", "t": 30.0, "id": 9}],
           # the answer to 2 was overtaken by 3's before a frame: 2's input is shown by 3's frame
           "frames": [_frame(10, 14, 1), _frame(26, 29, 3), _frame(27, 31, 4, target="gen"),
                      _frame(40, 44, None, target="gen", walk=True)]}
    r = paint_times(rec, "edit")
    assert r["paint"] == [14.0, 24.0, 23.0] and r["next"] == [26.0, 37.0, 36.0] and r["lost"] == 1
    assert r["arrive"] == [8.0, 19.0, 18.0] and r["server"] == [1.5] * 3
    assert paint_times(rec, "gen")["paint"] == [24.0]
    assert paint_times(rec, "edit", first_input=2)["paint"] == [23.0]


def test_percentile():
    assert percentile([3, 1, 2, 4], 0.5) == 2.5 and percentile([1, 2, 3, 4, 5], 0.9) == pytest.approx(4.6)
    assert math.isnan(percentile([], 0.5))


sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install 'ctmtool[serve]')")
BROWSER = find_browser()


@pytest.fixture(scope="module")
def browser():
    if BROWSER is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium, or set CTMTOOL_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        b = launch(pw, BROWSER)
        yield b
        b.close()


def test_no_record_without_the_query(server, browser):
    page = open_page(browser, server.url)
    assert page.evaluate("window.__ctmtoolTimings === undefined")
    page.close()


def test_strokes_are_timed_from_the_event_to_the_paint_and_the_walk_paints_once_per_frame(server, browser):
    page = open_page(browser, server.url, timing=True)
    page.click("#useGen")
    wait_idle(page)
    n = len(timings(page)["inputs"])
    draw_stroke(page, moves=10)
    wait_idle(page)
    rec = timings(page)
    strokes = [i for i in rec["inputs"][n:] if i["target"] == "edit"]
    assert len(strokes) >= 10 and all(i["id"] is not None for i in strokes)
    r = paint_times(rec, "edit", n)
    assert r["lost"] == 0 and len(r["paint"]) == len(strokes)
    for fr in rec["frames"]:
        assert fr["raf"] <= fr["drawn"] <= fr["paint"] and fr["next"] > fr["raf"]
    assert all(p >= a > 0 for p, a in zip(r["paint"], r["arrive"], strict=True))
    n = len(rec["frames"])
    page.click("#play")
    time.sleep(1.0)
    page.click("#play")
    time.sleep(0.3)
    walk = [sum(f["walk"] for f in fr["frames"]) for fr in timings(page)["frames"][n:]]
    assert sum(walk) >= 5 and max(walk) == 1  # every walk frame painted, one per animation frame
    page.close()
